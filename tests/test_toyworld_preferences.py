import pytest

from vpt.io.tables import write_table, read_table
from vpt.toyworld import toy_preferences


def clip(name, brightness, jitter, color, shape):
    return {"id": name, "path": f"clips/{name}.mp4", "prompt": f"a {color} {shape}", "brightness": brightness,
            "jitter": jitter, "color": color, "shape": shape}


CLIPS = [clip("bright-steady-red-square", 0.8, 0.0, "red", "square"),
         clip("dark-shaky-blue-circle", 0.2, 2.0, "blue", "circle"),
         clip("mid-steady-red-square", 0.78, 0.0, "red", "square")]


def test_labels_follow_the_true_attributes():
    pairs = toy_preferences(CLIPS, n_pairs=200, seed=0)
    by = {c["id"]: c for c in CLIPS}
    seen = set()
    for pair in pairs:
        a, b = by[pair["id_a"]], by[pair["id_b"]]
        names = frozenset([a["id"], b["id"]])
        seen.add(names)
        if names == frozenset(["bright-steady-red-square", "mid-steady-red-square"]):
            assert (pair["vq"], pair["mq"], pair["ta"], pair["overall"]) == ("tie", "tie", "tie", "tie")
        else:
            good = "a" if a["brightness"] > b["brightness"] else "b"
            assert pair["vq"] == good and pair["mq"] == good  # the bright clip is also the steady one here
            shown_is_a = pair["prompt"] == a["prompt"]
            assert pair["ta"] == ("a" if shown_is_a else "b")
            assert pair["overall"] == good  # vq and mq agree, so ta cannot outvote them
    assert len(seen) == 3


def test_pairs_are_deterministic_balanced_and_a_valid_prefs_table(tmp_path):
    pairs = toy_preferences(CLIPS, n_pairs=400, seed=3)
    assert pairs == toy_preferences(CLIPS, n_pairs=400, seed=3)
    assert pairs != toy_preferences(CLIPS, n_pairs=400, seed=4)
    share_a = sum(p["vq"] == "a" for p in pairs) / sum(p["vq"] != "tie" for p in pairs)
    assert 0.4 < share_a < 0.6  # the better clip is A about half the time
    write_table(pairs, tmp_path / "prefs.parquet", "prefs")
    assert read_table(tmp_path / "prefs.parquet", "prefs").num_rows == 400


def test_needs_two_clips():
    with pytest.raises(ValueError, match="need at least two clips"):
        toy_preferences(CLIPS[:1], n_pairs=1)
