"""Output options: checked as they are parsed, so a bad destination stops a command before it does any work
(the checks themselves are :mod:`vpt.io.atomic`'s)."""

from __future__ import annotations


def _name(param) -> str:
    """How the user spelled the option (its long form), or the argument's metavar."""
    long_forms = [opt for opt in param.opts if opt.startswith("--")]
    return long_forms[0] if long_forms else param.human_readable_name.upper()


def _callback(check: str, **options):
    def callback(ctx, param, value):
        if value is not None:
            from vpt.io import atomic

            getattr(atomic, check)(value, _name(param), **options)
        return value

    return callback


output_file = _callback("check_output_file")  # a table or file: - (stdout) or a file vpt can write
new_directory = _callback("check_new_directory")  # a directory the command creates: it must not exist yet
run_directory = _callback("check_new_directory", owned_ok=True)  # new, or one of vpt's for --resume


def tracker(ctx, param, value):
    """``--report-to``: a tracker this machine has (:func:`vpt.train.trackers.check_report_to`)."""
    from vpt.train.trackers import check_report_to

    return check_report_to(value)
