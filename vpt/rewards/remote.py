"""A reward server (``vpt serve``) as a reward model: ``--model http://HOST:PORT/``.

URL forms
---------
``http://HOST:PORT/``
    every model the server serves, their dimensions in the server's order;
``http://HOST:PORT/?model=NAME``
    one served model, by the name ``GET /info`` lists (``brightness,motion`` for heuristics served together, the
    checkpoint path for a VideoReward directory; percent-encode what a URL cannot hold).

Two more query parameters, each also settable by an environment variable (the URL wins): ``timeout`` (seconds a
request may take, ``$VPT_REMOTE_TIMEOUT``, default 300) and ``retries`` (``$VPT_REMOTE_RETRIES``, default 4): a
request that cannot connect, times out, or gets 503 (a server shutting down) is tried again that many times, after
0.5, 1, 2, 4, ... seconds (at most 30).

The model reads ``/info`` once when loaded, to learn the dimensions; it reads the video files itself
(``sampling = None``) and posts their bytes, base64 in JSON, ``batch_size`` videos per request (fewer when the
server's body limit needs it). A video the server could not score becomes that video's ``error``; a request the
server refuses as a whole (400, 404, 413) or a server that stays unreachable is a one-line :class:`VptError`. Which
device and dtype score is the server's choice (``vpt serve --device --dtype``); ``/info`` reports them.
"""

from __future__ import annotations

import base64
import math
import os
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import parse_qs, urlsplit, urlunsplit

import numpy as np

from vpt.errors import VptError
from vpt.rewards.model import ERROR_KEY, RewardModel

TIMEOUT_VARIABLE = "VPT_REMOTE_TIMEOUT"
RETRIES_VARIABLE = "VPT_REMOTE_RETRIES"
DEFAULT_TIMEOUT = 300.0
DEFAULT_RETRIES = 4
_BACKOFF, _MAX_BACKOFF = 0.5, 30.0
_JSON_OVERHEAD = 1024  # bytes of a request besides the videos' base64 (ids, prompts, brackets), per video


class RemoteReward(RewardModel):
    """The models of one reward server, scored over HTTP."""

    sampling = None

    def __init__(self, url: str, batch_size: int = 4):
        if batch_size < 1:
            raise VptError(f"batch_size must be at least 1, got {batch_size}")
        self.name = url
        self.batch_size = int(batch_size)
        self.base, self.model, self.timeout, self.retries = _parse_url(url)
        import httpx

        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)))
        try:
            info = self._request("GET", "info").json()
            served = {model["name"]: model for model in info["models"]}
        except (ValueError, KeyError, TypeError):
            raise VptError(f"{url}: not a vpt reward server (its /info is not what `vpt serve` answers)") from None
        if self.model is not None and self.model not in served:
            raise VptError(f"{url}: the server serves no model '{self.model}'; it serves: {', '.join(served)}")
        chosen = [served[self.model]] if self.model is not None else info["models"]
        self.served = chosen  # /info's description of each model scored: kind, source, dtype, device, ...
        self.dimensions = tuple(dimension for model in chosen for dimension in model["dimensions"])
        self.primary = chosen[0]["primary"]
        self.needs_prompt = any(model["needs_prompt"] for model in chosen)
        self.max_body_bytes = int(info["limits"]["max_body_bytes"])

    def score(self, videos: Sequence, prompts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """Scores of the files ``videos`` (paths), with ``"error"`` for those the server could not score."""
        count = len(videos)
        values = {dimension: np.full(count, np.nan) for dimension in self.dimensions}
        errors: list[str | None] = [None] * count
        batch: list[tuple[int, dict]] = []
        size = 0
        for position, (file, prompt) in enumerate(zip(videos, prompts)):
            item = {"id": str(position), "video_b64": base64.b64encode(Path(file).read_bytes()).decode("ascii")}
            if prompt is not None:
                item["prompt"] = prompt
            item_size = len(item["video_b64"]) + len(prompt or "") * 6 + _JSON_OVERHEAD
            if item_size > self.max_body_bytes:
                errors[position] = (f"larger than the server's request limit ({self.max_body_bytes} bytes); start "
                                    "it with a larger --max-body-mb")
                continue
            if batch and (len(batch) == self.batch_size or size + item_size > self.max_body_bytes):
                self._score_batch(batch, values, errors)
                batch, size = [], 0
            batch.append((position, item))
            size += item_size
        if batch:
            self._score_batch(batch, values, errors)
        return {**values, ERROR_KEY: errors}

    def _score_batch(self, batch: list[tuple[int, dict]], values: dict, errors: list) -> None:
        body = {"videos": [item for _, item in batch]}
        if self.model is not None:
            body["model"] = self.model
        response = self._request("POST", "score", json=body, accept=(422,))
        results = response.json()["results"]
        for (position, _), result in zip(batch, results):
            if result["error"] is not None:
                errors[position] = result["error"]
                continue
            for dimension in self.dimensions:
                values[dimension][position] = float(result["scores"][dimension])

    def _request(self, method: str, path: str, json=None, accept: tuple[int, ...] = ()):
        """The response to ``method /path``, tried again after connection failures, timeouts and 503."""
        import httpx

        url = self.base + path
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, url, json=json)
            except httpx.TransportError as error:  # connection refused or dropped, timeouts
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                retry = True
            else:
                if response.status_code == 200 or response.status_code in accept:
                    return response
                reason = _server_error(response)
                retry = response.status_code == 503
                if not retry:
                    raise VptError(f"reward server {self.name}: {reason}")
            if attempt < self.retries:
                time.sleep(min(_MAX_BACKOFF, _BACKOFF * 2 ** attempt))
        tries = f"{self.retries + 1} tries" if self.retries else "1 try"
        raise VptError(f"reward server {self.name} is unreachable ({reason}; {tries}); start it with `vpt serve -m "
                       "MODEL --port PORT`, check the URL, or allow more ?retries=N")


def _server_error(response) -> str:
    try:
        return f"HTTP {response.status_code}: {response.json()['error']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text.strip()[:200] or response.reason_phrase}"


def _parse_url(url: str) -> tuple[str, str | None, float, int]:
    """(base URL ending in '/', the model asked for or None, timeout seconds, retries) of a server URL."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise VptError(f"{url}: not a server URL; use http://HOST:PORT/ (optionally ?model=NAME)")
    query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - {"model", "timeout", "retries"})
    if unknown:
        raise VptError(f"{url}: unknown URL parameter '{unknown[0]}'; known: model, timeout, retries")
    timeout = _number(query.get("timeout", os.environ.get(TIMEOUT_VARIABLE)), DEFAULT_TIMEOUT, url, "timeout",
                      TIMEOUT_VARIABLE)
    retries = _number(query.get("retries", os.environ.get(RETRIES_VARIABLE)), DEFAULT_RETRIES, url, "retries",
                      RETRIES_VARIABLE)
    if timeout <= 0 or retries < 0 or retries != int(retries):
        raise VptError(f"{url}: timeout must be more than 0 seconds and retries a whole number >= 0 (URL "
                       f"parameters or ${TIMEOUT_VARIABLE}, ${RETRIES_VARIABLE})")
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/", "", ""))
    return base, query.get("model") or None, float(timeout), int(retries)


def _number(text: str | None, default: float, url: str, name: str, variable: str) -> float:
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise VptError(f"{url}: {name} '{text}' is not a number (URL parameter {name} or ${variable})")
    return value


def load_remote(url: str, *, device: str = "auto", batch_size: int = 4, dtype: str = "fp32") -> RemoteReward:
    """The reward model of a server URL (``device`` and ``dtype`` are the server's, so they are not used here)."""
    return RemoteReward(url, batch_size=batch_size)
