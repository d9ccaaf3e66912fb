"""How each catalogue data type is held in Arrow, in polars and in a SQL database."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from registry.catalogue import Item, ItemType

__all__ = [
    "polars_dtype",
    "arrow_type",
    "sql_type",
    "DecimalText",
    "describe_item",
    "item_for_column",
    "misfit",
]

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


# -- source column types against registered items ------------------------------------------------


def describe_item(item: Item) -> str:
    """An item's type as the catalogue writes it: ``N(18,2)``, ``C(18)``, ``T``."""
    if item.precision is not None:
        return f"{item.type.value}({item.precision},{item.scale or 0})"
    if item.length is not None:
        return f"{item.type.value}({item.length})"
    return item.type.value


def item_for_column(name: str, column_type: sa.types.TypeEngine[object] | None) -> Item:
    """The item a source column would be registered as: how a drift policy of evolve carries it."""
    fields: dict[str, object] = {"name": name, "nullable": True}
    match column_type:
        case sa.Boolean():
            fields["type"] = ItemType.L
        case sa.Integer():
            fields["type"] = ItemType.I
        case sa.Float():
            fields["type"] = ItemType.B
        case sa.Numeric() if column_type.precision and column_type.precision <= 38:
            scale = column_type.scale or 0
            fields |= {"type": ItemType.N, "precision": column_type.precision, "scale": scale}
        case sa.Numeric():
            fields["type"] = ItemType.N
        case sa.DateTime():
            fields["type"] = ItemType.T
        case sa.Date():
            fields["type"] = ItemType.D
        case sa.String() if column_type.length and not isinstance(column_type, sa.Text):
            fields |= {"type": ItemType.C, "length": column_type.length}
        case sa.LargeBinary() | sa.types._Binary():
            fields["type"] = ItemType.G
        case _:
            fields["type"] = ItemType.M
    return Item.model_validate(fields)


def misfit(
    item: Item, column_type: sa.types.TypeEngine[object], *, changed: bool = False
) -> str | None:
    """Why a source column of this type cannot be read as the item, or None when it can.

    The family is compared (text, number, time, ...). A column that ``changed`` type since the
    last run is also refused when, as an exact number, it can now hold more digits than the
    item; otherwise such values are rejected one by one, as lengths are.
    """
    if isinstance(column_type, sa.types.NullType):
        return None
    is_text = isinstance(column_type, sa.String | sa.Enum | sa.JSON)
    match item.type:
        case ItemType.C | ItemType.M:
            ok = is_text or isinstance(column_type, sa.Uuid)
        case ItemType.N | ItemType.Y:
            ok = isinstance(column_type, sa.Integer) or (
                isinstance(column_type, sa.Numeric) and not isinstance(column_type, sa.Float)
            )
            shape = _decimal_shape(item)
            if changed and ok and shape is not None and isinstance(column_type, sa.Numeric):
                precision, scale = shape
                if column_type.precision is not None:
                    wider = (column_type.scale or 0) > scale or (
                        column_type.precision - (column_type.scale or 0) > precision - scale
                    )
                    if wider:
                        return "it holds more digits than the registered precision and scale"
        case ItemType.I:
            ok = isinstance(column_type, sa.Integer)
        case ItemType.B | ItemType.F:
            ok = isinstance(column_type, sa.Float | sa.Numeric | sa.Integer)
        case ItemType.D:
            ok = isinstance(column_type, sa.Date | sa.DateTime)
        case ItemType.T:
            ok = isinstance(column_type, sa.DateTime | sa.Date)
        case ItemType.L:
            ok = isinstance(column_type, sa.Boolean | sa.Integer)
        case ItemType.G:
            ok = isinstance(column_type, sa.LargeBinary | sa.types._Binary | sa.String)
    return None if ok else "its values are not of the registered type"
