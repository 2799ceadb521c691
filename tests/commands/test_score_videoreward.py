import io

import pyarrow.parquet as pq
import pytest


def table(result):
    assert result.exit_code == 0, result.stderr
    return pq.read_table(io.BytesIO(result.stdout))


@pytest.fixture(scope="module")
def small_manifest(toy_manifest, tmp_path_factory):
    """Six toy clips (VideoReward is the slow model here)."""
    from vpt.io.tables import read_table, write_table

    rows = read_table(toy_manifest, "videos").slice(0, 6)
    rows = rows.set_column(rows.column_names.index("path"), "path",
                           [[str(toy_manifest.parent / p) for p in rows.column("path").to_pylist()]])
    path = tmp_path_factory.mktemp("six") / "videos.parquet"
    write_table(rows, path, "videos")
    return path


def test_videoreward_checkpoint_scores_four_dimensions(run_vpt, tiny_zoo, small_manifest):
    scores = table(run_vpt(["score", "-q", "-m", tiny_zoo / "videoreward", small_manifest, "--raw"]))
    assert scores.column_names[-7:] == ["vq", "mq", "ta", "overall", "vq_raw", "mq_raw", "ta_raw"]
    assert set(scores.column("model").to_pylist()) == {str(tiny_zoo / "videoreward")}
    rows = scores.to_pylist()
    for row in rows:
        assert row["error"] is None and row["score"] == row["overall"]
        assert row["overall"] == pytest.approx(row["vq"] + row["mq"] + row["ta"], abs=1e-9)
    assert len({row["vq_raw"] for row in rows}) == len(rows)  # the model reacts to its input


def test_official_layout_scores_identically(run_vpt, tiny_zoo, small_manifest):
    ours = table(run_vpt(["score", "-q", "-m", tiny_zoo / "videoreward", small_manifest]))
    official = table(run_vpt(["score", "-q", "-m", tiny_zoo / "videoreward-official", small_manifest]))
    for column in ("vq", "mq", "ta", "overall"):
        assert official.column(column).to_pylist() == ours.column(column).to_pylist()


def test_videoreward_name_resolves_model_dir_and_environment(run_vpt, tiny_zoo, small_manifest, monkeypatch):
    direct = table(run_vpt(["score", "-q", "-m", tiny_zoo / "videoreward", small_manifest]))
    named = table(run_vpt(["score", "-q", "-m", "videoreward", "--model-dir", tiny_zoo / "videoreward", small_manifest]))
    monkeypatch.setenv("VPT_VIDEOREWARD_DIR", str(tiny_zoo / "videoreward"))
    from_env = table(run_vpt(["score", "-q", "-m", "videoreward", small_manifest]))
    assert named.column("overall").to_pylist() == direct.column("overall").to_pylist()
    assert from_env.column("overall").to_pylist() == direct.column("overall").to_pylist()
    assert set(named.column("model").to_pylist()) == {"videoreward"}


def test_videoreward_offline_without_a_local_copy_says_how_to_provide_it(run_vpt, small_manifest, tmp_path,
                                                                        monkeypatch):
    monkeypatch.delenv("VPT_VIDEOREWARD_DIR", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_vpt(["score", "-q", "-m", "videoreward", small_manifest])
    assert result.exit_code == 2 and result.stdout == b""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("vpt: error: videoreward: no local copy and the Hugging Face hub is unreachable (")
    assert result.stderr.endswith(
        "); download KwaiVGI/VideoReward where you have network and pass --model-dir DIR (or set VPT_VIDEOREWARD_DIR)\n"
    )


def test_videoreward_needs_prompts(run_vpt, tiny_zoo, toy_manifest):
    result = run_vpt(["score", "-q", "-m", tiny_zoo / "videoreward", toy_manifest.parent / "clips"])
    assert result.exit_code == 2
    assert result.stderr == (
        f"vpt: error: reward model '{tiny_zoo / 'videoreward'}' needs a prompt for every video and 'toy-0000' has none; "
        "give a manifest with a prompt column or --prompts TABLE\n"
    )
