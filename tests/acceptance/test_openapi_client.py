"""The OpenAPI document against a real client generator: ``openapi-python-client`` makes a
client from a running server's /openapi.json without a single warning, with a function for
every operation and a typed answer for every status the document lists (an error schema it
cannot place, such as two schemas titled alike, makes it drop that answer, or the whole
operation, with only a warning to say so)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from duly.api.openapi import install_openapi
from duly.api.schemas import ErrorOut
from live import Live, live_server  # tests/ is on sys.path (conftest.py)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BIN = Path(sys.executable).parent
GENERATOR = shutil.which("openapi-python-client", path=str(BIN)) or shutil.which(
    "openapi-python-client"
)

RULES = """\
timezone: UTC
rules:
  - name: invoice-due
    subject: invoice
    to: [customer]
    steps:
      - {name: due, at: "due_at"}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("openapi-client")
    (tmp / "templates").mkdir()
    (tmp / "templates" / "invoice-due.email.txt").write_text("Subject: due\n\nPay.\n")
    (tmp / "duly.yaml").write_text(RULES)
    with live_server(tmp, rules=tmp / "duly.yaml") as server:
        yield server


@pytest.fixture(scope="module")
def document(live: Live) -> dict[str, object]:
    r = httpx.get(f"{live.url}/openapi.json", timeout=10)
    r.raise_for_status()
    doc: dict[str, object] = r.json()
    return doc


def test_schema_titles_are_unique(document: dict[str, object]) -> None:
    schemas = document["components"]["schemas"]  # type: ignore[index]
    titles = Counter(s.get("title", name) for name, s in schemas.items())
    assert [t for t, n in titles.items() if n > 1] == []
    assert [name for name in schemas if "__" in name] == []  # FastAPI's name for a clash


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


@pytest.mark.skipif(GENERATOR is None, reason="openapi-python-client is not installed")
def test_openapi_python_client_generates_every_operation_without_warnings(
    document: dict[str, object], tmp_path: Path
) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(document))
    out = tmp_path / "client"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(spec), "--output-path", str(out)]
        + ["--meta", "none"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "Warning" not in log and "Unable" not in log and "Cannot" not in log, log

    generated: dict[tuple[str, str], str] = {}
    for module in (out / "api").rglob("*.py"):
        code = module.read_text()
        method = re.search(r'"method": "(\w+)"', code)
        url = re.search(r'"url": f?"([^"]+)"', code)
        if method and url:
            generated[(method.group(1), _shape(url.group(1)))] = code
    paths = document["paths"]
    missing, untyped = [], []
    for path, item in paths.items():  # type: ignore[attr-defined]
        for method, op in item.items():
            code = generated.get((method, _shape(path)))
            if code is None:
                missing.append(f"{method.upper()} {path}")
                continue
            for status in op["responses"]:
                if status.isdigit() and f"response.status_code == {status}:" not in code:
                    untyped.append(f"{method.upper()} {path}: {status}")
    assert missing == [], missing
    assert untyped == [], untyped


class ThingIn(BaseModel):
    name: str


def test_a_new_route_gets_the_error_answers_without_declaring_them() -> None:
    """The completion is central: a route module declares only its own errors."""
    app = FastAPI()

    @app.get("/v1/things", responses={404: {"model": ErrorOut, "description": "none"}})
    def list_things(limit: int = 10) -> dict[str, int]:
        return {"limit": limit}

    @app.post("/v1/things")
    def make_thing(body: ThingIn) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {}

    install_openapi(app)
    doc = app.openapi()
    ops = doc["paths"]["/v1/things"]
    assert sorted(ops["get"]["responses"]) == ["200", "401", "404", "413", "422"]
    assert sorted(ops["post"]["responses"]) == ["200", "400", "401", "413", "422"]
    assert sorted(doc["paths"]["/healthz"]["get"]["responses"]) == ["200"]
    for op in ops.values():
        for status, answer in op["responses"].items():
            if status != "200":
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorOut", (status, answer)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert app.openapi() is doc  # made once
