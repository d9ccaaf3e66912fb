"""Loaders for the reference data shipped in ``govbus/data``.

Each loader reads its file once per process and caches the result; the results are immutable
(frozensets and Arrow tables), so sharing them between callers is safe. Column names are English
snake_case; Chinese place names are kept as published. See ``govbus/data/README.md`` for sources
and licenses.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

import pyarrow as pa
import pyarrow.csv as pa_csv

__all__ = [
    "DIVISION_LEVELS",
    "DIVISION_STATUSES",
    "division_history",
    "division_rows",
    "street_codes",
    "street_rows",
]

#: the areacodes ``级别`` column, translated
DIVISION_LEVELS = {"省级": "province", "地级": "prefecture", "县级": "county"}
#: the areacodes ``状态`` column, translated: ``renamed`` rows are an earlier name of a code that
#: is still used under a later name
DIVISION_STATUSES = {"在用": "in_use", "弃用": "retired", "变更": "renamed"}

_DIVISION_COLUMNS = {
    "code": pa.string(),
    "province_name": pa.string(),
    "prefecture_name": pa.string(),
    "name": pa.string(),
    "level": pa.string(),
    "status": pa.string(),
    "first_year": pa.int16(),
    "last_year": pa.int16(),
    # one or more codes separated by ";", each optionally followed by "[year]" when the territory
    # moved to it in a year other than last_year, e.g. "130102[2001];130108[2001]"
    "replacement_code": pa.string(),
}
_STREET_COLUMNS = {
    "code": pa.string(),
    "name": pa.string(),
    "area_code": pa.string(),
    "province_code": pa.string(),
    "city_code": pa.string(),
}


def _data_file(*parts: str) -> Traversable:
    # One part at a time: when govbus is seen as a namespace package (a tests/govbus folder on
    # sys.path does that under pytest), joinpath takes a single name.
    path = files("govbus").joinpath("data")
    for part in parts:
        path = path.joinpath(part)
    return path


def _read_csv(path: Traversable, columns: dict[str, pa.DataType]) -> pa.Table:
    # Column names are given, and the header skipped, so the UTF-8 byte-order mark at the start of
    # areacodes/result.csv and the upstream camelCase names never reach a caller.
    with path.open("rb") as stream:
        return pa_csv.read_csv(
            stream,
            read_options=pa_csv.ReadOptions(column_names=list(columns), skip_rows=1),
            convert_options=pa_csv.ConvertOptions(
                column_types=columns, strings_can_be_null=True, null_values=[""]
            ),
        )


@cache
def division_rows() -> pa.Table:
    """Every row of the GB/T 2260 code history 1980-2025 (6,823 rows).

    Columns: ``code``, ``province_name``, ``prefecture_name``, ``name``, ``level`` (province,
    prefecture, county), ``status`` (in_use, retired, renamed), ``first_year``, ``last_year``
    (null while in use) and ``replacement_code``. A code appears once for each name it carried.
    """
    table = _read_csv(_data_file("areacodes", "result.csv"), _DIVISION_COLUMNS)
    for column, mapping in (("level", DIVISION_LEVELS), ("status", DIVISION_STATUSES)):
        values = table[column].to_pylist()
        unknown = sorted(set(values) - mapping.keys(), key=str)
        if unknown:
            raise ValueError(f"areacodes/result.csv: unknown {column} values {unknown}")
        english = pa.array([mapping[value] for value in values], pa.string())
        table = table.set_column(table.schema.get_field_index(column), column, english)
    return table


@cache
def division_history() -> frozenset[str]:
    """All six-digit division codes ever used, in use or retired (6,450 distinct codes).

    A resident id keeps the code of the place and time it was issued, so a code retired long ago
    (440524, retired 1993) is still a valid prefix.
    """
    return frozenset(division_rows()["code"].to_pylist())


@cache
def street_rows() -> pa.Table:
    """The 41,352 street/town-level statistical divisions of 2023 (9-digit codes).

    Columns: ``code``, ``name``, ``area_code`` (6 digits), ``province_code`` (2 digits),
    ``city_code`` (4 digits).
    """
    return _read_csv(_data_file("divisions", "streets.csv"), _STREET_COLUMNS)


@cache
def street_codes() -> frozenset[str]:
    """All 9-digit street/town codes of the 2023 statistical divisions."""
    return frozenset(street_rows()["code"].to_pylist())
