"""Atomic file and directory creation: write under a temporary name beside the target, rename when complete.

A reader never sees a half-written output: either the old file (or nothing) or the complete new one. On an
exception or SIGTERM (turned into SystemExit by the command line) the temporary is removed; after SIGKILL only a
hidden ``.NAME.tmp-*`` entry can remain, never the target itself.

A stop request is sticky: a library may swallow the SystemExit raised by the signal handler (an exception raised
inside a C callback or a finalizer is printed and dropped), so every rename into place goes through
:func:`commit`, which refuses once :func:`request_stop` has been called.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator


_stop_signal: int | None = None


def request_stop(signum: int) -> None:
    """Record that the process was asked to stop; no output is committed after this."""
    global _stop_signal
    _stop_signal = signum


def stop_requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _stop_signal


def commit(temporary: Path, target: Path) -> None:
    """Rename the finished ``temporary`` to ``target``, unless a stop was requested (then raise SystemExit)."""
    if _stop_signal is not None:
        raise SystemExit(128 + _stop_signal)
    os.replace(temporary, target)


def temporary_sibling(target: Path) -> Path:
    """A hidden, unique name beside ``target`` for writing it under."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``target`` (replacing it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target)
    try:
        yield temporary
        commit(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it becomes ``target``.

    With ``replace`` an existing ``target`` is swapped out; otherwise an existing target is left alone and the new
    directory is discarded (a concurrent builder got there first, which is fine for caches).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target)
    temporary.mkdir()
    try:
        yield temporary
        if target.exists():
            if not replace:
                return
            old = temporary_sibling(target)
            commit(target, old)
            commit(temporary, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            commit(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def publish_into(directory: str | os.PathLike, write: Callable[[Path], None], marker: str) -> None:
    """Write files into an existing ``directory`` (a run directory that also holds checkpoints) as one unit:
    ``write(temporary)`` fills a hidden sibling, whose entries then replace their namesakes in ``directory``. The
    ``marker`` file (what makes the directory loadable) is removed first and moved in last, so a reader never
    finds it beside half of the files."""
    directory = Path(directory)
    temporary = temporary_sibling(directory / marker)
    try:
        temporary.mkdir(parents=True)
        write(temporary)
        (directory / marker).unlink(missing_ok=True)
        for entry in sorted(temporary.iterdir()):
            if entry.name == marker:
                continue
            target = directory / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            commit(entry, target)
        commit(temporary / marker, directory / marker)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
