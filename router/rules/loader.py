"""Read `rules/*.yaml` (ruamel.yaml keeps line and column numbers) and compile them into a RuleSet.

Every error of every file is collected before anything is raised, so one `switchboard rules check`
shows all of them. The files are read once: the version hashes exactly the bytes that were compiled.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent

from router.rules.actions import ActionCompiler
from router.rules.conditions import INDEXED, ConditionCompiler
from router.rules.engine import RuleSet
from router.rules.located import Pos, Site, item_pos, key_pos, kind, node_pos, value_pos
from router.rules.model import Rule, RuleError, RulesInvalid
from router.rules.windows import load_zone

_TOP_KEYS = ("version", "rules")
_RULE_KEYS = ("id", "description", "when", "then", "stop")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Largest rules file accepted (a guard against pasting something huge by mistake).
MAX_FILE_BYTES = 1_000_000


def rule_files(folder: Path) -> list[Path]:
    """The rules files of a folder, in evaluation order (sorted by name).

    Hidden files (editors' `.#billing.yaml` locks and swap files) are not rules files.
    """
    found = (p for p in folder.glob("*.yaml") if not p.name.startswith(".") and p.is_file())
    return sorted(found, key=lambda path: path.name)


def read_files(folder: Path) -> list[tuple[str, bytes]]:
    """(name, content) of each rules file; a file deleted while listing is left out."""
    entries: list[tuple[str, bytes]] = []
    for path in rule_files(folder):
        try:
            entries.append((path.name, path.read_bytes()))
        except FileNotFoundError:
            continue
    return entries


def rules_version(folder: Path) -> str:
    """sha256 hex over the sorted files' names (relative to the folder) and contents."""
    return _digest(read_files(Path(folder)))


def _digest(entries: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, content in entries:
        encoded = name.encode()
        digest.update(b"%d:%s\0%d:" % (len(encoded), encoded, len(content)))
        digest.update(content)
    return digest.hexdigest()


def load_ruleset(
    folder: Path,
    *,
    windows: Mapping[str, str] | None = None,
    default_timezone: str = "UTC",
    forwards: Collection[str] | None = None,
) -> RuleSet:
    """Compile folder/*.yaml; RulesInvalid with every error. An empty folder is an empty set.

    `windows` are config `[windows]`; `forwards`, when given (the names of
    `[channels.http.forwards]`), makes a `forward` to any other name a load error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RulesInvalid(
            [RuleError(str(folder), 1, 1, "rules folder not found, expected a folder")]
        )
    try:
        zone = load_zone(default_timezone)
    except ValueError as exc:
        raise RulesInvalid([RuleError("(config)", 1, 1, f"default_timezone: {exc}")]) from exc
    try:
        entries = read_files(folder)
    except OSError as exc:
        raise RulesInvalid([RuleError(str(folder), 1, 1, f"cannot read: {exc}")]) from exc
    errors: list[RuleError] = []
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for name, raw in entries:
        site = Site(name)
        rules.extend(_FileLoader(site, windows or {}, forwards, seen).load(raw))
        errors.extend(sorted(site.errors, key=lambda error: (error.line, error.column)))
    if errors:
        raise RulesInvalid(errors)
    files = tuple(name for name, _ in entries)
    return RuleSet(version=_digest(entries), rules=tuple(rules), files=files, default_zone=zone)


def _unknown_key(key: Any, where: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r} in {where}{hint}, expected: {', '.join(allowed)}"


class _FileLoader:
    def __init__(
        self,
        site: Site,
        windows: Mapping[str, str],
        forwards: Collection[str] | None,
        seen: dict[str, str],
    ) -> None:
        self.site = site
        self.seen = seen
        self.conditions = ConditionCompiler(site, windows)
        self.actions = ActionCompiler(site, forwards)

    def load(self, raw: bytes) -> list[Rule]:
        doc = self.parse(raw)
        if doc is None:
            return []
        for key in doc:
            if key not in _TOP_KEYS:
                self.site.error(key_pos(doc, key), _unknown_key(key, "the file", _TOP_KEYS))
        self.version(doc)
        if "rules" not in doc:
            self.site.error((0, 0), "missing 'rules:', expected a list of rules")
            return []
        items = doc["rules"]
        if not isinstance(items, list):
            self.site.error(value_pos(doc, "rules"), f"'rules' must be a list, got {kind(items)}")
            return []
        rules = [self.rule(item, item_pos(items, i)) for i, item in enumerate(items)]
        return [rule for rule in rules if rule is not None]

    def parse(self, raw: bytes) -> dict[Any, Any] | None:
        if len(raw) > MAX_FILE_BYTES:
            self.site.error((0, 0), f"file too large, expected at most {MAX_FILE_BYTES} bytes")
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n")
            self.site.error((line, 0), "not UTF-8 text, expected a UTF-8 YAML file")
            return None
        try:
            if self.unsupported_syntax(text):
                return None
            doc = YAML(typ="rt", pure=True).load(text)
        except YAMLError as exc:
            self.site.error(_mark(exc), f"invalid YAML: {_problem(exc)}")
            return None
        if not isinstance(doc, dict):
            self.site.error(
                node_pos(doc), f"expected a mapping with 'version: 1' and 'rules:', got {kind(doc)}"
            )
            return None
        return doc

    def unsupported_syntax(self, text: str) -> bool:
        """Refuse aliases (`*name`: a few can make a small file expand enormously) and tags."""
        found = False
        for event in YAML(typ="rt", pure=True).parse(text):
            mark = event.start_mark
            if isinstance(event, AliasEvent):
                message = "YAML aliases (*name) are not supported, expected the value written out"
            elif getattr(event, "tag", None) is not None:
                message = f"YAML tags ({event.tag}) are not supported, expected a plain value"
            else:
                continue
            self.site.error((mark.line, mark.column), message)
            found = True
        return found

    def version(self, doc: dict[Any, Any]) -> None:
        if "version" not in doc:
            self.site.error((0, 0), "missing 'version: 1', expected it at the top of the file")
        elif doc["version"] != 1 or isinstance(doc["version"], bool):
            self.site.error(
                value_pos(doc, "version"), f"unsupported version {doc['version']!r}, expected 1"
            )

    def rule(self, node: Any, pos: Pos) -> Rule | None:
        if not isinstance(node, dict):
            self.site.error(
                pos, f"each rule must be a mapping with id, when and then, got {kind(node)}"
            )
            return None
        before = len(self.site.errors)
        for key in node:
            if key not in _RULE_KEYS:
                self.site.error(key_pos(node, key), _unknown_key(key, "a rule", _RULE_KEYS))
        for key in ("id", "when", "then"):
            if key not in node:
                self.site.error(pos, f"rule is missing '{key}', expected id, when and then")
        rule_id = self.rule_id(node)
        description = self.optional(node, "description", str, "a text")
        stop = self.optional(node, "stop", bool, "true or false")
        when, hints = (
            self.conditions.when(node["when"], value_pos(node, "when"))
            if "when" in node
            else (None, {})
        )
        then = self.actions.then(node["then"], value_pos(node, "then")) if "then" in node else None
        if len(self.site.errors) != before or when is None or then is None or rule_id is None:
            return None
        field = next((name for name in INDEXED if name in hints), None)
        return Rule(
            id=rule_id,
            description=description or "",
            file=self.site.file,
            line=pos[0] + 1,
            when=when,
            then=then,
            stop=bool(stop),
            index_field=field,
            index_values=hints[field] if field else frozenset(),
        )

    def rule_id(self, node: dict[Any, Any]) -> str | None:
        if "id" not in node:
            return None
        value, pos = node["id"], value_pos(node, "id")
        if not isinstance(value, str) or not _ID.match(value):
            self.site.error(
                pos, f"bad rule id {value!r}, expected letters, digits, '-', '_' or '.'"
            )
            return None
        where = f"{self.site.file}:{pos[0] + 1}:{pos[1] + 1}"
        if value in self.seen:
            self.site.error(
                pos,
                f"duplicate rule id {value!r}, already used at {self.seen[value]}; "
                "expected a unique id",
            )
            return None
        self.seen[value] = where
        return str(value)

    def optional(self, node: dict[Any, Any], key: str, expected: type, what: str) -> Any:
        if key not in node:
            return None
        value = node[key]
        if not isinstance(value, expected) or (expected is str and isinstance(value, bool)):
            self.site.error(value_pos(node, key), f"'{key}' must be {what}, got {kind(value)}")
            return None
        return value


def _mark(exc: YAMLError) -> Pos:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return (mark.line, mark.column)
    return (0, 0)


def _problem(exc: YAMLError) -> str:
    if isinstance(exc, MarkedYAMLError):
        parts = [part for part in (exc.context, exc.problem) if part]
        return ", ".join(parts) or str(exc)
    return str(exc).splitlines()[0]
