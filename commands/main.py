"""The ``vpt`` command line: one thin adapter module per verb, registered here.

Nothing heavy is imported at module level anywhere in ``vpt.commands``: ``vpt --help`` must stay fast, so torch,
pyarrow and the models are imported inside the command functions that need them.
"""

from __future__ import annotations

import signal
import sys

import typer
from typer._click import exceptions as parse_errors  # typer vendors click: its usage errors are these classes
from typer.core import TyperGroup

from vpt import __version__
from vpt.errors import VptError
from vpt.io.atomic import request_stop, stop_requested
from vpt.commands import _ui
from vpt.commands import eval as eval_command
from vpt.commands import eval_flow
from vpt.commands import build_prefs, dpo, grpo_step, guide, sample_rollouts, schema, score, serve, sft, train_reward
from vpt.commands import report, zoo


class VptGroup(TyperGroup):
    """Root group: turns a :class:`VptError`, and an OS error on a file, into one line on stderr and exit code 2
    (``--debug`` re-raises)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (VptError, OSError) as error:
            if ctx.params.get("debug") or (isinstance(error, OSError) and error.filename is None):
                raise
            typer.echo(f"vpt: error: {_one_line(error)}", err=True)
            raise typer.Exit(getattr(error, "exit_code", 2)) from None


def _one_line(error: Exception) -> str:
    if isinstance(error, OSError):
        # the library checks outputs before it works; this is the net under what it cannot foresee (a full disk,
        # a file removed or locked meanwhile)
        return f"{error.filename}: {error.strerror or type(error).__name__}; check the path and run again"
    return str(error)


def _usage_line(error: parse_errors.UsageError) -> str:
    """A usage error (unknown option, bad value) as one line, with where the help is."""
    message = " ".join(error.format_message().split())
    command = error.ctx.command_path if error.ctx is not None else "vpt"
    return f"vpt: error: {message} (see '{command} --help')"


app = typer.Typer(
    cls=VptGroup,
    name="vpt",
    help="Post-training toolkit for video generators. Each command is one stage over declared Parquet tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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


eval_command.app.command("flow")(eval_flow.flow)
app.add_typer(eval_command.app, name="eval")
app.add_typer(schema.app, name="schema")
app.add_typer(zoo.app, name="zoo")
app.command("build-prefs")(build_prefs.build_prefs)
app.command("dpo")(dpo.dpo)
app.command("grpo-step")(grpo_step.grpo_step)
app.command("guide")(guide.guide)
app.command("report")(report.report)
app.command("sample-rollouts")(sample_rollouts.sample_rollouts)
app.command("score")(score.score)
app.command("serve")(serve.serve)
app.command("sft")(sft.sft)
app.command("train-reward")(train_reward.train_reward)


def _terminate(signum, frame):
    # SystemExit unwinds the stack, so atomic writers remove their temporary files on `kill`; the request is also
    # recorded, because a library can swallow the exception when the signal lands inside one of its callbacks.
    request_stop(signum)
    raise SystemExit(128 + signum)


def _interrupt(signum, frame):
    # Ctrl-C: Python's KeyboardInterrupt, recorded for the same reason as SIGTERM
    request_stop(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    handlers = {signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an ignored Ctrl-C (nohup) stays ignored
        handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    _ui.show_library_warnings()
    try:
        _run(argv)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _run(argv: list[str] | None) -> None:
    try:
        code = typer.main.get_command(app).main(args=argv, prog_name="vpt", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except parse_errors.NoArgsIsHelpError as error:  # typer has printed the help
        sys.exit(error.exit_code)
    except parse_errors.UsageError as error:
        typer.echo(_usage_line(error), err=True)
        sys.exit(error.exit_code)
    except parse_errors.ClickException as error:
        typer.echo(f"vpt: error: {' '.join(error.format_message().split())}", err=True)
        sys.exit(error.exit_code)
    except typer.Abort:
        sys.exit(130)
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
