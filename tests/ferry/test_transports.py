"""Directory drop and SFTP against a real OpenSSH sshd, end to end into the ledger."""

from __future__ import annotations

import os
import shutil

import pytest

from ferry.ledger import ImportStatus, import_inbox
from ferry.outbox import export_payload, resend
from ferry.transports import DirectoryDrop, HostKeyRejected, SftpTransport


def tree(path):
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_directory_drop_round_trip(site, tmp_path):
    drop = DirectoryDrop(tmp_path / "usb")
    drop.drop.mkdir()
    exported = export_payload(site.sender, site.payload(rows=12))

    landed = drop.send(exported.path)
    (drop.drop / "ch-a.00000009.11111111-1111-4111-8111-111111111111.part").mkdir()  # in progress
    (drop.drop / "README.txt").write_text("not a bundle")
    received = drop.receive(site.inbox)

    assert landed == str(drop.drop / exported.path.name)
    assert received == [site.inbox / exported.path.name]
    assert tree(received[0]) == tree(exported.path)
    assert sorted(p.name for p in drop.drop.iterdir()) == [
        "README.txt",
        "ch-a.00000009.11111111-1111-4111-8111-111111111111.part",
    ]
    [result] = import_inbox(site.engine, site.inbox, receiver=site.receiver, load=site.load)
    assert result.status is ImportStatus.IMPORTED
    assert len(site.rows()) == 12


def test_directory_drop_restarts_interrupted_copy(site, tmp_path):
    drop = DirectoryDrop(tmp_path / "gate")
    drop.drop.mkdir()
    exported = export_payload(site.sender, site.payload(rows=3))
    part = drop.drop / f"{exported.path.name}.part"
    shutil.copytree(exported.path, part)
    os.truncate(part / "data" / "0001.bin", 10)

    drop.send(exported.path)

    assert not part.exists()
    assert tree(drop.drop / exported.path.name) == tree(exported.path)


@pytest.fixture
def sftp(sshd, tmp_path):
    remote = sshd.root / tmp_path.name
    remote.mkdir()
    return SftpTransport(
        host=sshd.host,
        port=sshd.port,
        username=sshd.username,
        key_file=sshd.client_key,
        known_hosts=sshd.known_hosts,
        remote_dir=str(remote),
    )


def test_sftp_round_trip_into_ledger(site, sftp):
    exported = export_payload(site.sender, site.payload(rows=50_000, files=2))

    remote = sftp.send(exported.path)
    again = sftp.send(exported.path)  # already there: nothing sent twice
    received = sftp.receive(site.inbox)

    assert remote == again == f"{sftp.remote_dir}/{exported.path.name}"
    assert received == [site.inbox / exported.path.name]
    assert tree(received[0]) == tree(exported.path)
    assert os.listdir(sftp.remote_dir) == []
    [result] = import_inbox(site.engine, site.inbox, receiver=site.receiver, load=site.load)
    assert result.status is ImportStatus.IMPORTED
    assert site.rows()[0] == (1, "person-1") and len(site.rows()) == 50_000


def test_sftp_resumes_and_restarts_interrupted_upload(site, sftp, caplog):
    caplog.set_level("INFO", logger="ferry.transports")
    exported = export_payload(site.sender, site.payload(rows=60_000, files=2))
    part = f"{sftp.remote_dir}/{exported.path.name}.part"
    shutil.copytree(exported.path, part)
    first, second = f"{part}/data/0001.bin", f"{part}/data/0002.bin"
    os.truncate(first, 70_000)  # cut short: resumed
    with open(second, "r+b") as fh:  # garbage at the end and too long: rewritten
        fh.seek(0, 2)
        fh.write(b"x" * 1000)
    os.unlink(f"{part}/envelope.sig")  # never sent

    sftp.send(exported.path)

    final = sftp.remote_dir + "/" + exported.path.name
    assert not os.path.exists(part)
    assert tree(type(exported.path)(final)) == tree(exported.path)
    assert f"resuming upload of {part}/data/0001.bin at byte 70000" in caplog.text
    assert "data/0002.bin at byte" not in caplog.text


def test_sftp_resume_with_changed_prefix_restarts(site, sftp):
    exported = export_payload(site.sender, site.payload(rows=60_000))
    part = f"{sftp.remote_dir}/{exported.path.name}.part"
    shutil.copytree(exported.path, part)
    target = f"{part}/data/0001.bin"
    os.truncate(target, 100_000)
    with open(target, "r+b") as fh:
        fh.seek(99_990)
        fh.write(b"\0" * 10)

    sftp.send(exported.path)

    final = type(exported.path)(sftp.remote_dir) / exported.path.name
    assert tree(final) == tree(exported.path)


def test_sftp_unknown_host_key_is_refused(site, sshd, sftp, tmp_path):
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    stranger = SftpTransport(**{**sftp.__dict__, "known_hosts": empty})
    exported = export_payload(site.sender, site.payload(rows=1))

    with pytest.raises(HostKeyRejected, match="host key is not in") as info:
        stranger.send(exported.path)
    assert info.value.retryable is False
    assert os.listdir(sftp.remote_dir) == []


def test_sftp_wrong_host_key_is_refused(site, sshd, sftp, tmp_path):
    import subprocess

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    kind, blob = (tmp_path / "k.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[{sshd.host}]:{sshd.port} {kind} {blob}\n")
    impostor_check = SftpTransport(**{**sftp.__dict__, "known_hosts": wrong})

    with pytest.raises(HostKeyRejected, match="does not match the one pinned"):
        impostor_check.receive(site.inbox)


def test_resend_over_sftp_after_loss(site, sftp):
    b1 = export_payload(site.sender, site.payload(rows=2, start=1))
    b2 = export_payload(site.sender, site.payload(rows=2, start=3))
    sftp.send(b2.path)  # b1 was lost on the way
    sftp.receive(site.inbox)
    [held] = import_inbox(site.engine, site.inbox, receiver=site.receiver, load=site.load)
    assert held.status is ImportStatus.PENDING

    resend(site.sender.home, "ch-a", [1], sftp.send)
    sftp.receive(site.inbox)
    [result] = import_inbox(site.engine, site.inbox, receiver=site.receiver, load=site.load)

    assert result.status is ImportStatus.IMPORTED and result.sequence == 1
    assert [f.sequence for f in result.followers] == [2]
    assert [r[0] for r in site.rows()] == [1, 2, 3, 4]
    assert tree(site.receiver.done / b1.path.name) == tree(b1.path)


def test_sftp_negotiates_aes_gcm_and_fills_packets(sftp):
    with sftp.connect() as client:
        transport = client.get_channel().get_transport()
        assert transport.local_cipher == "aes128-gcm@openssh.com"
        assert transport.remote_cipher == "aes128-gcm@openssh.com"
