"""Metadata filters for search: ``--where "duration < 600 and genre != 'Christmas'"``.

The expression is parsed with Python's ``ast`` and only a small, safe subset is accepted (nothing is
ever evaluated as code): field names, string and number literals, lists of literals, the comparisons
``== != < <= > >= in, not in``, and ``and``, ``or``, ``not`` with parentheses. SQL spellings work too
(``=``, ``AND``, ``OR``, ``NOT``, ``IN``), since that is how AudioMuse-AI users write them.

Fields (see :data:`FIELDS`): text fields compare case-insensitively; ``genre`` (alias ``tag``, ``tags``)
is a list, so ``genre == 'rock'`` means "one of its genres is rock" and ``genre != 'Christmas'`` means
"none is"; ``year`` and ``duration`` (seconds) are numbers. A track without a value never matches a
comparison except ``!=`` / ``not in``, so ``year < 1990`` leaves out untagged tracks.

Evaluation is vectorised over an :class:`ItemTable` built once per index, so a filter over a million
tracks costs one pass over a few arrays, not a Python call per track.
"""

from __future__ import annotations

import ast
import difflib
import io
import math
import tokenize
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MtxError

TEXT_FIELDS = ("artist", "album", "title", "dataset", "path")
NUMBER_FIELDS = ("year", "duration")
LIST_FIELDS = ("genre",)
ALIASES = {"tag": "genre", "tags": "genre", "genres": "genre", "audio_path": "path", "length": "duration"}
FIELDS = (*TEXT_FIELDS, *NUMBER_FIELDS, *LIST_FIELDS)

_HINT = "e.g. --where \"duration < 600 and genre != 'Christmas'\"; fields: " + ", ".join(FIELDS)


def _error(message: str, hint: str = _HINT) -> MtxError:
    return MtxError(f"--where: {message}", hint=hint)


def _norm(v: Any) -> str | None:
    return " ".join(str(v).lower().split()) if v not in (None, "") else None


def _number(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


@dataclass
class ItemTable:
    """Columns of an index's track metadata, in row order."""

    text: dict[str, np.ndarray]       # field -> object array of lower-cased strings or None
    numbers: dict[str, np.ndarray]    # field -> float64 (NaN = unknown)
    genres: list[frozenset[str]]

    def __len__(self) -> int:
        return len(self.genres)

    @classmethod
    def build(cls, ids: Sequence[str], items: Mapping[str, Mapping[str, Any]]) -> "ItemTable":
        rows = [items.get(i) or {} for i in ids]
        text = {f: np.array([_norm(r.get("audio_path" if f == "path" else f)) for r in rows], dtype=object)
                for f in TEXT_FIELDS}
        numbers = {f: np.array([_number(r.get(f)) for r in rows], dtype=np.float64) for f in NUMBER_FIELDS}
        genres = [frozenset(g for g in (_norm(t) for t in (r.get("genres") or r.get("tags") or [])) if g)
                  for r in rows]
        return cls(text=text, numbers=numbers, genres=genres)


def _sql_to_python(expr: str) -> str:
    """``=`` -> ``==`` and upper-case AND/OR/NOT/IN -> Python's, outside string literals."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(expr).readline):
            if tok.type == tokenize.OP and tok.string == "=":
                out.append((tok.type, "=="))
            elif tok.type == tokenize.OP and tok.string == "<>":
                out.append((tok.type, "!="))
            elif tok.type == tokenize.NAME and tok.string.lower() in ("and", "or", "not", "in"):
                out.append((tok.type, tok.string.lower()))
            else:
                out.append((tok.type, tok.string))
    except (tokenize.TokenError, IndentationError, SyntaxError) as e:
        raise _error(f"cannot read {expr!r} ({e.args[0] if e.args else e})") from None
    return tokenize.untokenize(out).strip()


def parse(expr: str) -> ast.Expression:
    """Parse and check ``expr``; raises one-line MtxErrors for anything outside the subset."""
    if not expr or not expr.strip():
        raise _error("empty expression")
    try:
        tree = ast.parse(_sql_to_python(expr), mode="eval")
    except SyntaxError as e:
        raise _error(f"cannot parse {expr!r} ({e.msg})") from None
    _check(tree.body)
    return tree


def _field(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        name = ALIASES.get(node.id.lower(), node.id.lower())
        if name not in FIELDS:
            near = difflib.get_close_matches(name, [*FIELDS, *ALIASES], n=1, cutoff=0.5)
            raise _error(f"unknown field {node.id!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        return name
    return None


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    raise _error(f"expected a value (a 'string', a number or a list), got {ast.unparse(node)!r}")


_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
        ast.In: "in", ast.NotIn: "not in"}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _check(node: ast.AST) -> None:
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand)
    elif isinstance(node, ast.Compare):
        _comparison(node)
    else:
        raise _error(f"{ast.unparse(node)!r} is not a comparison (write field == value, joined by and/or)")


def _comparison(node: ast.Compare) -> tuple[str, str, Any]:
    if len(node.ops) != 1 or type(node.ops[0]) not in _OPS:
        raise _error(f"{ast.unparse(node)!r}: one comparison at a time (a < x and x < b)")
    op = _OPS[type(node.ops[0])]
    left, right = node.left, node.comparators[0]
    field = _field(left)
    if field is None:
        field = _field(right)
        if field is None or op in ("in", "not in"):
            raise _error(f"{ast.unparse(node)!r} compares no field")
        op, value = _FLIP[op], _literal(left)
    else:
        value = _literal(right)
    if op in ("in", "not in"):
        if not isinstance(value, list):
            raise _error(f"{ast.unparse(node)!r}: 'in' takes a list, e.g. genre in ['rock', 'metal']")
    elif isinstance(value, list):
        raise _error(f"{ast.unparse(node)!r}: a list goes with 'in' / 'not in'")
    values = value if isinstance(value, list) else [value]
    if field in NUMBER_FIELDS and not all(isinstance(v, (int, float)) for v in values):
        raise _error(f"{field} is a number: {ast.unparse(node)!r}")
    if field not in NUMBER_FIELDS and op in ("<", "<=", ">", ">="):
        raise _error(f"{field} is text: order comparisons work on {', '.join(NUMBER_FIELDS)}")
    return field, op, value


def _compare(table: ItemTable, field: str, op: str, value: Any) -> np.ndarray:
    if field in NUMBER_FIELDS:
        col = table.numbers[field]
        with np.errstate(invalid="ignore"):
            if op in ("in", "not in"):
                hit = np.isin(col, np.asarray(value, dtype=np.float64))
            else:
                hit = {"==": col == value, "!=": col == value, "<": col < value, "<=": col <= value,
                       ">": col > value, ">=": col >= value}[op]
        return ~hit if op in ("!=", "not in") else hit
    wanted = {_norm(v) for v in (value if isinstance(value, list) else [value])}
    if field in LIST_FIELDS:
        hit = np.fromiter((not s.isdisjoint(wanted) for s in table.genres), dtype=bool, count=len(table))
    else:
        col = table.text[field]
        hit = np.fromiter((v in wanted for v in col), dtype=bool, count=len(col))
    return ~hit if op in ("!=", "not in") else hit


def _mask(node: ast.AST, table: ItemTable) -> np.ndarray:
    if isinstance(node, ast.BoolOp):
        parts = [_mask(v, table) for v in node.values]
        return np.logical_and.reduce(parts) if isinstance(node.op, ast.And) else np.logical_or.reduce(parts)
    if isinstance(node, ast.UnaryOp):
        return ~_mask(node.operand, table)
    return _compare(table, *_comparison(node))  # type: ignore[arg-type]


def where_mask(expr: str, table: ItemTable) -> np.ndarray:
    """Boolean [N]: which rows of ``table`` satisfy ``expr``."""
    return _mask(parse(expr).body, table)


def exclude_artists_mask(artists: Sequence[str], table: ItemTable) -> np.ndarray:
    """Boolean [N]: rows whose artist is none of ``artists`` (case and spacing ignored)."""
    return _compare(table, "artist", "not in", list(artists))


def negative_query(q: np.ndarray, negative: np.ndarray, weight: float) -> np.ndarray:
    """The query moved away from a described sound: unit(q - weight * unit(negative)).

    A text tower reads "music without drums" close to "drums" (negation barely moves an embedding),
    so the opposite is asked for explicitly, as the difference of the two directions.
    """
    if not 0.0 <= weight <= 1.0:
        raise MtxError(f"--not-weight must be between 0 and 1 (got {weight})",
                       hint="0 ignores --not; 0.5 is the default")
    n = negative / max(float(np.linalg.norm(negative)), 1e-12)
    out = q / max(float(np.linalg.norm(q)), 1e-12) - weight * n
    return (out / max(float(np.linalg.norm(out)), 1e-12)).astype(np.float32)
