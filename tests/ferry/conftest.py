"""Fixtures for the ferry: identities, a sender and a receiver, a SQLite cloud, and a real sshd."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, insert

from ferry.bundle import Payload, PayloadFile
from ferry.keys import Identity, TrustStore, keygen, load_identity
from ferry.ledger import Receiver, create_ledger
from ferry.outbox import Sender

cloud = MetaData()
citizen_rows = Table(
    "cloud_citizen",
    cloud,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("bundle_id", String(36), nullable=False),
)


def load_rows(conn, files, envelope) -> None:
    """The test loader: every Parquet row into ``cloud_citizen`` (primary key on id)."""
    for path in files:
        rows = pq.read_table(path).to_pylist()
        if rows:
            conn.execute(
                insert(citizen_rows),
                [{"id": r["id"], "name": r["name"], "bundle_id": envelope.bundle_id} for r in rows],
            )


def write_parquet(path: Path, start: int, count: int) -> Path:
    table = pa.table(
        {
            "id": pa.array(range(start, start + count), pa.int64()),
            "name": [f"person-{i}" for i in range(start, start + count)],
        }
    )
    pq.write_table(table, path)
    return path


@dataclass
class Site:
    tmp: Path
    sender_id: Identity
    receiver_id: Identity
    other_id: Identity
    sender: Sender
    receiver: Receiver
    engine: Engine
    inbox: Path
    _counter: int = 0

    @staticmethod
    def load(conn, files, envelope) -> None:
        load_rows(conn, files, envelope)

    def payload(self, rows: int = 10, start: int = 1, channel: str = "ch-a", files: int = 1):
        """A payload of ``files`` Parquet files holding ids start .. start + rows - 1."""
        self._counter += 1
        per_file = [rows // files + (1 if i < rows % files else 0) for i in range(files)]
        items, first = [], start
        for i, count in enumerate(per_file):
            path = self.tmp / "payloads" / f"p{self._counter}-{i}.parquet"
            path.parent.mkdir(exist_ok=True)
            items.append(PayloadFile(write_parquet(path, first, count), count))
            first += count
        return Payload(
            resource="R-CITIZEN",
            schema_hash="sha256:0f1e2d",
            files=tuple(items),
            source_domain="dept.public-security",
            destination_domain="gov.cloud",
            channel=channel,
        )

    def rows(self) -> list[tuple[int, str]]:
        with self.engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    citizen_rows.select()
                    .with_only_columns(citizen_rows.c.id, citizen_rows.c.name)
                    .order_by(citizen_rows.c.id)
                )
            ]

    def ledger(self) -> list[tuple]:
        from ferry.ledger import ledger_table as t

        with self.engine.connect() as conn:
            q = t.select().with_only_columns(t.c.channel, t.c.sequence, t.c.status)
            return [tuple(r) for r in conn.execute(q.order_by(t.c.channel, t.c.sequence))]


@pytest.fixture(scope="session")
def identities(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("keys")
    for name in ("sender", "receiver", "other", "intruder"):
        keygen(base / name, name)
    keygen(base / "rsa-receiver", "rsa-receiver", encryption="rsa")
    return {p.name: p for p in base.iterdir()}


@pytest.fixture
def site(tmp_path, identities) -> Site:
    sender_id = load_identity(identities["sender"])
    receiver_id = load_identity(identities["receiver"])
    other_id = load_identity(identities["other"])
    engine = create_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    create_ledger(engine)
    cloud.create_all(engine)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return Site(
        tmp=tmp_path,
        sender_id=sender_id,
        receiver_id=receiver_id,
        other_id=other_id,
        sender=Sender(tmp_path / "sender-home", sender_id, (receiver_id.public,)),
        receiver=Receiver(
            receiver_id,
            TrustStore.of(sender_id.public),
            tmp_path / "receiver-home",
            channels={"ch-a"},
            domain="gov.cloud",
        ),
        engine=engine,
        inbox=inbox,
    )


# -- OpenSSH ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    username: str
    client_key: Path
    known_hosts: Path
    root: Path  #: a directory the test user can write to, absolute on the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    """A real OpenSSH sshd on a free loopback port, with its own host key and one client key."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(binary).exists():
        # `make test` installs it (scripts/services.sh); only a hand-run pytest can lack it.
        message = "OpenSSH sshd is not installed: apt-get install -y openssh-server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    import getpass

    base = tmp_path_factory.mktemp("sshd")
    user = getpass.getuser()
    host_key, client_key = base / "host_ed25519", base / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (base / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    port = _free_port()
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    root = base / "drop"
    root.mkdir()
    config = base / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {base / "sshd.pid"}
AuthorizedKeysFile {base / "authorized_keys"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
"""
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
    proc = subprocess.Popen(
        [binary, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield SshServer("127.0.0.1", port, user, client_key, known_hosts, root)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def cloud_metadata() -> MetaData:
    """The test cloud's tables (``cloud_citizen``), for creating them on another database."""
    return cloud
