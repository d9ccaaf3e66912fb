"""The audit trail: one entry per lookup, a chain that names altered, inserted and deleted
entries, and the holder search that never stores an id number."""

from __future__ import annotations

import sqlalchemy as sa

from govbus.certificates import bus_keys
from registry.audit import AuditEntry, AuditLog, Lookup
from registry.db import registry_engine

from .conftest import VECTOR, Desk, World

entries = AuditEntry.__table__


def trail(world: World) -> AuditLog:
    return AuditLog(
        registry_engine(world.settings.registry_url), bus_keys(world.settings).audit_secret
    )


def fill(world: World, n: int = 5) -> AuditLog:
    audit = trail(world)
    for i in range(n):
        audit.append(
            Lookup(
                action="certificates.by_holder",
                outcome="allowed",
                status=200,
                consumer_name="window-1",
                case_number=f"2026-{i:04d}",
                holder_id=world.citizen,
            )
        )
    return audit


def findings(audit: AuditLog) -> list[tuple[str, int | None]]:
    return [(f.kind, f.seq) for f in audit.verify()[1]]


def execute(world: World, statement) -> None:
    with registry_engine(world.settings.registry_url).begin() as conn:
        conn.execute(statement)


def test_every_lookup_is_audited(desk: Desk) -> None:
    world = desk.world
    desk.get("/v1/certificates", holder_id=world.citizen, case="2026-0101")
    desk.get("/v1/certificates", token=None, holder_id=world.citizen, case="2026-0102")
    desk.get("/v1/certificates", token=desk.revoked_token, holder_id=world.citizen, case="x")
    desk.get(f"/v1/certificates/{VECTOR}", case="%E6%B5%99%E5%AE%A1-7")  # percent-encoded
    desk.get("/v1/certificates", holder_id=world.citizen2)

    rows = trail(world).entries(holder_id=world.citizen)
    assert [(r["consumer_name"], r["case_number"], r["status"], r["outcome"]) for r in rows] == [
        ("window-1", "2026-0101", 200, "allowed"),
        (None, "2026-0102", 401, "missing_token"),
        ("old-system", "x", 401, "revoked_consumer"),
        ("window-1", "浙审-7", 200, "allowed"),
    ]
    masked = world.citizen[:6] + "********" + world.citizen[-4:]
    assert {r["holder_masked"] for r in rows} == {masked}
    assert rows[3]["resource_code"] == "220000-ZZK-0001"
    assert len({r["request_id"] for r in rows}) == 4

    # the full id number is nowhere in the trail
    with registry_engine(world.settings.registry_url).connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(sa.select(entries)) for v in row)
    assert world.citizen not in dump and world.citizen2 not in dump
    assert trail(world).verify() == (5, [])


def test_intact_chain(world: World) -> None:
    audit = fill(world)
    assert audit.verify() == (5, [])
    assert audit.head()[0] == 5


def test_altered_entry(world: World) -> None:
    audit = fill(world)
    execute(world, entries.update().where(entries.c.seq == 3).values(case_number="2099-9999"))
    assert findings(audit) == [("altered", 3)]


def test_altered_last_entry(world: World) -> None:
    audit = fill(world)
    execute(world, entries.update().where(entries.c.seq == 5).values(outcome="not_granted"))
    assert findings(audit) == [("altered", 5)]


def test_deleted_entry(world: World) -> None:
    audit = fill(world)
    execute(world, entries.delete().where(entries.c.seq == 2))
    assert findings(audit) == [("deleted", 2)]
    execute(world, entries.delete().where(entries.c.seq == 3))
    assert [str(f) for f in audit.verify()[1]] == [
        "entries 2-3 deleted: entry 4 is intact but does not follow entry 1"
    ]


def test_deleted_first_and_last_entries(world: World) -> None:
    audit = fill(world)
    execute(world, entries.delete().where(entries.c.seq.in_([1, 5])))
    assert findings(audit) == [("deleted", 1), ("deleted", 5)]


def test_inserted_entry(world: World) -> None:
    audit = fill(world)
    # a forger copies entry 3, changes the case and links it into the chain: without the bus
    # secret the hash cannot be right, and the entry after it still points past it
    with registry_engine(world.settings.registry_url).begin() as conn:
        rows = {r["seq"]: dict(r) for r in conn.execute(sa.select(entries)).mappings()}
        conn.execute(entries.update().where(entries.c.seq >= 4).values(seq=entries.c.seq + 100))
        forged = dict(rows[3], seq=4, case_number="2026-FAKE", prev_hash=rows[3]["hash"])
        forged["hash"] = "f" * 64
        conn.execute(entries.insert().values(**forged))
    assert findings(audit) == [("inserted", 4)]


def test_inserted_at_the_end(world: World) -> None:
    audit = fill(world)
    with registry_engine(world.settings.registry_url).begin() as conn:
        last = dict(conn.execute(sa.select(entries).where(entries.c.seq == 5)).mappings().one())
        conn.execute(
            entries.insert().values(**dict(last, seq=6, prev_hash=last["hash"], hash="e" * 64))
        )
    assert findings(audit) == [("inserted", 6)]


def test_audit_holder_finds_by_keyed_hash(world: World) -> None:
    audit = fill(world, 2)
    assert len(audit.entries(holder_id=world.citizen)) == 2
    assert len(audit.entries(holder_id=world.citizen.lower())) == 2
    assert audit.entries(holder_id=world.citizen2) == []
    # a different bus secret gives different hashes: the trail cannot be searched without it
    other = AuditLog(audit.engine, b"\x01" * 32)
    assert other.holder_hmac(world.citizen) != audit.holder_hmac(world.citizen)


def test_concurrent_appends_keep_one_chain(world: World) -> None:
    """Writers in many threads, singly and in group commits, still make one unbroken chain."""
    from concurrent.futures import ThreadPoolExecutor

    from govbus.api import _AuditWriter

    audit = trail(world)
    writer = _AuditWriter(audit)

    def lookup(i: int) -> Lookup:
        return Lookup(action="records.by_key", outcome="allowed", status=200, case_number=str(i))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: audit.append(lookup(i)), range(40)))
        list(pool.map(lambda i: writer.append(lookup(i)), range(40, 120)))
    count, problems = audit.verify()
    assert (count, problems) == (120, [])
    seqs = [e["seq"] for e in audit.entries()]
    assert seqs == list(range(1, 121))
    assert sorted(int(e["case_number"]) for e in audit.entries()) == list(range(120))
