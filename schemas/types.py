"""How each catalogue data type is held in Arrow, in polars and in a SQL database."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from registry.catalogue import Item, ItemType

__all__ = ["polars_dtype", "arrow_type", "sql_type", "DecimalText"]

# A numeric item without declared precision keeps every digit: it travels as decimal text and is
# stored in an unconstrained NUMERIC column, never rescaled.
_DEFAULT_MONEY = (18, 2)


def _decimal_shape(item: Item) -> tuple[int, int] | None:
    if item.precision is not None:
        return item.precision, item.scale or 0
    if item.type is ItemType.Y:
        return _DEFAULT_MONEY
    return None


def polars_dtype(item: Item) -> pl.DataType:
    match item.type:
        case ItemType.C | ItemType.M:
            return pl.String()
        case ItemType.N | ItemType.Y:
            shape = _decimal_shape(item)
            return pl.String() if shape is None else pl.Decimal(*shape)
        case ItemType.D:
            return pl.Date()
        case ItemType.T:
            return pl.Datetime("us", "UTC")
        case ItemType.L:
            return pl.Boolean()
        case ItemType.G:
            return pl.Binary()
        case ItemType.I:
            return pl.Int64()
        case ItemType.B | ItemType.F:
            return pl.Float64()
    raise AssertionError(item.type)


def arrow_type(item: Item) -> pa.DataType:
    match item.type:
        case ItemType.C | ItemType.M:
            return pa.large_string()
        case ItemType.N | ItemType.Y:
            shape = _decimal_shape(item)
            return pa.large_string() if shape is None else pa.decimal128(*shape)
        case ItemType.D:
            return pa.date32()
        case ItemType.T:
            return pa.timestamp("us", tz="UTC")
        case ItemType.L:
            return pa.bool_()
        case ItemType.G:
            return pa.large_binary()
        case ItemType.I:
            return pa.int64()
        case ItemType.B | ItemType.F:
            return pa.float64()
    raise AssertionError(item.type)


class DecimalText(TypeDecorator[object]):
    """Exact decimals on SQLite, which has no exact numeric type: stored as their text."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        return None if value is None else str(value)

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        from decimal import Decimal

        return None if value is None else Decimal(value)


def sql_type(item: Item) -> sa.types.TypeEngine[object]:
    match item.type:
        case ItemType.C:
            return sa.String(item.length) if item.length else sa.Text()
        case ItemType.M:
            return sa.Text()
        case ItemType.N | ItemType.Y:
            shape = _decimal_shape(item)
            numeric = sa.Numeric() if shape is None else sa.Numeric(*shape)
            return numeric.with_variant(DecimalText(), "sqlite")
        case ItemType.D:
            return sa.Date()
        case ItemType.T:
            return sa.DateTime(timezone=True)
        case ItemType.L:
            return sa.Boolean()
        case ItemType.G:
            return sa.LargeBinary()
        case ItemType.I:
            return sa.BigInteger()
        case ItemType.B | ItemType.F:
            return sa.Double()
    raise AssertionError(item.type)
