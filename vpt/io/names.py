"""File names made from user-given ids (video ids, prompt ids), safe on every file system."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Sequence

from vpt.errors import VptError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# File names stay well under the usual 255-byte limit, with room for a hash and a suffix like ".shuffle.mp4".
_MAX_STEM = 120




def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=4).hexdigest()


def safe_name(clip_id: str) -> str:
    """A file-name stem for the id ``clip_id``: the id itself when it only holds ``[A-Za-z0-9._-]``, does not start with
    ``.`` or ``-`` (hidden files, options) and is at most 120 characters; otherwise the id with every other
    character replaced by ``_`` (and cut to 120) plus ``-`` and 8 hex digits of a hash of the id, so that ids that
    differ only in replaced characters (``a/b``, ``a b``) still get different names."""
    stem = _UNSAFE.sub("_", clip_id)
    if stem[:1] in (".", "-"):
        stem = "_" + stem[1:]
    if stem == clip_id and stem and len(stem) <= _MAX_STEM:
        return stem
    return f"{stem[:_MAX_STEM] or '_'}-{_short_hash(clip_id)}"


def file_stems(ids: Sequence[str]) -> list[str]:
    """One file-name stem per id (see :func:`safe_name`), distinct even on a case-insensitive file system (macOS,
    Windows)."""
    stems = [safe_name(clip_id) for clip_id in ids]
    # "Clip" and "clip" are two ids but one file on a case-insensitive disk: hash both.
    folded = Counter(stem.casefold() for stem in stems)
    stems = [f"{stem}-{_short_hash(clip_id)}" if folded[stem.casefold()] > 1 else stem
             for stem, clip_id in zip(stems, ids)]
    seen: dict[str, str] = {}
    for stem, clip_id in zip(stems, ids):
        other = seen.setdefault(stem.casefold(), clip_id)
        if other != clip_id:  # two hashes colliding: never silently overwrite a file
            raise VptError(f"ids '{other}' and '{clip_id}' would get the same file name '{stem}'; rename one")
    return stems
