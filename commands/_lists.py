"""Comma-separated option values (``-m brightness,motion``, ``--lora-targets to_q,to_k``, ``--dims vq,mq``): read
one way by every command, and refused in one line that names the option."""

from __future__ import annotations

from typing import Sequence


def comma_list(values: str | Sequence[str], option: str, example: str) -> tuple[str, ...]:
    """The names in one value of ``option``, or in every value of a repeatable one, in order, spaces around each
    trimmed. A value with an empty name (``a,,b``, a trailing comma, nothing at all) is refused with ``example``."""
    from vpt.errors import VptError

    names = []
    for text in [values] if isinstance(values, str) else values:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise VptError(f"{option} {text}: expected comma-separated names, e.g. {example}")
        names += items
    return tuple(names)


def comma_floats(text: str, option: str, example: str) -> tuple[float, ...]:
    """The numbers in a comma-separated value of ``option``; anything else is refused with ``example``."""
    from vpt.errors import VptError

    try:
        return tuple(float(item) for item in text.split(","))
    except ValueError:
        raise VptError(f"{option} {text}: expected comma-separated numbers, e.g. {example}") from None
