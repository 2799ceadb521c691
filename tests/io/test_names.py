"""File names from user-given ids."""

from vpt.io.names import file_stems, safe_name


def test_safe_names():
    assert safe_name("toy-0001") == "toy-0001"
    names = {safe_name(clip_id) for clip_id in ("a/b", "a b", "a_b", ".hidden", "", "x" * 300)}
    assert len(names) == 6
    assert all(name and name[0] not in ".-" and len(name) < 140 for name in names)
    assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for name in names)


def test_file_stems_stay_distinct_on_case_insensitive_disks():
    stems = file_stems(["Clip", "clip", "other"])
    assert stems[2] == "other" and len({stem.casefold() for stem in stems}) == 3
    assert file_stems(["a", "b"]) == ["a", "b"]
