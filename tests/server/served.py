"""A real ``vpt serve`` subprocess on 127.0.0.1, started and stopped by the server tests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

VPT = str(Path(sys.executable).with_name("vpt"))
READY = re.compile(r"^vpt serve: (http://\S+) \(")


@dataclass
class Served:
    """A running ``vpt serve``: its URL, process and every stderr line so far."""

    url: str
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_server(*args, port: int = 0, timeout: float = 120.0) -> Served:
    """``vpt serve --port PORT ARGS`` started and ready (its ready line read from stderr); the caller stops it."""
    process = subprocess.Popen([VPT, "serve", "--port", str(port), *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()
    found: list[str] = []

    def read() -> None:  # keeps draining stderr, so the server never blocks on a full pipe
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            match = READY.match(line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            break
    if not found:
        process.kill()
        process.wait()
        raise AssertionError("vpt serve did not become ready:\n" + "\n".join(lines))
    return Served(found[0], process, lines)
