"""Shared fixtures. One torch thread everywhere: two threads on a shared 2-core box can run ~100x slower."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


# Modules of a minute or more (learning runs, multi-process launches): collected first, so the two workers of `make
# test` (--dist loadscope hands out whole modules in collection order) do not end with one of them running a long
# module alone while the other has finished.
LONG_MODULES = ("tests/stages/", "_distributed.py", "_sharded.py", "test_reliability_interruptions.py",
                "test_reliability_sharding.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not any(part in item.nodeid for part in LONG_MODULES))


@dataclass
class CliResult:
    exit_code: int
    stdout: bytes
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout.decode()


def run_cli(args, stdin: bytes | None = None) -> CliResult:
    """Run the ``vpt`` command line in-process with captured stdin/stdout/stderr."""
    from vpt.commands.main import main

    out, err = io.BytesIO(), io.StringIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    saved = sys.stdout, sys.stderr, sys.stdin
    sys.stdout, sys.stderr = stdout, err
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8")
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        stdout.flush()
        sys.stdout, sys.stderr, sys.stdin = saved
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def run_vpt():
    """``run_vpt(["score", ...], stdin=b"...")`` -> CliResult (see :func:`run_cli`)."""
    return run_cli


@pytest.fixture(scope="session")
def tiny_zoo() -> Path:
    """The tiny zoo for seed 0, built once and cached by (seed, version)."""
    from vpt.models.zoo import cached_tiny_zoo

    return cached_tiny_zoo(seed=0)


@pytest.fixture(scope="session")
def toy_manifest(tmp_path_factory) -> Path:
    """24 toy-world clips written as mp4 with their ``videos`` manifest (seed 0)."""
    from vpt.toyworld import write_toy_videos

    return write_toy_videos(tmp_path_factory.mktemp("toy"), n=24, seed=0)


@pytest.fixture(scope="session")
def small_prefs_world(tmp_path_factory):
    """``small_prefs_world(clips, pairs, seed)`` -> a directory with ``clips`` toy videos (8 frames, 56x56), their
    ``videos.parquet`` and ``pairs`` toy-world pairs in ``prefs.parquet``: the smallest train-reward input."""
    from vpt.io.tables import read_table, write_table
    from vpt.toyworld import toy_preferences, write_toy_videos

    def make(clips: int, pairs: int, seed: int) -> Path:
        root = tmp_path_factory.mktemp(f"prefs-world-{seed}")
        manifest = write_toy_videos(root, n=clips, seed=seed, frames=8, height=56, width=56, fps=8.0)
        rows = read_table(manifest, "videos").to_pylist()
        write_table(toy_preferences(rows, pairs, seed=seed), root / "prefs.parquet", "prefs")
        return root

    return make
