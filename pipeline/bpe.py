"""CLIP's byte-level BPE alphabet, shared by the tokenizers built here (``pipeline.tiny``'s and
the shapes model's), in a module of its own so that neither has to import the other for it."""

from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level BPE alphabet, for tokenizers built here."""
    # Printable bytes map to themselves, the rest to code points above 255.
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))
