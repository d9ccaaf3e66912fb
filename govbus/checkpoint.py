"""Cursor values as they are kept in checkpoints: tagged JSON that binds back to the same type.

A checkpoint holds the source's own value (a naive local timestamp stays naive, a text timestamp
in SQLite stays text), so the next run compares like with like in the source database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

__all__ = ["Checkpoint", "NullRow", "encode_value", "decode_value"]


def encode_value(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, datetime):
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, int):
        return {"t": "int", "v": value}
    if isinstance(value, Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": value}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    raise TypeError(f"cannot keep a cursor of type {type(value).__name__} in a checkpoint")


def decode_value(tagged: dict[str, Any] | None) -> Any:
    if tagged is None:
        return None
    kind, value = tagged["t"], tagged["v"]
    match kind:
        case "datetime":
            return datetime.fromisoformat(value)
        case "date":
            return date.fromisoformat(value)
        case "decimal":
            return Decimal(value)
        case "bool" | "int" | "float" | "str":
            return value
    raise ValueError(f"unknown cursor tag {kind!r}")


@dataclass(frozen=True)
class NullRow:
    """A row read while its cursor was NULL: its key values and a hash of its values then."""

    key: tuple[Any, ...]
    digest: str


@dataclass(frozen=True)
class Checkpoint:
    """Where the next incremental run of a resource starts, as of the last committed run.

    ``value`` is the highest cursor value a committed run read. The next run reads
    ``cursor >= value`` (inclusive, so a row committed late with the same value is not missed)
    and skips rows whose key is in ``boundary_keys`` and whose cursor still equals ``value``:
    those were loaded already. A key is the primary-key values as text joined by the unit
    separator (see ``govbus.sync.key_expr``).

    ``null_rows`` holds, by key, the rows last read with a NULL cursor and a hash of their values,
    so a later run loads such a row again only when it changed. ``source_state`` is what a source
    keeps between runs (a file source: the content hash of each file it loaded), and ``columns``
    the source's column types as the run saw them, to name the old type when one changes.
    """

    value: Any
    boundary_keys: frozenset[str] = field(default_factory=frozenset)
    null_rows: dict[str, NullRow] = field(default_factory=dict)
    source_state: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        keys = sorted(self.boundary_keys)
        nulls = {
            k: {"key": [encode_value(v) for v in row.key], "digest": row.digest}
            for k, row in sorted(self.null_rows.items())
        }
        return json.dumps(
            {
                "value": encode_value(self.value),
                "boundary_keys": keys,
                "null_rows": nulls,
                "source_state": self.source_state,
                "columns": self.columns,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        data = json.loads(text)
        nulls = {
            k: NullRow(tuple(decode_value(v) for v in row["key"]), row["digest"])
            for k, row in data.get("null_rows", {}).items()
        }
        return cls(
            value=decode_value(data["value"]),
            boundary_keys=frozenset(data.get("boundary_keys", [])),
            null_rows=nulls,
            source_state=data.get("source_state", {}),
            columns=data.get("columns", {}),
        )

    def describe(self) -> str:
        return "" if self.value is None else str(self.value)
