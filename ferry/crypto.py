"""Streaming authenticated encryption of bundle files and wrapping of the bundle key.

Every bundle gets a fresh random key. Each payload file is encrypted with its own key derived from
the bundle key (HKDF, salted by a random per-file salt and bound to the file's name and the bundle
id), in 64 KiB chunks following the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár,
"Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015): the nonce of
chunk *i* is ``prefix(7) || i(4, big endian) || last(1)``. Dropping chunks from the end,
reordering chunks or changing a byte all fail authentication, and neither side ever holds more
than one chunk of a multi-GB file in memory.

File layout::

    header (30 bytes) = b"GBFC" | version 1 | suite id | log2(chunk size) | salt(16) | prefix(7)
    chunk* = ciphertext(chunk size, the last one shorter or empty) | tag(16)

The header is the associated data of every chunk, so changing the salt, prefix or suite fails
too.

Two suites:

* ``standard``: AES-256-GCM, SHA-256, HKDF-SHA256.
* ``national`` (国密): SM4-GCM (128-bit key, as SM4 is defined), SM3, HKDF-SM3. ``cryptography``
  offers SM4 in GCM mode, so no encrypt-then-MAC construction is needed. ``cryptography`` has no
  SM2, so bundles are still signed with Ed25519 and bundle keys are still wrapped with X25519 (or
  RSA-OAEP) in this mode; a deployment that must sign with SM2 needs a library that provides it.

The bundle key is wrapped to every recipient: X25519 with a fresh ephemeral key, HKDF over the
shared secret and the suite's AEAD (the ECIES pattern), or RSA-OAEP-SHA256 for sites that hold
RSA keys in an existing PKI.
"""

from __future__ import annotations

import base64
import enum
import io
import os
import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from govbus.errors import BundleRefused, FerryError

__all__ = [
    "CHUNK_SIZE",
    "HEADER_LEN",
    "TAG_LEN",
    "Suite",
    "DecryptionFailed",
    "KeyUnwrapFailed",
    "StreamEncryptor",
    "StreamDecryptor",
    "sealed_size",
    "EncryptingWriter",
    "DecryptingReader",
    "new_bundle_key",
    "encrypt_file",
    "ciphertext_size",
    "wrap_key",
    "unwrap_key",
    "new_hash",
]

CHUNK_SIZE = 64 * 1024
TAG_LEN = 16
_MAGIC = b"GBFC"
_VERSION = 1
_PREFIX_LEN = 7
_SALT_LEN = 16
_HEADER = struct.Struct(">4sBBB16s7s")
HEADER_LEN = _HEADER.size
_FILE_INFO = b"govbus-ferry/1 file\x00"
_WRAP_INFO = b"govbus-ferry/1 wrap\x00"


class DecryptionFailed(BundleRefused):
    """A payload file did not authenticate; it was truncated, reordered or modified."""


class KeyUnwrapFailed(BundleRefused):
    """The bundle key could not be unwrapped with this importer's private key."""


class Suite(enum.StrEnum):
    STANDARD = "standard"
    NATIONAL = "national"

    @property
    def code(self) -> int:
        return 1 if self is Suite.STANDARD else 2

    @property
    def key_len(self) -> int:
        return 32 if self is Suite.STANDARD else 16

    @property
    def hash_name(self) -> str:
        return "sha256" if self is Suite.STANDARD else "sm3"

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA256() if self is Suite.STANDARD else hashes.SM3()

    def aead(self, key: bytes) -> _Aead:
        if self is Suite.STANDARD:
            return _AesGcm(key)
        return _Sm4Gcm(key)

    @classmethod
    def from_code(cls, code: int) -> Suite:
        for suite in cls:
            if suite.code == code:
                return suite
        raise DecryptionFailed(f"unknown cipher suite id {code} in file header; expected 1 or 2")


class _Aead:
    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """Raises ``cryptography.exceptions.InvalidTag`` when the data does not authenticate."""
        raise NotImplementedError

    def encrypt_into(self, nonce: bytes, data: memoryview, aad: bytes, out: memoryview) -> None:
        """Ciphertext and tag into ``out``, which is exactly ``len(data) + TAG_LEN`` long."""
        out[:] = self.encrypt(nonce, data, aad)

    def decrypt_into(self, nonce: bytes, data: memoryview, aad: bytes, out: memoryview) -> None:
        """Plaintext into ``out``, exactly ``len(data) - TAG_LEN`` long; nothing if it fails."""
        out[:] = self.decrypt(nonce, data, aad)


class _AesGcm(_Aead):
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(nonce, data, aad)

    # No allocation per chunk: the block loops below reuse their buffers.
    def encrypt_into(self, nonce: bytes, data: memoryview, aad: bytes, out: memoryview) -> None:
        self._aead.encrypt_into(nonce, data, aad, out)

    def decrypt_into(self, nonce: bytes, data: memoryview, aad: bytes, out: memoryview) -> None:
        self._aead.decrypt_into(nonce, data, aad, out)


class _Sm4Gcm(_Aead):
    # cryptography has no one-shot AEAD class for SM4, so this goes through the Cipher API.
    def __init__(self, key: bytes) -> None:
        self._key = key

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        enc = Cipher(algorithms.SM4(self._key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        out = enc.update(data) + enc.finalize()
        return out + enc.tag

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if len(data) < TAG_LEN:
            raise InvalidTag
        body, tag = data[:-TAG_LEN], bytes(data[-TAG_LEN:])
        dec = Cipher(algorithms.SM4(self._key), modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(body) + dec.finalize()


def new_bundle_key(suite: Suite) -> bytes:
    return os.urandom(suite.key_len)


def new_hash(suite: Suite) -> hashes.Hash:
    return hashes.Hash(suite.hash_algorithm())


def _file_key(bundle_key: bytes, suite: Suite, salt: bytes, context: bytes) -> bytes:
    hkdf = HKDF(suite.hash_algorithm(), suite.key_len, salt=salt, info=_FILE_INFO + context)
    return hkdf.derive(bundle_key)


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 1 << 32:
        raise FerryError("file too large for one stream: more than 2**32 chunks")
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def ciphertext_size(plain_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Size of the encrypted file for a stream of ``plain_size`` bytes."""
    chunks = max(1, -(-plain_size // chunk_size))
    return HEADER_LEN + plain_size + chunks * TAG_LEN


class StreamEncryptor:
    """The sealing side of one stream: its header, its key, its chunk counter.

    ``seal`` takes one chunk at a time; ``seal_into`` seals a block of whole chunks straight into a
    caller's buffer, the fast path for files (no allocation per chunk).
    """

    def __init__(self, bundle_key: bytes, suite: Suite, context: bytes) -> None:
        salt = os.urandom(_SALT_LEN)
        self._prefix = os.urandom(_PREFIX_LEN)
        self.header = _HEADER.pack(
            _MAGIC, _VERSION, suite.code, CHUNK_SIZE.bit_length() - 1, salt, self._prefix
        )
        self._aead = suite.aead(_file_key(bundle_key, suite, salt, context))
        self._counter = 0
        self._finished = False

    def _next_nonce(self, last: bool) -> bytes:
        if self._finished:
            raise FerryError("stream already sealed its final chunk")
        nonce = _nonce(self._prefix, self._counter, last)
        self._counter += 1
        self._finished = last
        return nonce

    def seal(self, chunk: bytes | memoryview, last: bool) -> bytes:
        return self._aead.encrypt(self._next_nonce(last), chunk, self.header)

    def seal_into(self, plain: memoryview, out: memoryview, final: bool) -> int:
        """Seal ``plain`` into ``out``; returns the bytes written.

        ``plain`` is whole chunks unless ``final``, in which case its last chunk (shorter, or the
        only and empty one) carries the final flag. ``out`` needs ``sealed_size(len(plain))``.
        """
        size = len(plain)
        if not final and size % CHUNK_SIZE:
            raise ValueError("only the final block of a stream may end in a partial chunk")
        count = max(1, -(-size // CHUNK_SIZE)) if final else size // CHUNK_SIZE
        pos = 0
        for index in range(count):
            piece = plain[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
            nonce = self._next_nonce(final and index == count - 1)
            end = pos + len(piece) + TAG_LEN
            self._aead.encrypt_into(nonce, piece, self.header, out[pos:end])
            pos = end
        return pos


def sealed_size(plain_size: int) -> int:
    """Bytes ``StreamEncryptor.seal_into`` writes for a final block of ``plain_size`` bytes."""
    return plain_size + max(1, -(-plain_size // CHUNK_SIZE)) * TAG_LEN


class StreamDecryptor:
    """The opening side of one stream, from its header; names the chunk that fails and why."""

    def __init__(
        self, bundle_key: bytes, suite: Suite, header: bytes, context: bytes, label: str = "file"
    ) -> None:
        self._label = label
        if len(header) != HEADER_LEN:
            raise DecryptionFailed(f"{label}: shorter than the {HEADER_LEN}-byte stream header")
        magic, version, suite_code, log2_chunk, salt, prefix = _HEADER.unpack(header)
        if magic != _MAGIC or version != _VERSION:
            raise DecryptionFailed(f"{label}: not a govbus-ferry/1 encrypted stream")
        if Suite.from_code(suite_code) is not suite:
            raise DecryptionFailed(
                f"{label}: encrypted with suite id {suite_code}, the envelope says {suite.value}"
            )
        if 1 << log2_chunk != CHUNK_SIZE:
            raise DecryptionFailed(f"{label}: chunk size 2**{log2_chunk}, expected {CHUNK_SIZE}")
        self._header = header
        self._prefix = prefix
        self._aead = suite.aead(_file_key(bundle_key, suite, salt, context))
        self._counter = 0

    def open(self, chunk: bytes, last: bool) -> bytes:
        index = self._counter
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, index, last), chunk, self._header)
        except InvalidTag:
            raise DecryptionFailed(self._diagnose(chunk, index, last)) from None
        self._counter += 1
        return plain

    def open_into(self, sealed: memoryview, out: memoryview, final: bool) -> int:
        """Open a block of sealed chunks into ``out``; returns the plaintext bytes written.

        ``sealed`` is whole sealed chunks unless ``final`` (the stream ends with this block), in
        which case the last may be shorter. Nothing of a chunk is written unless it authenticates.
        """
        step = CHUNK_SIZE + TAG_LEN
        size = len(sealed)
        if not final and size % step:
            raise ValueError("only the final block of a stream may end in a partial chunk")
        count = max(1, -(-size // step)) if final else size // step
        pos = 0
        for n in range(count):
            piece = sealed[n * step : (n + 1) * step]
            index, last = self._counter, final and n == count - 1
            plain_len = len(piece) - TAG_LEN
            try:
                if plain_len < 0:
                    raise InvalidTag
                nonce = _nonce(self._prefix, index, last)
                self._aead.decrypt_into(nonce, piece, self._header, out[pos : pos + plain_len])
            except InvalidTag:
                raise DecryptionFailed(self._diagnose(bytes(piece), index, last)) from None
            self._counter += 1
            pos += plain_len
        return pos

    def _diagnose(self, chunk: bytes, index: int, last: bool) -> str:
        # Only called on failure: telling a cut-short file from a modified one helps the operator
        # decide between "copy it again" and "someone changed it".
        if last and len(chunk) >= TAG_LEN:
            try:
                self._aead.decrypt(_nonce(self._prefix, index, False), chunk, self._header)
            except InvalidTag:
                pass
            else:
                return (
                    f"{self._label}: truncated: the stream ends after chunk {index}, "
                    "which is not the final chunk"
                )
        return (
            f"{self._label}: chunk {index} failed authentication: "
            "the ciphertext was modified, reordered or truncated"
        )


class EncryptingWriter(io.RawIOBase):
    """A writable stream that encrypts what it is given and hands ciphertext to ``sink``.

    A chunk is only sealed once the next byte is known to exist, so that the true last chunk (maybe
    empty) carries the final flag; ``close()`` seals it.
    """

    def __init__(
        self, bundle_key: bytes, suite: Suite, sink: Callable[[bytes], object], context: bytes
    ) -> None:
        super().__init__()
        self._stream = StreamEncryptor(bundle_key, suite, context)
        self._sink = sink
        self._buf = bytearray()
        self.plain_bytes = 0
        sink(self._stream.header)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed EncryptingWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        self.plain_bytes += size
        offset = 0
        if self._buf:
            # Top up the held partial chunk; seal it only once a byte beyond it exists.
            take = min(CHUNK_SIZE - len(self._buf), size)
            self._buf += view[:take]
            offset = take
            if offset == size:
                return size
            self._sink(self._stream.seal(bytes(self._buf), last=False))
            self._buf = bytearray()
        while size - offset > CHUNK_SIZE:
            self._sink(self._stream.seal(view[offset : offset + CHUNK_SIZE], last=False))
            offset += CHUNK_SIZE
        self._buf += view[offset:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._sink(self._stream.seal(bytes(self._buf), last=True))
            self._buf = bytearray()
        super().close()


class DecryptingReader(io.RawIOBase):
    """A readable stream of the plaintext of one encrypted file, authenticated chunk by chunk.

    ``read`` never returns plaintext that has not been authenticated; ``DecryptionFailed`` names
    the chunk that failed and, where it can tell, whether the file was cut short.
    """

    def __init__(
        self, bundle_key: bytes, suite: Suite, src: BinaryIO, context: bytes, label: str = "file"
    ) -> None:
        super().__init__()
        self._stream = StreamDecryptor(bundle_key, suite, src.read(HEADER_LEN), context, label)
        self._src = src
        self._next = src.read(CHUNK_SIZE + TAG_LEN)
        self._done = False
        self._out = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def chunks(self) -> Iterator[bytes]:
        """Authenticated plaintext chunks, in order."""
        while not self._done:
            yield self._open_next()

    def _open_next(self) -> bytes:
        current = self._next
        full = len(current) == CHUNK_SIZE + TAG_LEN
        self._next = self._src.read(CHUNK_SIZE + TAG_LEN) if full else b""
        last = not self._next
        plain = self._stream.open(current, last)
        self._done = last
        return plain

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._out):
            if self._done:
                return 0
            self._out = self._open_next()
            self._pos = 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n


def encrypt_file(
    bundle_key: bytes, suite: Suite, src: BinaryIO, sink: Callable[[bytes], object], context: bytes
) -> int:
    """Encrypt ``src`` to ``sink`` without compression; returns the plaintext size."""
    writer = EncryptingWriter(bundle_key, suite, sink, context)
    while block := src.read(CHUNK_SIZE):
        writer.write(block)
    writer.close()
    return writer.plain_bytes


# -- key wrapping --------------------------------------------------------------------------------

EncryptionPublicKey = x25519.X25519PublicKey | rsa.RSAPublicKey
EncryptionPrivateKey = x25519.X25519PrivateKey | rsa.RSAPrivateKey


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyUnwrapFailed(f"wrapped key field {what!r} is missing or not a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise KeyUnwrapFailed(f"wrapped key field {what!r} is not base64") from None


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def _x25519_kek(suite: Suite, shared: bytes, epk: bytes, rpk: bytes, context: bytes) -> bytes:
    hkdf = HKDF(suite.hash_algorithm(), suite.key_len, salt=epk + rpk, info=_WRAP_INFO + context)
    return hkdf.derive(shared)


def wrap_key(
    bundle_key: bytes, recipient: EncryptionPublicKey, suite: Suite, context: bytes
) -> dict[str, str]:
    """The bundle key, readable only by the holder of ``recipient``'s private key.

    ``context`` (bundle id and recipient key id) is bound into the wrapping, so a wrapped key
    copied into another bundle's envelope does not unwrap.
    """
    if isinstance(recipient, rsa.RSAPublicKey):
        return {
            "alg": "rsa-oaep-sha256",
            "wrapped": _b64(recipient.encrypt(bundle_key, _oaep(context))),
        }

    ephemeral = x25519.X25519PrivateKey.generate()
    epk = ephemeral.public_key().public_bytes_raw()
    rpk = recipient.public_bytes_raw()
    kek = _x25519_kek(suite, ephemeral.exchange(recipient), epk, rpk, context)
    nonce = os.urandom(12)
    wrapped = suite.aead(kek).encrypt(nonce, bundle_key, context)
    return {
        "alg": f"x25519-hkdf-{suite.value}",
        "epk": _b64(epk),
        "nonce": _b64(nonce),
        "wrapped": _b64(wrapped),
    }


def unwrap_key(
    entry: dict[str, str], private: EncryptionPrivateKey, suite: Suite, context: bytes
) -> bytes:
    alg = entry.get("alg")
    if isinstance(private, rsa.RSAPrivateKey):
        if alg != "rsa-oaep-sha256":
            raise KeyUnwrapFailed(f"key wrapped with {alg!r}, but this importer holds an RSA key")
        try:
            key = private.decrypt(_unb64(entry.get("wrapped"), "wrapped"), _oaep(context))
        except ValueError:
            raise KeyUnwrapFailed("RSA-OAEP unwrapping of the bundle key failed") from None
    else:
        if alg != f"x25519-hkdf-{suite.value}":
            raise KeyUnwrapFailed(
                f"key wrapped with {alg!r}, expected 'x25519-hkdf-{suite.value}' for this key"
            )
        epk = _unb64(entry.get("epk"), "epk")
        nonce = _unb64(entry.get("nonce"), "nonce")
        try:
            shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(epk))
        except ValueError:
            raise KeyUnwrapFailed("the ephemeral public key in the envelope is invalid") from None
        rpk = private.public_key().public_bytes_raw()
        kek = _x25519_kek(suite, shared, epk, rpk, context)
        try:
            key = suite.aead(kek).decrypt(nonce, _unb64(entry.get("wrapped"), "wrapped"), context)
        except InvalidTag:
            raise KeyUnwrapFailed("X25519 unwrapping of the bundle key failed") from None
    if len(key) != suite.key_len:
        raise KeyUnwrapFailed(f"unwrapped key is {len(key)} bytes, expected {suite.key_len}")
    return key
