"""SFT, Flow-RWR and Flow-DPO learn in the toy world (CPU, seeded): every run goes through ``vpt sft`` / ``vpt dpo``
(toy clips as mp4, a videos manifest, a scores or prefs table, policy checkpoints), and every claim is a paired
comparison — ODE samples of the trained policy and of its reference from the same prompts and initial noises,
scored by brightness (:func:`vpt.testing.flow_eval.compare_samples`). Seed 0 runs by default; seeds 1 and 2 are
marked slow and run the same assertions.

Why DPO starts from an SFT policy and not from the tiny generator: the generator's transformer is random, so it is
no model of the clips. Measured on seeds 0-2 (any lr, β, σ distribution or LoRA targets tried, and even on pairs
of the generator's own samples), DPO from it makes samples *darker* when the brighter clip wins and brighter when
the labels are flipped: the gradient does move the samples' latents towards the winners' (along the bright-minus-
dark latent direction), but a larger change in other directions, which the VAE decodes darker, swamps it. Started
from a policy fine-tuned on the same clips long enough to model them (SFT_ARGS; after 200-800 steps the outcome
still depended on the seed), DPO moves samples the way the labels ask on every seed. That is also the recipe's
order (TeleBoost: SFT before DPO), and DPO's reference is then that SFT policy.

β: Adam's step does not scale with the gradient, so β acts mostly through the sigmoid's saturation. At the
default 5000 (errors are per-element means, as in Diffusion-DPO) every pair's margin saturates within the 100 steps
(loss 0, the gradient underflows in float32) and the run stops moving on its own; seed 0 ends with chosen error
1.569 (reference 1.607) and rejected error 2.304 (reference 1.725). β from 500 to 5·10⁴ moved seed 0's samples the
same way in the sweeps; lr and steps set the size of the effect (lr 1e-3: gains 0.03-0.06 on seeds 0-2, against
0.07-0.11 at 2e-3).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vpt.rewards.heuristic import brightness
from vpt.testing.flow_eval import PairedScores, compare_samples

CLIPS = 16
PAIRS = 64
MARGIN = 0.02  # brightness in [0, 1]; the gains measured on seeds 0-2 are 0.07-0.23
# One recipe for every flow-matching run: long enough for the LoRA to model the clips (shorter runs sit in a
# transient where sample brightness swings with the step count).
SFT_ARGS = ["--lr", "2e-2", "--lr-schedule", "cosine", "--batch-size", "8", "--max-steps", "1000"]
DPO_ARGS = ["--dim", "vq", "--beta", "5000", "--lr", "2e-3", "--batch-size", "8", "--max-steps", "100"]
RWR_BETA = 0.1  # clip brightness spans ~0.1-0.85: weights span e^7, an effective sample of ~5 of the 16 clips
EVAL_PROMPTS = ["a red square moving slowly to the left on a dark background",
                "a blue circle standing still on a dim background",
                "a green triangle moving quickly upward on a bright background",
                "a yellow square moving steadily downward on a very bright background"]
EVAL_SAMPLES = 8
SEEDS = [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]


class ToyRuns:
    """The clips, tables, policies and paired comparisons of one seed, each made once on first use."""

    def __init__(self, zoo: Path, root: Path, cache: Path, seed: int, run_vpt):
        self.zoo, self.root, self.cache, self.seed, self.run_vpt = zoo, root, cache, seed, run_vpt
        self.done: dict[str, object] = {}

    def _once(self, key: str, make):
        if key not in self.done:
            self.done[key] = make()
        return self.done[key]

    def manifest(self) -> Path:
        from vpt.toyworld import write_toy_videos

        return self._once("manifest", lambda: write_toy_videos(self.root / "world", n=CLIPS, seed=self.seed,
                                                               frames=9, height=32, width=32))

    def rows(self) -> list[dict]:
        from vpt.io.tables import read_table

        return self._once("rows", lambda: read_table(self.manifest(), "videos").to_pylist())

    def _train(self, name: str, command: str, args: list[str]) -> Path:
        out = self.root / name
        result = self.run_vpt([command, *args, "--seed", self.seed, "--cache", self.cache, "--quiet", "-o", out])
        assert result.exit_code == 0, result.stderr
        return out

    def sft(self, name: str, data: Path, *extra) -> Path:
        return self._once(name, lambda: self._train(name, "sft", ["--model", self.zoo, "--data", data, *SFT_ARGS,
                                                                  *extra]))

    def sft_all(self) -> Path:
        return self.sft("sft-all", self.manifest())

    def sft_bright(self) -> Path:
        from vpt.io.tables import write_table

        def brightest_half() -> Path:
            rows = sorted(self.rows(), key=lambda row: row["brightness"])
            write_table(rows[CLIPS // 2:], self.root / "world" / "bright.parquet", "videos")
            return self.root / "world" / "bright.parquet"

        return self.sft("sft-bright", self._once("bright", brightest_half))

    def rwr(self) -> Path:
        return self.sft("rwr", self.manifest(), "--rwr-from", self._once("scores", self._scores),
                        "--rwr-reward", "brightness", "--rwr-beta", RWR_BETA)

    def _scores(self) -> Path:
        """The clips' measured brightness (decoded from the mp4s, as ``vpt score`` would) as a scores table."""
        from vpt.io.tables import write_table
        from vpt.io.video import read_frames

        rows = []
        for row in self.rows():
            value = brightness(read_frames(self.manifest().parent / row["path"]))
            rows.append({"id": row["id"], "path": row["path"], "prompt": row["prompt"], "model": "brightness",
                         "score": value, "error": None, "brightness": value})
        write_table(rows, self.root / "world" / "scores.parquet", "scores")
        return self.root / "world" / "scores.parquet"

    def dpo(self, flipped: bool) -> Path:
        name = "dpo-flipped" if flipped else "dpo"

        def train() -> Path:
            out = self._train(name, "dpo", ["--policy", self.sft_all(), "--prefs", self._prefs(flipped), *DPO_ARGS])
            last = _last_metrics(out)
            print(f"seed {self.seed} {name} at step {last['step']}: accuracy {last['accuracy']:.2f}, loss "
                  f"{last['loss']:.4f}, chosen error {last['chosen_error']:.3f} (reference "
                  f"{last['reference_chosen_error']:.3f}), rejected error {last['rejected_error']:.3f} (reference "
                  f"{last['reference_rejected_error']:.3f})")
            return out

        return self._once(name, train)

    def _prefs(self, flipped: bool) -> Path:
        """Toy-world pairs labelled in ``vq`` by true brightness (the brighter clip wins; near-equal ones tie),
        or with every label swapped."""
        from vpt.io.tables import write_table
        from vpt.toyworld import toy_preferences

        swap = {"a": "b", "b": "a"}
        pairs = [{**pair, "vq": swap.get(pair["vq"], pair["vq"])} if flipped else pair
                 for pair in toy_preferences(self.rows(), PAIRS, seed=self.seed)]
        path = self.root / "world" / ("prefs-flipped.parquet" if flipped else "prefs.parquet")
        write_table(pairs, path, "prefs")
        return path

    def compare(self, label: str, policy: Path, reference: Path | None) -> PairedScores:
        def measure() -> PairedScores:
            scores = compare_samples(self.zoo, policy, reference, EVAL_PROMPTS, EVAL_SAMPLES, 1000 + self.seed,
                                     brightness)
            print(f"seed {self.seed} {label}: {scores.describe()}")
            return scores

        return self._once(f"compare {label}", measure)


def _last_metrics(checkpoint: Path) -> dict:
    """The last logged step's metrics of a policy checkpoint (its ``metrics.parquet``)."""
    from vpt.train.policy import read_policy_metrics

    table = read_policy_metrics(checkpoint)
    step = max(step for step, _ in table if step is not None)
    return {"step": step, **{name: value for (at, name), value in table.items() if at == step}}


@pytest.fixture(scope="module")
def toy_runs(tiny_zoo, tmp_path_factory, run_vpt):
    """toy_runs(seed) -> the :class:`ToyRuns` of that seed (shared by the module's tests)."""
    cache = tmp_path_factory.mktemp("encoded")
    worlds: dict[int, ToyRuns] = {}

    def get(seed: int) -> ToyRuns:
        if seed not in worlds:
            worlds[seed] = ToyRuns(tiny_zoo, tmp_path_factory.mktemp(f"flow-{seed}"), cache, seed, run_vpt)
        return worlds[seed]

    return get


@pytest.mark.parametrize("seed", SEEDS)
def test_dpo_where_the_brighter_clip_wins_brightens_samples(toy_runs, seed):
    runs = toy_runs(seed)
    scores = runs.compare("dpo vs its reference (sft-all)", runs.dpo(flipped=False), runs.sft_all())
    assert scores.gain > MARGIN and scores.win_rate > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_dpo_with_flipped_labels_darkens_samples(toy_runs, seed):
    runs = toy_runs(seed)
    flipped = runs.compare("dpo, flipped labels, vs its reference (sft-all)", runs.dpo(flipped=True),
                           runs.sft_all())
    assert flipped.gain < 0


@pytest.mark.parametrize("seed", SEEDS)
def test_sft_on_the_brightest_half_brightens_samples(toy_runs, seed):
    runs = toy_runs(seed)
    scores = runs.compare("sft on the brightest half vs the generator", runs.sft_bright(), None)
    assert scores.gain > MARGIN and scores.win_rate > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_flow_rwr_by_brightness_beats_the_generator_and_plain_sft(toy_runs, seed):
    runs = toy_runs(seed)
    over_generator = runs.compare("rwr vs the generator", runs.rwr(), None)
    over_sft = runs.compare("rwr vs sft on the same clips", runs.rwr(), runs.sft_all())
    assert over_generator.gain > MARGIN and over_generator.win_rate > 0.5
    assert over_sft.gain > MARGIN and over_sft.win_rate > 0.5
