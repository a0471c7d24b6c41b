"""Per-locale variants of a template (NAME.LOCALE.CHANNEL.EXT) and the language a template's
dates and money are written in: the variant's own language; for the plain file the rule
file's ``template_language`` when set, else the recipient's locale. Real files, real Jinja2
and Babel; the rule-file checks through the real loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from duly.core.model import Recipient
from duly.core.rules.loader import RuleFileError, load_rules, load_rules_text
from duly.core.templatenames import locale_chain, split_variant
from duly.delivery.rendering import Renderer

BODY = "{{ date('2026-12-08') }} {{ money(1234.5, 'EUR') }}\n"
CTX = {"now": "2026-12-01T09:00:00Z"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "inv.email.txt").write_text("EN " + BODY)
    (d / "inv.fr.email.txt").write_text("FR " + BODY)
    (d / "inv.pt-BR.email.txt").write_text("BR " + BODY)
    return d


def text(r: Renderer, locale: str | None, name: str = "inv", **kw: object) -> str:
    out = r.render(name, "email", CTX, locale=locale, timezone="UTC", **kw).text  # type: ignore[arg-type]
    assert out is not None
    return out.strip()


def test_locale_chain_falls_back_from_region_to_language() -> None:
    assert locale_chain("fr_CA") == ["fr-CA", "fr_CA", "fr"]
    assert locale_chain("fr-ca") == ["fr-CA", "fr_CA", "fr"]
    assert locale_chain("de") == ["de"]
    assert locale_chain("") == [] and locale_chain(None) == []


def test_split_variant_knows_a_locale_from_another_name_part() -> None:
    assert split_variant("invoice-overdue.fr") == ("invoice-overdue", "fr")
    assert split_variant("invoice-overdue.pt-BR") == ("invoice-overdue", "pt-BR")
    assert split_variant("report.old") is None  # not a language
    assert split_variant("report.v2") is None
    assert split_variant("plain") is None


def test_the_recipients_locale_chooses_the_variant_with_fallback(folder: Path) -> None:
    r = Renderer(folder, isolated=False)
    assert text(r, "fr_CA").startswith("FR 8 déc. 2026")  # fr-CA → fr
    assert text(r, "fr_CA").endswith("1\xa0234,50\xa0€")  # French words, Canadian region
    assert text(r, "pt_BR").startswith("BR ")
    assert text(r, "pt_PT").startswith("EN ")  # no pt, no pt-PT: the plain file
    assert text(r, None).startswith("EN Dec 8, 2026")


def test_the_plain_file_follows_the_recipient_unless_the_rule_file_sets_a_language(
    folder: Path,
) -> None:
    # the contract: no declared language, the recipient's locale
    assert text(Renderer(folder, isolated=False), "es_ES") == "EN 8 dic 2026 1.234,50\xa0€"
    # template_language: the plain file is English; a recipient of the same language keeps
    # their regional forms
    r = Renderer(folder, isolated=False, template_language="en_GB")
    assert text(r, "es_ES") == "EN 8 Dec 2026 €1,234.50"
    assert text(r, "en_US") == "EN Dec 8, 2026 €1,234.50"
    assert text(r, "fr_FR").startswith("FR 8 déc. 2026")  # a variant still wins


def test_a_variant_is_chosen_in_a_render_process_too(folder: Path) -> None:
    r = Renderer(folder, template_language="en")
    try:
        assert text(r, "fr_BE").startswith("FR 8 déc. 2026")
        many = r.render_many(
            [
                {"name": "inv", "channel": "email", "context": CTX, "locale": "fr"},
                {"name": "inv", "channel": "email", "context": CTX, "locale": "es"},
            ]
        )
        assert [m.text.split()[0] for m in many] == ["FR", "EN"]  # type: ignore[union-attr]
    finally:
        r.close()


def test_variants_false_renders_the_name_as_given(folder: Path) -> None:
    r = Renderer(folder, isolated=False)
    assert text(r, "fr_FR", variants=False).startswith("EN 8 déc. 2026")
    # a name that is a variant writes in its own language, whoever reads it
    assert text(r, "es_ES", name="inv.fr", variants=False).startswith("FR 8 déc. 2026")


def test_a_variant_needs_only_one_of_its_parts(folder: Path) -> None:
    (folder / "inv.email.html").write_text("<p>EN</p>")
    r = Renderer(folder, isolated=False)
    out = r.render("inv", "email", CTX, locale="fr", timezone="UTC")
    assert out.text is not None and out.text.startswith("FR") and out.html is None
    recipient = Recipient("r", locale="fr_FR", timezone="Europe/Paris")
    assert r.render("inv", "email", CTX, recipient=recipient).text.startswith("FR")  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the rule file

RULES = "rules:\n  - {name: inv, subject: invoice, to: [customer], at: due_at}\n"


def test_template_language_is_a_top_level_key_checked_on_load(folder: Path) -> None:
    rf = load_rules_text(
        "template_language: en_GB\n" + RULES, path="x/duly.yaml", templates_dir=str(folder)
    )
    assert rf.template_language == "en_GB"
    assert (
        load_rules_text(RULES, path="x/duly.yaml", templates_dir=str(folder)).template_language
        is None
    )
    with pytest.raises(RuleFileError) as info:
        load_rules_text("template_language: xx_klingon\n" + RULES, templates_dir=str(folder))
    assert "template_language" in str(info.value)


def test_a_variant_of_an_existing_template_loads_and_one_of_a_missing_template_is_an_error(
    folder: Path,
) -> None:
    (folder / "inv.de.email.html").write_text("<p>DE</p>")  # no inv.email.html: fine
    (folder / "receipt.fr.email.txt").write_text("FR")  # no receipt.email.*: an error
    (folder / "report.old.email.txt").write_text("not a variant")  # "old" is no language
    rules = folder.parent / "duly.yaml"
    rules.write_text(RULES)
    with pytest.raises(RuleFileError) as info:
        load_rules(rules, environ={})
    errs = info.value.errors
    assert len(errs) == 1, errs
    assert "receipt.fr.email.txt" in errs[0].message and "receipt.email.txt" in errs[0].message
    (folder / "receipt.fr.email.txt").unlink()
    assert load_rules(rules, environ={}).rules[0].name == "inv"


# --------------------------------------------------------------------------- duly simulate


def test_duly_simulate_renders_the_recipients_variant(folder: Path) -> None:
    from duly.cli import main

    rules = folder.parent / "duly.yaml"
    rules.write_text("template_language: en_GB\n" + RULES)
    timeline = folder.parent / "t.jsonl"
    lines = [
        {
            "at": "2026-12-01T08:00:00Z",
            "recipient": {"id": "f", "locale": "fr_CA", "email": "f@x.test"},
        },
        {
            "at": "2026-12-01T08:00:00Z",
            "recipient": {"id": "e", "locale": "es_ES", "email": "e@x.test"},
        },
    ]
    for rid in ("f", "e"):
        lines.append(
            {
                "at": "2026-12-01T08:00:00Z",
                "subject": {
                    "kind": "invoice",
                    "key": f"I-{rid}",
                    "attributes": {"due_at": "2026-12-08T09:00:00Z"},
                    "recipients": {"customer": rid},
                },
            }
        )
    timeline.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = CliRunner().invoke(
        main, ["simulate", str(rules), str(timeline), "--until", "2026-12-31T00:00:00Z"]
    )
    assert res.exit_code == 0, res.stderr
    got = {json.loads(x)["recipient"]: json.loads(x)["title"] for x in res.stdout.splitlines()}
    assert got["f"].startswith("FR 8 déc. 2026"), got
    assert got["e"].startswith("EN 8 Dec 2026"), got
