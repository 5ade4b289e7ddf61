"""Gallery filters: a small boolean expression over item metadata, in Milvus's expression syntax.

    name == "dev-190-0-img0"
    path like "photos/2024/%" and not name in ["a.jpg", "b.jpg"]
    (name != "x" or path like "%.png")

Fields: `name`, `path`. Operators: `==`, `!=`, `in [...]`, `like` (with `%` wildcards), `and`, `or`,
`not`, parentheses; values are double- or single-quoted strings. The same text goes to Milvus unchanged;
the embedded store translates it to an SQLite WHERE clause with bound parameters (never pasted into SQL).
"""

from __future__ import annotations

import re

from zscir_infer.stores import GalleryError

FIELDS = ("name", "path")
TOKEN = re.compile(r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>==|!=|\(|\)|\[|\]|,)|(?P<word>[A-Za-z_]\w*))""")


class FilterError(GalleryError):
    """A filter expression that cannot be parsed; the message says where and what is allowed."""


def _tokens(expression: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expression.rstrip()):
        match = TOKEN.match(expression, pos)
        if match is None:
            raise FilterError(f"Filter {expression!r}: cannot read {expression[pos:].strip()[:20]!r}; "
                              f"write e.g. 'name == \"x\"' or 'path like \"dir/%\"'.")
        kind = match.lastgroup
        value = match.group(kind)
        tokens.append((kind, value.lower() if kind == "word" and value.lower() in ("and", "or", "not", "in", "like")
                       else value))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, expression: str):
        self.expression, self.tokens, self.pos, self.params = expression, _tokens(expression), 0, []

    def fail(self, what: str) -> FilterError:
        return FilterError(f"Filter {self.expression!r}: {what}. Fields: {', '.join(FIELDS)}; operators ==, !=, "
                           "in [...], like, and, or, not, parentheses.")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        token = self.peek()
        if token is None or (value is not None and token[1] != value) or (kind is not None and token[0] != kind):
            raise self.fail(f"expected {value or kind} at token {self.pos + 1}")
        self.pos += 1
        return token[1]

    def parse(self) -> str:
        if not self.tokens:
            raise self.fail("it is empty")
        sql = self.disjunction()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return sql

    def disjunction(self) -> str:
        parts = [self.conjunction()]
        while self.peek() == ("word", "or"):
            self.take("or")
            parts.append(self.conjunction())
        return " OR ".join(parts) if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunction(self) -> str:
        parts = [self.negation()]
        while self.peek() == ("word", "and"):
            self.take("and")
            parts.append(self.negation())
        return " AND ".join(parts) if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def negation(self) -> str:
        if self.peek() == ("word", "not"):
            self.take("not")
            return f"NOT ({self.negation()})"
        if self.peek() == ("op", "("):
            self.take("(")
            inner = self.disjunction()
            self.take(")")
            return f"({inner})"
        return self.comparison()

    def string(self) -> str:
        raw = self.take(kind="string")
        return re.sub(r"\\(.)", r"\1", raw[1:-1])

    def comparison(self) -> str:
        field = self.take(kind="word")
        if field not in FIELDS:
            raise self.fail(f"unknown field {field!r}")
        op = self.peek()
        if op in (("op", "=="), ("op", "!=")):
            self.take()
            self.params.append(self.string())
            return f"{field} {'=' if op[1] == '==' else '!='} ?"
        if op == ("word", "like"):
            self.take()
            self.params.append(self.string())
            return f"{field} LIKE ? ESCAPE '\\'"
        if op == ("word", "in"):
            self.take()
            self.take("[")
            values = [self.string()]
            while self.peek() == ("op", ","):
                self.take(",")
                values.append(self.string())
            self.take("]")
            self.params.extend(values)
            return f"{field} IN ({','.join('?' * len(values))})"
        raise self.fail(f"expected ==, !=, in or like after {field!r}")


def filter_to_sql(expression: str) -> tuple[str, list[str]]:
    """(an SQLite WHERE clause with ? placeholders, its parameters) for a filter expression."""
    parser = _Parser(expression)
    return parser.parse(), parser.params
