"""``sample-rollouts --latent-dtype`` bad values: refused in one line naming the option (exit 2, no traceback),
before any model loads, and nothing is left where the rollouts were to be written."""

from __future__ import annotations

import pytest

from reliability_world import SAMPLER, assert_refused


@pytest.mark.parametrize("value", ["fp16", "float32", "BF16", ""])
def test_bad_latent_dtype_is_refused_in_one_line(value, run_vpt, tmp_path):
    (tmp_path / "prompts.txt").write_text("a red ball\n")
    # no model at --model: the option is checked before the generator is opened
    result = run_vpt(["sample-rollouts", "-m", tmp_path / "no-model", "--prompts", tmp_path / "prompts.txt", "-g", "2",
                      *SAMPLER, "--latent-dtype", value, "-o", tmp_path / "out"])
    assert_refused(result, f"--latent-dtype {value}: choose bf16 or fp32", tmp_path / "out")
