import numpy as np
import pytest

from vpt.errors import VptError
from vpt.io.manifest import collect_videos
from vpt.io.tables import read_prompts, write_table
from vpt.io.video import write_video


@pytest.fixture
def folder(tmp_path):
    for name in ["b.mp4", "a.webm.mp4", "sub/c.mp4", ".hidden.mp4"]:
        write_video(tmp_path / "videos" / name, np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    return tmp_path


def test_directory_is_searched_recursively_with_relative_ids(folder):
    items = collect_videos([str(folder / "videos")])
    assert [item.id for item in items] == ["a.webm", "b", "sub/c"]
    assert items[2].file == folder / "videos" / "sub" / "c.mp4"


def test_files_and_globs_keep_the_path_as_given(folder, monkeypatch):
    monkeypatch.chdir(folder)
    items = collect_videos(["videos/b.mp4", "videos/sub/*.mp4"])
    assert [(item.id, item.path) for item in items] == [("videos/b", "videos/b.mp4"), ("videos/sub/c", "videos/sub/c.mp4")]


def test_manifest_paths_resolve_against_the_manifest_directory(folder, monkeypatch):
    write_table([{"id": "x", "path": "videos/b.mp4", "prompt": "a cat", "group_id": "g1"}],
                folder / "videos.parquet", "videos")
    monkeypatch.chdir("/")
    (item,) = collect_videos([str(folder / "videos.parquet")])
    assert (item.id, item.file, item.prompt, item.carried) == ("x", folder / "videos/b.mp4", "a cat", {"group_id": "g1"})


def test_prompts_from_a_text_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red square\n\n  a blue circle  \n")
    table = read_prompts(str(path))
    assert table.to_pylist() == [{"prompt": "a red square", "prompt_id": "p0000"},
                                 {"prompt": "a blue circle", "prompt_id": "p0001"}]
    path.write_text("\n")
    with pytest.raises(VptError, match=r"prompts.txt: holds no prompt \(one prompt per line\)$"):
        read_prompts(str(path))


def test_prompts_without_ids_cannot_be_matched_to_videos(folder):
    prompts = folder / "prompts.txt"
    prompts.write_text("a cat\n")
    with pytest.raises(VptError) as error:
        collect_videos([str(folder / "videos")], prompts=str(prompts))
    assert str(error.value) == f"{prompts}: needs an 'id' column naming the video each prompt belongs to"
