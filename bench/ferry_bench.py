"""Ferry throughput on this machine, each figure next to its reference measured in the same run.

Run on demand (not a test)::

    .venv/bin/python bench/ferry_bench.py --size 1G            # scratch in /dev/shm if present
    .venv/bin/python bench/ferry_bench.py --size 256M --rounds 5 --dir /var/tmp

Measures, for one incompressible Parquet payload of ``--size`` bytes:

- raw AES-256-GCM on one core (64 KiB chunks from a hot 64 MiB buffer), raw SHA-256 of the
  ciphertext file and a plain write of a new file of the same size: the references;
- export (encrypt + hash + sign into a bundle) and import (verify + decrypt into staging);
- SFTP upload and download of the bundle with paramiko next to OpenSSH ``sftp`` put and get of
  the same ciphertext file, against an sshd started here on a loopback port (needs sshd);
- the Python heap peak (tracemalloc) of export and import at 1/8 of the size and at the full
  size: flat memory means the two are about equal.

Each timing is the best of ``--rounds`` rounds, and each round measures the references and the
ferry back to back: on a shared machine the best round is the one least disturbed by others.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferry.bundle import (  # noqa: E402
    BuiltBundle,
    Payload,
    PayloadFile,
    build_bundle,
    bundle_name,
    decrypt_bundle,
    parse_bundle_name,
    verify_bundle,
)
from ferry.crypto import CHUNK_SIZE, Suite  # noqa: E402
from ferry.keys import Identity, TrustStore, keygen, load_identity  # noqa: E402
from ferry.transports import SftpTransport  # noqa: E402

MIB = 1024 * 1024


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip().upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"size {text!r}: use e.g. 1G, 400M, 65536")
    return int(match[1]) * {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB}[match[2]]


@dataclass
class Timings:
    best: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def time(self, name: str, nbytes: int, fn: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.best[name] = min(seconds, self.best.get(name, seconds))
        self.sizes[name] = nbytes
        return result

    def rate(self, name: str) -> float:
        return self.sizes[name] / MIB / self.best[name]


_HOT = memoryview(os.urandom(64 * MIB))


def raw_aes_gcm(nbytes: int) -> None:
    key = AESGCM(os.urandom(32))
    buf = _HOT
    nonce = os.urandom(12)
    done = 0
    while done < nbytes:
        for off in range(0, len(buf), CHUNK_SIZE):
            key.encrypt(nonce, buf[off : off + CHUNK_SIZE], b"")
        done += len(buf)


def raw_sha256(path: Path) -> None:
    sha = hashlib.sha256()
    buf = bytearray(4 * MIB)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            sha.update(memoryview(buf)[:n])


def raw_write(path: Path, nbytes: int) -> None:
    block = os.urandom(4 * MIB)
    with open(path, "wb", buffering=0) as fh:
        for _ in range(0, nbytes, len(block)):
            fh.write(block)
        os.fsync(fh.fileno())
    path.unlink()


def make_parquet(path: Path, nbytes: int) -> int:
    """Incompressible 1 MiB blobs written 16 at a time, so the payload never sits in memory."""
    schema = pa.schema([("blob", pa.binary())])
    rows = max(1, nbytes // MIB)
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(0, rows, 16):
            count = min(16, rows - start)
            writer.write_table(pa.table({"blob": [os.urandom(MIB) for _ in range(count)]}, schema))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(base: Path) -> tuple[subprocess.Popen, int, Path, Path]:
    base.mkdir()
    host_key, client_key = base / "host", base / "client"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (base / "authorized_keys").write_text((base / "client.pub").read_text())
    port = free_port()
    kind, blob = (base / "host.pub").read_text().split()[:2]
    (base / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {base / 'pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(base / "sshd_config")], stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port, client_key, base / "known_hosts"


def openssh_sftp(command: str, port: int, client_key: Path, known: Path, batch: Path) -> None:
    batch.write_text(command + "\n")
    subprocess.run(
        ["sftp", "-q", "-b", str(batch), "-P", str(port), "-i", str(client_key)]
        + ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
        + ["-o", "BatchMode=yes", "127.0.0.1"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


class Ferry:
    def __init__(self, base: Path) -> None:
        keygen(base / "a", "a")
        keygen(base / "b", "b")
        self.a: Identity = load_identity(base / "a")
        self.b: Identity = load_identity(base / "b")

    def export(self, src: Path, rows: int, target: Path) -> BuiltBundle:
        shutil.rmtree(target, ignore_errors=True)
        payload = Payload("R", "h", (PayloadFile(src, rows),), "a", "b", "bench")
        return build_bundle(
            target,
            sender=self.a,
            recipients=[self.b.public],
            channel="bench",
            sequence=1,
            previous_hash=None,
            source_domain="a",
            destination_domain="b",
            payload=payload,
            suite=Suite.STANDARD,
            bundle_id=parse_bundle_name(target.name)[2] if parse_bundle_name(target.name) else None,
        )

    def import_(self, bundle: Path, staging: Path) -> None:
        verified = verify_bundle(bundle, identity=self.b, trust=TrustStore.of(self.a.public))
        decrypt_bundle(verified, self.b, staging, max_plain_bytes=1 << 50)
        shutil.rmtree(staging)


def heap_peak(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


def run(base: Path, nbytes: int, rounds: int, sftp: bool) -> None:
    ferry = Ferry(base)
    src = base / "payload.parquet"
    rows = make_parquet(src, nbytes)
    size = src.stat().st_size
    t = Timings()
    print(
        f"payload {size / MIB:.0f} MiB Parquet ({rows} rows of 1 MiB random bytes) in {base}; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, best of {rounds} rounds",
        file=sys.stderr,
    )

    # A real bundle name: the receiving side ignores anything else.
    bundle = base / bundle_name("bench", 1, str(uuid.uuid4()))
    for r in range(rounds):
        t.time("raw AES-256-GCM, 64 KiB chunks, 1 core", size, lambda: raw_aes_gcm(size))
        t.time("raw write of a new file", size, lambda: raw_write(base / "w.bin", size))
        built = t.time(
            "export (encrypt + hash + sign)", size, lambda: ferry.export(src, rows, bundle)
        )
        ciphertext = next((bundle / "data").iterdir())
        t.time("raw SHA-256 of the ciphertext, 1 core", size, lambda: raw_sha256(ciphertext))  # noqa: B023
        t.time("import (verify + decrypt)", size, lambda: ferry.import_(bundle, base / "staging"))
        print(f"round {r + 1} done", file=sys.stderr)
    assert isinstance(built, BuiltBundle)

    small = base / "small.parquet"
    small_rows = make_parquet(small, max(MIB, size // 8))
    peaks = {
        "export": (
            heap_peak(lambda: ferry.export(small, small_rows, base / "b-small")),
            heap_peak(lambda: ferry.export(src, rows, bundle)),
        ),
        "import": (
            heap_peak(lambda: ferry.import_(base / "b-small", base / "staging")),
            heap_peak(lambda: ferry.import_(bundle, base / "staging")),
        ),
    }

    if sftp:
        ct = next((bundle / "data").iterdir())
        ct_size = ct.stat().st_size
        bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        proc, port, client_key, known = start_sshd(base / "ssh")
        try:
            remote = base / "remote"
            remote.mkdir()
            user = os.environ.get("USER") or "root"
            transport = SftpTransport("127.0.0.1", user, client_key, known, str(remote), port=port)
            batch = base / "batch"
            for r in range(rounds):
                t.time(
                    "SFTP upload, paramiko (bundle)", bundle_bytes, lambda: transport.send(bundle)
                )
                t.time(
                    "SFTP upload, OpenSSH sftp put",
                    ct_size,
                    lambda: openssh_sftp(
                        f"put {ct} {remote}/o.bin", port, client_key, known, batch
                    ),
                )
                inbox = base / "inbox"
                transport_keep = SftpTransport(
                    "127.0.0.1", user, client_key, known, str(remote), port=port,
                    remove_after_receive=False,
                )  # fmt: skip
                received = t.time(
                    "SFTP download, paramiko (bundle)",
                    bundle_bytes,
                    lambda: transport_keep.receive(inbox),  # noqa: B023
                )
                assert received == [inbox / bundle.name], received
                shutil.rmtree(inbox)
                t.time(
                    "SFTP download, OpenSSH sftp get",
                    ct_size,
                    lambda: openssh_sftp(
                        f"get {remote}/o.bin {base}/o.bin", port, client_key, known, batch
                    ),
                )
                (base / "o.bin").unlink()
                shutil.rmtree(remote / bundle.name)
                (remote / "o.bin").unlink()
                print(f"sftp round {r + 1} done", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait()

    raw = t.rate("raw AES-256-GCM, 64 KiB chunks, 1 core")
    notes = {
        name: f"{t.rate(name) / raw:.2f} of raw AES-GCM" + goal
        for name, goal in (
            ("export (encrypt + hash + sign)", " (goal 0.5)"),
            ("import (verify + decrypt)", " (goal 0.5)"),
            ("raw SHA-256 of the ciphertext, 1 core", ""),
        )
    }
    if sftp:
        for way, verb in (("upload", "put"), ("download", "get")):
            ratio = t.rate(f"SFTP {way}, paramiko (bundle)") / t.rate(
                f"SFTP {way}, OpenSSH sftp {verb}"
            )
            notes[f"SFTP {way}, paramiko (bundle)"] = f"{ratio:.2f} of OpenSSH (goal 0.8)"

    print(f"\n| measurement ({size / MIB:.0f} MiB payload) | MiB | best s | MiB/s | ratio |")
    print("|---|---:|---:|---:|---|")
    for name in t.best:
        print(
            f"| {name} | {t.sizes[name] / MIB:.0f} | {t.best[name]:.2f} | {t.rate(name):.0f} "
            f"| {notes.get(name, '')} |"
        )
    print(f"\n| Python heap peak | {max(MIB, size // 8) / MIB:.0f} MiB | {size / MIB:.0f} MiB |")
    print("|---|---:|---:|")
    for name, (at_small, at_full) in peaks.items():
        print(f"| {name} | {at_small:.1f} MiB | {at_full:.1f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="e.g. 1G")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-sftp", dest="sftp", action="store_false")
    default_dir = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    parser.add_argument("--dir", type=Path, default=default_dir, help="scratch (tmpfs best)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(dir=args.dir, prefix="ferry-bench-"))
    try:
        run(base, args.size, args.rounds, args.sftp)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
