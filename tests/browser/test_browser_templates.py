"""Editing a template in a real browser: live preview, save, history with the diff."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from browserkit import shot
from live import Live

ADDED = "Questions? Just reply to this email."


def test_edit_a_template_with_live_preview_then_save_and_see_the_diff(
    page: Any, ui: Live, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page.goto(ui.url + "/templates")
    expect(page.get_by_role("heading", name="Templates", exact=True)).to_be_visible()
    shot(page, "templates", tmp_path)
    page.get_by_role("link", name="invoice-due-soon", exact=True).click()
    page.wait_for_url(ui.url + "/templates/invoice-due-soon")
    # previewed with the newest invoice; other tests make invoices of their own, so choose
    # a demo one (the form works without JavaScript: ?subject=… is what "Preview" sends)
    page.goto(ui.url + "/templates/invoice-due-soon?subject=invoice/INV-1001&recipient=alice")
    preview = page.locator("#preview")
    expect(preview).to_contain_text("Invoice INV-1001 is due on")

    text = page.locator("#part-email-txt")
    body = text.input_value()
    assert body.startswith("Subject: Invoice {{ subject.key }} is due")
    text.fill(body.replace("Acme Billing", ADDED + "\n\nAcme Billing"))
    # duly.js posts the form and swaps in the new preview
    expect(preview.locator("pre.preview-text")).to_contain_text(ADDED)
    # the HTML part, rendered in its sandboxed frame
    frame = page.frame_locator("#preview iframe.message")
    expect(frame.locator("body")).to_contain_text("Acme Billing")
    shot(page, "template-edit", tmp_path)

    # a mistake shows where it is, inline, and nothing is saved
    text.fill("Subject: x\n{{ unclosed\n")
    expect(preview).to_contain_text("line 2")

    text.fill(body.replace("Acme Billing", ADDED + "\n\nAcme Billing"))
    expect(preview.locator("pre.preview-text")).to_contain_text(ADDED)
    page.get_by_role("button", name=re.compile(r"^Save as version \d+$")).click()
    expect(page.locator(".flash-ok")).to_contain_text(
        re.compile(r"Saved version \d+ \(email\.txt\)")
    )
    saved = int(re.search(r"Saved version (\d+)", page.locator(".flash-ok").inner_text()).group(1))

    page.get_by_role("link", name=re.compile(r"^History")).click()
    expect(page.get_by_role("heading", name=f"What version {saved} changed")).to_be_visible()
    expect(page.locator("pre.diff .add").filter(has_text=ADDED)).to_have_count(1)
    row = page.locator("tbody tr").first
    expect(row).to_contain_text(str(saved))
    expect(row).to_contain_text("ops")  # the author: the signed-in admin
    shot(page, "template-history", tmp_path)


def test_restore_a_templates_shipped_wording_and_insert_a_variable(
    page: Any, ui: Live, tmp_path: Path
) -> None:
    """A front-desk admin changes the payment receipt, then brings back the wording shipped
    with the rule file from the history; on the way, a variable from the list beside the
    editor is inserted with a click."""
    from playwright.sync_api import expect

    page.goto(ui.url + "/templates/payment-receipt?subject=invoice/INV-1004")
    text = page.locator("#part-email-txt")
    shipped = text.input_value()
    assert "Acme Billing" in shipped
    # the variables list: attribute names of recent invoices, with example values
    variables = page.locator("aside.variables")
    expect(variables).to_contain_text("attributes.amount")
    expect(variables).to_contain_text("recipient.name")
    # click inserts {{ name }} where the cursor is, and the preview follows
    text.fill("Subject: Paid\nRef ")
    text.press("End")
    variables.locator("code.var", has_text="subject.key").first.click()
    assert text.input_value() == "Subject: Paid\nRef {{ subject.key }}"
    expect(page.locator("#preview pre.preview-text")).to_contain_text("Ref INV-1004")
    shot(page, "template-variables", tmp_path)

    text.fill(shipped.replace("Thank you!", "Thanks, we got it."))
    page.get_by_role("button", name=re.compile(r"^Save as version \d+$")).click()
    expect(page.locator(".flash-ok")).to_contain_text("Saved version")
    expect(page.get_by_text("Saved, but")).to_have_count(0)  # real data: no false warning
    page.get_by_role("link", name=re.compile(r"^History")).click()
    row = page.locator("tr.shipped")
    expect(row).to_contain_text("shipped with the rule file")
    row.get_by_role("link", name="compare with current").click()
    expect(page.locator("pre.diff .add").filter(has_text="Thanks, we got it.")).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    page.locator("tr.shipped").get_by_role("button", name="Restore the shipped wording").click()
    expect(page.locator(".flash-ok")).to_contain_text(
        re.compile(r"Restored the shipped wording of payment-receipt as version \d+\.")
    )
    shot(page, "template-restored", tmp_path)
    page.goto(ui.url + "/templates/payment-receipt")
    assert page.locator("#part-email-txt").input_value() == shipped
