"""Video files: the one place in ``vpt`` that decodes (decord) and encodes (PyAV) video.

Conventions
-----------
* **Frames** are ``numpy.uint8`` arrays of shape ``[T, H, W, 3]`` in RGB order, everywhere (no torch here; callers
  convert). Frame *indices* are ``int64`` positions into the file's decoded frame sequence, starting at 0.
* **Probing** (:func:`probe`) uses PyAV: it opens the container, takes the first video stream and *demuxes* every
  packet of it without decoding. The frame count is therefore the number of complete packets actually present in the
  file, not a header estimate (decord's own ``len()`` follows ffmpeg's header value, which can be off for some
  containers). ``fps`` is the stream's average frame rate.
* **Every read is validated first.** A missing file, an empty file, a file that is not a video (any bytes ffmpeg
  cannot parse as a container), a container with no video stream or no frames, and a truncated file (fewer complete
  packets than the container's own sample table declares, or a partially read packet) raise
  :class:`~vpt.errors.VideoReadError` with a one-line reason:

  - ``"file not found"``
  - ``"file is empty (0 bytes)"``
  - ``"not a readable video (<what is wrong>)"``, e.g. ``"not a readable video (invalid data found when processing
    input)"`` for a text file or an mp4 whose index (moov) was cut off, ``"not a readable video (truncated: 23 of 48
    frames present)"`` for a streamable (faststart) mp4 cut in the middle of its data.

  Only files that pass this check are handed to decord (which would otherwise print ffmpeg noise, and whose
  errors are opaque); a decode failure inside decord (corrupt frame data, a codec its bundled ffmpeg lacks) is also
  turned into ``VideoReadError``. Callers never see a decord or PyAV exception and never get a partial result.
  Programmer errors (bad index values, bad arrays, bad options) raise ``ValueError``.
* **Decoding** uses ``decord.VideoReader(path, ctx=cpu(0), num_threads=1)`` and ``get_batch``. If decord serves
  fewer frames than the probe counted, indices are clamped to its last frame (the tail frames repeat) rather than
  failing; ffmpeg's log inside decord is silenced. decord 0.6.0 cannot return frames 1, 2, 3, 4, 6, 8, 12, 16, 24,
  48 or 72 pixels wide (a copy-size bug); those files are decoded with PyAV, whose frames are bit-identical to
  decord's wherever both work.
* **Frame sampling** (:class:`FrameSampling`): ``"all"`` frames; ``"fps"``, the VideoAlign / Qwen2-VL rule of
  :func:`videoalign_indices` (about ``target_fps`` frames per second, an even count in ``[min_frames, max_frames]``);
  ``"count"``, a fixed number of uniformly spaced frames (:func:`uniform_indices`). Optional resizing to
  ``height x width`` happens after decoding, with :func:`resize_frames` (bilinear, antialiased when shrinking).
* **Encoding** (:func:`write_video`) uses PyAV: H.264 (libx264), ``yuv420p``, mp4 with the index at the front
  (``+faststart``, streamable in a browser), written atomically (a reader sees the old file or the complete new one;
  a failure midway leaves nothing at the target). ``crf=10`` is visually lossless; ``crf=0`` is lossless in YUV,
  i.e. near-lossless from RGB (only the 4:2:0 chroma subsampling and colour conversion lose anything).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from vpt.errors import VideoReadError
from vpt.io.atomic import atomic_path

__all__ = [
    "DecodedVideo",
    "FrameSampling",
    "VideoInfo",
    "decode",
    "decode_for",
    "probe",
    "read_frames",
    "resize_frames",
    "uniform_indices",
    "videoalign_indices",
    "write_video",
]

SAMPLING_MODES = ("all", "fps", "count")


# ---------------------------------------------------------------------------------------------------------------------
# Data classes


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video file."""

    path: str
    fps: float
    frames: int
    height: int
    width: int

    @property
    def duration(self) -> float:
        """Length in seconds: ``frames / fps``."""
        return self.frames / self.fps


@dataclass(frozen=True)
class FrameSampling:
    """How a consumer wants frames decoded.

    ``mode``: ``"all"`` (every frame), ``"fps"`` (VideoAlign rule, see :func:`videoalign_indices`, using ``fps``,
    ``min_frames`` and ``max_frames``) or ``"count"`` (``count`` uniformly spaced frames, see
    :func:`uniform_indices`). ``height``/``width``: resize target, both or neither; ``None`` keeps the file's size.
    """

    mode: str = "all"
    fps: float = 2.0
    count: int | None = None
    min_frames: int = 4
    max_frames: int = 768
    height: int | None = None
    width: int | None = None

    def __post_init__(self):
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"FrameSampling.mode must be one of {', '.join(SAMPLING_MODES)}, got {self.mode!r}")
        if self.mode == "fps":
            _check_videoalign_options(self.fps, self.min_frames, self.max_frames)
        if self.mode == "count" and (self.count is None or int(self.count) != self.count or self.count < 1):
            raise ValueError(f"FrameSampling.count must be a positive integer in mode 'count', got {self.count!r}")
        if (self.height is None) != (self.width is None):
            raise ValueError("FrameSampling.height and .width must be given together (or neither)")
        if self.height is not None and (self.height < 1 or self.width < 1):
            raise ValueError(f"FrameSampling resize target must be positive, got {self.height}x{self.width}")

    def indices(self, info: VideoInfo) -> np.ndarray:
        """The ``int64`` frame indices to decode from a video described by ``info``."""
        if self.mode == "all":
            return np.arange(info.frames, dtype=np.int64)
        if self.mode == "fps":
            return videoalign_indices(info.frames, info.fps, self.fps, self.min_frames, self.max_frames)
        return uniform_indices(info.frames, int(self.count))


@dataclass
class DecodedVideo:
    """Decoded frames with where they came from."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    info: VideoInfo
    indices: np.ndarray  # int64 [T] indices into the file's frames


# ---------------------------------------------------------------------------------------------------------------------
# Frame indices


def _check_videoalign_options(target_fps: float, min_frames: int, max_frames: int) -> None:
    if not target_fps > 0:
        raise ValueError(f"target fps must be positive, got {target_fps!r}")
    if min_frames < 1 or max_frames < 2 or min_frames > max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames and max_frames >= 2, got {min_frames}, {max_frames}")


def videoalign_indices(
    num_frames: int, fps: float, target_fps: float = 2.0, min_frames: int = 4, max_frames: int = 768
) -> np.ndarray:
    """Frame indices by the VideoAlign (Qwen2-VL) rule: about ``target_fps`` frames per second, an even count.

    The wanted count is ``n = num_frames / fps * target_fps`` (the clip's duration times the target rate). It is
    clamped to ``[lo, hi]`` where ``lo`` is ``min_frames`` rounded *up* to even and ``hi`` is
    ``min(max_frames, num_frames)`` rounded *down* to even, then rounded to the nearest even number (``2 * round(n /
    2)``, ties to even as in Python). The indices are ``round(linspace(0, num_frames - 1, n))`` (ties to even, the same
    values as ``torch.linspace(...).round()``), so the first and last frame are always included.

    Clips shorter than the minimum (``hi < lo``, e.g. 3 frames with ``min_frames=4``; the reference code raises
    here) still give ``lo`` indices: evenly spread over the clip, so some frames repeat (3 frames -> ``[0, 1, 1,
    2]``, 1 frame -> ``[0, 0, 0, 0]``). A model that needs an even, minimum number of frames can always be fed.

    Examples: 48 frames at 24 fps -> 4 frames ``[0, 16, 31, 47]``; 300 frames at 30 fps (10 s) -> 20 frames;
    an hour at 30 fps -> 768 frames.
    """
    num_frames = int(num_frames)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    _check_videoalign_options(target_fps, min_frames, max_frames)
    lo = 2 * math.ceil(min_frames / 2)
    hi = 2 * (min(max_frames, num_frames) // 2)
    if hi < lo:
        count = lo
    else:
        wanted = min(max(num_frames / fps * target_fps, lo), hi)
        count = 2 * round(wanted / 2)
    return _linspace_indices(num_frames, count)


def uniform_indices(num_frames: int, count: int) -> np.ndarray:
    """``count`` uniformly spaced indices ``round(linspace(0, num_frames - 1, count))``; repeats when ``count`` exceeds
    ``num_frames``. ``count == 1`` gives ``[0]``."""
    num_frames, count = int(num_frames), int(count)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return _linspace_indices(num_frames, count)


def _linspace_indices(num_frames: int, count: int) -> np.ndarray:
    return np.rint(np.linspace(0.0, num_frames - 1, count)).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------------
# Reading

_decord_module = None


def _decord():
    """Import decord once, with ffmpeg's log inside it silenced (we report errors ourselves)."""
    global _decord_module
    if _decord_module is None:
        import decord
        import decord.logging

        decord.logging.set_level(decord.logging.QUIET)
        _decord_module = decord
    return _decord_module


def _ffmpeg_reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    text = str(text).strip().splitlines()[0]
    return text[:1].lower() + text[1:]


def probe(path) -> VideoInfo:
    """Validate a video file and describe it; raises :class:`VideoReadError` when it cannot be read in full.

    The frame count is the number of complete packets of the first video stream (demuxed, not decoded); a file
    with fewer packets than its container declares, or with a partially read packet, is reported as truncated.
    """
    import av

    name = str(path)
    if not os.path.exists(name):
        raise VideoReadError(name, "file not found")
    if os.path.isdir(name):
        raise VideoReadError(name, "is a directory, not a video file")
    if os.path.getsize(name) == 0:
        raise VideoReadError(name, "file is empty (0 bytes)")
    try:
        with av.open(name, "r") as container:
            if not container.streams.video:
                raise VideoReadError(name, "not a readable video (no video stream)")
            stream = container.streams.video[0]
            declared = int(stream.frames or 0)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            height, width = int(stream.codec_context.height), int(stream.codec_context.width)
            complete = 0
            first_corrupt = None
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                if packet.is_corrupt:
                    if first_corrupt is None:
                        first_corrupt = complete
                    continue
                complete += 1
    except VideoReadError:
        raise
    except FileNotFoundError:
        raise VideoReadError(name, "file not found") from None
    except PermissionError:
        raise VideoReadError(name, "permission denied") from None
    except (av.FFmpegError, OSError, ValueError, EOFError) as error:
        raise VideoReadError(name, f"not a readable video ({_ffmpeg_reason(error)})") from None
    if declared and complete < declared:
        raise VideoReadError(name, f"not a readable video (truncated: {complete} of {declared} frames present)")
    if first_corrupt is not None:
        raise VideoReadError(name, f"not a readable video (corrupt data at frame {first_corrupt})")
    if complete == 0:
        raise VideoReadError(name, "not a readable video (no frames)")
    if not rate or float(rate) <= 0:
        raise VideoReadError(name, "not a readable video (unknown frame rate)")
    if height <= 0 or width <= 0:
        raise VideoReadError(name, "not a readable video (unknown frame size)")
    return VideoInfo(path=name, fps=float(rate), frames=complete, height=height, width=width)


def _check_indices(info: VideoInfo, indices) -> np.ndarray:
    if indices is None:
        return np.arange(info.frames, dtype=np.int64)
    array = np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(f"frame indices must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"frame indices must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= info.frames):
        span = f"{array.min()}..{array.max()}"
        raise ValueError(f"frame indices must lie in [0, {info.frames}) for {info.path}, got {span}")
    return array


# decord 0.6.0 cannot return frames of these widths (any height, any pixel format): its RGB copy fails with
# "DECORDArrayCopyFromTo: The size must exactly match" (or returns a 4-channel frame). Measured over widths 1..1300 and
# 1920; such files are decoded with PyAV instead, which gives bit-identical frames on every width decord handles.
_DECORD_BAD_WIDTHS = frozenset({1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72})
_DECODE_FAILED = "not a readable video (decoding failed: corrupt or unsupported frame data)"


class _DecordQuirk(Exception):
    """decord failed for a reason of its own, not the file's: decode with PyAV instead."""


def _decode_decord(info: VideoInfo, indices: np.ndarray) -> np.ndarray:
    decord = _decord()
    try:
        reader = decord.VideoReader(info.path, ctx=decord.cpu(0), num_threads=1)
        available = len(reader)
        if available < 1:
            raise VideoReadError(info.path, "not a readable video (decord found no frames)")
        # decord's count follows the header; if it serves fewer frames than the packets we counted, the tail repeats
        batch = reader.get_batch(np.minimum(indices, available - 1).tolist())
        frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # tolerate a global bridge
        del reader
    except VideoReadError:
        raise
    except Exception as error:  # decord raises RuntimeError/DECORDError with C++ check traces: keep them as the cause
        if "DECORDArrayCopyFromTo" in str(error):
            raise _DecordQuirk() from error
        raise VideoReadError(info.path, _DECODE_FAILED) from error
    if frames.ndim != 4 or frames.shape[0] != indices.size or frames.shape[-1] != 3:
        raise _DecordQuirk()
    return frames


def _decode_pyav(info: VideoInfo, indices: np.ndarray) -> np.ndarray:
    """Sequential decode with PyAV (used where decord has a bug), keeping the frames ``indices`` asks for."""
    import av

    wanted = set(indices.tolist())
    last = max(wanted)
    kept: dict[int, np.ndarray] = {}
    try:
        with av.open(info.path, "r") as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for position, frame in enumerate(container.decode(stream)):
                if position in wanted:
                    kept[position] = frame.to_ndarray(format="rgb24")
                if position >= last:
                    break
    except (av.FFmpegError, OSError, ValueError, EOFError) as error:
        raise VideoReadError(info.path, _DECODE_FAILED) from error
    if kept:  # as decord does: indices past the decodable end repeat the last decoded frame
        tail = kept[max(kept)]
        return np.stack([kept.get(i, tail) for i in indices.tolist()])
    raise VideoReadError(info.path, _DECODE_FAILED)


def _decode(info: VideoInfo, indices: np.ndarray) -> np.ndarray:
    """Decode ``indices`` (already validated against ``info``): decord, or PyAV where decord has a known bug."""
    if indices.size == 0:
        return np.zeros((0, info.height, info.width, 3), dtype=np.uint8)
    frames = None
    if info.width not in _DECORD_BAD_WIDTHS:
        try:
            frames = _decode_decord(info, indices)
        except _DecordQuirk:
            frames = None
    if frames is None:
        frames = _decode_pyav(info, indices)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[0] != indices.size or frames.shape[-1] != 3:
        raise VideoReadError(info.path, f"not a readable video (decoder returned shape {frames.shape})")
    return frames


def read_frames(path, indices=None) -> np.ndarray:
    """Decode frames ``indices`` (``None`` = all) of a video file: ``uint8 [T, H, W, 3]`` RGB, in the order given
    (repeats allowed). Raises :class:`VideoReadError` for an unreadable file, ``ValueError`` for out-of-range
    indices."""
    info = probe(path)
    return _decode(info, _check_indices(info, indices))


def decode(path, sampling: FrameSampling = FrameSampling()) -> DecodedVideo:
    """Probe, choose indices with ``sampling``, decode, and resize if ``sampling`` asks to.

    ``info`` describes the file (its own size even when resized); ``info.height``/``width`` follow the decoded frames
    if a container header disagreed with them.
    """
    info = probe(path)
    indices = sampling.indices(info)
    frames = _decode(info, indices)
    if frames.shape[1:3] != (info.height, info.width):
        info = replace(info, height=int(frames.shape[1]), width=int(frames.shape[2]))
    if sampling.height is not None:
        frames = resize_frames(frames, sampling.height, sampling.width)
    return DecodedVideo(frames=frames, info=info, indices=indices)


def decode_for(path, samplings) -> dict[FrameSampling, DecodedVideo]:
    """One probe and one decode of ``path`` serving several consumers: ``{sampling: DecodedVideo}``.

    The union of every sampling's frame indices is decoded once at the file's size; each sampling then takes its own
    frames from that clip (and its own resize), so a model that wants more frames or another size costs no second
    decode. Each result equals ``decode(path, sampling)``.
    """
    samplings = list(dict.fromkeys(samplings))
    info = probe(path)
    wanted = {sampling: sampling.indices(info) for sampling in samplings}
    union = np.unique(np.concatenate(list(wanted.values()))) if wanted else np.zeros(0, dtype=np.int64)
    frames = _decode(info, union)
    if frames.shape[1:3] != (info.height, info.width):
        info = replace(info, height=int(frames.shape[1]), width=int(frames.shape[2]))
    decoded = {}
    for sampling, indices in wanted.items():
        mine = frames if np.array_equal(indices, union) else frames[np.searchsorted(union, indices)]
        if sampling.height is not None:
            mine = resize_frames(mine, sampling.height, sampling.width)
        decoded[sampling] = DecodedVideo(frames=mine, info=info, indices=indices)
    return decoded


# ---------------------------------------------------------------------------------------------------------------------
# Resizing


def check_frames(frames, name: str = "frames") -> np.ndarray:
    """``frames`` if it is a non-empty ``uint8 [T, H, W, 3]`` array; ValueError (a programming error) otherwise."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [T, H, W, 3], got {frames.shape}")
    if 0 in frames.shape:
        raise ValueError(f"{name} must hold at least one pixel in one frame, got shape {frames.shape}")
    return frames


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``uint8 [T, H, W, 3]`` frames to ``[T, height, width, 3]``: bilinear, antialiased when shrinking.

    Uses Pillow's bilinear filter, whose support widens with the shrink factor (the same antialiasing as
    ``torch.nn.functional.interpolate(..., mode="bilinear", antialias=True)``, within a grey level). Frames already
    at the target size are returned as a copy.
    """
    from PIL import Image

    frames = check_frames(frames)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"resize target must be positive, got {height}x{width}")
    if frames.shape[1:3] == (height, width):
        return frames.copy()
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
        out[t] = np.asarray(image.resize((width, height), resample=Image.Resampling.BILINEAR))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Writing


# The same frames must give the same file on any machine and in any process. x264's output depends on its thread
# count (frame threads narrow the motion search), which by default follows the machine's cores, so it is fixed; its
# macroblock-tree rate control was measured to encode identical frames differently now and then, so it is off. Off
# alone, it lets a still scene flicker by a few levels from frame to frame (the reference frame is re-refined);
# qcomp=1 (one quantizer whatever a frame's complexity) keeps still scenes exactly still. Cost at crf 10
# (benchmarks/bench_encoding.py): +19-29% bytes and +0.2 dB PSNR on noisy toy clips, +1-27% bytes and up to -0.6 dB
# on clean ones, about the same encoding time.
DETERMINISTIC_X264 = {"threads": "4", "x264-params": "no-mbtree=1:qcomp=1.0"}


def _frame_rate(fps: float) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps {fps!r} is too small")
    return rate


def write_video(path, frames: np.ndarray, fps: float, crf: int = 10) -> None:
    """Encode ``uint8 [T, H, W, 3]`` RGB frames as an H.264 ``yuv420p`` mp4 at ``fps``, atomically.

    ``crf`` is x264's constant rate factor (0..51, lower = better): 10 is visually lossless, 0 is lossless in YUV
    (near-lossless from RGB). H and W must be even (4:2:0 chroma). The file is written under a temporary name beside
    ``path`` and renamed when complete, so ``path`` never holds a partial video; parent directories are created.
    Raises ``ValueError`` for bad arguments (before anything is written).
    """
    import av

    frames = check_frames(frames)
    count, height, width, _ = frames.shape
    if count < 1:
        raise ValueError("frames must hold at least one frame")
    if height % 2 or width % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {height}x{width}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.integer, np.floating)):
        raise ValueError(f"fps must be a number, got {fps!r}")
    if not (math.isfinite(float(fps)) and fps > 0):
        raise ValueError(f"fps must be positive and finite, got {fps!r}")
    if isinstance(crf, bool) or int(crf) != crf or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an integer in 0..51, got {crf!r}")
    rate = _frame_rate(float(fps))
    with atomic_path(path) as temporary:
        # the temporary name has no .mp4 suffix: name the format explicitly
        with av.open(str(temporary), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(int(crf)), **DETERMINISTIC_X264}
            for frame in frames:
                # converted here, not left to the encoder: its own conversion was measured to turn identical frames
                # into different files now and then
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(
                    format="yuv420p")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
