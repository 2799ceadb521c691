"""The reward-hacking guard's options (held-out judges, dpo's evaluation samples, drift probes), declared once as an
option group for ``grpo-step`` and ``dpo`` (:mod:`vpt.stages.guard`)."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

import typer

from vpt.commands import _options

JUDGE_HELP = ("Held-out reward model scored on the stage's evaluation samples and never optimised (repeatable): a "
              "name as vpt score -m takes it (brightness, motion, KIND:SOURCE, a model directory, http://HOST:PORT/).")
DRIFT_HELP = ("Measure the drift from the reference (mean squared velocity difference at noise levels 0.1 ... 0.9) "
              "on this many of the stage's latents after training (0: off).")
# name -> (declaration, annotation); dpo takes them all, grpo-step the judges and the drift
OPTIONS: dict[str, tuple[Any, Any]] = {
    "judge": (typer.Option([], "--judge", help=JUDGE_HELP), List[str]),
    "eval_prompts": (typer.Option(None, "--eval-prompts", help="With --judge: prompts file of the evaluation samples "
                                                               "(default: the first 4 prompts of the pairs)."),
                     Optional[str]),
    "eval_samples": (typer.Option(2, "--eval-samples", help="With --judge: evaluation samples per prompt, of the "
                                                            "starting and of the trained policy from the same noises "
                                                            "(--seed)."), int),
    "eval_steps": (typer.Option(8, "--eval-steps", help="With --judge: ODE steps of the evaluation samples."), int),
    "drift_probes": (typer.Option(2, "--drift-probes", help=DRIFT_HELP), int),
}
GRPO = ("judge", "drift_probes")


def dpo_options(command):
    """Give ``command`` every guard option; it takes them as ``**options`` and passes them to :func:`guard_options`."""
    return _options.add_options(command, [(name, *OPTIONS[name]) for name in OPTIONS])


def grpo_options(command):
    """Give ``command`` ``--judge`` and ``--drift-probes``."""
    return _options.add_options(command, [(name, *OPTIONS[name]) for name in GRPO])


def guard_options(values: Mapping[str, Any]):
    """The stage's :class:`~vpt.stages.guard.GuardOptions` from a command's option values (checked); values of
    options the command does not take keep their defaults."""
    from vpt.stages.guard import GuardOptions

    return GuardOptions(judges=tuple(values["judge"]), drift_probes=values["drift_probes"],
                        **{name: values[name] for name in ("eval_prompts", "eval_samples", "eval_steps")
                           if name in values})
