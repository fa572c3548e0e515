"""A sandboxed evaluator for the Kubernetes JSONPath dialect (``kubectl -o jsonpath``).

Resource interpreters read custom resources declaratively: a CRD's configuration says
where its replicas, status and health live, as expressions such as
``{.status.conditions[?(@.type=="Available")].status}``. Those expressions come from
users, so they are parsed by hand (no ``eval``, no regular expressions) and everything
an expression or a document can make us do is bounded: expression length, filter
nesting, document depth, the size of every intermediate result and the total work of
one evaluation. Exceeding a bound raises ``JSONPathError``; matching nothing does not.

Supported: optional ``{...}``; a leading ``$`` or, as kubectl allows, a bare first
field; ``.field`` (``\\`` escapes a character); ``['field']`` and ``["field"]``; ``[n]``
(negative counts from the end); ``[*]`` and ``.*``; slices ``[a:b:c]``; descent
``..field``, ``..*`` and ``..[...]``; filters over lists, ``[?(...)]``, with ``@``
paths, ``== != < <= > >=``, quoted strings, numbers, ``true``, ``false``, ``null``,
``&&``, ``||`` and parentheses. Not supported: several ``{}`` actions, ``range``, and
unions such as ``[0,1]``.
"""

from __future__ import annotations

import functools
import operator
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

# Read at evaluation time, so tests (and callers with special needs) may patch them.
MAX_EXPRESSION_LENGTH = 4096
MAX_NESTING = 32  # parentheses and filters within a filter; bounds the parser's recursion
MAX_DEPTH = 100  # document nesting that descent (``..``) walks into
MAX_RESULTS = 10_000  # size of any intermediate list of matches
MAX_WORK = 1_000_000  # nodes visited and values compared by one find(), filters included

_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
_COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")  # two-character operators first
_ORDERINGS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class JSONPathError(ValueError):
    """A malformed expression, a path set() cannot write, or an exceeded bound."""


@dataclass(frozen=True)
class _Step:
    kind: Literal["field", "index", "slice", "wildcard", "filter", "descent"]
    # The name, the index, a (start, stop, step) tuple, the filter's _Expr, or the
    # _Step a descent applies at every level; None for a wildcard.
    arg: Any
    column: int  # 0-based, for set()'s messages


@dataclass(frozen=True)
class _Expr:
    op: str  # "||", "&&", "exists", or one of _COMPARISONS
    # Sub-expressions for || and &&; otherwise operands, each an @ path (a tuple of
    # steps) or a literal (a str, number, bool or None: never a tuple, so no confusion).
    args: tuple[Any, ...]


class _Parser:
    """Recursive descent over characters; positions are 0-based, messages 1-based."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.nesting = 0

    def fail(self, problem: str, pos: int | None = None, hint: str = "") -> NoReturn:
        column = (self.pos if pos is None else pos) + 1
        hint = f"; {hint}" if hint else ""
        raise JSONPathError(f"{problem} at column {column}{hint} (in {self.src!r})")

    def unexpected(self, hint: str = "") -> NoReturn:
        found = repr(self.peek()) if self.peek() else "end of expression"
        self.fail(f"unexpected {found}", hint=hint)

    def peek(self) -> str:
        return self.src[self.pos : self.pos + 1]

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t", "\n", "\r"):
            self.pos += 1

    def accept(self, text: str, skip_ws: bool = False) -> bool:
        if skip_ws:
            self.skip_ws()
        if self.src.startswith(text, self.pos):
            self.pos += len(text)
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text, skip_ws=True):
            self.unexpected(hint=f"expected {text!r}")

    def parse(self) -> tuple[_Step, ...]:
        if len(self.src) > MAX_EXPRESSION_LENGTH:
            raise JSONPathError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
        braced = self.accept("{", skip_ws=True)
        steps: list[_Step] = []
        if not self.accept("$", skip_ws=True) and self.peek() in _NAME_CHARS:
            steps.append(self.after_dot())  # kubectl's relaxed "metadata.name"
        steps += self.steps()
        if braced:
            self.expect("}")
        self.skip_ws()
        if self.pos < len(self.src):
            self.unexpected()
        return tuple(steps)

    def steps(self) -> Iterator[_Step]:
        while True:
            start = self.pos
            if self.accept(".."):
                inner = self.bracket() if self.peek() == "[" else self.after_dot()
                yield _Step("descent", inner, start)
            elif self.accept("."):
                yield self.after_dot()
            elif self.peek() == "[":
                yield self.bracket()
            else:
                return

    def after_dot(self) -> _Step:
        start = self.pos
        if self.accept("*"):
            return _Step("wildcard", None, start)
        if self.peek() in _NAME_CHARS or self.peek() == "\\":
            return _Step("field", self.name(), start)
        self.unexpected(hint="expected a field name after '.'")

    def name(self) -> str:
        chars: list[str] = []
        while self.peek() in _NAME_CHARS or (self.peek() == "\\" and self.pos + 1 < len(self.src)):
            # kubectl escapes with a backslash: .metadata.labels.app\.kubernetes\.io\/name
            self.pos += self.peek() == "\\"
            chars.append(self.src[self.pos])
            self.pos += 1
        return "".join(chars)

    def bracket(self) -> _Step:
        start = self.pos
        self.pos += 1
        self.skip_ws()
        if self.accept("*"):
            step = _Step("wildcard", None, start)
        elif self.peek() in ("'", '"'):
            step = _Step("field", self.string(), start)
        elif self.accept("?"):
            self.expect("(")
            step = _Step("filter", self.or_expr(), start)
            self.expect(")")
        else:
            parts = [self.integer()]
            while len(parts) < 3 and self.accept(":", skip_ws=True):
                self.skip_ws()
                parts.append(self.integer())
            if len(parts) == 1:
                if parts[0] is None:
                    self.unexpected(hint="expected a field, index, slice, '*' or filter")
                step = _Step("index", parts[0], start)
            elif len(parts) == 3 and parts[2] == 0:
                self.fail("slice step cannot be zero", start)
            else:
                step = _Step("slice", (*parts, None)[:3], start)
        self.expect("]")
        return step

    def integer(self) -> int | None:
        begin = self.pos
        self.accept("-")
        while self.peek() in string.digits and self.peek():
            self.pos += 1
        if self.src[begin : self.pos] in ("", "-"):
            self.pos = begin
            return None
        return int(self.src[begin : self.pos])

    def string(self) -> str:
        begin, quote = self.pos, self.src[self.pos]
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.src) and self.src[self.pos] != quote:
            # A backslash makes the next character literal: 'it\'s', "say \"hi\"".
            self.pos += self.src[self.pos] == "\\" and self.pos + 1 < len(self.src)
            chars.append(self.src[self.pos])
            self.pos += 1
        if not self.accept(quote):
            self.fail("unterminated string", begin)
        return "".join(chars)

    def or_expr(self) -> _Expr:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            self.fail(f"filters nested deeper than {MAX_NESTING} levels")
        expr = self.chain("||", lambda: self.chain("&&", self.comparison))  # && binds tighter
        self.nesting -= 1
        return expr

    def chain(self, op: str, operand: Callable[[], _Expr]) -> _Expr:
        items = [operand()]
        while self.accept(op, skip_ws=True):
            items.append(operand())
        return items[0] if len(items) == 1 else _Expr(op, tuple(items))

    def comparison(self) -> _Expr:
        if self.accept("(", skip_ws=True):
            inner = self.or_expr()
            self.expect(")")
            return inner
        begin = self.pos
        left = self.operand()
        op = next((op for op in _COMPARISONS if self.accept(op, skip_ws=True)), None)
        if op is None:
            if self.peek() == "=":
                self.fail("use '==' to compare")
            if isinstance(left, tuple):
                return _Expr("exists", (left,))
            self.unexpected(hint="expected a comparison operator")
        self.skip_ws()
        right = self.operand()
        if not isinstance(left, tuple) and not isinstance(right, tuple):
            self.fail("a comparison needs at least one '@' path", begin)
        return _Expr(op, (left, right))

    def operand(self) -> Any:
        if self.accept("@"):
            return tuple(self.steps())
        if self.peek() in ("'", '"'):
            return self.string()
        if self.peek() in ("-", *string.digits):
            return self.number()
        for word, value in (("true", True), ("false", False), ("null", None)):
            end = self.pos + len(word)
            if self.src.startswith(word, self.pos) and self.src[end : end + 1] not in _NAME_CHARS:
                self.pos = end
                return value
        self.unexpected(hint="expected an '@' path or a literal")

    def number(self) -> int | float:
        begin = self.pos
        self.accept("-")
        # Take every character a JSON number may hold, then let int()/float() judge.
        while self.peek() in ("+", "-", ".", "e", "E", *string.digits):
            self.pos += 1
        text = self.src[begin : self.pos]
        try:
            return int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            self.fail(f"invalid number {text!r}", begin)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: True must not equal 1
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "container"


def _compare(op: str, a: Any, b: Any) -> bool:
    kind = _kind(a)
    if op in ("==", "!="):
        # Containers never compare equal: Python's deep == could recurse without bound.
        equal = kind == _kind(b) and kind != "container" and a == b
        return equal if op == "==" else not equal
    return kind == _kind(b) and kind in ("number", "string") and bool(_ORDERINGS[op](a, b))


class _Run:
    """One evaluation, with a work budget shared by every filter it runs."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.work = 0

    def fail(self, problem: str) -> NoReturn:
        raise JSONPathError(f"evaluating {self.source!r} {problem}")

    def spend(self, amount: int = 1) -> None:
        self.work += amount
        if self.work > MAX_WORK:
            self.fail(f"took more than {MAX_WORK} steps")

    def emit(self, out: list[Any], value: Any) -> None:
        out.append(value)
        self.spend()
        if len(out) > MAX_RESULTS:
            self.fail(f"gave more than {MAX_RESULTS} intermediate results")

    def run(self, steps: tuple[_Step, ...], nodes: list[Any]) -> list[Any]:
        for step in steps:
            out: list[Any] = []
            for node in nodes:
                self.apply(step, node, out)
            nodes = out
        return nodes

    def apply(self, step: _Step, node: Any, out: list[Any]) -> None:
        self.spend()
        if step.kind == "descent":
            for descendant in self.walk(node):
                self.apply(step.arg, descendant, out)
        elif isinstance(node, dict):
            if step.kind == "field" and step.arg in node:
                self.emit(out, node[step.arg])
            elif step.kind == "wildcard":
                for value in node.values():
                    self.emit(out, value)
        elif isinstance(node, list):  # like kubectl, filters select list items only
            if step.kind == "index" and -len(node) <= step.arg < len(node):
                self.emit(out, node[step.arg])
            elif step.kind in ("slice", "wildcard", "filter"):
                chosen = node[slice(*step.arg)] if step.kind == "slice" else node
                for value in chosen:
                    if step.kind != "filter" or self.test(step.arg, value):
                        self.emit(out, value)

    def walk(self, node: Any) -> Iterator[Any]:
        """The node and everything under it, parents first, children in document order."""
        stack: list[tuple[Any, int]] = [(node, 0)]
        while stack:
            current, depth = stack.pop()
            self.spend()
            yield current
            if isinstance(current, dict | list) and current:
                if depth >= MAX_DEPTH:  # also what stops a cyclic document
                    self.fail(f"met a document nested deeper than {MAX_DEPTH} levels")
                children = list(current.values() if isinstance(current, dict) else current)
                stack.extend((child, depth + 1) for child in reversed(children))

    def test(self, expr: _Expr, node: Any) -> bool:
        if expr.op in ("||", "&&"):
            check = any if expr.op == "||" else all
            return check(self.test(item, node) for item in expr.args)
        if expr.op == "exists":  # matching anything counts, even null or false
            return bool(self.run(expr.args[0], [node]))
        lefts, rights = (self.run(o, [node]) if isinstance(o, tuple) else [o] for o in expr.args)
        for left in lefts:  # true when any pair compares true, as kubectl does
            self.spend(len(rights))
            if any(_compare(expr.op, left, right) for right in rights):
                return True
        return False


@dataclass(frozen=True)
class JSONPath:
    """A parsed expression; constructing one validates ``source``."""

    source: str
    _steps: tuple[_Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str):
            raise JSONPathError(f"expression must be a string, not {type(self.source).__name__}")
        object.__setattr__(self, "_steps", _Parser(self.source).parse())

    def find(self, document: Any) -> list[Any]:
        """Every match, in document order; [] when nothing matches."""
        return _Run(self.source).run(self._steps, [document])

    def first(self, document: Any, default: Any = None) -> Any:
        matches = self.find(document)
        return matches[0] if matches else default

    def field_path(self) -> tuple[str, ...]:
        """The field names of a path made of fields only (``.spec.clusterIP``)."""
        if not self._steps:
            raise JSONPathError(
                f"a path to a field is needed, not the whole document (in {self.source!r})"
            )
        for step in self._steps:
            if step.kind != "field":
                raise JSONPathError(
                    f"only field names are allowed here, not the {step.kind} "
                    f"at column {step.column + 1} (in {self.source!r})"
                )
        return tuple(str(step.arg) for step in self._steps)

    def set(self, document: dict[str, Any], value: Any) -> dict[str, Any]:
        """A copy of ``document`` with ``value`` at this path; ``document`` is untouched.

        Only the containers along the path are copied, the rest is shared with
        ``document``. Missing or null fields on the way become empty dicts.
        """
        if not self._steps:
            raise JSONPathError(f"cannot set the whole document (in {self.source!r})")
        if not isinstance(document, dict):
            raise JSONPathError(f"set() needs a dict document, not {type(document).__name__}")
        root: dict[str, Any] = dict(document)
        parent: Any = root
        for position, step in enumerate(self._steps):
            where = f"at column {step.column + 1} (in {self.source!r})"
            if step.kind == "field" and isinstance(parent, dict):
                child = parent.get(step.arg)
            elif step.kind == "index" and isinstance(parent, list):
                if not -len(parent) <= step.arg < len(parent):
                    raise JSONPathError(f"index {step.arg} out of range {where}")
                child = parent[step.arg]
            elif step.kind == "field":
                raise JSONPathError(f"cannot set field {step.arg!r} on a list {where}")
            elif step.kind == "index":
                raise JSONPathError(f"cannot index a dict {where}")
            else:
                raise JSONPathError(f"set() supports only fields and indexes, not {where}")
            if position == len(self._steps) - 1:
                parent[step.arg] = value
                break
            following = self._steps[position + 1]
            if child is None and following.kind == "index":
                where = f"at column {following.column + 1} (in {self.source!r})"
                raise JSONPathError(f"cannot index a missing list {where}")
            if child is not None and not isinstance(child, dict | list):
                raise JSONPathError(f"cannot set below a {_kind(child)} value {where}")
            # Copy on the way down, so the caller's document stays as it was.
            child = {} if child is None else type(child)(child)
            parent[step.arg] = child
            parent = child
        return root


@functools.lru_cache(maxsize=512)
def compile(expression: str) -> JSONPath:  # shadows the builtin on purpose, like re.compile
    """Parse ``expression`` once; interpreters evaluate the same few paths constantly."""
    return JSONPath(expression)
