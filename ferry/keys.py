"""Ferry identities: an Ed25519 signing key and an encryption key per site, and pinned peers.

An identity directory holds::

    signing.pem      Ed25519 private key, PKCS#8, mode 0600
    encryption.pem   X25519 (default) or RSA-3072 private key, PKCS#8, mode 0600
    public.json      name, key id and both public keys: the file to hand to peers

The key id is the first 128 bits of SHA-256 over both public keys, in hex, so a peer's
``public.json`` cannot be edited to pair someone else's signing key with its own encryption key
without the id changing. Key ids do not change with the cipher suite of a bundle.

A trust store is either a directory of peers' ``public.json`` files (any ``*.json`` name) or one
JSON file mapping key id to such a document. An importer accepts bundles signed by these keys
only, and an exporter wraps bundle keys only to keys found here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from govbus.errors import ConfigError, FerryError

__all__ = [
    "KeyFileError",
    "PublicIdentity",
    "Identity",
    "TrustStore",
    "key_id_for",
    "keygen",
    "load_identity",
    "load_public",
]

log = logging.getLogger(__name__)

_KEY_ID_CONTEXT = b"govbus-ferry key id\x00"
_PUBLIC_FORMAT = "govbus-ferry-public/1"

EncryptionKind = Literal["x25519", "rsa"]


class KeyFileError(FerryError, ConfigError):
    """A key file or trust store is missing, malformed or inconsistent."""

    exit_code = 2


def _spki(key: x25519.X25519PublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id_for(
    signing: ed25519.Ed25519PublicKey, encryption: x25519.X25519PublicKey | rsa.RSAPublicKey
) -> str:
    digest = hashlib.sha256(_KEY_ID_CONTEXT + _spki(signing) + _spki(encryption)).hexdigest()
    return digest[:32]


@dataclass(frozen=True)
class PublicIdentity:
    name: str
    key_id: str
    signing_key: ed25519.Ed25519PublicKey
    encryption_key: x25519.X25519PublicKey | rsa.RSAPublicKey

    @property
    def encryption_kind(self) -> EncryptionKind:
        return "rsa" if isinstance(self.encryption_key, rsa.RSAPublicKey) else "x25519"

    def to_json(self) -> dict[str, str]:
        def pem(key: ed25519.Ed25519PublicKey | x25519.X25519PublicKey | rsa.RSAPublicKey) -> str:
            return key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii")

        return {
            "format": _PUBLIC_FORMAT,
            "name": self.name,
            "key_id": self.key_id,
            "signing_key": pem(self.signing_key),
            "encryption_kind": self.encryption_kind,
            "encryption_key": pem(self.encryption_key),
        }

    @classmethod
    def from_json(cls, doc: object, source: str) -> PublicIdentity:
        if not isinstance(doc, dict) or doc.get("format") != _PUBLIC_FORMAT:
            raise KeyFileError(f"{source}: not a {_PUBLIC_FORMAT} public key document")
        try:
            signing = serialization.load_pem_public_key(doc["signing_key"].encode("ascii"))
            encryption = serialization.load_pem_public_key(doc["encryption_key"].encode("ascii"))
        except (KeyError, AttributeError, ValueError) as exc:
            raise KeyFileError(f"{source}: unreadable public key: {exc}") from exc
        if not isinstance(signing, ed25519.Ed25519PublicKey):
            raise KeyFileError(f"{source}: signing_key must be an Ed25519 public key")
        if not isinstance(encryption, x25519.X25519PublicKey | rsa.RSAPublicKey):
            raise KeyFileError(f"{source}: encryption_key must be an X25519 or RSA public key")
        key_id = key_id_for(signing, encryption)
        if doc.get("key_id") != key_id:
            raise KeyFileError(
                f"{source}: key_id {doc.get('key_id')!r} does not match its public keys "
                f"(they hash to {key_id}); the document was edited or corrupted"
            )
        return cls(str(doc.get("name", "")), key_id, signing, encryption)


@dataclass(frozen=True)
class Identity:
    """This site's private keys."""

    public: PublicIdentity
    signing_key: ed25519.Ed25519PrivateKey
    encryption_key: x25519.X25519PrivateKey | rsa.RSAPrivateKey

    @property
    def key_id(self) -> str:
        return self.public.key_id


def _write_private(
    path: Path, key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey | rsa.RSAPrivateKey
) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: never overwrite a key; mode 0600 from creation, not chmod after the fact.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def keygen(directory: Path, name: str, *, encryption: EncryptionKind = "x25519") -> PublicIdentity:
    """Create a new identity in ``directory``; refuses to overwrite an existing one."""
    directory = Path(directory)
    if (directory / "signing.pem").exists() or (directory / "encryption.pem").exists():
        raise KeyFileError(f"{directory}: already holds ferry keys; choose an empty directory")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    signing = ed25519.Ed25519PrivateKey.generate()
    enc: x25519.X25519PrivateKey | rsa.RSAPrivateKey
    if encryption == "rsa":
        enc = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif encryption == "x25519":
        enc = x25519.X25519PrivateKey.generate()
    else:
        raise KeyFileError(f"encryption key kind {encryption!r} is unknown; use 'x25519' or 'rsa'")
    public = PublicIdentity(
        name,
        key_id_for(signing.public_key(), enc.public_key()),
        signing.public_key(),
        enc.public_key(),
    )

    _write_private(directory / "signing.pem", signing)
    _write_private(directory / "encryption.pem", enc)
    (directory / "public.json").write_text(json.dumps(public.to_json(), indent=2) + "\n")
    log.info("created ferry identity %s (%s) in %s", public.key_id, name, directory)
    return public


def _load_private(path: Path) -> object:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read private key: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("private key %s is readable by group or others; chmod 600 it", path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PKCS#8 PEM private key") from exc


def load_identity(directory: Path) -> Identity:
    directory = Path(directory)
    signing = _load_private(directory / "signing.pem")
    enc = _load_private(directory / "encryption.pem")
    if not isinstance(signing, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{directory / 'signing.pem'}: expected an Ed25519 private key")
    if not isinstance(enc, x25519.X25519PrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(f"{directory / 'encryption.pem'}: expected an X25519 or RSA private key")
    key_id = key_id_for(signing.public_key(), enc.public_key())
    name = ""
    public_file = directory / "public.json"
    if public_file.exists():
        name = load_public(public_file).name
    public = PublicIdentity(name, key_id, signing.public_key(), enc.public_key())
    return Identity(public, signing, enc)


def load_public(path: Path) -> PublicIdentity:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read public key document: {exc}") from exc
    return PublicIdentity.from_json(doc, str(path))


class TrustStore(Mapping[str, PublicIdentity]):
    """Pinned peer keys by key id."""

    def __init__(self, peers: Mapping[str, PublicIdentity] | None = None) -> None:
        self._peers: dict[str, PublicIdentity] = {}
        for key_id, peer in (peers or {}).items():
            if key_id != peer.key_id:
                raise KeyFileError(f"trust store entry {key_id!r} holds key {peer.key_id}")
            self._peers[key_id] = peer

    @classmethod
    def of(cls, *peers: PublicIdentity) -> TrustStore:
        return cls({p.key_id: p for p in peers})

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        path = Path(path)
        peers: dict[str, PublicIdentity] = {}
        if path.is_dir():
            for file in sorted(path.glob("*.json")):
                peer = load_public(file)
                peers[peer.key_id] = peer
            return cls(peers)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{path}: cannot read trust store: {exc}") from exc
        if not isinstance(doc, dict):
            raise KeyFileError(f"{path}: a trust store file maps key id to public key document")
        for key_id, entry in doc.items():
            peer = PublicIdentity.from_json(entry, f"{path}[{key_id}]")
            if peer.key_id != key_id:
                raise KeyFileError(f"{path}: entry {key_id!r} holds the keys of {peer.key_id}")
            peers[key_id] = peer
        return cls(peers)

    def pin(self, peer: PublicIdentity, path: Path) -> None:
        """Add ``peer`` and write it to the store at ``path`` (directory or JSON file)."""
        self._peers[peer.key_id] = peer
        path = Path(path)
        if path.is_dir():
            (path / f"{peer.key_id}.json").write_text(json.dumps(peer.to_json(), indent=2) + "\n")
            return
        doc = {k: p.to_json() for k, p in sorted(self._peers.items())}
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)

    def __getitem__(self, key_id: str) -> PublicIdentity:
        return self._peers[key_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._peers)

    def __len__(self) -> int:
        return len(self._peers)
