"""Reads task-state moves out of SQL text, for tests/test_states.py.

Every `UPDATE tasks SET status = <value> ... WHERE <condition>` is read with the
conditions of the CTEs it joins (`FROM cur`, `FROM batch`, ...). For each state the row
could be in, and each value of the parameters that decide the new state, the condition
is evaluated in three-valued logic: a comparison of `status` (qualified or not) with
state literals is true or false, anything else (ids, attempts, leases, sub-queries) may
be either. Wherever the condition is not certainly false, the values `<value>` can take
there (a literal, a parameter, a CASE on the old status) are moves the SQL can make.

A shape the reader does not understand (a `status` it cannot evaluate, a parameter
whose values nobody declared) raises `SqlShapeError`, rather than being guessed at.
Bodies of functions (`$$ ... $$`) are not read. A CTE an UPDATE joins is read as the
updated row itself: every such CTE here selects the row it is joined on by id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any, NamedTuple

_TOKEN = re.compile(r"""
    (?P<ws>\s+) | (?P<comment>--[^\n]*) | (?P<dollar>\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$)
  | (?P<string>'(?:[^']|'')*') | (?P<param>\$\d+) | (?P<number>\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*(?:\.(?:[A-Za-z_][A-Za-z_0-9]*|\*))*)
  | (?P<op>::|<>|!=|<=|>=|=>|\|\||[=<>+\-*/%,;()\[\]]) | (?P<other>\S)
""", re.X | re.S)
_OPEN, _CLOSE = {"(", "[", "case"}, {")", "]", "end"}


class SqlShapeError(ValueError):
    """A statement the reader cannot evaluate; read it by hand and teach the reader."""


class Tok(NamedTuple):
    kind: str
    text: str

    @property
    def low(self) -> str:
        return self.text.lower() if self.kind == "ident" else self.text

    @property
    def is_status(self) -> bool:
        return self.kind == "ident" and self.low.rsplit(".", 1)[-1] == "status"

    @property
    def literal(self) -> str:
        return self.text[1:-1].replace("''", "'")


Toks = Sequence[Tok]


def tokenize(sql: str) -> list[Tok]:
    """Tokens without blanks, comments or casts (`$3::text[]` reads `$3`)."""
    raw = [Tok(m.lastgroup if m.lastgroup not in (None, "tag") else "dollar", m.group())
           for m in _TOKEN.finditer(sql)]
    raw = [t for t in raw if t.kind not in ("ws", "comment")]
    out: list[Tok] = []
    i = 0
    while i < len(raw):
        if raw[i].text == "::":
            i += 2
            if i + 1 < len(raw) and (raw[i].text, raw[i + 1].text) == ("[", "]"):
                i += 2
            continue
        out.append(raw[i])
        i += 1
    return out


def _depths(toks: Toks) -> Iterator[tuple[int, Tok, int]]:
    """Each token with its index and the depth it sits at (brackets, parentheses, CASE)."""
    depth = 0
    for i, t in enumerate(toks):
        if t.low in _CLOSE:
            depth -= 1
        yield i, t, depth
        if t.low in _OPEN:
            depth += 1


def _split(toks: Toks, words: set[str]) -> list[tuple[str, list[Tok]]]:
    """The token list cut at top-level keywords or punctuation: [(word, tokens after it)]."""
    parts: list[tuple[str, list[Tok]]] = [("", [])]
    for _, t, depth in _depths(toks):
        if depth == 0 and t.low in words:
            parts.append((t.low, []))
        else:
            parts[-1][1].append(t)
    return parts


def _clause(toks: Toks, name: str, words: set[str]) -> list[Tok]:
    return next((body for word, body in _split(toks, words) if word == name), [])


def _commas(toks: Toks) -> list[list[Tok]]:
    return [body for _, body in _split(toks, {","}) if body]


@dataclass
class Node:
    """One SELECT or UPDATE: what it reads from, its condition, its named columns."""

    kind: str
    sources: list[str] = field(default_factory=list)
    where: list[Tok] = field(default_factory=list)
    columns: dict[str, list[Tok]] = field(default_factory=dict)
    table: str = ""
    status: list[Tok] | None = None
    values: dict[str, list[Tok]] = field(default_factory=dict)


_SELECT_WORDS = {"select", "from", "where", "group", "order", "limit", "for", "union", "having"}
_UPDATE_WORDS = {"update", "set", "from", "where", "returning"}


def _sources(toks: Toks) -> list[str]:
    return [item[0].low for item in _commas(toks)]


def parse_node(toks: Toks) -> Node:
    head = toks[0].low if toks else ""
    if head == "select":
        if any(w == "union" for w, _ in _split(toks, _SELECT_WORDS)):
            return Node("union")
        columns = {}
        for item in _commas(_clause(toks, "select", _SELECT_WORDS)):
            if len(item) > 2 and item[-2].low == "as":
                columns[item[-1].low] = item[:-2]
        return Node("select", _sources(_clause(toks, "from", _SELECT_WORDS)),
                    _clause(toks, "where", _SELECT_WORDS), columns)
    if head == "update":
        node = Node("update", _sources(_clause(toks, "from", _UPDATE_WORDS)),
                    _clause(toks, "where", _UPDATE_WORDS), table=toks[1].low)
        for item in _commas(_clause(toks, "set", _UPDATE_WORDS)):
            if item[0].low == "status" and item[1].text == "=":
                node.status = item[2:]
        return node
    if head == "insert" and len(toks) > 3 and toks[1].low == "into":
        cols = [c[0].low for c in _commas(toks[4:_close(toks, 3)])] if toks[3].text == "(" else []
        at = next((i for i, t in enumerate(toks) if t.low == "values"), None)
        vals = _commas(toks[at + 2:_close(toks, at + 1)]) if at is not None else []
        if at is None and toks[3].text == "(":  # INSERT INTO t (cols) SELECT ...
            rest = toks[_close(toks, 3) + 1:]
            if rest and rest[0].low == "select":
                vals = _commas(_clause(rest, "select", _SELECT_WORDS))
        return Node("insert", table=toks[2].low, values=dict(zip(cols, vals, strict=False)))
    return Node(head or "empty")


def _close(toks: Toks, i: int) -> int:
    """Index of the bracket (or END) that closes the one at `i`."""
    depth = 0
    for j in range(i, len(toks)):
        depth += (toks[j].low in _OPEN) - (toks[j].low in _CLOSE)
        if depth == 0:
            return j
    raise SqlShapeError(f"unbalanced near {' '.join(t.text for t in toks[i:i + 8])}")


@dataclass
class Statement:
    name: str
    ctes: dict[str, Node]
    main: Node

    def nodes(self) -> Iterator[Node]:
        yield from self.ctes.values()
        yield self.main


def parse_statement(name: str, toks: Toks) -> Statement:
    ctes: dict[str, Node] = {}
    i = 0
    if toks and toks[0].low == "with":
        i = 2 if len(toks) > 1 and toks[1].low == "recursive" else 1
        while True:
            cte, at = toks[i].low, i + 2
            if toks[i + 1].text == "(":  # a column list: `up(id, hops) AS (`
                i = _close(toks, i + 1)
                at = i + 2
            if toks[i + 1].low != "as":
                raise SqlShapeError(f"{name}: cannot read the CTE {_text(toks[i:i + 4])!r}")
            if toks[at].low in ("materialized", "not"):
                at = next(j for j in range(at, len(toks)) if toks[j].text == "(")
            end = _close(toks, at)
            ctes[cte] = parse_node(toks[at + 1:end])
            i = end + 1
            if toks[i].text != ",":
                break
            i += 1
    return Statement(name, ctes, parse_node(toks[i:]))


def statements(sql: str, source: str) -> list[Statement]:
    """Named queries (`-- name: x` headers) or, without headers, `;`-separated statements."""
    chunks = re.split(r"^--\s*name:\s*(\S+)[^\n]*$", sql, flags=re.M)
    named = list(zip(chunks[1::2], chunks[2::2], strict=True)) if len(chunks) > 1 \
        else [(source, sql)]
    out = []
    for name, text in named:
        for n, (_, toks) in enumerate(_split(tokenize(text), {";"})):
            if toks:
                out.append(parse_statement(name if n == 0 else f"{name}#{n}", toks))
    return out


# Conditions: ("and"|"or", [c, ...]), ("not", c), ("state", value, negated): the row's old
# status is (one of) value, ("param", "$n", literal, negated), ("unknown",).
# Values: ("lit", s), ("array", (s, ...)), ("param", "$n"), ("old",): the old status,
# ("case", [(condition, value), ...], value or None).
Ast = tuple[Any, ...]
UNKNOWN: Ast = ("unknown",)
_COMPARE = {"=": False, "<>": True, "!=": True}


def _outside_subqueries(toks: Toks) -> Iterator[Tok]:
    skip_to = -1
    for i, t in enumerate(toks):
        if i <= skip_to:
            continue
        if t.text == "(" and i + 1 < len(toks) and toks[i + 1].low == "select":
            skip_to = _close(toks, i)
            continue
        yield t


def _strings(toks: Toks) -> tuple[str, ...] | None:
    items = _commas(toks)
    if not all(len(i) == 1 and i[0].kind == "string" for i in items):
        return None
    return tuple(i[0].literal for i in items)


class Reader:
    """Conditions and values of one statement, with its CTEs for `cte.column` references."""

    def __init__(self, stmt: Statement) -> None:
        self.stmt = stmt

    def cond(self, toks: Toks) -> Ast:
        for word in ("or", "and"):
            parts = [body for _, body in _split(toks, {word})]
            if len(parts) > 1:
                return (word, [self.cond(p) for p in parts])
        if toks and toks[0].low == "not":
            return ("not", self.cond(toks[1:]))
        return self._atom(toks)

    def _atom(self, toks: Toks) -> Ast:
        n, low = len(toks), [t.low for t in toks]
        if n and toks[0].text == "(" and _close(toks, 0) == n - 1:
            return UNKNOWN if low[1] == "select" else self.cond(toks[1:-1])
        if n == 3 and toks[1].text in _COMPARE and {toks[0].kind, toks[2].kind} == {"ident", "string"} \
                and (toks[0].is_status or toks[2].is_status):
            lit = toks[2] if toks[2].kind == "string" else toks[0]
            return ("state", ("lit", lit.literal), _COMPARE[toks[1].text])
        if n == 3 and toks[0].kind == "param" and toks[1].text in _COMPARE \
                and toks[2].kind == "string":
            return ("param", toks[0].text, toks[2].literal, _COMPARE[toks[1].text])
        if n > 3 and toks[0].is_status:
            negated = low[1] == "not"
            at = 2 if negated else 1
            if low[at] == "in" and toks[at + 1].text == "(" and _close(toks, at + 1) == n - 1:
                listed = _strings(toks[at + 2:-1])
                if listed is not None:
                    return ("state", ("array", listed), negated)
            if low[1:3] == ["=", "any"] and toks[3].text == "(" and _close(toks, 3) == n - 1:
                return ("state", self.value(toks[4:-1]), False)
        if n == 1 and toks[0].kind == "ident" and "." in low[0]:
            qualifier, column = low[0].rsplit(".", 1)
            cte = self.stmt.ctes.get(qualifier)
            if cte is not None and column in cte.columns:
                return self.cond(cte.columns[column])
        if any(t.is_status for t in _outside_subqueries(toks)):
            raise SqlShapeError(f"{self.stmt.name}: cannot evaluate {_text(toks)!r}")
        return UNKNOWN

    def value(self, toks: Toks) -> Ast:
        n = len(toks)
        if n == 1 and toks[0].kind == "string":
            return ("lit", toks[0].literal)
        if n == 1 and toks[0].kind == "param":
            return ("param", toks[0].text)
        if n == 1 and toks[0].is_status:
            return ("old",)
        if n > 2 and toks[0].low == "array" and toks[1].text == "[" and _close(toks, 1) == n - 1:
            listed = _strings(toks[2:-1])
            if listed is not None:
                return ("array", listed)
        if n > 2 and toks[0].low == "case" and _close(toks, 0) == n - 1:
            parts = _split(toks[1:-1], {"when", "then", "else"})
            if parts[0][1] or [w for w, _ in parts[1:]] != \
                    ["when", "then"] * ((len(parts) - 1) // 2) + (["else"] if len(parts) % 2 == 0
                                                                  else []):
                raise SqlShapeError(f"{self.stmt.name}: cannot read {_text(toks)!r}")
            pairs = [(self.cond(parts[i][1]), self.value(parts[i + 1][1]))
                     for i in range(1, len(parts) - 1, 2)]
            default = self.value(parts[-1][1]) if parts[-1][0] == "else" else None
            return ("case", pairs, default)
        raise SqlShapeError(f"{self.stmt.name}: cannot read the value {_text(toks)!r}")

    def conditions(self, node: Node, seen: frozenset[str] = frozenset()) -> Ast:
        """The node's own condition and those of the CTEs it reads from."""
        parts = [self.cond(node.where)]
        for source in node.sources:
            if source == "tasks" and node.kind == "update":
                raise SqlShapeError(f"{self.stmt.name}: tasks joined to itself")
            cte = self.stmt.ctes.get(source)
            if cte is None or source in seen:
                continue
            if cte.kind == "select" and any(
                    getattr(self.stmt.ctes.get(s), "kind", None) == "union" for s in cte.sources):
                continue  # rows reached by a walk (a tree's ancestors): not the updated row
            if cte.kind != "select":
                raise SqlShapeError(f"{self.stmt.name}: cannot read the {cte.kind} CTE {source}")
            parts.append(self.conditions(cte, seen | {source}))
        return ("and", parts)


def _text(toks: Toks) -> str:
    return " ".join(t.text for t in toks)


def truth(c: Ast, env: Mapping[str, Any]) -> bool | None:
    """Three-valued: None when the condition may be either."""
    kind = c[0]
    if kind in ("and", "or"):
        found = {truth(x, env) for x in c[1]}
        stop = kind == "or"  # the value that decides: True for OR, False for AND
        return stop if stop in found else (not stop if found <= {not stop} else None)
    if kind == "not":
        inner = truth(c[1], env)
        return None if inner is None else not inner
    if kind == "state":
        found = {(env["status"] in v if isinstance(v, frozenset) else env["status"] == v) != c[2]
                 for v in values(c[1], env)}
        return found.pop() if len(found) == 1 else None
    if kind == "param":
        return None if c[1] not in env else (env[c[1]] == c[2]) != c[3]
    return None


def values(v: Ast, env: Mapping[str, Any]) -> set[Any]:
    """Every value `v` can take: a state, or a frozenset of states for an array."""
    kind = v[0]
    if kind == "lit":
        return {v[1]}
    if kind == "array":
        return {frozenset(v[1])}
    if kind == "param":
        return {env[v[1]]}
    if kind == "old":
        return {env["status"]}
    found: set[Any] = set()
    for cond, result in v[1]:
        t = truth(cond, env)
        if t is not False:
            found |= values(result, env)
        if t is True:
            return found
    return found | (values(v[2], env) if v[2] is not None else set())


def _walk(ast: Ast) -> Iterator[Ast]:
    yield ast
    kind, children = ast[0], []
    if kind in ("and", "or"):
        children = ast[1]
    elif kind in ("not", "state"):
        children = [ast[1]]
    elif kind == "case":
        children = [x for pair in ast[1] for x in pair] + ([ast[2]] if ast[2] else [])
    for child in children:
        yield from _walk(child)


class Move(NamedTuple):
    query: str
    source: str
    target: str


@dataclass
class Reading:
    moves: set[Move] = field(default_factory=set)
    # (query, state) of every row inserted into tasks.
    entries: set[tuple[str, str]] = field(default_factory=set)
    # Every state literal, and every list of states (`IN (...)`, `ARRAY[...]`).
    named: set[str] = field(default_factory=set)
    lists: set[frozenset[str]] = field(default_factory=set)
    # The states the last CHECK constraint on `status` allows.
    check: frozenset[str] | None = None


Domains = Mapping[tuple[str, str], Sequence[Any]]


def read(sources: Mapping[str, str], states: Sequence[str], domains: Domains) -> Reading:
    """Moves, entries and state names of SQL texts (by file name). `domains` gives the
    values of each parameter that decides a new state, by (query, "$n")."""
    out = Reading()
    for source, sql in sources.items():
        for stmt in statements(sql, source):
            _read_statement(stmt, states, domains, out)
        _read_names(tokenize(sql), out)
    return out


def _read_statement(stmt: Statement, states: Sequence[str], domains: Domains,
                    out: Reading) -> None:
    reader, query = Reader(stmt), stmt.name.split("#")[0]
    for node in stmt.nodes():
        if node.table != "tasks":
            continue
        if node.kind == "insert":
            entry = reader.value(node.values.get("status", []))
            if entry[0] != "lit":
                raise SqlShapeError(f"{stmt.name}: a task inserted in an unknown state")
            out.entries.add((query, entry[1]))
            continue
        if node.status is None:
            continue
        cond, new = reader.conditions(node), reader.value(node.status)
        asts = [*_walk(cond), *_walk(new)]
        params = sorted({a[1] for a in asts if a[0] == "param" and len(a) == 2}
                        | {a[1] for a in asts if a[0] == "param" and (query, a[1]) in domains})
        missing = [p for p in params if (query, p) not in domains]
        if missing:
            raise SqlShapeError(f"{query}: declare the values {missing} can take")
        out.named |= {a[1] for a in asts if a[0] == "lit"}
        out.named |= {a[2] for a in asts if a[0] == "param" and len(a) == 4}
        out.lists |= {frozenset(a[1]) for a in asts if a[0] == "array" and len(a[1]) > 1}
        for status in states:
            for combo in product(*(domains[(query, p)] for p in params)):
                env = {"status": status, **dict(zip(params, combo, strict=True))}
                if truth(cond, env) is not False:
                    out.moves |= {Move(query, status, t) for t in values(new, env)}


def _read_names(toks: Toks, out: Reading) -> None:
    """State literals beside any `status`, wherever it is: SELECTs, indexes, constraints."""
    for i, t in enumerate(toks):
        if not t.is_status:
            continue
        after = [x.low for x in toks[i + 1:i + 4]]
        if after[:1] and after[0] in _COMPARE and toks[i + 2].kind == "string":
            out.named.add(toks[i + 2].literal)
        if i and toks[i - 1].text in _COMPARE and toks[i - 2].kind == "string":
            out.named.add(toks[i - 2].literal)
        at = i + 1 + (after[:1] == ["not"])
        if at + 1 < len(toks) and toks[at].low == "in" and toks[at + 1].text == "(":
            listed = _strings(toks[at + 2:_close(toks, at + 1)])
            if listed is not None:
                out.named |= set(listed)
                if len(listed) > 1:
                    out.lists.add(frozenset(listed))
                if i >= 2 and toks[i - 2].low == "check":
                    out.check = frozenset(listed)
