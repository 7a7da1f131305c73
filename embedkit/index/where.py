"""``--where`` filters: a small SQL-like condition on the carried columns, parsed into a
pyarrow expression for :meth:`LatentDataset.filter`.

Grammar (keywords in any case)::

    condition  := term (OR term)*
    term       := factor (AND factor)*
    factor     := NOT factor | ( condition ) | comparison
    comparison := column (= | == | != | <> | < | <= | > | >=) value
                | column [NOT] IN ( value, ... )
                | column IS [NOT] NULL
                | column [NOT] BETWEEN value AND value
    column     := name | "quoted name"
    value      := 'text' (a quote doubled inside) | number | TRUE | FALSE

Example: ``color = 'red' AND (year >= 2023 OR label IN ('cat', 'dog'))``.

Nulls behave as in SQL: a comparison with a null is unknown, and a row is kept only
when the condition is true (``color NOT IN ('blue')`` keeps no row whose color is null).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from embedkit.errors import InputError

__all__ = ["parse_where"]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<quoted>"(?:[^"]|"")+")
      | (?P<op><=|>=|<>|!=|==|=|<|>|\(|\)|,)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "between", "true", "false"}
_COMPARE = {"=": "__eq__", "==": "__eq__", "!=": "__ne__", "<>": "__ne__", "<": "__lt__",
            "<=": "__le__", ">": "__gt__", ">=": "__ge__"}  # fmt: skip


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    """``(kind, value, position)`` of each token; kinds: string, number, name, op, kw."""
    out, pos = [], 0
    while pos < len(text.rstrip()):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            at = len(text) - len(text[pos:].lstrip())
            raise InputError(f"--where: cannot read {text[at : at + 20]!r} at position {at}")
        kind = match.lastgroup
        raw = match.group(kind)
        start = match.start(kind)
        if kind == "string":
            out.append(("string", raw[1:-1].replace("''", "'"), start))
        elif kind == "number":
            out.append(("number", float(raw) if re.search(r"[.eE]", raw) else int(raw), start))
        elif kind == "quoted":
            out.append(("name", raw[1:-1].replace('""', '"'), start))
        elif kind == "word" and raw.lower() in _KEYWORDS:
            out.append(("kw", raw.lower(), start))
        else:
            out.append(("name" if kind == "word" else "op", raw, start))
        pos = match.end()
    return out


class _Parser:
    """Recursive descent over the tokens (see the module docstring)."""

    def __init__(self, text: str, columns: Sequence[str] | None):
        self.text, self.tokens, self.at = text, _tokens(text), 0
        self.columns = None if columns is None else list(columns)

    def _peek(self, kind: str, value: str | None = None) -> bool:
        if self.at >= len(self.tokens):
            return False
        got_kind, got, _ = self.tokens[self.at]
        return got_kind == kind and (value is None or got == value)

    def _take(self, kind: str, value: str | None = None, what: str = "") -> Any:
        if not self._peek(kind, value):
            found = "the end" if self.at >= len(self.tokens) else repr(self.tokens[self.at][1])
            where = len(self.text) if self.at >= len(self.tokens) else self.tokens[self.at][2]
            raise InputError(
                f"--where: expected {what or value or kind} at position {where}, found {found}"
                f" in {self.text!r}; e.g. --where \"color = 'red' AND year >= 2023\""
            )
        self.at += 1
        return self.tokens[self.at - 1][1]

    def parse(self) -> pc.Expression:
        expr = self._or()
        if self.at < len(self.tokens):
            self._take("end", what="AND, OR or the end")
        return expr

    def _or(self) -> pc.Expression:
        expr = self._and()
        while self._peek("kw", "or"):
            self.at += 1
            expr = expr | self._and()
        return expr

    def _and(self) -> pc.Expression:
        expr = self._not()
        while self._peek("kw", "and"):
            self.at += 1
            expr = expr & self._not()
        return expr

    def _not(self) -> pc.Expression:
        if self._peek("kw", "not"):
            self.at += 1
            return ~self._not()
        if self._peek("op", "("):
            self.at += 1
            expr = self._or()
            self._take("op", ")")
            return expr
        return self._comparison()

    def _column(self) -> pc.Expression:
        name = self._take("name", what="a column name")
        if self.columns is not None and name not in self.columns:
            raise InputError(
                f"--where: no column {name!r}; columns: {', '.join(self.columns) or 'none'}"
            )
        return pc.field(name)

    def _value(self) -> Any:
        if self._peek("kw", "true") or self._peek("kw", "false"):
            return self._take("kw") == "true"
        if self._peek("string"):
            return self._take("string")
        if self._peek("number"):
            return self._take("number")
        what = "a value ('text' in single quotes, a number, TRUE or FALSE)"
        return self._take("value", what=what)

    def _comparison(self) -> pc.Expression:
        column = self._column()
        if self._peek("kw", "is"):
            self.at += 1
            negate = self._peek("kw", "not") and bool(self._take("kw", "not"))
            self._take("kw", "null", "NULL")
            return column.is_valid() if negate else column.is_null()
        negate = self._peek("kw", "not") and bool(self._take("kw", "not"))
        if self._peek("kw", "in"):
            self.at += 1
            self._take("op", "(")
            values = [self._value()]
            while self._peek("op", ","):
                self.at += 1
                values.append(self._value())
            self._take("op", ")")
            unknown = pc.scalar(pa.scalar(None, pa.bool_()))  # a null is neither in nor out
            expr = column.isin(values) | (column.is_null() & unknown)
        elif self._peek("kw", "between"):
            self.at += 1
            low = self._value()
            self._take("kw", "and", "AND")
            expr = (column >= low) & (column <= self._value())
        elif negate:
            self._take("kw", "in", "IN or BETWEEN after NOT")
        else:
            op = self._take("op", what="a comparison (=, !=, <, <=, >, >=, IN, IS, BETWEEN)")
            if op not in _COMPARE:
                raise InputError(f"--where: {op!r} is not a comparison in {self.text!r}")
            expr = getattr(column, _COMPARE[op])(self._value())
        return ~expr if negate else expr


def parse_where(text: str, columns: Sequence[str] | None = None) -> pc.Expression:
    """A pyarrow expression for the SQL-like condition ``text`` (see the module
    docstring); ``columns``: the names it may use (others are a one-line error).

    Example:
        >>> parse_where("color = 'red' AND year >= 2023")
        <pyarrow.compute.Expression ((color == "red") and (year >= 2023))>
    """
    if not str(text).strip():
        raise InputError("--where is empty; e.g. --where \"color = 'red'\"")
    return _Parser(str(text), columns).parse()
