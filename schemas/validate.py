"""What valid data is: a pandera schema built from a resource's registered items.

A batch from a source is first *coerced* to the registered types (a value that cannot be read as
its item's type is a failure, not a crash), then *validated* against the pandera schema: types,
nullability, length, primary-key uniqueness inside the batch and the named domain checks written
in the catalogue (``checks: [uscc]``). Rows with any failure are split off with one reason per
failure, so the pipeline can load the rest and keep the rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from registry.catalogue import Item, ItemType, ResourceSpec
from schemas.checks import CHECKS
from schemas.mask import mask_id
from schemas.prescreen import prescreen
from schemas.types import polars_dtype

__all__ = ["Checked", "BatchValidator", "REJECT_SCHEMA"]

ROW = "__govbus_row"

#: columns of the rejects frame a validator returns
REJECT_SCHEMA = {"row": pl.Int64, "item": pl.String, "reason": pl.String, "value": pl.String}

_MAX_VALUE_CHARS = 200


@dataclass(frozen=True)
class Checked:
    good: pl.DataFrame
    rejects: pl.DataFrame  # one row per failure: row (position in the batch), item, reason, value
    rejected_rows: int


def _domain_check(name: str) -> pa.Check:
    check = CHECKS[name]

    def passes(data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(check.expr(data.key).is_null())

    return pa.Check(passes, name=name)


def _column(item: Item, in_key: bool) -> pa.Column:
    checks: list[pa.Check] = []
    if item.length is not None:
        checks.append(pa.Check.str_length(max_value=item.length, name="length"))
    checks.extend(_domain_check(name) for name in item.checks)
    return pa.Column(
        polars_dtype(item),
        nullable=item.nullable and not in_key,
        checks=checks,
        coerce=False,
    )


def _masked(item: Item) -> bool:
    return "resident_id" in item.checks


class BatchValidator:
    """Coerces and validates batches of one resource; build once per run, reuse per batch."""

    def __init__(self, spec: ResourceSpec) -> None:
        self.spec = spec
        self.items = {item.name: item for item in spec.items}
        keys = list(spec.source.primary_key)
        self.schema = pa.DataFrameSchema(
            {item.name: _column(item, item.name in keys) for item in spec.items},
            unique=keys,
            strict=False,
            name=spec.code,
        )
        self._screen = prescreen(self.schema)

    # -- coercion -------------------------------------------------------------------------------

    def _coerce_expr(self, item: Item, source: pl.DataType) -> tuple[pl.Expr, pl.Expr | None]:
        """The cast of one item, and an expression giving a reject reason where the cast lost data.

        A reason of None means the generic one: a value that became null is ``type.<letter>``.
        """
        col = pl.col(item.name)
        target = polars_dtype(item)
        if item.type is ItemType.T:
            return self._timestamp_expr(col, source), None
        if item.type is ItemType.D:
            if source == pl.String:
                return col.str.strip_chars().str.to_date(strict=False), None
            if isinstance(source, pl.Datetime):
                return col.dt.date(), None
        if item.type in (ItemType.N, ItemType.Y):
            return _decimal_expr(item, col, source)
        if item.type in (ItemType.C, ItemType.M) and source == pl.Binary:
            return col.cast(pl.String, strict=False), None
        if item.type is ItemType.L and source == pl.String:
            lowered = col.str.strip_chars().str.to_lowercase()
            return (
                pl.when(lowered.is_in(["1", "true", "t", "y", "yes", "是"]))
                .then(True)
                .when(lowered.is_in(["0", "false", "f", "n", "no", "否"]))
                .then(False)
                .otherwise(None)
            ), None
        if item.type is ItemType.I and source == pl.String:
            return col.str.strip_chars().cast(target, strict=False), None
        return col.cast(target, strict=False), None

    def _timestamp_expr(self, col: pl.Expr, source: pl.DataType) -> pl.Expr:
        """Timestamps to UTC microseconds; naive ones are read in the source's time zone."""
        zone = self.spec.source.timezone
        if source == pl.String:
            text = (
                col.str.strip_chars()
                .str.replace("T", " ", literal=True)
                .str.replace_all("/", "-", literal=True)
                .str.replace(r"Z$", "+00:00")
            )
            aware = pl.coalesce(
                [
                    text.str.to_datetime(f + "%z", time_unit="us", strict=False)
                    for f in _TIME_FORMATS
                ]
            )
            naive = pl.coalesce(
                [text.str.to_datetime(f, time_unit="us", strict=False) for f in _TIME_FORMATS]
                + [text.str.to_date(_DATE_FORMAT, strict=False).cast(pl.Datetime("us"))]
            )
            local = _localize(naive, zone)
            return pl.coalesce(aware.dt.convert_time_zone("UTC"), local)
        if isinstance(source, pl.Date):
            col = col.cast(pl.Datetime("us"))
            source = pl.Datetime("us")
        if isinstance(source, pl.Datetime):
            if source.time_zone is None:
                col = _localize(col, zone)
            return col.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        return col.cast(pl.Datetime("us", "UTC"), strict=False)

    def coerce(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Cast each item to its registered type; returns the cast frame and type failures."""
        exprs = []
        failures = []
        for name, item in self.items.items():
            source = frame.schema[name]
            cast, reason = self._coerce_expr(item, source)
            exprs.append(cast.alias(name))
            generic = pl.when(pl.col(name).is_not_null() & cast.is_null()).then(
                pl.lit(f"type.{item.type.value}")
            )
            if reason is not None:
                generic = pl.coalesce(reason, generic)
            failures.append(generic.alias(name))
        coerced = frame.select(pl.col(ROW), *exprs)
        failed = frame.select(pl.col(ROW), *failures)
        rejects = []
        for name, item in self.items.items():
            hits = failed.filter(pl.col(name).is_not_null())
            if hits.is_empty():
                continue
            rows = hits[ROW]
            values = frame.filter(pl.col(ROW).is_in(rows.implode()))[name]
            rejects.append(
                pl.DataFrame(
                    {
                        "row": rows,
                        "item": name,
                        "reason": hits[name],
                        "value": [self._show(item, v) for v in values.to_list()],
                    },
                    schema=REJECT_SCHEMA,
                )
            )
        # A value whose cast failed is reported by coercion; null it so validation does not
        # report the same value again as a missing one.
        coerced = coerced.with_columns(
            [
                pl.when(failed[name].is_null()).then(pl.col(name)).otherwise(None).alias(name)
                for name in self.items
            ]
        )
        return coerced, _concat(rejects)

    # -- validation -----------------------------------------------------------------------------

    def _show(self, item: Item | None, value: Any) -> str | None:
        if value is None:
            return None
        text = value.hex() if isinstance(value, bytes) else str(value)
        if item is not None and _masked(item):
            text = mask_id(text)
        return text[:_MAX_VALUE_CHARS]

    def _reason(self, column: str | None, check: str, value: Any) -> str:
        if check in CHECKS and value is not None:
            detail = CHECKS[check].scalar(str(value))
            if detail:
                return detail
            return f"{check}.invalid"
        if check == "not_nullable":
            return "null.not_allowed"
        if check.startswith("str_length") or check == "length":
            return "length.exceeded"
        if check == "multiple_fields_uniqueness" or check == "field_uniqueness":
            return "primary_key.duplicate"
        if check.startswith("dtype"):
            return "type.mismatch"
        return check

    def check(self, frame: pl.DataFrame) -> Checked:
        """Split a batch (already holding a ``__govbus_row`` position column) into good and bad."""
        coerced, type_rejects = self.coerce(frame)
        schema_rejects = _concat([])
        # pandera runs only on a batch the vectorised prescreen cannot pass: it names failures
        if self._screen is None or not self._screen(coerced):
            try:
                self.schema.validate(coerced.drop(ROW), lazy=True)
            except pa.errors.SchemaErrors as exc:
                schema_rejects = self._failures(exc.failure_cases, coerced)
        rejects = _concat([type_rejects, schema_rejects]).unique(maintain_order=True)
        bad_rows = rejects["row"].unique()
        good = coerced.filter(~pl.col(ROW).is_in(bad_rows.implode()))
        return Checked(good=good, rejects=rejects, rejected_rows=len(bad_rows))

    def _failures(self, cases: pl.DataFrame, coerced: pl.DataFrame) -> pl.DataFrame:
        cases = cases.filter(pl.col("index").is_not_null())
        if cases.is_empty():
            # A failure without a row position is a failure of the whole batch (a missing column);
            # rows cannot be blamed one by one.
            raise_batch_failure(cases)
        positions = coerced[ROW]
        rows: list[int] = []
        items: list[str | None] = []
        reasons: list[str] = []
        values: list[str | None] = []
        for index, column, check, value in cases.select(
            "index", "column", "check", "failure_case"
        ).iter_rows():
            item = self.items.get(column) if column else None
            if (
                check in ("multiple_fields_uniqueness", "field_uniqueness")
                or column == self.spec.code
            ):
                key_values = coerced.row(index, named=True)
                item_name = ",".join(self.spec.source.primary_key)
                shown = ",".join(str(key_values[k]) for k in self.spec.source.primary_key)
                rows.append(positions[index])
                items.append(item_name)
                reasons.append("primary_key.duplicate")
                values.append(shown[:_MAX_VALUE_CHARS])
                continue
            raw = coerced[column][index] if column in coerced.columns else value
            rows.append(positions[index])
            items.append(column)
            reasons.append(self._reason(column, check, raw))
            values.append(self._show(item, raw))
        return pl.DataFrame(
            {"row": rows, "item": items, "reason": reasons, "value": values}, schema=REJECT_SCHEMA
        )


_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M")
_DATE_FORMAT = "%Y-%m-%d"
_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


def _localize(naive: pl.Expr, zone: str) -> pl.Expr:
    """Naive local times in ``zone`` as instants, by the offset in force before a transition.

    That is Python's ``fold=0`` (PEP 495): a time in the repeated hour of a fall-back is its first
    occurrence, and a time in the gap of a spring-forward (which no clock showed) is read with
    the offset before the gap, so 02:30 in a gap from 02:00 to 03:00 at UTC+1 becomes 01:30 UTC.
    No row is lost to either transition. The gap fallback shifts by six hours, localizes and
    shifts back; no zone has two transitions within six hours.
    """
    direct = naive.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
    shift = pl.duration(hours=6)
    before = (naive - shift).dt.replace_time_zone(
        zone, ambiguous="earliest", non_existent="null"
    ) + shift
    return pl.coalesce(direct, before).dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def _decimal_expr(item: Item, col: pl.Expr, source: pl.DataType) -> tuple[pl.Expr, pl.Expr | None]:
    """Exact numbers: a value is kept digit for digit or rejected, never rounded.

    With a declared precision and scale the value must fit both (``decimal.scale`` when it has
    more fractional digits than the scale, ``decimal.precision`` when more integer digits than
    precision minus scale); trailing zeros beyond the scale are not digits lost. Without one the
    value travels as its decimal text, exactly as the source wrote it.
    """
    target = polars_dtype(item)
    if target == pl.String:
        if isinstance(source, pl.Decimal | pl.String):
            text = col.cast(pl.String).str.strip_chars()
            good = text.str.contains(_NUMBER)
            return pl.when(good).then(text), pl.when(text.is_not_null() & ~good).then(
                pl.lit(f"type.{item.type.value}")
            )
        return col.cast(pl.String, strict=False), None
    assert isinstance(target, pl.Decimal)
    precision, scale = target.precision or 38, target.scale
    if isinstance(source, pl.Decimal) and (source.scale or 0) <= scale:
        return col.cast(target, strict=False), _decimal_reason(
            col.is_not_null() & col.cast(target, strict=False).is_null(), None
        )
    if source.is_integer():
        return col.cast(target, strict=False), _decimal_reason(
            col.is_not_null() & col.cast(target, strict=False).is_null(), None
        )
    # Everything else through its text: split into sign, integer and fraction digits and check
    # each against the registered shape before casting.
    text = col.cast(pl.String, strict=False).str.strip_chars()
    number = text.str.contains(_NUMBER) & ~text.str.contains("[eE]")
    parts = text.str.strip_chars_start("+-").str.split_exact(".", 1)
    whole = parts.struct.field("field_0").str.strip_chars_start("0")
    fraction = parts.struct.field("field_1").fill_null("").str.strip_chars_end("0")
    too_fine = fraction.str.len_chars() > scale
    too_big = whole.str.len_chars() > precision - scale
    cast = pl.when(number & ~too_fine & ~too_big).then(text.cast(target, strict=False))
    # Exponent notation (1e-3) is rare in sources: it is read through Python's exact decimal.
    exponent = text.str.contains(_NUMBER) & text.str.contains("[eE]")
    via_python = pl.when(exponent).then(
        text.map_elements(
            lambda v: _plain_decimal(v, precision, scale), return_dtype=pl.String, skip_nulls=True
        )
    )
    cast = pl.coalesce(cast, via_python.cast(target, strict=False))
    reason = (
        pl.when(number & too_fine)
        .then(pl.lit("decimal.scale"))
        .when(number & too_big)
        .then(pl.lit("decimal.precision"))
        .when(exponent & via_python.is_null())
        .then(pl.lit("decimal.scale"))
    )
    return cast, reason


def _decimal_reason(lost: pl.Expr, _unused: None) -> pl.Expr:
    return pl.when(lost).then(pl.lit("decimal.precision"))


def _plain_decimal(text: str, precision: int, scale: int) -> str | None:
    value = Decimal(text)
    if not value.is_finite():
        return None
    exact = (
        value.quantize(Decimal(1).scaleb(-scale)) if value.as_tuple().exponent < -scale else value
    )
    if exact != value or exact.adjusted() >= precision - scale:
        return None
    return format(exact, "f")


def raise_batch_failure(cases: pl.DataFrame) -> None:
    from govbus.errors import ValidationFailed

    raise ValidationFailed(f"the batch as a whole failed validation: {cases.to_dicts()[:5]}")


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if not f.is_empty()]
    if not frames:
        return pl.DataFrame(schema=REJECT_SCHEMA)
    return pl.concat(frames)
