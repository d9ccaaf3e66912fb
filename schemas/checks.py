"""Named domain checks for identifiers that carry their own structure.

Each check exists twice: a scalar reference function taking one value, and a polars expression
for a whole column. Both return a *reason code* (``"uscc.check_char"``) for an invalid value and
None/null for a valid one; a null input is valid here, because nullability is checked elsewhere.
When a value breaks several rules, both forms report the first one in the order the reasons are
listed under each check. A resource definition names its checks (``checks: [uscc]``) and the
validator looks them up in ``CHECKS``.

The vectorised forms use only native polars operations (no Python per row). Each character is
turned into its numeric value by using its byte as an index into a 256-entry lookup table, which
is several times faster than mapping one-character strings.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from typing import Literal

import polars as pl

from govbus.errors import ConfigError
from schemas.reference import division_history, street_codes

__all__ = [
    "CHECKS",
    "Check",
    "UnknownCheck",
    "get_check",
    "check_uscc",
    "check_resident_id",
    "check_division_code",
    "check_street_code",
    "check_cert_id",
    "uscc_expr",
    "resident_id_expr",
    "division_code_expr",
    "street_code_expr",
    "cert_id_expr",
    "uscc_check_char",
    "uscc_with_check",
    "org_code_check_char",
    "org_code_with_check",
    "resident_id_check_digit",
    "resident_id_with_check",
    "cert_id_check_char",
    "cert_id_with_check",
    "make_uscc",
    "make_resident_id",
    "USCC_ALPHABET",
    "USCC_CATEGORIES",
    "CERT_ID_PREFIX",
]

Reason = str | None

# --- GB 32100-2015 unified social credit code

#: the 31 characters a USCC may use, in value order (I, O, S, V and Z are never used)
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE = {char: value for value, char in enumerate(USCC_ALPHABET)}
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))
_USCC_SHAPE = re.compile(r"[0-9A-HJ-NP-RTUW-Y]*")

#: registration authority code (position 1) -> allowed organisation category codes (position 2).
#: GB 32100-2015 itself names 1 (机构编制), 5 (民政), 9 (工商) and Y (其他) and lets other
#: registering departments take further codes; 2-4, 6-8, A and N are those assigned since and
#: found on real certificates (31 for law firms, N2 for village collective economic organisations).
USCC_CATEGORIES: dict[str, frozenset[str]] = {
    "1": frozenset("1239"),  # 机构编制: 机关, 事业单位, 群众团体, 其他
    "2": frozenset("19"),  # 外交: 外国常驻新闻机构, 其他
    "3": frozenset(
        "123459"
    ),  # 司法行政: 律师执业机构, 公证处, 基层法律服务所, 司法鉴定机构, 仲裁委员会, 其他
    "4": frozenset("19"),  # 文化: 外国在华文化中心, 其他
    "5": frozenset("1239"),  # 民政: 社会团体, 民办非企业单位, 基金会, 其他
    "6": frozenset("129"),  # 旅游: 外国及港澳台旅游部门常驻代表机构, 其他
    "7": frozenset("129"),  # 宗教: 宗教活动场所, 宗教院校, 其他
    "8": frozenset("19"),  # 工会: 基层工会, 其他
    "9": frozenset("123"),  # 工商: 企业, 个体工商户, 农民专业合作社
    "A": frozenset("19"),  # 中央军委改革和编制办公室: 军队事业单位, 其他
    "N": frozenset("1239"),  # 农业: 组级, 村级, 乡镇级集体经济组织, 其他
    "Y": frozenset("1"),  # 其他: not divided into categories
}
_USCC_PAIRS = sorted(a + c for a, cats in USCC_CATEGORIES.items() for c in cats)

# GB 11714-1997 organisation code (positions 9-17 of a USCC): 8 characters and a check character.
_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
# indexed by 11 - (weighted sum mod 11), which runs from 1 to 11
_ORG_CHECK_CHARS = "?123456789X0"


def org_code_check_char(body: str) -> str:
    """The GB 11714 check character (0-9 or X) of an 8-character organisation code body."""
    if len(body) != 8 or any(char not in _BASE36 for char in body):
        raise ValueError(f"an organisation code body is 8 characters 0-9/A-Z, got {body!r}")

    total = sum(
        _BASE36.index(char) * weight for char, weight in zip(body, _ORG_WEIGHTS, strict=True)
    )
    return _ORG_CHECK_CHARS[11 - total % 11]


def org_code_with_check(body: str) -> str:
    """The 9-character organisation code: ``body`` followed by its check character."""
    return body + org_code_check_char(body)


def uscc_check_char(first17: str) -> str:
    """The GB 32100 check character of the first 17 characters of a USCC."""
    if len(first17) != 17 or not _USCC_SHAPE.fullmatch(first17):
        raise ValueError(f"a USCC starts with 17 characters of {USCC_ALPHABET}, got {first17!r}")

    total = sum(
        _USCC_VALUE[char] * weight for char, weight in zip(first17, _USCC_WEIGHTS, strict=True)
    )
    return USCC_ALPHABET[(31 - total % 31) % 31]


def uscc_with_check(first17: str) -> str:
    """The 18-character USCC: ``first17`` followed by its check character."""
    return first17 + uscc_check_char(first17)


def check_uscc(value: str | None) -> Reason:
    """Reasons, in order: ``uscc.length``, ``uscc.charset``, ``uscc.registration_authority``,
    ``uscc.category``, ``uscc.division``, ``uscc.org_code_check``, ``uscc.check_char``."""
    if value is None:
        return None
    if len(value) != 18:
        return "uscc.length"
    if not _USCC_SHAPE.fullmatch(value):
        return "uscc.charset"
    if value[0] not in USCC_CATEGORIES:
        return "uscc.registration_authority"
    if value[1] not in USCC_CATEGORIES[value[0]]:
        return "uscc.category"
    # The registering office's division code: region-level codes such as 110000 and 100000 (the
    # State) are used, so only its form is checked, not its presence in the division history.
    if not value[2:8].isdigit():
        return "uscc.division"
    if org_code_check_char(value[8:16]) != value[16]:
        return "uscc.org_code_check"
    if uscc_check_char(value[:17]) != value[17]:
        return "uscc.check_char"
    return None


# --- GB 11643-1999 citizen identity number

_RID_SHAPE = re.compile(r"[0-9]{17}[0-9Xx]")
_RID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
# ISO 7064 MOD 11-2, indexed by the weighted sum mod 11
_RID_CHECK_CHARS = "10X98765432"
_EARLIEST_BIRTH = date(1850, 1, 1)


def resident_id_check_digit(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character (0-9 or X) of the first 17 digits of an id."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError(f"a resident id starts with 17 digits, got {len(first17)} characters")

    total = sum(int(digit) * weight for digit, weight in zip(first17, _RID_WEIGHTS, strict=True))
    return _RID_CHECK_CHARS[total % 11]


def resident_id_with_check(first17: str) -> str:
    """The 18-character resident id: ``first17`` followed by its check character."""
    return first17 + resident_id_check_digit(first17)


def _birth_date(digits: str) -> date | None:
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def check_resident_id(value: str | None, *, today: date | None = None) -> Reason:
    """Reasons, in order: ``resident_id.format``, ``resident_id.division``,
    ``resident_id.birth_date``, ``resident_id.check_digit``. A lower-case x is accepted."""
    if value is None:
        return None
    if not _RID_SHAPE.fullmatch(value):
        return "resident_id.format"
    if value[:6] not in division_history():
        return "resident_id.division"
    born = _birth_date(value[6:14])
    if born is None or born < _EARLIEST_BIRTH or born > (today or date.today()):
        return "resident_id.birth_date"
    if resident_id_check_digit(value[:17]) != value[17].upper():
        return "resident_id.check_digit"
    return None


# --- division and street codes


def check_division_code(value: str | None) -> Reason:
    """Reasons: ``division_code.format`` (not 6 digits), ``division_code.unknown`` (never used)."""
    if value is None:
        return None
    if len(value) != 6 or not value.isascii() or not value.isdigit():
        return "division_code.format"
    if value not in division_history():
        return "division_code.unknown"
    return None


def check_street_code(value: str | None) -> Reason:
    """Reasons: ``street_code.format`` (not 9 digits), ``street_code.unknown`` (not in the 2023
    statistical divisions)."""
    if value is None:
        return None
    if len(value) != 9 or not value.isascii() or not value.isdigit():
        return "street_code.format"
    if value not in street_codes():
        return "street_code.unknown"
    return None


# --- electronic certificate identifier

#: the object identifier arc every electronic certificate identifier starts with
CERT_ID_PREFIX = "1.2.156.3005.2."
# The check character is ISO 7064 MOD 37,36 (hybrid system, alphabet 0-9A-Z) computed over the
# characters after CERT_ID_PREFIX up to the last dot, with the dots left out: for the official
# example 1.2.156.3005.2.11100000000013338W032.11220000013544541J.2430599.001.F that is
# "11100000000013338W03211220000013544541J2430599001", which gives F. Including the prefix digits
# gives W, and keeping the dots is impossible (a dot has no value in the alphabet).
_CERT_PAYLOAD_MAX = 100
_CERT_SHAPE = re.compile(
    re.escape(CERT_ID_PREFIX) + r"[0-9A-Z]+(?:\.[0-9A-Z]+)*\.[0-9A-Z]",
)


def cert_id_check_char(payload: str) -> str:
    """The ISO 7064 MOD 37,36 check character of ``payload`` (characters 0-9 and A-Z)."""
    if not payload or any(char not in _BASE36 for char in payload):
        raise ValueError(f"a MOD 37,36 payload is characters 0-9/A-Z, got {payload!r}")

    product = 36
    for char in payload:
        product = (2 * ((product + _BASE36.index(char) - 1) % 36 + 1)) % 37
    return _BASE36[(37 - product) % 36]


def _cert_payload(identifier_without_check: str) -> str:
    return identifier_without_check[len(CERT_ID_PREFIX) :].replace(".", "")


def cert_id_with_check(identifier_without_check: str) -> str:
    """Complete an identifier such as ``1.2.156.3005.2.<type>.<issuer>.<serial>.<version>``
    with ``.`` and its check character."""
    candidate = identifier_without_check + ".0"
    if not _CERT_SHAPE.fullmatch(candidate):
        raise ValueError(
            f"a certificate identifier starts with {CERT_ID_PREFIX!r} followed by dot-separated "
            f"parts of 0-9/A-Z, got {identifier_without_check!r}"
        )
    return f"{identifier_without_check}.{cert_id_check_char(_cert_payload(candidate[:-2]))}"


def check_cert_id(value: str | None) -> Reason:
    """Reasons: ``cert_id.format``, ``cert_id.check_char``."""
    if value is None:
        return None
    if not _CERT_SHAPE.fullmatch(value):
        return "cert_id.format"
    payload = _cert_payload(value[:-2])
    if len(payload) > _CERT_PAYLOAD_MAX:
        return "cert_id.format"
    if cert_id_check_char(payload) != value[-1]:
        return "cert_id.check_char"
    return None


# --- vectorised forms


def _lookup(alphabet: str) -> pl.Series:
    # value of each byte 0-255; null for bytes outside the alphabet
    values: list[int | None] = [None] * 256
    for value, char in enumerate(alphabet):
        values[ord(char)] = value
    return pl.Series(values, dtype=pl.Int32)


_USCC_LOOKUP = _lookup(USCC_ALPHABET)
_BASE36_LOOKUP = _lookup(_BASE36)


def _char_value(text: pl.Expr, position: int, lookup: pl.Series) -> pl.Expr:
    """The value of the character at ``position``; null if it is not a one-byte character."""
    byte = text.str.slice(position, 1).cast(pl.Binary).bin.reinterpret(dtype=pl.UInt8)
    return pl.lit(lookup).gather(byte)


def _weighted_sum(text: pl.Expr, weights: tuple[int, ...], lookup: pl.Series, start: int = 0):
    return pl.sum_horizontal(
        [_char_value(text, start + i, lookup) * weight for i, weight in enumerate(weights)]
    )


def _reasons(column: str | pl.Expr, rules: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """The reason of the first rule whose ``ok`` expression is false; null if none is."""
    value = pl.col(column) if isinstance(column, str) else column
    chain = pl.when(value.is_null()).then(pl.lit(None, dtype=pl.String))
    for ok, reason in rules:
        chain = chain.when(~ok).then(pl.lit(reason))
    result = chain.otherwise(pl.lit(None, dtype=pl.String))
    return result.alias(column) if isinstance(column, str) else result


def _col(column: str | pl.Expr) -> pl.Expr:
    return pl.col(column) if isinstance(column, str) else column


def _bytes(text: pl.Expr, length: int) -> pl.Expr:
    """The UTF-8 bytes of each value as a fixed-size array; null where there are not ``length``."""
    return text.cast(pl.Binary).bin.reinterpret(dtype=pl.Array(pl.UInt8, length))


def _position_table(
    length: int, weights: tuple[int, ...], lookup: pl.Series, start: int
) -> pl.Series:
    """Each byte's weighted value at each position, indexed by ``position * 256 + byte``.

    Positions outside ``start .. start + len(weights)`` weigh 0 whatever their byte; a byte outside
    the alphabet at a weighted position is null (an earlier charset rule reports such a value).
    """
    values = lookup.to_list()
    table: list[int | None] = []
    for position in range(length):
        index = position - start
        weight = weights[index] if 0 <= index < len(weights) else 0
        for byte in range(256):
            value = values[byte]
            table.append((value * weight if value is not None else None) if weight else 0)
    return pl.Series(table, dtype=pl.Int32)


def _table_sum(data: pl.Expr, table: pl.Series, length: int) -> pl.Expr:
    """The weighted sum of a fixed-size byte array: one gather for every byte of the column."""
    # a null array would explode to one element, not ``length``: give it zero bytes instead
    data = data.fill_null(
        pl.lit(pl.Series([[0] * length], dtype=pl.Array(pl.UInt8, length))).first()
    )
    offsets = pl.Series([[position * 256 for position in range(length)]])
    index = (
        data.cast(pl.Array(pl.UInt16, length))
        + pl.lit(offsets.cast(pl.Array(pl.UInt16, length))).first()
    )
    return pl.lit(table).gather(index.arr.explode()).reshape((-1, length)).arr.sum()


_USCC_SUM_TABLE = _position_table(18, _USCC_WEIGHTS, _USCC_LOOKUP, start=0)
_ORG_SUM_TABLE = _position_table(18, _ORG_WEIGHTS, _BASE36_LOOKUP, start=8)


def _check_byte(alphabet: str, index: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series([ord(char) for char in alphabet], dtype=pl.UInt8)).gather(index)


def uscc_expr(column: str | pl.Expr) -> pl.Expr:
    """The vectorised form of :func:`check_uscc`.

    The two check sums read each value's 18 bytes as one fixed-size array and look up every
    byte's weighted value in one pass, rather than slicing out one character at a time: a
    million codes take about a third of the time. Where the value is not 18 bytes the sums are
    null, which only happens to values an earlier rule (length, charset) already rejects.
    """
    value = _col(column)
    data = _bytes(value, 18)
    org_sum = _table_sum(data, _ORG_SUM_TABLE, 18)
    uscc_sum = _table_sum(data, _USCC_SUM_TABLE, 18)
    return _reasons(
        column,
        [
            (value.str.len_chars() == 18, "uscc.length"),
            (value.str.contains(r"^[0-9A-HJ-NP-RTUW-Y]*$"), "uscc.charset"),
            (
                value.str.slice(0, 1).is_in(pl.Series(list(USCC_CATEGORIES)).implode()),
                "uscc.registration_authority",
            ),
            (value.str.slice(0, 2).is_in(pl.Series(_USCC_PAIRS).implode()), "uscc.category"),
            (value.str.contains(r"^..[0-9]{6}"), "uscc.division"),
            (
                data.arr.get(16) == _check_byte(_ORG_CHECK_CHARS, 11 - org_sum % 11),
                "uscc.org_code_check",
            ),
            (
                data.arr.get(17) == _check_byte(USCC_ALPHABET, (31 - uscc_sum % 31) % 31),
                "uscc.check_char",
            ),
        ],
    )


@cache
def _division_series() -> pl.Series:
    return pl.Series(sorted(division_history()), dtype=pl.String)


@cache
def _street_series() -> pl.Series:
    return pl.Series(sorted(street_codes()), dtype=pl.String)


_DIGIT_LOOKUP = _lookup("0123456789")


def resident_id_expr(column: str | pl.Expr, *, today: date | None = None) -> pl.Expr:
    """The vectorised form of :func:`check_resident_id`."""
    value = _col(column)
    born = value.str.slice(6, 8).str.to_date("%Y%m%d", strict=False)
    latest = today or date.today()
    check_sum = _weighted_sum(value, _RID_WEIGHTS, _DIGIT_LOOKUP)
    return _reasons(
        column,
        [
            (value.str.contains(r"^[0-9]{17}[0-9Xx]$"), "resident_id.format"),
            (value.str.slice(0, 6).is_in(_division_series().implode()), "resident_id.division"),
            (born.is_between(_EARLIEST_BIRTH, latest).fill_null(False), "resident_id.birth_date"),
            (
                value.str.slice(17, 1).str.to_uppercase()
                == pl.lit(_RID_CHECK_CHARS).str.slice(check_sum % 11, 1),
                "resident_id.check_digit",
            ),
        ],
    )


def division_code_expr(column: str | pl.Expr) -> pl.Expr:
    """The vectorised form of :func:`check_division_code`."""
    value = _col(column)
    return _reasons(
        column,
        [
            (value.str.contains(r"^[0-9]{6}$"), "division_code.format"),
            (value.is_in(_division_series().implode()), "division_code.unknown"),
        ],
    )


def street_code_expr(column: str | pl.Expr) -> pl.Expr:
    """The vectorised form of :func:`check_street_code`."""
    value = _col(column)
    return _reasons(
        column,
        [
            (value.str.contains(r"^[0-9]{9}$"), "street_code.format"),
            (value.is_in(_street_series().implode()), "street_code.unknown"),
        ],
    )


def cert_id_expr(column: str | pl.Expr) -> pl.Expr:
    """The vectorised form of :func:`check_cert_id`.

    MOD 37,36 is a running computation, not a weighted sum, so the payload is left-padded to a
    fixed length with "I": starting from the initial state 36, a character of value 18 leaves the
    state at 36, so the padding changes nothing and every row takes the same number of steps.
    """
    value = _col(column)
    payload = (
        value.str.slice(len(CERT_ID_PREFIX)).str.head(-2).str.replace_all(".", "", literal=True)
    )
    padded = payload.str.pad_start(_CERT_PAYLOAD_MAX, "I")
    product: pl.Expr = pl.lit(36, dtype=pl.Int32)
    for position in range(_CERT_PAYLOAD_MAX):
        char = _char_value(padded, position, _BASE36_LOOKUP)
        product = (2 * ((product + char - 1) % 36 + 1)) % 37
    check = pl.lit(_BASE36).str.slice((37 - product) % 36, 1)
    shape = "^" + re.escape(CERT_ID_PREFIX) + r"[0-9A-Z]+(\.[0-9A-Z]+)*\.[0-9A-Z]$"
    return _reasons(
        column,
        [
            (
                value.str.contains(shape) & (payload.str.len_chars() <= _CERT_PAYLOAD_MAX),
                "cert_id.format",
            ),
            (value.str.slice(-1, 1) == check, "cert_id.check_char"),
        ],
    )


# --- registry


@dataclass(frozen=True)
class Check:
    """A named check: ``scalar(value)`` and ``expr(column)`` both give a reason code or null."""

    name: str
    description: str
    scalar: Callable[[str | None], Reason]
    expr: Callable[[str], pl.Expr]


class UnknownCheck(ConfigError):
    """A resource definition names a check that does not exist."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown check {name!r} in a resource definition; known checks: {', '.join(known)}"
        )


class _CheckRegistry(dict[str, Check]):
    def __missing__(self, name: str) -> Check:
        raise UnknownCheck(name, sorted(self))


CHECKS: dict[str, Check] = _CheckRegistry(
    (check.name, check)
    for check in (
        Check("uscc", "GB 32100-2015 unified social credit code", check_uscc, uscc_expr),
        Check(
            "resident_id",
            "GB 11643-1999 citizen identity number",
            check_resident_id,
            resident_id_expr,
        ),
        Check(
            "division_code",
            "GB/T 2260 six-digit division code, in use or retired",
            check_division_code,
            division_code_expr,
        ),
        Check(
            "street_code",
            "nine-digit street/town code of the 2023 statistical divisions",
            check_street_code,
            street_code_expr,
        ),
        Check("cert_id", "electronic certificate identifier", check_cert_id, cert_id_expr),
    )
)


def get_check(name: str) -> Check:
    """The check called ``name``; raises :class:`UnknownCheck` listing the known names."""
    return CHECKS[name]


# --- generators of valid codes


@cache
def _division_list() -> list[str]:
    return sorted(division_history())


def make_uscc(
    rng: random.Random,
    *,
    authority: str = "9",
    category: str = "1",
    division: str | None = None,
) -> str:
    """A valid USCC built from ``rng``: both check characters are computed, never guessed."""
    if category not in USCC_CATEGORIES.get(authority, ()):
        raise ValueError(f"category {category!r} is not allowed for authority {authority!r}")

    division = division or rng.choice(_division_list())
    body = "".join(rng.choice(USCC_ALPHABET) for _ in range(8))
    return uscc_with_check(authority + category + division + org_code_with_check(body))


def make_resident_id(
    rng: random.Random,
    *,
    division: str | None = None,
    born: date | None = None,
    sex: Literal["male", "female"] | None = None,
) -> str:
    """A valid resident id built from ``rng`` (born 1930-2019 unless given; odd sequence = male)."""
    division = division or rng.choice(_division_list())
    born = born or date(1930, 1, 1) + timedelta(days=rng.randrange(32_872))
    sequence = rng.randrange(500) * 2 + {"male": 1, "female": 0}.get(sex or "", rng.randrange(2))
    return resident_id_with_check(f"{division}{born:%Y%m%d}{sequence:03d}")
