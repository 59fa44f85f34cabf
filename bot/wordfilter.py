"""Banned-word matching that spelling tricks don't slip past.

Text is normalised (NFKC, case-folded, zero-width characters removed, look-alike letters
and digits mapped), split into words, and runs of single characters are joined, so
``N.S.F.W``, ``ｎｓｆｗ``, ``n\u200bsfw`` and ``n5fw`` all read as ``nsfw``. Patterns follow
Discord AutoMod's keyword syntax: ``cat`` matches the whole word only (banning "ass" does not
refuse "class"), ``cat*`` words that start with it, ``*cat`` words that end with it, ``*cat*``
anywhere. A word spelled out letter by letter is found even inside a longer run of single
letters ("a s.q.u.i.r.r.e.l").
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


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).casefold()
    # Accents off: "nüde" reads as "nude".
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _SEPARATORS.sub(" ", text.translate(_LOOKALIKES)).split()


def _tokens(text: str) -> list[tuple[str, bool]]:
    """The words of ``text``, with runs of single characters joined: (word, was_a_run)."""
    tokens: list[tuple[str, bool]] = []
    run = ""
    for word in _words(text):
        if len(word) == 1:
            run += word  # "n s f w" -> "nsfw"
            continue
        if run:
            tokens.append((run, True))
            run = ""
        tokens.append((word, False))
    if run:
        tokens.append((run, True))
    return tokens


def normalise(text: str) -> str:
    """The words of ``text`` as the filter sees them, joined by single spaces."""
    return " ".join(word for word, _ in _tokens(text))


def parse_pattern(entered: str) -> str | None:
    """A banned word as moderators type it in Discord AutoMod's syntax, normalised: ``cat``
    (the whole word), ``cat*`` (words starting with it), ``*cat`` (ending with it), ``*cat*``
    (anywhere). None if nothing is left to match."""
    text = entered.strip()
    prefix = text.startswith("*")
    suffix = len(text) > 1 and text.endswith("*")
    core = normalise(text.strip("*"))
    if not core:
        return None
    return f"{'*' if prefix else ''}{core}{'*' if suffix else ''}"


def _matches(pattern: str, text: str, runs: list[str]) -> bool:
    core = pattern.strip("*")
    starts_anywhere = pattern.startswith("*")
    ends_anywhere = pattern.endswith("*")
    left = "" if starts_anywhere else r"(?<![^ ])"
    right = "" if ends_anywhere else r"(?![^ ])"
    if re.search(f"{left}{re.escape(core)}{right}", text):
        return True
    # Spelled out letter by letter, a word can hide inside a longer run of single letters:
    # "a s.q.u.i.r.r.e.l" reads as the run "asquirrel". Any pattern found inside a run counts.
    squeezed = core.replace(" ", "")
    return any(squeezed in run for run in runs)


def find_banned(text: str, banned: list[str]) -> str | None:
    """The first banned pattern (as stored by ``parse_pattern``) that ``text`` contains."""
    tokens = _tokens(text)
    joined = " ".join(word for word, _ in tokens)
    runs = [word for word, run in tokens if run]
    for pattern in banned:
        if pattern.strip("*") and _matches(pattern, joined, runs):
            return pattern
    return None
