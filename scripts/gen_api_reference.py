#!/usr/bin/env python3
"""Write docs/reference/http-api.md from the app's OpenAPI document.

    .venv/bin/python scripts/gen_api_reference.py            # writes docs/reference/http-api.md
    .venv/bin/python scripts/gen_api_reference.py --output F  # writes F instead

The page lists every path and method with its parameters, request body, answers and error
statuses, then every schema. tests/acceptance/test_docs.py fails when the page in the
repository differs from what this script writes: run it after changing the API.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "reference" / "http-api.md"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the server answers at /openapi.json, made offline: the app
    factory on the bundled rules and a throw-away SQLite file. The one place that names
    duly's modules: adjust these imports if they move."""
    from duly.app import create_app
    from duly.core.rules.loader import load_rules
    from duly.engine.runtime import BUNDLED_RULES, build_runtime

    with tempfile.TemporaryDirectory() as tmp:
        runtime = build_runtime(load_rules(BUNDLED_RULES), f"sqlite:///{tmp}/openapi.db")
        try:
            return create_app(runtime, ui=False).openapi()
        finally:
            runtime.db.dispose()


METHODS = ("get", "put", "post", "patch", "delete")
# Docstrings in the code cite design notes that are not part of the repository; the page
# points at the project's own documentation instead.
CITATIONS = {
    " (spec/simulate.md)": "",
    " (spec/api.md)": "",
    "(docs/reference/simulate.md)": "([simulate.md](simulate.md))",
}


def prose(text: str) -> str:
    """A docstring as one paragraph of Markdown."""
    out = " ".join(text.split()).replace("``", "`")
    for old, new in CITATIONS.items():
        out = out.replace(old, new)
    return out


def first_sentence(text: str) -> str:
    text = prose(text)
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_of(schema: dict[str, Any]) -> str:
    """A short type: ``string``, ``integer ≥ 1``, ``[DeliveryOut]``, ``string | null``."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{name.lower()})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(type_of(s) for s in schema[key])
    if "const" in schema:
        return f"`{schema['const']!r}`"
    if "enum" in schema:
        return " | ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_of(schema.get('items', {}))}"
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"object of {type_of(extra)}"
        return "object"
    out = str(kind)
    if "format" in schema:
        out += f" ({schema['format']})"
    limits = []
    for key, sign in (("minimum", "≥"), ("maximum", "≤")):
        if key in schema:
            limits.append(f"{sign} {schema[key]}")
    for key, sign in (("minLength", "length ≥"), ("maxLength", "length ≤")):
        if key in schema:
            limits.append(f"{sign} {schema[key]}")
    if "pattern" in schema:
        limits.append(f"matching `{schema['pattern']}`")
    if limits:
        out += ", " + ", ".join(limits)
    return out


def cell(text: Any) -> str:
    """Text fit for one table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def body_schema(content: dict[str, Any]) -> tuple[str, str] | None:
    """(media type, type) of a request or answer body."""
    for media, value in content.items():
        return media, type_of(value.get("schema", {}))
    return None


def operation(lines: list[str], method: str, path: str, op: dict[str, Any]) -> None:
    lines += [f"### `{method.upper()} {path}`", ""]
    text = (op.get("description") or op.get("summary") or "").strip()
    if text:
        lines += [prose(text), ""]
    auth = "API key (`Authorization: Bearer KEY`)" if op.get("security") else "none"
    lines += [f"Authentication: {auth}.", ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | type | required | default |", "|---|---|---|---|---|"]
        for p in params:
            schema = p.get("schema", {})
            default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
            required = "yes" if p.get("required") else "no"
            lines.append(
                f"| `{p['name']}` | {p['in']} | {cell(type_of(schema))} | {required} | {default} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        found = body_schema(body.get("content", {}))
        if found:
            lines += [f"Request body ({found[0]}): {found[1]}.", ""]
    lines += ["| status | meaning | body |", "|---|---|---|"]
    for status, answer in op.get("responses", {}).items():
        found = body_schema(answer.get("content", {}))
        shown = f"{found[1]} ({found[0]})" if found else ""
        lines.append(f"| {status} | {cell(answer.get('description', ''))} | {cell(shown)} |")
    lines.append("")


def schema_section(lines: list[str], name: str, schema: dict[str, Any]) -> None:
    lines += [f"### {name}", ""]
    if schema.get("description"):
        lines += [prose(schema["description"]), ""]
    props = schema.get("properties")
    if not props:
        lines += [f"Type: {type_of({k: v for k, v in schema.items() if k != 'title'})}.", ""]
        return
    required = set(schema.get("required", []))
    lines += ["| field | type | required | description |", "|---|---|---|---|"]
    for field, spec in props.items():
        desc = prose(spec.get("description", ""))
        if "default" in spec and spec["default"] is not None:
            desc = (desc + f" (default `{json.dumps(spec['default'])}`)").strip()
        req = "yes" if field in required else "no"
        lines.append(f"| `{field}` | {cell(type_of(spec))} | {req} | {cell(desc)} |")
    if schema.get("additionalProperties") is False:
        lines += ["", "Other fields are refused (422)."]
    lines.append("")


def error_statuses(doc: dict[str, Any]) -> list[str]:
    """Every 4xx/5xx status the document lists, with what it means where it is used."""
    seen: dict[str, dict[str, int]] = {}
    for item in doc["paths"].values():
        for method in METHODS:
            for status, answer in item.get(method, {}).get("responses", {}).items():
                if status[:1] in "45":
                    meanings = seen.setdefault(status, {})
                    text = cell(prose(answer.get("description", "")))
                    meanings[text] = meanings.get(text, 0) + 1
    lines = [
        "## Error statuses",
        "",
        "| status | meaning (operations that answer it) |",
        "|---|---|",
    ]
    for status in sorted(seen):
        said = "; ".join(f"{text} ({n})" for text, n in seen[status].items())
        lines.append(f"| {status} | {said} |")
    return lines + [""]


def render(doc: dict[str, Any]) -> str:
    lines = [
        "# HTTP API reference",
        "",
        "<!-- Generated by scripts/gen_api_reference.py from the OpenAPI document: do not edit",
        "by hand; run `.venv/bin/python scripts/gen_api_reference.py` after changing the API. -->",
        "",
        prose(doc["info"].get("description", "")),
        "",
        "The running server answers the same document at `/openapi.json`, browsable at `/docs`",
        "(Swagger UI) and `/redoc`. Every error answer has the body",
        '`{"error": {"code": "...", "message": "...", "field": "..."}}` ([ErrorOut](#errorout)):',
        "`code` is a stable machine-readable word, `message` says what to change, `field` names",
        "the input at fault when there is one. A 5xx answer is a bug in duly.",
        "",
        "## Operations",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                tag = (item[method].get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((method, path, item[method]))
    lines += ["| method and path | what it does |", "|---|---|"]
    for ops in by_tag.values():
        for method, path, op in ops:
            summary = first_sentence(op.get("description") or op.get("summary") or "")
            anchor = _slug(f"{method.upper()} {path}")
            lines.append(f"| [`{method.upper()} {path}`](#{anchor}) | {cell(summary)} |")
    lines.append("")
    lines += error_statuses(doc)
    for tag, ops in by_tag.items():
        lines += [f"## {tag.capitalize()}", ""]
        for method, path, op in ops:
            operation(lines, method, path, op)
    lines += ["## Schemas", ""]
    for name, schema in sorted(doc.get("components", {}).get("schemas", {}).items()):
        schema_section(lines, name, schema)
    return "\n".join(lines).rstrip("\n") + "\n"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading (code spans lose their backticks)."""
    import re

    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    args.output.write_text(render(openapi_document()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
