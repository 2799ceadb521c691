import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpt.errors import SchemaError, VptError
from vpt.io.tables import (
    Field, Schema, TableWriter, check_table, iter_batches, load_schema, parse_type, read_table, schema_names,
    write_table,
)

SCORES = [
    {"id": "a", "path": "a.mp4", "prompt": "a cat", "model": "brightness", "score": 0.5, "error": None},
    {"id": "b", "path": "b.mp4", "prompt": None, "model": "brightness", "score": None, "error": "file is empty"},
]


def test_every_table_kind_is_declared():
    assert schema_names() == ["annotations", "flow_metrics", "gsb", "gsb_counts", "gsb_judgements", "metrics", "prefs",
                              "prompts", "rewardbench", "rollouts", "scores", "videos"]
    for name in schema_names():
        schema = load_schema(name)
        assert schema.name == name and schema.version == (2 if name == "rollouts" else 1)
        assert schema.reads_versions == ((1,) if name == "rollouts" else ())
        assert all(field.description for field in schema.fields)


def test_types_parse_from_their_schema_spelling():
    assert parse_type("float64") == pa.float64()
    assert parse_type("list<int64>") == pa.list_(pa.int64())
    with pytest.raises(ValueError, match="unknown type 'decimal'"):
        parse_type("decimal")


def test_unknown_schema_names_the_known_ones():
    with pytest.raises(VptError) as error:
        load_schema("nope")
    assert str(error.value) == (
        "unknown schema 'nope'; known schemas: annotations, flow_metrics, gsb, gsb_counts, gsb_judgements, metrics, "
        "prefs, prompts, rewardbench, rollouts, scores, videos"
    )


def test_round_trip_keeps_values_types_and_metadata(tmp_path):
    path = tmp_path / "scores.parquet"
    assert write_table(SCORES, path, "scores") == 2
    table = read_table(path, "scores")
    assert table.to_pylist() == SCORES
    assert table.schema.field("score").type == pa.float64()
    assert not table.schema.field("id").nullable
    metadata = pq.read_schema(path).metadata
    assert metadata[b"vpt.schema"] == b"scores" and metadata[b"vpt.schema_version"] == b"1"
    assert check_table(path)[1] == 2


def test_declared_columns_come_first_and_extra_columns_are_kept(tmp_path):
    rows = [{"brightness": 0.3, "path": "x.mp4", "id": "x"}]
    write_table(rows, tmp_path / "v.parquet", "videos")
    table = read_table(tmp_path / "v.parquet", "videos")
    assert table.column_names == ["id", "path", "brightness"]


def test_safe_widening_is_accepted_and_cast(tmp_path):
    table = pa.table({"id": pa.array([1, 2], pa.int32()), "path": ["a", "b"], "fps": pa.array([8, 24], pa.int64()),
                      "frames": pa.array([9, 17], pa.int32())})
    pq.write_table(table, tmp_path / "v.parquet")
    read = read_table(tmp_path / "v.parquet", "videos")
    assert read.column("id").to_pylist() == ["1", "2"]
    assert read.schema.field("fps").type == pa.float64() and read.column("fps").to_pylist() == [8.0, 24.0]
    assert read.schema.field("frames").type == pa.int64()


def schema_error(source, schema) -> str:
    with pytest.raises(SchemaError) as error:
        list(iter_batches(source, schema))
    return str(error.value)


def test_missing_column_names_file_column_and_requirements(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"id": ["a"], "path": ["a.mp4"]}), path)
    assert schema_error(path, "scores") == (
        f"{path}: missing columns 'prompt', 'model', 'score', 'error' "
        "(schema scores v1 requires: id, path, prompt, model, score, error)"
    )


def test_wrong_type_names_column_expected_and_found(tmp_path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": ["a"], "path": ["a.mp4"], "fps": ["fast"]}), path)
    assert schema_error(path, "videos") == f"{path}: column 'fps' has type string, expected float64 (schema videos v1)"


def test_lossy_float_narrowing_is_refused(tmp_path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": ["a"], "path": ["a.mp4"], "frames": [9.5]}), path)
    assert schema_error(path, "videos") == f"{path}: column 'frames' has type float64, expected int64 (schema videos v1)"


def test_null_in_required_value_names_the_row(tmp_path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": ["a", "b", None], "path": ["a", "b", "c"]}), path, row_group_size=2)
    assert schema_error(path, "videos") == f"{path}: row 3: column 'id' is empty; every row needs a value"


def test_value_outside_enum_names_row_and_allowed_values(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("path_A,path_B,prompt,VQ,MQ,TA\na.mp4,b.mp4,cat,A,B,same\na.mp4,c.mp4,cat,A,C,same\n")
    assert schema_error(path, "annotations") == f"{path}: row 2: column 'MQ' has 'C'; expected one of A, B, same"


def test_file_of_another_schema_or_version_is_refused(tmp_path):
    path = tmp_path / "s.parquet"
    write_table(SCORES, path, "scores")
    assert schema_error(path, "videos") == f"{path}: is a 'scores' table, expected 'videos'"
    table = pq.read_table(path)
    old = table.replace_schema_metadata({b"vpt.schema": b"scores", b"vpt.schema_version": b"0"})
    pq.write_table(old, path)
    assert schema_error(path, "scores") == (
        f"{path}: was written with schema scores v0, this vpt reads scores v1; "
        "convert it with the vpt version that wrote it or regenerate it"
    )


def test_a_schema_reads_the_older_versions_it_declares(tmp_path):
    path = tmp_path / "r.parquet"
    reads = Schema("runs", 3, "", (Field("id", pa.string(), False, True, "id"),), True, reads_versions=(1, 2))
    table = pa.table({"id": ["a"]})
    for version, readable in (("1", True), ("2", True), ("3", True), ("0", False), ("4", False)):
        pq.write_table(table.replace_schema_metadata({b"vpt.schema": b"runs", b"vpt.schema_version": version.encode()}),
                       path)
        if readable:
            assert read_table(path, reads).column("id").to_pylist() == ["a"]
        else:
            with pytest.raises(SchemaError, match=f"written with schema runs v{version}, this vpt reads runs v3"):
                read_table(path, reads)


def test_closed_schema_refuses_extra_columns(tmp_path):
    closed = Schema("pairs", 1, "", (Field("id", pa.string(), False, True, "id"),), additional_columns=False)
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": ["a"], "other": [1]}), path)
    assert schema_error(path, closed) == f"{path}: unexpected column 'other' (schema pairs v1 allows only its declared columns)"


def test_csv_and_jsonl_are_read_with_declared_types(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("id,path,prompt,fps\n001,a.mp4,a red square,8\n002,b.mp4,,24\n")
    table = read_table(csv, "videos")
    assert table.to_pylist() == [
        {"id": "001", "path": "a.mp4", "prompt": "a red square", "fps": 8.0},
        {"id": "002", "path": "b.mp4", "prompt": None, "fps": 24.0},
    ]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"id": "a", "path": "a.mp4", "frames": 9}\n{"id": "b", "path": "b.mp4", "frames": 17}\n')
    assert read_table(jsonl, "videos").column("frames").to_pylist() == [9, 17]


def test_directory_of_parts_and_glob_read_as_one_table(tmp_path):
    for part in range(3):
        write_table([{"id": f"v{part}", "path": f"v{part}.mp4"}], tmp_path / "parts" / f"part-{part}.parquet", "videos")
    assert read_table(tmp_path / "parts", "videos").column("id").to_pylist() == ["v0", "v1", "v2"]
    assert read_table(str(tmp_path / "parts" / "part-[02].parquet"), "videos").num_rows == 2


def test_missing_sources_and_non_tables_are_reported(tmp_path):
    with pytest.raises(VptError, match=r"nothing\.parquet: no such file$"):
        read_table(tmp_path / "nothing.parquet", "videos")
    with pytest.raises(VptError, match=r"\*\.parquet: no file matches this pattern$"):
        read_table(str(tmp_path / "*.parquet"), "videos")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet at all")
    with pytest.raises(VptError) as error:
        read_table(bad, "videos")
    assert str(error.value).startswith(f"{bad}: not a readable table (")


def test_empty_table_still_checks_columns(tmp_path):
    path = tmp_path / "empty.parquet"
    write_table([], path, "scores")
    assert read_table(path, "scores").num_rows == 0
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), path)
    assert "missing column 'path' " in schema_error(path, "videos")


def test_reading_streams_in_batches(tmp_path):
    path = tmp_path / "big.parquet"
    with TableWriter(path, "videos") as writer:
        for start in range(0, 50_000, 10_000):
            writer.write(pa.table({"id": [f"v{i}" for i in range(start, start + 10_000)],
                                   "path": ["x.mp4"] * 10_000}))
    sizes = [batch.num_rows for batch in iter_batches(path, "videos", batch_rows=4096)]
    assert sum(sizes) == 50_000 and max(sizes) <= 4096 and len(sizes) >= 13


def test_output_writer_validates_its_own_rows(tmp_path):
    with pytest.raises(SchemaError, match="output .*: missing column 'path'"):
        write_table([{"id": "a"}], tmp_path / "v.parquet", "videos")
    assert list(tmp_path.iterdir()) == []


WRITER = textwrap.dedent("""
    import signal, sys, time
    import pyarrow as pa
    from vpt.io.tables import TableWriter
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with TableWriter(sys.argv[1], "videos") as writer:
        for i in range(1000):
            writer.write([{"id": f"v{i}", "path": "x.mp4"}])
            if i == 0:
                print("started", flush=True)
            time.sleep(0.01)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_writer_leaves_no_output_file(tmp_path, sig):
    target = tmp_path / "out" / "videos.parquet"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "started"
    time.sleep(0.1)
    process.send_signal(sig)
    process.wait(timeout=30)
    assert not target.exists()
    leftovers = sorted(p.name for p in target.parent.iterdir())
    if sig == signal.SIGTERM:
        assert leftovers == []  # SIGTERM unwinds and removes the temporary
    else:
        assert all(name.startswith(".videos.parquet.tmp-") for name in leftovers)


def test_writing_parquet_to_a_terminal_is_refused(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with pytest.raises(VptError) as error:
        TableWriter("-", "scores")
    assert str(error.value) == (
        "refusing to write a Parquet table to the terminal; redirect it (> out.parquet), "
        "pipe it (| vpt schema check -) or pass an output file"
    )
