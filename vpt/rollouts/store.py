"""The rollouts directory: one declared table plus the files its rows reference.

::

    OUT/rollouts.parquet         one row per video (schema ``rollouts``)
    OUT/videos/<id>.mp4          decoded videos
    OUT/latents/<group>.safetensors   per sample k: the recorded states [S, C, F, h, w] (key "k") and the final
                                 latent [C, F, h, w] the video was decoded from (key "final-k"), in the run's
                                 ``--latent-dtype`` (float32 or bfloat16; the table's ``latent_dtype`` column)
    OUT/embeds/<prompt>.safetensors   the prompt's text embeddings ("prompt", "negative"), computed once per prompt
    OUT/shards.json              byte size and sha256 of every shard, checked when the set is loaded

Text embeddings are stored without the zero rows the pipeline pads them with (``padded_length`` in the shard's
metadata restores them exactly), so a prompt costs its token count, not 512 rows. A run writes into a hidden
sibling directory renamed to ``OUT`` at the end: a killed run leaves no partial ``OUT``.

Readers get float32 latents whatever is stored (:meth:`RolloutSet.states`, :meth:`RolloutSet.final_latent`);
rollouts written before ``latent_dtype`` was recorded are float32. :func:`bytes_per_sample` sizes the latents.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from vpt.algo.flow_sde import state_indices_of
from vpt.distributed import Processes
from vpt.encoding.cache import (CLIP_METADATA, LATENTS_KEY, EncodedCache, content_key, entry_problem, needs_writing,
                                save_entry)
from vpt.encoding.embeddings import EMBEDS_METADATA, NEGATIVE_KEY, PROMPT_KEY, restore_padding, trim_padding
from vpt.errors import VptError
from vpt.io.atomic import atomic_path
from vpt.io.digest import file_digest
from vpt.rollouts.sampling import LATENT_DTYPES, GroupRollout

TABLE_FILE = "rollouts.parquet"
CHECKSUMS_FILE = "shards.json"
VIDEOS_DIR, LATENTS_DIR, EMBEDS_DIR = "videos", "latents", "embeds"
_AGAIN = "sample the rollouts again"


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Save atomically. ``metadata`` must have one key: safetensors writes several keys in no fixed order, and
    shards must be byte-identical across runs (their checksums are recorded)."""
    from safetensors.torch import save_file

    assert len(metadata) == 1

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(temporary), metadata=metadata)


def write_embeddings(directory: Path, stem: str, prompt_embeds: torch.Tensor,
                     negative_embeds: torch.Tensor | None) -> tuple[str, str | None]:
    """Write one prompt's embeddings ([1, L, D] each) to ``embeds/<stem>.safetensors``; returns the shard path
    (relative to ``directory``) and the negative key (None without guidance)."""
    relative = f"{EMBEDS_DIR}/{stem}.safetensors"
    tensors = {PROMPT_KEY: trim_padding(prompt_embeds[0].float())}
    if negative_embeds is not None:
        tensors[NEGATIVE_KEY] = trim_padding(negative_embeds[0].float())
    layout = {"padded_length": prompt_embeds.shape[1], "dtype": str(prompt_embeds.dtype).removeprefix("torch.")}
    _save(tensors, directory / relative, {EMBEDS_METADATA: json.dumps(layout, sort_keys=True)})
    return relative, NEGATIVE_KEY if negative_embeds is not None else None


def wan_latent_shape(height: int, width: int, frames: int, channels: int = 16, temporal: int = 4,
                     spatial: int = 8) -> tuple[int, int, int, int]:
    """(C, F, h, w) of the latent of a ``frames`` x ``height`` x ``width`` video under the Wan 2.1 VAE
    (diffusers ``AutoencoderKLWan``: ``z_dim`` 16, temporal scale 4, spatial scale 8, as ``WanPipeline.
    prepare_latents``): ``(16, (frames - 1) / 4 + 1, height / 8, width / 8)``. Raises ValueError for sizes the
    VAE does not map exactly."""
    if frames < 1 or (frames - 1) % temporal or height % spatial or width % spatial or min(height, width) < 1:
        raise ValueError(f"{height}x{width}x{frames}: need frames = 1 + a multiple of {temporal} and height, width "
                         f"positive multiples of {spatial}")
    return channels, (frames - 1) // temporal + 1, height // spatial, width // spatial


def bytes_per_sample(latent_shape: Sequence[int], recorded_steps: Iterable[int],
                     dtype: str | torch.dtype = "fp32") -> int:
    """Bytes of one sample's tensors in its latents shard: the states x_j of the recorded steps
    (j in :func:`state_indices_of`: each recorded step's start and end) plus the final latent, each of
    ``latent_shape`` (C, F, h, w), in ``dtype`` (a ``--latent-dtype`` value or a torch dtype). The safetensors
    header, the text embeddings (once per prompt) and the mp4 are not counted."""
    element = (LATENT_DTYPES[dtype] if isinstance(dtype, str) else dtype).itemsize
    count = 1
    for size in latent_shape:
        count *= int(size)
    return (len(state_indices_of(recorded_steps)) + 1) * count * element


def final_key(sample_index: int) -> str:
    """The shard key of a sample's final latent."""
    return f"final-{sample_index}"


def means_key(sample_index: int) -> str:
    """The shard key of a sample's recorded step means."""
    return f"means-{sample_index}"


def write_group(directory: Path, group: GroupRollout, prompt: str, group_id: str, group_stem: str,
                sample_ids: list[str], sample_stems: list[str], embeds_shard: str, negative_key: str | None,
                common: dict, fps: float) -> list[dict]:
    """Write a group's videos and latents under ``directory``; returns its ``rollouts`` rows."""
    from vpt.io.video import write_video

    latents_shard = f"{LATENTS_DIR}/{group_stem}.safetensors"
    # the states and latents are already in the run's latent dtype (and were sampled rounded to it)
    tensors = {str(k): group.states[k] for k in range(len(sample_ids))}
    tensors.update({final_key(k): group.latents[k] for k in range(len(sample_ids))})
    if group.means is not None:
        tensors.update({means_key(k): group.means[k] for k in range(len(sample_ids))})
    _save(tensors, directory / latents_shard,
          {"state_indices": json.dumps(group.state_indices)})
    rows = []
    sigmas = [float(value) for value in group.sigmas]
    for k, (sample_id, stem) in enumerate(zip(sample_ids, sample_stems)):
        path = f"{VIDEOS_DIR}/{stem}.mp4"
        write_video(directory / path, group.videos[k], fps)
        rows.append({
            "id": sample_id, "prompt": prompt, "prompt_id": group.prompt_id, "group_id": group_id,
            "sample_index": k, "seed": group.seeds[k], "step_seed": group.step_seeds[k], "sigmas": sigmas,
            "recorded_steps": list(group.recorded_steps),
            "log_probs": [float(value) for value in group.log_probs[k]], "path": path,
            "latents_shard": latents_shard, "latents_key": str(k), "final_latents_key": final_key(k),
            "embeds_shard": embeds_shard,
            "embeds_key": PROMPT_KEY, "negative_embeds_key": negative_key, "latent_dtype": group.latent_dtype,
            "means_key": None if group.means is None else means_key(k),
            **common,
        })
    return rows


def write_checksums(directory: Path) -> None:
    """``shards.json``: size and sha256 of every safetensors shard under ``directory``."""
    shards = sorted(directory.glob("*/*.safetensors"))
    entries = {path.relative_to(directory).as_posix(): file_digest(path) for path in shards}
    (directory / CHECKSUMS_FILE).write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")


@dataclass
class RolloutSet:
    """A loaded rollouts directory: its rows, and the tensors they reference (read on demand)."""

    directory: Path
    rows: list[dict]
    checksums: dict = field(default_factory=dict, repr=False)  # shards.json: shard -> {"bytes", "sha256"}
    _open: dict = field(default_factory=dict, repr=False)
    _layouts: dict = field(default_factory=dict, repr=False)
    _by_video: dict | None = field(default=None, repr=False)

    def row_of_video(self, path: str | os.PathLike) -> dict | None:
        """The row whose video is the file ``path`` (None when no row writes it)."""
        if self._by_video is None:
            self._by_video = {(self.directory / row["path"]).resolve(): row for row in self.rows}
        return self._by_video.get(Path(path).resolve())

    def _tensors(self, relative: str) -> dict[str, torch.Tensor]:
        if relative not in self._open:
            from safetensors.torch import load_file

            self._open[relative] = load_file(str(self.directory / relative))
        return self._open[relative]

    def states(self, row: dict) -> torch.Tensor:
        """float32 [S, C, F, h, w]: the states x_j, j in :func:`state_indices_of` (row's recorded steps), whatever
        dtype they are stored in (bfloat16 widens exactly: these are the states the sampler went on from)."""
        return self._tensors(row["latents_shard"])[row["latents_key"]].float()

    def final_latent(self, row: dict) -> torch.Tensor | None:
        """float32 [C, F, h, w]: the latent the row's video was decoded from, whatever dtype it is stored in (None
        for rollouts written before final latents were recorded)."""
        key = row.get("final_latents_key")
        return None if key is None else self._tensors(row["latents_shard"])[key].float()

    def means(self, row: dict) -> torch.Tensor | None:
        """float32 [K, C, F, h, w]: the sampling policy's mean of each recorded step (None unless sampled with
        --record-means)."""
        key = row.get("means_key")
        return None if key is None else self._tensors(row["latents_shard"])[key]

    def log_probs(self, row: dict) -> torch.Tensor:
        """float32 [K]: the stored log-prob of each recorded step."""
        return torch.tensor(row["log_probs"], dtype=torch.float32)

    def _embedding_layout(self, relative: str) -> tuple[int, torch.dtype]:
        """(padded length, dtype) the embeddings of a shard had before they were stored."""
        if relative not in self._layouts:
            from safetensors import safe_open

            with safe_open(str(self.directory / relative), framework="pt") as handle:
                layout = json.loads((handle.metadata() or {}).get(EMBEDS_METADATA, "{}"))
            self._layouts[relative] = (int(layout.get("padded_length", 0)),
                                       getattr(torch, layout.get("dtype", "float32")))
        return self._layouts[relative]

    def embeddings(self, row: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt's (and negative prompt's) text embeddings [1, L, D], padded as the pipeline pads them."""
        length, dtype = self._embedding_layout(row["embeds_shard"])
        tensors = self._tensors(row["embeds_shard"])

        def padded(key: str) -> torch.Tensor:
            return restore_padding(tensors[key], length, dtype)[None]

        negative = row.get("negative_embeds_key")
        return padded(row["embeds_key"]), None if negative is None else padded(negative)


def rollouts_directory_of(video: str | os.PathLike) -> Path | None:
    """The rollouts directory ``video`` was sampled into (``OUT`` of ``OUT/videos/X.mp4`` beside ``OUT/rollouts.
    parquet``), or None."""
    video = Path(video)
    directory = video.parent.parent
    return directory if video.parent.name == VIDEOS_DIR and (directory / TABLE_FILE).is_file() else None


def load_rollouts(directory: str | os.PathLike, verify: bool = True) -> RolloutSet:
    """Open a rollouts directory written by ``sample-rollouts``; with ``verify`` every shard's size and sha256 is
    checked against ``shards.json`` and every referenced key must exist. Raises :class:`VptError` naming the file."""
    from safetensors import SafetensorError, safe_open

    from vpt.io.tables import read_table

    directory = Path(directory)
    table_path = directory / TABLE_FILE
    if not table_path.is_file():
        raise VptError(f"{directory}: not a rollouts directory ({TABLE_FILE} is missing); {_AGAIN}")
    rows = read_table(table_path, "rollouts").to_pylist()
    checksums_path = directory / CHECKSUMS_FILE
    try:
        checksums = json.loads(checksums_path.read_text())
    except (OSError, ValueError) as error:
        raise VptError(f"{checksums_path}: missing or unreadable ({error.__class__.__name__}); {_AGAIN}") from None
    referenced: dict[str, tuple[int, set[str]]] = {}
    for number, row in enumerate(rows, start=1):
        for shard, key in ((row["latents_shard"], row["latents_key"]), (row["embeds_shard"], row["embeds_key"]),
                           (row["latents_shard"], row.get("final_latents_key"))):
            if key is not None:
                referenced.setdefault(shard, (number, set()))[1].add(key)
    for shard, (number, keys) in referenced.items():
        path = directory / shard
        if not path.is_file():
            raise VptError(f"{path}: shard missing (used by {table_path} row {number}); {_AGAIN}")
        expected = checksums.get(shard)
        if expected is None:
            raise VptError(f"{path}: shard not listed in {checksums_path}; {_AGAIN}")
        if verify and file_digest(path) != expected:
            raise VptError(f"{path}: corrupt shard (size or sha256 differs from {CHECKSUMS_FILE}); {_AGAIN}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                missing = sorted(keys - set(handle.keys()))
        except (SafetensorError, OSError, ValueError) as error:
            raise VptError(f"{path}: corrupt shard ({str(error).splitlines()[0]}); {_AGAIN}") from None
        if missing:
            raise VptError(f"{path}: has no tensor '{missing[0]}' (used by {table_path} row {number}); {_AGAIN}")
    for number, row in enumerate(rows, start=1):
        if len(row["log_probs"]) != len(row["recorded_steps"]):
            raise VptError(f"{table_path}: row {number}: {len(row['log_probs'])} log-probs for "
                           f"{len(row['recorded_steps'])} recorded steps; {_AGAIN}")
    loaded = RolloutSet(directory=directory, rows=rows, checksums=checksums)
    if verify:
        for number, row in enumerate(rows, start=1):
            stored = loaded._tensors(row["latents_shard"])[row["latents_key"]]
            states = stored.shape[0]
            if states != len(state_indices_of(row["recorded_steps"])):
                raise VptError(f"{directory / row['latents_shard']}: {states} states for {len(row['recorded_steps'])} "
                               f"recorded steps (row {number}); {_AGAIN}")
            declared = row.get("latent_dtype") or "fp32"  # rollouts written before it was recorded are float32
            if stored.dtype != LATENT_DTYPES[declared]:
                raise VptError(f"{directory / row['latents_shard']}: states stored as {stored.dtype} but row {number} "
                               f"declares latent_dtype {declared}; {_AGAIN}")
    return loaded


def cache_recorded_latents(cache: EncodedCache, paths: Sequence[str | os.PathLike], vae_id: str,
                           size: tuple[int, int, int] | None = None,
                           processes: Processes | None = None) -> dict[Path, Path]:
    """Entries of ``cache`` for the clips among ``paths`` that are samples of a rollouts directory
    (``OUT/videos/X.mp4`` listed in ``OUT/rollouts.parquet``) whose final latent the sampler recorded, with the VAE
    ``vae_id``, at ``size`` (None: any): the exact latent the video was decoded from, instead of the VAE's encoding of the
    decoded, compressed video. Other clips are left out (encode them). Entries are verified and written as in
    :meth:`EncodedCache.encode_videos` (a damaged one again, with a warning), shared out among ``processes``."""
    processes = processes or Processes()
    found: dict[Path, Path] = {}
    source: dict[Path, tuple] = {}
    loaded: dict[Path, object] = {}
    vae_ids: dict[str, str | None] = {}
    for path in map(Path, paths):
        directory = rollouts_directory_of(path)
        if directory is None:
            continue
        if directory not in loaded:
            loaded[directory] = load_rollouts(directory, verify=False)
        rollouts = loaded[directory]
        row = rollouts.row_of_video(path)
        if row is None or row.get("final_latents_key") is None:
            continue
        if size is not None and (row["frames"], row["height"], row["width"]) != tuple(size):
            continue
        generator = row["model_id"]
        if generator not in vae_ids:
            vae = Path(generator) / "vae"
            vae_ids[generator] = cache.component_identity(vae) if vae.is_dir() else None
        if vae_ids[generator] != vae_id:
            continue
        key = content_key(rollouts.checksums[row["latents_shard"]]["sha256"] + "|" + row["final_latents_key"])[:32]
        target = cache.root / "latents" / vae_id / f"recorded-{key}.safetensors"
        source.setdefault(target, (rollouts, row, directory))
        found[path] = target
    # as in encode_videos: every process checks every entry before any writes, then writes its share
    missing = {target: problem for target in source if (problem := entry_problem(target)) is not None}
    processes.wait()
    for target in processes.shard(list(source)):
        rollouts, row, directory = source[target]
        if target in missing and needs_writing(target, missing[target], f"copying it again from {directory}"):
            save_entry({LATENTS_KEY: rollouts.final_latent(row).float()}, target,
                       {CLIP_METADATA: {"frames": row["frames"], "height": row["height"], "width": row["width"]}})
    processes.wait()
    return found
