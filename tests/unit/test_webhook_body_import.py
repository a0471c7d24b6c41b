"""A render process renders a webhook body with only the body renderer loaded: importing it
must not pull in the webhook outbox, the store or SQLAlchemy, whose import time (about half
a second of CPU, seconds on a busy machine) would count against the body's 2 s render limit
and fail a trivial body with render.timeout."""

from __future__ import annotations

import subprocess
import sys


def test_the_body_renderer_loads_without_the_store() -> None:
    code = (
        "import sys; from duly.delivery.rendering.webhook_body import render_body; "
        "print(render_body({'a': '{{ x }}'}, {'x': 1})); "
        "print(sorted(m for m in ('sqlalchemy', 'duly.store', 'duly.delivery.webhooks') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rendered, loaded = out.stdout.splitlines()
    assert rendered == "{'a': '1'}"
    assert loaded == "[]", f"the body renderer loads {loaded}"


def test_the_outbox_still_offers_the_same_renderer() -> None:
    from duly.delivery.rendering import webhook_body
    from duly.delivery.webhooks import BodyTemplateError, outbox

    assert outbox.render_body is webhook_body.render_body
    assert BodyTemplateError is webhook_body.BodyTemplateError
