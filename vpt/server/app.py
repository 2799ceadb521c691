"""The reward server: any vpt reward models behind HTTP (FastAPI on uvicorn), with dynamic batching.

:func:`create_app` builds the application around loaded models (the protocol is in :mod:`vpt.server.protocol`);
:func:`serve` binds the socket (``port=0``: any free one), announces the address and runs until SIGINT or SIGTERM,
then stops accepting, finishes the requests in flight and returns normally (the command exits 0).

A request's videos are written to a temporary directory the server owns (bytes sent in the body) or read where
they are (a path), decoded by a small thread pool as they arrive (:func:`~vpt.rewards.engine.model_inputs`,
one decode for every model asked, each model's per-video work done there), and queued for the
:class:`~vpt.server.batching.Batcher`, whose one worker thread scores the videos of concurrent requests together. Temporary files are deleted when their request is
answered, and the directory when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from vpt import __version__
from vpt.errors import VideoReadError, VptError
from vpt.rewards.engine import model_inputs, output_columns
from vpt.rewards.model import ERROR_KEY, RewardModel
from vpt.server.batching import Batcher, Closed, Job
from vpt.server.protocol import Limits, ProtocolError, VideoRequest, dumps, parse_score_request

logger = logging.getLogger(__name__)
SHUTTING_DOWN = "the server is shutting down; retry on another server or later"


def describe(model: RewardModel, source: str) -> dict:
    """A served model as ``/info`` lists it; dtype and device are read from its weights (none: ``null``/cpu)."""
    dtype, device = None, "cpu"
    torch = sys.modules.get("torch")
    if torch is not None:
        for value in vars(model).values():
            if isinstance(value, torch.nn.Module):
                weight = next(value.parameters(), None)
                if weight is not None:
                    dtype, device = str(weight.dtype).removeprefix("torch."), str(weight.device)
                    break
    return {"name": model.name, "source": source, "kind": type(model).__name__, "dimensions": list(model.dimensions),
            "primary": model.primary, "needs_prompt": bool(model.needs_prompt), "dtype": dtype, "device": device}


def create_app(models: Sequence[RewardModel], sources: Sequence[str], limits: Limits = Limits(),
               decode_workers: int = 2):
    """The FastAPI application serving ``models`` (``sources``: what named each, for ``/info``)."""
    models = list(models)
    columns = output_columns(models)  # two served models may not write one column
    limits.check()
    if decode_workers < 1:
        raise VptError("--workers must be at least 1")
    described = [describe(model, source) for model, source in zip(models, sources)]
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        with tempfile.TemporaryDirectory(prefix="vpt-serve-") as scratch, \
                ThreadPoolExecutor(decode_workers, thread_name_prefix="vpt-serve-decode") as pool:
            state.update(batcher=Batcher(models, limits.max_batch, limits.max_wait_ms), pool=pool,
                         scratch=Path(scratch))
            try:
                yield
            finally:
                state["batcher"].close()  # after uvicorn let the requests in flight finish

    app = FastAPI(title="vpt reward server", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)

    def reply(status: int, content) -> Response:
        return Response(dumps(content), status_code=status, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return reply(error.status_code, {"error": f"{request.method} {request.url.path}: {error.detail}"})

    @app.get("/health")
    async def health():
        if state["batcher"].closed:
            return reply(503, {"error": SHUTTING_DOWN})
        return reply(200, {"status": "ok"})

    @app.get("/info")
    async def info():
        return reply(200, {"vpt_version": __version__, "models": described, "dimensions": columns,
                           "limits": limits.as_json(), "stats": state["batcher"].stats.as_json()})

    @app.post("/score")
    async def score(request: Request):
        try:
            body = await _read_body(request, limits.max_body_bytes)
            name, videos = await asyncio.get_running_loop().run_in_executor(state["pool"], parse_score_request, body)
            return reply(200, await _score(name, videos))
        except ProtocolError as error:
            return Response(error.body(), status_code=error.status, media_type="application/json")
        except ClientDisconnect:
            logger.info("a client went away before its request was read")
            return Response(status_code=400)
        except Exception as error:  # noqa: BLE001 - a model's failure is this request's; the server goes on
            logger.error("scoring failed: %s: %s", type(error).__name__, error)
            return reply(500, {"error": f"scoring failed: {type(error).__name__}: {error}"})

    async def _score(name: str | None, videos: list[VideoRequest]) -> dict:
        selection = _select(name)
        chosen = [models[i] for i in selection]
        for model in chosen:
            if model.needs_prompt:
                missing = next((v.id for v in videos if not (v.prompt or "").strip()), None)
                if missing is not None:
                    raise ProtocolError(400, f"model '{model.name}' needs a prompt for every video and "
                                             f"'{missing}' has none")
        dimensions = [d for model in chosen for d in model.dimensions]
        batcher: Batcher = state["batcher"]
        if batcher.closed:
            raise ProtocolError(503, SHUTTING_DOWN)
        loop = asyncio.get_running_loop()
        folder = state["scratch"] / uuid.uuid4().hex  # this request's files, removed when it is answered
        try:
            files = await loop.run_in_executor(state["pool"], _files, videos, folder)
            decoded = await asyncio.gather(*(loop.run_in_executor(state["pool"], _decode, file, chosen)
                                             for file in files))
            jobs = {i: Job(selection, inputs, video.prompt)
                    for i, (video, inputs) in enumerate(zip(videos, decoded)) if not isinstance(inputs, str)}
            try:
                batcher.submit(list(jobs.values()))
            except Closed:
                raise ProtocolError(503, SHUTTING_DOWN) from None
            try:
                outcomes = await asyncio.gather(*(asyncio.wrap_future(job.future) for job in jobs.values()))
            except VptError as error:
                raise ProtocolError(400, str(error)) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        by_position = dict(zip(jobs, outcomes))
        results = []
        for i, video in enumerate(videos):
            outcome = by_position.get(i, {ERROR_KEY: decoded[i]})
            error = outcome.get(ERROR_KEY)
            results.append({"id": video.id, "scores": None if error else outcome, "error": error})
        body = {"model": name, "dimensions": dimensions, "results": results}
        if all(result["error"] for result in results):
            first = results[0]
            raise ProtocolError(422, f"none of the {len(results)} videos could be scored (the first, "
                                     f"'{first['id']}': {first['error']})", {"results": results})
        return body

    def _select(name: str | None) -> tuple[int, ...]:
        if name is None:
            return tuple(range(len(models)))
        for i, model in enumerate(models):
            if model.name == name:
                return (i,)
        raise ProtocolError(404, f"unknown model '{name}'; this server serves: "
                                 f"{', '.join(model.name for model in models)}")

    return app


def _files(videos: Sequence[VideoRequest], folder: Path) -> list[Path]:
    """Where each video is read: its path, or its bytes written to ``folder``."""
    files = []
    for position, video in enumerate(videos):
        if video.data is None:
            files.append(Path(video.path))
            continue
        folder.mkdir(exist_ok=True)
        files.append(folder / f"{position}.video")
        files[-1].write_bytes(video.data)
    return files


def _decode(file: Path, models) -> tuple | str:
    """What each model scores for the video, or why it cannot be read (the reason becomes that video's ``error``)."""
    try:
        return model_inputs(file, models)
    except VideoReadError as error:
        return error.reason


async def _read_body(request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes (from ``Content-Length``,
    or while it streams in)."""
    declared = request.headers.get("content-length")
    too_large = ProtocolError(413, f"the body is larger than the server's limit of {limit} bytes; send fewer or "
                                   "smaller videos per request, or start the server with a larger --max-body-mb")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def check_port(port: int) -> int:
    """``port`` when it is one a server can listen on (0: any free one), else a one-line :class:`VptError`."""
    if not 0 <= port <= 65535:
        raise VptError(f"--port {port}: choose 0 (any free port) to 65535")
    return port


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one), or a one-line :class:`VptError`."""
    check_port(port)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        raise VptError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error}); choose "
                       "another --port (0 picks a free one) or --host") from None
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app, sock: socket.socket, on_ready: Callable[[], None], access_log: bool = True) -> None:
    """Run ``app`` on the bound ``sock`` until SIGINT or SIGTERM; ``on_ready()`` once it accepts connections."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                on_ready()

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the signal after its graceful stop; a served-and-stopped server has succeeded.
            handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            timeout_graceful_shutdown=None, lifespan="on", log_config=None)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # the ready line replaces its start-up story
    uvicorn_logger = logging.getLogger("uvicorn")  # its error and access loggers pass their records up to it
    uvicorn_logger.propagate = False
    if not uvicorn_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("vpt serve: %(message)s"))
        uvicorn_logger.addHandler(handler)
    Server(config).run(sockets=[sock])
