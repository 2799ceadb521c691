"""Bad weights for the learned reward models (clip, aesthetic, subject- and background-consistency) through
``vpt score``: each is refused with its exact one-line message and exit code 2, no traceback, no output left."""

from __future__ import annotations

import shutil
import pytest

from reliability_world import assert_refused

HINT = "build a tiny one with `vpt zoo tiny DIR`"


def refused(run_vpt, toy_manifest, tmp_path, model: str, message: str) -> None:
    result = run_vpt(["score", "-m", model, toy_manifest, "-o", tmp_path / "out.parquet"])
    assert_refused(result, message, tmp_path / "out.parquet")


@pytest.mark.parametrize("kind, what", [("clip", "CLIP/SigLIP checkpoint"), ("aesthetic", "CLIP checkpoint"),
                                        ("subject-consistency", "DINO model"),
                                        ("background-consistency", "CLIP checkpoint")])
def test_a_missing_directory(run_vpt, toy_manifest, tmp_path, kind, what):
    missing = tmp_path / "missing" / "dir"
    refused(run_vpt, toy_manifest, tmp_path, f"{kind}:{missing}",
            f"{missing}: not a {what} directory (no such directory); {HINT}")


def test_a_directory_that_is_not_a_clip_checkpoint(run_vpt, toy_manifest, tmp_path, tiny_zoo):
    refused(run_vpt, toy_manifest, tmp_path, f"clip:{tiny_zoo / 'dinov2'}",
            f"{tiny_zoo / 'dinov2'}: not a CLIP/SigLIP checkpoint directory (config.json names model_type 'dinov2', "
            "expected 'clip' or 'siglip')")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(run_vpt, toy_manifest, tmp_path, f"clip:{empty}",
            f"{empty}: not a CLIP/SigLIP checkpoint directory (config.json missing); {HINT}")
    refused(run_vpt, toy_manifest, tmp_path, f"subject-consistency:{tiny_zoo / 'clip'}",
            f"{tiny_zoo / 'clip'}: not a DINO model directory (config.json names model_type 'clip', expected "
            "'dinov2' or 'dinov2_with_registers' or 'vit')")


def test_a_checkpoint_without_its_weights(run_vpt, toy_manifest, tmp_path, tiny_zoo):
    broken = tmp_path / "clip"
    shutil.copytree(tiny_zoo / "clip", broken)
    (broken / "model.safetensors").unlink()
    result = run_vpt(["score", "-m", f"clip:{broken}", toy_manifest, "-o", tmp_path / "out.parquet"])
    assert result.exit_code == 2 and result.stdout == b"" and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"vpt: error: {broken}: cannot load the CLIP/SigLIP checkpoint: ")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out.parquet").exists()


def test_an_aesthetic_directory_without_its_head(run_vpt, toy_manifest, tmp_path, tiny_zoo):
    headless = tmp_path / "aesthetic"
    shutil.copytree(tiny_zoo / "clip", headless)
    refused(run_vpt, toy_manifest, tmp_path, f"aesthetic:{headless}",
            f"{headless}: no aesthetic head (sac+logos+ava1-l14-linearMSE.pth or "
            "sac+logos+ava1-l14-linearMSE.safetensors missing); download sac+logos+ava1-l14-linearMSE.pth from "
            "github.com/christophschuhmann/improved-aesthetic-predictor into it")


def test_an_aesthetic_head_that_is_not_a_state_dict(run_vpt, toy_manifest, tmp_path, tiny_zoo):
    directory = tmp_path / "aesthetic"
    shutil.copytree(tiny_zoo / "aesthetic", directory)
    head = directory / "sac+logos+ava1-l14-linearMSE.pth"
    head.write_text("not a checkpoint\n")
    result = run_vpt(["score", "-m", f"aesthetic:{directory}", toy_manifest, "-o", tmp_path / "out.parquet"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"vpt: error: {head}: not a readable tensor state dict (torch.load weights_only")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No weights variable set, an empty Hugging Face cache and the hub switched off (as with no network)."""
    import huggingface_hub.constants

    for variable in ("VPT_CLIP_DIR", "VPT_AESTHETIC_DIR", "VPT_DINO_DIR", "VPT_BACKGROUND_CLIP_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("kind, hub_id, variable", [
    ("clip", "openai/clip-vit-large-patch14", "VPT_CLIP_DIR"),
    ("subject-consistency", "facebook/dinov2-base", "VPT_DINO_DIR"),
    ("background-consistency", "openai/clip-vit-base-patch32", "VPT_BACKGROUND_CLIP_DIR"),
])
def test_a_bare_name_offline_without_the_variable(run_vpt, toy_manifest, tmp_path, offline, kind, hub_id, variable):
    result = run_vpt(["score", "-m", kind, toy_manifest, "-o", tmp_path / "out.parquet"])
    assert result.exit_code == 2 and result.stdout == b"" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"vpt: error: {kind}: {hub_id} is not in the local Hugging Face cache and the "
                                    "hub is unreachable (")
    assert result.stderr.endswith(f"); download it where you have network and pass {kind}:DIR (or set {variable})\n")
    assert not (tmp_path / "out.parquet").exists()


def test_bare_aesthetic_without_the_variable(run_vpt, toy_manifest, tmp_path, offline):
    refused(run_vpt, toy_manifest, tmp_path, "aesthetic",
            "aesthetic: no weights given; set VPT_AESTHETIC_DIR or pass aesthetic:DIR")


def test_aesthetic_from_a_hub_id(run_vpt, toy_manifest, tmp_path):
    refused(run_vpt, toy_manifest, tmp_path, "aesthetic:openai/clip-vit-large-patch14",
            "aesthetic: openai/clip-vit-large-patch14 is not a local directory; give a CLIP checkpoint directory "
            "holding the head sac+logos+ava1-l14-linearMSE.pth (from "
            "github.com/christophschuhmann/improved-aesthetic-predictor)")


def test_a_variable_naming_a_missing_directory(run_vpt, toy_manifest, tmp_path, offline, monkeypatch):
    monkeypatch.setenv("VPT_CLIP_DIR", str(tmp_path / "nowhere"))
    refused(run_vpt, toy_manifest, tmp_path, "clip",
            f"{tmp_path / 'nowhere'}: not a CLIP/SigLIP checkpoint directory (no such directory); {HINT}")
