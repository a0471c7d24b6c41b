"""A real `duly serve` process for acceptance tests: temp database, free port, an API key."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DULY = [sys.executable, "-m", "duly.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    url: str
    key: str
    database: str
    proc: subprocess.Popen[str]
    env: dict[str, str]

    def log(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout and self.proc.poll() is not None else ""


def make_key(database: str, env: dict[str, str], name: str = "tests") -> str:
    out = subprocess.run(
        [*DULY, "keys", "create", "--name", name, "--database", database],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def live_server(
    tmp: Path,
    *,
    rules: str | Path | None = None,
    database: str | None = None,
    demo: bool = False,
    extra_env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Live]:
    """Start `duly serve` (SQLite file in ``tmp`` unless ``database`` is given) and yield its
    URL and a fresh API key; stop it with SIGTERM afterwards."""
    port = free_port()
    database = database or f"sqlite:///{tmp / 'duly.db'}"
    env = {
        **os.environ,
        "DULY_PORT": str(port),
        "DULY_DATABASE_URL": database,
        "DULY_LOG_LEVEL": os.environ.get("DULY_TEST_LOG_LEVEL", "warning"),
        **(extra_env or {}),
    }
    if rules is not None:
        env["DULY_RULES"] = str(rules)
    else:
        env.pop("DULY_RULES", None)
    subprocess.run(
        [*DULY, "migrate", "--database", database], env=env, check=True, capture_output=True
    )
    key = make_key(database, env)
    args = [*DULY, "serve", "--demo" if demo else "--no-demo"]
    proc = subprocess.Popen(
        args, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if json.load(r)["status"] == "ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > end:
            out = proc.communicate(timeout=5)[0] if proc.poll() is None else proc.stdout.read()  # type: ignore[union-attr]
            proc.kill()
            raise RuntimeError(f"duly serve did not start:\n{out}")
        time.sleep(0.1)
    try:
        yield Live(url, key, database, proc, env)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
