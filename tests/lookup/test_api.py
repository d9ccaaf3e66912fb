"""The lookup API: answers, each refusal with its reason, request ids and signatures."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy.orm import Session

from govbus.certificates import canonical
from registry.access import decide_application, submit_application
from registry.db import registry_engine

from .conftest import (
    CERT_CODE,
    CERT_TYPE,
    ENTERPRISE_CODE,
    LICENCE_CODE,
    LICENCE_TYPE,
    MARKET,
    TAX_CODE,
    VECTOR,
    Desk,
)


def problem(response) -> tuple[int, str]:
    body = response.json()
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert body["status"] == response.status_code
    return response.status_code, body["reason"]


def apply(desk: Desk, code: str, approve: bool | None) -> None:
    with Session(registry_engine(desk.world.settings.registry_url)) as session, session.begin():
        application = submit_application(session, "window-1", code, "办理企业变更登记")
        if approve is not None:
            decide_application(session, application.id, approve=approve, provider_code=MARKET)


def test_certificates_of_a_holder(desk: Desk) -> None:
    response = desk.get("/v1/certificates", holder_id=desk.world.citizen)
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert body["holder_id"] == desk.world.citizen[:6] + "********" + desk.world.citizen[-4:]
    identifiers = [c["record"]["identifier"] for c in body["certificates"]]
    assert identifiers == [VECTOR, desk.world.certs["second"]]
    assert [c["status"] for c in body["certificates"]] == ["valid", "valid"]

    # each record carries the bus's signature, checkable with the published key
    key = desk.client.get("/v1/signing-key").json()
    public = load_pem_public_key(key["public_key_pem"].encode())
    for certificate in body["certificates"]:
        assert certificate["signature"]["key_id"] == key["key_id"]
        assert certificate["signature"]["algorithm"] == "Ed25519"
        public.verify(
            base64.b64decode(certificate["signature"]["value"]), canonical(certificate["record"])
        )


def test_certificates_of_a_type(desk: Desk) -> None:
    response = desk.get("/v1/certificates", holder_id=desk.world.citizen, type=CERT_TYPE)
    assert response.status_code == 200
    assert len(response.json()["certificates"]) == 2
    assert problem(desk.get("/v1/certificates", holder_id=desk.world.citizen2, type="X")) == (
        404,
        "unknown_certificate_type",
    )


def test_certificate_by_identifier(desk: Desk) -> None:
    response = desk.get(f"/v1/certificates/{VECTOR}")
    assert response.status_code == 200
    body = response.json()
    assert (body["genuine"], body["status"]) == (True, "valid")
    assert body["certificate"]["record"]["holder_id"] == desk.world.citizen
    assert body["certificate"]["record"]["provenance"]["resource"] == CERT_CODE


def test_record_by_key(desk: Desk) -> None:
    apply(desk, ENTERPRISE_CODE, approve=True)
    response = desk.get(f"/v1/resources/{ENTERPRISE_CODE}/records", key=desk.world.company)
    assert response.status_code == 200
    body = response.json()
    assert body["record"] == {
        "credit_code": desk.world.company,
        "name": "嘉兴示例有限公司",
        "legal_rep_id": desk.world.legal_rep,
        "updated_at": body["record"]["updated_at"],
    }
    key = load_pem_public_key(desk.client.get("/v1/signing-key").json()["public_key_pem"].encode())
    signed = {
        "resource": body["resource"],
        "record": body["record"],
        "provenance": body["provenance"],
    }
    key.verify(base64.b64decode(body["signature"]["value"]), canonical(signed))


# -- 401 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing_token"),
        ("gbt_not-a-real-token", "unknown_consumer"),
        ("revoked", "revoked_consumer"),
    ],
)
def test_401(desk: Desk, token, reason) -> None:
    token = desk.revoked_token if token == "revoked" else token
    response = desk.get("/v1/certificates", token=token, holder_id=desk.world.citizen)
    assert problem(response) == (401, reason)


# -- 403 -----------------------------------------------------------------------------------------


def test_403_not_shared(desk: Desk) -> None:
    response = desk.get(f"/v1/resources/{TAX_CODE}/records", key=desk.world.company)
    assert problem(response) == (403, "not_shared")


def test_403_not_granted_then_pending_then_granted(desk: Desk) -> None:
    url = f"/v1/resources/{ENTERPRISE_CODE}/records"
    assert problem(desk.get(url, key=desk.world.company)) == (403, "not_granted")
    apply(desk, ENTERPRISE_CODE, approve=None)
    assert problem(desk.get(url, key=desk.world.company)) == (403, "application_pending")
    with Session(registry_engine(desk.world.settings.registry_url)) as session, session.begin():
        decide_application(session, 1, approve=True, provider_code=MARKET)
    assert desk.get(url, key=desk.world.company).status_code == 200


def test_403_denied_application_is_not_granted(desk: Desk) -> None:
    apply(desk, ENTERPRISE_CODE, approve=False)
    url = f"/v1/resources/{ENTERPRISE_CODE}/records"
    assert problem(desk.get(url, key=desk.world.company)) == (403, "not_granted")


def test_403_conditional_certificates(desk: Desk) -> None:
    response = desk.get("/v1/certificates", holder_id=desk.world.company, type=LICENCE_TYPE)
    assert problem(response) == (403, "not_granted")
    response = desk.get(f"/v1/certificates/{desk.world.certs['licence']}")
    assert problem(response) == (403, "not_granted")
    # without a type, only the readable resources are searched: the company has nothing there
    assert problem(desk.get("/v1/certificates", holder_id=desk.world.company)) == (404, "no_match")

    apply(desk, LICENCE_CODE, approve=True)
    response = desk.get("/v1/certificates", holder_id=desk.world.company)
    assert [c["record"]["identifier"] for c in response.json()["certificates"]] == [
        desk.world.certs["licence"]
    ]


# -- 404, 409 ------------------------------------------------------------------------------------


def test_404(desk: Desk) -> None:
    from schemas.checks import cert_id_with_check

    assert problem(desk.get("/v1/certificates", holder_id="11010519491231002X")) == (
        404,
        "no_match",
    )
    unknown = cert_id_with_check(VECTOR[:-6] + ".002")
    assert problem(desk.get(f"/v1/certificates/{unknown}")) == (404, "no_match")
    assert problem(desk.get("/v1/resources/110000-ABC-0001/records", key="x")) == (
        404,
        "unknown_resource",
    )


def test_409_several_matches(desk: Desk) -> None:
    """The same identifier filed current by two resources: one answer was required."""
    import sqlalchemy as sa

    from govbus.certificates import certificates
    from govbus.sync import cloud_for

    with cloud_for(desk.world.settings).engine.begin() as conn:
        row = dict(
            conn.execute(sa.select(certificates).where(certificates.c.identifier == VECTOR))
            .mappings()
            .one()
        )
        row.pop("id")
        conn.execute(certificates.insert().values(**dict(row, resource_code=ENTERPRISE_CODE)))
    assert problem(desk.get(f"/v1/certificates/{VECTOR}")) == (409, "several_matches")


# -- 422 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("holder_id", "reason"),
    [
        ("110105194912310021", "resident_id.check_digit"),
        ("11010519491231002", "resident_id.format"),
        ("999999194912310020", "resident_id.division"),
        ("91110000600037341M", "uscc.check_char"),
        ("9111000060003734L", "uscc.length"),
        ("91I10000600037341L", "uscc.charset"),
    ],
)
def test_422_names_the_failed_check(desk: Desk, holder_id, reason) -> None:
    assert problem(desk.get("/v1/certificates", holder_id=holder_id)) == (422, reason)


def test_422_identifier_and_key_checks(desk: Desk) -> None:
    assert problem(desk.get(f"/v1/certificates/{VECTOR[:-1]}G")) == (422, "cert_id.check_char")
    assert problem(desk.get("/v1/certificates/not-an-identifier")) == (422, "cert_id.format")
    apply(desk, ENTERPRISE_CODE, approve=True)
    url = f"/v1/resources/{ENTERPRISE_CODE}/records"
    assert problem(desk.get(url, key="91110000600037341M")) == (422, "uscc.check_char")
    assert problem(desk.get(url, key="a,b")) == (422, "key.parts")


def test_422_purpose_is_required(desk: Desk) -> None:
    assert problem(desk.get("/v1/certificates", case=None, holder_id=desk.world.citizen)) == (
        422,
        "case_number.missing",
    )
    assert problem(desk.get("/v1/certificates", holder_id=desk.world.citizen, case="a\tb")) == (
        422,
        "case_number.format",
    )
    assert problem(desk.get("/v1/certificates")) == (422, "request.malformed")


def test_status_now_expired_revoked(desk: Desk) -> None:
    from .conftest import cert_row

    desk.world.add_certs(
        "certs",
        [
            cert_row(
                VECTOR, desk.world.citizen, status="revoked", updated_at="2025-07-01 08:00:00"
            ),
            cert_row(
                desk.world.certs["second"],
                desk.world.citizen,
                valid_to="2025-12-31",
                updated_at="2025-07-01 08:00:00",
            ),
        ],
    )
    desk.world.sync_and_ingest(CERT_CODE)
    body = desk.get("/v1/certificates", holder_id=desk.world.citizen).json()
    assert [c["status"] for c in body["certificates"]] == ["revoked", "expired"]
    assert desk.get(f"/v1/certificates/{VECTOR}").json()["status"] == "revoked"


def test_nul_bytes_are_refused_not_crashed(desk: Desk) -> None:
    """Found by schemathesis on PostgreSQL, whose text columns refuse NUL: both the lookup and
    its audit entry must survive one."""
    apply(desk, ENTERPRISE_CODE, approve=True)
    url = f"/v1/resources/{ENTERPRISE_CODE}/records"
    assert problem(desk.get(url, key="9111\x000000")) == (422, "key.format")
    assert problem(desk.get("/v1/certificates", holder_id="11010519491231002\x00")) == (
        422,
        "uscc.charset",
    )
    assert problem(desk.get("/v1/certificates", holder_id="\x00abc")) == (422, "uscc.length")
