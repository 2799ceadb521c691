"""Experiment trackers (``--report-to``): the harness's logged rows, a stage's summary figures and a few sample
videos, through accelerate's trackers, into ``logs/`` beside the run's checkpoints.

- ``tensorboard`` (``pip install 'vpt[tensorboard]'``): scalars under the metric names of ``metrics.parquet``;
  sample videos as animated GIF image summaries (what TensorBoard plays; ``SummaryWriter.add_video`` would need
  moviepy for the same GIF).
- ``wandb`` (``pip install 'vpt[wandb]'``): offline unless ``WANDB_MODE`` says otherwise (``wandb sync
  OUT/logs/wandb/offline-run-*`` uploads it later); videos as ``wandb.Video`` of the mp4s themselves.

Only the main process logs. A resumed run appends a new event file (TensorBoard) or a new offline run (wandb).
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from vpt.errors import VptError

REPORT_TO = ("none", "tensorboard", "wandb")
LOGS_DIRECTORY = "logs"
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
_GIF_FRAME_MS = 125


def check_report_to(name: str) -> str:
    """``name`` when it is a tracker this machine can run; a :class:`VptError` naming ``--report-to`` otherwise."""
    if name not in REPORT_TO:
        raise VptError(f"--report-to {name}: choose one of {', '.join(REPORT_TO)}")
    package = _PACKAGES.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        raise VptError(f"--report-to {name} needs the {package} package: pip install 'vpt[{name}]', or choose "
                       "--report-to none")
    return name


def _hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat part of a configuration: what TensorBoard's hparams and wandb's config take as they are."""
    return {key: value for key, value in config.items() if isinstance(value, (bool, int, float, str))}


def _gif(path: Path) -> tuple[bytes, int, int]:
    """An mp4 as GIF bytes, with its height and width."""
    from PIL import Image

    from vpt.io.video import read_frames

    frames = read_frames(path)
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=_GIF_FRAME_MS, loop=0)
    return buffer.getvalue(), int(frames.shape[1]), int(frames.shape[2])


class Tracking:
    """The trackers of one harness run: ``start`` once the run directory is claimed, ``log`` each row, ``videos``
    for samples, ``end`` when the stage is done (also after a failure, so the files are complete)."""

    def __init__(self, accelerator, report_to: str, run_directory: Path):
        self.accelerator = accelerator
        self.report_to = report_to
        self.logs = Path(run_directory) / LOGS_DIRECTORY
        self.run_name = Path(run_directory).name.removesuffix(".run") or "train"
        self.active = False

    def start(self, config: Mapping[str, Any]) -> None:
        if self.report_to == "none" or self.active:
            return
        init_kwargs = {}
        if self.report_to == "wandb":
            if self.accelerator.is_main_process:
                self.logs.mkdir(parents=True, exist_ok=True)
            init_kwargs["wandb"] = {"mode": os.environ.get("WANDB_MODE", "offline"), "dir": str(self.logs),
                                    "name": self.run_name}
        self.accelerator.init_trackers(self.run_name, config=_hyperparameters(config), init_kwargs=init_kwargs)
        self.active = True

    def log(self, values: Mapping[str, Any], step: int) -> None:
        """Scalar ``values`` at optimizer ``step`` (anything else is the metrics table's, not the tracker's)."""
        if not self.active:
            return
        scalars = {key: float(value) for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch")}
        if scalars:
            self.accelerator.log(scalars, step=step)

    def videos(self, samples: Sequence[tuple[str, Path]], step: int) -> None:
        """Sample videos (caption, mp4 path) at ``step``, tagged ``samples/0``, ``samples/1``, …"""
        if not self.active or not samples or not self.accelerator.is_main_process:
            return
        tracker = self.accelerator.get_tracker(self.report_to, unwrap=True)
        if self.report_to == "tensorboard":
            from tensorboard.compat.proto.summary_pb2 import Summary

            for index, (caption, path) in enumerate(samples):
                gif, height, width = _gif(Path(path))
                image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
                tracker.file_writer.add_summary(Summary(value=[Summary.Value(tag=f"samples/{index}", image=image)]),
                                                step)
                tracker.add_text(f"samples/{index}/caption", caption, step)
            tracker.flush()
        else:
            import wandb

            tracker.log({f"samples/{index}": wandb.Video(str(path), caption=caption, format="mp4")
                         for index, (caption, path) in enumerate(samples)}, step=step)

    def end(self) -> None:
        # each tracker's own finish, not Accelerator.end_training(): that also destroys the process group, which
        # the stage still needs after its trackers end (publishing, the last barrier)
        if self.active:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers = []
            self.active = False
