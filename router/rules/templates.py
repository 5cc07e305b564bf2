"""`{{ }}` templates in action parameters: jinja2's sandbox, tightened further.

- Only mapping keys and list items can be reached (`data.amount`, `data['x']`, `items[0]`): no
  attribute of any Python object, so no `''.__class__`, no methods such as `'x'.ljust(10**9)`.
- No globals, a short list of filters, and capped `*`, `**` and `%` so a template cannot build
  huge strings.
- StrictUndefined: a missing variable is an error (recorded on the decision); `| default('')`
  makes a value optional.
- Templates are checked at load: syntax errors, unknown top-level names, names starting with `_`
  (`''.__class__`, `__mro__`), calls (`'x'.ljust(9)`, `data.items()`) and `%` are load errors.
- Rendered for Slack (`render(..., slack=True)`), every interpolated value is escaped like
  jinja's autoescape would, with Slack's escape (`&`, `<`, `>`): a customer's
  `<!channel>` or `<https://evil|click>` shows as typed, while the rule's own literal text
  stays markup (a rule may mention `<!here>` on purpose).
- Loading stays cheap: the commonest templates (`{{ data.a }}`, `{{ x | default('y') }}`) are
  read by one regex instead of jinja's parser; jinja compiles a template only when it must render
  it, once per distinct text (shared across reloads).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from router.slack_markup import escape

#: Longest text one template or one `*` may produce.
MAX_OUTPUT = 100_000
_FILTERS = (
    *("abs", "capitalize", "count", "d", "default", "first", "float", "int", "join", "last"),
    *("length", "lower", "max", "min", "replace", "round", "string", "sum", "title", "tojson"),
    *("trim", "truncate", "upper", "urlencode", "wordcount"),
)


def _safe_replace(value: Any, old: str, new: str, count: int | None = None) -> str:
    text = str(value)
    if old and len(new) > len(old) and len(text) * len(new) // max(len(old), 1) > MAX_OUTPUT:
        raise SecurityError("replace would produce a too long text")
    return text.replace(old, new, -1 if count is None else count)


class _Env(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, jinja2.Undefined):  # report the first missing name, not its child
            return obj
        if isinstance(obj, Mapping):
            return self.getitem(obj, attribute)
        return self.unsafe_undefined(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, jinja2.Undefined):
            return obj
        if isinstance(obj, Mapping) and isinstance(argument, str) and argument in obj:
            return obj[argument]
        if isinstance(obj, list | tuple | str) and isinstance(argument, int):
            try:
                return obj[argument]
            except IndexError:
                pass
        if isinstance(argument, str) and argument.startswith("_"):
            return self.unsafe_undefined(obj, argument)
        return self.undefined(hint=f"{argument!r} is undefined", obj=obj, name=argument)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "%":
            raise SecurityError("the % operator is not available in templates")
        if operator_name == "**":
            if not isinstance(right, int | float) or abs(right) > 64:
                raise SecurityError("exponent too large")
            return operator.pow(left, right)
        for text, times in ((left, right), (right, left)):
            repeats = isinstance(text, str | list | tuple) and isinstance(times, int)
            if repeats and len(text) * times > MAX_OUTPUT:
                raise SecurityError("repetition would produce a too long text")
        return operator.mul(left, right)


FILTER_NAMES = ", ".join(sorted(_FILTERS))


def _slack_value(value: Any) -> str:
    """jinja's `finalize` for Slack: each `{{ }}` value, as text, escaped."""
    return escape(value if isinstance(value, str) else str(value))


def make_environment(finalize: Callable[[Any], Any] | None = None) -> SandboxedEnvironment:
    """The sandbox; `finalize` is applied to every `{{ }}` value (not to literal text)."""
    env = _Env(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
    )
    env.globals.clear()
    env.filters = {name: env.filters[name] for name in _FILTERS}
    env.filters["replace"] = _safe_replace
    env.tests = {name: env.tests[name] for name in ("defined", "undefined", "none", "number")}
    return env


ENV = make_environment()
#: The same sandbox for texts posted to Slack: interpolated values escaped.
SLACK_ENV = make_environment(finalize=_slack_value)


_FAIL: Any = object()


class _Lookup:
    """`{{ a.b.c }}` or `{{ a.b | default('x') }}`: a path of mapping keys, maybe a default."""

    __slots__ = ("default", "path")

    def __init__(self, path: tuple[str, ...], default: Any = _FAIL) -> None:
        self.path, self.default = path, default


#: A simple template as parts: literal text, or lookups.
Parts = tuple[str | _Lookup, ...]


class Template:
    """A checked template; render() raises jinja2 errors, the caller records them.

    Most templates only print values by path (`Hi {{ contact.name | default('there') }}`);
    those render without jinja when every path resolves through mappings (or has a constant
    default, which jinja's `default` also uses whenever the lookup is undefined), giving the same
    text as jinja (both use `str()`) at a fraction of the cost. Anything else, or any lookup that
    fails without a default, goes to jinja, so errors always come from the sandbox.
    """

    __slots__ = ("_parts", "source")

    def __init__(self, source: str, parts: Parts | None) -> None:
        self.source = source
        self._parts = parts

    def render(self, context: Mapping[str, Any], *, slack: bool = False) -> str:
        """The text; `slack`: every interpolated value escaped for Slack."""
        text = self._fast(context, slack) if self._parts is not None else _FAIL
        if text is _FAIL:
            text = self.render_with_jinja(context, slack=slack)
        if len(text) > MAX_OUTPUT:
            raise SecurityError("the rendered text is too long")
        return str(text)

    def render_with_jinja(self, context: Mapping[str, Any], *, slack: bool = False) -> str:
        """The same render, always through jinja (tests compare the two)."""
        return _jinja(self.source, slack).render(context)

    def _fast(self, context: Mapping[str, Any], slack: bool) -> Any:
        out: list[str] = []
        for part in self._parts or ():
            if isinstance(part, str):
                out.append(part)
                continue
            node: Any = context
            for depth, key in enumerate(part.path):
                if not isinstance(node, Mapping) or key not in node:
                    if part.default is not _FAIL:
                        node = part.default
                        break
                    if isinstance(node, Mapping):  # name the whole path, not just the last key
                        raise UndefinedError(f"'{'.'.join(part.path[: depth + 1])}' is undefined")
                    return _FAIL
                node = node[key]
            value = node if isinstance(node, str) else str(node)
            out.append(escape(value) if slack else value)
        return "".join(out)


def _simple_parts(tree: nodes.Template) -> Parts | None:
    parts: list[str | _Lookup] = []
    for statement in tree.body:
        if not isinstance(statement, nodes.Output):
            return None
        for node in statement.nodes:
            if isinstance(node, nodes.TemplateData):
                parts.append(node.data)
                continue
            lookup = _lookup(node)
            if lookup is None:
                return None
            parts.append(lookup)
    return tuple(parts)


def _lookup(node: nodes.Node) -> _Lookup | None:
    if isinstance(node, nodes.Filter) and node.name in ("default", "d") and node.node is not None:
        plain = not (node.kwargs or node.dyn_args or node.dyn_kwargs) and len(node.args) == 1
        if not plain or not isinstance(node.args[0], nodes.Const):
            return None
        path = _path(node.node)
        return _Lookup(path, node.args[0].value) if path is not None else None
    path = _path(node)
    return _Lookup(path) if path is not None else None


def _path(node: nodes.Node) -> tuple[str, ...] | None:
    if isinstance(node, nodes.Name) and node.ctx == "load":
        return (node.name,)
    if isinstance(node, nodes.Getattr):
        head = _path(node.node)
        return (*head, node.attr) if head is not None else None
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        head = _path(node.node)
        key = node.arg.value
        return (*head, key) if head is not None and isinstance(key, str) else None
    return None


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@lru_cache(maxsize=4096)
def _jinja(source: str, slack: bool = False) -> jinja2.Template:
    """jinja's compiled template of a text (for Slack or not): compiled on first use, shared by
    every reload."""
    return (SLACK_ENV if slack else ENV).from_string(source)


def compile_template(source: str, names: Iterable[str]) -> Template:
    """Check once; ValueError naming the problem (syntax, unknown variable, unsafe reach)."""
    return _checked(source, tuple(sorted(set(names))))


@lru_cache(maxsize=16384)
def _checked(source: str, names: tuple[str, ...]) -> Template:
    """Cached by text, so reloading an unchanged rules file re-checks nothing."""
    parts = quick_parts(source, names)
    if parts is not None:
        return Template(source, parts)
    tree = _parse(source)
    _check_names(tree, names)
    check_reach(tree)
    template = Template(source, _simple_parts(tree))
    if template._parts is None:  # jinja will render it every time: compile now, not mid-routing
        _compile(source)
    return template


def _parse(source: str) -> nodes.Template:
    try:
        return ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error: {exc.message}") from exc


def _check_names(tree: nodes.Template, names: tuple[str, ...]) -> None:
    try:
        unknown = sorted(jinja2.meta.find_undeclared_variables(tree) - set(names))
    except jinja2.TemplateError as exc:  # e.g. a filter that is not available
        raise ValueError(
            f"template error: {exc.message}, expected filters: {FILTER_NAMES}"
        ) from exc
    if unknown:
        raise ValueError(
            f"unknown template variable {unknown[0]!r}, expected one of: {', '.join(names)}"
        )


def _compile(source: str) -> None:
    try:
        _jinja(source)
    except jinja2.TemplateError as exc:
        raise ValueError(
            f"template error: {exc.message}, expected filters: {FILTER_NAMES}"
        ) from exc


def check_reach(tree: nodes.Node) -> None:
    """Refuse what can only reach past the event's fields: `_` names, calls, `%`.

    The sandbox refuses them at render anyway; refusing them at load tells the author at once.
    """
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Call, nodes.Mod)):
        if isinstance(node, nodes.Call):
            raise ValueError(
                "templates cannot call anything (like .upper() or .items()), "
                f"expected fields and filters: {FILTER_NAMES}"
            )
        if isinstance(node, nodes.Mod):
            raise ValueError("the % operator is not available in templates, expected fields")
        name = _reached(node)
        if isinstance(name, str) and name.startswith("_"):
            raise ValueError(
                f"templates cannot reach {name!r} (names starting with '_' are internal), "
                "expected a field of the event"
            )


def _reached(node: nodes.Node) -> Any:
    """The name `a.name` or `a['name']` reaches for (None when it is not a constant)."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return node.arg.value
    return None


_IDENT = r"[A-Za-z][A-Za-z0-9_]*"
_KEY = rf"(?:\.{_IDENT}|\['[A-Za-z0-9][^'\\\n\r{{}}]*'\])"
_LITERAL = r"'[^'\\\n\r{}]*'|\"[^\"\\\n\r{}]*\"|0|[1-9][0-9]{0,15}"
_OUTPUT = re.compile(
    rf"\{{\{{ *({_IDENT})((?:{_KEY})*) *(?:\| *(?:default|d)\(({_LITERAL})\) *)?\}}\}}"
)
_SEGMENT = re.compile(rf"\.({_IDENT})|\['([^']*)'\]")
_JINJA_WORDS = frozenset({"true", "false", "none", "True", "False", "None", "not"})


def quick_parts(source: str, names: Iterable[str]) -> Parts | None:
    """The parts of a template made only of text and `{{ path }}` or `{{ path | default(x) }}`
    with a known name, read without jinja; None for anything else (jinja reads it).

    What it accepts, jinja reads as exactly these parts (a property test compares them).
    """
    if "\r" in source:  # jinja normalises line endings: let it
        return None
    parts: list[str | _Lookup] = []
    position = 0
    for found in _OUTPUT.finditer(source):
        before = source[position : found.start()]
        if not _plain_text(before) or before.endswith("{"):  # `{{{x}}`: jinja reads `{{ {x}}`
            return None
        lookup = _quick_lookup(found, names)
        if lookup is None:
            return None
        if found.start() > position:
            parts.append(source[position : found.start()])
        parts.append(lookup)
        position = found.end()
    if not _plain_text(source[position:]):
        return None
    if position < len(source):
        parts.append(source[position:])
    return tuple(parts)


def _plain_text(text: str) -> bool:
    return "{{" not in text and "{%" not in text and "{#" not in text


def _quick_lookup(found: re.Match[str], names: Iterable[str]) -> _Lookup | None:
    head, rest, literal = found.group(1), found.group(2), found.group(3)
    if head in _JINJA_WORDS or head not in names:
        return None
    path = (head, *(attr or key for attr, key in _SEGMENT.findall(rest)))
    if literal is None:
        return _Lookup(path)
    return _Lookup(path, literal[1:-1] if literal[0] in "'\"" else int(literal))


def render(value: Any, context: Mapping[str, Any], *, slack: bool = False) -> Any:
    """Render every template inside a parameter value (texts, lists, mappings); `slack`: the
    texts are posted to Slack, so interpolated values are escaped."""
    if isinstance(value, Template):
        return value.render(context, slack=slack)
    if isinstance(value, list):
        return [render(item, context, slack=slack) for item in value]
    if isinstance(value, dict):
        return {key: render(item, context, slack=slack) for key, item in value.items()}
    return value


def describe(exc: Exception) -> str:
    """A short user-facing message for a render error."""
    if isinstance(exc, jinja2.UndefinedError | SecurityError):
        return str(exc.message or exc)
    return f"{type(exc).__name__}: {exc}"
