"""Clean video latents and prompt embeddings, encoded once and cached: the training stages read clips through it
(``sft``, ``dpo``, ``train-reward --kind latent``) and guided sampling its prompt embeddings.

Layout under the cache root (``$VPT_CACHE_DIR/encoded``, else ``~/.cache/vpt/encoded``)::

    latents/<vae_id>/<key>.safetensors    one clip: "latents" float32 [C, F, h, w]; metadata: its pixel size
    latents/<vae_id>/recorded-<key>.safetensors
                                          a rollouts sample's final latent as the sampler recorded it (same layout)
    prompts/<text_id>/<key>.safetensors   one prompt: "prompt" [L, D] without its padding rows; metadata: the
                                          padded length and dtype (as the rollouts store keeps embeddings)
    digests.json                          sha256 of model files by (path, size, mtime): weights are hashed once

Every entry's metadata also holds ``vpt.checksum``: ``{"sha256": ...}`` of its content, that is of the JSON text
``{"metadata": {<its other metadata, as stored>}, "tensors": {<name>: [<dtype>, <shape>]}}`` (sorted keys, compact)
followed by each tensor's raw bytes in name order (:func:`entry_checksum`). The metadata keys are sorted in the
header, so the same content gives the same bytes. Whenever the cache decides whether an entry is there
(:meth:`EncodedCache.encode_videos`, :meth:`~EncodedCache.encode_prompts`,
:func:`vpt.rollouts.store.cache_recorded_latents`) it reads and verifies it: an unreadable entry, one whose checksum does not match or one without a checksum (written
by an older vpt) is written again, with a warning naming it. The loaders (:func:`load_latent`,
:func:`load_prompt_embedding`, :func:`clip_size`) verify too: an entry damaged since then is a one-line
:class:`VptError`.

A clip's key is the sha256 of its bytes plus the encode settings (target size, VAE dtype): a renamed or copied file
reuses its entry, an edited one gets a new one. ``vae_id`` / ``text_id`` (:meth:`EncodedCache.component_identity`)
identify the model's files, so another VAE or text encoder never reads these entries. Every file is written under
a temporary name and renamed, so runs can share one cache and a killed run leaves no partial entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from vpt.distributed import Processes
from vpt.errors import VideoReadError, VptError
from vpt.encoding.embeddings import EMBEDS_METADATA, PROMPT_KEY, restore_padding, trim_padding
from vpt.io.atomic import atomic_path
from vpt.io.digest import file_digest
from vpt.io.tensors import canonicalize_header
from vpt.models.wan import MAX_SEQUENCE_LENGTH

logger = logging.getLogger(__name__)

LATENTS_KEY = "latents"
CLIP_METADATA = "vpt.clip"
CHECKSUM_METADATA = "vpt.checksum"
MISSING = "missing"
NO_CHECKSUM = "no checksum: written by an older vpt"
DIGESTS_FILE = "digests.json"
_FIX_CLIP = "fix or remove this clip"
_RESAMPLE = "pass --frames/--height/--width to resample clips"


def encoded_cache_root() -> Path:
    """``$VPT_CACHE_DIR/encoded`` or ``~/.cache/vpt/encoded``."""
    root = os.environ.get("VPT_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "vpt") / "encoded"


def content_key(text: str) -> str:
    """The sha256 hex digest of ``text``: entry names derive from it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_checksum(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """The sha256 of an entry's content: its metadata strings (all but the checksum) and its tensors' names, dtypes,
    shapes and raw bytes."""
    described = {"metadata": {key: value for key, value in metadata.items() if key != CHECKSUM_METADATA},
                 "tensors": {name: [str(value.dtype).removeprefix("torch."), list(value.shape)]
                             for name, value in tensors.items()}}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n")
    for name in sorted(tensors):
        digest.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_entry(tensors: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    """Write an entry atomically, with its checksum and the header's metadata keys sorted (the same bytes for the
    same content)."""
    from safetensors.torch import save_file

    tensors = {key: value.contiguous() for key, value in tensors.items()}
    stored = {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    stored[CHECKSUM_METADATA] = json.dumps({"sha256": entry_checksum(stored, tensors)})
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=stored)
        canonicalize_header(temporary)


class _Damaged(Exception):
    """A cache entry that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _open_entry(file: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata strings without the checksum, tensors) of a verified cache entry; :class:`_Damaged` otherwise.

    The file is read into memory once and the tensors are built from those bytes (not mapped from the file), so
    what is returned is what was verified, whatever happens to the file afterwards."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = Path(file).read_bytes()
    except FileNotFoundError:
        raise _Damaged(MISSING) from None
    except OSError as error:
        raise _Damaged(f"unreadable: {error.strerror or type(error).__name__}") from None
    try:
        tensors = load(data)
        (length,) = struct.unpack("<Q", data[:8])  # a valid header, as load found
        metadata = dict(json.loads(data[8 : 8 + length]).get("__metadata__") or {})
    except (SafetensorError, ValueError, TypeError, RuntimeError, struct.error) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise _Damaged(f"unreadable: {first}") from None
    stored = metadata.pop(CHECKSUM_METADATA, None)
    if stored is None:
        raise _Damaged(NO_CHECKSUM)
    try:
        expected = json.loads(stored)["sha256"]
    except (ValueError, TypeError, KeyError):
        raise _Damaged("unreadable checksum") from None
    if entry_checksum(metadata, tensors) != expected:
        raise _Damaged("checksum mismatch")
    return metadata, tensors


def entry_problem(file: str | os.PathLike) -> str | None:
    """None when the cache entry ``file`` is whole (its checksum matches); else why not: :data:`MISSING`, or how it
    is damaged (unreadable, checksum mismatch, :data:`NO_CHECKSUM`)."""
    try:
        _open_entry(file)
    except _Damaged as damaged:
        return damaged.reason
    return None


def _read(file: str | os.PathLike, metadata_key: str, tensor_key: str | None) -> tuple[dict, torch.Tensor | None]:
    """(metadata under ``metadata_key``, the tensor ``tensor_key`` or None) of a verified cache entry; VptError (one
    line) if it is missing or damaged: it changed since the run checked it, and the next run encodes it again."""
    try:
        metadata, tensors = _open_entry(file)
        try:
            return json.loads(metadata[metadata_key]), None if tensor_key is None else tensors[tensor_key]
        except (KeyError, ValueError):
            raise _Damaged(f"no {metadata_key if tensor_key is None else tensor_key!r} in it") from None
    except _Damaged as damaged:
        raise VptError(f"{file}: damaged cache entry ({damaged.reason}); run again to encode it again") from None


def load_latent(file: str | os.PathLike) -> torch.Tensor:
    """A clip's normalised latents float32 [C, F, h, w], as :meth:`EncodedCache.encode_videos` stored them (verified
    against the entry's checksum)."""
    return _read(file, CLIP_METADATA, LATENTS_KEY)[1]


def clip_size(file: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, height, width) of the pixels a latent entry was encoded from (the entry is read and verified)."""
    size = _read(file, CLIP_METADATA, None)[0]
    return int(size["frames"]), int(size["height"]), int(size["width"])


def load_prompt_embedding(file: str | os.PathLike) -> torch.Tensor:
    """A prompt's text embeddings [L, D], padded and typed as :func:`vpt.models.wan.encode_prompts` returned them."""
    layout, trimmed = _read(file, EMBEDS_METADATA, PROMPT_KEY)
    return restore_padding(trimmed, layout["padded_length"], getattr(torch, layout["dtype"]))


def needs_writing(target: Path, problem: str, again: str) -> bool:
    """Whether this process writes ``target``, found missing or damaged (``problem``) when every process checked: a
    damaged one is written again with a warning; a missing one unless another run wrote it meanwhile."""
    if problem != MISSING:
        logger.warning("%s: damaged cache entry (%s); %s", target, problem, again)
        return True
    return not target.is_file()


@contextlib.contextmanager
def _clip_errors() -> Iterator[None]:
    """The video module's one-line reasons, with what to do about them."""
    try:
        yield
    except VideoReadError as error:
        raise VideoReadError(error.path, f"{error.reason}; {_FIX_CLIP}") from None


def _video_sha256(path: Path) -> str:
    from vpt.io.video import probe

    try:
        return file_digest(path)["sha256"]
    except OSError:
        with _clip_errors():
            probe(path)  # says why in the video module's words (not found, a directory, no permission)
        raise


class EncodedCache:
    """Latents of video files and embeddings of prompts, computed once per content and model, kept under ``root``
    (default :func:`encoded_cache_root`)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else encoded_cache_root()

    # -----------------------------------------------------------------------------------------------------------------
    # Model identity

    def component_identity(self, *directories: str | os.PathLike) -> str:
        """16 hex digits identifying the files of model component directories (a pipeline's ``vae/``, or its
        ``text_encoder/`` and ``tokenizer/`` together): their relative paths and the sha256 of their bytes.

        Hidden entries are left out: they are not the model (the Hub's ``.cache/`` download records hold
        timestamps, an interrupted copy leaves ``.*.tmp-*`` files). File digests are remembered in the cache root by
        (resolved path, size, mtime), so multi-gigabyte weights are read once, not on every run."""
        listed: list[tuple[str, Path]] = []
        for position, directory in enumerate(map(Path, directories)):
            files = sorted(path for path in directory.rglob("*") if path.is_file()
                           and not any(part.startswith(".") for part in path.relative_to(directory).parts))
            if not files:
                reason = "no files" if directory.is_dir() else "not a directory"
                raise VptError(f"{directory}: not a model component directory ({reason}); give the pipeline's "
                               f"vae/, text_encoder/ or tokenizer/")
            listed += [(f"{position}/{path.relative_to(directory).as_posix()}", path) for path in files]
        digests = self._file_digests([path for _, path in listed])
        return content_key("".join(f"{name}\t{digest}\n" for (name, _), digest in zip(listed, digests)))[:16]

    def _read_digests(self) -> dict:
        try:
            memo = json.loads((self.root / DIGESTS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return memo if isinstance(memo, dict) else {}

    def _file_digests(self, paths: Sequence[Path]) -> list[str]:
        memo, new = self._read_digests(), {}
        digests = []
        for path in paths:
            resolved = path.resolve()
            stat = resolved.stat()
            stamp = [stat.st_size, stat.st_mtime_ns]
            entry = memo.get(str(resolved))
            if not (isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str)):
                entry = new[str(resolved)] = {"stamp": stamp, "sha256": file_digest(resolved)["sha256"]}
            digests.append(entry["sha256"])
        if new:
            # re-read just before writing: another run may have added digests meanwhile
            merged = {**self._read_digests(), **new}
            with atomic_path(self.root / DIGESTS_FILE) as temporary:
                temporary.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return digests

    # -----------------------------------------------------------------------------------------------------------------
    # Videos

    def encode_videos(self, paths: Sequence[str | os.PathLike], pipe, vae_id: str,
                      size: tuple[int, int, int] | None = None, processes: Processes | None = None,
                      on_progress: Callable[[int], None] | None = None) -> list[Path]:
        """The cache file of each video in ``paths`` (same order), encoding the missing ones with ``pipe``'s VAE
        (:func:`vpt.models.wan.encode_videos`), one clip at a time; identical contents are encoded once.

        ``size``: (frames, height, width) to resample every clip to (uniformly spaced frames, then a bilinear
        resize); None encodes clips at their own size. ``vae_id``: :meth:`component_identity` of the VAE's
        directory. An entry already there is read and verified once: a damaged one (or one without a checksum) is
        encoded again, with a warning naming it. With several ``processes`` every one checks every entry before any
        writes, each encodes its share and all wait for the others. ``on_progress(1)`` is called for every clip
        this process encodes. Raises :class:`VptError` (one line, before anything is encoded) for an unreadable
        clip or a size the pipeline cannot take."""
        from vpt.models.wan import latent_shape

        processes = processes or Processes()
        if size is not None:
            size = tuple(int(value) for value in size)
            try:
                latent_shape(pipe, *size)
            except ValueError as error:
                raise VptError(f"cannot resample clips to {size[0]} frames of {size[1]}x{size[2]}: {error}; "
                               f"choose other --frames/--height/--width") from None
        settings = json.dumps({"size": size, "vae_dtype": str(pipe.vae.dtype)}, sort_keys=True)
        directory = self.root / "latents" / vae_id
        digests: dict[Path, str] = {}
        targets: list[Path] = []
        source: dict[Path, Path] = {}
        for path in map(Path, paths):
            if path not in digests:
                digests[path] = _video_sha256(path)
            target = directory / f"{content_key(digests[path] + '|' + settings)[:32]}.safetensors"
            targets.append(target)
            source.setdefault(target, path)
        # every process checks every entry, and the clip of every missing or damaged one, before any writes: they
        # all find the same ones, and a bad clip stops all of them at once, instead of one process failing while the
        # others wait for it forever
        problems = {target: entry_problem(target) for target in source}
        missing = {target: (problem, self._checked_clip(source[target], pipe, size))
                   for target, problem in problems.items() if problem is not None}
        processes.wait()
        # shard over all entries, not the missing ones: every process must agree on who encodes what
        for target in processes.shard(list(source)):
            if target in missing and needs_writing(target, missing[target][0], "encoding it again"):
                self._encode_clip(source[target], missing[target][1], pipe, size, target)
                if on_progress is not None:
                    on_progress(1)
        processes.wait()
        return targets

    @staticmethod
    def _checked_clip(path: Path, pipe, size: tuple[int, int, int] | None) -> int:
        """The clip's frame count, once it is known readable and (at its own size) encodable."""
        from vpt.io.video import probe
        from vpt.models.wan import latent_shape

        with _clip_errors():
            info = probe(path)
        if size is None:
            try:
                latent_shape(pipe, info.frames, info.height, info.width)
            except ValueError as error:
                raise VptError(f"{path}: {info.frames} frames of {info.height}x{info.width} cannot be encoded: "
                               f"{error}; {_RESAMPLE}") from None
        return info.frames

    @staticmethod
    def _encode_clip(path: Path, frames: int, pipe, size: tuple[int, int, int] | None, target: Path) -> None:
        from vpt.io.video import read_frames, resize_frames, uniform_indices
        from vpt.models.wan import encode_videos

        with _clip_errors():
            if size is None:
                pixels = read_frames(path)
            else:
                pixels = resize_frames(read_frames(path, uniform_indices(frames, size[0])), size[1], size[2])
        latents = encode_videos(pipe, pixels[None])[0]
        shape = dict(zip(("frames", "height", "width"), map(int, pixels.shape[:3])))
        save_entry({LATENTS_KEY: latents}, target, {CLIP_METADATA: shape})

    # -----------------------------------------------------------------------------------------------------------------
    # Prompts

    def encode_prompts(self, prompts: Sequence[str], pipe, text_id: str,
                       max_sequence_length: int = MAX_SEQUENCE_LENGTH, processes: Processes | None = None,
                       labels: Sequence[str] | None = None) -> list[Path]:
        """The cache file of each prompt's embeddings (same order), encoding each missing distinct prompt once
        with :func:`vpt.models.wan.encode_prompts` (no negative prompt). ``text_id``: :meth:`component_identity`
        of the text encoder and tokenizer directories. Read them with :func:`load_prompt_embedding`. Entries are
        verified, and missing or damaged ones encoded, as in :meth:`encode_videos`. A prompt the text encoder cuts
        is named in a warning by its ``labels`` entry, cached or not."""
        from vpt.models.wan import encode_prompts, warn_long_prompts

        processes = processes or Processes()
        if processes.is_main:
            warn_long_prompts(pipe, prompts, max_sequence_length, labels)
        # the embeddings depend on the encoder's precision and are returned in the transformer's
        settings = json.dumps({"max_sequence_length": int(max_sequence_length),
                               "text_dtype": str(pipe.text_encoder.dtype), "dtype": str(pipe.transformer.dtype)},
                              sort_keys=True)
        directory = self.root / "prompts" / text_id
        targets = [directory / f"{content_key(settings + '|' + prompt)[:32]}.safetensors" for prompt in prompts]
        source = dict(zip(targets, prompts))
        # as in encode_videos: every process checks every entry before any writes, then encodes its share
        missing = {target: problem for target in source if (problem := entry_problem(target)) is not None}
        processes.wait()
        for target in processes.shard(list(source)):
            if target in missing and needs_writing(target, missing[target], "encoding it again"):
                embeds, _ = encode_prompts(pipe, [source[target]], max_sequence_length=max_sequence_length)
                layout = {"padded_length": embeds.shape[1], "dtype": str(embeds.dtype).removeprefix("torch.")}
                save_entry({PROMPT_KEY: trim_padding(embeds[0].float())}, target, {EMBEDS_METADATA: layout})
        processes.wait()
        return targets
