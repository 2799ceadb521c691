"""How rollouts are stored: ``--latent-dtype bf16`` (the sampler goes on from the rounded states, so the stored
log-probs recompute exactly and grpo-step's first ratio is 1), only the states of the recorded steps, the byte count
of :func:`bytes_per_sample` against real shards, float32 for every reader, older tables, and same seed -> same bytes.
"""

from __future__ import annotations

import json
import math
import shutil
import struct

import pyarrow.parquet as pq
import pytest
import torch

from vpt.algo.flow_sde import sample_flow, state_indices_of, step_log_prob
from vpt.errors import VptError
from vpt.rollouts.store import bytes_per_sample, load_rollouts, wan_latent_shape

SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "4", "-g", "2", "--guidance", "3",
         "--seed", "5", "-q"]
PROMPTS = "a red ball bouncing\na white ring on a dark floor\n"


@pytest.fixture(scope="module")
def runs(run_vpt, tiny_zoo, tmp_path_factory):
    """bf16 with the window 1:3 (twice, same seed), and fp32 with every step but the last recorded."""
    root = tmp_path_factory.mktemp("storage")
    (root / "prompts.txt").write_text(PROMPTS)
    for name, extra in (("bf16", ["--latent-dtype", "bf16", "--sde-window", "1:3"]),
                        ("bf16-again", ["--latent-dtype", "bf16", "--sde-window", "1:3"]), ("fp32", [])):
        result = run_vpt(["sample-rollouts", "-m", tiny_zoo, "--prompts", root / "prompts.txt", "-o", root / name,
                          *SMALL, *extra])
        assert result.exit_code == 0, result.stderr
    return root


def tensor_bytes(shard) -> dict[str, int]:
    """Bytes of each tensor of a safetensors file, from its header (8-byte length, JSON with data offsets)."""
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    sizes = {key: end - start for key, entry in header.items() if key != "__metadata__"
             for start, end in [entry["data_offsets"]]}
    assert len(data) == 8 + length + sum(sizes.values())  # nothing else in the file
    return sizes


def test_bf16_rollouts_store_bf16_and_read_float32(runs):
    loaded = load_rollouts(runs / "bf16")
    assert [row["latent_dtype"] for row in loaded.rows] == ["bf16"] * 4
    assert all(row["recorded_steps"] == [1, 2] for row in loaded.rows)
    from safetensors.torch import load_file

    for row in loaded.rows:
        raw = load_file(str(runs / "bf16" / row["latents_shard"]))
        assert {tensor.dtype for tensor in raw.values()} == {torch.bfloat16}
        states, final = loaded.states(row), loaded.final_latent(row)
        # only x_1, x_2, x_3: the starts and ends of the recorded steps 1 and 2
        assert states.dtype == final.dtype == torch.float32 and states.shape == (3, 16, 3, 4, 4)
        assert torch.equal(states, raw[row["latents_key"]].float())
        assert torch.equal(final, raw[row["final_latents_key"]].float())
    fp32 = load_rollouts(runs / "fp32")
    assert [row["latent_dtype"] for row in fp32.rows] == ["fp32"] * 4
    assert fp32.states(fp32.rows[0]).dtype == torch.float32 and fp32.states(fp32.rows[0]).shape[0] == 4


def test_bytes_per_sample_is_the_shards_tensor_bytes(runs):
    shape = wan_latent_shape(32, 32, 9)
    assert shape == (16, 3, 4, 4)
    for name, dtype in (("bf16", "bf16"), ("fp32", "fp32")):
        loaded = load_rollouts(runs / name)
        for shard in sorted({row["latents_shard"] for row in loaded.rows}):
            sizes = tensor_bytes(runs / name / shard)
            rows = [row for row in loaded.rows if row["latents_shard"] == shard]
            for row in rows:
                stored = sizes[row["latents_key"]] + sizes[row["final_latents_key"]]
                assert stored == bytes_per_sample(shape, row["recorded_steps"], dtype)
            assert sum(sizes.values()) == len(rows) * bytes_per_sample(shape, rows[0]["recorded_steps"], dtype)
    # independently: (states + final) x C*F*h*w x bytes per element
    assert bytes_per_sample(shape, [1, 2], "bf16") == (3 + 1) * 16 * 3 * 4 * 4 * 2
    assert bytes_per_sample(shape, [0, 1, 2], torch.float32) == (4 + 1) * 16 * 3 * 4 * 4 * 4
    assert bytes_per_sample(shape, [], "fp32") == 16 * 3 * 4 * 4 * 4  # the ODE sampler: the final latent only
    # the README's figures: 480x832x81, 20 steps
    wan = wan_latent_shape(480, 832, 81)
    assert wan == (16, 21, 60, 104)
    assert bytes_per_sample(wan, range(19), "fp32") == 21 * 2_096_640 * 4 == 176_117_760
    assert bytes_per_sample(wan, [5, 6], "bf16") == 4 * 2_096_640 * 2 == 16_773_120
    with pytest.raises(ValueError, match="need frames = 1 \\+ a multiple of 4"):
        wan_latent_shape(480, 832, 80)


def test_same_seed_same_bytes_with_bf16(runs):
    first, second = runs / "bf16", runs / "bf16-again"
    shards = sorted(path.relative_to(first) for path in first.glob("*/*.safetensors"))
    assert len(shards) == 4
    for shard in shards:
        assert (first / shard).read_bytes() == (second / shard).read_bytes()
    assert (first / "shards.json").read_text() == (second / "shards.json").read_text()
    assert pq.read_table(first / "rollouts.parquet").equals(pq.read_table(second / "rollouts.parquet"))


def test_rollouts_without_latent_dtype_load_as_float32(runs, tmp_path):
    """Older tables have no ``latent_dtype`` column: they load (float32); a column that contradicts the shards is
    refused with the shard and row."""
    run = tmp_path / "old"
    shutil.copytree(runs / "fp32", run)
    table = pq.read_table(run / "rollouts.parquet")
    pq.write_table(table.drop_columns(["latent_dtype"]).replace_schema_metadata(table.schema.metadata),
                   run / "rollouts.parquet")
    loaded = load_rollouts(run)
    assert "latent_dtype" not in loaded.rows[0]
    assert torch.equal(loaded.states(loaded.rows[0]), load_rollouts(runs / "fp32").states(loaded.rows[0]))

    run = tmp_path / "lying"
    shutil.copytree(runs / "bf16", run)
    table = pq.read_table(run / "rollouts.parquet")
    column = table.schema.get_field_index("latent_dtype")
    pq.write_table(table.set_column(column, "latent_dtype", [["fp32"] * table.num_rows]), run / "rollouts.parquet")
    with pytest.raises(VptError) as error:
        load_rollouts(run)
    assert str(error.value) == (f"{run}/latents/p0000.safetensors: states stored as torch.bfloat16 but row 1 declares "
                                f"latent_dtype fp32; sample the rollouts again")


def test_bf16_first_grpo_ratio_is_one(runs, run_vpt, tiny_zoo):
    """grpo-step recomputes each recorded step's log-prob from the stored (bf16) states with the policy that sampled
    them: the ratios of the first iteration are exactly 1, as with float32 storage."""
    assert run_vpt(["score", runs / "bf16" / "rollouts.parquet", "-m", "brightness", "-o", runs / "scores.parquet",
                    "-q"]).exit_code == 0
    result = run_vpt(["grpo-step", "--init", tiny_zoo, "--rollouts", runs / "bf16",
                      "--scores", runs / "scores.parquet", "-o", runs / "p1", "--reward", "brightness", "--lr", "1e-2",
                      "-q"])
    assert result.exit_code == 0, result.stderr
    metrics = {(row["step"], row["name"]): row["value"]
               for row in pq.read_table(runs / "p1" / "metrics.parquet").to_pylist()}
    assert metrics[(None, "items")] == 4 * 2
    assert metrics[(None, "ratio_min")] == 1.0
    assert metrics[(None, "ratio_max")] == 1.0


def test_only_the_rounded_trajectory_recomputes_exactly():
    """With ``state_dtype`` the sampler rounds each recorded state before going on from it, and the log-prob of a
    step is that of the rounded state: recomputed from the stored (rounded) states, in float64 independently, it is
    the stored one. Rounding only when storing (sampling on in float32) would not recompute."""
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 8, 8, generator=generator)
    sigmas = torch.linspace(1, 0, 6)
    recorded, noise_level = [1, 2, 3], 0.7

    def velocity(x, i, sigma):
        return torch.sin(3 * x) + 0.5 * sigma

    def run(state_dtype):
        seeds = {i: torch.Generator().manual_seed(10 + i) for i in range(5)}
        return sample_flow(velocity, x0, sigmas, noise_level, recorded,
                           lambda i, like: torch.randn(like.shape, generator=seeds[i]), state_dtype=state_dtype)

    def recomputed(states, step):
        """float64 log N(x'; μ(x), s²) (Flow-GRPO Eq. 9-10) from the states as bf16 stores them."""
        positions = state_indices_of(recorded)
        x, x_next = (states[positions.index(j)].bfloat16().double() for j in (step, step + 1))
        s, s_next, first = (float(sigmas[j]) for j in (step, step + 1, 1))
        v = torch.sin(3 * x) + 0.5 * s
        std_scale = noise_level * math.sqrt(s / (1 - (first if s >= 1 else s)))
        mean = x + (v + std_scale**2 / (2 * s) * (x + (1 - s) * v)) * (s_next - s)
        std = std_scale * math.sqrt(s - s_next)
        density = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
        return density.flatten(1).mean(dim=1)

    rounded = run(torch.bfloat16)
    assert all(torch.equal(state, state.bfloat16().float()) for state in rounded.states)
    plain = run(None)
    for k, step in enumerate(recorded):
        positions = state_indices_of(recorded)
        x, x_next = (rounded.states[positions.index(j)] for j in (step, step + 1))
        # the float32 path grpo-step takes is bit-identical to the sampler's
        again = step_log_prob(x, x_next, velocity(x, step, sigmas[step]), sigmas[step], sigmas[step + 1],
                              noise_level, sigmas[1])
        assert torch.equal(again, rounded.log_probs[k])
        torch.testing.assert_close(rounded.log_probs[k].double(), recomputed(rounded.states, step), rtol=0,
                                   atol=1e-6)
        assert (plain.log_probs[k].double() - recomputed(plain.states, step)).abs().max() > 2e-5
