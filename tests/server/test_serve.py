"""``vpt serve`` as a real server on 127.0.0.1 and ``-m http://...`` as its client: the same scores as a local run,
dynamic batching across requests, clear HTTP errors after which the server goes on serving."""

from __future__ import annotations

import base64
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from served import VPT, start_server
from vpt.io.video import write_video

DIMENSIONS = ["brightness", "motion", "vq", "mq", "ta", "overall"]


@pytest.fixture(scope="module")
def server(tiny_zoo):
    """brightness,motion and the tiny zoo's VideoReward; one video per forward pass, so a video's scores do not
    depend on which others share its batch (see the README's "Reward server")."""
    served = start_server("-m", "brightness,motion", "-m", tiny_zoo / "videoreward", "--batch-size", "1",
                          "--max-batch", "8", "--max-wait-ms", "200", "--max-body-mb", "1", "-q")
    yield served
    assert served.stop() == 0, "\n".join(served.lines)


def rows(manifest) -> list[dict]:
    return pq.read_table(manifest).to_pylist()


def video_item(manifest, row: dict, **extra) -> dict:
    data = (manifest.parent / row["path"]).read_bytes()
    return {"id": row["id"], "prompt": row["prompt"], "video_b64": base64.b64encode(data).decode(), **extra}


def info(server) -> dict:
    return httpx.get(server.url + "info").json()


def test_health_and_info(server, tiny_zoo):
    assert httpx.get(server.url + "health").json() == {"status": "ok"}
    described = info(server)
    assert described["dimensions"] == DIMENSIONS
    heuristic, learned = described["models"]
    assert (heuristic["name"], heuristic["kind"], heuristic["dtype"], heuristic["needs_prompt"]) == (
        "brightness,motion", "HeuristicReward", None, False)
    assert (learned["name"], learned["dtype"], learned["device"], learned["primary"], learned["needs_prompt"]) == (
        str(tiny_zoo / "videoreward"), "float32", "cpu", "overall", True)
    assert described["limits"] == {"max_body_bytes": 1024 * 1024, "max_batch": 8, "max_wait_ms": 200.0}
    assert described["vpt_version"]


def test_two_concurrent_clients_get_exactly_the_local_scores(server, clips, tiny_zoo, run_vpt, tmp_path):
    remote = [tmp_path / f"remote-{i}.parquet" for i in range(2)]
    clients = [subprocess.Popen([VPT, "score", "-m", server.url, clips, "--batch-size", "3", "-q", "-o", out],
                                stderr=subprocess.PIPE, text=True) for out in remote]
    local = run_vpt(["score", "-m", f"brightness,motion,{tiny_zoo / 'videoreward'}", clips, "--batch-size", "1",
                     "-q", "-o", tmp_path / "local.parquet"])
    assert local.exit_code == 0, local.stderr
    for client in clients:
        assert client.wait(120) == 0, client.stderr.read()
    expected = pq.read_table(tmp_path / "local.parquet")
    for out in remote:
        table = pq.read_table(out)
        assert table.column_names == expected.column_names
        assert set(table.column("model").to_pylist()) == {server.url}
        for column in ["id", "score", "error", *DIMENSIONS]:
            assert table.column(column).to_pylist() == expected.column(column).to_pylist(), column


def test_concurrent_requests_are_scored_in_one_batch(server, clips):
    items = [video_item(clips, row) for row in rows(clips)]
    barrier = threading.Barrier(2)

    def post(videos):
        barrier.wait()
        return httpx.post(server.url + "score", json={"model": "brightness,motion", "videos": videos}, timeout=60)

    before = info(server)["stats"]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(post, [items[:3], items[3:]]))
    after = info(server)["stats"]
    assert (after["batches"] - before["batches"], after["videos"] - before["videos"]) == (1, 6)
    for response, sent in zip(responses, [items[:3], items[3:]]):
        assert response.status_code == 200
        body = response.json()
        assert (body["model"], body["dimensions"]) == ("brightness,motion", ["brightness", "motion"])
        assert [result["id"] for result in body["results"]] == [item["id"] for item in sent]


def test_one_served_model_by_name(server, clips, tiny_zoo):
    from vpt.errors import VptError
    from vpt.rewards.registry import load_reward_model

    heuristics = load_reward_model(server.url + "?model=brightness%2Cmotion")
    assert (heuristics.dimensions, heuristics.primary, heuristics.needs_prompt) == (
        ("brightness", "motion"), "brightness", False)
    learned = load_reward_model(server.url + "?model=" + quote(str(tiny_zoo / "videoreward"), safe=""))
    assert (learned.dimensions, learned.needs_prompt) == (("vq", "mq", "ta", "overall"), True)
    with pytest.raises(VptError, match=r"the server serves no model 'nope'; it serves: brightness,motion, /"):
        load_reward_model(server.url + "?model=nope")


def test_a_video_the_server_cannot_read_is_that_videos_error(server, clips):
    from vpt.rewards.registry import load_reward_model

    model = load_reward_model(server.url + "?model=brightness%2Cmotion", batch_size=4)
    good, text = clips.parent / rows(clips)[0]["path"], clips.parent / "bad" / "text.mp4"
    scores = model.score([good, text, good], [None] * 3)
    assert scores["error"][0] is None and scores["error"][2] is None
    assert scores["error"][1].startswith("not a readable video")
    assert scores["brightness"][0] == scores["brightness"][2] and np.isnan(scores["brightness"][1])
    alone = model.score([text], [None])  # every video bad: the server answers 422, still one error per video
    assert alone["error"][0].startswith("not a readable video")


def raw_exchange(server, data: bytes, read: bool = True) -> bytes:
    host, port = server.url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(data)
        return connection.recv(65536) if read else b""


BAD_REQUESTS = {
    "not JSON": (b"{videos", 400, "the body is not JSON"),
    "no videos": (b'{"videos": []}', 400, "'videos' must be a non-empty list"),
    "path and bytes": (b'{"videos": [{"path": "a.mp4", "video_b64": "AAAA"}]}', 400,
                       "videos[0] must have exactly one of 'path' and 'video_b64'"),
    "bad base64": (b'{"videos": [{"video_b64": "***"}]}', 400, "videos[0].video_b64 is not valid base64"),
    "unknown model": (b'{"model": "nope", "videos": [{"path": "a.mp4"}]}', 404, "unknown model 'nope'"),
    "not a video": (b'{"model": "brightness,motion", "videos": [{"video_b64": "bm90IGEgdmlkZW8K"}]}', 422,
                    "none of the 1 videos could be scored (the first, '0': not a readable video"),
    "missing file": (b'{"videos": [{"path": "/no/such.mp4", "prompt": "x"}]}', 422, "'0': file not found"),
    "no prompt": (b'{"videos": [{"path": "/no/such.mp4"}]}', 400, "needs a prompt for every video and '0' has none"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_a_bad_request_gets_a_clear_error_and_the_server_goes_on(server, clips, name):
    body, status, message = BAD_REQUESTS[name]
    response = httpx.post(server.url + "score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]
    assert_serving(server, clips)


def assert_serving(server, clips) -> None:
    assert httpx.get(server.url + "health").json() == {"status": "ok"}
    item = video_item(clips, rows(clips)[0])
    response = httpx.post(server.url + "score", json={"videos": [item]}, timeout=60)
    assert response.status_code == 200 and response.json()["results"][0]["error"] is None


def test_a_body_over_the_limit_gets_413_whether_declared_or_streamed(server, clips):
    huge = b'{"videos": [{"video_b64": "' + b"A" * (1024 * 1024) + b'"}]}'
    declared = httpx.post(server.url + "score", content=huge)
    assert declared.status_code == 413 and "larger than the server's limit of 1048576 bytes" in declared.json()["error"]
    streamed = httpx.post(server.url + "score", content=iter([huge[i:i + 65536] for i in range(0, len(huge), 65536)]))
    assert streamed.status_code == 413
    assert_serving(server, clips)


def test_unknown_endpoints_and_methods_answer_in_json(server):
    assert httpx.get(server.url + "nothing").json() == {"error": "GET /nothing: Not Found"}
    response = httpx.get(server.url + "score")
    assert response.status_code == 405 and response.json() == {"error": "GET /score: Method Not Allowed"}


def test_a_client_that_goes_away_mid_request_leaves_the_server_serving(server, clips):
    head = (b"POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
            b"\r\n")
    raw_exchange(server, head + b'{"videos": [{"video_b', read=False)  # half a body, then gone
    body = b'{"videos": [{"path": "' + str(clips.parent / rows(clips)[0]["path"]).encode() + b'", "prompt": "x"}]}'
    whole = (b"POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    raw_exchange(server, whole, read=False)  # a whole request, gone before its answer
    raw_exchange(server, b"GET /hea", read=False)  # half a request line
    assert_serving(server, clips)


def test_rewardbench_through_the_server(server, run_vpt, tmp_path):
    for name, level in [("dark", 20), ("mid", 100), ("bright", 220)]:
        write_video(tmp_path / f"{name}.mp4", np.full((4, 32, 32, 3), level, np.uint8), fps=4)
    bench = tmp_path / "bench.csv"
    bench.write_text("path_A,path_B,prompt,VQ,MQ,TA\nbright.mp4,dark.mp4,a lamp,A,A,same\n"
                     "dark.mp4,mid.mp4,a lamp,B,A,same\nmid.mp4,bright.mp4,a lamp,same,B,A\n")
    mapping = ["--map", "VQ=brightness", "--map", "MQ=brightness", "--map", "TA=brightness"]
    remote = run_vpt(["eval", "rewardbench", bench, "-m", server.url + "?model=brightness%2Cmotion", "-q", *mapping])
    local = run_vpt(["eval", "rewardbench", bench, "-m", "brightness", "-q", *mapping])
    assert remote.exit_code == 0, remote.stderr
    assert remote.output == local.output and "VQ" in remote.output


def test_sigterm_finishes_the_request_in_flight_and_exits_0(clips):
    served = start_server("-m", "brightness", "--max-wait-ms", "1500", "-q")
    try:
        item = video_item(clips, rows(clips)[0])
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(httpx.post, served.url + "score", json={"videos": [item]}, timeout=60)
            while info(served)["stats"]["requests"] == 0:  # the request is queued, its batch still waiting
                pass
            served.process.terminate()
            assert served.process.wait(30) == 0, "\n".join(served.lines)
            response = waiting.result()
        assert response.status_code == 200 and response.json()["results"][0]["error"] is None
        with pytest.raises(httpx.ConnectError):
            httpx.get(served.url + "health")
    finally:
        served.stop()


def test_a_client_retries_until_the_server_is_up(clips):
    from vpt.rewards.registry import load_reward_model

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load_reward_model, f"http://127.0.0.1:{port}/?retries=6&timeout=30")
        served = start_server("-m", "brightness", "--max-wait-ms", "0", "-q", port=port)
        try:
            model = loading.result()
            assert model.dimensions == ("brightness",)
            scores = model.score([clips.parent / rows(clips)[0]["path"]], [None])
            assert scores["error"] == [None] and 0 < scores["brightness"][0] < 1
        finally:
            served.stop()
