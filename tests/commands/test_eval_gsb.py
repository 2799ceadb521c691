import pyarrow.parquet as pq
import pytest

BPGO = ["--good", "34", "--same", "48", "--bad", "18"]
ACCEPTED = "accepted labels: G, S, B, good, same, bad (any case)"

# Six prompts, each judged twice for motion and once overall.
JUDGEMENTS = """judgement,aspect,prompt_id
G,motion,p1
good,motion,p1
S,motion,p2
b,motion,p2
G,motion,p3
Same,motion,p3
bad,overall,p1
G,overall,p2
G,overall,p3
"""


def run_gsb(run_vpt, *args):
    result = run_vpt(["eval", "gsb", *args])
    assert result.exit_code == 0, result.stderr
    return result


def test_bpgo_example_prints_its_metrics_and_intervals(run_vpt):
    result = run_gsb(run_vpt, *BPGO, "--seed", "0")
    assert result.output == (
        "aspect   G   S   B   N    WinRate  95% CI          Preference  95% CI          Margin  95% CI\n"
        "overall  34  48  18  100  65.38    [52.08, 78.12]  58.00       [51.00, 65.00]  16.00   [2.00, 30.00]\n"
    )


def test_output_table_holds_the_same_numbers(run_vpt, tmp_path):
    out = tmp_path / "gsb.parquet"
    result = run_gsb(run_vpt, *BPGO, "--aspect", "motion", "--bootstrap", "500", "--confidence", "0.9", "-o", out)
    assert result.output.splitlines()[0].split()[6:8] == ["90%", "CI"]
    table = pq.read_table(out)
    assert table.schema.metadata[b"vpt.schema"] == b"gsb"
    [row] = table.to_pylist()
    assert {k: row[k] for k in ("aspect", "good", "same", "bad", "total", "bootstrap", "confidence", "clusters")} == {
        "aspect": "motion", "good": 34, "same": 48, "bad": 18, "total": 100, "bootstrap": 500, "confidence": 0.9,
        "clusters": None,
    }
    assert (row["win_rate"], row["preference"], row["margin"]) == (pytest.approx(100 * 34 / 52), 58.0, 16.0)
    for metric in ("win_rate", "preference", "margin"):
        assert row[f"{metric}_low"] < row[metric] < row[f"{metric}_high"]


def test_quiet_with_the_table_on_stdout(run_vpt):
    result = run_gsb(run_vpt, *BPGO, "--bootstrap", "10", "-q", "-o", "-")
    assert result.stdout[:4] == b"PAR1" and result.stderr == ""


def test_counts_table_one_row_per_aspect(run_vpt, tmp_path):
    path = tmp_path / "counts.csv"
    path.write_text("aspect,good,same,bad\noverall,34,48,18\nties only,0,5,0\n")
    rows = [line.split() for line in run_gsb(run_vpt, "--counts", path, "--bootstrap", "200").output.splitlines()]
    assert rows[1][:6] == ["overall", "34", "48", "18", "100", "65.38"]
    assert rows[1][8] == "58.00" and rows[1][11] == "16.00"
    assert rows[2][:8] == ["ties", "only", "0", "5", "0", "5", "n/a", "n/a"]
    assert rows[2][8:] == ["50.00", "[50.00,", "50.00]", "0.00", "[0.00,", "0.00]"]


def test_judgements_table_grouped_by_aspect_and_clustered_by_prompt(run_vpt, tmp_path):
    path, out = tmp_path / "judgements.csv", tmp_path / "gsb.parquet"
    path.write_text(JUDGEMENTS)
    run_gsb(run_vpt, "--judgements", path, "--cluster-by", "prompt_id", "--bootstrap", "200", "-q", "-o", out)
    rows = pq.read_table(out).to_pylist()
    assert [(r["aspect"], r["good"], r["same"], r["bad"], r["clusters"]) for r in rows] == [
        ("motion", 3, 2, 1, 3), ("overall", 2, 0, 1, 3),
    ]
    assert rows[0]["preference"] == pytest.approx(100 * 4 / 6) and rows[1]["margin"] == pytest.approx(100 / 3)


def test_judgements_without_aspect_count_as_overall(run_vpt, tmp_path):
    path = tmp_path / "judgements.csv"
    path.write_text("judgement\nG\nG\nS\nB\n")
    assert run_gsb(run_vpt, "--judgements", path).output.splitlines()[1].split()[:6] == [
        "overall", "2", "1", "1", "4", "66.67",
    ]


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one input: --good N --same N --bad N, --counts TABLE or --judgements TABLE"),
    ([*BPGO, "--counts", "counts.csv"],
     "give exactly one input: --good N --same N --bad N, --counts TABLE or --judgements TABLE"),
    (["--good", "34", "--same", "48"], "--good, --same and --bad go together; add --bad"),
    (["--good", "34"], "--good, --same and --bad go together; add --same and --bad"),
    (["--good", "34", "--same", "48", "--bad", "-1"], "--bad -1: counts must be 0 or more"),
    ([*BPGO, "--bootstrap", "0"], "--bootstrap 0: give at least 1 replicate (10000 is usual)"),
    ([*BPGO, "--confidence", "1.5"], "--confidence 1.5: give a coverage strictly between 0 and 1, e.g. 0.95"),
    ([*BPGO, "--cluster-by", "prompt_id"],
     "--cluster-by needs individual judgements: give them with --judgements TABLE"),
    (["--counts", "counts.csv", "--aspect", "motion"],
     "--aspect goes with --good/--same/--bad; a table names its aspects in its aspect column"),
    (["--counts", "counts.csv"], "counts.csv: row 2: column 'same' is -3; counts must be 0 or more"),
    (["--judgements", "judgements.csv"], f"judgements.csv: row 3: unknown judgement 'better'; {ACCEPTED}"),
    (["--judgements", "judgements.csv", "--cluster-by", "prompt"],
     "judgements.csv: has no column 'prompt' to cluster by; its columns are judgement, prompt_id"),
    (["--judgements", "unclustered.csv", "--cluster-by", "prompt_id"],
     "unclustered.csv: row 2: column 'prompt_id' is empty; every judgement needs a cluster"),
    (["--counts", "twice.jsonl"], "twice.jsonl: row 2: aspect 'overall' appears twice; give one row per aspect"),
])
def test_bad_invocations(run_vpt, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "counts.csv").write_text("aspect,good,same,bad\noverall,1,2,3\nmotion,1,-3,0\n")
    (tmp_path / "judgements.csv").write_text("judgement,prompt_id\nG,p1\nS,p1\nbetter,p2\n")
    (tmp_path / "unclustered.csv").write_text("judgement,prompt_id\nG,p1\nS,\n")
    (tmp_path / "twice.jsonl").write_text('{"aspect": "overall", "good": 1, "same": 0, "bad": 0}\n' * 2)
    result = run_vpt(["eval", "gsb", *args])
    assert (result.exit_code, result.stderr) == (2, f"vpt: error: {message}\n")
