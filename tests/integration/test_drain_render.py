"""render_many as the drain uses it: a dispatcher batch shared out over the render
processes in large messages, variants resolved once per template and reader. Every item
gets what a render of it alone gives; a runaway fails only itself."""

from __future__ import annotations

from pathlib import Path

from duly.core.model import Recipient, RenderLimits
from duly.delivery.rendering import Renderer, RenderError, RenderLimitExceeded
from duly.delivery.rendering.pool import RenderPool

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"


def test_a_dispatcher_batch_renders_as_each_item_alone(tmp_path: Path) -> None:
    (tmp_path / "inv.email.txt").write_text("Subject: EN {{ subject.key }}\nEN {{ n }}\n")
    (tmp_path / "inv.fr.email.txt").write_text("Subject: FR {{ subject.key }}\nFR {{ n }}\n")
    (tmp_path / "inv.sms.txt").write_text("SMS {{ recipient.name }} {{ n }}")
    (tmp_path / "loop.email.txt").write_text(LOOP)
    locales = [None, "fr", "fr_BE", "es", "en_GB"]
    items = []
    for i in range(150):
        loc = locales[i % len(locales)]
        rcp = Recipient(f"r{i}", name=f"R{i}", locale=locales[(i // 5) % len(locales)])
        item = {
            "name": "inv",
            "channel": "sms" if i % 7 == 0 else "email",
            "context": {"subject": {"key": f"K{i}"}, "n": i},
            "recipient": rcp,
            "timezone": "UTC",
            "locale": loc,
        }
        if i % 11 == 0:
            item["variants"] = False
        items.append(item)
    items[100] = {**items[100], "name": "loop", "channel": "email"}
    here = Renderer(tmp_path, isolated=False)
    pool = RenderPool(2)
    r = Renderer(tmp_path, limits=RenderLimits(timeout=1, workers=2), pool=pool)
    try:
        out = r.render_many(items)  # type: ignore[arg-type]
    finally:
        r.close()
    assert len(out) == 150
    for i, (it, got) in enumerate(zip(items, out, strict=True)):
        if i == 100:
            assert isinstance(got, RenderLimitExceeded) and got.limit == "render.timeout"
            continue
        assert not isinstance(got, RenderError), (i, got)
        assert got == here.render(**it), i  # type: ignore[arg-type]
    fr = [i for i, it in enumerate(items) if it["channel"] == "email" and i != 100]
    assert {out[i].title.split()[0] for i in fr} == {"EN", "FR"}  # type: ignore[union-attr]
