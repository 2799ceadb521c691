"""Option groups (sqlite-utils style: declared once, added to each command that shares them) and presets that set
the options a command line leaves at their defaults."""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence


def add_options(command, options: Sequence[tuple[str, Any, Any]]):
    """Append keyword-only ``(name, typer.Option(...), annotation)`` parameters to ``command``'s signature (an option
    group, as sqlite-utils shares them); typer reads the signature, and the command takes them as ``**options``."""
    signature = inspect.signature(command)
    parameters = [parameter for parameter in signature.parameters.values() if parameter.kind != parameter.VAR_KEYWORD]
    for name, declaration, annotation in options:
        command.__annotations__[name] = annotation
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=declaration,
                                            annotation=annotation))
    command.__signature__ = signature.replace(parameters=parameters)
    return command


def with_preset(context, values: Mapping[str, Any], preset: str, presets: Mapping[str, Mapping[str, Any]]
                ) -> dict[str, Any]:
    """A command's option ``values`` with preset ``preset``'s values (``none``: none) in place of the defaults the
    command line left; what the user gave stays."""
    from vpt.errors import VptError

    if preset != "none" and preset not in presets:
        raise VptError(f"--preset {preset}: choose none or {', '.join(presets)}")
    chosen = presets.get(preset, {})
    # by name: typer ships its own copy of click's ParameterSource
    untouched = {name for name in chosen
                 if getattr(context.get_parameter_source(name), "name", "DEFAULT") == "DEFAULT"}
    return {**values, **{name: chosen[name] for name in untouched}}
