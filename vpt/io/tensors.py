"""Tensor files: the one safe way to read a ``.pt`` / ``.pth`` file, safetensors read with a one-line error, and
safetensors headers with the same bytes for the same tensors.

A ``.pt`` file is a pickle, and unpickling can run any code the file names; :func:`load_torch` is the only place
vpt calls ``torch.load``, always with ``weights_only=True``.

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
from typing import Any

from vpt.errors import VptError

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


def load_torch(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a one-line :class:`VptError` naming the file.

    ``weights_only=True`` because these files come from other runs, other machines and other projects (VideoAlign's
    ``.pth`` checkpoints): a full unpickler would execute whatever a tampered file names. Tensors, containers and
    plain numbers, all that state dicts, optimizer and RNG states hold, load as they are.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VptError(f"{path}: missing; the checkpoint is incomplete") from None
    except Exception as error:  # pickle.UnpicklingError, RuntimeError for truncated zips, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VptError(f"{path}: not a readable tensor state dict (torch.load weights_only=True: {reason})") from None


def load_safetensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file (on the CPU), with a one-line :class:`VptError` naming the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise VptError(f"{path}: missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except Exception as error:
        raise VptError(f"{path}: not a readable safetensors file ({type(error).__name__})") from None
