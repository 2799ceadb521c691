"""Content digests of files, read in blocks (model weights and shards can be many GB)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: Path) -> dict:
    """``{"bytes": size, "sha256": hex digest}`` of the file ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
