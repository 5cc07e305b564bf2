"""The rule engine (SPEC §6): load `rules/*.yaml`, decide what to do with an event.

The contract the CLI and the server use; see the modules for the details:
`loader` (files -> RuleSet, located errors), `conditions`/`operators`/`match` (matching),
`actions`/`templates` (the `then:` side), `engine` (index and evaluate); `during:` windows are
`router.timewindows`, shared with quiet hours.
"""

from __future__ import annotations

from router.rules.engine import RuleSet, evaluate
from router.rules.loader import FileCheck, load_rules_file, load_ruleset, rules_version
from router.rules.model import (
    Action,
    ConversationView,
    Decision,
    Rule,
    RuleError,
    RulesInvalid,
    Snapshot,
)

__all__ = [
    "Action",
    "ConversationView",
    "Decision",
    "FileCheck",
    "Rule",
    "RuleError",
    "RuleSet",
    "RulesInvalid",
    "Snapshot",
    "evaluate",
    "load_rules_file",
    "load_ruleset",
    "rules_version",
]
