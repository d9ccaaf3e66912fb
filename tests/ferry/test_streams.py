"""The block fast paths produce and accept exactly the streams of the chunk-at-a-time classes."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from ferry.crypto import (
    CHUNK_SIZE,
    HEADER_LEN,
    TAG_LEN,
    DecryptingReader,
    DecryptionFailed,
    Suite,
    ciphertext_size,
    encrypt_file,
    new_bundle_key,
    new_hash,
)
from ferry.streams import BLOCK_SIZE, decrypt_path, encrypt_path, hash_paths

SIZES = [
    0,
    1,
    CHUNK_SIZE,
    CHUNK_SIZE + 1,
    BLOCK_SIZE - 1,
    BLOCK_SIZE,
    BLOCK_SIZE + 1,
    2 * BLOCK_SIZE,
    2 * BLOCK_SIZE + CHUNK_SIZE + 5,
]


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("size", SIZES)
def test_block_encryption_is_read_by_the_chunk_reader(tmp_path, suite, size):
    key, data = new_bundle_key(suite), os.urandom(size)
    (tmp_path / "plain").write_bytes(data)
    sha, sm3 = hashlib.sha256(), new_hash(Suite.NATIONAL)

    plain, sealed = encrypt_path(
        tmp_path / "plain", tmp_path / "ct", key=key, suite=suite, context=b"c", hashers=[sha, sm3]
    )

    blob = (tmp_path / "ct").read_bytes()
    assert (plain, sealed) == (size, ciphertext_size(size)) and len(blob) == sealed
    assert sha.hexdigest() == hashlib.sha256(blob).hexdigest()
    reference = new_hash(Suite.NATIONAL)
    reference.update(blob)
    assert sm3.finalize() == reference.finalize()
    assert b"".join(DecryptingReader(key, suite, io.BytesIO(blob), b"c").chunks()) == data


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("size", SIZES)
def test_block_decryption_reads_the_chunk_writer(tmp_path, suite, size):
    key, data = new_bundle_key(suite), os.urandom(size)
    out = io.BytesIO()
    encrypt_file(key, suite, io.BytesIO(data), out.write, b"c")
    (tmp_path / "ct").write_bytes(out.getvalue())
    admitted = []

    n = decrypt_path(
        tmp_path / "ct",
        tmp_path / "plain",
        key=key,
        suite=suite,
        context=b"c",
        label="f",
        admit=admitted.append,
    )

    assert n == size == sum(admitted)
    assert max(admitted) <= BLOCK_SIZE
    assert (tmp_path / "plain").read_bytes() == data


def _sealed(tmp_path, size):
    key = new_bundle_key(Suite.STANDARD)
    (tmp_path / "plain").write_bytes(os.urandom(size))
    encrypt_path(
        tmp_path / "plain", tmp_path / "ct", key=key, suite=Suite.STANDARD, context=b"c", hashers=[]
    )
    return key


def _decrypt(tmp_path, key, admit=lambda n: None):
    return decrypt_path(
        tmp_path / "ct",
        tmp_path / "out",
        key=key,
        suite=Suite.STANDARD,
        context=b"c",
        label="f",
        admit=admit,
    )


def test_truncation_at_a_block_boundary_is_named(tmp_path):
    key = _sealed(tmp_path, 3 * BLOCK_SIZE)
    chunks_per_block = BLOCK_SIZE // CHUNK_SIZE
    os.truncate(tmp_path / "ct", HEADER_LEN + 2 * chunks_per_block * (CHUNK_SIZE + TAG_LEN))

    with pytest.raises(
        DecryptionFailed,
        match=rf"f: truncated: the stream ends after chunk {2 * chunks_per_block - 1}, "
        "which is not the final chunk",
    ):
        _decrypt(tmp_path, key)


def test_flipped_byte_in_a_later_block_names_its_chunk(tmp_path):
    key = _sealed(tmp_path, 2 * BLOCK_SIZE + 100)
    with open(tmp_path / "ct", "r+b") as fh:
        fh.seek(HEADER_LEN + 20 * (CHUNK_SIZE + TAG_LEN) + 7)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))

    with pytest.raises(DecryptionFailed, match="f: chunk 20 failed authentication"):
        _decrypt(tmp_path, key)


def test_admit_stops_before_the_block_is_written(tmp_path):
    key = _sealed(tmp_path, 3 * BLOCK_SIZE)

    def admit(n):
        if admit.seen + n > BLOCK_SIZE:
            raise OverflowError("limit")
        admit.seen += n

    admit.seen = 0
    with pytest.raises(OverflowError):
        _decrypt(tmp_path, key, admit)
    assert (tmp_path / "out").stat().st_size == BLOCK_SIZE


def test_hash_paths_reads_each_file_once_for_all_hashers(tmp_path):
    blobs = {name: os.urandom(size) for name, size in [("a", 0), ("b", 5_000_001), ("c", 17)]}
    jobs = []
    for name, blob in blobs.items():
        (tmp_path / name).write_bytes(blob)
        jobs.append((tmp_path / name, [hashlib.sha256(), hashlib.sha512()]))

    sizes = hash_paths(jobs)

    assert sizes == [0, 5_000_001, 17]
    for (_path, (sha256, sha512)), blob in zip(jobs, blobs.values(), strict=True):
        assert sha256.hexdigest() == hashlib.sha256(blob).hexdigest()
        assert sha512.hexdigest() == hashlib.sha512(blob).hexdigest()
