"""The shared world of the reliability suite and the checks every refused command must pass (one line, exit code
2, no traceback, nothing left where it was to write)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

VPT = str(Path(sys.executable).with_name("vpt"))
SAMPLER = ["--steps", "3", "--frames", "5", "--height", "32", "--width", "32", "-q"]


@dataclass(frozen=True)
class World:
    """Paths of the shared world (see :func:`world`)."""

    root: Path
    zoo: Path
    toy: Path  # videos manifest of 6 toy clips, 9 frames of 32x32, relative paths
    clips: Path  # their directory
    bad: Path  # empty.mp4, truncated.mp4, text.mp4
    unicode_clip: Path  # a good clip under a path with spaces and non-ASCII letters
    prompts: Path  # prompts.txt, two prompts
    rollouts: Path  # 2 prompts x 3 samples of the tiny generator, 3 steps, 5 frames of 32x32
    scores: Path  # brightness and motion of the rollouts
    prefs: Path  # best-vs-worst rollout pairs labelled vq (and overall)
    toy_scores: Path  # brightness of the toy clips



def leftovers(path: Path) -> list[str]:
    """``path`` itself and any hidden temporary of it (``.NAME.tmp-*``, ``.NAME.parts-*``) in its directory."""
    found = [path.name] if path.exists() or path.is_symlink() else []
    if path.parent.is_dir():
        found += sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))
    return found


def assert_refused(result, message: str, *outputs: Path) -> None:
    """Exit code 2, exactly ``vpt: error: MESSAGE`` on stderr, nothing on stdout, and none of ``outputs`` (nor a
    temporary of one) exists."""
    assert "Traceback" not in result.stderr
    assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n")
    assert result.stdout == b""
    for output in outputs:
        assert leftovers(Path(output)) == [], output
