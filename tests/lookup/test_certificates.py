"""Ingest: verification, failures with reasons, signatures, supersession, the bus's keys."""

from __future__ import annotations

import base64
import stat
from datetime import date

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from govbus.certificates import (
    bus_keys,
    canonical,
    certificates,
    effective_status,
    failures,
    ingest,
    signed_record,
    verify_record,
)
from govbus.sync import cloud_for
from registry.db import registry_engine
from registry.resources import get_resource
from schemas.checks import check_cert_id
from schemas.mask import mask_id

from .conftest import CERT_CODE, CERT_ISSUER, LICENCE_CODE, VECTOR, World, cert_row


def library(world: World, code: str = CERT_CODE) -> list[dict]:
    with cloud_for(world.settings).engine.connect() as conn:
        rows = conn.execute(
            sa.select(certificates)
            .where(certificates.c.resource_code == code)
            .order_by(certificates.c.id)
        ).mappings()
        return [dict(r) for r in rows]


def failed(world: World) -> list[tuple]:
    with cloud_for(world.settings).engine.connect() as conn:
        rows = conn.execute(
            sa.select(failures.c.identifier, failures.c.holder_masked, failures.c.reasons)
            .where(failures.c.resource_code == CERT_CODE)
            .order_by(failures.c.identifier)
        )
        return [tuple(r) for r in rows]


def test_the_official_vector_is_valid() -> None:
    assert check_cert_id(VECTOR) is None


def test_ingest_verifies_signs_and_records_failures(world: World) -> None:
    rows = library(world)
    assert [r["identifier"] for r in rows] == [
        VECTOR,
        world.certs["second"],
        world.certs["citizen2"],
    ]
    # the lower-case holder id was filed normalised
    assert [r["holder_id"] for r in rows] == [world.citizen, world.citizen.upper(), world.citizen2]
    assert {r["holder_id_type"] for r in rows} == {"111"}
    assert {r["type_code"] for r in rows} == {"11100000000013338W032"}
    assert all(r["superseded_at"] is None for r in rows)

    wrong = world.citizen[:17] + ("0" if world.citizen[17] != "0" else "1")
    assert {r[1] for r in failed(world)} == {mask_id(world.citizen), mask_id(wrong)}
    assert all(world.citizen[6:14] not in r[1] for r in failed(world))


def test_signature_covers_the_canonical_record(world: World) -> None:
    keys = bus_keys(world.settings)
    row = library(world)[0]
    record = signed_record(row)
    assert record["identifier"] == VECTOR
    assert record["provenance"]["resource"] == CERT_CODE
    assert record["provenance"]["run_id"] == row["run_id"]
    public: Ed25519PublicKey = keys.public_key
    public.verify(base64.b64decode(row["signature"]), canonical(record))
    assert row["key_id"] == keys.key_id

    # one changed character and the signature no longer holds
    tampered = dict(record, holder_name="王五")
    try:
        public.verify(base64.b64decode(row["signature"]), canonical(tampered))
    except Exception as exc:  # cryptography raises InvalidSignature
        assert type(exc).__name__ == "InvalidSignature"
    else:
        raise AssertionError("a tampered record verified")


def test_keys_are_private_files(world: World) -> None:
    folder = world.settings.home / "keys"
    for name in ("bus-signing-ed25519.pem", "bus-secret"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert len((folder / "bus-secret").read_bytes()) == 32


def test_ingest_again_does_nothing(world: World) -> None:
    result = ingest(CERT_CODE, settings=world.settings, today=date(2026, 12, 3))
    assert (result.runs, result.read, result.verified, result.failed) == (0, 0, 0, 0)


def test_a_corrected_record_supersedes_the_old(world: World) -> None:
    world.add_certs(
        "certs",
        [
            cert_row(
                world.certs["citizen2"],
                world.citizen2,
                holder_name="李四（更正）",
                updated_at="2025-06-01 09:00:00",
            )
        ],
    )
    result = world.sync_and_ingest(CERT_CODE)
    assert (result.runs, result.read, result.verified, result.superseded) == (1, 1, 1, 1)

    rows = [r for r in library(world) if r["identifier"] == world.certs["citizen2"]]
    old, new = rows
    assert old["holder_name"] == "李四" and new["holder_name"] == "李四（更正）"
    assert old["superseded_by"] == new["id"]
    today = date(2026, 12, 3)
    assert (effective_status(old, today), effective_status(new, today)) == ("superseded", "valid")


def test_a_new_version_supersedes_the_lower_one(world: World) -> None:
    from schemas.checks import cert_id_with_check

    v2 = cert_id_with_check(world.certs["second"].rsplit(".", 2)[0] + ".002")
    world.add_certs("certs", [cert_row(v2, world.citizen, updated_at="2025-06-02 09:00:00")])
    result = world.sync_and_ingest(CERT_CODE)
    assert (result.verified, result.superseded) == (1, 1)
    by_id = {r["identifier"]: r for r in library(world)}
    assert by_id[world.certs["second"]]["superseded_by"] == by_id[v2]["id"]
    assert by_id[v2]["superseded_at"] is None


def test_a_full_reload_changes_nothing(world: World) -> None:
    from govbus.sync import sync

    sync(CERT_CODE, full=True, settings=world.settings)
    result = ingest(CERT_CODE, settings=world.settings, today=date(2026, 12, 3))
    assert (result.read, result.verified, result.unchanged, result.failed) == (7, 0, 3, 4)


def test_status_by_date_and_source() -> None:
    row = {"superseded_at": None, "source_status": "valid", "valid_to": date(2026, 1, 1)}
    assert effective_status(row, date(2026, 1, 1)) == "valid"
    assert effective_status(row, date(2026, 1, 2)) == "expired"
    assert effective_status(dict(row, source_status="revoked"), date(2025, 1, 1)) == "revoked"


def test_verify_reasons(world: World) -> None:
    spec = get_resource(registry_engine(world.settings.registry_url), CERT_CODE).spec
    today = date(2026, 12, 3)
    good = cert_row(VECTOR, world.citizen)
    assert verify_record(good, spec, today) == []
    assert verify_record(dict(good, holder_id_type="999"), spec, today) == [
        "holder_id_type.unknown"
    ]
    assert verify_record(
        dict(good, issue_date="2027-01-01", valid_to="2026-12-31"), spec, today
    ) == [
        "dates.issued_in_future",
        "dates.ends_before_issue",
    ]
    assert verify_record(dict(good, status="lost"), spec, today) == ["status.unknown"]
    assert verify_record(dict(good, issuer_code="91110000600037341L"), spec, today) == [
        "identifier.issuer_mismatch",
        "issuer.not_registered",
    ]
    licence = get_resource(registry_engine(world.settings.registry_url), LICENCE_CODE).spec
    assert verify_record(good, licence, today) == [
        "identifier.type_mismatch",
        "issuer.not_registered",
    ]
    assert CERT_ISSUER in VECTOR
