"""`mmsr worker` as a child process: used by the demo, the benchmarks and the tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class WorkerProcess:
    """Start, health-wait, query, kill -9 and stop a worker configured through MMSR_ variables."""

    def __init__(self, env: dict[str, str], web_port: int, log: Path, cwd: Path | None = None):
        self.env, self.web_port, self.log, self.cwd, self.proc = env, web_port, Path(log), cwd, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout: float = 180.0) -> "WorkerProcess":
        return self.spawn().wait_healthy(timeout)

    def spawn(self) -> "WorkerProcess":
        """Start the process without waiting (several workers that should join a group together)."""
        full_env = {**os.environ, **self.env, "MMSR_WEB_PORT": str(self.web_port), "PYTHONUNBUFFERED": "1"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"],
                                         env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd)
        return self

    def wait_healthy(self, timeout: float = 180.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if self.get("/health")["status"] == "ok":
                    return self
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"worker not healthy in {timeout}s: {self.log.read_text()[-2000:]}")

    def get(self, path: str):
        """JSON (text for /metrics); None for a 404."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code != 503:
                raise
            body = err.read().decode()
        return body if path.startswith("/metrics") else json.loads(body)

    def metric(self, name: str) -> float:
        """Sum of a metric over its label sets."""
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if line.startswith(f"mmsr_{name}{{") or line.startswith(f"mmsr_{name} "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.5, message: str = "condition"):
    """Poll until predicate() is truthy and return it; AssertionError naming what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last={last!r}")
