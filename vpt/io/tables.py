"""Declared tables: the schemas every command exchanges, and the one place tables are read and written.

Schemas are data files in the ``vpt.schemas`` package (``schemas/*.json`` in the source tree): each field has a
name, an Arrow type, ``nullable`` (may hold nulls), ``required`` (must be present; default true), an optional
``enum`` of allowed values and a description. Written files carry the schema name and version in their Parquet
key-value metadata (``vpt.schema``, ``vpt.schema_version``), so a file announces what it is.

Sources (:func:`read_table`, :func:`iter_batches`): a Parquet file, a directory of Parquet parts, a glob, ``-``
(standard input), or a CSV / JSON-lines file where a person writes the table by hand (manifests, annotations);
:func:`read_prompts` also takes a text file with one prompt per line.
Everything streams in record batches, so memory stays flat on large tables (stdin is the exception: Parquet keeps
its index at the end, so a piped table is buffered once).

Destinations (:class:`TableWriter`, :func:`write_table`): a path, written under a temporary name and renamed when
complete, or ``-`` for standard output (never a terminal).

Row numbers in messages count data rows from 1 in source order (in a CSV file, row N is on line N + 1).
"""

from __future__ import annotations

import contextlib
import functools
import glob as globbing
import json
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from vpt.errors import SchemaError, VptError
from vpt.io.atomic import commit, temporary_sibling

SCHEMA_NAME_KEY = b"vpt.schema"
SCHEMA_VERSION_KEY = b"vpt.schema_version"
STDIO = "-"
BATCH_ROWS = 65_536

_PRIMITIVE_TYPES = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "binary": pa.binary(),
}


def parse_type(text: str) -> pa.DataType:
    """Arrow type from its schema-file spelling: a primitive name or ``list<T>``."""
    text = text.strip()
    if text.startswith("list<") and text.endswith(">"):
        return pa.list_(parse_type(text[5:-1]))
    try:
        return _PRIMITIVE_TYPES[text]
    except KeyError:
        raise ValueError(f"unknown type {text!r}; known: {', '.join(_PRIMITIVE_TYPES)} and list<T>") from None


def type_name(data_type: pa.DataType) -> str:
    """Schema-file spelling of an Arrow type (Arrow's own name for types we do not declare)."""
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return f"list<{type_name(data_type.value_type)}>"
    for name, known in _PRIMITIVE_TYPES.items():
        if data_type == known:
            return name
    return str(data_type)


@dataclass(frozen=True)
class Field:
    name: str
    type: pa.DataType
    nullable: bool
    required: bool
    description: str
    enum: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Schema:
    name: str
    version: int
    description: str
    fields: tuple[Field, ...]
    additional_columns: bool
    reads_versions: tuple[int, ...] = ()  # older versions still read: their missing columns are not required

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def metadata(self) -> dict[bytes, bytes]:
        return {SCHEMA_NAME_KEY: self.name.encode(), SCHEMA_VERSION_KEY: str(self.version).encode()}

    def to_dict(self) -> dict:
        """The schema as it is written in its data file."""
        fields = []
        for f in self.fields:
            entry = {"name": f.name, "type": type_name(f.type), "nullable": f.nullable}
            if not f.required:
                entry["required"] = False
            if f.enum is not None:
                entry["enum"] = list(f.enum)
            entry["description"] = f.description
            fields.append(entry)
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "additional_columns": self.additional_columns,
            **({"reads_versions": list(self.reads_versions)} if self.reads_versions else {}),
            "fields": fields,
        }


def schema_names() -> list[str]:
    """Names of the declared schemas, sorted."""
    files = resources.files("vpt.schemas").iterdir()
    return sorted(Path(entry.name).stem for entry in files if entry.name.endswith(".json"))


@functools.cache
def load_schema(name: str) -> Schema:
    """The declared schema ``name``; :class:`VptError` naming the known ones when there is none."""
    if name not in schema_names():
        raise VptError(f"unknown schema '{name}'; known schemas: {', '.join(schema_names())}")
    data = json.loads(resources.files("vpt.schemas").joinpath(f"{name}.json").read_text())
    fields = tuple(
        Field(
            name=f["name"],
            type=parse_type(f["type"]),
            nullable=f.get("nullable", True),
            required=f.get("required", True),
            description=f.get("description", ""),
            enum=tuple(f["enum"]) if "enum" in f else None,
        )
        for f in data["fields"]
    )
    return Schema(data["name"], int(data["version"]), data.get("description", ""), fields,
                  bool(data.get("additional_columns", True)), tuple(int(v) for v in data.get("reads_versions", ())))


def _as_schema(schema: Schema | str | None) -> Schema | None:
    return load_schema(schema) if isinstance(schema, str) else schema


def without_value_checks(schema: Schema | str) -> Schema:
    """``schema`` with its enum and not-empty rules lifted (columns and types are still checked): for readers that
    report bad values row by row themselves, or skip them."""
    schema = _as_schema(schema)
    return replace(schema, fields=tuple(replace(f, enum=None, nullable=True) for f in schema.fields))


# ---------------------------------------------------------------------------------------------------- conforming


def _castable(found: pa.DataType, expected: pa.DataType) -> bool:
    """True when values of ``found`` convert to ``expected`` without loss or reinterpretation."""
    if found == expected or pa.types.is_null(found):
        return True
    if pa.types.is_dictionary(found):
        return _castable(found.value_type, expected)
    if pa.types.is_integer(found):
        return pa.types.is_integer(expected) or pa.types.is_floating(expected) or pa.types.is_string(expected)
    if pa.types.is_floating(found):
        return pa.types.is_floating(expected) and found.bit_width <= expected.bit_width
    if pa.types.is_string(found) or pa.types.is_large_string(found):
        return pa.types.is_string(expected) or pa.types.is_large_string(expected)
    if pa.types.is_list(found) or pa.types.is_large_list(found):
        return pa.types.is_list(expected) and _castable(found.value_type, expected.value_type)
    return False


class _Conformer:
    """Checks and casts the batches of one source against a schema, keeping the row count for messages."""

    def __init__(self, schema: Schema, source: str):
        self.schema = schema
        self.source = source
        self.rows_seen = 0
        self.target: pa.Schema | None = None

    def error(self, message: str) -> SchemaError:
        return SchemaError(f"{self.source}: {message}")

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.target is None:
            self.target = self._target_schema(batch.schema)
        elif [f.name for f in batch.schema] != [f.name for f in self._source_fields]:
            raise self.error("its parts do not all have the same columns; write them with the same schema")
        columns = []
        for target_field in self.target:
            column = batch.column(target_field.name)
            declared = self.schema.field(target_field.name)
            if column.type != target_field.type:
                try:
                    column = column.cast(target_field.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise self.error(
                        f"column '{target_field.name}' cannot be read as {type_name(target_field.type)} ({exc})"
                    ) from None
            if declared is not None:
                self._check_values(declared, column)
            columns.append(column)
        self.rows_seen += batch.num_rows
        return pa.RecordBatch.from_arrays(columns, schema=self.target)

    def _target_schema(self, found: pa.Schema) -> pa.Schema:
        self._source_fields = list(found)
        present = set(found.names)
        missing = [f.name for f in self.schema.fields if f.required and f.name not in present]
        if missing:
            required = ", ".join(f.name for f in self.schema.fields if f.required)
            names = ", ".join(f"'{m}'" for m in missing)
            raise self.error(
                f"missing column{'s' if len(missing) > 1 else ''} {names} "
                f"(schema {self.schema.label} requires: {required})"
            )
        declared_names = {f.name for f in self.schema.fields}
        extra = [f for f in found if f.name not in declared_names]
        if extra and not self.schema.additional_columns:
            raise self.error(
                f"unexpected column '{extra[0].name}' (schema {self.schema.label} allows only its declared columns)"
            )
        fields = []
        for declared in self.schema.fields:
            if declared.name not in present:
                continue
            found_type = found.field(declared.name).type
            if not _castable(found_type, declared.type):
                raise self.error(
                    f"column '{declared.name}' has type {type_name(found_type)}, expected {type_name(declared.type)} "
                    f"(schema {self.schema.label})"
                )
            fields.append(pa.field(declared.name, declared.type, nullable=declared.nullable))
        fields.extend(extra)
        return pa.schema(fields, metadata=self.schema.metadata)

    def _check_values(self, declared: Field, column: pa.Array) -> None:
        if not declared.nullable and column.null_count:
            row = self.rows_seen + _first_true(column.is_null()) + 1
            raise self.error(f"row {row}: column '{declared.name}' is empty; every row needs a value")
        if declared.enum is not None:
            allowed = pa.array(declared.enum, type=column.type)
            bad = pc.and_(pc.invert(pc.is_in(column, value_set=allowed)), column.is_valid())
            if pc.any(bad).as_py():
                index = _first_true(bad)
                raise self.error(
                    f"row {self.rows_seen + index + 1}: column '{declared.name}' has {column[index].as_py()!r}; "
                    f"expected one of {', '.join(declared.enum)}"
                )


def _first_true(mask: pa.Array) -> int:
    return pc.index(mask, True).as_py()


def _check_file_metadata(metadata: dict | None, schema: Schema, source: str) -> None:
    """A file that names its schema must name the one asked for, at a version this vpt reads (the schema's own or
    one of its ``reads_versions``)."""
    if not metadata or SCHEMA_NAME_KEY not in metadata:
        return
    name = metadata[SCHEMA_NAME_KEY].decode()
    version = metadata.get(SCHEMA_VERSION_KEY, b"?").decode()
    if name != schema.name:
        raise SchemaError(f"{source}: is a '{name}' table, expected '{schema.name}'")
    if version not in {str(v) for v in (schema.version, *schema.reads_versions)}:
        raise SchemaError(
            f"{source}: was written with schema {name} v{version}, this vpt reads {schema.label}; "
            f"convert it with the vpt version that wrote it or regenerate it"
        )


# ---------------------------------------------------------------------------------------------------- reading


def _expand(source: str | os.PathLike) -> list[str]:
    """The files a source names: itself, the Parquet parts of a directory, or the matches of a glob."""
    text = os.fspath(source)
    if text == STDIO:
        return [STDIO]
    if any(ch in text for ch in "*?["):
        matches = sorted(globbing.glob(text, recursive=True))
        if not matches:
            raise VptError(f"{text}: no file matches this pattern")
        return matches
    path = Path(text)
    if path.is_dir():
        parts = sorted(str(p) for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not parts:
            raise VptError(f"{text}: directory holds no .parquet files")
        return parts
    if not path.exists():
        raise VptError(f"{text}: no such file")
    return [text]


def _csv_options(schema: Schema | None) -> pa_csv.ConvertOptions:
    if schema is None:
        return pa_csv.ConvertOptions(strings_can_be_null=True)
    return pa_csv.ConvertOptions(
        column_types={f.name: f.type for f in schema.fields if not pa.types.is_list(f.type)},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )


def _open_parquet(path: str) -> pq.ParquetFile:
    if path != STDIO:
        return pq.ParquetFile(path)
    data = sys.stdin.buffer.read()
    if not data:
        raise VptError("-: standard input is empty; pipe a Parquet table into it")
    return pq.ParquetFile(pa.BufferReader(data))


def _raw_batches(
    path: str, schema: Schema | None, batch_rows: int, opened: pq.ParquetFile | None = None
) -> Iterator[pa.RecordBatch]:
    """Batches of one file as stored, after the file-level metadata check.

    Always yields at least one batch (empty for an empty file) so the columns are checked even with no rows.
    """
    lower = path.lower()
    try:
        if lower.endswith(".csv"):
            reader = pa_csv.open_csv(path, convert_options=_csv_options(schema),
                                     read_options=pa_csv.ReadOptions(block_size=1 << 22, use_threads=False))
            columns, batches = reader.schema, reader
        elif lower.endswith((".jsonl", ".ndjson")):
            table = pa_json.read_json(path)
            columns, batches = table.schema, table.to_batches(max_chunksize=batch_rows)
        else:
            parquet = _open_parquet(path) if opened is None else opened
            if schema is not None:
                _check_file_metadata(parquet.schema_arrow.metadata, schema, path)
            columns, batches = parquet.schema_arrow, parquet.iter_batches(batch_size=batch_rows)
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            yield pa.RecordBatch.from_pylist([], schema=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise VptError(f"{path}: not a readable table ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    # Arrow's JSON reader counts rows from 0 and its CSV reader counts lines (header included) as rows; our
    # messages count data rows from 1, so name JSON rows from 1 and CSV lines as lines
    line = re.sub(r"\bin row (\d+)", lambda match: f"in row {int(match.group(1)) + 1}", text[0])
    return re.sub(r"\bRow #(\d+):", r"line \1:", line)


def iter_batches(
    source: str | os.PathLike, schema: Schema | str | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Stream the record batches of ``source``, checked and cast against ``schema`` when one is given.

    Raises :class:`VptError` (or its :class:`SchemaError`) naming the file, the column, and the row when a value is
    at fault.
    """
    schema = _as_schema(schema)
    for path in _expand(source):
        conform = _Conformer(schema, path) if schema is not None else None
        for batch in _raw_batches(path, schema, batch_rows):
            yield conform(batch) if conform else batch


def read_table(source: str | os.PathLike, schema: Schema | str | None = None) -> pa.Table:
    """Read all of ``source`` into one table (see :func:`iter_batches`)."""
    batches = list(iter_batches(source, schema))
    return pa.Table.from_batches(batches, schema=batches[0].schema)


def _declared_arrow_schema(schema: Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema.fields if f.required],
                     metadata=schema.metadata)


def read_prompts(source: str | os.PathLike) -> pa.Table:
    """A ``prompts`` table from a table file, or from a text file with one prompt per line (ids p0000, p0001, ...)."""
    if os.fspath(source).lower().endswith(".txt"):
        try:
            lines = [line.strip() for line in Path(source).read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise VptError(f"{source}: cannot read ({exc})") from None
        prompts = [line for line in lines if line]
        if not prompts:
            raise VptError(f"{source}: holds no prompt (one prompt per line)")
        return pa.table({"prompt": prompts, "prompt_id": [f"p{i:04d}" for i in range(len(prompts))]})
    return read_table(source, "prompts")


def source_directory(source: str | os.PathLike) -> Path:
    """Directory that relative paths inside ``source`` are resolved against (cwd for stdin and globs)."""
    text = os.fspath(source)
    if text == STDIO or any(ch in text for ch in "*?["):
        return Path.cwd()
    path = Path(text)
    return path if path.is_dir() else path.parent


def resolve_path(path: str, source: str | os.PathLike, where: str, base_dir: str | os.PathLike | None = None,
                 hint: str = "give the table as a file, or write absolute paths") -> Path:
    """The file a path written in the table ``source`` names: an absolute path as it is, a relative one against
    ``base_dir`` when given, else against the table's directory. A table read from standard input has no
    directory, so its relative paths are refused (``where`` names the row, ``hint`` says what to do) rather than
    quietly resolved against the working directory."""
    file = Path(path)
    if file.is_absolute():
        return file
    if base_dir is not None:
        return Path(base_dir) / file
    if os.fspath(source) == STDIO:
        raise VptError(f"{where}: path {path!r} is relative, and a table read from standard input has no directory "
                       f"to resolve it against; {hint}")
    return source_directory(source) / file


def declared_schema(source: str | os.PathLike) -> str | None:
    """The schema name the first Parquet file of ``source`` carries in its metadata (None for CSV/JSONL/stdin or
    an unmarked file)."""
    first = _expand(source)[0]
    if first == STDIO or not first.lower().endswith(".parquet"):
        return None
    try:
        metadata = pq.read_schema(first).metadata or {}
    except (pa.ArrowInvalid, OSError) as exc:
        raise VptError(f"{first}: not a readable table ({_first_line(exc)})") from None
    name = metadata.get(SCHEMA_NAME_KEY)
    return None if name is None else name.decode()


def check_table(source: str | os.PathLike, schema: Schema | str | None = None) -> tuple[Schema, int]:
    """Validate every row of ``source`` against ``schema`` (default: the schema its metadata names).

    Returns the schema used and the row count; raises :class:`VptError` at the first problem.
    """
    schema = _as_schema(schema)
    used, rows = schema, 0
    for path in _expand(source):
        opened = None
        if schema is None:
            if not path.lower().endswith(".parquet") and path != STDIO:
                raise VptError(f"{path}: only Parquet files name their schema; say which one with --as NAME")
            try:
                opened = _open_parquet(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise VptError(f"{path}: not a readable table ({_first_line(exc)})") from None
            name = (opened.schema_arrow.metadata or {}).get(SCHEMA_NAME_KEY)
            if name is None:
                raise VptError(f"{path}: the file names no schema in its metadata; say which one with --as NAME")
            used = load_schema(name.decode())
        conform = _Conformer(used, path)
        for batch in _raw_batches(path, used, BATCH_ROWS, opened):
            rows += conform(batch).num_rows
    return used, rows


# ---------------------------------------------------------------------------------------------------- writing


class TableWriter:
    """Streams batches into one Parquet table carrying ``schema``'s name and version.

    ``dest`` is a path (written under a temporary name, renamed on :meth:`close`; removed if the writer is left
    through an exception) or ``-`` for standard output. Use as a context manager. Each :meth:`write` becomes at
    least one row group, so a reader downstream of a pipe sees rows as they are produced.
    """

    def __init__(self, dest: str | os.PathLike, schema: Schema | str):
        self.schema = _as_schema(schema)
        self.dest = os.fspath(dest)
        if self.dest == STDIO and sys.stdout.isatty():
            raise VptError(
                "refusing to write a Parquet table to the terminal; redirect it (> out.parquet), "
                "pipe it (| vpt schema check -) or pass an output file"
            )
        self._conform = _Conformer(self.schema, f"output {self.dest}")
        self._writer: pq.ParquetWriter | None = None
        self._temporary: Path | None = None
        self.rows = 0

    def write(self, data: pa.Table | pa.RecordBatch | Sequence[dict]) -> None:
        for batch in _to_batches(data):
            batch = self._conform(batch)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._sink(), batch.schema)
            self._writer.write_batch(batch)
            self.rows += batch.num_rows

    def _sink(self):
        if self.dest == STDIO:
            return sys.stdout.buffer
        target = Path(self.dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = temporary_sibling(target)
        return str(self._temporary)

    def close(self) -> None:
        try:
            if self._writer is None:
                self.write(pa.RecordBatch.from_pylist([], schema=_declared_arrow_schema(self.schema)))
            self._writer.close()
            if self.dest == STDIO:
                sys.stdout.buffer.flush()
            else:
                commit(self._temporary, self.dest)
        except BaseException:  # a stop requested meanwhile refuses the rename: leave no temporary behind
            self.abort()
            raise

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._temporary is not None:
                self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _to_batches(data) -> Iterable[pa.RecordBatch]:
    if isinstance(data, pa.RecordBatch):
        return [data]
    if isinstance(data, pa.Table):
        return data.to_batches()
    rows = list(data)
    return [pa.RecordBatch.from_pylist(rows)] if rows else []


def write_table(data: pa.Table | pa.RecordBatch | Sequence[dict], dest: str | os.PathLike, schema: Schema | str) -> int:
    """Write ``data`` as one table of ``schema`` to ``dest`` (path or ``-``); returns the row count."""
    with TableWriter(dest, schema) as writer:
        writer.write(data)
    return writer.rows




class _Parts:
    """What :func:`gather_parts` yields: this process's writer, and (in the main process, afterwards) the merge."""

    def __init__(self, writer: TableWriter):
        self._writer = writer
        self.merged: pa.Table | None = None

    def write(self, data) -> None:
        self._writer.write(data)


@contextlib.contextmanager
def gather_parts(dest: str | os.PathLike, schema: Schema | str, processes, order: Sequence[str], key: str = "id"):
    """One table written by several processes (``vpt.distributed.Processes``): each writes its rows to a part, then
    the main process writes ``dest`` with every row once, sorted into ``order`` (the values of column ``key``).

    Parts live in a hidden directory beside ``dest`` (the working directory for stdout) and are removed afterwards.
    """
    schema = _as_schema(schema)
    base = Path.cwd() if os.fspath(dest) == STDIO else Path(dest).parent
    parts_dir = None
    if processes.is_main:
        parts_dir = base / f".{Path(os.fspath(dest)).name}.parts-{uuid.uuid4().hex[:8]}"
        parts_dir.mkdir(parents=True)
    parts_dir = Path(processes.share(None if parts_dir is None else str(parts_dir)))
    writer = TableWriter(parts_dir / f"part-{processes.rank:05d}.parquet", schema)
    parts = _Parts(writer)
    with writer:
        yield parts
    processes.wait()
    if not processes.is_main:
        return
    try:
        tables = [read_table(path, schema) for path in sorted(parts_dir.glob("part-*.parquet"))]
        merged = pa.concat_tables(tables, promote_options="default")
        position = {value: index for index, value in enumerate(order)}
        keys = merged.column(key).to_pylist()
        if sorted(position[k] for k in keys) != list(range(len(order))):
            raise VptError(f"{dest}: the processes' parts do not hold every row exactly once; run again")
        parts.merged = merged.take(sorted(range(len(keys)), key=lambda i: position[keys[i]]))
        write_table(parts.merged, dest, schema)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
