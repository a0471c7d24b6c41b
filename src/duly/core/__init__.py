"""The core: what duly means, with no I/O.

The rule language (``rules``: the rule file's syntax, expressions, durations, local time,
calendars, cron), the data it describes (``model``), and planning (``planner``,
``plantypes``, ``reconcile``): given rules, a subject and its recipients, which deliveries
should exist and how the stored ones must change. Also the errors a user can act on
(``errors``), the limits on input (``validation``) and the injectable clock (``clock``).

Nothing here imports the rest of duly, a database, the network or processes (checked by
import-linter, see pyproject.toml). The one file the core reads is the rule file itself
(and the names in its templates folder), in ``rules.loader.load_rules``.
"""
