"""How long `duly simulate` takes for a year of 1,000 subjects with 3 steps each.

Target: under 30 s on a 2-core machine. Prints one table.

    .venv/bin/python bench/simulate.py [--subjects 1000] [--no-render]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from duly.engine.simulation import simulate_files

RULES = """
timezone: Europe/London
rules:
  - name: invoice-reminders
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    window: {hours: "09:00-17:00", days: [mon, tue, wed, thu, fri]}
    steps:
      - {name: due-soon, at: "due_at - 3d", time: "09:00", template: note}
      - {name: overdue, at: "due_at + 1d", template: note}
      - {name: final, at: "due_at + 14d", time: "12:00", template: note}
"""


def timeline(n: int, seed: int = 7) -> str:
    rnd = random.Random(seed)
    start = datetime(2026, 1, 1, 8, tzinfo=UTC)
    lines = []
    zones = ["Europe/London", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
    for i in range(50):
        lines.append(
            (
                start,
                {
                    "recipient": {
                        "id": f"c{i}",
                        "email": f"c{i}@example.test",
                        "timezone": zones[i % 4],
                    }
                },
            )
        )
    events = []
    for i in range(n):
        created = start + timedelta(minutes=rnd.randrange(0, 365 * 24 * 60 - 60 * 24 * 30))
        due = created + timedelta(days=rnd.randrange(5, 40))
        subj = {
            "kind": "invoice",
            "key": f"INV-{i}",
            "attributes": {"status": "sent", "due_at": due.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "recipients": {"customer": f"c{i % 50}"},
        }
        events.append((created, {"subject": subj}))
        if rnd.random() < 0.4:  # 40% pay before the ladder ends
            paid = dict(subj, attributes=dict(subj["attributes"], status="paid"))
            events.append((due + timedelta(days=rnd.randrange(-2, 10)), {"subject": paid}))
    events.sort(key=lambda e: e[0])
    out = []
    for at, obj in lines + events:
        out.append(json.dumps({"at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), **obj}))
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--no-render", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        (p / "templates").mkdir()
        (p / "templates" / "note.email.txt").write_text(
            "Subject: {{ subject.key }}: {{ step.name }}\nDue {{ date(attributes.due_at) }}\n"
        )
        (p / "duly.yaml").write_text(RULES)
        (p / "timeline.jsonl").write_text(timeline(args.subjects))
        t0 = time.perf_counter()
        rows = simulate_files(p / "duly.yaml", p / "timeline.jsonl", render=not args.no_render)
        dt = time.perf_counter() - t0
    by: dict[str, int] = {}
    for r in rows:
        k = r["outcome"] + (f"/{r['reason']}" if r["reason"] else "")
        by[k] = by.get(k, 0) + 1
    print(f"{'benchmark':<40} {'figure':>12} {'target':>10}")
    label = f"simulate: 1 year, {args.subjects} subjects x 3 steps"
    print(f"{label:<40} {dt:>10.1f} s {'< 30 s':>10}  {'PASS' if dt < 30 else 'MISS'}")
    print(
        f"{'outcomes':<40} {len(rows):>12}   "
        + ", ".join(f"{k}: {v}" for k, v in sorted(by.items()))
    )


if __name__ == "__main__":
    main()
