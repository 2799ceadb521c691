import subprocess
import sys

from vpt import __version__
from vpt.io.tables import write_table


def test_version(run_vpt):
    result = run_vpt(["--version"])
    assert result.exit_code == 0 and result.output == f"vpt {__version__}\n"


def test_help_lists_every_command_with_a_summary(run_vpt):
    result = run_vpt(["--help"])
    assert result.exit_code == 0
    for command, summary in [("score", "Score videos with reward models"), ("schema", "List, show and check"),
                             ("zoo", "Build tiny offline models and toy videos"),
                             ("eval", "Compute evaluation metrics")]:
        assert any(command in line and summary in line for line in result.output.splitlines()), command


def test_help_does_not_import_torch():
    code = "import sys; from vpt.commands.main import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "print(sorted(m for m in ('torch', 'pyarrow', 'diffusers', 'transformers', 'decord', 'av') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_schema_list(run_vpt):
    result = run_vpt(["schema", "list"])
    assert result.exit_code == 0
    assert [line.split()[:2] for line in result.output.splitlines()] == [
        ["annotations", "v1"], ["flow_metrics", "v1"], ["gsb", "v1"], ["gsb_counts", "v1"], ["gsb_judgements", "v1"],
        ["metrics", "v1"], ["prefs", "v1"], ["prompts", "v1"], ["rewardbench", "v1"], ["rollouts", "v2"],
        ["scores", "v1"], ["videos", "v1"],
    ]


def test_schema_show_table_and_json(run_vpt):
    result = run_vpt(["schema", "show", "scores"])
    lines = result.output.splitlines()
    assert lines[0] == "scores v1"
    assert lines[4].split() == ["column", "type", "nullable", "required", "description"]
    assert lines[5].split()[:4] == ["id", "string", "no", "yes"]
    import json

    data = json.loads(run_vpt(["schema", "show", "prefs", "--json"]).output)
    assert data["name"] == "prefs" and data["fields"][6] == {
        "name": "vq", "type": "string", "nullable": True, "required": False, "enum": ["a", "b", "tie", "invalid"],
        "description": "Visual-quality label.",
    }


def test_schema_check_ok_and_stdin(run_vpt, tmp_path):
    path = tmp_path / "v.parquet"
    write_table([{"id": "a", "path": "a.mp4"}], path, "videos")
    assert run_vpt(["schema", "check", path]).output == f"{path}: ok (videos v1, 1 row)\n"
    piped = run_vpt(["schema", "check", "-"], stdin=path.read_bytes())
    assert (piped.exit_code, piped.output) == (0, "-: ok (videos v1, 1 row)\n")


def test_schema_check_errors_are_one_line_exit_2(run_vpt, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("id,path\na,a.mp4\n")
    result = run_vpt(["schema", "check", csv])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, b"", f"vpt: error: {csv}: only Parquet files name their schema; say which one with --as NAME\n"
    )
    assert run_vpt(["schema", "check", csv, "--as", "videos"]).output == f"{csv}: ok (videos v1, 1 row)\n"
    result = run_vpt(["schema", "check", csv, "--as", "scores"])
    assert result.exit_code == 2 and result.stderr == (
        f"vpt: error: {csv}: missing columns 'prompt', 'model', 'score', 'error' "
        "(schema scores v1 requires: id, path, prompt, model, score, error)\n"
    )
    result = run_vpt(["schema", "check", "-"])
    assert (result.exit_code, result.stderr) == (
        2, "vpt: error: -: standard input is empty; pipe a Parquet table into it\n"
    )


def test_debug_lets_the_error_through_with_its_traceback(run_vpt):
    import pytest

    from vpt.errors import VptError

    with pytest.raises(VptError, match="unknown schema 'nope'"):
        run_vpt(["--debug", "schema", "show", "nope"])
