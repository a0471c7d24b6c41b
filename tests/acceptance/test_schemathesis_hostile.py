"""Hostile values over every operation of a real `duly serve`, on SQLite and PostgreSQL:
schemathesis generates a valid request for each operation in /openapi.json, and Hypothesis
then replaces one or two of its values — a path or query parameter, or any value inside
the JSON body — with an edge case: JSON nested 40 to 500 levels deep, lone surrogates, NUL
bytes, instants out of range (``9999-12-31T23:59:59-12:00``), huge and negative numbers,
huge and malformed paging cursors, very long text. The answer is never a 5xx, and every 4xx
is the API's one error shape.

(tests/acceptance/test_schemathesis.py checks what the document promises for generated
requests; this module checks only "no 5xx, and errors in the one shape" for hostile ones.)

Bounded for CI: a fixed seed, ``EXAMPLES`` requests per operation and backend, no
shrinking; about a minute per backend.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from live import Live, live_server  # tests/ is on sys.path (conftest.py)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SEED = 20261204
EXAMPLES = 25  # hostile requests per operation and backend

RULES = """\
timezone: UTC
rules:
  - name: invoice-due
    subject: invoice
    if: "status == 'open'"
    to: [customer]
    steps:
      - {name: due, at: "due_at"}
  - name: paid
    subject: invoice
    on: paid
    to: [customer]
"""
TEMPLATE = "{{ subject.key }}: {{ step.name if step else 'paid' }}\n"


def deep(n: int) -> Any:
    v: Any = "x"
    for i in range(n):
        v = {"a": v} if i % 2 else [v]
    return v


def cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


# In a URL (path and query): what a URL can carry (a surrogate cannot be percent-encoded).
URL_VALUES = [
    "a\x00b", "\x00", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
    "10000-01-01T00:00:00Z", "1899-12-31T23:59:59Z", "9" * 30, "-1", "0", "1e309",
    cursor("d:" + "9" * 30), cursor("w:" + "9" * 30), cursor("d:-1"), cursor("d:0"),
    cursor("d:9223372036854775808"), "not-a-cursor!", "x" * 3000, "%", "..", "é/ключ",
]  # fmt: skip
# In a JSON body: anything JSON can spell.
BODY_VALUES = [
    "\ud800", "x\udfff", "a\x00b", {"a\x00": 1}, {"\ud800": 1}, deep(40), deep(120),
    deep(500), "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00",
    "1899-12-31T23:59:59Z", 10**30, -(10**30), 2**63, 1e308, -1e308, 0, -1, "", [], {},
    "x" * 100_000, [deep(30)] * 3, None, True, "rules:\n  - name: r\n    on: e\n    to: [c]\n"
    '    if: "x < 99999999999999999999999d"\n',
]  # fmt: skip


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    (tmp / "templates").mkdir()
    for name in ("invoice-due", "paid"):
        (tmp / "templates" / f"{name}.email.txt").write_text(TEMPLATE)
    (tmp / "duly.yaml").write_text(RULES)
    if request.param == "sqlite":
        with live_server(tmp, rules=tmp / "duly.yaml") as server:
            yield server
        return
    with request.getfixturevalue("pg_database")() as database:
        with live_server(tmp, rules=tmp / "duly.yaml", database=database) as server:
            yield server


def auth(live: Live) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.key}"}


@pytest.fixture(scope="module")
def seeded(live: Live) -> dict[str, list[Any]]:
    now = datetime.now(UTC)
    with httpx.Client(base_url=live.url, headers=auth(live), timeout=10) as c:
        for rid in ("r1", "r2"):
            c.put(f"/v1/recipients/{rid}", json={"name": rid, "email": f"{rid}@x.test"})
        c.put(
            "/v1/subjects/invoice/INV-1",
            json={
                "attributes": {"status": "open", "due_at": (now + timedelta(hours=1)).isoformat()},
                "recipients": {"customer": "r1"},
            },
        ).raise_for_status()
        r = c.post(
            "/v1/reminders",
            json={
                "title": "t",
                "recipients": ["r1"],
                "send_at": (now + timedelta(hours=2)).isoformat(),
            },
        )
        r.raise_for_status()
        items = c.get("/v1/deliveries").json()["items"]
    return {
        "rid": ["r1"],
        "kind": ["invoice"],
        "key": ["INV-1"],
        "did": [d["id"] for d in items][:2],
        "reminder": [r.json()["id"]],
        "name": ["invoice-due"],
    }


@pytest.fixture(scope="module")
def operations(live: Live) -> dict[str, Any]:
    config = schemathesis.Config.from_dict({"seed": SEED, "headers": auth(live)})
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=config)
    ops = [r.ok() for r in schema.get_all_operations()]
    return {f"{op.method.upper()} {op.path}": op for op in ops if not op.path.endswith("/stream")}


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a JSON body a value can be put (the body itself included)."""
    out = [path]
    if len(path) < 4:
        if isinstance(value, dict):
            for k, v in value.items():
                out += leaves(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                out += leaves(v, (*path, i))
    return out


def put(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    body[path[0]] = put(body[path[0]], path[1:], value)
    return body


def error_shape(r: httpx.Response) -> None:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    if 400 <= r.status_code < 500 and r.request.url.path.startswith("/v1/"):
        body = r.json()
        err = body.get("error") if isinstance(body, dict) else None
        assert isinstance(err, dict) and set(err) == {"code", "message", "field"}, body


def run_operation(op: Any, live: Live, seeded: dict[str, list[Any]]) -> None:
    query_names = [
        p["name"] for p in op.definition.raw.get("parameters", []) if p.get("in") == "query"
    ]
    fixed = {}
    for name in {
        p["name"] for p in op.definition.raw.get("parameters", []) if p.get("in") == "path"
    }:
        key = "reminder" if name == "rid" and "/reminders/" in op.path else name
        if key in seeded and seeded[key]:
            fixed[name] = seeded[key][0]

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(
        case=op.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed or None),
        data=st.data(),
    )
    def one(case: Any, data: st.DataObject) -> None:
        path_params = dict(case.path_parameters or {})
        query = dict(case.query or {})
        body = json.loads(json.dumps(case.body)) if isinstance(case.body, dict | list) else None
        for _ in range(data.draw(st.integers(1, 2))):
            targets: list[tuple[str, Any]] = [("path", k) for k in path_params]
            targets += [("query", k) for k in query_names]
            if body is not None:
                targets += [("body", p) for p in leaves(body)]
            if not targets:
                break
            where, name = data.draw(st.sampled_from(targets))
            if where == "body":
                value = data.draw(st.sampled_from(BODY_VALUES))
                body = put(body, name, json.loads(json.dumps(value)))  # a copy of its own
            elif where == "path":
                path_params[name] = data.draw(st.sampled_from(URL_VALUES))
            else:
                query[name] = data.draw(st.sampled_from(URL_VALUES))
        url = op.path
        for k, v in path_params.items():
            url = url.replace("{" + k + "}", quote(str(v), safe=""))
        content = None if body is None else json.dumps(body)  # surrogates as \u escapes
        headers = {**auth(live), "content-type": "application/json"}
        with httpx.Client(base_url=live.url, timeout=30) as c:  # a fresh connection each
            r = c.request(op.method.upper(), url, params=query, content=content, headers=headers)
        error_shape(r)

    one()


def test_no_hostile_value_gets_a_5xx(
    live: Live, seeded: dict[str, list[Any]], operations: dict[str, Any], subtests: Any
) -> None:
    for label, op in sorted(operations.items()):
        with subtests.test(msg=label):
            run_operation(op, live, seeded)
    # the server is still up and answering
    assert httpx.get(f"{live.url}/readyz", timeout=10).status_code == 200
