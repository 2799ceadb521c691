"""The ``vpt`` command line: one thin adapter module per verb, registered here.

Nothing heavy is imported at module level anywhere in ``vpt.commands``: ``vpt --help`` must stay fast, so torch,
pyarrow and the models are imported inside the command functions that need them.
"""

from __future__ import annotations

import signal
import sys

import typer
from typer.core import TyperGroup

from vpt import __version__
from vpt.errors import VptError
from vpt.io.atomic import request_stop, stop_requested
from vpt.commands import eval as eval_command
from vpt.commands import build_prefs, dpo, grpo_step, guide, sample_rollouts, schema, score, sft, train_reward, zoo


class VptGroup(TyperGroup):
    """Root group: turns a :class:`VptError` into one line on stderr and exit code 2 (``--debug`` re-raises)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VptError as error:
            if ctx.params.get("debug"):
                raise
            typer.echo(f"vpt: error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    cls=VptGroup,
    name="vpt",
    help="Post-training toolkit for video generators. Each command is one stage over declared Parquet tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"vpt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of errors."),
) -> None:
    """Post-training toolkit for video generators."""


app.add_typer(eval_command.app, name="eval")
app.add_typer(schema.app, name="schema")
app.add_typer(zoo.app, name="zoo")
app.command("build-prefs")(build_prefs.build_prefs)
app.command("dpo")(dpo.dpo)
app.command("grpo-step")(grpo_step.grpo_step)
app.command("guide")(guide.guide)
app.command("sample-rollouts")(sample_rollouts.sample_rollouts)
app.command("score")(score.score)
app.command("sft")(sft.sft)
app.command("train-reward")(train_reward.train_reward)


def _terminate(signum, frame):
    # SystemExit unwinds the stack, so atomic writers remove their temporary files on `kill`; the request is also
    # recorded, because a library can swallow the exception when the signal lands inside one of its callbacks.
    request_stop(signum)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app(args=argv, prog_name="vpt")
    except SystemExit:
        if stop_requested() is not None:
            sys.exit(128 + stop_requested())
        raise
    except BrokenPipeError:
        # The reader went away (`vpt ... | head`): not an error of ours, and nothing more to write.
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
