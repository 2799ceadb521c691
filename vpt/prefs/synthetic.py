"""Synthetic temporal negatives (TeleBoost Stage III): from a good clip, make clips that are worse only in time.

TeleBoost (arXiv 2602.07595) aligns the generator with preference pairs in its third stage. Besides human and
policy-on-policy pairs, temporal corruptions of a good clip give pairs whose two sides differ *only* in motion, so a
reward model (or DPO directly) learns what broken time looks like without any confound in content or image
quality. Three corruptions, each a map from output frame to source frame (``int64 [T]``, see
:func:`negative_indices`):

- ``reverse``: the clip played backwards (:func:`reverse_indices`);
- ``shuffle``: frames permuted inside consecutive windows of ``window`` frames, never the identity in a window of
  two frames or more (:func:`shuffle_indices`);
- ``freeze``: a span of about ``freeze_fraction`` of the clip shows the span's first frame throughout
  (:func:`freeze_indices`).

:func:`make_negatives` decodes each clip once (all frames), writes every negative as an H.264 mp4 with the source's
fps, frame count and size (``out_dir/<name>.<kind>.mp4``), and returns one ``prefs`` row per (clip, kind) with the
source preferred, on side A (the caller balances the sides). Labels: ``mq`` and ``overall`` are "a" (the motion is
worse), ``vq`` and ``ta`` "invalid" (both sides show the same frames of the same content, so neither is better
there; "invalid" masks them out of losses and metrics).

Negatives that would not differ from their source (a static clip, the reversal of a palindromic clip, a freeze
over frames that were already frozen) are left out: a pair of two equal clips labelled "a" would teach noise.

Everything is seeded per (seed, clip id, kind) (:func:`kind_rng`), so the output does not depend on the order of
the clips or on the number of worker threads.
"""

from __future__ import annotations

import os
import shutil
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vpt.errors import VideoReadError, VptError
from vpt.io.atomic import check_new_directory, commit, temporary_sibling
from vpt.io.names import file_stems
from vpt.prefs.pairs import pair_id

__all__ = [
    "KINDS",
    "SKIP_REASONS",
    "Clip",
    "SyntheticPairs",
    "freeze_indices",
    "kind_rng",
    "load_clips",
    "make_negatives",
    "negative_indices",
    "reverse_indices",
    "shuffle_indices",
    "synthetic_prefs",
]

KINDS = ("reverse", "shuffle", "freeze")
# Why a negative (one clip, one kind) was not made; make_negatives counts negatives, not clips.
SKIP_REASONS = ("unreadable", "too short", "odd size", "time-symmetric", "no visible change")
LABELS = {"vq": "invalid", "mq": "a", "ta": "invalid", "overall": "a"}
SYMMETRIC_COLUMN = "time_symmetric"
DEFAULT_WINDOW = 4
DEFAULT_FREEZE_FRACTION = 0.25
# Largest per-pixel difference (uint8 levels) under which a negative counts as equal to its source.
CHANGE_TOLERANCE = 1

_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------------------------------
# Frame indices (pure, no I/O)


def _check_length(num_frames) -> int:
    if isinstance(num_frames, bool) or int(num_frames) != num_frames:
        raise ValueError(f"num_frames must be an integer, got {num_frames!r}")
    num_frames = int(num_frames)
    if num_frames < 2:
        raise ValueError(f"a temporal negative needs at least 2 frames, got {num_frames}")
    return num_frames


def reverse_indices(num_frames: int) -> np.ndarray:
    """``int64 [T]``: ``[T-1, T-2, ..., 0]``, the clip played backwards. ``T >= 1``."""
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    return np.arange(int(num_frames) - 1, -1, -1, dtype=np.int64)


def shuffle_indices(num_frames: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """``int64 [T]``: frames permuted inside consecutive windows ``[0, window), [window, 2 window), ...``.

    Every window of two frames or more (the last one may be shorter) gets a permutation other than the identity,
    redrawn until it is one, so each window visibly changes (a window of 2 is always swapped). A trailing window of
    one frame stays in place. Frames never leave their window: the corruption is local, the clip's overall course
    is kept. ``T >= 2`` and ``window >= 2``, else ``ValueError``.
    """
    num_frames = _check_length(num_frames)
    if isinstance(window, bool) or int(window) != window or window < 2:
        raise ValueError(f"window must be an integer >= 2 (a window of 1 cannot be shuffled), got {window!r}")
    window = int(window)
    indices = np.arange(num_frames, dtype=np.int64)
    for start in range(0, num_frames, window):
        size = min(window, num_frames - start)
        if size < 2:
            continue
        identity = np.arange(size)
        permutation = rng.permutation(size)
        while np.array_equal(permutation, identity):
            permutation = rng.permutation(size)
        indices[start:start + size] = start + permutation
    return indices


def freeze_indices(num_frames: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``int64 [T]``: the identity, except a span of ``L`` frames that all show the span's first frame.

    ``L = max(2, round(fraction * T))`` (half to even), at most ``T``; the span starts at a position drawn uniformly
    from ``[0, T - L]``, so the clip hangs and then jumps on to where it would have been. ``T >= 2`` and
    ``0 < fraction <= 1``, else ``ValueError``.
    """
    num_frames = _check_length(num_frames)
    if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    # A span of one frame would be no freeze at all.
    length = min(num_frames, max(2, int(round(float(fraction) * num_frames))))
    start = int(rng.integers(0, num_frames - length + 1))
    indices = np.arange(num_frames, dtype=np.int64)
    indices[start:start + length] = start
    return indices


def kind_rng(seed: int, clip_id: str, kind: str) -> np.random.Generator:
    """The generator of one (clip, kind): seeded by ``(seed, crc32(clip id), index of kind in KINDS)``, so a clip's
    negatives do not depend on which other clips or kinds are made, in which order, or by how many threads."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return np.random.default_rng([int(seed) & _MASK64, zlib.crc32(clip_id.encode("utf-8")), KINDS.index(kind)])


def negative_indices(kind: str, num_frames: int, rng: np.random.Generator, window: int = DEFAULT_WINDOW,
                     freeze_fraction: float = DEFAULT_FREEZE_FRACTION) -> np.ndarray:
    """``int64 [T]`` source frame of each output frame for ``kind`` (one of :data:`KINDS`)."""
    if kind == "reverse":
        _check_length(num_frames)
        return reverse_indices(num_frames)
    if kind == "shuffle":
        return shuffle_indices(num_frames, window, rng)
    if kind == "freeze":
        return freeze_indices(num_frames, freeze_fraction, rng)
    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")


def _unchanged(frames: np.ndarray, indices: np.ndarray, tolerance: int = CHANGE_TOLERANCE) -> bool:
    """Whether ``frames[indices]`` equals ``frames`` (uint8 ``[T, H, W, 3]``) within ``tolerance`` levels."""
    # Frame by frame, stopping at the first difference: no [T, H, W, 3] int16 copy of a long HD clip.
    for position in np.flatnonzero(indices != np.arange(indices.size)):
        difference = np.abs(frames[indices[position]].astype(np.int16) - frames[position].astype(np.int16))
        if difference.max() > tolerance:
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# Clips


@dataclass(frozen=True)
class Clip:
    """A good clip to make negatives from.

    ``file``: where to read it. ``time_symmetric``: the clip looks the same played backwards (its reversal is no
    negative); ``None`` when not known. :func:`make_negatives` also takes any object with ``id``, ``file`` and
    ``prompt`` attributes, such as :class:`vpt.io.manifest.VideoItem` (``time_symmetric`` then counts as unknown).
    """

    id: str
    file: Path
    prompt: str | None = None
    time_symmetric: bool | None = None


_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0", ""}


def _as_flag(value, manifest: str, column: str, number: int) -> bool:
    if value is None:  # not marked: an ordinary clip
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise VptError(f"{manifest}: row {number}: column '{column}' has {value!r}; expected true or false")


def load_clips(manifest: str | os.PathLike, *, symmetric_column: str | None = None) -> list[Clip]:
    """The clips of a ``videos`` manifest (Parquet, CSV, JSONL, or ``-`` for stdin; read once), in row order.

    Relative paths resolve against the manifest's directory, as everywhere (:mod:`vpt.io.manifest`). With
    ``symmetric_column`` (usually ``"time_symmetric"``) each clip's ``time_symmetric`` comes from that boolean
    column (null = false); a manifest without it raises :class:`VptError` naming the manifest and the column.
    Without it, ``time_symmetric`` is ``None`` (unknown).
    """
    from vpt.io.manifest import read_video_table
    from vpt.io.tables import resolve_path

    name = os.fspath(manifest)
    table = read_video_table(name)
    if symmetric_column is not None and symmetric_column not in table.column_names:
        raise VptError(f"{name}: has no column '{symmetric_column}' marking the time-symmetric videos (true when a "
                       f"video looks the same played backwards); add it, or do not skip time-symmetric videos")
    ids = table.column("id").to_pylist()
    paths = table.column("path").to_pylist()
    prompts = table.column("prompt").to_pylist() if "prompt" in table.column_names else [None] * len(ids)
    flags = (table.column(symmetric_column).to_pylist() if symmetric_column is not None else [None] * len(ids))
    clips: list[Clip] = []
    first_path: dict[str, str] = {}
    for number, (clip_id, path, prompt, flag) in enumerate(zip(ids, paths, prompts, flags), start=1):
        if clip_id in first_path:
            raise VptError(f"two videos have the id '{clip_id}' ({first_path[clip_id]} and {path}); "
                           "give them distinct ids in a videos manifest")
        first_path[clip_id] = path
        clips.append(Clip(
            id=clip_id,
            file=resolve_path(path, name, f"{name}: row {number}"),
            prompt=prompt,
            time_symmetric=None if symmetric_column is None else _as_flag(flag, name, symmetric_column, number),
        ))
    return clips


# ---------------------------------------------------------------------------------------------------------------------
# Making the negatives


@dataclass
class SyntheticPairs:
    """What :func:`make_negatives` made.

    ``rows``: ``prefs`` rows, source on side A, absolute paths, in clip order then kind order. ``skipped``: number
    of negatives (clip, kind) not made, per reason in :data:`SKIP_REASONS` (only reasons that occurred).
    ``unreadable``: the one-line error of each unreadable video (when ``skip_unreadable``), in clip order.
    ``clips``: how many clips were given.
    """

    rows: list[dict]
    clips: int = 0
    skipped: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Options:
    out_dir: Path  # where the files will be (the rows name it)
    write_dir: Path  # where they are written until all are done (a hidden sibling of out_dir)
    kinds: tuple[str, ...]
    seed: int
    window: int
    freeze_fraction: float
    skip_symmetric: bool
    skip_unreadable: bool
    crf: int
    reencode_source: bool
    change_tolerance: int


def _write(options: _Options, name: str, frames: np.ndarray, fps: float) -> str:
    """Encode ``frames`` as ``name`` in the directory being written; returns the file's absolute final path."""
    from vpt.io.video import write_video

    try:
        write_video(options.write_dir / name, frames, fps=fps, crf=options.crf)
    except OSError as error:
        raise VptError(f"{options.out_dir / name}: cannot write ({error.strerror or error})") from None
    return os.path.abspath(options.out_dir / name)


def _negatives_of(clip, stem: str, options: _Options) -> tuple[list[dict], Counter, str | None]:
    """Rows, skip counts and unreadable message of one clip (runs in a worker thread)."""
    from vpt.io.video import decode

    skipped: Counter = Counter()
    kinds = options.kinds
    try:
        video = decode(clip.file)
    except VideoReadError as error:
        if not options.skip_unreadable:
            raise
        skipped["unreadable"] += len(kinds)
        return [], skipped, str(error)
    frames = video.frames  # uint8 [T, H, W, 3]
    count, height, width = frames.shape[:3]
    if count < 2:
        skipped["too short"] += len(kinds)
        return [], skipped, None
    if height % 2 or width % 2:  # yuv420p cannot hold it at the same size; resizing would change the clip
        skipped["odd size"] += len(kinds)
        return [], skipped, None

    planned = []
    for kind in kinds:
        if kind == "reverse" and options.skip_symmetric and clip.time_symmetric:
            skipped["time-symmetric"] += 1
            continue
        indices = negative_indices(kind, count, kind_rng(options.seed, clip.id, kind), options.window,
                                   options.freeze_fraction)
        if _unchanged(frames, indices, options.change_tolerance):
            skipped["no visible change"] += 1
            continue
        planned.append((kind, indices))
    if not planned:
        return [], skipped, None

    fps = video.info.fps
    if options.reencode_source:
        # Both sides through the same encoder: otherwise "has x264 artefacts" alone would predict the loser.
        source = _write(options, f"{stem}.source.mp4", frames, fps)
    else:
        source = os.path.abspath(clip.file)
    rows = []
    for kind, indices in planned:
        negative = _write(options, f"{stem}.{kind}.mp4", frames[indices], fps)
        origin = f"synthetic:{kind}"
        rows.append({
            "pair_id": pair_id(clip.id, f"{clip.id}:{kind}", clip.prompt, origin),
            "path_a": source,
            "path_b": negative,
            "prompt": clip.prompt,
            "id_a": clip.id,
            "id_b": f"{clip.id}:{kind}",
            **LABELS,
            "source": origin,
        })
    return rows, skipped, None


def _check_options(kinds, window, freeze_fraction, crf, workers, change_tolerance) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = [kinds]
    kinds = tuple(dict.fromkeys(kinds))  # a kind named twice would write its file twice
    if not kinds:
        raise VptError(f"no kind of negative asked for; choose from {', '.join(KINDS)}")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise VptError(f"unknown kind of negative '{unknown[0]}'; choose from {', '.join(KINDS)}")
    if "shuffle" in kinds and (isinstance(window, bool) or int(window) != window or window < 2):
        raise VptError(f"shuffle window must be a whole number of frames >= 2, got {window!r}")
    if "freeze" in kinds and (isinstance(freeze_fraction, bool) or not 0.0 < float(freeze_fraction) <= 1.0):
        raise VptError(f"freeze fraction must be in (0, 1], got {freeze_fraction!r}")
    if isinstance(crf, bool) or int(crf) != crf or not 0 <= crf <= 51:
        raise VptError(f"crf must be a whole number in 0..51 (lower is better quality), got {crf!r}")
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise VptError(f"workers must be a whole number >= 1, got {workers!r}")
    if isinstance(change_tolerance, bool) or int(change_tolerance) != change_tolerance or change_tolerance < 0:
        raise VptError(f"change tolerance must be a whole number of levels >= 0, got {change_tolerance!r}")
    return kinds


def make_negatives(
    clips: Sequence,
    out_dir: str | os.PathLike,
    kinds: Sequence[str] = KINDS,
    *,
    seed: int = 0,
    window: int = DEFAULT_WINDOW,
    freeze_fraction: float = DEFAULT_FREEZE_FRACTION,
    skip_symmetric: bool = False,
    skip_unreadable: bool = False,
    workers: int = 1,
    crf: int = 10,
    reencode_source: bool = False,
    change_tolerance: int = CHANGE_TOLERANCE,
    on_progress: Callable[[int], None] | None = None,
) -> SyntheticPairs:
    """Write the temporal negatives of ``clips`` into the new directory ``out_dir`` (created whole at the end, or
    not at all) and return their ``prefs`` rows (unbalanced).

    ``clips``: :class:`Clip` objects, or anything with ``id``, ``file`` and ``prompt`` (e.g. ``VideoItem``); ids
    must be unique. Each clip is decoded once (all frames, ``uint8 [T, H, W, 3]``); for each of ``kinds`` (a
    subset of :data:`KINDS`, in the order given) the frames ``frames[negative_indices(kind, T, rng)]`` are written
    to ``out_dir/<safe_name(id)>.<kind>.mp4`` at the source file's fps, with ``crf`` (10 = visually lossless).

    Each row: ``pair_id`` (of the two ids, the prompt and ``source``), ``path_a`` (the source clip,
    absolute), ``path_b`` (the negative, absolute), ``prompt``, ``id_a`` (the clip id), ``id_b``
    (``"<id>:<kind>"``), ``vq`` "invalid", ``mq`` "a", ``ta`` "invalid", ``overall`` "a", ``source``
    ``"synthetic:<kind>"``. Rows come in clip order, then kind order, whatever ``workers`` is.

    Left out and counted in ``skipped`` (per negative, see :data:`SKIP_REASONS`): a clip of fewer than 2 frames
    ("too short"); a clip of odd height or width ("odd size": H.264 4:2:0 cannot store it at its own size); the
    reversal of a clip marked ``time_symmetric`` when ``skip_symmetric`` ("time-symmetric"); a negative whose
    frames all equal the source's frames within ``change_tolerance`` levels (largest per-pixel difference of the
    decoded uint8 frames, before encoding; default :data:`CHANGE_TOLERANCE` = 1) ("no visible change"). An
    unreadable video raises its one-line :class:`VptError` (``"<path>: <reason>"``), or is counted as "unreadable"
    with ``skip_unreadable``.

    ``seed``: with the clip id and the kind, seeds each negative (:func:`kind_rng`). ``window``: shuffle window
    (frames, >= 2). ``freeze_fraction``: share of the clip that freezes (0, 1]. ``skip_symmetric`` (with
    ``reverse`` among ``kinds``) needs clips that carry ``time_symmetric`` (:func:`load_clips` with
    ``symmetric_column``); ``ValueError`` otherwise.
    ``change_tolerance``: raise it (e.g. to 16) to also drop negatives that differ from their source only by codec
    noise, such as the reversal of a lossy-encoded palindrome (a few levels at crf 10, 14 in a 48x48 check at crf
    23); a small object moving a pixel still differs by far more.
    ``workers``: clips decoded and encoded at once in threads (decord and PyAV release the GIL).
    ``reencode_source``: also write each source through the same encoder as ``<name>.source.mp4`` and use that as
    side A, so that both sides carry the same codec artefacts (a reward model could otherwise learn
    "re-encoded = worse" instead of the corruption); written only for clips with at least one negative.
    ``on_progress(n)``: called in the calling thread with the number of clips just finished (1 each time).
    """
    kinds = _check_options(kinds, window, freeze_fraction, crf, workers, change_tolerance)
    clips = list(clips)
    skip_symmetric = bool(skip_symmetric) and "reverse" in kinds  # only a reversal can be symmetric
    if skip_symmetric:
        unknown = [clip.id for clip in clips if getattr(clip, "time_symmetric", None) is None]
        if unknown:
            raise ValueError(f"skip_symmetric needs to know whether each clip is time-symmetric, and clip "
                             f"'{unknown[0]}' does not say; load the clips with load_clips(..., symmetric_column=...)")
    repeated = [clip_id for clip_id, times in Counter(clip.id for clip in clips).items() if times > 1]
    if repeated:  # their negatives would overwrite each other
        raise VptError(f"two videos have the id '{repeated[0]}'; give them distinct ids in a videos manifest")
    stems = file_stems([clip.id for clip in clips])
    out_dir = check_new_directory(out_dir, "--out-dir")
    options = _Options(out_dir=out_dir, write_dir=temporary_sibling(out_dir), kinds=kinds, seed=int(seed),
                       window=int(window), freeze_fraction=float(freeze_fraction),
                       skip_symmetric=bool(skip_symmetric), skip_unreadable=bool(skip_unreadable), crf=int(crf),
                       reencode_source=bool(reencode_source), change_tolerance=int(change_tolerance))
    options.write_dir.mkdir(parents=True)
    try:
        results = _negatives_of_all(clips, stems, options, int(workers), on_progress)
        commit(options.write_dir, out_dir)
    finally:
        shutil.rmtree(options.write_dir, ignore_errors=True)

    made = SyntheticPairs(rows=[], clips=len(clips))
    for rows, skipped, unreadable in results:
        made.rows.extend(rows)
        made.skipped.update(skipped)
        if unreadable is not None:
            made.unreadable.append(unreadable)
    return made


def _negatives_of_all(clips: Sequence, stems: Sequence[str], options: _Options, workers: int,
                      on_progress: Callable[[int], None] | None) -> list:
    """:func:`_negatives_of` of every clip, in clip order, on ``workers`` threads."""
    results: list = [None] * len(clips)
    if workers == 1 or len(clips) <= 1:
        for position, clip in enumerate(clips):
            results[position] = _negatives_of(clip, stems[position], options)
            if on_progress is not None:
                on_progress(1)
    else:
        pool = ThreadPoolExecutor(max_workers=min(workers, len(clips)), thread_name_prefix="vpt-synthetic")
        try:
            futures = {pool.submit(_negatives_of, clip, stems[position], options): position
                       for position, clip in enumerate(clips)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_progress is not None:
                    on_progress(1)
        finally:
            # On an error (or Ctrl-C) do not start the clips still queued; the running ones finish their files.
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def synthetic_prefs(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    kinds: Sequence[str] = KINDS,
    *,
    skip_symmetric: bool = False,
    symmetric_column: str = SYMMETRIC_COLUMN,
    **options,
) -> SyntheticPairs:
    """:func:`load_clips` then :func:`make_negatives`: the negatives of every clip of a ``videos`` manifest.

    With ``skip_symmetric`` (and ``reverse`` among ``kinds``) the manifest must have ``symmetric_column`` (default
    ``time_symmetric``); ``options``
    are those of :func:`make_negatives` (``seed``, ``window``, ``freeze_fraction``, ``skip_unreadable``,
    ``workers``, ``crf``, ``reencode_source``, ``on_progress``).
    """
    wanted = skip_symmetric and "reverse" in ([kinds] if isinstance(kinds, str) else kinds)
    clips = load_clips(manifest, symmetric_column=symmetric_column if wanted else None)
    return make_negatives(clips, out_dir, kinds, skip_symmetric=skip_symmetric, **options)
