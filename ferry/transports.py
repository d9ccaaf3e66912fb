"""Moving bundle directories across the gap: a directory drop and SFTP.

Both transports put a bundle under ``<name>.part`` and rename it when complete, so a reader never
sees half a bundle, and both receive by copying into a local inbox (``<name>.part`` there too)
before anything is verified: the importer never reads from a share someone else can still write.
Names that are not bundle names (``<channel>.<sequence>.<uuid>``) and ``.part`` names are ignored.

Neither transport judges a bundle; that is the importer's job after the copy. A transport only
reports failures to move bytes, as ``TransportError`` (worth retrying) or, for a host key that is
not the pinned one and for a refused login, as non-retryable subclasses.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from ferry.bundle import fsync_tree, parse_bundle_name
from govbus.errors import TransportError
from govbus.fsutil import fsync_dir

__all__ = [
    "Transport",
    "DirectoryDrop",
    "SftpTransport",
    "HostKeyRejected",
    "LoginRefused",
]

log = logging.getLogger(__name__)

_BLOCK = 1024 * 1024
_RESUME_CHECK = 64 * 1024
#: SSH packets this client accepts: a server then answers a large read in few packets, and
#: paramiko's cost is per packet far more than per byte
_MAX_PACKET = 256 * 1024
#: an SFTP write message beyond its data: length, type, request id, handle length, offset, data
#: length (the handle's own bytes are added per file)
_WRITE_OVERHEAD = 4 + 1 + 4 + 4 + 8 + 4
#: ciphers tried first: with an AEAD cipher paramiko computes no separate MAC per packet
_PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _fast_transport(*args: object, **kwargs: object) -> paramiko.Transport:
    """A paramiko transport that offers the AES-GCM ciphers first; the rest stay as fallback."""
    transport = paramiko.Transport(*args, **kwargs)  # type: ignore[arg-type]
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    options.ciphers = tuple(c for c in _PREFERRED_CIPHERS if c in offered) + tuple(
        c for c in offered if c not in _PREFERRED_CIPHERS
    )
    return transport


class HostKeyRejected(TransportError):
    """The server's host key is not the one pinned in known_hosts; retrying will not help."""

    retryable = False


class LoginRefused(TransportError):
    retryable = False


class Transport(Protocol):
    def send(self, bundle: Path) -> str:
        """Deliver a bundle directory; returns where it landed. Idempotent."""
        ...

    def receive(self, inbox: Path) -> list[Path]:
        """Copy complete bundles into ``inbox``; returns the new local directories."""
        ...


def _bundle_files(bundle: Path) -> list[Path]:
    """Relative paths of a bundle's files, payload first so the small tag files land last."""
    files = []
    for path in sorted(bundle.rglob("*")):
        if path.is_symlink():
            raise TransportError(f"{path}: refusing to send a symbolic link")
        if path.is_file():
            files.append(path.relative_to(bundle))
    return sorted(files, key=lambda p: (p.parts[0] != "data", str(p)))


def _copy_file_synced(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _BLOCK)
        fout.flush()
        os.fsync(fout.fileno())


@dataclass(frozen=True)
class DirectoryDrop:
    """A folder both sides can reach: removable media, a diode's folder, a network gate share."""

    drop: Path
    #: delete a bundle from the drop once it is safely in the inbox (a one-way diode may not allow)
    remove_after_receive: bool = True

    def send(self, bundle: Path) -> str:
        bundle = Path(bundle)
        final = Path(self.drop) / bundle.name
        part = final.with_name(final.name + ".part")
        try:
            if final.exists():
                log.info("bundle %s is already in the drop %s", bundle.name, self.drop)
                return str(final)
            if part.exists():
                shutil.rmtree(part)  # a copy interrupted earlier: start it again
            for rel in _bundle_files(bundle):
                (part / rel).parent.mkdir(parents=True, exist_ok=True)
                _copy_file_synced(bundle / rel, part / rel)
            fsync_tree(part)
            os.rename(part, final)
            fsync_dir(Path(self.drop))
        except OSError as exc:
            raise TransportError(f"copying {bundle.name} into {self.drop} failed: {exc}") from exc
        log.info("dropped bundle %s into %s", bundle.name, self.drop)
        return str(final)

    def receive(self, inbox: Path) -> list[Path]:
        inbox = Path(inbox)
        inbox.mkdir(parents=True, exist_ok=True)
        received: list[Path] = []
        try:
            entries = sorted(Path(self.drop).iterdir())
        except OSError as exc:
            raise TransportError(f"cannot list drop folder {self.drop}: {exc}") from exc
        for entry in entries:
            if entry.name.endswith(".part") or parse_bundle_name(entry.name) is None:
                continue
            target = inbox / entry.name
            if target.exists():
                continue
            part = target.with_name(target.name + ".part")
            try:
                if part.exists():
                    shutil.rmtree(part)
                # symlinks=True copies a link as a link, so the importer sees and refuses it
                # instead of the copy following it somewhere else.
                shutil.copytree(entry, part, symlinks=True)
                os.rename(part, target)
            except OSError as exc:
                raise TransportError(f"copying {entry} into {inbox} failed: {exc}") from exc
            received.append(target)
            if self.remove_after_receive:
                try:
                    shutil.rmtree(entry) if not entry.is_symlink() else entry.unlink()
                except OSError as exc:
                    log.warning("received %s but could not remove it from the drop: %s", entry, exc)
        log.info("received %d bundles from %s", len(received), self.drop)
        return received


@dataclass(frozen=True)
class SftpTransport:
    """An SFTP server both sides reach, with its host key pinned in a known_hosts file.

    Uploads go to ``<remote_dir>/<name>.part/`` and are renamed when complete. An interrupted
    upload is resumed file by file: a remote file of the right size is kept, a shorter one is
    continued after checking that its last 64 KiB match, anything else is rewritten. A resumed
    file whose earlier part was corrupted on the server is caught by the importer's fixity check.
    """

    host: str
    username: str
    key_file: Path
    known_hosts: Path
    remote_dir: str
    port: int = 22
    timeout: float = 30.0
    remove_after_receive: bool = True
    window_size: int = 64 * 1024 * 1024
    #: bytes asked for per SFTP read; OpenSSH serves up to 255 KiB. A server that serves less
    #: needs 32768 here (the size every server must serve), or downloads fail their size check
    read_request_size: int = 255 * 1024

    @contextmanager
    def connect(self) -> Iterator[paramiko.SFTPClient]:
        client = paramiko.SSHClient()
        try:
            # Only the pinned keys: never ~/.ssh/known_hosts, never auto-accepted.
            client.load_host_keys(str(self.known_hosts))
        except OSError as exc:
            raise HostKeyRejected(f"cannot read known_hosts {self.known_hosts}: {exc}") from exc
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        where = f"{self.username}@{self.host}:{self.port}"
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.username,
                key_filename=str(self.key_file),
                look_for_keys=False,
                allow_agent=False,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                transport_factory=_fast_transport,
            )
            transport = client.get_transport()
            assert transport is not None
            sftp = paramiko.SFTPClient.from_transport(
                transport, window_size=self.window_size, max_packet_size=_MAX_PACKET
            )
            assert sftp is not None
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyRejected(
                f"{where}: host key does not match the one pinned in {self.known_hosts}; "
                "this may be an impostor. Check the server's key before changing known_hosts"
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise LoginRefused(f"{where}: login with {self.key_file} refused") from exc
        except paramiko.SSHException as exc:
            client.close()
            if "known_hosts" in str(exc):
                raise HostKeyRejected(
                    f"{where}: host key is not in {self.known_hosts}; add the server's key "
                    "there after checking its fingerprint out of band"
                ) from exc
            raise TransportError(f"{where}: SSH failed: {exc}") from exc
        except OSError as exc:
            client.close()
            raise TransportError(f"{where}: cannot connect: {exc}") from exc
        try:
            yield sftp
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"{where}: SFTP failed: {exc}") from exc
        finally:
            client.close()

    def send(self, bundle: Path) -> str:
        bundle = Path(bundle)
        final = f"{self.remote_dir}/{bundle.name}"
        part = f"{final}.part"
        with self.connect() as sftp:
            if _remote_exists(sftp, final):
                log.info("bundle %s is already on %s", bundle.name, self.host)
                return final
            files = _bundle_files(bundle)
            for folder in [part, *{f"{part}/{r.parent}" for r in files if r.parent != Path(".")}]:
                if not _remote_exists(sftp, folder):
                    sftp.mkdir(folder)
            sent = 0
            for rel in files:
                sent += _put_resumable(sftp, bundle / rel, f"{part}/{rel}")
            for rel in files:
                if sftp.stat(f"{part}/{rel}").st_size != (bundle / rel).stat().st_size:
                    raise TransportError(f"{part}/{rel}: size differs after upload")
            sftp.posix_rename(part, final)
        log.info("uploaded bundle %s to %s:%s (%d bytes sent)", bundle.name, self.host, final, sent)
        return final

    def receive(self, inbox: Path) -> list[Path]:
        inbox = Path(inbox)
        inbox.mkdir(parents=True, exist_ok=True)
        received: list[Path] = []
        with self.connect() as sftp:
            for attr in sorted(sftp.listdir_attr(self.remote_dir), key=lambda a: a.filename):
                name = attr.filename
                if name.endswith(".part") or parse_bundle_name(name) is None:
                    continue
                if not stat.S_ISDIR(attr.st_mode or 0):
                    log.warning("ignoring %s on %s: not a directory", name, self.host)
                    continue
                target = inbox / name
                if target.exists():
                    continue
                part = target.with_name(name + ".part")
                if part.exists():
                    shutil.rmtree(part)
                _get_tree(sftp, f"{self.remote_dir}/{name}", part, self.read_request_size)
                fsync_tree(part)
                os.rename(part, target)
                received.append(target)
                if self.remove_after_receive:
                    _remove_tree(sftp, f"{self.remote_dir}/{name}")
        log.info("received %d bundles from %s:%s", len(received), self.host, self.remote_dir)
        return received


def _remote_exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT or isinstance(exc, FileNotFoundError):
            return False
        raise
    return True


def _put_resumable(sftp: paramiko.SFTPClient, local: Path, remote: str) -> int:
    """Upload ``local`` to ``remote``, continuing a partial copy; returns the bytes sent."""
    size = local.stat().st_size
    try:
        have = sftp.stat(remote).st_size or 0
    except FileNotFoundError:
        have = None
    if have == size:
        return 0
    offset = 0
    if have and have < size and _tail_matches(sftp, local, remote, have):
        offset = have
        log.info("resuming upload of %s at byte %d of %d", remote, have, size)
    with open(local, "rb") as src, sftp.open(remote, "r+b" if offset else "wb") as dst:
        dst.set_pipelined(True)
        # One write request per SSH packet: paramiko splits a message that overflows the server's
        # packet size into a full packet and a tiny one, which doubles the per-packet cost.
        channel = sftp.get_channel()
        assert channel is not None
        dst.MAX_REQUEST_SIZE = max(
            4096, channel.out_max_packet_size - 64 - _WRITE_OVERHEAD - len(dst.handle)
        )
        src.seek(offset)
        dst.seek(offset)
        while block := src.read(_BLOCK):
            dst.write(block)
    return size - offset


def _tail_matches(sftp: paramiko.SFTPClient, local: Path, remote: str, have: int) -> bool:
    start = max(0, have - _RESUME_CHECK)
    with open(local, "rb") as src, sftp.open(remote, "rb") as dst:
        src.seek(start)
        dst.seek(start)
        return src.read(have - start) == dst.read(have - start)


def _get_tree(sftp: paramiko.SFTPClient, remote: str, local: Path, request_size: int) -> None:
    local.mkdir(parents=True)
    for attr in sftp.listdir_attr(remote):
        mode = attr.st_mode or 0
        source = f"{remote}/{attr.filename}"
        if stat.S_ISDIR(mode):
            _get_tree(sftp, source, local / attr.filename, request_size)
        elif stat.S_ISREG(mode):
            _get_file(sftp, source, local / attr.filename, attr.st_size or 0, request_size)
        else:
            # A link or device on the server: recorded as an empty marker the importer refuses.
            log.warning("%s is not a regular file; the bundle will be refused", source)
            (local / attr.filename).symlink_to("/nonexistent-remote-link")


def _get_file(
    sftp: paramiko.SFTPClient, remote: str, local: Path, size: int, request_size: int
) -> None:
    """Download with every read requested up front (prefetch), in large requests."""
    got = 0
    with sftp.open(remote, "rb") as src, open(local, "wb") as dst:
        src.MAX_REQUEST_SIZE = request_size
        src.prefetch(size, max_concurrent_requests=64)
        while got < size and (block := src.read(min(request_size, size - got))):
            dst.write(block)
            got += len(block)
        dst.flush()
        os.fsync(dst.fileno())
    if got != size:
        raise TransportError(
            f"{remote}: downloaded {got} of {size} bytes; if the server serves reads smaller "
            f"than {request_size} bytes, lower read_request_size to 32768"
        )


def _remove_tree(sftp: paramiko.SFTPClient, remote: str) -> None:
    for attr in sftp.listdir_attr(remote):
        path = f"{remote}/{attr.filename}"
        if stat.S_ISDIR(attr.st_mode or 0):
            _remove_tree(sftp, path)
        else:
            sftp.remove(path)
    sftp.rmdir(remote)
