"""What valid data is: a pandera schema built from a resource's registered items.

A batch from a source is first *coerced* to the registered types (a value that cannot be read as
its item's type is a failure, not a crash), then *validated* against the pandera schema: types,
nullability, length, primary-key uniqueness inside the batch and the named domain checks written
in the catalogue (``checks: [uscc]``). Rows with any failure are split off with one reason per
failure, so the pipeline can load the rest and keep the rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from registry.catalogue import Item, ItemType, ResourceSpec
from schemas.checks import CHECKS
from schemas.mask import mask_id
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

    # -- coercion -------------------------------------------------------------------------------

    def _coerce_expr(self, item: Item, source: pl.DataType) -> pl.Expr:
        col = pl.col(item.name)
        target = polars_dtype(item)
        zone = self.spec.source.timezone
        if item.type is ItemType.T:
            if source == pl.String:
                col = col.str.to_datetime(time_unit="us", strict=False)
                source = pl.Datetime("us")
            if isinstance(source, pl.Date):
                col = col.cast(pl.Datetime("us"))
                source = pl.Datetime("us")
            if isinstance(source, pl.Datetime):
                if source.time_zone is None:
                    col = col.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
                return col.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        if item.type is ItemType.D:
            if source == pl.String:
                return col.str.to_date(strict=False)
            if isinstance(source, pl.Datetime):
                return col.dt.date()
        if item.type in (ItemType.C, ItemType.M) and source == pl.Binary:
            return col.cast(pl.String, strict=False)
        if item.type is ItemType.L and source == pl.String:
            lowered = col.str.to_lowercase()
            return (
                pl.when(lowered.is_in(["1", "true", "t", "y", "yes", "是"]))
                .then(True)
                .when(lowered.is_in(["0", "false", "f", "n", "no", "否"]))
                .then(False)
                .otherwise(None)
            )
        return col.cast(target, strict=False)

    def coerce(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Cast each item to its registered type; returns the cast frame and type failures."""
        exprs = []
        failures = []
        for name, item in self.items.items():
            source = frame.schema[name]
            cast = self._coerce_expr(item, source).alias(name)
            exprs.append(cast)
            failed = pl.col(name).is_not_null() & cast.is_null()
            failures.append(failed.alias(name))
        coerced = frame.select(pl.col(ROW), *exprs)
        failed = frame.select(pl.col(ROW), *failures)
        rejects = []
        for name, item in self.items.items():
            rows = failed.filter(pl.col(name))[ROW]
            if len(rows) == 0:
                continue
            values = frame.filter(pl.col(ROW).is_in(rows.implode()))[name]
            rejects.append(
                pl.DataFrame(
                    {
                        "row": rows,
                        "item": name,
                        "reason": f"type.{item.type.value}",
                        "value": [self._show(item, v) for v in values.to_list()],
                    },
                    schema=REJECT_SCHEMA,
                )
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
        try:
            self.schema.validate(coerced.drop(ROW), lazy=True)
            schema_rejects = _concat([])
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


def raise_batch_failure(cases: pl.DataFrame) -> None:
    from govbus.errors import ValidationFailed

    raise ValidationFailed(f"the batch as a whole failed validation: {cases.to_dicts()[:5]}")


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if not f.is_empty()]
    if not frames:
        return pl.DataFrame(schema=REJECT_SCHEMA)
    return pl.concat(frames)
