"""A quick look at a batch before pandera: if it certainly passes, pandera need not run.

pandera stays the definition of valid data and the one that explains failures. Validating a batch
through it costs a lazy query and a collect per check and per column, about 3 seconds for a
million rows of a ten-column resource. Almost every batch passes, so the same rules are first
evaluated here as one polars ``select`` of vectorised expressions, read off the pandera schema:
dtype, nullability, string length, the named domain checks of ``schemas.checks`` and primary-key
uniqueness. Only a batch where any of them fails, or whose schema holds a check this module does
not know, goes through pandera.
"""

from __future__ import annotations

from collections.abc import Callable

import pandera.polars as pa
import polars as pl

from schemas.checks import CHECKS

__all__ = ["prescreen"]

_LENGTH_STATISTICS = {"min_value", "max_value", "exact_value"}

Screen = Callable[[pl.DataFrame], bool]


def _length_failure(column: str, check: pa.Check) -> pl.Expr:
    stats = check.statistics
    chars = pl.col(column).str.len_chars()
    if stats.get("exact_value") is not None:
        return chars != stats["exact_value"]
    fails = pl.lit(False)
    if stats.get("min_value") is not None:
        fails = fails | (chars < stats["min_value"])
    if stats.get("max_value") is not None:
        fails = fails | (chars > stats["max_value"])
    return fails


def _check_failure(column: str, check: pa.Check) -> pl.Expr | None:
    """True where ``check`` fails on a non-null value; None for a check not known here."""
    if check.name in CHECKS:
        return CHECKS[check.name].expr(column).is_not_null()
    if check.name in ("length", "str_length") and set(check.statistics) == _LENGTH_STATISTICS:
        return _length_failure(column, check)
    return None


def prescreen(schema: pa.DataFrameSchema) -> Screen | None:
    """A function telling whether a frame certainly passes ``schema``; None if it cannot tell."""
    if schema.checks or schema.strict or schema.unique_column_names:
        return None
    dtypes: dict[str, pl.DataType] = {}
    failures: list[pl.Expr] = []
    for name, column in schema.columns.items():
        if column.regex or column.unique or not column.required:
            return None
        dtypes[name] = column.dtype.type
        if not column.nullable:
            failures.append(pl.col(name).is_null())
        for check in column.checks:
            if not check.ignore_na:
                return None
            fails = _check_failure(name, check)
            if fails is None:
                return None
            failures.append(fails.fill_null(False))
    keys = list(schema.unique or [])
    if keys:
        failures.append(
            pl.struct(keys).is_duplicated() if len(keys) > 1 else pl.col(keys[0]).is_duplicated()
        )

    def passes(frame: pl.DataFrame) -> bool:
        if any(frame.schema.get(name) != dtype for name, dtype in dtypes.items()):
            return False
        if not failures or frame.is_empty():
            return True
        return not frame.select(pl.any_horizontal(failures).any()).item()

    return passes
