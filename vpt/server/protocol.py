"""The JSON protocol of the reward server (``vpt serve``), its limits, and how a request body is read.

Endpoints
---------
``GET /health``
    ``{"status": "ok"}`` while the server accepts work.

``GET /info``
    What is served and under which limits::

        {"vpt_version": "0.1.0",
         "models": [{"name": "brightness,motion", "source": "brightness,motion", "kind": "HeuristicReward",
                     "dimensions": ["brightness", "motion"], "primary": "brightness", "needs_prompt": false,
                     "dtype": null, "device": "cpu"}, ...],
         "dimensions": [...every served dimension, in order...],
         "limits": {"max_body_bytes": 268435456, "max_batch": 16, "max_wait_ms": 10.0},
         "stats": {"requests": 3, "videos": 12, "batches": 2, "largest_batch": 8}}

    ``source`` is what ``-m`` named (a checkpoint directory, a heuristic); ``dtype`` and ``device`` are those of the
    model's weights (``null`` for a model without weights). ``stats`` counts scored videos and the batches the
    dynamic batcher formed from them.

``POST /score``
    Request (JSON, at most ``max_body_bytes``)::

        {"model": "NAME",                     # optional: one served model's name; absent = every served model
         "videos": [{"id": "a",               # optional, echoed back (default: the position, "0", "1", ...)
                     "prompt": "a red ball",  # required by models with needs_prompt
                     "video_b64": "AAAA..."}, # the file's bytes, base64 (standard alphabet, padded) ...
                    {"path": "/data/b.mp4"}]} # ... or a path the server can read

    Response (results in the order of ``videos``)::

        {"model": "NAME or null", "dimensions": ["brightness", "motion"],
         "results": [{"id": "a", "scores": {"brightness": 0.41, "motion": 0.02}, "error": null},
                     {"id": "1", "scores": null, "error": "not a readable video (...)"}]}

    Scores are JSON numbers written with Python's shortest round-trip ``repr``, so a float64 arrives bit-exact
    (``NaN``/``Infinity`` as Python's ``json`` writes them). A video the server cannot read or score is its own
    result's ``error``; the others are scored.

Status codes; every error body is ``{"error": "one line"}`` (422 adds ``results``):

=====  ========================================================================================================
200    at least one video scored
400    malformed request: not JSON, no ``videos``, an item without exactly one of ``path``/``video_b64``, bad base64,
       a missing prompt for a model that needs one, a field of the wrong type
404    unknown ``model`` (or endpoint)
413    body larger than ``max_body_bytes`` (checked from ``Content-Length`` and while the body streams in)
422    no video of the request could be scored (each result says why)
500    the model failed on a batch (the server keeps serving)
503    the server is shutting down: retry elsewhere or later
=====  ========================================================================================================

The server reads any ``path`` its user may read: bind it to 127.0.0.1 (the default) unless the network is trusted.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

from vpt.errors import VptError


@dataclass(frozen=True)
class Limits:
    """What one request may carry and how long the batcher waits for company."""

    max_body_bytes: int = 256 * 1024 * 1024
    max_batch: int = 16  # videos scored together, across requests
    max_wait_ms: float = 10.0  # how long the first queued video waits for others

    def check(self) -> "Limits":
        """Itself, or a one-line :class:`VptError` naming the ``vpt serve`` option that is out of range."""
        if self.max_body_bytes < 1:
            raise VptError("--max-body-mb must be more than 0")
        if self.max_batch < 1:
            raise VptError(f"--max-batch {self.max_batch}: must be at least 1")
        if not (0 <= self.max_wait_ms <= 60_000) or math.isnan(self.max_wait_ms):
            raise VptError(f"--max-wait-ms {self.max_wait_ms:g}: choose 0 to 60000")
        return self

    def as_json(self) -> dict:
        return {"max_body_bytes": self.max_body_bytes, "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms}


class ProtocolError(Exception):
    """A request the server refuses as a whole: the HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}

    def body(self) -> bytes:
        return dumps({"error": self.message, **self.extra})


@dataclass
class VideoRequest:
    """One video of a ``/score`` request: its bytes or a server-side path."""

    id: str
    prompt: str | None
    path: str | None = None
    data: bytes | None = None


def dumps(content) -> bytes:
    """JSON bytes with floats in shortest round-trip form (bit-exact for float64)."""
    return json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()


def parse_score_request(body: bytes) -> tuple[str | None, list[VideoRequest]]:
    """The model name (``None`` = every served model) and the videos of a ``/score`` body; a
    :class:`ProtocolError` (400) saying what is wrong otherwise."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(400, f"the body is not JSON ({error}); send {{\"videos\": [...]}}") from None
    if not isinstance(request, dict):
        raise ProtocolError(400, "the body must be a JSON object with a 'videos' list")
    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError(400, "'model' must be a string (a served model's name) or absent")
    items = request.get("videos")
    if not isinstance(items, list) or not items:
        raise ProtocolError(400, "'videos' must be a non-empty list of {\"path\": ...} or {\"video_b64\": ...}")
    return model, [_video(item, position) for position, item in enumerate(items)]


def _video(item, position: int) -> VideoRequest:
    where = f"videos[{position}]"
    if not isinstance(item, dict):
        raise ProtocolError(400, f"{where} must be an object with 'path' or 'video_b64'")
    identifier = item.get("id", str(position))
    prompt = item.get("prompt")
    if not isinstance(identifier, str):
        raise ProtocolError(400, f"{where}.id must be a string")
    if prompt is not None and not isinstance(prompt, str):
        raise ProtocolError(400, f"{where}.prompt must be a string or absent")
    has_path, has_data = item.get("path") is not None, item.get("video_b64") is not None
    if has_path == has_data:
        raise ProtocolError(400, f"{where} must have exactly one of 'path' and 'video_b64'")
    if has_path:
        if not isinstance(item["path"], str) or not item["path"]:
            raise ProtocolError(400, f"{where}.path must be a non-empty string")
        return VideoRequest(identifier, prompt, path=item["path"])
    if not isinstance(item["video_b64"], str):
        raise ProtocolError(400, f"{where}.video_b64 must be a base64 string")
    try:
        data = base64.b64decode(item["video_b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(400, f"{where}.video_b64 is not valid base64") from None
    return VideoRequest(identifier, prompt, data=data)
