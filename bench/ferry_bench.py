"""Ferry throughput on this machine: raw AES-GCM, export, verify + decrypt, SFTP vs OpenSSH sftp.

Run on demand (not a test): ``.venv/bin/python bench/ferry_bench.py --size-mb 400``. Starts its
own sshd on a loopback port (needs /usr/sbin/sshd). Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferry.bundle import Payload, PayloadFile, build_bundle, decrypt_bundle, verify_bundle  # noqa: E402
from ferry.crypto import CHUNK_SIZE, Suite  # noqa: E402
from ferry.keys import TrustStore, keygen, load_identity  # noqa: E402
from ferry.transports import SftpTransport  # noqa: E402

MIB = 1024 * 1024


def report(name: str, nbytes: int, seconds: float, extra: str = "") -> float:
    rate = nbytes / MIB / seconds
    print(f"{name:<34} {nbytes / MIB:8.0f} MiB {seconds:7.2f} s {rate:8.0f} MiB/s {extra}")
    return rate


def raw_aes_gcm(nbytes: int) -> float:
    key = AESGCM(os.urandom(32))
    buf = memoryview(os.urandom(64 * MIB))
    nonce = os.urandom(12)
    start = time.perf_counter()
    done = 0
    while done < nbytes:
        for off in range(0, len(buf), CHUNK_SIZE):
            key.encrypt(nonce, buf[off : off + CHUNK_SIZE], b"")
        done += len(buf)
    return report("raw AES-256-GCM, 64 KiB, 1 core", done, time.perf_counter() - start)


def make_parquet(path: Path, nbytes: int) -> int:
    rows = nbytes // MIB
    blobs = pa.array([os.urandom(MIB) for _ in range(rows)], pa.binary())
    pq.write_table(pa.table({"blob": blobs}), path, compression="none")
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
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(base / "sshd_config")])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port, client_key, base / "known_hosts"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: tmp)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(dir=args.dir, prefix="ferry-bench-"))
    try:
        run(base, args.size_mb * MIB)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, nbytes: int) -> None:
    keygen(base / "a", "a")
    keygen(base / "b", "b")
    a, b = load_identity(base / "a"), load_identity(base / "b")
    src = base / "payload.parquet"
    rows = make_parquet(src, nbytes)
    size = src.stat().st_size
    print(f"payload: {size / MIB:.0f} MiB Parquet, {rows} rows; python {sys.version.split()[0]}")

    raw = raw_aes_gcm(size)

    def export(target: Path, suite: Suite = Suite.STANDARD):  # type: ignore[no-untyped-def]
        payload = Payload("R", "h", (PayloadFile(src, rows),), "a", "b", "bench")
        return build_bundle(
            target,
            sender=a,
            recipients=[b.public],
            channel="bench",
            sequence=1,
            previous_hash=None,
            source_domain="a",
            destination_domain="b",
            payload=payload,
            suite=suite,
        )

    start = time.perf_counter()
    built = export(base / "bundle")
    rate = report("export (encrypt+hash+sign)", size, time.perf_counter() - start)
    print(f"{'':34} export / raw AES-GCM = {rate / raw:.2f}")

    start = time.perf_counter()
    verified = verify_bundle(built.path, identity=b, trust=TrustStore.of(a.public))
    t_verify = time.perf_counter() - start
    report("verify (names, sig, bagit fixity)", size, t_verify)
    start = time.perf_counter()
    decrypt_bundle(verified, b, base / "staging", max_plain_bytes=nbytes * 2)
    t_dec = time.perf_counter() - start
    report("decrypt to staging", size, t_dec)
    rate = report("import = verify + decrypt", size, t_verify + t_dec)
    print(f"{'':34} import / raw AES-GCM = {rate / raw:.2f}")
    shutil.rmtree(base / "staging")

    start = time.perf_counter()
    tracemalloc.start()
    national = export(base / "bundle-sm", Suite.NATIONAL)
    _, peak_full = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    report("export, national suite (SM4-GCM)", size, time.perf_counter() - start)
    shutil.rmtree(national.path)
    print(
        f"{'':34} python heap peak during export of {size / MIB:.0f} MiB: {peak_full / MIB:.2f} MiB"
    )

    proc, port, client_key, known = start_sshd(base / "ssh")
    try:
        remote = base / "remote"
        remote.mkdir()
        t = SftpTransport(
            "127.0.0.1", os.environ.get("USER", "root"), client_key, known, str(remote), port=port
        )
        start = time.perf_counter()
        t.send(built.path)
        paramiko_rate = report(
            "SFTP send (paramiko, pipelined)",
            sum(p.stat().st_size for p in built.path.rglob("*") if p.is_file()),
            time.perf_counter() - start,
        )
        ct = next((built.path / "data").iterdir())
        batch = base / "batch"
        batch.write_text(f"put {ct} {remote}/openssh.bin\n")
        start = time.perf_counter()
        subprocess.run(
            [
                "sftp",
                "-q",
                "-b",
                str(batch),
                "-P",
                str(port),
                "-i",
                str(client_key),
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "127.0.0.1",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        openssh_rate = report(
            "OpenSSH sftp put, same ciphertext", ct.stat().st_size, time.perf_counter() - start
        )
        print(f"{'':34} paramiko / OpenSSH = {paramiko_rate / openssh_rate:.2f}")
    finally:
        proc.terminate()
        proc.wait()
    print(
        f"max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
        " MiB (includes the payload generated in memory)"
    )


if __name__ == "__main__":
    main()
