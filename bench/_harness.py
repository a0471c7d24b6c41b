"""Shared set-up for the benchmarks (``bench/faults.py``, ``bench/api.py``,
``bench/dispatch.py``): children in process groups of their own that are killed at exit, a
PostgreSQL cluster of the harness's own, scratch databases (a PostgreSQL database made and
dropped on a server given by URL, an SQLite file and its WAL), ``duly serve`` / ``duly
worker`` processes and waiting until they answer, a small JSON client for the HTTP API,
which TCP connections a process holds, percentiles, and saving a report's table and data
under ``bench/out/``.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
DULY = [sys.executable, "-m", "duly.cli"]


# --------------------------------------------------------------------------- processes

_children: list[subprocess.Popen[Any]] = []


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
    """A child in its own process group, killed at exit if still running."""
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    _children.append(p)
    return p


def reap(p: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Stop ``p`` (SIGTERM to its group, SIGKILL after ``timeout``) and forget it."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        except ProcessLookupError:
            pass
    forget(p)


def forget(p: subprocess.Popen[Any]) -> None:
    if p in _children:
        _children.remove(p)


@atexit.register
def _reap_all() -> None:
    for p in list(_children):
        reap(p, 5)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # atexit and ``finally`` do not run when SIGTERM kills Python: raise instead, so a
    # benchmark stopped with ``kill`` still stops its servers and drops its databases.
    raise SystemExit(128 + signum)


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- PostgreSQL


class PgCluster:
    """A PostgreSQL cluster of the harness's own (Debian's ``pg_createcluster``), so that
    restarting it never disturbs the server other tests use. Made with ``trust`` auth when
    missing; :meth:`close` stops it, and drops it when this object made it."""

    def __init__(self, name: str = "dulyfaults", port: int = 5544, version: str | None = None):
        self.name, self.port = name, port
        self.version = version or self.installed_version()
        self.made = False

    @staticmethod
    def installed_version() -> str:
        root = Path("/etc/postgresql")
        versions = sorted((p.name for p in root.iterdir()), key=float) if root.is_dir() else []
        if not versions:
            raise RuntimeError("no PostgreSQL found (/etc/postgresql is empty or missing)")
        return versions[-1]

    @staticmethod
    def tools_missing() -> str | None:
        """Why a cluster cannot be made here, or None."""
        for tool in ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster"):
            if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(":")):
                return f"{tool} not found (Debian's postgresql-common)"
        try:
            PgCluster.installed_version()
        except RuntimeError as exc:
            return str(exc)
        if os.geteuid() != 0:
            return "making a PostgreSQL cluster needs root"
        return None

    @property
    def conf_dir(self) -> Path:
        return Path("/etc/postgresql") / self.version / self.name

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, *args],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip

    def ensure(self) -> None:
        if (self.conf_dir / "postgresql.conf").exists():  # made before (a run that died)
            m = re.search(
                r"^\s*port\s*=\s*(\d+)", (self.conf_dir / "postgresql.conf").read_text(), re.M
            )
            if m:
                self.port = int(m.group(1))
        else:
            log(f"creating PostgreSQL cluster {self.version}/{self.name} on port {self.port}")
            subprocess.run(
                ["pg_createcluster", self.version, self.name, "-p", str(self.port),
                 "--", "--auth-local=trust", "--auth-host=trust"],
                check=True, capture_output=True, timeout=300,
            )  # fmt: skip
            self.made = True
        conf = self.conf_dir / "conf.d"
        conf.mkdir(exist_ok=True)
        # room for serve + workers + the harness; a restart must not wait for a checkpoint
        (conf / "duly-faults.conf").write_text(
            "listen_addresses = '127.0.0.1'\nmax_connections = 200\nfsync = on\n"
        )
        hba = self.conf_dir / "pg_hba.conf"
        line = "host all all 127.0.0.1/32 trust\n"
        if line not in hba.read_text():
            hba.write_text(line + hba.read_text())
        status = subprocess.run(
            ["pg_ctlcluster", self.version, self.name, "status"], capture_output=True
        )
        if status.returncode == 0:
            self._ctl("reload")
        else:
            self._ctl("start")
        self.wait()

    def wait(self, timeout: float = 60) -> None:
        """Until the server accepts connections."""
        end = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                r = subprocess.run(
                    ["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
                )
                if r.returncode == 0:
                    return
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"PostgreSQL cluster {self.name} did not come up")
            time.sleep(0.2)

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")
        self.wait()

    def admin(self) -> Any:
        import sqlalchemy as sa

        return sa.create_engine(
            self.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )

    def fresh_database(self, name: str) -> str:
        eng = self.admin()
        try:
            with eng.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            eng.dispose()
        return self.url(name)

    def drop_database(self, name: str) -> None:
        eng = self.admin()
        try:
            with eng.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            eng.dispose()

    def close(self, drop: bool | None = None) -> None:
        """Stop the cluster; drop it if it was made here (or ``drop`` says so)."""
        try:
            self._ctl("stop", "-m", "fast")
        except subprocess.CalledProcessError:
            pass
        if drop if drop is not None else self.made:
            subprocess.run(
                ["pg_dropcluster", self.version, self.name], capture_output=True, timeout=120
            )
            # pg_dropcluster leaves files it did not make (conf.d/duly-faults.conf)
            shutil.rmtree(self.conf_dir, ignore_errors=True)


# --------------------------------------------------------------------------- scratch databases


# the server's own databases: a URL naming one names the server, not a scratch database
_SHARED_DATABASES = {None, "", "postgres", "template0", "template1"}


class ScratchPostgres:
    """A scratch database on the PostgreSQL server of ``url``: named ``dbname`` (else the
    URL's database, else ``default``), dropped and made again by :meth:`create`, dropped by
    :meth:`close` if made. A bare ``postgresql://`` URL gets the psycopg 3 driver. A URL
    naming ``postgres`` (or a template) means the server: ``default`` is used; a URL naming
    a database whose name does not start with ``duly`` is refused (``test`` would have been
    dropped)."""

    def __init__(self, url: str, dbname: str | None = None, default: str = "duly_bench") -> None:
        import sqlalchemy as sa
        from sqlalchemy.engine import make_url

        u = make_url(url)
        if u.drivername in ("postgresql", "postgres"):
            u = u.set(drivername="postgresql+psycopg")
        name = u.database if u.database not in _SHARED_DATABASES else None
        self.dbname = dbname or name or default
        if dbname is None and not self.dbname.startswith("duly"):
            # it is dropped and made again: never a database that may hold someone's data
            raise SystemExit(
                f"{url}: refusing to use {self.dbname!r} as a scratch database (it is dropped"
                " and made again); name one starting with 'duly', e.g. …/duly_bench, or give"
                " the server's URL …/postgres"
            )
        self.url = u.set(database=self.dbname).render_as_string(hide_password=False)
        self._admin = sa.create_engine(
            u.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )
        self._made = False

    def check(self) -> None:
        """Raises when the server does not answer."""
        with self._admin.connect() as c:
            c.exec_driver_sql("SELECT 1")

    def drop(self) -> None:
        with self._admin.connect() as c:
            # FORCE: a connection left by a phase that failed must not keep the scratch db.
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')

    def create(self) -> str:
        """A new empty database (the old one dropped first); returns its URL."""
        self.drop()
        with self._admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{self.dbname}"')
        self._made = True
        return self.url

    def drop_orphans(self, prefix: str) -> list[str]:
        """Drop databases left by runs that died (named PREFIX<pid> of no live process)."""
        with self._admin.connect() as c:
            names = c.exec_driver_sql("SELECT datname FROM pg_database").scalars().all()
            gone = [
                n
                for n in names
                if n.startswith(prefix)
                and n[len(prefix) :].isdigit()
                and not Path(f"/proc/{n[len(prefix) :]}").exists()
            ]
            for n in gone:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
        return gone

    def close(self) -> None:
        if self._made:
            self.drop()
        self._admin.dispose()


def remove_sqlite(path: Path) -> None:
    """Delete an SQLite database file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------- duly processes


def duly_env(database: str, rules: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DULY_")}
    env.update(
        DULY_DATABASE_URL=database,
        DULY_RULES=str(rules),
        DULY_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def migrate_and_key(env: dict[str, str], cwd: Path) -> str:
    """Migrate the database and make an API key; returns the key."""
    subprocess.run([*DULY, "migrate"], env=env, cwd=cwd, check=True, capture_output=True,
                   timeout=180)  # fmt: skip
    out = subprocess.run(
        [*DULY, "keys", "create", "--name", "bench"],
        env=env, cwd=cwd, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


@dataclass
class DulyProc:
    """A ``duly serve`` or ``duly worker`` that can be killed and started again; every
    incarnation logs to a file of its own in ``root``."""

    kind: str  # serve | worker
    name: str
    env: dict[str, str]
    root: Path
    args: list[str] = field(default_factory=list)
    port: int | None = None  # serve
    proc: subprocess.Popen[Any] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> int:
        self.starts += 1
        path = self.root / f"{self.name}-{self.starts}.log"
        self.logs.append(path)
        cmd = [*DULY, self.kind, *self.args]
        if self.kind == "serve":
            cmd += ["--no-demo", "--port", str(self.port)]
        with open(path, "w") as f:  # a file, not a pipe: a full pipe would stall it
            self.proc = spawn(cmd, cwd=self.root, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        return self.proc.pid

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> int | None:
        """SIGKILL (the process only: its group has nothing else); returns the pid."""
        if self.proc is None:
            return None
        pid = self.proc.pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        forget(self.proc)
        return pid

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            reap(self.proc, timeout)

    def wait_http(self, timeout: float = 90, path: str = "/healthz") -> None:
        """Until ``path`` answers 200 (serve): ``/healthz`` once it listens, ``/readyz``
        once its database and dispatcher are ready too."""
        assert self.port is not None
        end = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if not self.alive() or time.monotonic() > end:
                tail = self.logs[-1].read_text()[-3000:] if self.logs else ""
                raise RuntimeError(f"duly {self.kind} did not start:\n{tail}")
            time.sleep(0.1)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


class Api:
    """A small JSON client for ``duly serve``'s HTTP API."""

    def __init__(self, port: int, key: str) -> None:
        self.base, self.key = f"http://127.0.0.1:{port}", key

    def call(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None


# --------------------------------------------------------------------------- sockets


def _socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def tcp_ports_to(pids: list[int], remote_port: int) -> dict[int, int]:
    """Local port -> pid, for each TCP connection one of ``pids`` holds to ``remote_port``."""
    by_inode: dict[int, int] = {}
    for pid in pids:
        for inode in _socket_inodes(pid):
            by_inode[inode] = pid
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            if int(f[2].rsplit(":", 1)[1], 16) != remote_port:
                continue
            pid = by_inode.get(int(f[9]))
            if pid is not None:
                out[int(f[1].rsplit(":", 1)[1], 16)] = pid
    return out


# --------------------------------------------------------------------------- reports


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN of no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def report_console() -> Any:
    """A rich console that records what it prints, for :func:`save_report`."""
    from rich.console import Console

    return Console(record=True, width=160)


def save_report(console: Any, name: str, data: dict[str, Any]) -> None:
    """What ``console`` printed as ``bench/out/NAME-<stamp>.txt`` and ``NAME-latest.txt``,
    and ``data`` as ``NAME-<stamp>.json`` and ``NAME-latest.json``."""
    OUT_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = console.export_text()
    raw = json.dumps(data, indent=2, default=str)
    for suffix in (stamp, "latest"):
        (OUT_DIR / f"{name}-{suffix}.txt").write_text(text)
        (OUT_DIR / f"{name}-{suffix}.json").write_text(raw)
