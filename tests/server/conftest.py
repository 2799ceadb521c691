"""The small videos the server tests score."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    """A videos manifest of 6 toy clips (8 frames of 32x32, with prompts), and bad files next to it in ``bad/``."""
    from vpt.toyworld import write_toy_videos

    root = tmp_path_factory.mktemp("served")
    manifest = write_toy_videos(root, n=6, seed=0, frames=8, height=32, width=32)
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("not a video\n")
    (bad / "empty.mp4").write_bytes(b"")
    return manifest
