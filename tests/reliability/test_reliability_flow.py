"""Bad inputs to ``vpt eval flow`` and the flow models: refused with one exact line and exit code 2 (nothing
written), or, for one video's bad flow file or unreadable video, a row whose error says exactly what is wrong."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from reliability_world import assert_refused
from vpt.errors import VptError
from vpt.io.flow import write_flow
from vpt.io.video import write_video

LAYOUT = "float32 flow [T-1, H, W, 2] = forward (dx, dy) pixels of frame t to t+1, optional valid [T-1, H, W]"


@pytest.fixture
def clips(tmp_path):
    """``tmp/videos/clip.mp4`` (3 still frames, 16x16) and an empty ``tmp/ref`` directory."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "ref").mkdir()
    write_video(tmp_path / "videos" / "clip.mp4", np.full((3, 16, 16, 3), 90, np.uint8), fps=8)
    return tmp_path


def test_a_reference_that_is_not_a_directory(run_vpt, clips):
    result = run_vpt(["eval", "flow", clips / "videos", "--reference", clips / "nope", "-o", clips / "out"])
    assert_refused(result, f"--reference {clips / 'nope'}: not a directory; give the directory of the "
                           "<video name>.flow.safetensors files", clips / "out")


def test_a_flow_option_that_is_not_a_directory(run_vpt, clips):
    result = run_vpt(["eval", "flow", clips / "videos", "--reference", clips / "ref", "--flow",
                      clips / "videos" / "clip.mp4", "-o", clips / "out"])
    assert_refused(result, f"--flow {clips / 'videos' / 'clip.mp4'}: not a directory; give the directory of the "
                           "<video name>.flow.safetensors files", clips / "out")


def test_no_videos(run_vpt, clips):
    result = run_vpt(["eval", "flow", "--reference", clips / "ref", "-o", clips / "out"])
    assert_refused(result, "no videos given; name a directory, files, a glob or a videos manifest", clips / "out")


def test_two_videos_of_one_name(run_vpt, clips):
    (clips / "videos" / "b").mkdir()
    (clips / "videos" / "b" / "clip.mp4").write_bytes((clips / "videos" / "clip.mp4").read_bytes())
    result = run_vpt(["eval", "flow", clips / "videos", "--reference", clips / "ref", "-o", clips / "out"])
    assert_refused(result, f"two videos have the file name 'clip' ({clips / 'videos' / 'b' / 'clip.mp4'} and "
                           f"{clips / 'videos' / 'clip.mp4'}); flow files are found by file name "
                           "(DIR/<name>.flow.safetensors), so give the videos distinct names", clips / "out")


@pytest.mark.parametrize("model", ["dynamic-degree", "motion-smoothness"])
def test_flow_models_with_weights(run_vpt, clips, model):
    result = run_vpt(["score", "-m", f"{model}:/weights", clips / "videos", "-o", clips / "out"])
    assert_refused(result, f"{model}:/weights: {model} takes no weights; name it bare (--model {model})",
                   clips / "out")


def save_raw(path, tensors: dict) -> None:
    """A safetensors file with exactly ``tensors``, bypassing write_flow's checks."""
    from safetensors.numpy import save_file

    save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()}, path)


ZERO = np.zeros((2, 16, 16, 2), np.float32)
NAN = ZERO.copy()
NAN[1, 3, 4, 0] = np.nan
MASKED = np.ones((2, 16, 16), np.uint8)
MASKED[1, 3, 4] = 0
BAD_FILES = {
    "text file": (lambda path: path.write_text("not a flow\n"), "not a readable safetensors file ("),
    "no flow tensor": (lambda path: save_raw(path, {"motion": ZERO}),
                       f"has no tensor 'flow' (found: motion); expected {LAYOUT}"),
    "integer flow": (lambda path: save_raw(path, {"flow": ZERO.astype(np.int32)}),
                     "tensor 'flow' has dtype int32; store floating-point (dx, dy) pixels"),
    "three components": (lambda path: save_raw(path, {"flow": np.zeros((2, 16, 16, 3), np.float32)}),
                         f"tensor 'flow' has shape [2, 16, 16, 3]; expected [T-1, H, W, 2] ({LAYOUT})"),
    "valid of another shape": (lambda path: save_raw(path, {"flow": ZERO, "valid": np.ones((2, 16, 15), np.uint8)}),
                               "tensor 'valid' has shape [2, 16, 15], tensor 'flow' [2, 16, 16, 2]; expected valid "
                               "[T-1, H, W] = [2, 16, 16]"),
    "float valid": (lambda path: save_raw(path, {"flow": ZERO, "valid": np.ones((2, 16, 16), np.float32)}),
                    "tensor 'valid' has dtype float32; store bool or uint8 (nonzero = valid)"),
    "NaN at a valid pixel": (lambda path: save_raw(path, {"flow": NAN}),
                             "tensor 'flow' holds non-finite values at valid pixels; mark them 0 in 'valid'"),
    "no valid pixel": (lambda path: save_raw(path, {"flow": ZERO, "valid": np.zeros((2, 16, 16), np.uint8)}),
                       "marks no pixel valid"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_reference_file_is_an_error_row(run_vpt, clips, case):
    make, reason = BAD_FILES[case]
    reference = clips / "ref" / "clip.flow.safetensors"
    make(reference)
    result = run_vpt(["eval", "flow", "-q", clips / "videos", "--reference", clips / "ref", "-o", "-"])
    assert result.exit_code == 0 and "Traceback" not in result.stderr
    assert result.stderr == "vpt: warning: 1 of 1 videos could not be evaluated; the error column says why\n"
    (row,) = pq.read_table(io.BytesIO(result.stdout)).to_pylist()
    assert row["error"].startswith(f"{reference}: {reason}") and row["epe"] is None


def test_nan_where_the_reference_is_invalid_is_fine(run_vpt, clips):
    save_raw(clips / "ref" / "clip.flow.safetensors", {"flow": NAN, "valid": MASKED})
    result = run_vpt(["eval", "flow", "-q", clips / "videos", "--reference", clips / "ref", "-o", "-"])
    (row,) = pq.read_table(io.BytesIO(result.stdout)).to_pylist()
    assert (row["epe"], row["error"]) == (0.0, None)


def test_an_unreadable_video_is_an_error_row(run_vpt, clips):
    (clips / "videos" / "empty.mp4").write_bytes(b"")
    write_flow(clips / "ref" / "clip.flow.safetensors", ZERO)
    result = run_vpt(["eval", "flow", "-q", clips / "videos", "--reference", clips / "ref", "-o", "-"])
    rows = {row["id"]: row for row in pq.read_table(io.BytesIO(result.stdout)).to_pylist()}
    assert rows["clip"]["error"] is None and rows["clip"]["epe"] == 0.0
    # the reference is read first: a missing one is the first thing to fix
    assert rows["empty"]["error"].startswith(f"{clips / 'ref' / 'empty.flow.safetensors'}: no such flow file")
    write_flow(clips / "ref" / "empty.flow.safetensors", ZERO)
    result = run_vpt(["eval", "flow", "-q", clips / "videos", "--reference", clips / "ref", "-o", "-"])
    rows = {row["id"]: row for row in pq.read_table(io.BytesIO(result.stdout)).to_pylist()}
    assert rows["empty"]["error"] == f"{clips / 'videos' / 'empty.mp4'}: file is empty (0 bytes)"


def test_write_flow_refuses_what_it_could_not_read_back(tmp_path):
    with pytest.raises(VptError, match=r"tensor 'flow' has shape \[16, 16, 2\]"):
        write_flow(tmp_path / "a.flow.safetensors", ZERO[0])
    with pytest.raises(VptError, match="tensor 'valid' has shape"):
        write_flow(tmp_path / "a.flow.safetensors", ZERO, MASKED[:1])
    assert list(tmp_path.iterdir()) == []
