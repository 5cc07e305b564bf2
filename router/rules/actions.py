"""Validate a rule's `then:` list into ActionSpecs, parsing every template once."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from router.rules.conditions import FIELDS, expected
from router.rules.located import Pos, Site, item_pos, key_pos, kind, plain, value_pos
from router.rules.model import ActionSpec
from router.rules.templates import Template, compile_template, is_template

CHANNELS = ("sms", "whatsapp", "email", "slack")
CATEGORIES = ("transactional", "conversational", "marketing")
#: kind -> (required params, optional params); `tag` and `set` have their own shapes.
PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "reply": (("text",), ()),
    "send": (("channel", "to", "text", "category"), ("subject",)),
    "escalate": (("reason",), ("channel",)),
    "forward": (("to",), ()),
    "drop": ((), ()),
}
ACTIONS = ("reply", "send", "escalate", "forward", "tag", "set", "drop")
#: Names a template may use at the top level.
TEMPLATE_NAMES = tuple(FIELDS)
_LITERAL = {"channel": CHANNELS, "category": CATEGORIES}
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ActionCompiler:
    """Compiles `then:` lists of one file; errors go to the file's Site."""

    def __init__(self, site: Site, forwards: Collection[str] | None = None) -> None:
        self.site = site
        self.forwards = sorted(forwards) if forwards is not None else None
        #: Every template compiled, with where it is: `rules check` renders each one.
        self.templates: list[tuple[Pos, Template]] = []

    def then(self, node: Any, pos: Pos) -> tuple[ActionSpec, ...] | None:
        if not isinstance(node, list) or not node:
            got = "an empty list" if isinstance(node, list) else kind(node)
            self.site.error(pos, f"'then' must be a non-empty list of actions, got {got}")
            return None
        specs = [self.action(item, index, item_pos(node, index)) for index, item in enumerate(node)]
        kept = [spec for spec in specs if spec is not None]
        return tuple(kept) if len(kept) == len(specs) else None

    def action(self, node: Any, index: int, pos: Pos) -> ActionSpec | None:
        if not isinstance(node, dict) or len(node) != 1:
            self.site.error(
                pos,
                f"each action must be one mapping like '- reply: {{text: ...}}', expected one of: "
                f"{', '.join(ACTIONS)}",
            )
            return None
        name = next(iter(node))
        kpos, vpos, params = key_pos(node, name), value_pos(node, name), node[name]
        if name not in ACTIONS:
            self.site.error(kpos, f"unknown action {name!r}{expected(str(name), ACTIONS)}")
            return None
        if name == "tag":
            compiled = self.tag(params, vpos)
        elif name == "set":
            compiled = self.set(params, vpos)
        else:
            compiled = self.fixed(name, params, kpos, vpos)
        return ActionSpec(kind=name, index=index, params=compiled) if compiled is not None else None

    def fixed(self, name: str, params: Any, kpos: Pos, vpos: Pos) -> dict[str, Any] | None:
        required, optional = PARAMS[name]
        if params is None and not required:
            return {}
        if not isinstance(params, dict):
            self.site.error(
                vpos, f"'{name}' expects a mapping of {', '.join(required)}, got {kind(params)}"
            )
            return None
        before = len(self.site.errors)
        missing = [key for key in required if key not in params]
        if missing:
            self.site.error(
                kpos,
                f"'{name}' is missing {', '.join(missing)}, expected: "
                f"{', '.join(required + optional)}",
            )
        result: dict[str, Any] = {}
        for key in params:
            where = value_pos(params, key)
            if key not in required + optional:
                allowed = ", ".join(required + optional) or "no parameters"
                self.site.error(
                    key_pos(params, key),
                    f"unknown parameter {key!r} for '{name}', expected: {allowed}",
                )
            else:
                result[key] = self.param(name, key, params[key], where)
        return result if len(self.site.errors) == before else None

    def param(self, action: str, key: str, value: Any, pos: Pos) -> Any:
        if not isinstance(value, str) or not value.strip():
            self.site.error(pos, f"'{action}' {key} must be a non-empty text, got {kind(value)}")
            return None
        if key in _LITERAL and not (action == "escalate" and key == "channel"):
            if value not in _LITERAL[key]:
                self.site.error(
                    pos, f"unknown {key} {value!r}, expected one of: {', '.join(_LITERAL[key])}"
                )
            return str(value)
        if action == "forward" and self.forwards is not None and not is_template(value):
            self.destination(value, pos)
        return self.text(value, pos)

    def destination(self, name: str, pos: Pos) -> None:
        if name in (self.forwards or ()):
            return
        known = ", ".join(self.forwards or ()) or "none are configured"
        self.site.error(
            pos,
            f"unknown forward destination {name!r}, expected one of: {known} "
            "(config [channels.http.forwards])",
        )

    def text(self, value: str, pos: Pos) -> Any:
        if not is_template(value):
            return str(value)
        try:
            template = compile_template(str(value), TEMPLATE_NAMES)
        except ValueError as exc:
            self.site.error(pos, str(exc))
            return None
        self.templates.append((pos, template))
        return template

    def tag(self, params: Any, pos: Pos) -> dict[str, Any] | None:
        if isinstance(params, dict):
            unknown = [key for key in params if key not in ("tags", "name")]
            if unknown or len(params) != 1:
                self.site.error(pos, "'tag' expects {tags: [a, b]} or {name: a}")
                return None
            key = next(iter(params))
            return self.tag(params[key], value_pos(params, key))
        values = params if isinstance(params, list) else [params]
        if not values or not all(isinstance(value, str) and value.strip() for value in values):
            self.site.error(
                pos, f"'tag' expects a tag name or a list of tag names, got {kind(params)}"
            )
            return None
        before = len(self.site.errors)
        tags = [
            self.text(value, item_pos(params, i) if isinstance(params, list) else pos)
            for i, value in enumerate(values)
        ]
        return {"tags": tags} if len(self.site.errors) == before else None

    def set(self, params: Any, pos: Pos) -> dict[str, Any] | None:
        if not isinstance(params, dict) or not params:
            self.site.error(pos, f"'set' expects a mapping of attribute: value, got {kind(params)}")
            return None
        before = len(self.site.errors)
        result: dict[str, Any] = {}
        for key, value in params.items():
            if not isinstance(key, str) or not _ATTRIBUTE.match(key):
                self.site.error(
                    key_pos(params, key),
                    f"bad attribute name {key!r}, expected letters, "
                    "digits and _ (not starting with a digit)",
                )
            elif isinstance(value, dict | list):
                self.site.error(
                    value_pos(params, key),
                    f"attribute {key!r} must be a text, number, "
                    f"true/false or null, got {kind(value)}",
                )
            else:
                is_text = isinstance(value, str)
                result[key] = self.text(value, value_pos(params, key)) if is_text else plain(value)
        return result if len(self.site.errors) == before else None
