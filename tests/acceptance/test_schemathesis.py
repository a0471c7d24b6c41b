"""schemathesis against a real `duly serve`: every operation in its /openapi.json, fed
generated requests (valid and invalid), must never answer 5xx and must answer what the
document says.

How it is driven: schemathesis's Python API (``schemathesis.openapi.from_url`` on the live
server, ``APIOperation.as_strategy`` per operation under Hypothesis, ``as_state_machine``
for the stateful run). Not ``schemathesis.pytest.from_fixture``: with pytest 9.2 it fails
on ``Function._nodeid`` (removed from pytest), schemathesis 4.32.5.

Bounded for CI (2 CPUs, well under 3 minutes): a fixed seed, ``MAX_EXAMPLES`` cases per
operation (positive and negative), no shrinking, then ``STATEFUL_EXAMPLES`` short scenarios
along the links schemathesis infers from the document. The server is seeded first
(recipients, subjects with planned and sent deliveries, a one-off reminder, an event) and
half the cases of an operation with path parameters name those records, so GET, PATCH,
DELETE and the delivery actions reach real rows instead of only answering 404.

Checks on every response:

- ``not_a_server_error``: a 5xx is a bug (docs/reference/http-api.md).
- ``response_schema_conformance``: a documented status's body matches its schema.
- ``error_shape`` (ours): every 4xx body is ``{"error": {"code", "message", "field"}}``.
- ``known_status`` (ours): the operation's document lists the status (only 405, which
  belongs to a path rather than to an operation, may go unlisted). That the document lists
  the error statuses every operation can answer is asserted by
  :func:`test_openapi_documents_every_status`.
- stateful runs add ``use_after_free`` and ``ensure_resource_availability``.

Known bugs are kept out of the fuzzing (``known_bug``) so it stays strict for everything
else; each has a deterministic ``test_bug_*`` marked ``xfail(strict=True)`` that flips once
fixed. The counts (operations, examples, failures, statuses) go to the terminal at the end
of the module.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    ensure_resource_availability,
    response_schema_conformance,
    use_after_free,
)

from live import Live, live_server  # tests/ is on sys.path (conftest.py)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SEED = 20261126
MAX_EXAMPLES = 100  # generated requests per operation
STATEFUL_EXAMPLES = 25  # stateful scenarios
STATEFUL_STEPS = 10  # calls per scenario at most

# The API's error statuses (http-api.md: 400 401 404 405 409 413 422, in the error shape)
# must be listed by the operations that answer them, except 405: a method the path lacks.
UNLISTED_OK = {405}

# http-api.md's operations. Deletes come last: a DELETE of a seeded record would leave the
# operations after it nothing to find. Operations the document has beyond these (templates,
# stats, inbox … as they land) are fuzzed by test_other_operations.
OPERATIONS = [
    "PUT /v1/recipients/{rid}",
    "GET /v1/recipients/{rid}",
    "PUT /v1/subjects/{kind}/{key}",
    "GET /v1/subjects/{kind}/{key}",
    "POST /v1/subjects:batch",
    "POST /v1/events",
    "GET /v1/deliveries",
    "GET /v1/deliveries/{did}",
    "POST /v1/deliveries/{did}/send-now",
    "POST /v1/deliveries/{did}/cancel",
    "POST /v1/deliveries/{did}/retry",
    "POST /v1/reminders",
    "GET /v1/reminders/{rid}",
    "PATCH /v1/reminders/{rid}",
    "GET /v1/rules",
    "POST /v1/rules:check",
    "POST /v1/simulate",
    "GET /healthz",
    "GET /readyz",
    "DELETE /v1/reminders/{rid}",
    "DELETE /v1/subjects/{kind}/{key}",
    "DELETE /v1/recipients/{rid}",
]

# Success statuses beside the usual one (test_openapi_documents_every_status).
ALSO_ANSWERED = {
    "PUT /v1/recipients/{rid}": {201},  # a new recipient
    "POST /v1/events": {200},  # a repeated event id
}

RULES = """\
timezone: UTC
rules:
  - name: invoice-due
    subject: invoice
    if: "status == 'open'"
    to: [customer]
    steps:
      - name: due
        at: "due_at"
      - name: overdue
        at: "due_at + 1d"
  - name: paid
    subject: invoice
    on: paid
    category: transactional
    to: [customer]
"""
TEMPLATE = "{{ subject.key }}: {{ step.name }} for {{ recipient.name }}\n"


# --------------------------------------------------------------------------- known bugs


def _bad_template_name(name: str) -> bool:
    return not name or "\x00" in name or len(name.encode("utf-8", "surrogatepass")) > 255


def known_bug(label: str, case: Any) -> str | None:
    """The known bug a case would hit (see the test_bug_* tests), or None. When a test_bug_*
    flips (XPASS), remove its branch here so the fuzzing covers that input again. (None
    left: the empty reminder subject and bad simulate template names are fixed.)"""
    return None


# --------------------------------------------------------------------------- counts


class Tally:
    """What was run, for the closing summary."""

    def __init__(self) -> None:
        self.examples: Counter[str] = Counter()  # operation → requests made
        self.failures: Counter[str] = Counter()  # operation → failing runs
        self.statuses: Counter[int] = Counter()
        self.operations: set[str] = set()
        self.skipped_known = 0
        self.stateful_steps = 0
        self.stateful_failures = 0
        self.started = time.monotonic()

    def lines(self) -> list[str]:
        total = sum(self.examples.values())
        failed = sum(self.failures.values()) + self.stateful_failures
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        out = [
            f"schemathesis: {len(self.operations)} operations, {total} examples + "
            f"{self.stateful_steps} stateful calls, {failed} failures, "
            f"{self.skipped_known} cases left out as known bugs, "
            f"{time.monotonic() - self.started:.1f} s",
            f"schemathesis statuses: {codes}",
        ]
        if self.failures:
            out.append(
                "schemathesis failures: "
                + ", ".join(f"{k} ×{v}" for k, v in self.failures.most_common())
            )
        return out


TALLY = Tally()


# --------------------------------------------------------------------------- checks


def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx body is the one error shape of docs/reference/http-api.md."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} body is not JSON: {response.content[:200]!r}"
        ) from None
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict) and set(err) == {"code", "message", "field"}, (
        f"{response.status_code} body is not {{'error': {{code, message, field}}}}: {body!r}"
    )
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    assert err["field"] is None or isinstance(err["field"], str), body
    return True


def known_status(ctx: Any, response: Any, case: Any) -> bool | None:
    """A status the operation's document lists (or 405, which no operation lists)."""
    op = case.operation
    documented = set(op.definition.raw.get("responses", {}))
    code = response.status_code
    if str(code) in documented or "default" in documented or code in UNLISTED_OK:
        return True
    raise AssertionError(f"status {code} is not documented ({sorted(documented)})")


CHECKS = [not_a_server_error, response_schema_conformance, error_shape, known_status]
# Along links: a deleted record is gone, a created one can be read back.
STATEFUL_CHECKS = [*CHECKS, use_after_free, ensure_resource_availability]


# --------------------------------------------------------------------------- server


class ServerLog:
    """Drains the server's output (a full pipe would block it) and keeps the tail, so a
    failure can show the server's traceback."""

    def __init__(self, live: Live) -> None:
        self.lines: deque[str] = deque(maxlen=400)
        self._thread = threading.Thread(target=self._drain, args=(live,), daemon=True)
        self._thread.start()

    def _drain(self, live: Live) -> None:
        try:
            for line in live.proc.stdout or ():
                self.lines.append(line.rstrip("\n"))
        except (ValueError, OSError):  # closed by live_server's shutdown
            pass

    def tail(self, n: int = 60) -> str:
        return "\n".join(list(self.lines)[-n:])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    (tmp / "templates").mkdir()
    for name in ("invoice-due", "paid"):
        (tmp / "templates" / f"{name}.email.txt").write_text(TEMPLATE)
    (tmp / "duly.yaml").write_text(RULES)
    with live_server(tmp, rules=tmp / "duly.yaml") as server:
        yield server


@pytest.fixture(scope="module")
def server_log(live: Live) -> ServerLog:
    return ServerLog(live)


def auth(live: Live) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.key}"}


@pytest.fixture(scope="module")
def seeded(live: Live, server_log: ServerLog) -> dict[str, list[Any]]:
    """Records for path parameters to name: recipients, subjects, deliveries, a reminder."""
    now = datetime.now(UTC)
    with httpx.Client(base_url=live.url, headers=auth(live), timeout=10) as c:
        for rid in ("r1", "r2"):
            c.put(f"/v1/recipients/{rid}", json={"name": rid, "email": f"{rid}@x.test"})
        for key, due in (("INV-1", now + timedelta(hours=1)), ("INV-2", now - timedelta(hours=1))):
            r = c.put(
                f"/v1/subjects/invoice/{key}",
                json={
                    "attributes": {"status": "open", "due_at": due.isoformat()},
                    "recipients": {"customer": "r1"},
                },
            )
            r.raise_for_status()
        c.post("/v1/events", json={"id": "ev-1", "name": "paid", "subject": "invoice/INV-1"})
        r = c.post(
            "/v1/reminders",
            json={
                "title": "Call back",
                "recipients": ["r1", "r2"],
                "send_at": (now + timedelta(hours=2)).isoformat(),
            },
        )
        r.raise_for_status()
        reminder = r.json()["id"]
        end = time.monotonic() + 10  # INV-2's first step is due now: wait until it is sent
        while True:
            items = c.get("/v1/deliveries", params={"limit": 500}).json()["items"]
            if any(d["state"] == "sent" for d in items) or time.monotonic() > end:
                break
            time.sleep(0.2)
    return {
        "rid": ["r1", "r2"],
        "subject": [("invoice", "INV-1"), ("invoice", "INV-2")],
        "did": sorted(d["id"] for d in items),
        "reminder": [reminder],
    }


@pytest.fixture(scope="module")
def api_schema(live: Live, request: pytest.FixtureRequest) -> Any:
    """The document as the real server serves it."""
    config = schemathesis.Config.from_dict(
        {"seed": SEED, "headers": auth(live), "request-timeout": 30}
    )
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=config)

    def summary() -> None:
        plugins = request.config.pluginmanager
        reporter = plugins.get_plugin("terminalreporter")
        capture = plugins.get_plugin("capturemanager")
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in TALLY.lines():
                reporter.write_line(line)

    request.addfinalizer(summary)
    return schema


def operations(schema: Any) -> dict[str, Any]:
    ops = [r.ok() for r in schema.get_all_operations()]
    return {f"{op.method.upper()} {op.path}": op for op in ops}


# --------------------------------------------------------------------------- fuzzing


def seeded_path_parameters(op: Any, seeded: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Path parameters naming seeded records, for the operations that take them."""
    path = op.path
    if path.startswith("/v1/recipients/"):
        return [{"rid": r} for r in seeded["rid"]]
    if path.startswith("/v1/subjects/{"):
        return [{"kind": k, "key": v} for k, v in seeded["subject"]]
    if path.startswith("/v1/deliveries/{"):
        return [{"did": d} for d in seeded["did"]]
    if path.startswith("/v1/reminders/{"):
        return [{"rid": r} for r in seeded["reminder"]]
    return []


def strategy_for(op: Any, seeded: dict[str, list[Any]]) -> Any:
    """Valid and invalid requests; half of them (where the path names a record) aimed at
    seeded records."""
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    anywhere = st.one_of([op.as_strategy(m) for m in modes])
    # With the path fixed, a negative case needs something else to break: a body.
    aimed_modes = modes if op.body else modes[:1]
    aimed = [
        op.as_strategy(m, path_parameters=p)
        for p in seeded_path_parameters(op, seeded)
        for m in aimed_modes
    ]
    return st.one_of(anywhere, st.one_of(aimed)) if aimed else anywhere


def fuzz(
    label: str, op: Any, seeded: dict[str, list[Any]], live: Live, server_log: ServerLog
) -> None:
    headers = auth(live)
    TALLY.operations.add(label)

    @seed(SEED)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure
    )
    @given(case=strategy_for(op, seeded))
    def run(case: Any) -> None:
        if known_bug(label, case):
            TALLY.skipped_known += 1
            assume(False)
        TALLY.examples[label] += 1
        response = case.call(headers=headers, timeout=30)
        TALLY.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        run()
    except BaseException as exc:  # schemathesis raises a BaseExceptionGroup
        TALLY.failures[label] += 1
        exc.add_note("server log (tail):\n" + server_log.tail())
        raise


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation(
    label: str,
    api_schema: Any,
    seeded: dict[str, list[Any]],
    live: Live,
    server_log: ServerLog,
) -> None:
    """MAX_EXAMPLES generated requests to one operation, each response checked."""
    ops = operations(api_schema)
    assert label in ops, f"{label} is not in /openapi.json (docs/reference/http-api.md names it)"
    fuzz(label, ops[label], seeded, live, server_log)


def test_other_operations(
    api_schema: Any,
    seeded: dict[str, list[Any]],
    live: Live,
    server_log: ServerLog,
    subtests: pytest.Subtests,
) -> None:
    """Operations in the document beyond OPERATIONS get the same treatment."""
    for label, op in operations(api_schema).items():
        if label not in OPERATIONS and not label.endswith("/inbox/stream"):
            with subtests.test(msg=label):
                fuzz(label, op, seeded, live, server_log)


def test_stateful(api_schema: Any, live: Live, server_log: ServerLog) -> None:
    """Short sequences of calls along the links schemathesis infers from the document
    (create → read → change → delete)."""
    headers = auth(live)

    class Machine(api_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers, "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            TALLY.stateful_steps += 1
            TALLY.statuses[response.status_code] += 1
            label = f"{case.operation.method.upper()} {case.operation.path}"
            if known_bug(label, case):
                TALLY.skipped_known += 1
                return
            case.validate_response(
                response, checks=STATEFUL_CHECKS, headers=headers, recorder=self.recorder
            )

    try:
        Machine.run(
            settings=settings(
                max_examples=STATEFUL_EXAMPLES,
                stateful_step_count=STATEFUL_STEPS,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
        )
    except BaseException as exc:
        TALLY.stateful_failures += 1
        exc.add_note("server log (tail):\n" + server_log.tail())
        raise


# --------------------------------------------------------------------------- the document


def test_openapi_documents_every_status(live: Live) -> None:
    doc = httpx.get(f"{live.url}/openapi.json").json()
    problems = []
    for path, ops in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            label = f"{method.upper()} {path}"
            need = {"401"} | {str(c) for c in ALSO_ANSWERED.get(label, ())}
            if op.get("parameters") or op.get("requestBody"):
                need.add("422")
            if op.get("requestBody"):
                need |= {"400", "413"}  # not JSON; too large
            if "{" in path and method != "put" and label in OPERATIONS:  # known to 404
                need.add("404")
            if "/deliveries/{did}/" in path or (
                method in ("patch", "delete") and "/reminders/" in path
            ):
                need.add("409")
            missing = need - set(op["responses"])
            if missing:
                problems.append(f"{label}: {sorted(missing)} not documented")
            body = op["responses"].get("422", {}).get("content", {}).get("application/json", {})
            if body.get("schema", {}).get("$ref", "").endswith("HTTPValidationError"):
                problems.append(f"{label}: 422 documented as FastAPI's {{detail: […]}}")
    assert not problems, "\n".join(problems)


def test_openapi_documents_the_api_key(live: Live) -> None:
    doc = httpx.get(f"{live.url}/openapi.json").json()
    schemes = doc.get("components", {}).get("securitySchemes", {})
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    assert all("security" in op for p, ops in doc["paths"].items() if p.startswith("/v1/")
               for op in ops.values())  # fmt: skip


# --------------------------------------------------------------------------- known bugs


def test_a_reminder_with_an_empty_subject_is_refused(
    live: Live, seeded: dict[str, list[Any]]
) -> None:
    send_at = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    with httpx.Client(base_url=live.url, headers=auth(live), timeout=10) as c:
        made = c.post(
            "/v1/reminders", json={"title": "t", "recipients": ["r2"], "send_at": send_at}
        )
        assert made.status_code == 201, made.text
        rid = made.json()["id"]
        patched = c.patch(f"/v1/reminders/{rid}", json={"subject": ""})
        assert patched.status_code == 422, patched.text
        created = c.post(
            "/v1/reminders",
            json={"title": "t", "recipients": ["r2"], "send_at": send_at, "subject": ""},
        )
        assert created.status_code == 422, created.text


@pytest.mark.parametrize("name", ["", "a\x00b", "é" * 150])
def test_simulate_refuses_bad_template_names(live: Live, name: str) -> None:
    body = {"rules": "rules: []\n", "timeline": "", "templates": {name: "x"}}
    # a fresh connection each time: after a 500 the server drops the kept-alive one
    r = httpx.post(f"{live.url}/v1/simulate", json=body, headers=auth(live), timeout=10)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("field", ["recipients", "channels"])
def test_a_repeated_recipient_or_channel_is_one_delivery(
    live: Live, seeded: dict[str, list[Any]], field: str
) -> None:
    """Was a 500 (UNIQUE constraint), found by the fuzzing; fixed in d42c4e6."""
    send_at = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    body: dict[str, Any] = {"title": "t", "recipients": ["r2"], "send_at": send_at}
    body[field] = ["r2", "r2"] if field == "recipients" else ["email", "email"]
    r = httpx.post(f"{live.url}/v1/reminders", json=body, headers=auth(live), timeout=10)
    # either answer is fine (one delivery per recipient and channel, or a 422), not a 500
    assert r.status_code in (201, 422), r.text
    if r.status_code == 201:
        assert r.json()["counts"]["total"] == 1, r.text
