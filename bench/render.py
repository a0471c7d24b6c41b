"""The cost of one render: plain Jinja in this process, duly's Renderer in this process
(sandbox size checks, helpers, streamed output cap), and the bounded path every render takes
(a render process of duly.delivery.rendering.pool, killed over render.timeout / render.max_memory).

Prints one table, microseconds per render (median of several rounds), side by side; the
last two columns are throughput (wall time per render with several renders in flight):

    .venv/bin/python bench/render.py [--n 2000] [--rounds 5] [--threads 4]

Figures on the development machine are in bench/README.md ("Rendering").
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment

from duly.core.model import Recipient, RenderLimits
from duly.delivery.rendering import Renderer
from duly.delivery.rendering.pool import RenderPool

LINE = "Subject: Invoice {{ subject.key }} is due\nHello {{ recipient.name }}.\n"
EMAIL_TXT = """Subject: Invoice {{ subject.key }} is due {{ attributes.due_at|date }}

Hello {{ recipient.name }},

{% for line in attributes.lines %}- {{ line.what }}: {{ money(line.amount, 'EUR') }}
{% endfor %}
Total: {{ money(attributes.total, 'EUR') }}, due {{ attributes.due_at|relative }}.
"""
EMAIL_HTML = """<html><head><style>p { color: #333; } .total { font-weight: bold; }</style></head>
<body><p>Hello {{ recipient.name }},</p><ul>
{% for line in attributes.lines %}<li>{{ line.what }}: {{ money(line.amount, 'EUR') }}</li>
{% endfor %}</ul><p class="total">Total {{ money(attributes.total, 'EUR') }}</p></body></html>
"""

RECIPIENT = Recipient("c1", name="Alice", email="alice@example.test", timezone="Europe/Paris")
NOW = datetime(2026, 3, 2, 8, tzinfo=UTC)


def context(i: int) -> dict:
    return {
        "subject": {"kind": "invoice", "key": f"INV-{i}"},
        "recipient": {"name": "Alice"},
        "attributes": {
            "due_at": "2026-03-10T09:00:00Z",
            "total": 120.5,
            "lines": [{"what": f"item {j}", "amount": 10 + j} for j in range(5)],
        },
        "now": NOW,
    }


POOLS: list[RenderPool] = []
CPU: dict[str, list[float]] = {}  # label -> CPU µs per render of each round


def cpu_seconds() -> float:
    """CPU time of this process and of its render processes (from /proc)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pool in POOLS:
        for pid in pool.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except OSError:
                pass
    return total


def per_render_us(
    fn: Callable[[int], object], n: int, rounds: int, label: str = "", per_call: int = 1
) -> float:
    fn(0)  # compile, caches, worker start
    times, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), cpu_seconds()
        for i in range(n):
            fn(i)
        times.append((time.perf_counter() - t0) / (n * per_call) * 1e6)
        cpu.append((cpu_seconds() - c0) / (n * per_call) * 1e6)
    if label:
        CPU[label] = cpu
    return statistics.median(times)


def threaded_us(fn: Callable[[int], object], n: int, threads: int) -> float:
    """Wall time per render with ``threads`` callers at once (throughput, not latency)."""
    per = n // threads

    def run() -> None:
        for i in range(per):
            fn(i)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return (time.perf_counter() - t0) / (per * threads) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="renders per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=4, help="callers in the threaded row")
    args = ap.parse_args()

    d = Path(tempfile.mkdtemp(prefix="duly-bench-render-"))
    (d / "line.email.txt").write_text(LINE)
    (d / "email.email.txt").write_text(EMAIL_TXT)
    (d / "email.email.html").write_text(EMAIL_HTML)

    plain = Environment(autoescape=False)
    plain_line = plain.from_string(LINE)
    plain_email = plain.from_string(
        "{% set money = money %}" + EMAIL_TXT.replace("|date", "").replace("|relative", "")
    )

    def money(amount: float, currency: str) -> str:
        return f"{amount:.2f} {currency}"

    here = Renderer(d, isolated=False)
    pool = RenderPool(2)
    POOLS.append(pool)
    bounded = Renderer(d, limits=RenderLimits(), pool=pool)
    bounded.start()

    rows: list[tuple[str, list[float]]] = []
    for label, name in (("one line, txt", "line"), ("email, txt + html + CSS", "email")):
        jinja_fn: Callable[[int], object]
        if name == "line":

            def jinja_fn(i: int) -> object:
                return plain_line.render(context(i))

        else:

            def jinja_fn(i: int) -> object:
                return plain_email.render(context(i), money=money)

        def here_fn(i: int, name: str = name) -> object:
            return here.render(name, "email", context(i), recipient=RECIPIENT)

        def bounded_fn(i: int, name: str = name) -> object:
            return bounded.render(name, "email", context(i), recipient=RECIPIENT)

        batch = [
            {"name": name, "channel": "email", "context": context(i), "recipient": RECIPIENT}
            for i in range(200)
        ]

        def many_fn(i: int, batch: list = batch) -> object:
            # one call renders 200 (counted as 200 renders below)
            return bounded.render_many(batch)

        rows.append(
            (
                label,
                [
                    per_render_us(jinja_fn, args.n, args.rounds, f"{label}/jinja"),
                    per_render_us(here_fn, args.n, args.rounds, f"{label}/here"),
                    per_render_us(bounded_fn, args.n, args.rounds, f"{label}/bounded"),
                    threaded_us(bounded_fn, args.n, args.threads),
                    per_render_us(
                        many_fn, max(1, args.n // 200), args.rounds, f"{label}/many", 200
                    ),
                ],
            )
        )
    bounded.close()

    heads = [
        "template",
        "plain Jinja",
        "Renderer in-process",
        "bounded (1 caller)",
        f"bounded ({args.threads} callers, 2 workers)",
        "bounded render_many (200 per call, 2 workers)",
    ]
    print(f"µs per render, median of {args.rounds} rounds of {args.n}")
    print(" | ".join(heads))
    print(" | ".join("---" for _ in heads))
    for label, values in rows:
        print(" | ".join([label, *(f"{v:,.0f}" for v in values)]))
    print(
        "\nCPU µs per render (this process and the render processes together; "
        "what a busy machine pays), median:"
    )
    kinds = [("jinja", "plain Jinja"), ("here", "in-process"), ("bounded", "bounded")]
    kinds.append(("many", "render_many"))
    print(" | ".join(["template", *(k[1] for k in kinds)]))
    print(" | ".join("---" for _ in range(len(kinds) + 1)))
    for label, _ in rows:
        cells = [f"{statistics.median(CPU[f'{label}/{k}']):,.0f}" for k, _ in kinds]
        print(" | ".join([label, *cells]))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
