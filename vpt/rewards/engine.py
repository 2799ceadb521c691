"""The scoring engine every reward model runs through.

Videos are decoded by a pool of background threads (decord releases the GIL while decoding) a bounded window ahead
of the model, grouped into batches, scored, and handed back as rows in input order as soon as each batch is done,
so a long run streams its table and memory stays flat. A video that cannot be read becomes a row with ``error``
set (or stops the run when ``strict``).

Each video is decoded once for all the models of a run (:func:`~vpt.io.video.decode_for`): a model that wants other
frames or another size takes them from the same decoded clip, and each model's per-video work
(:meth:`~vpt.rewards.model.RewardModel.prepare`) runs right there on the decode thread (:func:`model_inputs`). A model
whose ``sampling`` is ``None`` reads the file itself (the reward-server client sends it on) and is handed the file's
path.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from vpt.errors import VideoReadError, VptError
from vpt.io.manifest import VideoItem
from vpt.io.video import FrameSampling, decode_for
from vpt.rewards.model import ERROR_KEY, RewardModel


@dataclass
class ScoreSummary:
    """Running statistics of a scoring run, per output column."""

    videos: int = 0
    errors: int = 0
    values: dict[str, list[float]] = field(default_factory=dict)
    first_error: str | None = None  # "id: reason" of the first video that failed

    def add(self, row: dict, dimensions: Sequence[str]) -> None:
        self.videos += 1
        if row["error"] is not None:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{row.get('path', row.get('id'))}: {row['error']}"
            return
        for dimension in dimensions:
            self.values.setdefault(dimension, []).append(row[dimension])

    def table(self) -> list[tuple[str, int, float, float, float, float]]:
        """(column, n, mean, std, min, max) per column; population std."""
        rows = []
        for name, values in self.values.items():
            mean = math.fsum(values) / len(values)
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
            rows.append((name, len(values), mean, std, min(values), max(values)))
        return rows


def output_columns(models: Sequence[RewardModel]) -> list[str]:
    """Dimension columns of several models, in order; two models may not write the same column."""
    columns: list[str] = []
    for model in models:
        for dimension in model.dimensions:
            if dimension in columns:
                raise VptError(f"two reward models write the column '{dimension}'; score them in separate runs")
            columns.append(dimension)
    return columns


def frame_samplings(models: Sequence[RewardModel]) -> list[FrameSampling]:
    """The distinct samplings the models want decoded (models that read files themselves want none)."""
    return list(dict.fromkeys(model.sampling for model in models if model.sampling is not None))


def model_inputs(file, models: Sequence[RewardModel]) -> tuple:
    """What each of ``models`` scores for ``file``: its prepared decoded video, or the path itself for a model that
    reads files. One decode serves every model; nothing is decoded when no model wants frames, but the file must
    still exist and be a video."""
    samplings = frame_samplings(models)
    if samplings:
        decoded = decode_for(file, samplings)
    else:
        from vpt.io.video import probe

        probe(file)
    return tuple(file if model.sampling is None else model.prepare(decoded[model.sampling]) for model in models)


def score_videos(
    items: Sequence[VideoItem],
    models: Sequence[RewardModel],
    batch_size: int = 8,
    workers: int = 2,
    strict: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[list[dict]]:
    """Score ``items`` with every model; yields the rows of each finished batch, in input order.

    Each row has ``id, path, prompt, model, score, error``, the carried manifest columns and one column per model
    dimension. ``score`` is the first model's primary dimension. ``on_progress(n)`` is called with the number of
    videos finished since the last call.
    """
    if batch_size < 1 or workers < 1:
        raise VptError("--batch-size and --workers must be at least 1")
    for model in models:
        if model.needs_prompt:
            unprompted = next((item for item in items if not item.prompt), None)
            if unprompted is not None:
                raise VptError(
                    f"reward model '{model.name}' needs a prompt for every video and '{unprompted.id}' has none; "
                    "give a manifest with a prompt column or --prompts TABLE"
                )
    columns = output_columns(models)
    model_names = ",".join(model.name for model in models)
    window = max(2 * batch_size, 2 * workers)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vpt-decode") as pool:
        pending: deque[tuple[VideoItem, Future]] = deque()
        upcoming = iter(items)

        def refill() -> None:
            while len(pending) < window:
                item = next(upcoming, None)
                if item is None:
                    return
                pending.append((item, pool.submit(model_inputs, item.file, models)))

        refill()
        while pending:
            batch: list[tuple[VideoItem, tuple | None, str | None]] = []
            while pending and len(batch) < batch_size:
                item, future = pending.popleft()
                refill()
                try:
                    batch.append((item, future.result(), None))
                except VideoReadError as error:
                    if strict:
                        for _, waiting in pending:
                            waiting.cancel()
                        raise
                    batch.append((item, None, error.reason))
            yield _score_batch(batch, models, columns, model_names)
            if on_progress is not None:
                on_progress(len(batch))


def _score_batch(batch, models, columns, model_names) -> list[dict]:
    rows = []
    for item, _, error in batch:
        row = {"id": item.id, "path": item.path, "prompt": item.prompt, "model": model_names, "score": None,
               "error": error, **item.carried}
        row.update({column: None for column in columns})
        rows.append(row)
    scored = [(row, inputs) for row, (_, inputs, _) in zip(rows, batch) if inputs is not None]
    if not scored:
        return rows
    results = score_inputs(models, [inputs for _, inputs in scored], [row["prompt"] for row, _ in scored])
    for (row, _), result in zip(scored, results):
        row.update(result)
        if row["error"] is None:
            row["score"] = row[models[0].primary]
    return rows


def score_inputs(models: Sequence[RewardModel], inputs: Sequence[tuple], prompts: Sequence[str | None]) -> list[dict]:
    """Score a batch with every model (``inputs``: :func:`model_inputs` of each video): per video,
    ``{dimension: float}`` or, when a model could not score it (a remote model's server refused the file),
    ``{"error": reason}``."""
    results: list[dict] = [{} for _ in inputs]
    for index, model in enumerate(models):
        scores = model.score_prepared([video[index] for video in inputs], list(prompts))
        errors = scores.get(ERROR_KEY) or [None] * len(inputs)
        for position, result in enumerate(results):
            if ERROR_KEY in result:
                continue
            if errors[position] is not None:
                results[position] = {ERROR_KEY: f"{model.name}: {errors[position]}"}
                continue
            for dimension in model.dimensions:
                result[dimension] = float(scores[dimension][position])
    return results
