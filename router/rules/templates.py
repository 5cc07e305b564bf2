"""`{{ }}` templates in action parameters: jinja2's sandbox, tightened further.

- Only mapping keys and list items can be reached (`data.amount`, `data['x']`, `items[0]`): no
  attribute of any Python object, so no `''.__class__`, no methods such as `'x'.ljust(10**9)`.
- No globals, a short list of filters, and capped `*`, `**` and `%` so a template cannot build
  huge strings.
- StrictUndefined: a missing variable is an error (recorded on the decision); `| default('')`
  makes a value optional.
- Templates are parsed once at load; syntax errors and unknown top-level names are load errors.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

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


def make_environment() -> SandboxedEnvironment:
    env = _Env(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()
    env.filters = {name: env.filters[name] for name in _FILTERS}
    env.filters["replace"] = _safe_replace
    env.tests = {name: env.tests[name] for name in ("defined", "undefined", "none", "number")}
    return env


ENV = make_environment()


_FAIL: Any = object()


class _Lookup:
    """`{{ a.b.c }}` or `{{ a.b | default('x') }}`: a path of mapping keys, maybe a default."""

    __slots__ = ("default", "path")

    def __init__(self, path: tuple[str, ...], default: Any = _FAIL) -> None:
        self.path, self.default = path, default


#: A simple template as parts: literal text, or lookups.
Parts = tuple[str | _Lookup, ...]


class Template:
    """A parsed template; render() raises jinja2 errors, the caller records them.

    Most templates only print values by path (`Hi {{ contact.name | default('there') }}`);
    those render without jinja when every path resolves through mappings (or has a constant
    default, which jinja's `default` also uses whenever the lookup is undefined), giving the same
    text as jinja (both use `str()`) at a fraction of the cost. Anything else, or any lookup that
    fails without a default, goes to jinja, so errors always come from the sandbox.
    """

    __slots__ = ("_parts", "_template", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._template = ENV.from_string(source)
        self._parts = _simple_parts(ENV.parse(source))

    def render(self, context: Mapping[str, Any]) -> str:
        text = self._fast(context) if self._parts is not None else _FAIL
        if text is _FAIL:
            text = self._template.render(context)
        if len(text) > MAX_OUTPUT:
            raise SecurityError("the rendered text is too long")
        return str(text)

    def render_with_jinja(self, context: Mapping[str, Any]) -> str:
        """The same render, always through jinja (tests compare the two)."""
        return self._template.render(context)

    def _fast(self, context: Mapping[str, Any]) -> Any:
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
            out.append(node if isinstance(node, str) else str(node))
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


def compile_template(source: str, names: Iterable[str]) -> Template:
    """Parse once; ValueError naming the problem (syntax, unknown variable) otherwise."""
    try:
        tree = ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error: {exc.message}") from exc
    known = set(names)
    try:
        unknown = sorted(jinja2.meta.find_undeclared_variables(tree) - known)
    except jinja2.TemplateError as exc:  # e.g. a filter that is not available
        raise ValueError(
            f"template error: {exc.message}, expected filters: {FILTER_NAMES}"
        ) from exc
    if unknown:
        raise ValueError(
            f"unknown template variable {unknown[0]!r}, expected one of: {', '.join(sorted(known))}"
        )
    try:
        return Template(source)
    except jinja2.TemplateError as exc:  # e.g. a filter that is not available
        raise ValueError(
            f"template error: {exc.message}, expected filters: {FILTER_NAMES}"
        ) from exc


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template inside a parameter value (texts, lists, mappings)."""
    if isinstance(value, Template):
        return value.render(context)
    if isinstance(value, list):
        return [render(item, context) for item in value]
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    return value


def describe(exc: Exception) -> str:
    """A short user-facing message for a render error."""
    if isinstance(exc, jinja2.UndefinedError | SecurityError):
        return str(exc.message or exc)
    return f"{type(exc).__name__}: {exc}"
