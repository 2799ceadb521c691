"""Bad inputs to every command: each is refused with its exact one-line message and exit code 2, no traceback, and
nothing left where the command was to write. Every option or input a later change adds gets its cases here.

A case is ``command/what``; :data:`CASES` maps it to the arguments (built from the shared world and the test's
temporary directory), the expected message and the outputs that must not appear.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import pytest

from reliability_world import SAMPLER, World, assert_refused
from vpt.io.tables import write_table

Args = Callable[[World, Path], list]
Text = Callable[[World, Path], str]


@dataclass(frozen=True)
class Case:
    args: Args
    message: Text
    outputs: tuple[str, ...] = ("out",)  # names in the test's directory that must not exist afterwards
    setup: Callable[[World, Path], None] | None = None
    stdin: Callable[[World], bytes] | None = None


def scores_with(column: str, value, row: int = 1, drop: int | None = None, repeat: bool = False):
    """A setup writing ``tmp/scores.parquet``: the world's rollout scores with one value changed (or a row
    dropped, or the first row repeated)."""
    def setup(world: World, tmp: Path) -> None:
        rows = pq.read_table(world.scores).to_pylist()
        rows[row][column] = value
        if drop is not None:
            del rows[drop]
        write_table(rows + rows[:1] if repeat else rows, tmp / "scores.parquet", "scores")
    return setup


def write(name: str, text: str):
    def setup(world: World, tmp: Path) -> None:
        (tmp / name).write_text(text, encoding="utf-8")
    return setup


def rollouts_copy(change: Callable[[Path], None]):
    """A setup copying the world's rollouts to ``tmp/r`` and damaging the copy."""
    def setup(world: World, tmp: Path) -> None:
        shutil.copytree(world.rollouts, tmp / "r")
        change(tmp / "r")
    return setup


def flip_last_bytes(rollouts: Path) -> None:
    shard = rollouts / "latents" / "p0000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))


def one_sample_per_group(rollouts: Path) -> None:
    rows = pq.read_table(rollouts / "rollouts.parquet").to_pylist()
    write_table([row for row in rows if row["sample_index"] == 0], rollouts / "rollouts.parquet", "rollouts")


def user_directory(name: str):
    """A setup making ``tmp/NAME`` a directory of the user's, with a file in it."""
    def setup(world: World, tmp: Path) -> None:
        (tmp / name / "trunk").mkdir(parents=True)
        (tmp / name / "trunk" / "precious.txt").write_text("notes\n")
    return setup


def unfinished_run(*names: str):
    """A setup making each ``tmp/NAME`` a run directory of vpt's holding a (stand-in) checkpoint-1."""
    def setup(world: World, tmp: Path) -> None:
        from vpt.io.atomic import OWNER_FILE

        for name in names:
            (tmp / name / "checkpoint-1").mkdir(parents=True)
            (tmp / name / OWNER_FILE).write_text("vpt's\n")
            (tmp / name / "checkpoint-1" / "trainer_state.json").write_text("{}\n")
    return setup


def pickled_lora(world: World, tmp: Path) -> None:
    """A peft-looking LoRA whose weights exist only as a pickle that would run code when unpickled."""
    import json
    import os

    import torch

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp / 'PWNED'}",)

    (tmp / "lora").mkdir()
    torch.save({"weight": Payload()}, tmp / "lora" / "adapter_model.bin")
    (tmp / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 4,
                                                                   "target_modules": ["to_q"]}))


def score(*extra) -> Args:
    return lambda w, t: ["score", "-m", "brightness", *[a(w, t) if callable(a) else a for a in extra]]


def sample(*extra) -> Args:
    return lambda w, t: ["sample-rollouts", "-m", w.zoo, "--prompts", w.prompts, "-g", "2", *SAMPLER, "-o", t / "out",
                         *[a(w, t) if callable(a) else a for a in extra]]


def guide(*extra) -> Args:
    return lambda w, t: ["guide", "-m", w.zoo, "--reward", w.toy.parent, "--prompts", w.prompts, *SAMPLER, "-o",
                         t / "out", *[a(w, t) if callable(a) else a for a in extra]]


def grpo(*extra, scores=None, rollouts=None) -> Args:
    return lambda w, t: ["grpo-step", "--init", w.zoo, "--rollouts", rollouts(w, t) if rollouts else w.rollouts,
                         "--scores", scores(w, t) if scores else w.scores, "--reward", "brightness", "-q", "-o",
                         t / "out", *[a(w, t) if callable(a) else a for a in extra]]


def sft(*extra, data=None) -> Args:
    return lambda w, t: ["sft", "-m", w.zoo, "--data", data(w, t) if data else w.toy, "--max-steps", "1", "--cache",
                         t / "cache", "-q", "-o", t / "out", *[a(w, t) if callable(a) else a for a in extra]]


def dpo(*extra, prefs=None) -> Args:
    return lambda w, t: ["dpo", "-m", w.zoo, "--prefs", prefs(w, t) if prefs else w.prefs, "--dim", "vq",
                         "--max-steps", "1", "--cache", t / "cache", "-q", "-o", t / "out",
                         *[a(w, t) if callable(a) else a for a in extra]]


def reward(*extra, kind="videoreward") -> Args:
    return lambda w, t: ["train-reward", "--kind", kind, "-m", w.zoo, "--data", w.prefs, "--max-steps", "1", "-q",
                         *[a(w, t) if callable(a) else a for a in extra]]


def tmp(name: str) -> Callable[[World, Path], Path]:
    return lambda w, t: t / name


def const(text: str) -> Text:
    return lambda w, t: text


CASES: dict[str, Case] = {
    # ------------------------------------------------------------------------------------------------ score
    "score/zero-byte mp4 (strict)": Case(
        score("--strict", lambda w, t: w.bad / "empty.mp4", "-o", tmp("out")),
        lambda w, t: f"{w.bad / 'empty.mp4'}: file is empty (0 bytes)"),
    "score/truncated mp4 (strict)": Case(
        score("--strict", lambda w, t: w.bad / "truncated.mp4", "-o", tmp("out")),
        lambda w, t: f"{w.bad / 'truncated.mp4'}: not a readable video (truncated: 0 of 9 frames present)"),
    "score/not a video (strict)": Case(
        score("--strict", lambda w, t: w.bad / "text.mp4", "-o", tmp("out")),
        lambda w, t: f"{w.bad / 'text.mp4'}: not a readable video (invalid data found when processing input)"),
    "score/missing file": Case(
        score(lambda w, t: t / "gone.mp4", "-o", tmp("out")),
        lambda w, t: f"{t / 'gone.mp4'}: no such file or directory"),
    "score/no inputs": Case(score("-o", tmp("out")),
                            const("no videos given; name a directory, files, a glob or a videos manifest")),
    "score/a scores table as manifest": Case(
        score(lambda w, t: w.scores, "-o", tmp("out")),
        lambda w, t: f"{w.scores}: is a 'scores' table, expected 'videos'"),
    "score/manifest without path column": Case(
        score(tmp("m.csv"), "-o", tmp("out")),
        lambda w, t: f"{t / 'm.csv'}: missing column 'path' (schema videos v1 requires: path)",
        setup=write("m.csv", "id,file\na,a.mp4\n")),
    "score/duplicated ids": Case(
        score(tmp("m.csv"), "-o", tmp("out")),
        const("two videos have the id 'a' (a.mp4 and b.mp4); give them distinct ids in a videos manifest"),
        setup=write("m.csv", "id,path\na,a.mp4\na,b.mp4\n")),
    "score/ids derived from paths collide": Case(
        score(tmp("m.csv"), "-o", tmp("out")),
        const("two videos have the id 'clips/a' (clips/a.mp4 and clips/a.webm); give them distinct ids in a videos "
              "manifest"),
        setup=write("m.csv", "path\nclips/a.mp4\nclips/a.webm\n")),
    "score/empty manifest": Case(
        score(tmp("m.csv"), "-o", tmp("out")),
        lambda w, t: f"{t / 'm.csv'}: holds no videos; add rows (id, path) to the manifest",
        setup=write("m.csv", "id,path\n")),
    "score/JSON-lines syntax error": Case(
        score(tmp("m.jsonl"), "-o", tmp("out")),
        lambda w, t: f"{t / 'm.jsonl'}: not a readable table (JSON parse error: Invalid value. in row 3)",
        setup=write("m.jsonl", '{"id": "a", "path": "a.mp4"}\n{"id": "b", "path": "b.mp4"}\nnot json\n')),
    "score/CSV with a ragged row": Case(
        score(tmp("m.csv"), "-o", tmp("out")),
        lambda w, t: f"{t / 'm.csv'}: not a readable table (CSV parse error: line 3: Expected 2 columns, got 3: "
                     "b,b.mp4,x)",
        setup=write("m.csv", "id,path\na,a.mp4\nb,b.mp4,x\n")),
    "score/relative paths from stdin": Case(
        score("-", "-o", tmp("out")),
        const("-: row 1: path 'clips/toy-0000.mp4' is relative, and a table read from standard input has no "
              "directory to resolve it against; pass --base-dir DIR (the directory the paths are relative to), or "
              "give the manifest as a file"),
        stdin=lambda w: w.toy.read_bytes()),
    "score/--base-dir not a directory": Case(
        score("--base-dir", tmp("nowhere"), lambda w, t: w.toy, "-o", tmp("out")),
        lambda w, t: f"--base-dir {t / 'nowhere'}: not a directory; give the directory the manifest's paths are "
                     "relative to"),
    "score/--base-dir without a manifest": Case(
        score("--base-dir", lambda w, t: w.root, lambda w, t: w.clips, "-o", tmp("out")),
        const("--base-dir applies to the paths of a videos manifest; the inputs name files directly")),
    "score/prompts table without id": Case(
        score("--prompts", lambda w, t: w.prompts, lambda w, t: w.toy, "-o", tmp("out")),
        lambda w, t: f"{w.prompts}: needs an 'id' column naming the video each prompt belongs to"),
    "score/unknown model": Case(
        lambda w, t: ["score", "-m", "sharpness", w.toy, "-o", t / "out"],
        const("unknown reward model 'sharpness'; available: aesthetic, background-consistency, brightness, clip, "
              "dynamic-degree, flicker, motion, motion-smoothness, pixel-smoothness, subject-consistency, "
              "videoreward, KIND:DIR (e.g. clip:DIR), a VideoReward checkpoint directory, or a reward server "
              "http://HOST:PORT/")),
    "score/--batch-size 0": Case(score("--batch-size", "0", lambda w, t: w.toy, "-o", tmp("out")),
                                 const("--batch-size and --workers must be at least 1")),
    "score/--batch-size not a number": Case(
        score("--batch-size", "many", lambda w, t: w.toy, "-o", tmp("out")),
        const("Invalid value for '--batch-size': Input should be a valid integer, unable to parse string as an "
              "integer (see 'vpt score --help')")),
    "score/unknown option": Case(score("--colour", lambda w, t: w.toy, "-o", tmp("out")),
                                 const("No such option: --colour (see 'vpt score --help')")),
    "score/--device not a device": Case(
        lambda w, t: ["score", "-m", w.zoo / "videoreward", "--device", "tpu", w.toy, "-o", t / "out"],
        const("--device tpu: not a device; choose auto, cpu, cuda or cuda:N")),
    "score/--device cuda without one": Case(
        lambda w, t: ["score", "-m", w.zoo / "videoreward", "--device", "cuda:3", w.toy, "-o", t / "out"],
        const("--device cuda:3: this machine has no such CUDA device; use --device auto or cpu")),
    "score/empty name in -m": Case(
        score(lambda w, t: w.toy, "-m", "motion,,flicker", "-o", tmp("out")),
        const("--model motion,,flicker: expected comma-separated names, e.g. brightness,motion")),
    "score/-o empty": Case(score(lambda w, t: w.toy, "-o", ""), const("--output is empty; give the file to write"),
                           outputs=()),
    "score/-o an existing directory": Case(
        score(lambda w, t: w.toy, "-o", tmp("out")),
        lambda w, t: f"--output {t / 'out'}: is a directory; give a file name, e.g. --output "
                     f"{t / 'out' / 'out.parquet'}",
        outputs=(), setup=lambda w, t: (t / "out").mkdir()),
    "score/-o under a file": Case(
        score(lambda w, t: w.toy, "-o", lambda w, t: t / "file" / "out.parquet"),
        lambda w, t: f"--output {t / 'file' / 'out.parquet'}: {t / 'file'} is not a directory; choose a path inside "
                     "a directory",
        outputs=(), setup=write("file", "x")),
    "score/-o in an unwritable directory": Case(
        score(lambda w, t: w.toy, "-o", "/sys/kernel/scores.parquet"),
        const("--output /sys/kernel/scores.parquet: cannot write in /sys/kernel (Permission denied); choose a "
              "directory you can write in"), outputs=()),
    "score/-o the current directory": Case(
        score(lambda w, t: w.toy, "-o", "."), const("--output .: names no file; give a name inside a directory, e.g. "
                                                    "--output out/NAME"), outputs=()),
    # ------------------------------------------------------------------------------------------------ build-prefs
    "build-prefs/no source": Case(
        lambda w, t: ["build-prefs", "-o", t / "out"],
        const("give exactly one source: --from-annotations FILE, --from-scores SCORES --videos TABLE, or --synthetic "
              "KINDS --videos TABLE --out-dir DIR")),
    "build-prefs/NaN reward": Case(
        lambda w, t: ["build-prefs", "--from-scores", t / "scores.parquet", "--videos", w.rollouts / "rollouts.parquet",
                      "--reward", "brightness", "-o", t / "out"],
        lambda w, t: f"{t / 'scores.parquet'}: row 2: column 'brightness' of video 'p0000@0#1' is nan; rewards must be "
                     "finite numbers, score the video again or drop the row",
        setup=scores_with("brightness", float("nan"))),
    "build-prefs/infinite reward": Case(
        lambda w, t: ["build-prefs", "--from-scores", t / "scores.parquet", "--videos", w.rollouts / "rollouts.parquet",
                      "--reward", "motion=1,brightness=2", "-o", t / "out"],
        lambda w, t: f"{t / 'scores.parquet'}: row 2: column 'brightness' of video 'p0000@0#1' is inf; rewards must be "
                     "finite numbers, score the video again or drop the row",
        setup=scores_with("brightness", float("inf"))),
    "build-prefs/unknown reward column": Case(
        lambda w, t: ["build-prefs", "--from-scores", w.scores, "--videos", w.rollouts / "rollouts.parquet",
                      "--reward", "vq", "-o", t / "out"],
        lambda w, t: f"{w.scores}: has no column 'vq' for --reward; its score columns: score, brightness, motion"),
    "build-prefs/-inf reward": Case(
        lambda w, t: ["build-prefs", "--from-scores", t / "scores.parquet", "--videos", w.rollouts / "rollouts.parquet",
                      "--reward", "brightness", "-o", t / "out"],
        lambda w, t: f"{t / 'scores.parquet'}: row 4: column 'brightness' of video 'p0001@0#0' is -inf; rewards must "
                     "be finite numbers, score the video again or drop the row",
        setup=scores_with("brightness", float("-inf"), row=3)),
    "build-prefs/video scored twice": Case(
        lambda w, t: ["build-prefs", "--from-scores", t / "scores.parquet", "--videos", w.rollouts / "rollouts.parquet",
                      "--reward", "brightness", "-o", t / "out"],
        lambda w, t: f"{t / 'scores.parquet'}: row 7: video id 'p0000@0#0' is scored twice; score each video once "
                     "(one prompt per video)",
        setup=scores_with("motion", 0.0, repeat=True)),
    "build-prefs/--from-scores without --videos": Case(
        lambda w, t: ["build-prefs", "--from-scores", w.scores, "-o", t / "out"],
        const("--from-scores needs --videos TABLE: the videos or rollouts table the scores are of (it gives the groups "
              "and the paths)")),
    "build-prefs/a videos table as scores": Case(
        lambda w, t: ["build-prefs", "--from-scores", w.toy, "--videos", w.rollouts / "rollouts.parquet", "-o",
                      t / "out"],
        lambda w, t: f"{w.toy}: is a 'videos' table, expected 'scores'"),
    "build-prefs/a scores table as videos": Case(
        lambda w, t: ["build-prefs", "--from-scores", w.scores, "--videos", w.scores, "-o", t / "out"],
        lambda w, t: f"{w.scores}: is a 'scores' table, expected 'videos'"),
    "build-prefs/--top-k 0": Case(
        lambda w, t: ["build-prefs", "--from-scores", w.scores, "--videos", w.rollouts / "rollouts.parquet", "--reward",
                      "brightness", "--top-k", "0", "-o", t / "out"],
        const("--top-k must be at least 1, got 0")),
    "build-prefs/--min-gap negative": Case(
        lambda w, t: ["build-prefs", "--from-scores", w.scores, "--videos", w.rollouts / "rollouts.parquet", "--reward",
                      "brightness", "--min-gap", "-1", "-o", t / "out"],
        const("--min-gap must be a finite number >= 0, got -1.0")),
    "build-prefs/--label unknown": Case(
        lambda w, t: ["build-prefs", "--from-scores", w.scores, "--videos", w.rollouts / "rollouts.parquet", "--reward",
                      "brightness", "--label", "xx", "-o", t / "out"],
        const("--label xx: choose one of vq, mq, ta")),
    "build-prefs/--out-dir exists": Case(
        lambda w, t: ["build-prefs", "--synthetic", "reverse", "--videos", w.toy, "--out-dir", t / "negatives", "-o",
                      t / "out"],
        lambda w, t: f"{t / 'negatives'}: already exists; remove it or choose another --out-dir",
        setup=lambda w, t: (t / "negatives").mkdir()),
    "build-prefs/unknown negative": Case(
        lambda w, t: ["build-prefs", "--synthetic", "blur", "--videos", w.toy, "--out-dir", t / "negatives", "-o",
                      t / "out"],
        const("unknown kind of negative 'blur'; choose from reverse, shuffle, freeze"), outputs=("out", "negatives")),
    "build-prefs/--synthetic trailing comma": Case(
        lambda w, t: ["build-prefs", "--synthetic", "reverse,", "--videos", w.toy, "--out-dir", t / "negatives", "-o",
                      t / "out"],
        const("--synthetic reverse,: expected comma-separated names, e.g. reverse,shuffle,freeze"),
        outputs=("out", "negatives")),
    "build-prefs/--from-scores empty name": Case(
        lambda w, t: ["build-prefs", "--from-scores", f"{w.scores},", "--videos", w.rollouts / "rollouts.parquet",
                      "-o", t / "out"],
        lambda w, t: f"--from-scores {w.scores},: expected comma-separated names, e.g. "
                     "brightness.parquet,motion.parquet"),
    "build-prefs/unreadable source clip": Case(
        lambda w, t: ["build-prefs", "--synthetic", "reverse", "--videos", t / "m.csv", "--out-dir", t / "negatives",
                      "-o", t / "out"],
        lambda w, t: f"{w.bad / 'text.mp4'}: not a readable video (invalid data found when processing input)",
        outputs=("out", "negatives"),
        setup=lambda w, t: (t / "m.csv").write_text(f"id,path\na,{w.bad / 'text.mp4'}\n")),
    "build-prefs/unknown annotation label": Case(
        lambda w, t: ["build-prefs", "--from-annotations", t / "a.csv", "--data-dir", w.toy.parent, "-o", t / "out"],
        lambda w, t: f"{t / 'a.csv'}: row 1: column 'MQ' has 'C'; expected A, B or same (--skip-invalid leaves such "
                     "rows out)",
        setup=write("a.csv", "path_A,path_B,prompt,VQ,MQ,TA\nclips/toy-0000.mp4,clips/toy-0001.mp4,p,A,C,B\n")),
    "build-prefs/annotations without TA": Case(
        lambda w, t: ["build-prefs", "--from-annotations", t / "a.csv", "-o", t / "out"],
        lambda w, t: f"{t / 'a.csv'}: missing column 'TA' (schema annotations v1 requires: path_A, path_B, prompt, VQ, "
                     "MQ, TA)",
        setup=write("a.csv", "path_A,path_B,prompt,VQ,MQ\nclips/toy-0000.mp4,clips/toy-0001.mp4,p,A,B\n")),
    "build-prefs/annotated video missing": Case(
        lambda w, t: ["build-prefs", "--from-annotations", t / "a.csv", "--data-dir", w.toy.parent, "-o", t / "out"],
        lambda w, t: f"{t / 'a.csv'}: row 1: path_B 'clips/gone.mp4' is not a file under {w.toy.parent}; fix the path "
                     "or give --data-dir (--skip-invalid leaves such rows out)",
        setup=write("a.csv", "path_A,path_B,prompt,VQ,MQ,TA\nclips/toy-0000.mp4,clips/gone.mp4,p,A,A,B\n")),
    "build-prefs/-o an existing directory": Case(
        lambda w, t: ["build-prefs", "--from-scores", w.scores, "--videos", w.rollouts / "rollouts.parquet", "-o",
                      w.root],
        lambda w, t: f"--output {w.root}: is a directory; give a file name, e.g. --output {w.root / 'out.parquet'}"),
    # ------------------------------------------------------------------------------------------------ eval
    "eval/gsb negative count": Case(lambda w, t: ["eval", "gsb", "--good", "1", "--same", "2", "--bad", "-3", "-o",
                                                  t / "out"], const("--bad -3: counts must be 0 or more")),
    "eval/gsb --bootstrap 0": Case(
        lambda w, t: ["eval", "gsb", "--good", "1", "--same", "2", "--bad", "3", "--bootstrap", "0", "-o", t / "out"],
        const("--bootstrap 0: give at least 1 replicate (10000 is usual)")),
    "eval/gsb --confidence 1.5": Case(
        lambda w, t: ["eval", "gsb", "--good", "1", "--same", "2", "--bad", "3", "--confidence", "1.5", "-o",
                      t / "out"], const("--confidence 1.5: give a coverage strictly between 0 and 1, e.g. 0.95")),
    "eval/gsb counts incomplete": Case(lambda w, t: ["eval", "gsb", "--good", "1", "--same", "2", "-o", t / "out"],
                                       const("--good, --same and --bad go together; add --bad")),
    "eval/gsb wrong table": Case(lambda w, t: ["eval", "gsb", "--counts", w.scores, "-o", t / "out"],
                                 lambda w, t: f"{w.scores}: is a 'scores' table, expected 'gsb_counts'"),
    "eval/gsb unknown judgement": Case(
        lambda w, t: ["eval", "gsb", "--judgements", t / "j.csv", "-o", t / "out"],
        lambda w, t: f"{t / 'j.csv'}: row 2: unknown judgement 'X'; accepted labels: G, S, B, good, same, bad (any "
                     "case)", setup=write("j.csv", "judgement\nG\nX\n")),
    "eval/rewardbench without scores": Case(
        lambda w, t: ["eval", "rewardbench", t / "a.csv", "-o", t / "out"],
        const("give exactly one of --scores TABLE or --model NAME"),
        setup=write("a.csv", "path_A,path_B,prompt,VQ,MQ,TA\nclips/toy-0000.mp4,clips/toy-0001.mp4,p,A,B,B\n")),
    "eval/rewardbench unscored video": Case(
        lambda w, t: ["eval", "rewardbench", t / "a.csv", "--data-dir", w.toy.parent, "--scores", w.toy_scores, "-o",
                      t / "out"],
        lambda w, t: f"{w.toy_scores}: no score for video clips/gone.mp4 ({t / 'a.csv'} row 1); score the videos under "
                     "the same paths, or let the command score them with --model",
        setup=write("a.csv", "path_A,path_B,prompt,VQ,MQ,TA\nclips/toy-0000.mp4,clips/gone.mp4,p,A,B,B\n")),
    # ------------------------------------------------------------------------------------------------ sample-rollouts
    "sample-rollouts/group of 0": Case(sample("-g", "0"), const("--group-size 0: give at least 1 sample per prompt")),
    "sample-rollouts/one step": Case(sample("--steps", "1"),
                                     const("--steps 1: give at least 2 (the last step is never stochastic)")),
    "sample-rollouts/negative noise": Case(sample("--noise-level", "-1"),
                                           const("--noise-level -1.0: give a finite number >= 0 (0: the ODE sampler)")),
    "sample-rollouts/NaN noise": Case(sample("--noise-level", "nan"),
                                      const("--noise-level nan: give a finite number >= 0 (0: the ODE sampler)")),
    "sample-rollouts/sde window past the end": Case(
        sample("--sde-window", "0:5"),
        const("--sde-window 0:5: need 0 <= START < END <= steps - 1 = 2 (the last step is never stochastic)")),
    "sample-rollouts/sde window not a range": Case(
        sample("--sde-window", "x"),
        const("--sde-window x: expected START:END step indices (e.g. 0:5), or progressive or random")),
    "sample-rollouts/unknown window strategy": Case(
        sample("--sde-window", "sliding"),
        const("--sde-window sliding: expected START:END step indices (e.g. 0:5), or progressive or random")),
    "sample-rollouts/window larger than the schedule": Case(
        sample("--sde-window", "progressive", "--window-size", "3"),
        const("--window-size 3: at most steps - 1 = 2 (the last step is never stochastic)")),
    "sample-rollouts/window that never moves": Case(
        sample("--sde-window", "progressive", "--window-size", "1", "--window-every", "0"),
        const("--window-every 0: give at least 1")),
    "sample-rollouts/window of no step": Case(
        sample("--sde-window", "random", "--window-size", "0"), const("--window-size 0: give at least 1")),
    "sample-rollouts/unknown ode solver": Case(sample("--ode-solver", "heun"),
                                               const("--ode-solver heun: choose one of euler, dpm-solver++")),
    "sample-rollouts/tail ratio of 0": Case(
        sample("--tail-ratio", "0"),
        const("--tail-ratio 0.0: give a share in (0, 1] of the steps after the SDE window")),
    "sample-rollouts/tail ratio above 1": Case(
        sample("--tail-ratio", "1.5"),
        const("--tail-ratio 1.5: give a share in (0, 1] of the steps after the SDE window")),
    "sample-rollouts/tail ratio without an sde window": Case(
        sample("--tail-ratio", "0.5", "--noise-level", "0"),
        const("--tail-ratio 0.5: compresses the steps after an SDE window; it needs a --noise-level > 0 and no "
              "--branch")),
    "sample-rollouts/unknown sde form": Case(sample("--sde-form", "ddim"),
                                             const("--sde-form ddim: choose one of flow-grpo, dancegrpo, cps")),
    "sample-rollouts/cps noise above 1": Case(
        sample("--sde-form", "cps", "--noise-level", "1.5"),
        const("--noise-level 1.5: give at most 1 with --sde-form cps (std = sigma' * sin(a * pi / 2))")),
    "sample-rollouts/branch not a pair": Case(sample("--branch", "2"),
                                              const("--branch 2: expected EARLY_K:EXPLORATION_K, e.g. 2:2")),
    "sample-rollouts/branch of one draw": Case(
        sample("--branch", "1:1"),
        const("--branch 1:1: give EARLY_K >= 1 and EXPLORATION_K >= 2 (a branch point's draws are one GRPO group)")),
    "sample-rollouts/branch past the stochastic steps": Case(
        sample("--branch", "9:2"), const("--branch 9:2: EARLY_K is at most the 2 stochastic steps")),
    "sample-rollouts/branch with --batch-size": Case(
        sample("--branch", "1:2", "--batch-size", "1"),
        const("--batch-size 1: does not apply with --branch: a branch point's draws are sampled together")),
    "sample-rollouts/unknown preset": Case(
        sample("--preset", "flow-grpo"),
        const("--preset flow-grpo: choose none or teleboost, teleboost-guard, teleboost-tempflow")),
    "sample-rollouts/batch of 0": Case(sample("--batch-size", "0"),
                                       const("--batch-size 0: give at least 1 sample per forward")),
    "sample-rollouts/fps 0": Case(sample("--fps", "0"), const("--fps 0.0: give a positive frame rate")),
    "sample-rollouts/negative shift": Case(sample("--shift", "-1"),
                                           const("--shift -1.0: give a positive timestep shift")),
    "sample-rollouts/frames not 1+4k": Case(
        sample("--frames", "6"), const("--frames 6 --height 32 --width 32: frames must be 1 + a multiple of 4 (e.g. 5, "
                                       "17), got 6")),
    "sample-rollouts/height not a multiple of 16": Case(
        sample("--height", "40"),
        const("--frames 5 --height 40 --width 32: height must be a positive multiple of 16, got 40")),
    "sample-rollouts/dtype": Case(sample("--dtype", "float16"), const("--dtype float16: choose bf16 or fp32")),
    "guide/dtype": Case(guide("--dtype", "fp16"), const("--dtype fp16: choose bf16 or fp32")),
    "score/dtype": Case(score(lambda w, t: w.toy, "--dtype", "half"), const("--dtype half: choose bf16 or fp32")),
    "sft/dtype": Case(sft("--dtype", "float16"), const("--dtype float16: choose bf16 or fp32")),
    "dpo/dtype": Case(dpo("--dtype", "bfloat"), const("--dtype bfloat: choose bf16 or fp32")),
    "grpo-step/dtype": Case(grpo("--dtype", "fp8"), const("--dtype fp8: choose bf16 or fp32")),
    "train-reward/dtype": Case(reward("-o", tmp("out"), "--dtype", "int8"), const("--dtype int8: choose bf16 or fp32")),
    "train-reward/latent dtype": Case(reward("-o", tmp("out"), "--dtype", "fp64", kind="latent"),
                                      const("--dtype fp64: choose bf16 or fp32")),
    "sft/report-to": Case(sft("--report-to", "mlflow"),
                          const("--report-to mlflow: choose one of none, tensorboard, wandb")),
    "dpo/report-to": Case(dpo("--report-to", "comet"),
                          const("--report-to comet: choose one of none, tensorboard, wandb")),
    "grpo-step/report-to": Case(grpo("--report-to", "WANDB"),
                                const("--report-to WANDB: choose one of none, tensorboard, wandb")),
    "train-reward/report-to": Case(reward("-o", tmp("out"), "--report-to", "tb"),
                                   const("--report-to tb: choose one of none, tensorboard, wandb")),
    "sample-rollouts/device": Case(sample("--device", "tpu"),
                                   const("--device tpu: not a device; choose auto, cpu, cuda or cuda:N")),
    "sample-rollouts/no such model": Case(
        lambda w, t: ["sample-rollouts", "-m", t / "nowhere", "--prompts", w.prompts, *SAMPLER, "-o", t / "out"],
        lambda w, t: f"{t / 'nowhere'}: not a diffusers Wan pipeline directory (no such directory); build one with "
                     "`vpt zoo tiny DIR`"),
    "sample-rollouts/empty prompts file": Case(
        lambda w, t: ["sample-rollouts", "-m", w.zoo, "--prompts", t / "p.txt", *SAMPLER, "-o", t / "out"],
        lambda w, t: f"{t / 'p.txt'}: holds no prompt (one prompt per line)", setup=write("p.txt", "\n  \n")),
    "sample-rollouts/duplicated prompt ids": Case(
        lambda w, t: ["sample-rollouts", "-m", w.zoo, "--prompts", t / "p.csv", *SAMPLER, "-o", t / "out"],
        lambda w, t: f"{t / 'p.csv'}: row 2: prompt id 'a' is already used by row 1; give every prompt its own id",
        setup=write("p.csv", "prompt_id,prompt\na,cat\na,dog\n")),
    "sample-rollouts/prompts column named like a rollouts column": Case(
        lambda w, t: ["sample-rollouts", "-m", w.zoo, "--prompts", t / "p.csv", *SAMPLER, "-o", t / "out"],
        lambda w, t: f"{t / 'p.csv'}: column 'seed' is also a column of the rollouts table, which carries the "
                     "prompts' other columns; rename it",
        setup=write("p.csv", "prompt_id,prompt,seed\na,cat,1\n")),
    "sample-rollouts/--out exists": Case(
        lambda w, t: ["sample-rollouts", "-m", w.zoo, "--prompts", w.prompts, *SAMPLER, "-o", w.rollouts],
        lambda w, t: f"{w.rollouts}: already exists; remove it or choose another --out", outputs=()),
    "sample-rollouts/--out empty": Case(
        lambda w, t: ["sample-rollouts", "-m", w.zoo, "--prompts", w.prompts, *SAMPLER, "-o", ""],
        const("--out is empty; give the directory to write"), outputs=()),
    "sample-rollouts/policy that is no LoRA": Case(
        sample("--policy", lambda w, t: w.clips),
        lambda w, t: f"{w.clips}: not a LoRA policy checkpoint (adapter_config.json and adapter_model.safetensors "
                     "expected) nor a diffusers LoRA (pytorch_lora_weights.safetensors, or a .safetensors file of "
                     "one); give a checkpoint written by grpo-step, dpo or sft, or a peft or diffusers Wan LoRA"),
    "sample-rollouts/pickle-only LoRA": Case(
        sample("--policy", tmp("lora")),
        lambda w, t: f"{t / 'lora'}: not a LoRA policy checkpoint (adapter_config.json and adapter_model.safetensors "
                     "expected) nor a diffusers LoRA (pytorch_lora_weights.safetensors, or a .safetensors file of "
                     "one); give a checkpoint written by grpo-step, dpo or sft, or a peft or diffusers Wan LoRA",
        outputs=("out", "PWNED"), setup=pickled_lora),
    # ------------------------------------------------------------------------------------------------ guide
    "guide/samples 0": Case(guide("--samples", "0"), const("--samples 0: give at least 1 sample per prompt")),
    "guide/not a reward model": Case(
        guide(), lambda w, t: f"{w.toy.parent}: not a latent reward model (latent_reward.json missing); train one with "
                              "`vpt train-reward --kind latent`"),
    "guide/--out exists": Case(guide(), lambda w, t: f"{t / 'out'}: already exists; remove it or choose another --out",
                               outputs=(), setup=lambda w, t: (t / "out").mkdir()),
    # ------------------------------------------------------------------------------------------------ grpo-step
    "grpo-step/--policy and --init": Case(
        grpo("--policy", tmp("p")), const("give exactly one of --policy CKPT (continue a policy) or --init WAN_DIR "
                                          "(start one)")),
    "grpo-step/NaN score": Case(
        grpo(scores=tmp("scores.parquet")),
        lambda w, t: f"{t / 'scores.parquet'}: row 2: column 'brightness' of rollout 'p0000@0#1' is not a finite "
                     "number (nan); score it again or drop the rollout's group",
        setup=scores_with("brightness", float("nan"))),
    "grpo-step/missing score": Case(
        grpo(scores=tmp("scores.parquet")),
        lambda w, t: f"{t / 'scores.parquet'}: no score for rollout 'p0001@0#2' (1 of 6 rollouts of {w.rollouts} "
                     "unscored); score every video of the rollouts",
        setup=scores_with("motion", 0.0, drop=5)),
    "grpo-step/rollout scored twice": Case(
        grpo(scores=tmp("scores.parquet")),
        lambda w, t: f"{t / 'scores.parquet'}: row 7: video id 'p0000@0#0' is scored twice; score each rollout once",
        setup=scores_with("motion", 0.0, repeat=True)),
    "grpo-step/wrong scores table": Case(grpo(scores=lambda w, t: w.toy),
                                         lambda w, t: f"{w.toy}: is a 'videos' table, expected 'scores'"),
    "grpo-step/unknown reward column": Case(
        grpo("--reward", "sharpness"), lambda w, t: f"no scores table has a column 'sharpness' for --reward; tables: "
                                                    f"{w.scores}"),
    "grpo-step/not a rollouts directory": Case(
        grpo(rollouts=lambda w, t: w.toy.parent),
        lambda w, t: f"{w.toy.parent}: not a rollouts directory (rollouts.parquet is missing); sample the rollouts "
                     "again"),
    "grpo-step/corrupted shard": Case(
        grpo(rollouts=tmp("r")),
        lambda w, t: f"{t / 'r' / 'latents' / 'p0000.safetensors'}: corrupt shard (size or sha256 differs from "
                     "shards.json); sample the rollouts again", setup=rollouts_copy(flip_last_bytes)),
    "grpo-step/deleted shard": Case(
        grpo(rollouts=tmp("r")),
        lambda w, t: f"{t / 'r' / 'latents' / 'p0001.safetensors'}: shard missing (used by "
                     f"{t / 'r' / 'rollouts.parquet'} row 4); sample the rollouts again",
        setup=rollouts_copy(lambda r: (r / "latents" / "p0001.safetensors").unlink())),
    "grpo-step/groups of one": Case(
        grpo(rollouts=tmp("r")),
        lambda w, t: f"{t / 'r'}: group 'p0000@0' has 1 sample (2 such groups); GRPO compares samples of one prompt, "
                     "sample with --group-size 2 or more", setup=rollouts_copy(one_sample_per_group)),
    "grpo-step/--init-lora with --policy": Case(
        lambda w, t: ["grpo-step", "--policy", w.rollouts, "--init-lora", w.rollouts, "--rollouts", w.rollouts,
                      "--scores", w.scores, "--reward", "brightness", "-o", t / "out"],
        const("--init-lora and --policy exclude each other: --policy continues a vpt checkpoint, --init-lora starts a "
              "new policy from any LoRA")),
    "grpo-step/--steps-per-iteration 0": Case(grpo("--steps-per-iteration", "0"),
                                              const("--steps-per-iteration must be at least 1, got 0")),
    "grpo-step/--clip-range 0": Case(grpo("--clip-range", "0"), const("--clip-range must be > 0, got 0.0")),
    "grpo-step/--lr NaN": Case(grpo("--lr", "nan"), const("--lr nan is invalid; expected a finite number > 0")),
    "grpo-step/--timestep-fraction 2": Case(grpo("--timestep-fraction", "2"),
                                            const("--timestep-fraction must lie in (0, 1], got 2.0")),
    "grpo-step/unknown std": Case(grpo("--std", "sample"),
                                  const("--std sample: choose one of group, group-unbiased, global")),
    "grpo-step/--advantage-eps 0": Case(grpo("--advantage-eps", "0"), const("--advantage-eps must be > 0, got 0.0")),
    "grpo-step/unknown preset": Case(
        grpo("--preset", "flow-grpo"),
        const("--preset flow-grpo: choose none or teleboost, teleboost-guard, teleboost-tempflow")),
    "grpo-step/--crt rerange without --bpgo": Case(
        grpo("--crt", "rerange"), const("--crt needs --bpgo (CRT contrasts rewards with BPGO's prior)")),
    "grpo-step/--crt-temperature 0": Case(grpo("--crt-temperature", "0"),
                                          const("--crt-temperature must be > 0, got 0.0")),
    "grpo-step/unknown ras": Case(grpo("--bpgo", "--ras", "beta"),
                                  const("--ras beta: choose one of sigmoid, bayesian, bayes-group")),
    "grpo-step/--ras-weight-range reversed": Case(
        grpo("--bpgo", "--ras-weight-range", "1.5,0.5"),
        const("--ras-weight-range 1.5,0.5: give MIN,MAX with 0 <= MIN <= MAX, e.g. 0.5,1.5")),
    "grpo-step/--prior-column without --bpgo": Case(grpo("--prior-column", "prior"),
                                                    const("--prior-column is BPGO's prior; add --bpgo")),
    "grpo-step/--prior-column not in the rollouts": Case(
        grpo("--bpgo", "--prior-column", "prior"),
        lambda w, t: f"{w.rollouts}: has no column 'prior' for --prior-column; add it to the prompts table and "
                     "sample again (sample-rollouts carries the prompts' extra columns)"),
    "grpo-step/--prior and --prior-column": Case(
        grpo("--bpgo", "--prior", lambda w, t: w.scores, "--prior-column", "prior"),
        const("give one BPGO prior: --prior TABLE or --prior-column COLUMN")),
    "grpo-step/unknown timestep weight": Case(grpo("--timestep-weight", "snr"),
                                              const("--timestep-weight snr: choose one of none, tempflow")),
    "grpo-step/unknown grad reweight": Case(grpo("--grad-reweight", "cps"),
                                            const("--grad-reweight cps: choose one of none, flow-grpo, dancegrpo")),
    "grpo-step/unknown trust region": Case(grpo("--trust-region", "tv"),
                                           const("--trust-region tv: choose one of clip, kl")),
    "grpo-step/--kl-max 0": Case(grpo("--trust-region", "kl", "--kl-max", "0"),
                                 const("--kl-max must be > 0, got 0.0")),
    "grpo-step/--ratio-norm with --trust-region kl": Case(
        grpo("--ratio-norm", "--trust-region", "kl"),
        const("--ratio-norm normalises the ratio for clipping, which --trust-region kl replaces; choose one")),
    "grpo-step/--ratio-norm with --vipo": Case(
        grpo("--ratio-norm", "--vipo"),
        const("--ratio-norm and --trust-region kl work on one ratio per sample; ViPO's ratio is per latent position: "
              "use them without --vipo")),
    "grpo-step/--trust-region kl without recorded means": Case(
        grpo("--trust-region", "kl"),
        lambda w, t: f"{w.rollouts}: row 1: no recorded step means, which --ratio-norm and --trust-region kl need; "
                     "sample the rollouts with --record-means"),
    "grpo-step/unknown aggregation": Case(grpo("--aggregation", "max"), const(
        "--aggregation max: choose one of sum-then-normalise, normalise-then-sum, min-norm")),
    "grpo-step/unknown vipo pca": Case(grpo("--vipo-pca", "frame"), const("--vipo-pca frame: choose one of video, "
                                                                          "per-frame")),
    "grpo-step/--resume without a checkpoint": Case(
        grpo("--resume", tmp("empty")),
        lambda w, t: f"{t / 'empty'}: holds no checkpoint to resume from; give the OUT.run of an interrupted run, "
                     "one of its checkpoint-N directories, or a finished checkpoint of this stage",
        setup=lambda w, t: (t / "empty").mkdir()),
    "grpo-step/OUT.run unfinished, no --resume": Case(
        grpo(), lambda w, t: f"{t / 'out.run'}: holds an unfinished run of {t / 'out'}; continue it with --resume "
                             f"{t / 'out.run'}, or remove it", setup=unfinished_run("out.run")),
    "grpo-step/OUT.run of the user's": Case(
        grpo(), lambda w, t: f"{t / 'out.run'}: exists and vpt did not create it (the checkpoints of --out "
                             f"{t / 'out'} go there); move it away or choose another --out",
        setup=user_directory("out.run")),
    "grpo-step/--save-every -1": Case(
        grpo("--save-every", "-1"), const("--save-every -1 is invalid; expected an integer >= 0 (0: only at the end)")),
    "grpo-step/--curriculum-thresholds not numbers": Case(
        grpo("--self-paced", "--curriculum-thresholds", "0.75,x"),
        const("--curriculum-thresholds 0.75,x: expected comma-separated numbers, e.g. 0.75,0.75,0.75")),
    "grpo-step/--lora-targets empty name": Case(
        grpo("--lora-targets", "to_q,,to_v"),
        const("--lora-targets to_q,,to_v: expected comma-separated names, e.g. to_q,to_k,to_v")),
    "grpo-step/--out exists": Case(
        grpo(), lambda w, t: f"{t / 'out'}: already exists; remove it or choose another --out", outputs=(),
        setup=lambda w, t: (t / "out").mkdir()),
    # ------------------------------------------------------------------------------------------------ sft
    "sft/zero-byte clip": Case(sft(data=tmp("m.csv")), lambda w, t: f"{w.bad / 'empty.mp4'}: file is empty (0 bytes)",
                               setup=lambda w, t: (t / "m.csv").write_text(f"path,prompt\n{w.bad / 'empty.mp4'},p\n")),
    "sft/truncated clip": Case(
        sft(data=tmp("m.csv")),
        lambda w, t: f"{w.bad / 'truncated.mp4'}: not a readable video (truncated: 0 of 9 frames present)",
        setup=lambda w, t: (t / "m.csv").write_text(f"path,prompt\n{w.bad / 'truncated.mp4'},p\n")),
    "sft/not a video": Case(
        sft(data=tmp("m.csv")),
        lambda w, t: f"{w.bad / 'text.mp4'}: not a readable video (invalid data found when processing input)",
        setup=lambda w, t: (t / "m.csv").write_text(f"path,prompt\n{w.bad / 'text.mp4'},p\n")),
    "sft/empty manifest": Case(sft(data=tmp("m.csv")),
                               lambda w, t: f"{t / 'm.csv'}: holds no videos; add rows (id, path) to the manifest",
                               setup=write("m.csv", "id,path,prompt\n")),
    "sft/--lr NaN": Case(sft("--lr", "nan"), const("--lr nan is invalid; expected a finite number > 0")),
    "sft/--batch-size 0": Case(sft("--batch-size", "0"),
                               const("--batch-size 0 is invalid; expected a positive integer")),
    "sft/--epochs 0": Case(sft("--epochs", "0"), const("--epochs 0 is invalid; expected a positive integer")),
    "sft/--lr-schedule": Case(sft("--lr-schedule", "wavy"),
                              const("--lr-schedule 'wavy' is invalid; expected constant | cosine | linear")),
    "sft/--mixed-precision": Case(sft("--mixed-precision", "fp8"),
                                  const("--mixed-precision 'fp8' is invalid; expected no | bf16")),
    "sft/--shift 0": Case(sft("--shift", "0"), const("--shift 0.0: give a finite number > 0")),
    "sft/--timesteps": Case(sft("--timesteps", "cosine"), const("--timesteps cosine: choose one of uniform, "
                                                                "logit-normal")),
    "sft/--lora-rank 0": Case(sft("--lora-rank", "0"), const("--lora-rank 0: give a positive integer")),
    "sft/--resume nothing": Case(
        sft("--resume", tmp("nothing")),
        lambda w, t: f"{t / 'nothing'}: holds no checkpoint to resume from; give the OUT.run of an interrupted run, "
                     "one of its checkpoint-N directories, or a finished checkpoint of this stage"),
    "sft/--lora-targets trailing comma": Case(
        sft("--lora-targets", "to_q,"), const("--lora-targets to_q,: expected comma-separated names, e.g. "
                                              "to_q,to_k,to_v")),
    "sft/OUT.run of the user's": Case(
        sft(), lambda w, t: f"{t / 'out.run'}: exists and vpt did not create it (the checkpoints of --out {t / 'out'} "
                            "go there); move it away or choose another --out",
        setup=user_directory("out.run"), outputs=("out",)),
    "sft/-o exists": Case(sft(), lambda w, t: f"{t / 'out'}: already exists; remove it or choose another --out",
                          outputs=("out.run",), setup=lambda w, t: (t / "out").mkdir()),
    "sft/--init-lora with --policy": Case(
        sft("--policy", lambda w, t: w.rollouts, "--init-lora", lambda w, t: w.rollouts),
        const("--init-lora and --policy exclude each other: --policy continues a vpt checkpoint, --init-lora starts a "
              "new policy from any LoRA")),
    "sft/--init-lora without the generator": Case(
        lambda w, t: ["sft", "--data", w.toy, "--init-lora", w.rollouts, "-o", t / "out"],
        const("--init-lora needs the generator: pass --model WAN_DIR (a LoRA without policy.json does not name one)")),
    "sft/--init-lora that is no LoRA": Case(
        sft("--init-lora", lambda w, t: w.clips),
        lambda w, t: f"{w.clips}: not a LoRA policy checkpoint (adapter_config.json and adapter_model.safetensors "
                     "expected) nor a diffusers LoRA (pytorch_lora_weights.safetensors, or a .safetensors file of "
                     "one); give a checkpoint written by grpo-step, dpo or sft, or a peft or diffusers Wan LoRA"),
    # ------------------------------------------------------------------------------------------------ dpo
    "dpo/--init-lora pickle-only": Case(
        dpo("--init-lora", tmp("lora")),
        lambda w, t: f"{t / 'lora'}: not a LoRA policy checkpoint (adapter_config.json and adapter_model.safetensors "
                     "expected) nor a diffusers LoRA (pytorch_lora_weights.safetensors, or a .safetensors file of "
                     "one); give a checkpoint written by grpo-step, dpo or sft, or a peft or diffusers Wan LoRA",
        outputs=("out", "PWNED"), setup=pickled_lora),
    "dpo/--dim": Case(dpo("--dim", "xx"), const("--dim xx: choose one of overall, vq, mq, ta")),
    "dpo/no pair labelled": Case(
        dpo("--dim", "mq"), lambda w, t: f"{w.prefs}: no pair has a preferred side for --dim mq (0 ties, 2 invalid or "
                                         "unlabelled); DPO needs pairs labelled a or b"),
    "dpo/--beta 0": Case(dpo("--beta", "0"), const("--beta must be a positive number, got 0.0")),
    "dpo/--beta-schedule": Case(dpo("--beta-schedule", "wavy"),
                                const("--beta-schedule wavy: choose one of constant, timestep")),
    "dpo/--reference": Case(dpo("--reference", "other"), const("--reference other: choose one of policy, base")),
    "dpo/wrong table": Case(dpo(prefs=lambda w, t: w.scores),
                            lambda w, t: f"{w.scores}: is a 'scores' table, expected 'prefs'"),
    "dpo/missing video": Case(
        dpo(prefs=tmp("p.csv")),
        lambda w, t: f"{t / 'p.csv'}: row 1: path_b gone.mp4 does not exist; fix the path or drop the pair",
        setup=lambda w, t: (t / "p.csv").write_text(
            f"pair_id,path_a,path_b,prompt,vq\nx,{w.clips / 'toy-0000.mp4'},gone.mp4,p,a\n")),
    "dpo/-o under a file": Case(
        lambda w, t: ["dpo", "-m", w.zoo, "--prefs", w.prefs, "-o", t / "file" / "out"],
        lambda w, t: f"--out {t / 'file' / 'out'}: {t / 'file'} is not a directory; choose a path inside a directory",
        setup=write("file", "x"), outputs=()),
    # ------------------------------------------------------------------------------------------------ train-reward
    "train-reward/--out of the user's": Case(
        reward("-o", tmp("out")), lambda w, t: f"{t / 'out'}: already exists; remove it or choose another --out",
        setup=user_directory("out"), outputs=()),
    "train-reward/--out of the user's (latent)": Case(
        reward("-o", tmp("out"), kind="latent"),
        lambda w, t: f"{t / 'out'}: already exists; remove it or choose another --out", setup=user_directory("out"),
        outputs=()),
    "train-reward/--resume of a missing path": Case(
        reward("-o", tmp("out"), "--resume", tmp("gone")),
        lambda w, t: f"{t / 'gone'}: holds no checkpoint to resume from; give the --out directory of an interrupted "
                     "run, one of its checkpoint-N directories, or a finished run of train-reward"),
    "train-reward/--resume of a missing path (latent)": Case(
        reward("-o", tmp("out"), "--resume", tmp("gone"), kind="latent"),
        lambda w, t: f"{t / 'gone'}: holds no checkpoint to resume from; give the --out directory of an interrupted "
                     "run, one of its checkpoint-N directories, or a finished run of train-reward"),
    "train-reward/--resume another run into a used --out": Case(
        reward("-o", tmp("out"), "--resume", tmp("other")),
        lambda w, t: f"{t / 'out'}: holds a training run of its own; continue {t / 'other'} into a new --out, or "
                     f"resume {t / 'out'} with --resume {t / 'out'}",
        setup=unfinished_run("out", "other"), outputs=()),
    "train-reward/--lora-targets empty name": Case(
        reward("-o", tmp("out"), "--lora-targets", ",q_proj"),
        const("--lora-targets ,q_proj: expected comma-separated names, e.g. q_proj,v_proj")),
    "train-reward/--dims empty name": Case(
        reward("-o", tmp("out"), "--dims", "vq,,mq", kind="latent"),
        const("--dims vq,,mq: expected comma-separated names, e.g. vq,mq")),
    "train-reward/--kind": Case(reward("-o", tmp("out"), kind="hinge"), const("--kind hinge: choose videoreward or "
                                                                              "latent")),
    "train-reward/--eval-fraction 1": Case(reward("-o", tmp("out"), "--eval-fraction", "1"),
                                           const("--eval-fraction must lie in [0, 1), got 1.0")),
    "train-reward/--loss": Case(reward("-o", tmp("out"), "--loss", "hinge"),
                                const("--loss hinge: choose one of btt, bt, reg")),
    "train-reward/option of the other kind": Case(
        reward("-o", tmp("out"), "--blocks", "2"),
        const("--blocks applies to --kind latent; leave it out with --kind videoreward")),
    "train-reward/--blocks too many": Case(
        reward("-o", tmp("out"), "--blocks", "99", "--cache", tmp("cache"), kind="latent"),
        const("--blocks 99: the generator's transformer has 2 blocks; choose 1 to 2")),
    "train-reward/--clip-latents": Case(reward("-o", tmp("out"), "--clip-latents", "sometimes", kind="latent"),
                                        const("--clip-latents sometimes: choose auto or encode")),
    # ------------------------------------------------------------------------------------------------ zoo, schema
    "zoo/tiny into a full directory": Case(
        lambda w, t: ["zoo", "tiny", w.clips], lambda w, t: f"{w.clips}: exists and is not empty; remove it or choose "
                                                            "another directory", outputs=()),
    "zoo/toy-videos into a full directory": Case(
        lambda w, t: ["zoo", "toy-videos", w.clips],
        lambda w, t: f"{w.clips}: exists and is not empty; remove it or choose another directory", outputs=()),
    "zoo/toy-videos odd size": Case(lambda w, t: ["zoo", "toy-videos", t / "out", "--height", "33"],
                                    const("--height and --width must be even for H.264 (got 33x64)")),
    "schema/unknown schema": Case(
        lambda w, t: ["schema", "check", w.scores, "--as", "clips"],
        const("unknown schema 'clips'; known schemas: annotations, flow_metrics, gsb, gsb_counts, gsb_judgements, "
              "metrics, prefs, prompts, rewardbench, rollouts, scores, videos")),
    "schema/a video as a table": Case(
        lambda w, t: ["schema", "check", w.clips / "toy-0000.mp4"],
        lambda w, t: f"{w.clips / 'toy-0000.mp4'}: only Parquet files name their schema; say which one with --as NAME"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_in_one_line(name, world, run_vpt, tmp_path):
    case = CASES[name]
    if case.setup is not None:
        case.setup(world, tmp_path)
    world_before, mine = contents(world.root), contents(tmp_path)
    result = run_vpt(case.args(world, tmp_path), stdin=case.stdin(world) if case.stdin else None)
    assert_refused(result, case.message(world, tmp_path), *(tmp_path / output for output in case.outputs))
    assert contents(world.root) == world_before  # the shared world is left as it was
    after = contents(tmp_path)
    assert {name: after.get(name) for name in mine} == mine  # nothing of the user's is changed or deleted
    assert {name.split("/")[0] for name in after.keys() - mine} <= {"cache"}  # only the shared latent cache is new


def contents(directory: Path) -> dict[str, bytes]:
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in directory.rglob("*")
            if path.is_file()}


def test_the_suite_covers_every_command():
    counts = Counter(name.split("/")[0] for name in CASES)
    assert len(CASES) >= 80
    assert set(counts) == {"score", "build-prefs", "eval", "sample-rollouts", "guide", "grpo-step", "sft", "dpo",
                           "train-reward", "zoo", "schema"}
    print("bad inputs by command: " + ", ".join(f"{command} {count}" for command, count in sorted(counts.items())))


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_tracker_that_is_not_installed(world, tmp_path, run_vpt, monkeypatch, tracker):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else find_spec(name, *a))
    result = run_vpt(CASES["sft/report-to"].args(world, tmp_path)[:-2] + ["--report-to", tracker])
    assert_refused(result, f"--report-to {tracker} needs the {tracker} package: pip install 'vpt[{tracker}]', or "
                           "choose --report-to none", tmp_path / "out")
