"""Import exactly once: duplicates, replays, a failing loader, out-of-order arrival, status."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select

from ferry.bundle import Compression
from ferry.crypto import Suite
from ferry.ledger import (
    ImportStatus,
    channel_status,
    drain_pending,
    format_ranges,
    import_bundle,
    import_inbox,
    ledger_table,
)
from ferry.outbox import Sender, export_heartbeat, export_payload, outbox_bundle
from govbus.errors import BundleRefused


def deliver(site, exported):
    """Copy a bundle from the sender's outbox into the receiver's inbox, as a transport would."""
    target = site.inbox / exported.path.name
    shutil.copytree(exported.path, target)
    return target


def test_round_trip_reproduces_rows_and_marks_ledger(site):
    exported = export_payload(site.sender, site.payload(rows=25, files=3))

    result = import_bundle(
        site.engine, deliver(site, exported), receiver=site.receiver, load=site.load
    )

    assert result.status is ImportStatus.IMPORTED
    assert (result.sequence, result.records, result.channel) == (1, 25, "ch-a")
    assert site.rows() == [(i, f"person-{i}") for i in range(1, 26)]
    assert site.ledger() == [("ch-a", 1, "imported")]
    assert result.path == site.receiver.done / exported.path.name
    assert not (site.inbox / exported.path.name).exists()
    assert not any(site.receiver.staging.iterdir())


@pytest.mark.parametrize(
    ("suite", "compression"),
    [
        (Suite.NATIONAL, Compression.NONE),
        (Suite.NATIONAL, Compression.ZSTD),
        (Suite.STANDARD, Compression.ZSTD),
    ],
)
def test_round_trip_other_suites_and_compression(site, suite, compression):
    sender = Sender(site.sender.home, site.sender_id, site.sender.recipients, suite, compression)
    exported = export_payload(sender, site.payload(rows=70_000, files=2))

    result = import_bundle(
        site.engine, deliver(site, exported), receiver=site.receiver, load=site.load
    )

    assert result.status is ImportStatus.IMPORTED
    assert exported.envelope.suite is suite
    assert exported.bundle_hash.startswith("sm3:" if suite is Suite.NATIONAL else "sha256:")
    assert len(site.rows()) == 70_000
    assert site.rows()[-1] == (70_000, "person-70000")


def test_importing_twice_imports_once(site):
    exported = export_payload(site.sender, site.payload(rows=5))
    import_bundle(site.engine, deliver(site, exported), receiver=site.receiver, load=site.load)

    second = import_bundle(
        site.engine, deliver(site, exported), receiver=site.receiver, load=site.load
    )

    assert second.status is ImportStatus.SKIPPED
    assert len(site.rows()) == 5
    assert site.ledger() == [("ch-a", 1, "imported")]
    assert not (site.inbox / exported.path.name).exists()


def test_loader_that_raises_leaves_nothing_and_bundle_reimportable(site):
    exported = export_payload(site.sender, site.payload(rows=5))
    path = deliver(site, exported)

    def failing(conn, files, envelope):
        site.load(conn, files, envelope)
        raise RuntimeError("lake unavailable")

    with pytest.raises(RuntimeError, match="lake unavailable"):
        import_bundle(site.engine, path, receiver=site.receiver, load=failing)

    assert site.rows() == []
    assert site.ledger() == []
    assert path.exists()
    assert not (site.receiver.staging / exported.envelope.bundle_id).exists()

    again = import_bundle(site.engine, path, receiver=site.receiver, load=site.load)
    assert again.status is ImportStatus.IMPORTED
    assert len(site.rows()) == 5


def test_crash_after_commit_before_move_is_rerunnable(site, monkeypatch):
    import ferry.ledger as ledger

    exported = export_payload(site.sender, site.payload(rows=3))
    path = deliver(site, exported)
    real_retire = ledger._retire

    def crash(p, folder):
        if folder == site.receiver.done:
            raise KeyboardInterrupt("power cut")
        return real_retire(p, folder)

    monkeypatch.setattr(ledger, "_retire", crash)
    with pytest.raises(KeyboardInterrupt):
        import_bundle(site.engine, path, receiver=site.receiver, load=site.load)
    monkeypatch.setattr(ledger, "_retire", real_retire)
    assert path.exists() and site.ledger() == [("ch-a", 1, "imported")]

    again = import_bundle(site.engine, path, receiver=site.receiver, load=site.load)

    assert again.status is ImportStatus.SKIPPED
    assert len(site.rows()) == 3
    assert (site.receiver.done / path.name).is_dir()


def test_replayed_sequence_with_other_bundle_id_is_refused(site):
    first = export_payload(site.sender, site.payload(rows=2))
    import_bundle(site.engine, deliver(site, first), receiver=site.receiver, load=site.load)
    # A second sender home that starts again at 1: same sender key, same sequence, new bundle.
    fork = Sender(site.tmp / "forked-home", site.sender_id, site.sender.recipients)
    replay = export_payload(fork, site.payload(rows=2, start=100))

    with pytest.raises(BundleRefused, match=r"replayed sequence 1 on channel 'ch-a'"):
        import_bundle(site.engine, deliver(site, replay), receiver=site.receiver, load=site.load)
    assert [r[0] for r in site.rows()] == [1, 2]
    assert site.ledger() == [("ch-a", 1, "imported")]


def test_out_of_order_bundle_is_held_until_gap_fills(site):
    b1 = export_payload(site.sender, site.payload(rows=2, start=1))
    b2 = export_payload(site.sender, site.payload(rows=2, start=3))
    b3 = export_payload(site.sender, site.payload(rows=2, start=5))

    r3 = import_bundle(site.engine, deliver(site, b3), receiver=site.receiver, load=site.load)
    r2 = import_bundle(site.engine, deliver(site, b2), receiver=site.receiver, load=site.load)

    assert (r3.status, r2.status) == (ImportStatus.PENDING, ImportStatus.PENDING)
    assert site.rows() == []
    assert site.ledger() == [("ch-a", 2, "pending"), ("ch-a", 3, "pending")]
    [status] = channel_status(site.engine)
    assert (status.imported, status.pending, status.missing) == ((), (2, 3), (1,))
    assert r3.path == site.receiver.pending / b3.path.name

    r1 = import_bundle(site.engine, deliver(site, b1), receiver=site.receiver, load=site.load)

    assert r1.status is ImportStatus.IMPORTED
    assert [(f.sequence, f.status) for f in r1.followers] == [
        (2, ImportStatus.IMPORTED),
        (3, ImportStatus.IMPORTED),
    ]
    assert [r[0] for r in site.rows()] == [1, 2, 3, 4, 5, 6]
    assert site.ledger() == [
        ("ch-a", 1, "imported"),
        ("ch-a", 2, "imported"),
        ("ch-a", 3, "imported"),
    ]
    assert not any(site.receiver.pending.iterdir())
    [status] = channel_status(site.engine)
    assert (status.imported, status.pending, status.missing) == ((1, 2, 3), (), ())


def test_held_bundle_does_not_expire_while_waiting(site):
    from datetime import UTC, datetime, timedelta

    sender = Sender(
        site.sender.home, site.sender_id, site.sender.recipients, ttl=timedelta(hours=1)
    )
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    b1 = export_payload(sender, site.payload(rows=1, start=1), now=t0)
    b2 = export_payload(sender, site.payload(rows=1, start=2), now=t0)
    import_bundle(site.engine, deliver(site, b2), receiver=site.receiver, load=site.load, now=t0)

    r1 = import_bundle(
        site.engine,
        deliver(site, b1),
        receiver=site.receiver,
        load=site.load,
        now=t0 + timedelta(minutes=59),
    )
    later = drain_pending(
        site.engine, receiver=site.receiver, load=site.load, now=t0 + timedelta(days=2)
    )

    assert [f.status for f in r1.followers] == [ImportStatus.IMPORTED]
    assert later == []
    assert [r[0] for r in site.rows()] == [1, 2]


def test_heartbeat_reveals_missing_newest_sequences(site):
    bundles = [export_payload(site.sender, site.payload(rows=1, start=i)) for i in range(1, 6)]
    beat = export_heartbeat(site.sender, "ch-a")
    for b in (bundles[0], bundles[2]):
        import_bundle(site.engine, deliver(site, b), receiver=site.receiver, load=site.load)

    result = import_bundle(site.engine, deliver(site, beat), receiver=site.receiver, load=site.load)

    assert result.status is ImportStatus.HEARTBEAT
    assert beat.envelope.heartbeat.highest_sequence == 5
    assert beat.envelope.heartbeat.highest_hash == bundles[-1].bundle_hash
    [status] = channel_status(site.engine, channel="ch-a")
    assert status.imported == (1,)
    assert status.pending == (3,)
    assert status.missing == (2, 4, 5)
    assert format_ranges(status.missing) == "2, 4-5"
    assert status.heartbeat_sequence == 5
    assert status.last_heartbeat_at is not None
    assert not status.heartbeat_mismatch


def test_import_inbox_sorts_imports_and_files_refusals(site):
    b1 = export_payload(site.sender, site.payload(rows=1, start=1))
    b2 = export_payload(site.sender, site.payload(rows=1, start=2))
    deliver(site, b2)
    deliver(site, b1)
    bad = deliver(site, export_payload(site.sender, site.payload(rows=1, start=3)))
    with open(next((bad / "data").iterdir()), "r+b") as fh:
        fh.seek(40)
        byte = fh.read(1)
        fh.seek(40)
        fh.write(bytes([byte[0] ^ 1]))

    outcomes = import_inbox(site.engine, site.inbox, receiver=site.receiver, load=site.load)

    assert [getattr(o, "status", None) for o in outcomes] == [
        ImportStatus.IMPORTED,
        ImportStatus.IMPORTED,
        None,
    ]
    assert isinstance(outcomes[2], BundleRefused)
    assert "data/0001.bin" in str(outcomes[2])
    assert (site.receiver.refused / bad.name).is_dir()
    reason = (site.receiver.refused / f"{bad.name}.reason.txt").read_text()
    assert "BagIt fixity failed" in reason
    assert list(site.inbox.iterdir()) == []
    with site.engine.connect() as conn:
        assert conn.execute(select(ledger_table.c.sequence)).scalars().all() == [1, 2]


def test_resend_gives_identical_bytes(site):
    from ferry.outbox import resend

    exported = export_payload(site.sender, site.payload(rows=3))
    sent: list = []
    resend(
        site.sender.home,
        "ch-a",
        [1],
        lambda p: sent.append(
            {f.relative_to(p): f.read_bytes() for f in p.rglob("*") if f.is_file()}
        ),
    )

    original = {
        f.relative_to(exported.path): f.read_bytes()
        for f in exported.path.rglob("*")
        if f.is_file()
    }
    assert sent == [original]
    assert outbox_bundle(site.sender.home, "ch-a", 1) == exported.path


def test_loader_integrity_error_is_not_mistaken_for_a_replay(site):
    from sqlalchemy.exc import IntegrityError

    b1 = export_payload(site.sender, site.payload(rows=3, start=1))
    b2 = export_payload(site.sender, site.payload(rows=3, start=1))  # same ids: the loader fails
    import_bundle(site.engine, deliver(site, b1), receiver=site.receiver, load=site.load)

    with pytest.raises(IntegrityError, match="UNIQUE constraint failed: cloud_citizen.id"):
        import_bundle(site.engine, deliver(site, b2), receiver=site.receiver, load=site.load)

    assert site.ledger() == [("ch-a", 1, "imported")]
    assert (site.inbox / b2.path.name).is_dir()


def test_export_interrupted_after_state_saved_is_completed(site, monkeypatch):
    import os as _os

    import ferry.outbox as outbox

    real_replace = _os.replace

    def crash_on_rename(src, dst):
        if str(src).endswith(".part") and "outbox" in str(src):
            raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(outbox.os, "replace", crash_on_rename)
    with pytest.raises(KeyboardInterrupt):
        export_payload(site.sender, site.payload(rows=1))
    monkeypatch.setattr(outbox.os, "replace", real_replace)
    leftovers = list(site.sender.outbox.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".part")

    second = export_payload(site.sender, site.payload(rows=1, start=2))

    names = sorted(p.name for p in site.sender.outbox.iterdir())
    assert names == [leftovers[0].name.removesuffix(".part"), second.path.name]
    assert second.sequence == 2
