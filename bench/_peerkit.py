"""What ``bench/peers.py`` and its peer drivers (``bench/_peer_drivers.py``, run by each
peer's own virtualenv) share; the standard library only, so every virtualenv can import it.

- :class:`Sampler` — a thread that reads ``/proc`` every 0.2 s: the peak of the summed RSS of
  a system's processes (its root processes and all their descendants) and the CPU time
  (utime + stime, and what they reaped) of those processes and of the database server's
  processes (PostgreSQL backends serving one database, ``redis-server``), each process from
  when it was first seen (a process born meanwhile counts from 0).
- :func:`pct` — nearest-rank percentiles.
- The workload's constants (the lateness rate, the far-future offset of the schedule row).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence

HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
RATE = 83.0  # reminders/s of the lateness row
FAR_S = 86_400.0  # the schedule row's reminders are due a day ahead: nothing runs meanwhile
WINDOW_FAR_S = 3_600.0  # ... spread over an hour


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN of no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(name, ppid, own ticks, reaped children's ticks) of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, _, tail = f.read().rpartition(")")
    except OSError:
        return None
    v = tail.split()
    return head.partition("(")[2], int(v[1]), int(v[11]) + int(v[12]), int(v[13]) + int(v[14])


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def server_pids(pg_database: str | None = None, redis: bool = False) -> list[int]:
    """PostgreSQL backends whose title names ``pg_database``, and ``redis-server``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = _stat(int(d))
        if st is None:
            continue
        if redis and st[0] == "redis-server":
            out.append(int(d))
        elif pg_database and st[0] == "postgres" and f" {pg_database} " in _cmdline(int(d)):
            out.append(int(d))
    return out


class Sampler:
    """Peak summed RSS of the system's processes, and CPU seconds of them and of the
    servers', sampled every ``interval`` seconds in a thread between :meth:`start` and
    :meth:`stop` (which takes a last sample: call it before the processes stop)."""

    def __init__(
        self,
        roots: Callable[[], Iterable[int]],
        servers: Callable[[], Iterable[int]] = lambda: (),
        interval: float = 0.2,
    ) -> None:
        self.roots, self.servers, self.interval = roots, servers, interval
        self.peak_rss = 0
        self._sys_first: dict[int, int] = {}
        self._sys_last: dict[int, int] = {}
        self._srv_first: dict[int, int] = {}
        self._srv_last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._initial = True

    def _tree(self) -> set[int]:
        roots = {p for p in self.roots() if p}
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = _stat(int(d))
                if st is not None:
                    children.setdefault(st[1], []).append(int(d))
        tree, todo = set(), list(roots)
        while todo:
            p = todo.pop()
            if p not in tree:
                tree.add(p)
                todo.extend(children.get(p, ()))
        return tree

    def sample(self) -> None:
        tree = self._tree()
        rss = 0
        for pid in tree:
            st = _stat(pid)
            if st is None:
                continue
            ticks = st[2] + st[3]
            self._sys_first.setdefault(pid, ticks if self._initial else 0)
            self._sys_last[pid] = ticks
            rss += _rss(pid)
        self.peak_rss = max(self.peak_rss, rss)
        for pid in self.servers():
            st = _stat(pid)
            if st is None or pid in tree:
                continue
            self._srv_first.setdefault(pid, st[2] if self._initial else 0)
            self._srv_last[pid] = st[2]
        self._initial = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # a process gone between listing and reading
                pass

    def start(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.sample()
        system = sum(self._sys_last[p] - self._sys_first[p] for p in self._sys_last) / HZ
        server = sum(self._srv_last[p] - self._srv_first[p] for p in self._srv_last) / HZ
        return {
            "peak_rss_mb": self.peak_rss / 1e6,
            "cpu_system_s": system,
            "cpu_server_s": server,
            "processes": len(self._sys_last),
            "server_processes": len(self._srv_last),
        }


def wait_until(t: float) -> None:
    while (d := t - time.time()) > 0:
        time.sleep(min(d, 0.5))
