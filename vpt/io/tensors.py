"""Safetensors files with the same bytes for the same tensors: the header's metadata in one fixed order.

The safetensors writer keeps the ``__metadata__`` entries in a hash map, so a file with two or more of them (what
diffusers' ``save_lora_weights`` writes) can come out with its keys in another order on every run. That breaks
"the same inputs and seed give the same bytes". :func:`canonicalize_header` rewrites such a header with the keys
sorted; the tensors and their offsets stay as they are.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

_LENGTH = struct.Struct("<Q")


def canonicalize_header(path: str | os.PathLike) -> None:
    """Sort the ``__metadata__`` keys of the safetensors file ``path`` in place (nothing else changes)."""
    path = Path(path)
    with open(path, "r+b") as handle:
        (length,) = _LENGTH.unpack(handle.read(_LENGTH.size))
        raw = handle.read(length)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or len(metadata) < 2:
            return
        ordered = {"__metadata__": dict(sorted(metadata.items())),
                   **{key: value for key, value in header.items() if key != "__metadata__"}}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        # the same entries in another order: as long as the original, or shorter when the writer escaped
        # differently; the writer pads the header with spaces to keep the tensor data aligned, so we do too
        if len(text) > length:
            raise ValueError(f"{path}: the sorted safetensors header does not fit the original one")
        handle.seek(_LENGTH.size)
        handle.write(text + b" " * (length - len(text)))
