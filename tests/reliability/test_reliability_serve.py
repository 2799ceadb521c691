"""Bad options of ``vpt serve`` and bad reward-server URLs given to ``-m``: each is refused with its exact one-line
message and exit code 2, no traceback, before a server binds or a score is written. (Bad requests to a running
server, and clients that go away, are in tests/server/test_serve.py.)"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from reliability_world import assert_refused


@pytest.fixture
def clip(tmp_path):
    from vpt.io.video import write_video

    path = tmp_path / "clip.mp4"
    write_video(path, np.full((4, 32, 32, 3), 90, np.uint8), fps=4)
    return path


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unknown_model_message() -> str:
    from vpt.errors import VptError
    from vpt.rewards.registry import load_reward_model

    with pytest.raises(VptError) as error:
        load_reward_model("nope")
    return str(error.value)


SERVE = {
    "unknown model": (["-m", "brightness,nope"], unknown_model_message),
    "empty model name": (["-m", "brightness,,motion"], lambda: "--model brightness,,motion: expected comma-separated "
                                                               "names, e.g. brightness,motion"),
    "port too large": (["-m", "brightness", "--port", "70000"], lambda: "--port 70000: choose 0 (any free port) to "
                                                                        "65535"),
    "negative port": (["-m", "brightness", "--port", "-1"], lambda: "--port -1: choose 0 (any free port) to 65535"),
    "address not here": (["-m", "brightness", "--host", "192.0.2.1", "--port", "0"],
                         lambda: "--host 192.0.2.1 --port 0: cannot listen there (Cannot assign requested address); "
                                 "choose another --port (0 picks a free one) or --host"),
    "dtype": (["-m", "brightness", "--dtype", "fp16"], lambda: "--dtype fp16: choose bf16 or fp32"),
    "max batch": (["-m", "brightness", "--max-batch", "0"], lambda: "--max-batch 0: must be at least 1"),
    "max wait": (["-m", "brightness", "--max-wait-ms", "-1"], lambda: "--max-wait-ms -1: choose 0 to 60000"),
    "max body": (["-m", "brightness", "--max-body-mb", "0"], lambda: "--max-body-mb must be more than 0"),
    "batch size": (["-m", "brightness", "--batch-size", "0"], lambda: "--batch-size and --workers must be at least 1"),
    "workers": (["-m", "brightness", "--workers", "0"], lambda: "--batch-size and --workers must be at least 1"),
}


@pytest.mark.parametrize("name", sorted(SERVE))
def test_serve_refuses_a_bad_option_in_one_line(name, run_vpt):
    args, message = SERVE[name]
    assert_refused(run_vpt(["serve", *args]), message())


def test_serve_refuses_a_port_in_use(run_vpt):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_vpt(["serve", "-m", "brightness", "--port", port])
    assert_refused(result, f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use); choose "
                           "another --port (0 picks a free one) or --host")


URLS = {
    "unreachable": ("http://127.0.0.1:{port}/?retries=0",
                    "reward server {url} is unreachable (ConnectError: [Errno 111] Connection refused; 1 try); start "
                    "it with `vpt serve -m MODEL --port PORT`, check the URL, or allow more ?retries=N"),
    "retries not a number": ("http://127.0.0.1:{port}/?retries=many",
                             "{url}: retries 'many' is not a number (URL parameter retries or $VPT_REMOTE_RETRIES)"),
    "negative timeout": ("http://127.0.0.1:{port}/?timeout=-5",
                         "{url}: timeout must be more than 0 seconds and retries a whole number >= 0 (URL parameters "
                         "or $VPT_REMOTE_TIMEOUT, $VPT_REMOTE_RETRIES)"),
    "unknown parameter": ("http://127.0.0.1:{port}/?colour=red",
                          "{url}: unknown URL parameter 'colour'; known: model, timeout, retries"),
    "no host": ("http:///", "{url}: not a server URL; use http://HOST:PORT/ (optionally ?model=NAME)"),
}


@pytest.mark.parametrize("name", sorted(URLS))
def test_score_refuses_a_bad_server_url_in_one_line(name, run_vpt, clip, free_port, tmp_path):
    template, message = URLS[name]
    url = template.format(port=free_port)
    result = run_vpt(["score", "-m", url, clip, "-q", "-o", tmp_path / "out.parquet"])
    assert_refused(result, message.format(url=url), tmp_path / "out.parquet")


def test_a_bad_timeout_variable_is_refused(run_vpt, clip, free_port, tmp_path, monkeypatch):
    monkeypatch.setenv("VPT_REMOTE_TIMEOUT", "soon")
    url = f"http://127.0.0.1:{free_port}/"
    result = run_vpt(["score", "-m", url, clip, "-q", "-o", tmp_path / "out.parquet"])
    assert_refused(result, f"{url}: timeout 'soon' is not a number (URL parameter timeout or $VPT_REMOTE_TIMEOUT)",
                   tmp_path / "out.parquet")
