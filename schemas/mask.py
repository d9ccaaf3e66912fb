"""Masking identifiers before they reach a log line, an error message or a reject file.

A resident id keeps its division code and its last four characters (``110105********002X``), which
is enough to tell two rejects apart without revealing a person. A valid unified social credit
code names an organisation, not a person, and stays whole. Anything else keeps at most its first
three and last two characters, and never more than a quarter of its length at either end.
"""

from __future__ import annotations

import re

import polars as pl

from schemas.checks import check_uscc, uscc_expr

__all__ = ["mask_id", "mask_id_expr"]

_RESIDENT_ID_SHAPE = re.compile(r"[0-9]{17}[0-9Xx]")


def mask_id(value: str) -> str:
    """The loggable form of an identifier of any kind; the length is kept."""
    # Shape, not validity, decides: an id with a wrong check digit is still a person's number.
    if _RESIDENT_ID_SHAPE.fullmatch(value):
        return value[:6] + "*" * 8 + value[-4:]
    # Only a valid USCC stays whole: a mistyped resident id could otherwise pass for one.
    if check_uscc(value) is None:
        return value

    head = min(3, len(value) // 4)
    tail = min(2, len(value) // 4)
    return value[:head] + "*" * (len(value) - head - tail) + value[len(value) - tail :]


def mask_id_expr(column: str | pl.Expr) -> pl.Expr:
    """The vectorised form of :func:`mask_id` for a string column; nulls stay null."""
    value = pl.col(column) if isinstance(column, str) else column
    length = value.str.len_chars()
    head = pl.min_horizontal(pl.lit(3), length // 4)
    tail = pl.min_horizontal(pl.lit(2), length // 4)
    stars = pl.lit("*").repeat_by(length - head - tail).list.join("")
    other = pl.concat_str(value.str.slice(0, head), stars, value.str.slice(length - tail, tail))
    masked = (
        pl.when(value.str.contains(r"^[0-9]{17}[0-9Xx]$"))
        .then(pl.concat_str(value.str.slice(0, 6), pl.lit("*" * 8), value.str.slice(14, 4)))
        .when(uscc_expr(value).is_null())
        .then(value)
        .otherwise(other)
    )
    return masked.alias(column) if isinstance(column, str) else masked
