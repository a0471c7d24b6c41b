"""One rule of the rule file → :class:`duly.core.model.Rule`, with located errors
(docs/reference/rules.md).

Split from ``loader`` (the file and its top-level sections) to keep each module readable.
Cross-references — groups, calendars and channels — are checked against the names the
loader collected from the top of the file before it reads the rules. The values inside
a rule (recipients, channels, windows, repeat, retry, ...) are read by
:class:`duly.core.rules.rulefields.RuleFieldReader`, which :class:`RuleReader` extends.

Choices where the spec is silent (docs should say the same):

- A rule or step with ``set`` or ``webhook`` sends a message only when it or its rule names
  a ``template`` explicitly; otherwise ``set: {status: EXPIRED}`` would need a template
  file. ``sends_message`` records the outcome; the template of a message-sending step is
  resolved here (the step's, else the rule's, else the rule's name).
- ``fallback`` on a rule leaves ``Rule.channels`` empty, so no code sends on both.
- ``delay`` only goes with ``on``; ``collect`` and ``skip_empty`` only with ``cron``;
  ``time`` and ``repeat`` on a rule only with its ``at`` shorthand.
- A schedule rule has no subject: ``subject`` and ``set`` are errors there, and its ``to``
  takes ``group:NAME`` and ``id:RECIPIENT`` only. It needs ``to`` only when it sends a
  message (a cron rule may just call a webhook).
- ``repeat.until`` is a time expression like ``at`` (``due_at + 30d``), not a condition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.nodes import Node

from duly.core.model import Category, Retry, Rule, Step
from duly.core.rules.rulefields import IMPLICIT_CHANNELS, RuleFieldReader
from duly.core.rules.yamlnodes import join
from duly.core.templatenames import split_file

__all__ = ["IMPLICIT_CHANNELS", "RULE_KEYS", "STEP_KEYS", "RuleReader"]

STEP_KEYS = (
    "name", "at", "time", "repeat", "if", "to", "channels", "fallback", "category",
    "template", "window", "expire", "batch", "set", "webhook", "whatsapp",
)  # fmt: skip
RULE_ONLY_KEYS = (
    "subject", "steps", "on", "delay", "cron", "timezone", "collect", "skip_empty",
    "grace", "min_gap", "retry", "priority",
)  # fmt: skip
RULE_KEYS = STEP_KEYS + RULE_ONLY_KEYS
_ON_RULE_ONLY = {key: "it is set on the rule, not on a step" for key in RULE_ONLY_KEYS}
_TRIGGER_KINDS = {"steps": "steps", "at": "steps", "on": "event", "cron": "cron"}


@dataclass
class _StepInfo:
    """A parsed step plus where it is, for the checks made once the whole rule is read."""

    step: Step
    field: str
    node: Node
    template_node: Node | None
    has_to: bool  # `to` written on the step (even if invalid: then it has its own error)


class RuleReader(RuleFieldReader):
    """Reads the ``rules:`` list; the loader fills ``calendars``, ``groups``, ``channels``."""

    def __init__(
        self,
        file: str,
        *,
        templates_dir: Path | None,
        check_templates: bool,
        check_channels: bool,
        resolve_env: bool,
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(
            file, check_channels=check_channels, resolve_env=resolve_env, environ=environ
        )
        self.templates_dir = templates_dir
        self.check_templates = check_templates
        self._template_files: set[str] | None = None
        self._templates_used: set[str] = set()

    def rules_section(self, node: Node) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        first_line: dict[str, int] = {}
        for i, item in enumerate(self.seq(node, "rules") or []):
            rule = self.rule(item, join("rules", i))
            if rule is None:
                continue
            if rule.name in first_line:
                name_node = next(v for k, v in item.value if k.value == "name")
                self.error(
                    name_node,
                    join(join("rules", i), "name"),
                    f"duplicate rule name {rule.name!r} (first at line {first_line[rule.name]}); "
                    "rule names must be unique",
                )
            first_line.setdefault(rule.name, rule.line)
            rules.append(rule)
        return tuple(rules)

    def rule(self, node: Node, f: str) -> Rule | None:
        m = self.mapping(node, f, RULE_KEYS, required=("name",))
        if m is None:
            return None

        def opt(key: str, read: Any, *args: Any, **kwargs: Any) -> Any:
            return read(m[key], join(f, key), *args, **kwargs) if key in m else None

        name = opt("name", self.name, "a rule name")
        label = f"rule {name!r}" if name else f
        to = opt("to", self.recipients)
        channels = opt("channels", self.channel_list)
        fallback = opt("fallback", self.channel_list)
        if "channels" in m and "fallback" in m:
            self.error(m["fallback"], join(f, "fallback"), "give channels or fallback, not both")
        template = opt("template", self.name, "a template name")
        set_ = opt("set", self.set_action)
        webhook = opt("webhook", self.webhook_action)
        whatsapp = opt("whatsapp", self.whatsapp)
        kind = self.trigger_kind(m, node, f, label)
        # An action (set / webhook) sends a message only with an explicit template.
        has_action = "set" in m or "webhook" in m  # keys, so an invalid action still counts
        sends = not (has_action and template is None)
        resolved_template = (template or name) if sends else None

        steps: list[_StepInfo] = []
        if "steps" in m:
            steps = self.steps(m["steps"], join(f, "steps"), has_action, template, name)
        elif "at" in m:
            shorthand = Step(
                name=None,
                at=opt("at", self.at_expr),
                time_of_day=opt("time", self.time_of_day),
                repeat=opt("repeat", self.repeat),
                template=resolved_template,
                set=set_,
                webhook=webhook,
                sends_message=sends,
                line=node.start_mark.line + 1,
                whatsapp=whatsapp,
            )
            steps = [_StepInfo(shorthand, f, node, m.get("template"), False)]

        if kind in ("steps", "event") and "subject" not in m:
            self.error(node, f, f"{label}: missing required key 'subject' (the kind it watches)")
        if kind == "cron":
            self.check_schedule(m, f, to or ())
        rule_channels = fallback or channels or ("email",)
        if kind == "steps":
            for info in steps:
                self.check_step(info, label, "to" in m, rule_channels, m.get("template"))
        elif kind is not None and sends and resolved_template:
            if "to" not in m:
                self.error(node, f, f"{label}: missing required key 'to' (who receives it)")
            where = m.get("template") or node
            self.check_template(resolved_template, rule_channels, where, join(f, "template"), label)
        rule = Rule(
            name=name or "",
            subject=opt("subject", self.name, "a subject kind such as invoice"),
            condition=opt("if", self.expression),
            to=to or (),
            channels=() if fallback else (channels or ("email",)),
            fallback=fallback,
            category=opt("category", self.category) or Category.reminder,
            template=resolved_template,
            window=opt("window", self.window),
            steps=tuple(s.step for s in steps),
            on=opt("on", self.trigger),
            delay=opt("delay", self.duration),
            cron=opt("cron", self.cron),
            timezone=opt("timezone", self.timezone),
            collect=opt("collect", self.collect) or (),
            skip_empty=bool(opt("skip_empty", self.boolean)),
            grace=opt("grace", self.duration),
            expire=opt("expire", self.duration, positive=True),
            min_gap=opt("min_gap", self.duration),
            retry=opt("retry", self.retry) or Retry(),
            priority=opt("priority", self.integer),
            batch=opt("batch", self.batch),
            set=set_,
            webhook=webhook,
            sends_message=sends,
            line=node.start_mark.line + 1,
            whatsapp=whatsapp,
        )
        return rule if name is not None else None

    def trigger_kind(self, m: dict[str, Node], node: Node, f: str, label: str) -> str | None:
        """``steps``, ``event`` or ``cron``: exactly one trigger (spec: Kinds of rule), and
        the keys that only go with one of them."""
        found = [k for k in ("steps", "at", "on", "cron") if k in m]
        kind = None
        if "steps" in m and "at" in m:
            self.error(m["at"], join(f, "at"), "give steps or at (a single step), not both")
        elif not found:
            self.error(node, f, f"{label} has no trigger: give steps (or at), on, or cron")
        elif len(found) > 1:
            self.error(
                m[found[1]],
                f,
                f"{label} has more than one trigger ({' and '.join(found)}): "
                "a rule has exactly one of steps (or at), on, or cron",
            )
        else:
            kind = _TRIGGER_KINDS[found[0]]
        for key in ("time", "repeat"):
            if key in m and "at" not in m:
                self.error(
                    m[key],
                    join(f, key),
                    f"{key} on a rule goes with at; in steps, put it on each step",
                )
        if "delay" in m and kind != "event":
            self.error(m["delay"], join(f, "delay"), "delay is only for event rules (on:)")
        for key in ("collect", "skip_empty"):
            if key in m and kind != "cron":
                self.error(m[key], join(f, key), f"{key} is only for schedule rules (cron:)")
        return kind

    def check_schedule(self, m: dict[str, Node], f: str, to: tuple[str, ...]) -> None:
        """A schedule rule has no subject (spec: Kinds of rule, 3)."""
        if "subject" in m:
            self.error(
                m["subject"],
                join(f, "subject"),
                "a schedule (cron) rule has no subject; use collect to gather subjects",
            )
        if "set" in m:
            self.error(m["set"], join(f, "set"), "a schedule (cron) rule has no subject to set")
        for i, ref in enumerate(to):
            if not ref.startswith(("group:", "id:")):
                self.error(
                    m["to"],
                    join(join(f, "to"), i),
                    f"a schedule (cron) rule has no subject, so no role {ref!r}: "
                    "use group:NAME or id:RECIPIENT",
                )

    def check_step(
        self,
        info: _StepInfo,
        label: str,
        rule_has_to: bool,
        rule_channels: tuple[str, ...],
        rule_template_node: Node | None,
    ) -> None:
        """A message-sending step needs recipients and a template for each channel."""
        st = info.step
        if not st.sends_message or st.template is None:
            return
        where = f"{label}, step {st.name!r}" if st.name else label
        if not (info.has_to or rule_has_to):
            self.error(
                info.node,
                info.field,
                f"{where} has no recipients: give 'to' on the rule or the step",
            )
        channels = st.fallback or st.channels or rule_channels
        node = info.template_node or rule_template_node or info.node
        self.check_template(st.template, channels, node, join(info.field, "template"), where)

    def steps(
        self,
        node: Node,
        field: str,
        rule_action: bool,
        rule_template: str | None,
        rule_name: str | None,
    ) -> list[_StepInfo]:
        items = self.seq(node, field)
        if items is None:
            return []
        if not items:
            self.error(node, field, "expected at least one step")
        out: list[_StepInfo] = []
        first_line: dict[str, int] = {}
        for i, item in enumerate(items):
            info = self.step(item, join(field, i), i, rule_action, rule_template, rule_name)
            if info is None or info.step.name is None:
                continue
            name = info.step.name
            if name in first_line:
                self.error(
                    item,
                    join(info.field, "name"),
                    f"duplicate step name {name!r} (first at line {first_line[name]}); "
                    "step names must be unique in a rule",
                )
            first_line.setdefault(name, info.step.line)
            out.append(info)
        return out

    def step(
        self,
        node: Node,
        f: str,
        index: int,
        rule_action: bool,
        rule_template: str | None,
        rule_name: str | None,
    ) -> _StepInfo | None:
        m = self.mapping(node, f, STEP_KEYS, required=("at",), elsewhere=_ON_RULE_ONLY)
        if m is None:
            return None

        def opt(key: str, read: Any, *args: Any, **kwargs: Any) -> Any:
            return read(m[key], join(f, key), *args, **kwargs) if key in m else None

        if "channels" in m and "fallback" in m:
            self.error(m["fallback"], join(f, "fallback"), "give channels or fallback, not both")
        template = opt("template", self.name, "a template name")
        set_ = opt("set", self.set_action)
        webhook = opt("webhook", self.webhook_action)
        # As for rules: with an action (its own or the rule's), a message needs a template.
        acts = rule_action or "set" in m or "webhook" in m
        sends = not (acts and template is None and rule_template is None)
        step = Step(
            # Default names are 1-based: step-1, step-2, … (part of delivery identities).
            name=opt("name", self.name, "a step name") if "name" in m else f"step-{index + 1}",
            at=opt("at", self.at_expr),
            time_of_day=opt("time", self.time_of_day),
            repeat=opt("repeat", self.repeat),
            condition=opt("if", self.expression),
            to=opt("to", self.recipients),
            channels=opt("channels", self.channel_list),
            fallback=opt("fallback", self.channel_list),
            category=opt("category", self.category),
            template=(template or rule_template or rule_name) if sends else None,
            window=opt("window", self.window),
            expire=opt("expire", self.duration, positive=True),
            batch=opt("batch", self.batch),
            set=set_,
            webhook=webhook,
            sends_message=sends,
            line=node.start_mark.line + 1,
            whatsapp=opt("whatsapp", self.whatsapp),
        )
        return _StepInfo(step, f, node, m.get("template"), "to" in m)

    # -- templates
    def check_template(
        self, template: str, channels: Iterable[str], node: Node, field: str, label: str
    ) -> None:
        """Each channel needs ``TEMPLATE.CHANNEL.txt`` or ``.html`` (spec: Templates)."""
        self._templates_used.add(template)
        if not self.check_templates or self.templates_dir is None:
            return
        if self._template_files is None:  # one listing per file load
            try:
                self._template_files = {p.name for p in self.templates_dir.iterdir() if p.is_file()}
            except OSError:
                self._template_files = set()
        for channel in channels:
            wanted = (f"{template}.{channel}.txt", f"{template}.{channel}.html")
            if not any(w in self._template_files for w in wanted):
                missing = "" if self.templates_dir.is_dir() else " (the folder does not exist)"
                self.error(
                    node,
                    field,
                    f"{label}: no template for channel {channel!r}: looked for {wanted[0]} or "
                    f"{wanted[1]} in {self.templates_dir}{missing}",
                )

    def check_variants(self) -> None:
        """A per-locale variant file (``NAME.LOCALE.CHANNEL.EXT``) needs its template:
        ``NAME.CHANNEL.txt`` or ``.html`` (unless a rule names ``NAME.LOCALE`` itself)."""
        if not self.check_templates or self.templates_dir is None:
            return
        files = self._template_files
        if files is None:
            try:
                files = {p.name for p in self.templates_dir.iterdir() if p.is_file()}
            except OSError:
                files = set()
        for file in sorted(files):
            v = split_file(file)
            if v is None or f"{v[0]}.{v[1]}" in self._templates_used:
                continue
            base, loc, channel, _ = v
            if f"{base}.{channel}.txt" not in files and f"{base}.{channel}.html" not in files:
                self.error(
                    None,
                    "templates",
                    f"{self.templates_dir / file}: a {loc!r} variant of template {base!r}, "
                    f"which has no {base}.{channel}.txt or {base}.{channel}.html",
                )
