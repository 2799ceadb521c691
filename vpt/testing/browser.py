"""Check a static page in a real headless Chromium: every video loads with a finite duration, every image decodes,
no request fails and nothing is logged as an error; and take a full-page screenshot.

Used by the report's tests and by ``make demo`` on the demo's report::

    python -m vpt.testing.browser report/index.html --screenshot report.png

exits 1 listing the problems one per line (2 when there is no Chromium or playwright to check with). Chromium is the
system's (``/usr/bin/chromium``, or ``$VPT_CHROMIUM``): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

CHROMIUM = os.environ.get("VPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
_MEDIA_STATE = """async (timeout) => {
  const videos = Array.from(document.querySelectorAll('video'));
  const ready = (video) => new Promise((resolve) => {
    if (video.readyState >= 1) return resolve();
    video.addEventListener('loadedmetadata', () => resolve(), {once: true});
    video.addEventListener('error', () => resolve(), {once: true});
    setTimeout(resolve, timeout);
  });
  await Promise.all(videos.map(ready));
  const images = Array.from(document.images);
  await Promise.all(images.map((image) => image.complete ? null : new Promise((resolve) => {
    image.addEventListener('load', resolve, {once: true});
    image.addEventListener('error', resolve, {once: true});
    setTimeout(resolve, timeout);
  })));
  return {
    videos: videos.map((v) => ({src: v.getAttribute('src'), ready: v.readyState, duration: v.duration,
                                error: v.error ? v.error.code : null})),
    images: images.map((i) => ({src: i.getAttribute('src'), width: i.naturalWidth})),
  };
}"""


def available() -> str | None:
    """Why the page cannot be checked here (no Chromium, no playwright), or None when it can."""
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM}"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed"
    return None


def check_page(url: str, screenshot: str | os.PathLike | None = None, timeout_ms: int = 20_000) -> list[str]:
    """Problems with the page at ``url`` (a ``file://`` or ``http://`` address), one line each; [] when it is
    clean. Saves a full-page PNG to ``screenshot`` when given."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(
                f"request failed: {request.url} ({request.failure})"))
            page.on("response", lambda response: problems.append(f"HTTP {response.status}: {response.url}")
                    if response.status >= 400 else None)
            page.goto(url, wait_until="load", timeout=timeout_ms)
            state = page.evaluate(_MEDIA_STATE, timeout_ms)
            for video in state["videos"]:
                duration = video["duration"]
                if video["ready"] < 1 or video["error"] is not None or not (duration and duration > 0
                                                                              and duration != float("inf")):
                    problems.append(f"video {video['src']}: not loaded (readyState {video['ready']}, duration "
                                    f"{duration}, error {video['error']})")
            problems += [f"image {image['src']}: not decoded" for image in state["images"] if image["width"] <= 0]
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpt.testing.browser", description=__doc__.split("\n\n")[0])
    parser.add_argument("page", help="the page: a file path or a URL")
    parser.add_argument("--screenshot", help="write a full-page PNG here")
    args = parser.parse_args(argv)
    missing = available()
    if missing:
        print(f"cannot check {args.page}: {missing}", file=sys.stderr)
        return 2
    url = args.page if "://" in args.page else Path(args.page).resolve().as_uri()
    problems = check_page(url, args.screenshot)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
