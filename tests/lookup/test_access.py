"""Grant rules, tokens kept hashed, and reply deadlines in official working days."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from govbus.errors import (
    ApplicationDecided,
    ConfigError,
    NotTheProvider,
    UnknownApplication,
    UnknownConsumer,
)
from registry.access import (
    Consumer,
    Decision,
    add_consumer,
    check_access,
    consumer_by_token,
    decide_application,
    hash_token,
    list_applications,
    reply_deadline,
    revoke_consumer,
    submit_application,
)
from registry.catalogue import SharingType
from registry.db import registry_engine

from .conftest import CERT_CODE, ENTERPRISE_CODE, MARKET, TAX_CODE, World


def session(world: World) -> Session:
    return Session(registry_engine(world.settings.registry_url), expire_on_commit=False)


def test_tokens_are_stored_hashed(world: World) -> None:
    with session(world) as s, s.begin():
        new = add_consumer(s, "window-1")
    assert new.token.startswith("gbt_") and len(new.token) == 4 + 43
    with session(world) as s:
        stored = s.scalars(sa.select(Consumer)).one()
        assert stored.token_sha256 == hash_token(new.token)
        assert new.token not in (stored.token_sha256, stored.token_hint)
        assert consumer_by_token(s, new.token).name == "window-1"
        assert consumer_by_token(s, new.token + "x") is None


def test_grant_rules(world: World) -> None:
    with session(world) as s, s.begin():
        add_consumer(s, "window-1")
        add_consumer(s, "window-2")
    with session(world) as s, s.begin():
        one, two = s.scalars(sa.select(Consumer).order_by(Consumer.id)).all()

        def rule(consumer, code, sharing):
            return check_access(s, consumer, code, sharing)

        # unconditional: everyone; none: nobody, whatever was approved
        assert rule(one, CERT_CODE, SharingType.UNCONDITIONAL) is Decision.ALLOWED
        assert rule(one, TAX_CODE, SharingType.NONE) is Decision.NOT_SHARED
        # conditional: only after the provider approves an application with a purpose
        assert rule(one, ENTERPRISE_CODE, SharingType.CONDITIONAL) is Decision.NOT_GRANTED
        application = submit_application(
            s, "window-1", ENTERPRISE_CODE, "企业变更登记", submitted_on=date(2026, 2, 12)
        )
        assert rule(one, ENTERPRISE_CODE, SharingType.CONDITIONAL) is Decision.APPLICATION_PENDING
        decide_application(s, application.id, approve=True, provider_code=MARKET)
        assert rule(one, ENTERPRISE_CODE, SharingType.CONDITIONAL) is Decision.ALLOWED
        # the grant is the applicant's only
        assert rule(two, ENTERPRISE_CODE, SharingType.CONDITIONAL) is Decision.NOT_GRANTED


def test_application_refusals(world: World) -> None:
    with session(world) as s, s.begin():
        add_consumer(s, "window-1")
        with pytest.raises(ConfigError, match="only conditional resources take applications"):
            submit_application(s, "window-1", CERT_CODE, "查验证照")
        with pytest.raises(ConfigError, match="state its purpose"):
            submit_application(s, "window-1", ENTERPRISE_CODE, "  ")
        with pytest.raises(UnknownConsumer):
            submit_application(s, "nobody", ENTERPRISE_CODE, "x")
        application = submit_application(s, "window-1", ENTERPRISE_CODE, "企业变更登记")
        with pytest.raises(NotTheProvider, match="--provider 11330400MB1234562E"):
            decide_application(s, application.id, approve=True, provider_code="91110000600037341L")
        decide_application(s, application.id, approve=False, provider_code=MARKET, reply="用途不符")
        with pytest.raises(ApplicationDecided, match="already denied"):
            decide_application(s, application.id, approve=True, provider_code=MARKET)
        with pytest.raises(UnknownApplication):
            decide_application(s, 999, approve=True, provider_code=MARKET)
        revoke_consumer(s, "window-1")
        with pytest.raises(ConfigError, match="revoked"):
            submit_application(s, "window-1", ENTERPRISE_CODE, "企业变更登记")


@pytest.mark.parametrize(
    ("submitted", "deadline"),
    [
        # Thursday 12 Feb 2026: Fri 13, make-up Sat 14, Spring Festival 15-23 off, Tue 24 - Fri 27,
        # make-up Sat 28, Sun 1 Mar off, Mon 2 - Wed 4 March is the tenth working day.
        (date(2026, 2, 12), date(2026, 3, 4)),
        # Friday 18 Sep 2026: make-up Sun 20, 21-24, Mid-Autumn 25-27 off, 28-30, National Day
        # 1-7 Oct off, Thu 8 and Fri 9 Oct.
        (date(2026, 9, 18), date(2026, 10, 9)),
        # an ordinary fortnight: Monday 9 Nov to Monday 23 Nov
        (date(2026, 11, 9), date(2026, 11, 23)),
    ],
)
def test_reply_deadline_in_working_days(submitted: date, deadline: date) -> None:
    assert reply_deadline(submitted) == deadline


def test_overdue_applications(world: World) -> None:
    with session(world) as s, s.begin():
        add_consumer(s, "window-1")
        late = submit_application(
            s, "window-1", ENTERPRISE_CODE, "企业变更登记", submitted_on=date(2026, 2, 12)
        )
        answered = submit_application(
            s, "window-1", ENTERPRISE_CODE, "年报核查", submitted_on=date(2026, 2, 12)
        )
        decide_application(s, answered.id, approve=True, provider_code=MARKET)
        submit_application(s, "window-1", ENTERPRISE_CODE, "新申请", submitted_on=date(2026, 3, 3))
    assert late.deadline == date(2026, 3, 4)
    with session(world) as s:
        # on the deadline day itself the application is not yet overdue
        assert list_applications(s, overdue=True, today=date(2026, 3, 4)) == []
        overdue = list_applications(s, overdue=True, today=date(2026, 3, 5))
        assert [(a.id, name) for a, name in overdue] == [(late.id, "window-1")]
        assert len(list_applications(s)) == 3
