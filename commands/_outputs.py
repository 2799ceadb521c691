"""Output options: checked as they are parsed, so a bad destination stops a command before it does any work
(the checks themselves are :mod:`vpt.io.atomic`'s)."""

from __future__ import annotations


def _name(param) -> str:
    """How the user spelled the option (its long form), or the argument's metavar."""
    long_forms = [opt for opt in param.opts if opt.startswith("--")]
    return long_forms[0] if long_forms else param.human_readable_name.upper()


def output_file(ctx, param, value):
    """Callback of a table or file option: ``-`` (stdout) or a file vpt can write."""
    if value is not None:
        from vpt.io.atomic import check_output_file

        check_output_file(value, _name(param))
    return value


def new_directory(ctx, param, value):
    """Callback of an option naming a directory the command creates: it must not exist yet."""
    if value is not None:
        from vpt.io.atomic import check_new_directory

        check_new_directory(value, _name(param))
    return value


def run_directory(ctx, param, value):
    """Callback of a run directory: new, or one vpt created for an earlier run (to resume)."""
    if value is not None:
        from vpt.io.atomic import check_new_directory

        check_new_directory(value, _name(param), owned_ok=True)
    return value
