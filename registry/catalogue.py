"""The resource catalogue as code: resource definitions declared in YAML and checked here.

Field names follow the national catalogue guide for government information resources (政务信息资源
目录编制指南): each resource has a code, a name, a summary, a provider, a format, an update cycle,
a sharing type with its condition and method, an opening type and its information items (信息项)
with the guide's data types. The source and target sections say where govbus reads and writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from govbus.errors import CatalogueError, ConfigError

__all__ = [
    "ItemType",
    "SharingType",
    "OpenType",
    "ResourceFormat",
    "UpdateCycle",
    "DriftPolicy",
    "Item",
    "Provider",
    "Sharing",
    "Opening",
    "Source",
    "Target",
    "Certificate",
    "CERTIFICATE_ITEMS",
    "ResourceSpec",
    "load_resource_file",
    "expand_env",
]


class ItemType(StrEnum):
    """Data types of information items, as the catalogue guide letters them."""

    C = "C"  # 字符型 character, with a length
    N = "N"  # 数值型 numeric, exact, with precision and scale
    Y = "Y"  # 货币型 currency, exact decimal
    D = "D"  # 日期型 date
    T = "T"  # 日期时间型 date and time
    L = "L"  # 逻辑型 logical
    M = "M"  # 备注型 memo: long text
    G = "G"  # 通用型 general: binary content
    B = "B"  # 双精度型 double precision
    I = "I"  # 整型 integer  # noqa: E741
    F = "F"  # 浮点型 floating point


class SharingType(StrEnum):
    UNCONDITIONAL = "unconditional"  # 无条件共享
    CONDITIONAL = "conditional"  # 有条件共享: a consumer applies, the provider approves
    NONE = "none"  # 不予共享


class OpenType(StrEnum):
    UNCONDITIONAL = "unconditional"
    CONDITIONAL = "conditional"
    NONE = "none"


class ResourceFormat(StrEnum):
    DATABASE = "database"
    FILE = "file"
    API = "api"
    SPREADSHEET = "spreadsheet"


class UpdateCycle(StrEnum):
    REALTIME = "realtime"
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"
    IRREGULAR = "irregular"


class DriftPolicy(StrEnum):
    """What a sync does with a source column that the registry does not list."""

    EVOLVE = "evolve"  # report it and carry it to the cloud as a new nullable column
    FREEZE = "freeze"  # report it and stop the run
    IGNORE = "ignore"  # report it and leave it behind


_RESOURCE_CODE = re.compile(r"^[0-9]{6}-[A-Z0-9]{2,10}-[0-9]{4,6}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_USCC_SHAPE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Provider(_Strict):
    code: str = Field(description="the providing department's unified social credit code")
    name: str = Field(min_length=1)

    @field_validator("code")
    @classmethod
    def _uscc_shape(cls, value: str) -> str:
        if not _USCC_SHAPE.match(value):
            raise ValueError(
                "must be an 18-character unified social credit code (digits and the letters "
                "A-H J-N P Q R T U W X Y)"
            )
        return value


class Sharing(_Strict):
    type: SharingType
    condition: str | None = None
    method: str | None = Field(default=None, description="共享方式, e.g. platform, interface, file")

    @model_validator(mode="after")
    def _condition_required(self) -> Sharing:
        if self.type is SharingType.CONDITIONAL and not self.condition:
            raise ValueError("a conditional sharing type needs a `condition` stating who may apply")
        return self


class Opening(_Strict):
    type: OpenType
    condition: str | None = None


class Item(_Strict):
    """An information item (信息项): one field of the resource."""

    name: str
    type: ItemType
    title: str | None = Field(default=None, description="the item's Chinese name")
    length: int | None = Field(default=None, gt=0)
    precision: int | None = Field(default=None, gt=0, le=38)
    scale: int | None = Field(default=None, ge=0)
    nullable: bool = True
    checks: tuple[str, ...] = ()
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value) or value.startswith("_govbus"):
            raise ValueError(
                "must be a column name: a letter or _, then letters, digits or _, "
                "at most 63 characters, not starting with _govbus"
            )
        return value

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from schemas.checks import CHECKS

        unknown = [name for name in value if name not in CHECKS]
        if unknown:
            raise ValueError(
                f"unknown check {', '.join(map(repr, unknown))}; "
                f"known checks: {', '.join(sorted(CHECKS))}"
            )
        return value

    @model_validator(mode="after")
    def _type_parameters(self) -> Item:
        if self.length is not None and self.type not in (ItemType.C, ItemType.M):
            raise ValueError(f"`length` applies to types C and M only, not {self.type.value}")
        if self.scale is not None and self.precision is None:
            raise ValueError("`scale` needs `precision`")
        if self.precision is not None and self.type not in (ItemType.N, ItemType.Y):
            raise ValueError(f"`precision` applies to types N and Y only, not {self.type.value}")
        if self.precision is not None and (self.scale or 0) > self.precision:
            raise ValueError("`scale` cannot exceed `precision`")
        return self


class Source(_Strict):
    """Where the provider's records are read from."""

    kind: Literal["sql", "files", "http"] = "sql"
    url: str
    table: str | None = None
    query: str | None = None
    cursor: str | None = None
    primary_key: tuple[str, ...] = Field(min_length=1)
    timezone: str = "Asia/Shanghai"
    soft_delete: str | None = Field(
        default=None, description="a column that is true or set when the provider deleted the row"
    )
    drift: DriftPolicy = DriftPolicy.EVOLVE
    batch_size: int = Field(default=50_000, gt=0, le=1_000_000)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _table_or_query(self) -> Source:
        if self.kind == "sql" and (self.table is None) == (self.query is None):
            raise ValueError("a sql source needs exactly one of `table` or `query`")
        if self.table is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", self.table):
            raise ValueError("`table` must be a plain (optionally schema-qualified) table name")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}, e.g. Asia/Shanghai") from None
        return value


class Target(_Strict):
    table: str
    lake: bool = True
    database: bool = Field(
        default=True,
        description="upsert rows into the cloud database table; false keeps them in the lake only "
        "(rejects and checkpoints are still kept in the cloud database)",
    )

    @field_validator("table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value) or value.startswith("govbus_"):
            raise ValueError("must be a plain table name, not starting with govbus_")
        return value

    @model_validator(mode="after")
    def _somewhere(self) -> Target:
        if not (self.lake or self.database):
            raise ValueError("a target needs the cloud database, the lake or both")
        return self


#: the items a certificate resource must have, by these names: the directory fields of the national
#: electronic certificate standards (证照名称, 证照编号, 证照标识, 颁发机构, 颁发机构代码, 颁发日期,
#: 管辖区划, 持证主体, 持证主体代码, 持证主体代码类型, 有效期起止, 证照状态, 证照文件哈希)
CERTIFICATE_ITEMS = (
    "identifier",
    "cert_name",
    "cert_number",
    "issuer_name",
    "issuer_code",
    "issue_date",
    "division_code",
    "holder_name",
    "holder_id",
    "holder_id_type",
    "valid_from",
    "valid_to",
    "status",
    "file_hash",
)


class Certificate(_Strict):
    """Marks a resource as a certificate library (电子证照库) of one certificate type.

    The type code is the identifier's second part: the defining department's USCC followed by a
    three-digit serial (``11100000000013338W032``). The provider is a registered issuer of the
    type; ``issuers`` names further issuing departments (district bureaus, say) by their USCC.
    """

    type_name: str = Field(min_length=1, description="证照类型名称")
    type_code: str = Field(description="证照类型代码")
    issuers: tuple[str, ...] = ()

    @field_validator("type_code")
    @classmethod
    def _type_code_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9A-HJ-NPQRTUWXY]{18}[0-9]{3}", value):
            raise ValueError(
                "must be the defining department's 18-character USCC followed by a 3-digit "
                "serial, e.g. 11100000000013338W032"
            )
        return value

    @field_validator("issuers")
    @classmethod
    def _issuer_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [code for code in value if not _USCC_SHAPE.match(code)]
        if bad:
            raise ValueError(f"issuers must be unified social credit codes, got {bad}")
        return value


class ResourceSpec(_Strict):
    """One shareable information resource (信息资源) as registered in the catalogue."""

    code: str
    name: str = Field(min_length=1)
    summary: str | None = None
    provider: Provider
    format: ResourceFormat
    update_cycle: UpdateCycle
    sharing: Sharing
    open: Opening = Opening(type=OpenType.NONE)
    category: str | None = Field(default=None, description="资源分类")
    keywords: tuple[str, ...] = ()
    publish_date: str | None = None
    source: Source
    target: Target
    items: tuple[Item, ...] = Field(min_length=1)
    certificate: Certificate | None = None

    @field_validator("code")
    @classmethod
    def _code_shape(cls, value: str) -> str:
        if not _RESOURCE_CODE.match(value):
            raise ValueError(
                "must look like 330400-SCJG-0001: a 6-digit division code, the provider's "
                "upper-case abbreviation and a serial number"
            )
        return value

    @model_validator(mode="after")
    def _items_cover_keys(self) -> ResourceSpec:
        names = [item.name for item in self.items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"items listed twice: {', '.join(duplicates)}")
        for key in self.source.primary_key:
            if key not in names:
                raise ValueError(f"primary key column {key!r} is not one of the items")
        if self.source.cursor and self.source.cursor not in names:
            raise ValueError(f"cursor column {self.source.cursor!r} is not one of the items")
        if self.certificate is not None:
            absent = [name for name in CERTIFICATE_ITEMS if name not in names]
            if absent:
                raise ValueError(
                    f"a certificate resource needs the items {', '.join(CERTIFICATE_ITEMS)}; "
                    f"missing: {', '.join(absent)}"
                )
        return self

    @property
    def dag_id(self) -> str:
        return "sync_" + self.code.replace("-", "_").lower()

    def item(self, name: str) -> Item:
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(name)

    def definition(self) -> dict[str, Any]:
        """The definition as stored: environment references left unexpanded."""
        return self.model_dump(mode="json", exclude_defaults=False)

    def definition_hash(self) -> str:
        canonical = json.dumps(self.definition(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def schema_hash(self) -> str:
        """Hash of what the data looks like (items and key), not of where it comes from."""
        shape = {
            "items": [i.model_dump(mode="json") for i in self.items],
            "primary_key": list(self.source.primary_key),
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, environ: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` with the variable's value; a missing variable is a configuration error."""
    env = os.environ if environ is None else environ

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"environment variable {name} is not set (referenced as ${{{name}}})")
        return env[name]

    return _ENV_REF.sub(lookup, value)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field; check its spelling against the catalogue fields"
    elif error["type"] == "missing":
        message = "required field is missing"
    value = error.get("input")
    shown = "" if error["type"] in ("missing",) or isinstance(value, dict) else f" (got {value!r})"
    return f"field `{where}`: {message}{shown}"


def parse_resource(data: Any, path: str) -> ResourceSpec:
    if not isinstance(data, dict):
        raise CatalogueError(path, ["the file must hold one mapping of catalogue fields"])
    try:
        return ResourceSpec.model_validate(data)
    except ValidationError as exc:
        raise CatalogueError(path, [_describe(e) for e in exc.errors()]) from None


def load_resource_file(path: Path) -> list[ResourceSpec]:
    """Read one YAML file holding one resource, or several as YAML documents."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read resource file: {exc.strerror}") from exc
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CatalogueError(str(path), [f"not valid YAML: {exc}"]) from None
    if not documents:
        raise CatalogueError(str(path), ["the file holds no resource"])
    return [parse_resource(doc, str(path)) for doc in documents]
