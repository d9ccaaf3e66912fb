"""Bundles: BagIt directories of ciphertext with a signed envelope.

A bundle is a BagIt 1.0 bag (RFC 8493), so a gateway without keys can check it with the Library
of Congress ``bagit`` package::

    bagit.txt
    bag-info.txt              Payload-Oxum, External-Identifier (bundle id), ...
    manifest-sha256.txt       SHA-256 of every payload file
    envelope.json             what the bundle is (see ``Envelope``)
    tagmanifest-sha256.txt    SHA-256 of the four files above
    envelope.sig              Ed25519 signature over the tag manifest (not itself listed in it)
    data/0001.bin ...         ciphertext only, opaque names

BagIt alone gives fixity, not authenticity: anyone can recompute the manifests after changing a
file. The signature over the tag manifest closes that gap, since the tag manifest fixes the
payload manifest and the envelope, which fix every payload byte. The manifests stay SHA-256 in the
national suite too, because the keyless validator only knows ``hashlib`` algorithms; the envelope
then also carries SM3 hashes of every file and the chain uses SM3.

``verify_bundle`` checks, in this order and before anything is decrypted: names, sizes, the
signature against pinned keys, fixity, recipient, channel and destination domain, expiry.
Every refusal raises ``BundleRefused`` naming the problem.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bagit
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidSignature

from ferry.crypto import (
    DecryptingReader,
    EncryptingWriter,
    Suite,
    new_bundle_key,
    new_hash,
    unwrap_key,
    wrap_key,
)
from ferry.keys import Identity, PublicIdentity
from ferry.streams import decrypt_path, encrypt_path, hash_paths
from govbus.errors import BundleRefused, FerryError
from govbus.fsutil import fsync_dir

__all__ = [
    "FORMAT",
    "BundleKind",
    "Compression",
    "PayloadFile",
    "Payload",
    "FileEntry",
    "Heartbeat",
    "Envelope",
    "BuiltBundle",
    "VerifiedBundle",
    "PayloadTooLarge",
    "bundle_name",
    "parse_bundle_name",
    "build_bundle",
    "verify_bundle",
    "decrypt_bundle",
    "fsync_tree",
]

log = logging.getLogger(__name__)

FORMAT = "govbus-ferry/1"
_SIG_CONTEXT = b"govbus-ferry/1 envelope signature\x00"
_BAGIT_TXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
_TAG_FILES = ("bagit.txt", "bag-info.txt", "manifest-sha256.txt", "envelope.json")
_TOP_LEVEL = frozenset(_TAG_FILES) | {"tagmanifest-sha256.txt", "envelope.sig", "data"}
_TAG_FILE_MAX = 4 * 1024 * 1024
_MAX_FILES = 9999
_PAYLOAD_NAME = re.compile(r"^data/[0-9]{4}\.bin$")
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_BUNDLE_NAME = re.compile(
    rf"^(?P<channel>[a-z0-9][a-z0-9_-]{{0,62}})\.(?P<seq>[0-9]{{8,}}|hb)\.(?P<id>{_UUID})$"
)
_COPY_BLOCK = 1024 * 1024
#: payload files encrypted at the same time; each takes two threads (sealing, hashing + writing)
_ENCRYPT_WORKERS = 2


class PayloadTooLarge(BundleRefused):
    """Decrypting or decompressing the payload would exceed the configured limit."""


class BundleKind(enum.StrEnum):
    DATA = "data"
    HEARTBEAT = "heartbeat"


class Compression(enum.StrEnum):
    NONE = "none"
    ZSTD = "zstd"


@dataclass(frozen=True)
class PayloadFile:
    """One local file of a resource's rows (Parquet) and how many records it holds."""

    path: Path
    records: int


@dataclass(frozen=True)
class Payload:
    """What the sync pipeline hands the exporter."""

    resource: str
    schema_hash: str
    files: tuple[PayloadFile, ...]
    source_domain: str
    destination_domain: str
    channel: str


@dataclass(frozen=True)
class FileEntry:
    name: str  #: ``data/0001.bin``
    size: int  #: ciphertext bytes
    hash: str  #: ``<alg>:<hex>`` of the ciphertext, in the bundle's suite
    plain_size: int  #: bytes after decryption and decompression
    records: int


@dataclass(frozen=True)
class Heartbeat:
    """The highest sequence the sender has produced on the channel, and that bundle's hash."""

    highest_sequence: int
    highest_hash: str | None


@dataclass(frozen=True)
class Envelope:
    format: str
    kind: BundleKind
    suite: Suite
    bundle_id: str
    sender: str  #: signer's key id
    recipients: Mapping[str, Mapping[str, str]]  #: key id -> wrapped bundle key
    source_domain: str
    destination_domain: str
    channel: str
    sequence: int  #: 1, 2, ... per (sender, channel); 0 for heartbeats
    previous_hash: str | None  #: bundle hash of sequence - 1; None for sequence 1
    created_at: datetime
    expires_at: datetime
    resource: str | None
    schema_hash: str | None
    compression: Compression
    files: tuple[FileEntry, ...] = ()
    heartbeat: Heartbeat | None = None

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "kind": self.kind.value,
            "suite": self.suite.value,
            "bundle_id": self.bundle_id,
            "sender": self.sender,
            "recipients": {k: dict(v) for k, v in sorted(self.recipients.items())},
            "source_domain": self.source_domain,
            "destination_domain": self.destination_domain,
            "channel": self.channel,
            "sequence": self.sequence,
            "previous_hash": self.previous_hash,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "resource": self.resource,
            "schema_hash": self.schema_hash,
            "compression": self.compression.value,
            "files": [
                {
                    "name": f.name,
                    "size": f.size,
                    "hash": f.hash,
                    "plain_size": f.plain_size,
                    "records": f.records,
                }
                for f in self.files
            ],
            "heartbeat": None
            if self.heartbeat is None
            else {
                "highest_sequence": self.heartbeat.highest_sequence,
                "highest_hash": self.heartbeat.highest_hash,
            },
        }

    @classmethod
    def from_json(cls, doc: object) -> Envelope:
        """Parse strictly: a missing, extra or mistyped field refuses the bundle."""
        if not isinstance(doc, dict):
            raise BundleRefused("envelope.json: not a JSON object")
        expected = set(cls.__dataclass_fields__)
        if set(doc) != expected:
            missing, extra = sorted(expected - set(doc)), sorted(set(doc) - expected)
            raise BundleRefused(f"envelope.json: missing fields {missing}, unknown fields {extra}")
        if doc["format"] != FORMAT:
            raise BundleRefused(f"envelope.json: format {doc['format']!r}, expected {FORMAT!r}")
        try:
            files = tuple(
                FileEntry(
                    _typed(f["name"], str),
                    _typed(f["size"], int),
                    _typed(f["hash"], str),
                    _typed(f["plain_size"], int),
                    _typed(f["records"], int),
                )
                for f in _typed(doc["files"], list)
            )
            hb = doc["heartbeat"]
            recipients = _typed(doc["recipients"], dict)
            return cls(
                format=doc["format"],
                kind=BundleKind(doc["kind"]),
                suite=Suite(doc["suite"]),
                bundle_id=str(uuid.UUID(_typed(doc["bundle_id"], str))),
                sender=_typed(doc["sender"], str),
                recipients={str(k): _typed(v, dict) for k, v in recipients.items()},
                source_domain=_typed(doc["source_domain"], str),
                destination_domain=_typed(doc["destination_domain"], str),
                channel=_typed(doc["channel"], str),
                sequence=_typed(doc["sequence"], int),
                previous_hash=_typed(doc["previous_hash"], str, nullable=True),
                created_at=_parse_iso(doc["created_at"]),
                expires_at=_parse_iso(doc["expires_at"]),
                resource=_typed(doc["resource"], str, nullable=True),
                schema_hash=_typed(doc["schema_hash"], str, nullable=True),
                compression=Compression(doc["compression"]),
                files=files,
                heartbeat=None
                if hb is None
                else Heartbeat(
                    _typed(hb["highest_sequence"], int),
                    _typed(hb["highest_hash"], str, nullable=True),
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleRefused(f"envelope.json: malformed: {exc}") from None


def _typed(value: Any, kind: type, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r:.40}")
    if kind is int and value < 0:
        raise ValueError(f"negative number {value}")
    return value


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: object) -> datetime:
    if not isinstance(text, str):
        raise TypeError(f"expected a timestamp string, got {text!r:.40}")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return moment.astimezone(UTC)


def bundle_name(channel: str, sequence: int | None, bundle_id: str) -> str:
    """Directory name of a bundle: ``<channel>.<sequence:08d>.<bundle id>``, ``hb`` for heartbeats.

    The name only sorts and routes; the envelope is what the importer believes.
    """
    return f"{channel}.{'hb' if sequence is None else f'{sequence:08d}'}.{bundle_id}"


def parse_bundle_name(name: str) -> tuple[str, int | None, str] | None:
    match = _BUNDLE_NAME.match(name)
    if match is None:
        return None
    seq = match["seq"]
    return match["channel"], None if seq == "hb" else int(seq), match["id"]


# -- building --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    envelope: Envelope
    bundle_hash: str


def _hash_hex(suite: Suite, data: bytes) -> str:
    h = new_hash(suite)
    h.update(data)
    return f"{suite.hash_name}:{h.finalize().hex()}"


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (files are fsynced as they are written)."""
    for dirpath, _dirs, _files in os.walk(root):
        fsync_dir(Path(dirpath))


def _encrypt_one(
    src_path: Path,
    dst_path: Path,
    *,
    key: bytes,
    suite: Suite,
    compression: Compression,
    context: bytes,
) -> tuple[int, str, str, int]:
    """Encrypt one file; returns (ciphertext size, sha256 hex, suite hash, plaintext size).

    The ciphertext is hashed as it is written, once for the BagIt manifest (SHA-256) and, in the
    national suite, once more in SM3 for the envelope; it is never read back.
    """
    sha = hashlib.sha256()
    suite_hash = new_hash(suite) if suite is not Suite.STANDARD else None
    if compression is Compression.NONE:
        hashers = [sha] if suite_hash is None else [sha, suite_hash]
        plain, size = encrypt_path(
            src_path, dst_path, key=key, suite=suite, context=context, hashers=hashers
        )
        return size, sha.hexdigest(), _digest(sha, suite_hash), plain

    size = 0

    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:

        def sink(block: bytes | memoryview) -> None:
            nonlocal size
            dst.write(block)
            sha.update(block)
            if suite_hash is not None:
                suite_hash.update(bytes(block))
            size += len(block)

        # pyarrow's zstd stream compresses while we copy, so nothing is held whole.
        writer = EncryptingWriter(key, suite, sink, context)
        plain = 0
        stream = pa.CompressedOutputStream(pa.PythonFile(writer, mode="w"), "zstd")
        while block := src.read(_COPY_BLOCK):
            stream.write(block)
            plain += len(block)
        stream.close()
        writer.close()
        dst.flush()
        os.fsync(dst.fileno())

    return size, sha.hexdigest(), _digest(sha, suite_hash), plain


def _digest(sha: Any, suite_hash: Any) -> str:
    if suite_hash is None:
        return f"sha256:{sha.hexdigest()}"
    return f"sm3:{suite_hash.finalize().hex()}"


def build_bundle(
    target: Path,
    *,
    sender: Identity,
    recipients: Sequence[PublicIdentity],
    channel: str,
    sequence: int,
    previous_hash: str | None,
    source_domain: str,
    destination_domain: str,
    payload: Payload | None = None,
    heartbeat: Heartbeat | None = None,
    suite: Suite = Suite.STANDARD,
    compression: Compression = Compression.NONE,
    ttl: timedelta = timedelta(days=14),
    now: datetime | None = None,
    bundle_id: str | None = None,
) -> BuiltBundle:
    """Write a signed, encrypted bundle into the new directory ``target``.

    Exactly one of ``payload`` (a data bundle) and ``heartbeat`` is given. Sequence numbers and
    the chain are the caller's business (see ``ferry.outbox``); this only writes what it is told.
    """
    if (payload is None) == (heartbeat is None):
        raise FerryError("build_bundle needs exactly one of payload and heartbeat")
    if not _CHANNEL.match(channel):
        raise FerryError(
            f"channel {channel!r} is not valid: use 1-63 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    if payload is not None and payload.channel != channel:
        raise FerryError(f"payload is for channel {payload.channel!r}, not {channel!r}")
    if not recipients:
        raise FerryError("a bundle needs at least one recipient")
    files_in = payload.files if payload is not None else ()
    if len(files_in) > _MAX_FILES:
        raise FerryError(f"{len(files_in)} payload files; at most {_MAX_FILES} fit in a bundle")
    for item in files_in:
        if not item.path.is_file():
            raise FerryError(f"payload file {item.path} does not exist or is not a regular file")
        if item.records < 0:
            raise FerryError(f"payload file {item.path}: negative record count {item.records}")
    if heartbeat is None and sequence < 1:
        raise FerryError(f"data bundle sequence must be 1 or more, got {sequence}")

    created = (now or datetime.now(UTC)).astimezone(UTC)
    bundle_id = bundle_id or str(uuid.uuid4())
    key = new_bundle_key(suite)
    target = Path(target)
    (target / "data").mkdir(parents=True)

    # Encrypt each payload file under an opaque name.
    # Several files are encrypted at once: each one keeps about two cores busy only while its
    # ciphertext hash is the slower half, so a second file fills the gaps.
    names = [f"data/{index:04d}.bin" for index in range(1, len(files_in) + 1)]

    def encrypt(job: tuple[str, PayloadFile]) -> tuple[int, str, str, int]:
        name, item = job
        return _encrypt_one(
            item.path,
            target / name,
            key=key,
            suite=suite,
            compression=compression,
            context=f"{bundle_id}\x00{name}".encode(),
        )

    jobs = list(zip(names, files_in, strict=True))
    if len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=min(len(jobs), _ENCRYPT_WORKERS)) as pool:
            results = list(pool.map(encrypt, jobs))
    else:
        results = [encrypt(job) for job in jobs]
    entries: list[FileEntry] = []
    manifest_lines: list[str] = []
    for (name, item), (size, sha_hex, digest, plain) in zip(jobs, results, strict=True):
        entries.append(FileEntry(name, size, digest, plain, item.records))
        manifest_lines.append(f"{sha_hex}  {name}\n")

    envelope = Envelope(
        format=FORMAT,
        kind=BundleKind.HEARTBEAT if heartbeat is not None else BundleKind.DATA,
        suite=suite,
        bundle_id=bundle_id,
        sender=sender.key_id,
        recipients={
            r.key_id: wrap_key(key, r.encryption_key, suite, f"{bundle_id}\x00{r.key_id}".encode())
            for r in recipients
        },
        source_domain=source_domain,
        destination_domain=destination_domain,
        channel=channel,
        sequence=0 if heartbeat is not None else sequence,
        previous_hash=None if heartbeat is not None else previous_hash,
        created_at=created,
        expires_at=created + ttl,
        resource=payload.resource if payload is not None else None,
        schema_hash=payload.schema_hash if payload is not None else None,
        compression=compression,
        files=tuple(entries),
        heartbeat=heartbeat,
    )

    total = sum(e.size for e in entries)
    bag_info = {
        "Bag-Software-Agent": "govbus-ferry",
        "Bagging-Date": created.date().isoformat(),
        "External-Identifier": bundle_id,
        "Payload-Oxum": f"{total}.{len(entries)}",
        "Source-Organization": source_domain,
    }
    _write_bytes(target / "bagit.txt", _BAGIT_TXT)
    _write_bytes(
        target / "bag-info.txt", "".join(f"{k}: {v}\n" for k, v in bag_info.items()).encode()
    )
    _write_bytes(target / "manifest-sha256.txt", "".join(manifest_lines).encode())
    envelope_bytes = json.dumps(envelope.to_json(), indent=1, sort_keys=True).encode() + b"\n"
    _write_bytes(target / "envelope.json", envelope_bytes)
    tagmanifest = "".join(
        f"{hashlib.sha256((target / n).read_bytes()).hexdigest()}  {n}\n" for n in _TAG_FILES
    ).encode()
    _write_bytes(target / "tagmanifest-sha256.txt", tagmanifest)
    signature = sender.signing_key.sign(_SIG_CONTEXT + tagmanifest)
    _write_bytes(target / "envelope.sig", base64.b64encode(signature) + b"\n")
    fsync_tree(target)

    return BuiltBundle(target, envelope, _hash_hex(suite, tagmanifest))


# -- verifying -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedBundle:
    path: Path
    envelope: Envelope
    bundle_hash: str  #: suite hash of the tag manifest: what the next bundle's previous_hash names
    signer: PublicIdentity
    payload_bytes: int = field(default=0)


def _refuse(path: Path, message: str) -> BundleRefused:
    return BundleRefused(f"bundle {path.name} refused: {message}")


def _check_relative_name(path: Path, listing: str, name: str) -> None:
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _refuse(path, f"{listing} lists an absolute path {name!r}")
    if ".." in name.split("/") or "\\" in name:
        raise _refuse(path, f"{listing} lists a path with '..' or a backslash: {name!r}")
    if "%" in name or "\x00" in name:
        raise _refuse(path, f"{listing} lists an encoded or NUL-containing name {name!r}")


def _read_tag_file(path: Path, name: str) -> bytes:
    file = path / name
    size = file.stat().st_size
    if size > _TAG_FILE_MAX:
        raise _refuse(path, f"{name} is {size} bytes, over the {_TAG_FILE_MAX}-byte limit")
    return file.read_bytes()


def _parse_manifest(path: Path, name: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    try:
        text = _read_tag_file(path, name).decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(path, f"{name} is not UTF-8") from None
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split(None, 1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise _refuse(path, f"{name} line {number} is not '<sha256>  <path>'")
        digest, rel = parts[0], parts[1].strip()
        _check_relative_name(path, name, rel)
        if rel in entries:
            raise _refuse(path, f"{name} lists {rel!r} twice")
        entries[rel] = digest
    return entries


def _check_names(path: Path) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Step 1: only expected names, no links, manifests and disk agree. Returns the manifests and
    the payload sizes on disk."""
    if path.is_symlink():
        raise _refuse(path, "the bundle directory is a symbolic link")
    if not path.is_dir():
        raise _refuse(path, "not a directory")

    with os.scandir(path) as it:
        top = {entry.name: entry for entry in it}
    for name, entry in sorted(top.items()):
        if entry.is_symlink():
            raise _refuse(path, f"{name} is a symbolic link; bundles hold regular files only")
        if name == "fetch.txt":
            raise _refuse(
                path, "fetch.txt present: bundles must carry every file, remote fetching is refused"
            )
        if name not in _TOP_LEVEL:
            raise _refuse(path, f"unexpected file {name!r} (extra file at the top level)")
        if name == "data" and not entry.is_dir(follow_symlinks=False):
            raise _refuse(path, "data is not a directory")
        if name != "data" and not entry.is_file(follow_symlinks=False):
            raise _refuse(path, f"{name} is not a regular file")
    for name in sorted(_TOP_LEVEL - set(top)):
        raise _refuse(path, f"missing file {name}")

    on_disk: dict[str, int] = {}
    with os.scandir(path / "data") as it:
        for entry in it:
            rel = f"data/{entry.name}"
            if entry.is_symlink():
                raise _refuse(path, f"{rel} is a symbolic link; bundles hold regular files only")
            if not entry.is_file(follow_symlinks=False):
                raise _refuse(path, f"{rel} is not a regular file")
            if not _PAYLOAD_NAME.match(rel):
                raise _refuse(path, f"unexpected file {rel!r}: payload names are data/NNNN.bin")
            on_disk[rel] = entry.stat(follow_symlinks=False).st_size

    manifest = _parse_manifest(path, "manifest-sha256.txt")
    for rel in manifest:
        if not _PAYLOAD_NAME.match(rel):
            raise _refuse(path, f"manifest-sha256.txt lists {rel!r}, outside data/NNNN.bin")
    for rel in sorted(set(manifest) - set(on_disk)):
        raise _refuse(path, f"missing file {rel}: listed in manifest-sha256.txt, not present")
    for rel in sorted(set(on_disk) - set(manifest)):
        raise _refuse(path, f"extra file {rel}: present, not listed in manifest-sha256.txt")

    tagmanifest = _parse_manifest(path, "tagmanifest-sha256.txt")
    if set(tagmanifest) != set(_TAG_FILES):
        raise _refuse(
            path,
            f"tagmanifest-sha256.txt lists {sorted(tagmanifest)}, expected {sorted(_TAG_FILES)}",
        )
    return manifest, tagmanifest, on_disk


def _check_sizes(path: Path, on_disk: Mapping[str, int], max_bundle_bytes: int | None) -> None:
    """Step 2: cheap size checks, so a truncated or swollen file is named before hashing it."""
    total = sum(on_disk.values())
    if max_bundle_bytes is not None and total > max_bundle_bytes:
        raise _refuse(path, f"payload is {total} bytes, over the limit of {max_bundle_bytes}")
    info = _read_tag_file(path, "bag-info.txt").decode("utf-8", "replace")
    oxum = re.search(r"^Payload-Oxum:\s*([0-9]+)\.([0-9]+)\s*$", info, re.MULTILINE)
    if oxum is None:
        raise _refuse(path, "bag-info.txt has no Payload-Oxum")
    # The envelope is not authenticated yet; it is read here only to name the file that differs.
    try:
        declared = {
            f["name"]: f["size"] for f in json.loads(_read_tag_file(path, "envelope.json"))["files"]
        }
    except (ValueError, KeyError, TypeError):
        declared = {}
    for rel, size in sorted(on_disk.items()):
        want = declared.get(rel)
        if isinstance(want, int) and want != size:
            kind = "truncated" if size < want else "longer than declared"
            raise _refuse(path, f"{rel} is {size} bytes, the envelope declares {want}: {kind}")
    if (int(oxum[1]), int(oxum[2])) != (total, len(on_disk)):
        raise _refuse(
            path,
            f"Payload-Oxum says {oxum[1]} bytes in {oxum[2]} files, "
            f"found {total} bytes in {len(on_disk)} files",
        )


def _check_signature(
    path: Path, trust: Mapping[str, PublicIdentity]
) -> tuple[Envelope, bytes, PublicIdentity]:
    """Step 3: the envelope's signer is pinned and its signature covers the tag manifest."""
    raw = _read_tag_file(path, "envelope.json")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise _refuse(path, "envelope.json is not valid JSON") from None
    try:
        envelope = Envelope.from_json(doc)
    except BundleRefused as exc:
        raise _refuse(path, str(exc)) from None

    signer = trust.get(envelope.sender)
    if signer is None:
        raise _refuse(
            path,
            f"signed by unknown key {envelope.sender}: it is not pinned in this importer's trust "
            "store; pin the sender's public.json if the sender is legitimate",
        )
    tagmanifest = _read_tag_file(path, "tagmanifest-sha256.txt")
    try:
        signature = base64.b64decode(_read_tag_file(path, "envelope.sig").strip(), validate=True)
        signer.signing_key.verify(signature, _SIG_CONTEXT + tagmanifest)
    except (ValueError, InvalidSignature):
        raise _refuse(
            path,
            f"signature by {envelope.sender} does not verify over tagmanifest-sha256.txt: "
            "the tag manifest or the signature was altered",
        ) from None
    return envelope, tagmanifest, signer


def _check_fixity(
    path: Path,
    envelope: Envelope,
    manifest: Mapping[str, str],
    tagmanifest: Mapping[str, str],
    on_disk: Mapping[str, int],
) -> None:
    """Step 4: every byte matches what the signed tag manifest fixes."""
    for name in _TAG_FILES:
        actual = hashlib.sha256(_read_tag_file(path, name)).hexdigest()
        if actual != tagmanifest[name]:
            raise _refuse(
                path, f"{name} was edited: its SHA-256 differs from tagmanifest-sha256.txt"
            )

    # The bagit package checks the bag's structure, completeness and Payload-Oxum; the hashes
    # are computed here, in one read of each file for both the manifest and the envelope, where
    # bagit would read every file again for its own SHA-256.
    try:
        bagit.Bag(str(path)).validate(completeness_only=True)
    except bagit.BagValidationError as exc:
        details = "; ".join(str(d) for d in exc.details) or str(exc)
        raise _refuse(path, f"BagIt completeness failed: {details}") from None
    except bagit.BagError as exc:
        raise _refuse(path, f"not a valid bag: {exc}") from None

    named = {f.name: f for f in envelope.files}
    if set(named) != set(manifest):
        raise _refuse(
            path, f"envelope lists files {sorted(named)}, the manifest lists {sorted(manifest)}"
        )
    for rel, entry in sorted(named.items()):
        if entry.size != on_disk[rel]:
            raise _refuse(
                path, f"{rel} is {on_disk[rel]} bytes, the envelope declares {entry.size}"
            )

    rels = sorted(manifest)
    shas = {rel: hashlib.sha256() for rel in rels}
    suite_hashes = {
        rel: new_hash(envelope.suite) for rel in rels if envelope.suite is not Suite.STANDARD
    }
    hash_paths(
        [(path / rel, [shas[rel], *([suite_hashes[rel]] if suite_hashes else [])]) for rel in rels]
    )
    for rel in rels:
        found = shas[rel].hexdigest()
        if found != manifest[rel]:
            raise _refuse(
                path,
                f"BagIt fixity failed: {rel} sha256 validation failed: "
                f'expected="{manifest[rel]}" found="{found}"',
            )
        if rel in suite_hashes:
            ok = named[rel].hash == f"sm3:{suite_hashes[rel].finalize().hex()}"
        else:
            ok = named[rel].hash == f"sha256:{found}"
        if not ok:
            raise _refuse(path, f"{rel}: hash differs from the one in the signed envelope")

    parsed = parse_bundle_name(path.name)
    if parsed is not None:
        seq = None if envelope.kind is BundleKind.HEARTBEAT else envelope.sequence
        if parsed != (envelope.channel, seq, envelope.bundle_id):
            raise _refuse(
                path,
                "the directory name does not match the envelope's channel, sequence and bundle id",
            )


def verify_bundle(
    path: Path,
    *,
    identity: Identity,
    trust: Mapping[str, PublicIdentity],
    channels: Collection[str] | None = None,
    domain: str | None = None,
    now: datetime | None = None,
    max_bundle_bytes: int | None = None,
) -> VerifiedBundle:
    """Check everything that can be checked without decrypting; see the module docstring.

    ``channels`` is the set this importer accepts (None: any); ``domain`` its own destination
    domain (None: not checked).
    """
    path = Path(path)

    manifest, tagmanifest, on_disk = _check_names(path)
    _check_sizes(path, on_disk, max_bundle_bytes)
    envelope, tag_bytes, signer = _check_signature(path, trust)
    _check_fixity(path, envelope, manifest, tagmanifest, on_disk)

    if identity.key_id not in envelope.recipients:
        raise _refuse(
            path,
            f"not addressed to this importer: recipients are {sorted(envelope.recipients)}, "
            f"this importer is {identity.key_id}",
        )
    if channels is not None and envelope.channel not in channels:
        raise _refuse(
            path,
            f"bundle is for channel {envelope.channel!r}; this importer accepts {sorted(channels)}",
        )
    if domain is not None and envelope.destination_domain != domain:
        raise _refuse(
            path,
            f"bundle is for destination domain {envelope.destination_domain!r}, "
            f"this importer is {domain!r}",
        )
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    if moment >= envelope.expires_at:
        raise _refuse(
            path,
            f"expired at {_iso(envelope.expires_at)} (now {_iso(moment)}); "
            "ask the sender for a fresh export, a resend carries the same expiry",
        )

    return VerifiedBundle(
        path, envelope, _hash_hex(envelope.suite, tag_bytes), signer, sum(on_disk.values())
    )


# -- decrypting ------------------------------------------------------------------------------------


def decrypt_bundle(
    bundle: VerifiedBundle, identity: Identity, staging: Path, *, max_plain_bytes: int
) -> list[Path]:
    """Decrypt a verified bundle's files into ``staging`` (emptied first) as ``NNNN.parquet``.

    Stops with ``PayloadTooLarge`` as soon as more than ``max_plain_bytes`` would be written, so a
    compression bomb costs at most the limit in disk and one block in memory.
    """
    env = bundle.envelope
    declared = sum(f.plain_size for f in env.files)
    if declared > max_plain_bytes:
        raise PayloadTooLarge(
            f"bundle {bundle.path.name} refused: payload declares {declared} bytes after "
            f"decompression, over the limit of {max_plain_bytes} bytes (max_plain_bytes)"
        )

    staging = Path(staging)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        return _decrypt_files(bundle, identity, staging, max_plain_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _decrypt_files(
    bundle: VerifiedBundle, identity: Identity, staging: Path, limit: int
) -> list[Path]:
    env = bundle.envelope
    context = f"{env.bundle_id}\x00{identity.key_id}".encode()
    key = unwrap_key(env.recipients[identity.key_id], identity.encryption_key, env.suite, context)

    written = 0
    outputs: list[Path] = []
    for index, entry in enumerate(env.files, start=1):
        out_path = staging / f"{index:04d}.parquet"
        label = f"bundle {bundle.path.name} refused: {entry.name}"
        file_bytes = 0
        file_context = f"{env.bundle_id}\x00{entry.name}".encode()

        def admit(size: int, entry: FileEntry = entry, label: str = label) -> None:
            # Called before each block is written, so a bomb costs at most one block past a limit.
            nonlocal written, file_bytes
            written += size
            file_bytes += size
            if written > limit:
                raise PayloadTooLarge(
                    f"{label}: decompresses past the limit of {limit} bytes "
                    "(max_plain_bytes); stopped before writing more"
                )
            if file_bytes > entry.plain_size:
                raise PayloadTooLarge(
                    f"{label}: decompresses to more than the {entry.plain_size} bytes "
                    "the envelope declares"
                )

        if env.compression is Compression.NONE:
            decrypt_path(
                bundle.path / entry.name,
                out_path,
                key=key,
                suite=env.suite,
                context=file_context,
                label=label,
                admit=admit,
            )
        else:
            with open(bundle.path / entry.name, "rb") as src, open(out_path, "wb") as dst:
                reader = DecryptingReader(key, env.suite, src, file_context, label)
                stream = pa.CompressedInputStream(pa.PythonFile(reader, mode="r"), "zstd")
                for block in _zstd_blocks(stream, label):
                    admit(len(block))
                    dst.write(block)
        if file_bytes != entry.plain_size:
            raise BundleRefused(
                f"{label}: decrypted to {file_bytes} bytes, the envelope declares "
                f"{entry.plain_size}"
            )
        if env.kind is BundleKind.DATA:
            _check_records(out_path, entry, label)
        outputs.append(out_path)
    log.debug("decrypted %d files, %d bytes, into %s", len(outputs), written, staging)
    return outputs


def _zstd_blocks(stream: pa.NativeFile, label: str) -> Iterator[bytes]:
    while True:
        try:
            block = stream.read(_COPY_BLOCK)
        except BundleRefused:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise BundleRefused(f"{label}: not a valid zstd stream: {exc}") from None
        if not block:
            return
        yield block


def _check_records(path: Path, entry: FileEntry, label: str) -> None:
    try:
        rows = pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError) as exc:
        raise BundleRefused(f"{label}: decrypted file is not Parquet: {exc}") from None
    if rows != entry.records:
        raise BundleRefused(f"{label}: holds {rows} records, the envelope declares {entry.records}")
