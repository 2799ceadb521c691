"""Atomic outputs: a rename into place is refused once a stop was requested, even when the SystemExit raised by the
signal handler was swallowed by a library."""

from __future__ import annotations

import pytest

from vpt.io import atomic


def test_a_completed_file_is_renamed_into_place(tmp_path):
    with atomic.atomic_path(tmp_path / "out.txt") as temporary:
        temporary.write_text("done")
    assert (tmp_path / "out.txt").read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_after_a_stop_request_nothing_is_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_stop_signal", None)
    with pytest.raises(SystemExit) as stopped:
        with atomic.atomic_path(tmp_path / "out.txt") as temporary:
            temporary.write_text("done")
            atomic.request_stop(15)
    assert stopped.value.code == 143
    with pytest.raises(SystemExit):
        with atomic.atomic_directory(tmp_path / "out") as temporary:
            (temporary / "part").write_text("done")
    assert list(tmp_path.iterdir()) == []
