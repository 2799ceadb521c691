"""The report in a real headless Chromium, from disk and from a static server: every video plays its metadata with a
finite duration, every plot decodes, no request fails and nothing is logged as an error (vpt.testing.browser)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from vpt.testing import browser

pytestmark = pytest.mark.skipif(browser.available() is not None,
                                reason=f"cannot run a browser here: {browser.available()}")


def keep(screenshot: Path) -> None:
    """Also copy the screenshot to $VPT_TEST_ARTIFACTS when it is set (CI keeps that folder)."""
    artifacts = os.environ.get("VPT_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, Path(artifacts) / screenshot.name)


def check(url: str, screenshot: Path) -> None:
    problems = browser.check_page(url, screenshot)
    assert problems == []
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    keep(screenshot)


def test_the_page_loads_from_disk(report_world, tmp_path):
    check((report_world.report / "index.html").as_uri(), tmp_path / "report-file.png")


def test_the_page_loads_from_a_static_server(report_world, tmp_path):
    handler = functools.partial(QuietHandler, directory=str(report_world.report))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check(f"http://127.0.0.1:{server.server_address[1]}/index.html", tmp_path / "report-http.png")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not os.environ.get("VPT_REPORT"), reason="VPT_REPORT names no report page (make demo sets it)")
def test_a_given_report_loads(tmp_path):
    """The page $VPT_REPORT names (``make demo``: the pipeline's report), checked as the built ones are."""
    check(Path(os.environ["VPT_REPORT"]).resolve().as_uri(), tmp_path / "report.png")


def test_the_checker_reports_a_missing_video(report_world, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(report_world.report, broken)
    victim = sorted((broken / "videos").rglob("*.mp4"))[0]
    victim.unlink()
    problems = browser.check_page((broken / "index.html").as_uri(), timeout_ms=3000)
    assert any(victim.name in problem for problem in problems), problems


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test's output clean
        pass
