"""``vpt serve``: serve reward models over HTTP, with dynamic batching (see ``vpt.server``)."""

from __future__ import annotations

from typing import List, Optional

import typer

from vpt.commands._lists import comma_list


def serve(
    models: List[str] = typer.Option(
        ..., "--model", "-m", help="Reward model to serve; repeat or comma-separate for several (any name "
                                   "`vpt score -m` takes)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; the "
                                                         "server reads any path a request names)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on; 0 picks a free one (the ready line says "
                                                  "which)."),
    model_dir: Optional[str] = typer.Option(None, "--model-dir", help="Local copy of the videoreward weights "
                                            "(default: $VPT_VIDEOREWARD_DIR, then the Hugging Face hub)."),
    device: str = typer.Option("auto", "--device", help="Device of learned reward models: auto, cpu, cuda, cuda:1."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights dtype of learned reward models: bf16 or fp32."),
    batch_size: int = typer.Option(8, "--batch-size", help="Videos per forward pass of a learned model (as in "
                                                           "`vpt score`)."),
    max_batch: int = typer.Option(16, "--max-batch", help="Most videos, across requests, scored in one round."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", help="How long the first video of a round waits for "
                                                                  "others."),
    max_body_mb: float = typer.Option(256.0, "--max-body-mb", help="Largest request body; larger ones get 413."),
    workers: int = typer.Option(2, "--workers", help="Decoding threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No request log; only the ready line and errors."),
) -> None:
    """Serve reward models over HTTP: POST /score, GET /info, GET /health.

    When it accepts connections it prints one line on stderr with its address and models, e.g.
    `vpt serve: http://127.0.0.1:8000/ (brightness,motion)`. SIGINT or SIGTERM stops it after the requests in
    flight are answered (exit 0). Score through it with `vpt score -m http://HOST:PORT/`.

    Example:

    \b
      vpt serve -m brightness,motion -m zoo/videoreward --port 8000
      vpt score -m http://127.0.0.1:8000/ videos/ > scores.parquet
    """
    from vpt.errors import VptError
    from vpt.models.dtypes import check_dtype
    from vpt.rewards.registry import load_reward_models
    from vpt.server.app import bind, check_port, create_app, serve as run_server, url_of
    from vpt.server.protocol import Limits

    names = comma_list(models, "--model", "brightness,motion")
    dtype = check_dtype(dtype)
    if batch_size < 1 or workers < 1:
        raise VptError("--batch-size and --workers must be at least 1")
    check_port(port)
    limits = Limits(int(max_body_mb * 1024 * 1024), max_batch, max_wait_ms).check()
    reward_models = load_reward_models(names, model_dir, device, batch_size, False, dtype)
    sources = _sources(names, reward_models)
    app = create_app(reward_models, sources, limits, workers)
    sock = bind(host, port)
    served = ", ".join(model.name for model in reward_models)
    run_server(app, sock, lambda: typer.echo(f"vpt serve: {url_of(sock)} ({served})", err=True),
               access_log=not quiet)
    if not quiet:
        typer.echo("vpt serve: stopped", err=True)


def _sources(names, reward_models) -> list[str]:
    """What named each loaded model: the heuristics share one model, named by all of theirs."""
    from vpt.rewards.heuristic import HEURISTICS

    heuristics = ",".join(name for name in names if name in HEURISTICS)
    others = iter(name for name in names if name not in HEURISTICS)
    return [heuristics if model.name == heuristics and heuristics else next(others) for model in reward_models]
