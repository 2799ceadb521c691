"""Small JSON files (configs, checkpoint indexes): read one object with a message that says what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vpt.errors import VptError


def read_json_object(path: str | os.PathLike, what: str, fix: str) -> dict:
    """The JSON object in ``path``; :class:`VptError` "PATH: cannot read WHAT (why); FIX" otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VptError(f"{path}: cannot read {what} ({error}); {fix}") from None
    if not isinstance(data, dict):
        raise VptError(f"{path}: {what} must be a JSON object; {fix}")
    return data
