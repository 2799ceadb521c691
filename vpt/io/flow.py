"""Flow files: the layout of the optical-flow fields ``vpt eval flow`` compares against, read and written here.

Layout
------
* One file per video, ``DIR/<stem>.flow.safetensors``, where ``<stem>`` is the video's file name without its
  extension (the flow of ``clips/toy-0003.mp4`` is ``DIR/toy-0003.flow.safetensors``), see :func:`flow_path`.
* Tensor ``flow``: floating point (stored ``float32``; ``float16`` / ``float64`` are read as ``float32``), shape
  ``[T - 1, H, W, 2]`` for a ``T``-frame video of ``H x W`` pixels. ``flow[t, y, x] = (dx, dy)``: the forward
  displacement in pixels of the content at pixel ``(x, y)`` of frame ``t`` to frame ``t + 1`` (``x`` right, ``y``
  down), the convention of OpenCV, Middlebury ``.flo``, Sintel and KITTI.
* Optional tensor ``valid``: ``bool`` or ``uint8``, shape ``[T - 1, H, W]``; nonzero where the reference flow is
  defined (KITTI's sparse ground truth, occlusions). Without it every pixel counts. Non-finite flow values are
  allowed only where ``valid`` is 0.
* Other tensors are ignored. The header's metadata names the layout (``{"vpt.flow": "1"}``).

Every problem with a file is a :class:`~vpt.errors.VptError` naming it and saying what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vpt.errors import VptError

SUFFIX = ".flow.safetensors"
LAYOUT = "float32 flow [T-1, H, W, 2] = forward (dx, dy) pixels of frame t to t+1, optional valid [T-1, H, W]"


def flow_path(directory: str | os.PathLike, stem: str) -> Path:
    """Where the flow of the video named ``<stem>.<ext>`` lives in ``directory``."""
    return Path(directory) / f"{stem}{SUFFIX}"


def check_flow(flow: np.ndarray, valid: np.ndarray | None = None, name: str = "flow") -> tuple[np.ndarray,
                                                                                                np.ndarray | None]:
    """``(flow as float32, valid as bool or None)`` when they follow the layout; VptError prefixed ``name``."""
    flow = np.asarray(flow)
    if not np.issubdtype(flow.dtype, np.floating):
        raise VptError(f"{name}: tensor 'flow' has dtype {flow.dtype}; store floating-point (dx, dy) pixels")
    if flow.ndim != 4 or flow.shape[-1] != 2 or 0 in flow.shape[:3]:
        raise VptError(f"{name}: tensor 'flow' has shape {list(flow.shape)}; expected [T-1, H, W, 2] ({LAYOUT})")
    if valid is not None:
        valid = np.asarray(valid)
        if valid.dtype not in (np.bool_, np.uint8):
            raise VptError(f"{name}: tensor 'valid' has dtype {valid.dtype}; store bool or uint8 (nonzero = valid)")
        if valid.shape != flow.shape[:3]:
            raise VptError(f"{name}: tensor 'valid' has shape {list(valid.shape)}, tensor 'flow' "
                           f"{list(flow.shape)}; expected valid [T-1, H, W] = {list(flow.shape[:3])}")
        valid = valid.astype(bool)
    finite = np.isfinite(flow).all(axis=-1)
    if not (finite if valid is None else finite | ~valid).all():
        raise VptError(f"{name}: tensor 'flow' holds non-finite values at valid pixels; mark them 0 in 'valid'")
    return flow.astype(np.float32, copy=False), valid


def write_flow(path: str | os.PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> Path:
    """Write ``flow`` (and ``valid``) to ``path`` in the layout above, atomically; returns the path."""
    from safetensors.numpy import save_file

    from vpt.io.atomic import atomic_path

    flow, valid = check_flow(flow, valid, os.fspath(path))
    tensors = {"flow": np.ascontiguousarray(flow)}
    if valid is not None:
        tensors["valid"] = np.ascontiguousarray(valid.astype(np.uint8))
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata={"vpt.flow": "1"})
    return Path(path)


def read_flow(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``(flow float32 [T-1, H, W, 2], valid bool [T-1, H, W] or None)`` from a flow file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    name = os.fspath(path)
    if not Path(path).is_file():
        raise VptError(f"{name}: no such flow file; write one per video ({LAYOUT})")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VptError(f"{name}: not a readable safetensors file ({reason})") from None
    if "flow" not in tensors:
        found = ", ".join(sorted(tensors)) or "none"
        raise VptError(f"{name}: has no tensor 'flow' (found: {found}); expected {LAYOUT}")
    return check_flow(tensors["flow"], tensors.get("valid"), name)
