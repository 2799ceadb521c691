"""Turn what the user names on the command line into a list of videos to read: a ``videos`` manifest table, a
directory (searched recursively), a glob, or video files; prompts come from the manifest or a ``prompts`` table.

Ids: a manifest's ``id`` column; otherwise the file path without its extension, relative to the directory it was
found in (for a directory argument) or as given (for files and globs).
"""

from __future__ import annotations

import glob as globbing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vpt.errors import VptError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".gif")
TABLE_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".ndjson")
CARRIED_COLUMNS = ("prompt_id", "group_id")


@dataclass
class VideoItem:
    id: str
    path: str  # as the user or manifest gave it (what output tables show)
    file: Path  # where to read it
    prompt: str | None = None
    carried: dict = field(default_factory=dict)  # manifest columns copied to outputs (prompt_id, group_id)


def is_table(name: str) -> bool:
    return name == "-" or name.lower().endswith(TABLE_EXTENSIONS)


def collect_videos(inputs: Sequence[str], prompts: str | None = None,
                   base_dir: str | os.PathLike | None = None) -> list[VideoItem]:
    """The videos named by ``inputs`` (one manifest, or any mix of directories, globs and files), in order.
    ``base_dir``: what a manifest's relative paths are relative to (default: the manifest's directory; a manifest
    read from standard input has none, so its relative paths need it)."""
    if not inputs:
        raise VptError("no videos given; name a directory, files, a glob or a videos manifest")
    tables = [name for name in inputs if is_table(name)]
    if tables and len(inputs) > 1:
        raise VptError(f"{tables[0]}: give a manifest table on its own, not mixed with other inputs")
    if base_dir is not None and not tables:
        raise VptError("--base-dir applies to the paths of a videos manifest; the inputs name files directly")
    if base_dir is not None and not Path(base_dir).is_dir():
        raise VptError(f"--base-dir {base_dir}: not a directory; give the directory the manifest's paths are "
                       "relative to")
    items = (_from_manifest(tables[0], base_dir) if tables
             else [item for name in inputs for item in _from_files(name)])
    if prompts is not None:
        _attach_prompts(items, prompts)
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise VptError(
                f"two videos have the id '{item.id}' ({seen[item.id]} and {item.path}); "
                "give them distinct ids in a videos manifest"
            )
        seen[item.id] = item.path
    return items


def read_video_table(source: str | os.PathLike):
    """A table of videos: a ``videos`` manifest, or a ``rollouts`` table (whose rows are videos too). A manifest
    without an ``id`` column gets one: each path without its extension, as for a directory of videos."""
    import pyarrow as pa

    from vpt.io.tables import declared_schema, read_table

    table = read_table(source, "rollouts" if declared_schema(source) == "rollouts" else "videos")
    if "id" not in table.column_names:
        ids = [_strip_extension(Path(path).as_posix()) for path in table.column("path").to_pylist()]
        table = table.add_column(0, "id", pa.array(ids, type=pa.string()))
    return table


def _from_manifest(source: str, base_dir: str | os.PathLike | None) -> list[VideoItem]:
    from vpt.io.tables import resolve_path

    table = read_video_table(source)
    if table.num_rows == 0:
        raise VptError(f"{source}: holds no videos; add rows (id, path) to the manifest")
    columns = table.column_names
    items = []
    for number, row in enumerate(table.to_pylist(), start=1):
        items.append(VideoItem(
            id=row["id"],
            path=row["path"],
            file=resolve_path(row["path"], source, f"{source}: row {number}", base_dir,
                              "pass --base-dir DIR (the directory the paths are relative to), or give the manifest "
                              "as a file"),
            prompt=row.get("prompt"),
            carried={name: row[name] for name in CARRIED_COLUMNS if name in columns},
        ))
    return items


def _from_files(name: str) -> list[VideoItem]:
    if any(ch in name for ch in "*?["):
        matches = sorted(m for m in globbing.glob(name, recursive=True) if m.lower().endswith(VIDEO_EXTENSIONS))
        if not matches:
            raise VptError(f"{name}: no video file matches this pattern")
        return [VideoItem(id=_strip_extension(m), path=m, file=Path(m)) for m in matches]
    path = Path(name)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                       and not p.name.startswith("."))
        if not found:
            raise VptError(f"{name}: no video files in this directory ({', '.join(VIDEO_EXTENSIONS)})")
        return [VideoItem(id=_strip_extension(p.relative_to(path).as_posix()), path=str(p), file=p) for p in found]
    if not path.exists():
        raise VptError(f"{name}: no such file or directory")
    return [VideoItem(id=_strip_extension(name), path=name, file=path)]


def _strip_extension(name: str) -> str:
    root, _ = os.path.splitext(name)
    return root


def _attach_prompts(items: list[VideoItem], source: str) -> None:
    from vpt.io.tables import read_prompts

    table = read_prompts(source)
    if "id" not in table.column_names:
        raise VptError(f"{source}: needs an 'id' column naming the video each prompt belongs to")
    by_id = dict(zip(table.column("id").to_pylist(), table.column("prompt").to_pylist()))
    missing = [item.id for item in items if item.id not in by_id]
    if missing:
        raise VptError(
            f"{source}: no prompt for video '{missing[0]}'"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + "; add a row with its id"
        )
    for item in items:
        item.prompt = by_id[item.id]


def pair_videos(paths_a: Sequence[str], paths_b: Sequence[str], prompts: Sequence[str | None],
                base: Path) -> list[VideoItem]:
    """The unique (video, prompt) combinations of preference pairs, in first-seen order, to score each once.

    A video judged against two prompts is two items: text alignment depends on the prompt.
    """
    items: dict[tuple[str, str | None], VideoItem] = {}
    for path, prompt in [*zip(paths_a, prompts), *zip(paths_b, prompts)]:
        if (path, prompt) not in items:
            file = Path(path) if Path(path).is_absolute() else base / path
            items[(path, prompt)] = VideoItem(id=f"v{len(items):06d}", path=path, file=file, prompt=prompt)
    return list(items.values())


class ScoreIndex:
    """Finds the scores row of a video named by a table, whichever way its path was written when it was scored."""

    def __init__(self, rows: Sequence[dict], source: str):
        self.source = source
        self._by_key: dict[tuple[str, str | None], dict] = {}
        for row in rows:
            for key in self._keys(row["path"], Path.cwd()):
                self._by_key.setdefault((key, row.get("prompt")), row)
                self._by_key.setdefault((key, None), row)

    @staticmethod
    def _keys(path: str, base: Path) -> tuple[str, str]:
        return os.path.normpath(path), os.path.normpath(os.path.abspath(base / path))

    def find(self, path: str, prompt: str | None, base: Path, where: str) -> dict:
        for key in self._keys(path, base):
            for wanted in ((key, prompt), (key, None)):
                if wanted in self._by_key:
                    row = self._by_key[wanted]
                    if row.get("error") is not None:
                        raise VptError(f"{self.source}: video {path} was not scored ({row['error']}); fix or drop it")
                    return row
        raise VptError(
            f"{self.source}: no score for video {path} ({where}); score the videos under the same paths, "
            "or let the command score them with --model"
        )
