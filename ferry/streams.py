"""File-level fast paths: encrypt a file while hashing its ciphertext, hash files, decrypt a file.

Each works in blocks of 16 chunks (1 MiB of plaintext) with reused buffers, and hands every block
to a second thread that hashes and writes it while the calling thread reads and seals (or opens)
the next one. ``hashlib`` and file writes release the GIL on large buffers, so the two threads run
on two cores: encrypting a file costs about as long as hashing it, which is the slower half.

The byte format is the one ``ferry.crypto`` defines; these functions only change how fast it is
produced and consumed, never what is produced (``EncryptingWriter`` and ``DecryptingReader`` read
and write the same streams, and the tests hold them to it).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from ferry.crypto import (
    CHUNK_SIZE,
    HEADER_LEN,
    TAG_LEN,
    StreamDecryptor,
    StreamEncryptor,
    Suite,
)

__all__ = ["BLOCK_SIZE", "Hasher", "encrypt_path", "hash_paths", "decrypt_path"]

#: plaintext bytes sealed per block: big enough that per-call overhead vanishes, small enough to
#: stay in cache between the sealing thread and the hashing thread
BLOCK_SIZE = 16 * CHUNK_SIZE
_SEALED_BLOCK = BLOCK_SIZE + (BLOCK_SIZE // CHUNK_SIZE) * TAG_LEN
#: blocks in flight between the two threads; memory use is this many blocks, whatever the file
_DEPTH = 4
_HASH_BLOCK = 4 * 1024 * 1024


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


class _BlockWriter:
    """Threads that hash, then write, each block handed to them, in order.

    Hashing and writing are separate threads in a chain (hash, then write), so a block can be
    written while the next is hashed. Buffers go round: ``buffer()`` takes a free one (waiting
    while all are in flight), ``submit`` hands it over, and the last thread returns it. A failure
    on a thread is raised in the caller at its next ``buffer``, ``submit`` or at the end.
    """

    def __init__(self, file: BinaryIO | None, hashers: Sequence[Hasher], size: int) -> None:
        def hash_block(view: memoryview) -> None:
            for hasher in hashers:
                hasher.update(view)

        stages: list[Callable[[memoryview], None]] = []
        if hashers:
            stages.append(hash_block)
        if file is not None:
            stages.append(lambda view: _write_all(file, view))
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(_DEPTH):
            self._free.put(bytearray(size))
        self._queues: list[queue.Queue[tuple[bytearray, int] | None]] = [
            queue.Queue() for _ in stages
        ]
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(
                target=self._run, args=(i, stage), name=f"ferry-block-{i}", daemon=True
            )
            for i, stage in enumerate(stages)
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> _BlockWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._queues:
            self._queues[0].put(None)
        for thread in self._threads:
            thread.join()
        if kind is None:
            self._raise()

    def buffer(self) -> bytearray:
        self._raise()
        return self._free.get()

    def submit(self, buf: bytearray, length: int) -> None:
        self._raise()
        if self._queues:
            self._queues[0].put((buf, length))
        else:
            self._free.put(buf)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self, index: int, stage: Callable[[memoryview], None]) -> None:
        inbox = self._queues[index]
        onward = self._queues[index + 1] if index + 1 < len(self._queues) else None
        while (item := inbox.get()) is not None:
            buf, length = item
            if self._error is None:
                try:
                    stage(memoryview(buf)[:length])
                except BaseException as exc:  # handed to the caller, who decides
                    self._error = exc
            if onward is not None:
                onward.put(item)
            else:
                self._free.put(buf)
        if onward is not None:
            onward.put(None)


def _write_all(file: BinaryIO, view: memoryview) -> None:
    # An unbuffered file may write less than asked (a signal, a full pipe); go on until done.
    while view:
        written = file.write(view)
        view = view[written:]


def _read_full(file: BinaryIO, buf: bytearray) -> int:
    """Fill ``buf`` unless the file ends first; returns the bytes read."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = file.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def encrypt_path(
    src: Path, dst: Path, *, key: bytes, suite: Suite, context: bytes, hashers: Sequence[Hasher]
) -> tuple[int, int]:
    """Encrypt ``src`` into the new file ``dst``, feeding the ciphertext to ``hashers`` as it is
    written; fsyncs ``dst``. Returns (plaintext bytes, ciphertext bytes)."""
    stream = StreamEncryptor(key, suite, context)
    plain = sealed = 0

    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        with _BlockWriter(fout, hashers, _SEALED_BLOCK) as writer:
            head = writer.buffer()
            head[:HEADER_LEN] = stream.header
            writer.submit(head, HEADER_LEN)
            sealed += HEADER_LEN

            # Read one block ahead: only the block after which the file ends holds the final
            # chunk, and a file that ends on a block boundary still needs its final chunk flagged.
            current, ahead = bytearray(BLOCK_SIZE), bytearray(BLOCK_SIZE)
            n = _read_full(fin, current)
            while True:
                m = _read_full(fin, ahead) if n == BLOCK_SIZE else 0
                final = m == 0
                out = writer.buffer()
                k = stream.seal_into(memoryview(current)[:n], memoryview(out), final)
                writer.submit(out, k)
                plain += n
                sealed += k
                if final:
                    break
                current, ahead, n = ahead, current, m
        os.fsync(fout.fileno())
    return plain, sealed


def _hash_path(path: Path, hashers: Sequence[Hasher]) -> int:
    size = 0
    with open(path, "rb", buffering=0) as fin, _BlockWriter(None, hashers, _HASH_BLOCK) as worker:
        while True:
            buf = worker.buffer()
            n = _read_full(fin, buf)
            worker.submit(buf, n)
            size += n
            if n < len(buf):
                return size


def hash_paths(jobs: Sequence[tuple[Path, Sequence[Hasher]]]) -> list[int]:
    """One read of each file feeding all its hashers; files in parallel. Returns the sizes."""
    if len(jobs) <= 1:
        return [_hash_path(path, hashers) for path, hashers in jobs]
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda job: _hash_path(*job), jobs))


def decrypt_path(
    src: Path,
    dst: Path,
    *,
    key: bytes,
    suite: Suite,
    context: bytes,
    label: str,
    admit: Callable[[int], None],
) -> int:
    """Decrypt ``src`` into the new file ``dst``; fsyncs it and returns the plaintext bytes.

    ``admit(n)`` is called before each authenticated block of ``n`` bytes is written, and raises
    to stop: that is where the caller's byte limits live.
    """
    written = 0
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        header = bytearray(HEADER_LEN)
        stream = StreamDecryptor(
            key, suite, bytes(header[: _read_full(fin, header)]), context, label
        )
        with _BlockWriter(fout, (), BLOCK_SIZE) as writer:
            current, ahead = bytearray(_SEALED_BLOCK), bytearray(_SEALED_BLOCK)
            n = _read_full(fin, current)
            while True:
                m = _read_full(fin, ahead) if n == _SEALED_BLOCK else 0
                final = m == 0
                out = writer.buffer()
                k = stream.open_into(memoryview(current)[:n], memoryview(out), final)
                admit(k)
                writer.submit(out, k)
                written += k
                if final:
                    break
                current, ahead, n = ahead, current, m
        os.fsync(fout.fileno())
    return written
