"""How vpt writes outputs: destinations checked before any work, temporary names renamed when complete, and
directories of its own marked as such.

* **Checked first.** :func:`check_output_file` / :func:`check_new_directory` refuse an output before a command does
  its work: an empty name, a directory where a file goes (or an existing path where a new directory goes), a parent
  that is a file, or a parent vpt cannot write in — one line naming the option and the path.
* **Atomic.** A reader never sees a half-written output: either the old file (or nothing) or the complete new one.
  On an exception or SIGTERM (turned into SystemExit by the command line) the temporary is removed; after SIGKILL
  only a hidden ``.NAME.tmp-*`` entry can remain, never the target itself.
* **Ours only.** A directory vpt keeps its own files in while it works (the ``OUT.run`` of a training stage,
  ``train-reward``'s run directory) carries the marker file :data:`OWNER_FILE` from the moment it is created
  (:func:`claim_directory`); vpt writes into, or deletes, only directories it created (:func:`remove_owned`).

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

from vpt.errors import VptError


_stop_signal: int | None = None
OWNER_FILE = ".vpt-owned"
_OWNER_TEXT = "This directory was created by vpt for a run of its own; vpt may write into or delete it.\n"


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
    """Write files into ``directory``, one of vpt's own (a run directory that also holds checkpoints), as one unit:
    ``write(temporary)`` fills a hidden sibling, whose entries then replace their namesakes in ``directory``. The
    ``marker`` file (what makes the directory loadable) is removed first and moved in last, so a reader never
    finds it beside half of the files."""
    directory = Path(directory)
    if not owns(directory):
        raise VptError(f"{directory}: vpt did not create this directory and does not write into it; choose a new "
                       "output directory")
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


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_parent(target: Path, option: str) -> None:
    """The directory ``target`` goes in is (or can be created in) a directory vpt can write in."""
    parent = target.parent if target.parent != Path("") else Path(".")
    existing = _nearest_existing(parent)
    if not existing.is_dir():
        raise VptError(f"{option} {target}: {existing} is not a directory; choose a path inside a directory")
    probe = existing / f".vpt-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch(exist_ok=False)
    except OSError as error:
        raise VptError(f"{option} {target}: cannot write in {existing} ({error.strerror or error}); choose a "
                       "directory you can write in") from None
    probe.unlink()


def _checked_name(target: str | os.PathLike, option: str, what: str) -> Path:
    text = os.fspath(target)
    if not text.strip():
        raise VptError(f"{option} is empty; give the {what} to write")
    path = Path(text)
    if path.name in ("", ".", ".."):
        raise VptError(f"{option} {text}: names no {what}; give a name inside a directory, e.g. {option} out/NAME")
    return path


def check_output_file(target: str | os.PathLike, option: str = "--output") -> Path:
    """A file a command will write (``-`` is stdout and passes): not empty, not an existing directory, inside a
    directory vpt can write in (missing parent directories are created when the file is written). Raises
    :class:`~vpt.errors.VptError` naming ``option``; returns the path."""
    if os.fspath(target) == "-":
        return Path("-")
    path = _checked_name(target, option, "file")
    if path.is_dir():
        raise VptError(f"{option} {path}: is a directory; give a file name, e.g. {option} {path / 'out.parquet'}")
    _check_parent(path, option)
    return path


def check_new_directory(target: str | os.PathLike, option: str = "--out", owned_ok: bool = False) -> Path:
    """A directory a command will create: not empty as a name, not existing (unless ``owned_ok`` and it is one of
    vpt's own, see :func:`owns`), inside a directory vpt can write in. Returns the path."""
    path = _checked_name(target, option, "directory")
    if path.exists() or path.is_symlink():
        if owned_ok and owns(path):
            return path
        raise VptError(f"{path}: already exists; remove it or choose another {option}")
    _check_parent(path, option)
    return path


def owns(directory: str | os.PathLike) -> bool:
    """True when ``directory`` is a directory vpt created for itself (it holds :data:`OWNER_FILE`)."""
    directory = Path(directory)
    return directory.is_dir() and not directory.is_symlink() and (directory / OWNER_FILE).is_file()


def claim_directory(directory: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``directory`` (and missing parents) marked as vpt's own; an existing one must be vpt's already."""
    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        if not owns(directory):
            raise VptError(f"{option} {directory}: exists and vpt did not create it; remove it or choose another "
                           f"{option}")
        return directory
    directory.mkdir(parents=True)
    (directory / OWNER_FILE).write_text(_OWNER_TEXT, encoding="utf-8")
    return directory


def remove_owned(directory: str | os.PathLike) -> None:
    """Delete ``directory`` if vpt created it (see :func:`claim_directory`); leave anything else alone."""
    directory = Path(directory)
    if owns(directory):
        trash = temporary_sibling(directory)
        os.replace(directory, trash)  # a crash mid-delete leaves a hidden name, never a half directory
        shutil.rmtree(trash, ignore_errors=True)
