"""Read `rules/*.yaml` (`yamlread` keeps line and column numbers) and compile them into a RuleSet.

Every error of every file is collected before anything is raised, so one `switchboard rules check`
shows all of them. The files are read once: the version hashes exactly the bytes that were compiled.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from router.rules.actions import ActionCompiler
from router.rules.conditions import INDEXED, ConditionCompiler
from router.rules.engine import RuleSet
from router.rules.located import Pos, Site, item_pos, key_pos, kind, node_pos, value_pos
from router.rules.model import Rule, RuleError, RulesInvalid
from router.rules.yamlread import load as read_yaml
from router.timewindows import load_zone

_TOP_KEYS = ("version", "rules")
_RULE_KEYS = ("id", "description", "when", "then", "stop")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Caps on what one load may cost (rules/README.md lists them): a guard against pasting something
#: huge by mistake, and against a file made to stall the server.
#: Largest rules file accepted.
MAX_FILE_BYTES = 1_000_000
#: Most rules files in the folder.
MAX_FILES = 100
#: Largest total size of the folder's rules files.
MAX_TOTAL_BYTES = 4_000_000
#: Most rules in the folder, all files together.
MAX_RULES = 10_000


def rule_files(folder: Path) -> list[Path]:
    """The rules files of a folder, in evaluation order (sorted by name).

    Hidden files (editors' `.#billing.yaml` locks and swap files) are not rules files.
    """
    found = (p for p in folder.glob("*.yaml") if not p.name.startswith(".") and p.is_file())
    return sorted(found, key=lambda path: path.name)


def read_files(folder: Path) -> list[tuple[str, bytes]]:
    """(name, content) of each rules file; a file deleted while listing is left out.

    Reading stops past the caps (one file more than MAX_FILES, MAX_FILE_BYTES + 1 bytes of a
    file, just past MAX_TOTAL_BYTES in all), so a huge folder costs no more than a full one;
    the loader then reports the cap that was passed.
    """
    entries: list[tuple[str, bytes]] = []
    total = 0
    for path in rule_files(folder)[: MAX_FILES + 1]:
        try:
            with path.open("rb") as file:
                content = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            continue
        entries.append((path.name, content))
        total += len(content)
        if total > MAX_TOTAL_BYTES:
            break
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
    zone = _zone(default_timezone)
    entries = _read_folder(folder)
    _check_folder(folder, entries)
    rules, errors = _compile(entries, windows or {}, forwards, _Shared())
    if errors:
        raise RulesInvalid(errors)
    files = tuple(name for name, _ in entries)
    return RuleSet(version=_digest(entries), rules=tuple(rules), files=files, default_zone=zone)


class FileCheck(NamedTuple):
    """One rules file checked as part of its folder (`switchboard rules check FILE`)."""

    #: The file's own rules; its version is the folder's with this file as it is now.
    ruleset: RuleSet
    #: Errors in the folder's other files: not this file's, but the folder cannot go live.
    other_errors: int


def load_rules_file(
    path: Path,
    *,
    windows: Mapping[str, str] | None = None,
    default_timezone: str = "UTC",
    forwards: Collection[str] | None = None,
) -> FileCheck:
    """Compile one file with every check a folder load makes of it; RulesInvalid with its errors.

    The folder's other rules files are compiled first, so a rule id they already use is a
    duplicate located in this file, and the folder-wide caps count this file. Their own errors
    are only counted: a marketer checking one file is told about that file.
    """
    path = Path(path)
    zone = _zone(default_timezone)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RulesInvalid([RuleError(path.name, 1, 1, f"cannot read: {exc}")]) from exc
    others = [entry for entry in _read_folder(path.parent) if entry[0] != path.name]
    entries = sorted([*others, (path.name, raw)], key=lambda entry: entry[0])
    _check_folder(path.parent, entries)
    shared = _Shared()
    _, other_errors = _compile(others, windows or {}, forwards, shared)
    rules, errors = _compile([(path.name, raw)], windows or {}, forwards, shared)
    if errors:
        raise RulesInvalid(errors)
    ruleset = RuleSet(
        version=_digest(entries), rules=tuple(rules), files=(path.name,), default_zone=zone
    )
    return FileCheck(ruleset, len(other_errors))


def _zone(default_timezone: str) -> ZoneInfo:
    try:
        return load_zone(default_timezone)
    except ValueError as exc:
        raise RulesInvalid([RuleError("(config)", 1, 1, f"default_timezone: {exc}")]) from exc


def _read_folder(folder: Path) -> list[tuple[str, bytes]]:
    try:
        return read_files(folder)
    except OSError as exc:
        raise RulesInvalid([RuleError(str(folder), 1, 1, f"cannot read: {exc}")]) from exc


def _compile(
    entries: list[tuple[str, bytes]],
    windows: Mapping[str, str],
    forwards: Collection[str] | None,
    shared: _Shared,
) -> tuple[list[Rule], list[RuleError]]:
    """The rules of `entries` in order, and every error, sorted by place within each file."""
    errors: list[RuleError] = []
    rules: list[Rule] = []
    for name, raw in entries:
        site = Site(name)
        rules.extend(_load_file(_FileLoader(site, windows, forwards, shared), raw))
        errors.extend(sorted(site.errors, key=lambda error: (error.line, error.column)))
    return rules, errors


def _check_folder(folder: Path, entries: list[tuple[str, bytes]]) -> None:
    """The folder-wide caps; one error, located at the file that passes the cap."""
    if len(entries) > MAX_FILES:
        raise RulesInvalid(
            [
                RuleError(
                    entries[MAX_FILES][0],
                    1,
                    1,
                    f"too many rules files in {folder}, "
                    f"expected at most {MAX_FILES} (merge some files)",
                )
            ]
        )
    total = sum(len(content) for _, content in entries)
    if total > MAX_TOTAL_BYTES:
        raise RulesInvalid(
            [
                RuleError(
                    entries[-1][0],
                    1,
                    1,
                    f"rules files too large in total (over "
                    f"{MAX_TOTAL_BYTES} bytes with this file), expected at most "
                    f"{MAX_TOTAL_BYTES} bytes in {folder}",
                )
            ]
        )


def _load_file(loader: _FileLoader, raw: bytes) -> list[Rule]:
    """Belt and braces: whatever goes wrong inside one file becomes a located error."""
    try:
        return loader.load(raw)
    except RecursionError:
        loader.site.error((0, 0), "nested too deeply to read, expected a simpler file")
    except Exception as exc:  # a bug must never surface as a traceback or stop a reload
        loader.site.error(
            (0, 0), f"cannot be loaded ({type(exc).__name__}: {exc}), expected a rules file"
        )
    return []


class _Shared:
    """What the files of one folder share: rule ids seen (and where), rules counted."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        self.count = 0


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
        shared: _Shared,
    ) -> None:
        self.site = site
        self.shared = shared
        self.seen = shared.seen
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
        room = MAX_RULES - self.shared.count
        if len(items) > room:
            self.site.error(
                item_pos(items, max(room, 0)),
                f"too many rules: this one passes the folder's cap, expected at most "
                f"{MAX_RULES} rules in all files together",
            )
            items = items[: max(room, 0)]
        self.shared.count += len(items)
        rules = []
        for i in range(len(items)):
            rules.append(self.rule(items[i], item_pos(items, i)))
            # Free each rule's YAML once compiled: freeing a whole file's tree at once holds
            # the GIL ~25 ms for 4,000 rules, a stall for the event loop during a reload.
            items[i] = None
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
        doc, problems = read_yaml(text)
        for problem in problems:
            self.site.error(problem.pos, problem.message)
        if problems:
            return None
        if not isinstance(doc, dict):
            self.site.error(
                node_pos(doc), f"expected a mapping with 'version: 1' and 'rules:', got {kind(doc)}"
            )
            return None
        return doc

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
        before, first_template = len(self.site.errors), len(self.actions.templates)
        first_pattern = len(self.conditions.patterns)
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
            templates=tuple(
                (line + 1, column + 1, template)
                for (line, column), template in self.actions.templates[first_template:]
            ),
            patterns=tuple(
                (line + 1, column + 1, pattern)
                for (line, column), pattern in self.conditions.patterns[first_pattern:]
            ),
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
