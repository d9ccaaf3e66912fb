import random
from datetime import date

import polars as pl
import pytest

from govbus.errors import ConfigError
from schemas.checks import (
    CHECKS,
    USCC_ALPHABET,
    UnknownCheck,
    cert_id_check_char,
    cert_id_with_check,
    check_resident_id,
    check_uscc,
    get_check,
    make_resident_id,
    make_uscc,
    org_code_check_char,
    org_code_with_check,
    resident_id_check_digit,
    resident_id_expr,
    uscc_check_char,
    uscc_with_check,
)
from schemas.reference import division_history, division_rows, street_codes, street_rows

CERT_ID = "1.2.156.3005.2.11100000000013338W032.11220000013544541J.2430599.001.F"


def expr_reasons(name: str, values: list[str | None]) -> list[str | None]:
    frame = pl.DataFrame({"value": values}, schema={"value": pl.String})
    return frame.select(CHECKS[name].expr("value"))["value"].to_list()


# --- official vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("resident_id", "11010519491231002X", None),
        ("resident_id", "11010519491231002x", None),
        ("resident_id", "440524188001010014", None),  # division 440524 retired in 1993
        ("resident_id", "110105194912310021", "resident_id.check_digit"),
        ("uscc", "91110000600037341L", None),
        ("uscc", "91350100M000100Y43", None),
        ("uscc", "91110000600037341M", "uscc.check_char"),
        ("cert_id", CERT_ID, None),
    ],
)
def test_official_vectors(name, value, reason):
    assert CHECKS[name].scalar(value) == reason
    assert expr_reasons(name, [value]) == [reason]


@pytest.mark.parametrize("letter", list("IOSVZ"))
def test_uscc_with_a_forbidden_letter_is_a_charset_failure(letter):
    for position in (2, 9, 17):
        value = "91110000600037341L"[:position] + letter + "91110000600037341L"[position + 1 :]
        assert check_uscc(value) == "uscc.charset"
        assert expr_reasons("uscc", [value]) == ["uscc.charset"]


def test_check_characters_of_the_official_vectors():
    assert uscc_check_char("91110000600037341") == "L"
    assert uscc_check_char("91350100M000100Y4") == "3"
    assert org_code_check_char("60003734") == "1"
    assert org_code_check_char("M000100Y") == "4"
    assert org_code_with_check("M000100Y") == "M000100Y4"
    assert uscc_with_check("91110000600037341") == "91110000600037341L"
    assert resident_id_check_digit("11010519491231002") == "X"
    assert resident_id_check_digit("44052418800101001") == "4"
    assert cert_id_check_char("11100000000013338W03211220000013544541J2430599001") == "F"
    assert cert_id_with_check(CERT_ID[:-2]) == CERT_ID


# --- reasons -------------------------------------------------------------------------------------

REASON_CASES = [
    ("uscc", None, None),
    ("uscc", "", "uscc.length"),
    ("uscc", "91110000600037341", "uscc.length"),
    ("uscc", "91110000600037341LL", "uscc.length"),
    ("uscc", "91110000600037341l", "uscc.charset"),
    ("uscc", "9111000060003734１L", "uscc.charset"),  # full-width digit
    ("uscc", "B1110000600037341L", "uscc.registration_authority"),
    ("uscc", "94110000600037341L", "uscc.category"),
    ("uscc", "Y2110000600037341L", "uscc.category"),
    ("uscc", "911A0000600037341L", "uscc.division"),
    ("uscc", "91110000600037342L", "uscc.org_code_check"),
    ("uscc", "91110000600037340L", "uscc.org_code_check"),
    ("resident_id", None, None),
    ("resident_id", "", "resident_id.format"),
    ("resident_id", "11010519491231002", "resident_id.format"),
    ("resident_id", "1101051949123100XX", "resident_id.format"),
    ("resident_id", "11010519491231002Y", "resident_id.format"),
    ("resident_id", "99010519491231002X", "resident_id.division"),
    ("resident_id", "110105194902300021", "resident_id.birth_date"),  # 30 February
    ("resident_id", "110105184912310021", "resident_id.birth_date"),  # before 1850
    ("resident_id", "110105299912310021", "resident_id.birth_date"),  # in the future
    ("division_code", None, None),
    ("division_code", "110105", None),
    ("division_code", "440524", None),
    ("division_code", "110000", None),
    ("division_code", "11010", "division_code.format"),
    ("division_code", "11010a", "division_code.format"),
    ("division_code", "１１０１０５", "division_code.format"),  # full-width digits
    ("division_code", "999999", "division_code.unknown"),
    ("street_code", None, None),
    ("street_code", "110101001", None),
    ("street_code", "110101", "street_code.format"),
    ("street_code", "110101999", "street_code.unknown"),
    ("cert_id", None, None),
    ("cert_id", CERT_ID[:-1] + "G", "cert_id.check_char"),
    ("cert_id", CERT_ID.replace("2430599", "2430598"), "cert_id.check_char"),
    ("cert_id", CERT_ID[:-2], "cert_id.format"),
    ("cert_id", CERT_ID[:-1] + "f", "cert_id.format"),
    ("cert_id", CERT_ID.replace("1.2.156.3005.2.", "1.2.156.3005.1."), "cert_id.format"),
    ("cert_id", CERT_ID.replace(".001.", "..001."), "cert_id.format"),
    ("cert_id", "1.2.156.3005.2." + "1" * 101 + ".0", "cert_id.format"),  # payload too long
]


@pytest.mark.parametrize(("name", "value", "reason"), REASON_CASES)
def test_reason(name, value, reason):
    assert CHECKS[name].scalar(value) == reason
    assert expr_reasons(name, [value]) == [reason]


def test_birth_date_limits_are_inclusive():
    assert check_resident_id(make_resident_id(random.Random(1), born=date(1850, 1, 1))) is None
    today = date(2026, 12, 3)
    born_today = make_resident_id(random.Random(1), born=today)
    assert check_resident_id(born_today, today=today) is None
    assert check_resident_id(born_today, today=date(2026, 12, 2)) == "resident_id.birth_date"
    frame = pl.DataFrame({"id": [born_today]})
    assert frame.select(resident_id_expr("id", today=today))["id"].to_list() == [None]
    assert frame.select(resident_id_expr("id", today=date(2026, 12, 2)))["id"].to_list() == [
        "resident_id.birth_date"
    ]


def test_expr_keeps_the_column_name_and_works_on_an_expression():
    frame = pl.DataFrame({"code": ["91110000600037341L", "91110000600037341M"]})
    assert frame.select(CHECKS["uscc"].expr("code")).columns == ["code"]
    result = frame.select(CHECKS["uscc"].expr(pl.col("code").str.strip_chars()).alias("why"))
    assert result["why"].to_list() == [None, "uscc.check_char"]


# --- registry ------------------------------------------------------------------------------------


def test_registry_names():
    assert sorted(CHECKS) == ["cert_id", "division_code", "resident_id", "street_code", "uscc"]
    assert all(check.name == name for name, check in CHECKS.items())
    assert get_check("uscc") is CHECKS["uscc"]


def test_unknown_check_names_the_known_ones():
    with pytest.raises(UnknownCheck) as caught:
        CHECKS["usc"]
    assert isinstance(caught.value, ConfigError)
    assert str(caught.value) == (
        "unknown check 'usc' in a resource definition; "
        "known checks: cert_id, division_code, resident_id, street_code, uscc"
    )
    with pytest.raises(UnknownCheck):
        get_check("phone")


# --- generators and agreement of both forms -------------------------------------------------------


def test_generated_codes_are_valid():
    rng = random.Random(20261203)
    for _ in range(500):
        assert check_uscc(make_uscc(rng)) is None
        assert check_resident_id(make_resident_id(rng)) is None
    assert make_uscc(rng, authority="Y", category="1", division="110000")[:8] == "Y1110000"
    male = make_resident_id(rng, division="440524", born=date(1880, 1, 1), sex="male")
    assert male[:14] == "44052418800101" and int(male[16]) % 2 == 1
    female = make_resident_id(rng, sex="female")
    assert int(female[16]) % 2 == 0
    with pytest.raises(ValueError):
        make_uscc(rng, authority="9", category="9")


def _mutations(rng: random.Random, value: str, alphabet: str) -> list[str]:
    position = rng.randrange(len(value))
    swapped = list(value)
    if len(value) > 1:
        i = rng.randrange(len(value) - 1)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    return [
        value[:position] + rng.choice(alphabet) + value[position + 1 :],  # one character changed
        "".join(swapped),  # neighbours swapped
        value[:position] + value[position + 1 :],  # one character dropped
        value[:position] + rng.choice(alphabet) + value[position:],  # one character added
        value.lower(),
    ]


@pytest.fixture(scope="module")
def generated():
    rng = random.Random(7064)
    noise = USCC_ALPHABET + "IOSVZx.-é１"
    codes: dict[str, list[str]] = {"uscc": [], "resident_id": [], "cert_id": []}
    codes["division_code"] = []
    codes["street_code"] = []
    history = sorted(division_history())
    streets = sorted(street_codes())
    for _ in range(1500):
        uscc = make_uscc(
            rng,
            authority=rng.choice("1259ANY"),
            category="1",
            division=rng.choice(history),
        )
        rid = make_resident_id(rng)
        serial = "".join(rng.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(7))
        cert = cert_id_with_check(
            f"1.2.156.3005.2.{make_uscc(rng)}032.{make_uscc(rng)}.{serial}.001"
        )
        division = rng.choice(history)
        street = rng.choice(streets)
        for name, value in [
            ("uscc", uscc),
            ("resident_id", rid),
            ("cert_id", cert),
            ("division_code", division),
            ("street_code", street),
        ]:
            codes[name].append(value)
            codes[name].extend(_mutations(rng, value, noise))
    return codes


@pytest.mark.parametrize("name", ["uscc", "resident_id", "cert_id", "division_code", "street_code"])
def test_scalar_and_expr_agree(name, generated):
    values = generated[name] + [None]
    scalar = [CHECKS[name].scalar(value) for value in values]
    assert expr_reasons(name, values) == scalar
    # both valid and invalid values are present, and several kinds of invalid ones
    assert scalar.count(None) >= 1500
    assert len(set(scalar)) >= 3 if name in ("uscc", "resident_id") else len(set(scalar)) >= 2


def test_check_character_catches_every_single_substitution():
    # GB 32100 and MOD 11-2 detect all single-character errors; MOD 37,36 does too.
    value = "91350100M000100Y43"
    for position in range(18):
        for char in USCC_ALPHABET:
            if char != value[position]:
                changed = value[:position] + char + value[position + 1 :]
                assert check_uscc(changed) is not None


# --- reference data ------------------------------------------------------------------------------


def test_reference_data_shapes():
    assert len(division_history()) == 6450
    assert division_rows().num_rows == 6823
    assert division_rows().column_names == [
        "code",
        "province_name",
        "prefecture_name",
        "name",
        "level",
        "status",
        "first_year",
        "last_year",
        "replacement_code",
    ]
    retired = [row for row in division_rows().to_pylist() if row["code"] == "440524"]
    assert retired == [
        {
            "code": "440524",
            "province_name": "广东省",
            "prefecture_name": "汕头市",
            "name": "潮阳县",
            "level": "county",
            "status": "retired",
            "first_year": 1983,
            "last_year": 1993,
            "replacement_code": "440582",
        }
    ]
    assert street_rows().num_rows == 41352
    assert street_rows().slice(0, 1).to_pylist() == [
        {
            "code": "110101001",
            "name": "东华门街道",
            "area_code": "110101",
            "province_code": "11",
            "city_code": "1101",
        }
    ]
    assert len(street_codes()) == 41352
