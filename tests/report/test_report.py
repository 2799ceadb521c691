"""vpt report end to end on a real small run: the page's videos are byte copies in the folder, captions carry the
scores, win rates match an independent count, the curves are PNGs, the page names only relative paths, the same
inputs give the same bytes, and the command line prints exactly the page path and its warnings."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from vpt.io.tables import read_table

PNG = b"\x89PNG\r\n\x1a\n"
CELL = re.compile(r'<td><video controls preload="metadata" muted loop playsinline src="([^"]+)"></video>(.*?)</td>')


def page(world) -> str:
    return (world.report / "index.html").read_text(encoding="utf-8")


def scores_by_file(world, stage: str) -> dict[Path, dict]:
    return {(world.root / stage / row["path"]).resolve(): row
            for row in read_table(world.root / stage / "scores.parquet", "scores").to_pylist()}


def copy_name(index: int, number: int, row: dict) -> str:
    """Where the report copies video ``number`` of stage ``index`` (r0 is stage 0, r1 stage 1)."""
    return f"videos/{index:02d}-r{index}/{number:03d}-{Path(row['path']).name}"


def rollouts(world, stage: str) -> list[dict]:
    return read_table(world.root / stage / "rollouts.parquet", "rollouts").to_pylist()


def test_the_command_prints_the_page_path_and_the_reward_hacking_warning(report_world):
    assert report_world.stdout.decode() == f"{report_world.report / 'index.html'}\n"
    plots = len(list((report_world.report / "plots").iterdir()))
    assert report_world.stderr == (
        "vpt: warning: possible reward hacking: judged: reward/mean rose (+0.1 per iteration) while judge 'vq' fell "
        "0.2 over the run (more than one standard error of an iteration's mean, 0.05)\n"
        f"report: 3 stages, 8 videos, {plots} plots\n")
    text = page(report_world)
    assert '<div class=warning><strong>Possible reward hacking</strong><ul><li>judged: reward/mean rose' in text


def test_every_video_is_a_byte_copy_inside_the_folder(report_world):
    sources = {copy_name(index, number, row): report_world.root / stage / row["path"]
               for index, stage in enumerate(["r0", "r1"]) for number, row in enumerate(rollouts(report_world, stage))}
    shown = [html.unescape(src) for src, _ in CELL.findall(page(report_world))]
    assert len(shown) == 2 * 2 * 3  # 2 prompts x 2 noises x 3 stages
    assert set(shown) == set(sources)  # the shifted stage shows r1's files: one copy each
    for src in shown:
        assert (report_world.report / src).read_bytes() == sources[src].read_bytes()
    assert sorted(str(p.relative_to(report_world.report)) for p in (report_world.report / "videos").rglob("*.mp4")) \
        == sorted(sources)


def test_captions_carry_the_scores_and_say_other_noise(report_world):
    cells = CELL.findall(page(report_world))
    scores = {**scores_by_file(report_world, "r0"), **scores_by_file(report_world, "r1")}
    copies = {copy_name(index, number, row): (report_world.root / stage / row["path"]).resolve()
              for index, stage in enumerate(["r0", "r1"]) for number, row in enumerate(rollouts(report_world, stage))}
    for position, (src, caption) in enumerate(cells):
        row = scores[copies[html.unescape(src)]]
        assert f"brightness {row['brightness']:.4g}</div>" in caption
        assert f"motion {row['motion']:.4g}</div>" in caption
        assert ("other noise" in caption) == (position % 3 == 2)  # the shifted stage, third in every row


def test_the_gallery_aligns_the_stages_by_initial_noise(report_world):
    text = page(report_world)
    assert re.findall(r"<thead><tr><th>noise</th>(.*?)</tr>", text)[0] == "<th>r0</th><th>r1</th><th>shifted</th>"
    r0, r1 = rollouts(report_world, "r0"), rollouts(report_world, "r1")
    assert [row["seed"] for row in r0] == [row["seed"] for row in r1]  # the same --seed: the same noises
    labels = re.findall(r"<tr><th class=caption>seed (\d+)</th>", text)
    assert labels == [str(row["seed"]) for row in r0]
    rows = re.findall(r"<tr><th class=caption>seed \d+</th>(.*?)</tr>", text)
    for row, base in zip(rows, r0):
        first, second, _ = CELL.findall(row)
        assert first[0].endswith(Path(base["path"]).name) and second[0].endswith(Path(base["path"]).name)


def test_win_rates_equal_an_independent_count(report_world):
    base = {(row["prompt"], row["seed"]): (report_world.root / "r0" / row["path"]).resolve()
            for row in rollouts(report_world, "r0")}
    stage = {(row["prompt"], row["seed"]): (report_world.root / "r1" / row["path"]).resolve()
             for row in rollouts(report_world, "r1")}
    scores = {**scores_by_file(report_world, "r0"), **scores_by_file(report_world, "r1")}
    cells = []
    for column in ("brightness", "motion"):
        points = [1.0 if scores[stage[key]][column] > scores[base[key]][column] else
                  0.5 if scores[stage[key]][column] == scores[base[key]][column] else 0.0 for key in base]
        cells.append(f"<td class=num>{100 * sum(points) / len(points):.1f} ({len(points)})</td>")
    section = page(report_world).split("<h2>Win rate against the base</h2>")[1].split("<h2>")[0]
    assert "<th class=num>brightness</th><th class=num>motion</th>" in section
    assert f"<tr><td>r1</td>{''.join(cells)}</tr>" in section
    assert "shifted" not in section  # no video of the base's noises: no pairs
    assert "a tie counts half a win" in section


def test_gsb_reward_bench_and_text_tables(report_world):
    text = page(report_world)
    gsb = text.split("<h2>GSB</h2>")[1].split("<h2>")[0]
    cells = ["judged/gsb.parquet", "overall", "34", "48", "18", "100", "16", "65.38", "58"]
    assert "".join(f"<td{' class=num' if i >= 2 else ''}>{c}</td>" for i, c in enumerate(cells)) in gsb
    bench = text.split("<h2>Reward-bench accuracy</h2>")[1].split("<h2>")[0]
    assert "<td class=num>61.25</td><td class=num>0.5</td><td class=num>73.5</td>" in bench
    assert "<h2>table-3.txt</h2>\n\n<pre>stage  win rate\np1     55.0 &lt;ok&gt;\n</pre>" in text


def test_curves_are_png_files_of_every_run(report_world):
    text = page(report_world)
    images = re.findall(r'<img src="([^"]+)"', text)
    assert sorted(images) == sorted(f"plots/{p.name}" for p in (report_world.report / "plots").iterdir())
    for image in images:
        assert (report_world.report / image).read_bytes().startswith(PNG)
    names = {Path(image).stem.split("-", 2)[2] for image in images}
    # p1 and p2 make one run each (one iteration): one-point metrics are listed; judged has curves and drift
    assert {"reward", "judge", "loss", "drift-from-the-reference"} <= names
    assert "<h3>p1</h3>" in text and "<td>reward/mean</td><td>iteration 1</td>" in text


def test_lineage_names_the_parent_checkpoint_and_hides_local_paths(report_world):
    lineage = page(report_world).split("<h2>What produced it</h2>")[1].split("<h2>")[0]
    assert "<tr><td>p2</td><td>grpo</td><td>p1</td><td>2</td><td>2</td>" in lineage
    assert "<tr><td>p1</td><td>grpo</td><td>base</td><td>1</td><td>1</td>" in lineage
    assert "vpt grpo-step --policy p1 --rollouts r1 --scores r1/scores.parquet" in lineage
    assert str(report_world.root) not in lineage


def test_paths_in_the_page_are_relative(report_world):
    text = page(report_world)
    links = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert links and all(not link.startswith("/") and "://" not in link for link in links)
    assert str(report_world.root) not in text
    assert "<script" not in text and "http" not in text


def test_the_same_inputs_give_the_same_bytes(run_vpt, report_world):
    again = report_world.root / "again"
    result = run_vpt([*report_world.args[:-1], again, "-q"])
    assert result.exit_code == 0, result.stderr

    def files(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert files(again) == files(report_world.report)


def test_a_report_replaces_its_own_folder(run_vpt, report_world, tmp_path):
    out = tmp_path / "report"
    for per_prompt in ("2", "1"):
        result = run_vpt(["report", report_world.root / "r0", report_world.root / "r1", "--per-prompt", per_prompt,
                          "--base", "r1", "-o", out, "-q"])
        assert (result.exit_code, result.stdout.decode(), result.stderr) == (0, f"{out / 'index.html'}\n", "")
    text = (out / "index.html").read_text()
    assert len(CELL.findall(text)) == 2 * 2  # one noise per prompt now
    assert "<tr><td>r0</td>" in text.split("<h2>Win rate against the base</h2>")[1]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("title", ["<b>run & co</b>"])
def test_the_title_is_escaped(run_vpt, report_world, tmp_path, title):
    result = run_vpt(["report", report_world.root / "p1", "--title", title, "-o", tmp_path / "t", "-q"])
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "t" / "index.html").read_text()
    assert "<h1>&lt;b&gt;run &amp; co&lt;/b&gt;</h1>" in text and "<h2>Videos</h2>" not in text


def test_a_file_under_two_arguments_counts_once(run_vpt, report_world, tmp_path):
    """r0 also names r0/rollouts.parquet and r0/scores.parquet: one stage, one scores table, the same page."""
    once = tmp_path / "once"
    twice = tmp_path / "twice"
    assert run_vpt(["report", report_world.root / "r0", "-o", once, "-q"]).exit_code == 0
    result = run_vpt(["report", report_world.root / "r0", report_world.root / "r0" / "rollouts.parquet",
                      report_world.root / "r0" / "scores.parquet", "-o", twice, "-q"])
    assert result.exit_code == 0, result.stderr
    assert len(CELL.findall((twice / "index.html").read_text())) == len(CELL.findall((once / "index.html")
                                                                                      .read_text()))
