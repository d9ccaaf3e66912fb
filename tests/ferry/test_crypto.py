"""The STREAM construction: round trips, and each kind of damage detected with its own message."""

from __future__ import annotations

import io
import os
import tracemalloc

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from ferry.crypto import (
    CHUNK_SIZE,
    HEADER_LEN,
    TAG_LEN,
    DecryptingReader,
    DecryptionFailed,
    EncryptingWriter,
    KeyUnwrapFailed,
    Suite,
    ciphertext_size,
    encrypt_file,
    new_bundle_key,
    unwrap_key,
    wrap_key,
)


def seal(key, suite, data, context=b"ctx"):
    out = io.BytesIO()
    encrypt_file(key, suite, io.BytesIO(data), out.write, context)
    return out.getvalue()


def open_(key, suite, blob, context=b"ctx"):
    return b"".join(DecryptingReader(key, suite, io.BytesIO(blob), context, "f").chunks())


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7]
)
def test_round_trip_and_size(suite, size):
    key = new_bundle_key(suite)
    data = os.urandom(size)
    blob = seal(key, suite, data)
    assert len(blob) == ciphertext_size(size)
    assert open_(key, suite, blob) == data
    assert DecryptingReader(key, suite, io.BytesIO(blob), b"ctx").read() == data


def test_key_sizes():
    assert len(new_bundle_key(Suite.STANDARD)) == 32  # AES-256
    assert len(new_bundle_key(Suite.NATIONAL)) == 16  # SM4 is a 128-bit cipher


def test_truncation_at_chunk_boundary_is_named():
    key = new_bundle_key(Suite.STANDARD)
    blob = seal(key, Suite.STANDARD, os.urandom(3 * CHUNK_SIZE))
    cut = blob[: HEADER_LEN + 2 * (CHUNK_SIZE + TAG_LEN)]
    with pytest.raises(
        DecryptionFailed,
        match="f: truncated: the stream ends after chunk 1, which is not the final chunk",
    ):
        open_(key, Suite.STANDARD, cut)


def test_reordered_chunks_fail():
    key = new_bundle_key(Suite.STANDARD)
    blob = seal(key, Suite.STANDARD, os.urandom(3 * CHUNK_SIZE))
    c = CHUNK_SIZE + TAG_LEN
    chunks = [blob[HEADER_LEN + i * c : HEADER_LEN + (i + 1) * c] for i in range(3)]
    swapped = blob[:HEADER_LEN] + chunks[1] + chunks[0] + chunks[2]
    with pytest.raises(DecryptionFailed, match="f: chunk 0 failed authentication"):
        open_(key, Suite.STANDARD, swapped)


@pytest.mark.parametrize("suite", list(Suite))
def test_flipped_byte_fails(suite):
    key = new_bundle_key(suite)
    blob = bytearray(seal(key, suite, os.urandom(2 * CHUNK_SIZE + 10)))
    blob[HEADER_LEN + CHUNK_SIZE + TAG_LEN + 3] ^= 0x80
    with pytest.raises(DecryptionFailed, match="chunk 1 failed authentication"):
        open_(key, suite, bytes(blob))


def test_header_change_and_wrong_context_fail():
    key = new_bundle_key(Suite.STANDARD)
    blob = bytearray(seal(key, Suite.STANDARD, b"hello"))
    with pytest.raises(DecryptionFailed, match="chunk 0 failed authentication"):
        open_(key, Suite.STANDARD, bytes(blob), context=b"another file")
    blob[10] ^= 1  # inside the salt
    with pytest.raises(DecryptionFailed):
        open_(key, Suite.STANDARD, bytes(blob))


def test_suite_mismatch_is_named():
    key = new_bundle_key(Suite.STANDARD)
    blob = seal(key, Suite.STANDARD, b"x")
    with pytest.raises(
        DecryptionFailed, match="encrypted with suite id 1, the envelope says national"
    ):
        open_(key[:16], Suite.NATIONAL, blob)


def test_memory_stays_flat_for_large_stream():
    key = new_bundle_key(Suite.STANDARD)
    block = os.urandom(1 << 20)
    sink_bytes = 0

    def sink(b):
        nonlocal sink_bytes
        sink_bytes += len(b)

    tracemalloc.start()
    writer = EncryptingWriter(key, Suite.STANDARD, sink, b"ctx")
    for _ in range(64):  # 64 MiB through the writer
        writer.write(block)
    writer.close()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sink_bytes == ciphertext_size(64 << 20)
    assert peak < 1 << 20  # well under one input block, nothing near the 64 MiB streamed


@pytest.mark.parametrize("suite", list(Suite))
def test_x25519_wrap_is_bound_to_context(suite):
    recipient = x25519.X25519PrivateKey.generate()
    key = new_bundle_key(suite)
    entry = wrap_key(key, recipient.public_key(), suite, b"bundle-1\x00rcpt")
    assert unwrap_key(entry, recipient, suite, b"bundle-1\x00rcpt") == key
    with pytest.raises(KeyUnwrapFailed, match="X25519 unwrapping of the bundle key failed"):
        unwrap_key(entry, recipient, suite, b"bundle-2\x00rcpt")
    with pytest.raises(KeyUnwrapFailed):
        unwrap_key(entry, x25519.X25519PrivateKey.generate(), suite, b"bundle-1\x00rcpt")
