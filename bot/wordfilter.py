"""Banned-word matching that spelling tricks don't slip past.

Text is normalised (NFKC, case-folded, zero-width characters removed, look-alike letters
and digits mapped), split into words, and runs of single characters are joined, so
``N.S.F.W``, ``ｎｓｆｗ``, ``n\u200bsfw`` and ``n5fw`` all read as ``nsfw``. Matching is by
whole words, so banning "ass" does not refuse "class".
"""

from __future__ import annotations

import re
import unicodedata

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)
# Digits and symbols used for letters, and Cyrillic/Greek letters that look Latin.
_LOOKALIKES = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "8": "b",
        "@": "a",
        "$": "s",
        "!": "i",
        "|": "l",
        "а": "a",
        "е": "e",
        "о": "o",
        "р": "p",
        "с": "c",
        "х": "x",
        "у": "y",
        "і": "i",
        "ѕ": "s",
        "к": "k",
        "м": "m",
        "т": "t",
        "в": "b",
        "н": "h",
        "α": "a",
        "ο": "o",
        "ν": "v",
        "ρ": "p",
        "τ": "t",
        "ι": "i",
    }
)
_SEPARATORS = re.compile(r"[^\w]+|_+")


def normalise(text: str) -> str:
    """The words of ``text`` as the filter sees them, joined by single spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).casefold()
    # Accents off: "nüde" reads as "nude".
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    words = _SEPARATORS.sub(" ", text.translate(_LOOKALIKES)).split()
    joined: list[str] = []
    run = ""
    for word in words:
        if len(word) == 1:
            run += word  # "n s f w" -> "nsfw"
            continue
        if run:
            joined.append(run)
            run = ""
        joined.append(word)
    if run:
        joined.append(run)
    return " ".join(joined)


def find_banned(text: str, banned: list[str]) -> str | None:
    """The first banned word or phrase (normalised) that ``text`` contains, if any."""
    padded = f" {normalise(text)} "
    for word in banned:
        if word and f" {word} " in padded:
            return word
    return None
