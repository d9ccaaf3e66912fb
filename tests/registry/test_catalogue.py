"""Registry: applying YAML definitions, versioning, and refusing invalid files as a whole."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from govbus.errors import CatalogueError
from registry.catalogue import ItemType, SharingType, expand_env, load_resource_file
from registry.db import registry_engine
from registry.resources import apply_files, get_resource, list_current

ISSUE_EXAMPLE = """\
code: "330400-SCJG-0001"            # resource code, unique
name: 企业登记基本信息
summary: 企业登记的基本信息
provider: {code: "11330400MB1234562E", name: 嘉兴市市场监督管理局}   # provider's USCC
format: database                    # database | file | api | spreadsheet
update_cycle: daily
sharing: {type: conditional, condition: "用于行政审批", method: platform}
open: {type: none}
source:
  url: ${SCJG_DB_URL}               # SQLAlchemy URL; ${VAR} is read from the environment
  table: enterprise                 # or query: "select ..."
  cursor: updated_at                # optional: incremental sync column
  primary_key: [credit_code]
  timezone: Asia/Shanghai           # how naive timestamps in the source are read
target: {table: enterprise}
items:
  - {name: credit_code, type: C, length: 18, nullable: false, checks: [uscc]}
  - {name: name, type: C, length: 200, nullable: false}
  - {name: reg_capital, type: Y, precision: 18, scale: 2}
  - {name: established, type: D}
  - {name: updated_at, type: T, nullable: false}
"""


def write(tmp_path: Path, text: str, name: str = "res.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_issue_example_is_accepted_as_written(tmp_path: Path) -> None:
    [spec] = load_resource_file(write(tmp_path, ISSUE_EXAMPLE))
    assert spec.code == "330400-SCJG-0001"
    assert spec.sharing.type is SharingType.CONDITIONAL
    assert spec.source.url == "${SCJG_DB_URL}"
    assert [i.type for i in spec.items] == [
        ItemType.C,
        ItemType.C,
        ItemType.Y,
        ItemType.D,
        ItemType.T,
    ]
    assert spec.item("reg_capital").precision == 18
    assert spec.item("credit_code").checks == ("uscc",)


def test_apply_is_idempotent_and_a_change_is_a_new_version(home, tmp_path: Path) -> None:
    engine = registry_engine(home.registry_url)
    path = write(tmp_path, ISSUE_EXAMPLE)

    assert [(a.version, a.outcome) for a in apply_files(engine, [path])] == [(1, "created")]
    assert [(a.version, a.outcome) for a in apply_files(engine, [path])] == [(1, "unchanged")]

    write(tmp_path, ISSUE_EXAMPLE.replace("update_cycle: daily", "update_cycle: hourly"))
    assert [(a.version, a.outcome) for a in apply_files(engine, [path])] == [(2, "updated")]
    assert get_resource(engine, "330400-SCJG-0001").spec.update_cycle.value == "hourly"
    assert get_resource(engine, "330400-SCJG-0001", version=1).spec.update_cycle.value == "daily"
    assert [r.version for r in list_current(engine)] == [2]


def test_an_invalid_file_names_file_field_and_allowed_values(home, tmp_path: Path) -> None:
    bad = write(tmp_path, ISSUE_EXAMPLE.replace("update_cycle: daily", "update_cycle: dayly"))
    with pytest.raises(CatalogueError) as caught:
        load_resource_file(bad)
    message = str(caught.value)
    assert str(bad) in message
    assert "update_cycle" in message
    assert "'dayly'" in message
    for allowed in (
        "realtime",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "quarterly",
        "yearly",
        "irregular",
    ):
        assert allowed in message


def test_a_bad_file_among_good_ones_applies_nothing(home, tmp_path: Path) -> None:
    engine = registry_engine(home.registry_url)
    good = write(tmp_path, ISSUE_EXAMPLE, "a.yaml")
    bad = write(
        tmp_path,
        ISSUE_EXAMPLE.replace('"330400-SCJG-0001"', '"330400-SCJG-0002"').replace(
            "type: Y,", "type: Q,"
        ),
        "b.yaml",
    )
    with pytest.raises(CatalogueError) as caught:
        apply_files(engine, [good, bad])
    assert "items.2.type" in str(caught.value)
    assert list_current(engine) == []


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        (
            ('type: conditional, condition: "用于行政审批"', "type: conditional"),
            "sharing",
            "condition",
        ),
        (("checks: [uscc]", "checks: [usc]"), "items", "known checks"),
        (("primary_key: [credit_code]", "primary_key: [id]"), "(top level)", "'id'"),
        (("format: database", "format: db"), "format", "'spreadsheet'"),
        (
            ('code: "11330400MB1234562E"', 'code: "11330400MB123456"'),
            "provider.code",
            "18-character",
        ),
        (("timezone: Asia/Shanghai", "timezone: Mars/Olympus"), "source.timezone", "IANA"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, change, field, expected) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE.replace(*change))
    with pytest.raises(CatalogueError) as caught:
        load_resource_file(path)
    assert f"field `{field}" in str(caught.value)
    assert expected in str(caught.value)


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE + "update_cylce: daily\n")
    with pytest.raises(CatalogueError, match=r"field `update_cylce`: unknown field"):
        load_resource_file(path)


def test_env_references_expand_only_at_run_time() -> None:
    assert expand_env("${A}/x", {"A": "sqlite://"}) == "sqlite:///x"
    with pytest.raises(Exception, match="environment variable SCJG_DB_URL is not set"):
        expand_env("${SCJG_DB_URL}", {})
