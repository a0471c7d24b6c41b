"""The documentation in the repository stands alone and stays true:

- every relative link in README.md, docs/ and examples/ leads to a file that exists (and to
  a heading of it, when the link names one);
- no page cites design notes that are not part of the repository;
- the generated references (HTTP API, command line) are what their scripts write now;
- the command blocks marked runnable run, in a fresh folder.

Marking a block runnable, in any Markdown file checked here::

    <!-- runnable -->
    ```sh
    duly rules check duly.yaml
    ```

runs it with ``bash -euo pipefail`` and requires exit status 0. A block marked
``<!-- file: PATH -->`` is not run: its text is written to ``PATH`` first, so a page can
show a rule file or a template and then the commands that use it. The blocks of one page
run in order, in one temporary folder of their own that holds a copy of ``examples/`` and
``.venv`` (a link to the virtualenv running the tests), with that virtualenv's ``bin`` first
on ``PATH`` and no ``DULY_*`` variable set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = {
    "docs/reference/http-api.md": "scripts/gen_api_reference.py",
    "docs/reference/cli.md": "scripts/gen_cli_reference.py",
}
# Design notes kept outside the repository: a clone or a package page has none of them.
FORBIDDEN = ("../shared", "spec/rules.md", "spec/simulate.md", "spec/api.md", "USE-CASES")


def pages() -> list[Path]:
    """README.md and every Markdown file under docs/ and examples/."""
    found = [ROOT / "README.md"]
    for folder in ("docs", "examples"):
        found += sorted((ROOT / folder).rglob("*.md"))
    return found


def rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


# --------------------------------------------------------------------------- links

FENCE_RE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN_RE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK_RE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK_RE = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.I)


def prose_of(text: str) -> str:
    """The text without fenced blocks and code spans (their brackets are not links)."""
    text = FENCE_RE.sub("", text)
    return CODE_SPAN_RE.sub("", text)


def links(text: str) -> list[str]:
    body = prose_of(text)
    return LINK_RE.findall(body) + REF_DEF_RE.findall(body) + HTML_LINK_RE.findall(body)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but ``-`` and
    ``_``), spaces to ``-``; inline Markdown (code, emphasis, links) reduced to its text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page, numbered as GitHub numbers repeats (``x``, ``x-1``)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE_RE.sub("", text), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    text = page.read_text(encoding="utf-8")
    problems = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{rel(page, root)}: {target}: no such file")
            continue
        if not dest.is_relative_to(root):
            problems.append(f"{rel(page, root)}: {target}: outside the repository")
            continue
        if anchor and dest.suffix == ".md":
            if anchor not in anchors(dest.read_text(encoding="utf-8")):
                where = rel(dest, root)
                problems.append(f"{rel(page, root)}: {target}: no heading #{anchor} in {where}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_checker_sees_what_it_must(tmp_path: Path) -> None:
    (tmp_path.parent / "x.md").write_text("# X\n")
    (tmp_path / "b.md").write_text("# Top\n\n## The `rule` file: keys\n\n## Top\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md) [ok](b.md#the-rule-file-keys) [ok](b.md#top-1) [ok](#here) "
        "[web](https://example.com/x) `[code](nowhere.md)`\n\n# Here\n\n"
        "```\n[in a block](nowhere.md)\n```\n"
        "[gone](missing.md) [bad anchor](b.md#nope) ![img](pic.png) [out](../x.md)\n"
    )
    problems = broken_links(page, tmp_path)
    assert [p.split(": ")[1] for p in problems] == ["missing.md", "b.md#nope", "pic.png", "../x.md"]


# --------------------------------------------------------------------------- citations


def cited_files() -> list[Path]:
    """Pages, plus every text file of the examples (rule files and templates)."""
    files = pages()
    for path in sorted((ROOT / "examples").rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".txt", ".html"):
            files.append(path)
    return files


@pytest.mark.parametrize("path", cited_files(), ids=rel)
def test_no_page_cites_notes_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found = [word for word in FORBIDDEN if word in text]
    assert found == [], (
        f"{rel(path)} mentions {found}: these notes are not in the repository; "
        "say it in the project's own words and link docs/ instead"
    )


# --------------------------------------------------------------------------- generated pages


@pytest.mark.parametrize("page", sorted(GENERATED), ids=str)
def test_the_generated_reference_is_up_to_date(page: str, tmp_path: Path) -> None:
    script = GENERATED[page]
    fresh = tmp_path / Path(page).name
    out = subprocess.run(
        [sys.executable, str(ROOT / script), "--output", str(fresh)],
        cwd=tmp_path,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"{script} failed:\n{out.stderr}"
    current = (ROOT / page).read_text(encoding="utf-8") if (ROOT / page).exists() else ""
    assert fresh.read_text(encoding="utf-8") == current, (
        f"{page} is out of date: run `.venv/bin/python {script}` and commit the result"
    )


# --------------------------------------------------------------------------- runnable blocks

BLOCK_RE = re.compile(
    r"^<!-- (runnable|file: ([^\s>]+)) -->[ \t]*\n(?:[ \t]*\n)?(`{3,})[^\n]*\n(.*?)^\3[ \t]*$",
    re.M | re.S,
)


def marked_blocks(text: str) -> list[tuple[str, str]]:
    """``[("run", code) | ("file:PATH", text), ...]`` in page order."""
    out = []
    for mark, path, _fence, body in BLOCK_RE.findall(text):
        out.append(("run", body) if mark == "runnable" else (f"file:{path}", body))
    return out


def pages_with_blocks() -> list[object]:
    """Pages with a runnable block; the examples' (whole simulations) are marked slow."""
    out: list[object] = []
    for p in pages():
        if any(k == "run" for k, _ in marked_blocks(p.read_text(encoding="utf-8"))):
            slow = p.is_relative_to(ROOT / "examples")
            out.append(pytest.param(p, id=rel(p), marks=[pytest.mark.slow] if slow else []))
    return out


def shell_env(**extra: str) -> dict[str, str]:
    """The user's environment: no DULY_* settings; this virtualenv's commands first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DULY")}
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "duly").exists():
        pytest.skip(f"not run from a virtualenv with duly installed ({venv})")
    (tmp_path / ".venv").symlink_to(venv)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    yield tmp_path


@pytest.mark.parametrize("page", pages_with_blocks())
def test_the_runnable_blocks_run(page: Path, folder: Path) -> None:
    for n, (kind, body) in enumerate(marked_blocks(page.read_text(encoding="utf-8")), 1):
        if kind.startswith("file:"):
            dest = folder / kind[len("file:") :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(body, encoding="utf-8")
            continue
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body],
            cwd=folder,
            env=shell_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, (
            f"{rel(page)}: marked block {n} exited {out.returncode}:\n{body}\n"
            f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
        )


def test_the_quickstart_and_the_readme_have_runnable_blocks() -> None:
    for page in ("README.md", "docs/quickstart.md"):
        kinds = [k for k, _ in marked_blocks((ROOT / page).read_text(encoding="utf-8"))]
        assert "run" in kinds, f"{page}: no block marked <!-- runnable -->"


def test_blocks_are_found_only_right_after_their_mark() -> None:
    text = (
        "<!-- file: t/a.txt -->\n```\nA\n```\n\n<!-- runnable -->\n\n```sh\necho hi\n```\n\n"
        "```sh\nnot marked\n```\n<!-- runnable -->\ntext between\n```sh\nnor this\n```\n"
    )
    assert marked_blocks(text) == [("file:t/a.txt", "A\n"), ("run", "echo hi\n")]


# --------------------------------------------------------------------------- coverage

SRC = ROOT / "src" / "duly"


def test_every_metric_is_documented() -> None:
    """Every metric the code defines is in docs/reference/metrics.md (found by reading the
    source, wherever its module lives)."""
    defined = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        defined |= set(
            re.findall(r"(?:Counter|Histogram|Gauge|GaugeMetricFamily)\(\s*\"(duly_\w+)\"", text)
        )
    assert len(defined) >= 8, f"the metrics were not found in {SRC}: {sorted(defined)}"
    page = (ROOT / "docs" / "reference" / "metrics.md").read_text(encoding="utf-8")
    missing = [m for m in sorted(defined) if m not in page]
    assert missing == [], f"docs/reference/metrics.md does not describe {missing}"


def rule_file_keys() -> set[str]:
    """The top-level, rule and step keys the loader accepts (the one place in this file that
    names duly's modules: adjust the import if they move)."""
    from duly.core.rules import loader, rulesyntax

    return set(loader.TOP_KEYS) | set(rulesyntax.RULE_KEYS) | set(rulesyntax.STEP_KEYS)


def test_every_rule_file_key_is_documented() -> None:
    """Every key the rule-file loader accepts is shown as `key` in docs/reference/rules.md."""
    page = (ROOT / "docs" / "reference" / "rules.md").read_text(encoding="utf-8")
    keys = rule_file_keys()
    keys |= {"days", "holidays", "closed", "hours", "calendar", "every", "count", "until"}
    keys |= {"change", "to", "from", "subject", "stats", "attempts", "delay", "factor"}
    keys |= {"window", "url", "body", "events", "secret", "secret_env", "type"}
    keys |= {"timeout", "max_output", "max_memory", "workers"}
    missing = sorted(k for k in keys if f"`{k}`" not in page and f"{k}:" not in page)
    assert missing == [], f"docs/reference/rules.md does not show {missing}"
