"""The SMTP channel alone: N messages sent by T threads (the dispatcher's send pool) through
``SmtpChannel`` to a sink in a subprocess. CPU per 1,000 messages of this process (the
channel, its threads) and of the sink, read from /proc, separately.

    .venv/bin/python bench/smtp_send.py                          # aiosmtpd sink
    .venv/bin/python bench/smtp_send.py --sink lean --pipelining # lean sink offering PIPELINING
    .venv/bin/python bench/smtp_send.py --threads 1 --profile out.prof

No database, no renderer: what the drain spends around the channel is not here
(``bench/drain_cpu.py --channel smtp`` measures the whole).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _smtp_sink import sink  # noqa: E402

from duly.delivery.channels.base import Message  # noqa: E402
from duly.delivery.channels.smtp import SmtpChannel  # noqa: E402

_HZ = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / _HZ


def message(i: int) -> Message:
    return Message(
        to=f"user{i}@example.test",
        title=f"Invoice INV-{i} is due",
        text=f"Hello user {i},\nyour invoice INV-{i} is due tomorrow.\n",
        html=None,
        message_id=f"{i:032x}",
        recipient_id=f"r{i}",
        recipient_name=f"User {i}",
        headers={"X-Duly-Delivery": str(i), "X-Duly-Rule": "invoices", "X-Duly-Step": "due"},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="messages")
    ap.add_argument("--threads", type=int, default=8, help="sending threads (send_workers)")
    ap.add_argument("--connections", type=int, default=4, help="max_connections")
    ap.add_argument("--sink", choices=["aiosmtpd", "lean"], default="aiosmtpd")
    ap.add_argument("--pipelining", action="store_true", help="the sink offers PIPELINING")
    ap.add_argument("--profile", help="cProfile (of the first thread only) to this file")
    a = ap.parse_args(argv)
    messages = [message(i) for i in range(a.n)]
    with sink(a.sink, a.pipelining) as s:
        chan = SmtpChannel(
            "email",
            url=f"smtp://127.0.0.1:{s.port}",
            from_="Bench <bench@duly.test>",
            max_connections=a.connections,
        )
        chan.send(message(-1 % 10**6))  # connect once outside the measurement
        it = iter(messages)
        lock = threading.Lock()
        errors: list[BaseException] = []
        prof = cProfile.Profile(time.thread_time) if a.profile else None  # CPU, not waits

        def work(first: bool) -> None:
            if first and prof:
                prof.enable()
            try:
                while True:
                    with lock:
                        m = next(it, None)
                    if m is None:
                        break
                    chan.send(m)
            except BaseException as exc:
                errors.append(exc)
            finally:
                if first and prof:
                    prof.disable()

        threads = [threading.Thread(target=work, args=(i == 0,)) for i in range(a.threads)]
        load0 = os.getloadavg()[0]
        c0, k0, t0 = cpu(os.getpid()), cpu(s.pid), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - t0
        c1, k1 = cpu(os.getpid()), cpu(s.pid)
        chan.close()
        got = s.received()
    if errors or got != a.n + 1:
        print(f"WRONG: errors {errors[:3]}, sink received {got}, expected {a.n + 1}")
        return 1
    own, kid = (c1 - c0) * 1000 / a.n, (k1 - k0) * 1000 / a.n
    print(
        f"{s.label}; {a.threads} threads, {a.connections} connections: {a.n:,} messages in"
        f" {secs:.2f} s = {a.n / secs:,.0f}/s; CPU per 1,000: channel {own:.3f} s,"
        f" sink {kid:.3f} s; load {load0:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    if prof:
        prof.dump_stats(a.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
