"""CSV and Excel files that a department drops into a directory (``source.kind: files``).

``source.url`` is the directory (a path or a ``file://`` URL). Each run reads the files that are
new or whose content changed since the last committed run, recognised by name and SHA-256 of
their bytes; the hashes travel in the checkpoint, so they move only when the load commits.

Text files may be UTF-8 (with or without a byte-order mark) or GBK/GB18030; ``options.encoding``
names one explicitly, otherwise UTF-8 is tried first and GB18030 (a superset of GBK) second.
Every value is read as text and cast by validation to its registered type, so numbers keep
every digit. An empty unquoted CSV field is NULL; a quoted ``""`` is an empty string.

A file that cannot be read (bad encoding, ragged rows, a registered column missing from its
header, a broken workbook) fails the whole run with a message naming the file and the problem:
the run's transaction rolls back, so nothing of it, and nothing of any other file of that run,
is loaded.

Options: ``pattern`` (glob, default ``*.csv`` and ``*.xlsx``), ``encoding``, ``delimiter``
(default ``,``), ``sheet`` (default the first sheet).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pacsv

from govbus.errors import ConfigError, SourceError
from registry.catalogue import ResourceSpec, expand_env

__all__ = ["FileSource"]

log = logging.getLogger(__name__)

_EXCEL = (".xlsx", ".xlsm")


class FileSource:
    """A directory of CSV and Excel files, read file by file as text columns."""

    #: rows are not filtered by the cursor: a new or changed file is read whole
    by_cursor = False

    def __init__(self, spec: ResourceSpec) -> None:
        self.spec = spec
        url = expand_env(spec.source.url)
        self.root = Path(urlparse(url).path if url.startswith("file://") else url)
        if not self.root.is_dir():
            raise ConfigError(f"{spec.code}: source directory {self.root} does not exist")
        options = spec.source.options
        patterns = options.get("pattern", ["*.csv", *(f"*{e}" for e in _EXCEL)])
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        self.encoding: str | None = options.get("encoding")
        self.delimiter: str = options.get("delimiter", ",")
        self.sheet: str | None = options.get("sheet")
        self.known: dict[str, str] = {}
        self._hashes: dict[str, str] | None = None
        self._headers: dict[str, list[str]] = {}

    # -- state kept in the checkpoint ---------------------------------------------------------

    def resume(self, state: dict[str, Any]) -> None:
        self.known = dict(state.get("files", {}))

    def state(self) -> dict[str, Any]:
        return {"files": {**self.known, **self._current()}}

    def _current(self) -> dict[str, str]:
        if self._hashes is None:
            files = sorted({p for pattern in self.patterns for p in self.root.glob(pattern)})
            self._hashes = {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()
            }
        return self._hashes

    def pending(self) -> list[str]:
        """Names of the files this run reads: new, or changed since the last committed run."""
        return [name for name, digest in self._current().items() if self.known.get(name) != digest]

    # -- reading ------------------------------------------------------------------------------

    def columns(self) -> list[str]:
        """The columns of the pending files; a file missing a registered item is refused."""
        registered = [item.name for item in self.spec.items]
        names: list[str] = []
        for name in self.pending():
            header = self._header(name)
            missing = [c for c in registered if c not in header]
            if missing:
                self._refuse(
                    name, f"its header lacks the registered column(s) {', '.join(missing)}"
                )
            names.extend(c for c in header if c not in names)
        return names or registered

    def column_kinds(self) -> dict[str, Any]:
        return {}

    def read(
        self, names: Sequence[str], cursor_from: Any = None, key_range: Any = None
    ) -> Iterator[pa.RecordBatch]:
        for name in self.pending():
            table = self._table(name)
            missing = [c for c in names if c not in table.column_names]
            if missing:
                self._refuse(name, f"its header lacks the column(s) {', '.join(missing)}")
            table = table.select(list(names))
            log.info("%s: read %s (%d rows)", self.spec.code, name, table.num_rows)
            yield from table.to_batches(max_chunksize=self.spec.source.batch_size)

    def dispose(self) -> None:
        pass

    # -- one file -----------------------------------------------------------------------------

    def _refuse(self, name: str, problem: str) -> None:
        raise SourceError(
            f"{self.spec.code}: file {name!r} in {self.root} refused, nothing of this run "
            f"loaded: {problem}; fix or remove the file and run again"
        )

    def _header(self, name: str) -> list[str]:
        if name not in self._headers:
            self._headers[name] = self._table(name).column_names
        return self._headers[name]

    def _table(self, name: str) -> pa.Table:
        path = self.root / name
        if path.suffix.lower() in _EXCEL:
            return self._excel(name, path)
        return self._csv(name, path.read_bytes())

    def _decode(self, name: str, data: bytes) -> str:
        if self.encoding:
            try:
                return data.decode(self.encoding)
            except (UnicodeDecodeError, LookupError) as exc:
                self._refuse(name, f"it is not valid {self.encoding}: {exc}")
        if data.startswith(b"\xef\xbb\xbf"):
            encodings = ["utf-8-sig"]
        else:
            encodings = ["utf-8", "gb18030"]
        for encoding in encodings:
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                continue
        self._refuse(name, "it is neither UTF-8 nor GBK/GB18030 text")
        raise AssertionError  # unreachable: _refuse raises

    def _csv(self, name: str, data: bytes) -> pa.Table:
        text = self._decode(name, data).removeprefix("\ufeff")
        try:
            # The header alone names the columns, so every one can be read as text.
            header = next(csv.reader(io.StringIO(text), delimiter=self.delimiter), [])
            return pacsv.read_csv(
                io.BytesIO(text.encode()),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.large_string() for c in header},
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    null_values=[""],
                ),
            )
        except pa.ArrowInvalid as exc:
            self._refuse(name, str(exc).replace("\n", " "))
            raise AssertionError from exc  # unreachable

    def _excel(self, name: str, path: Path) -> pa.Table:
        import openpyxl

        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:  # openpyxl raises many kinds for a broken workbook
            self._refuse(name, f"it is not a readable Excel workbook: {exc}")
        try:
            sheet = book[self.sheet] if self.sheet else book.worksheets[0]
            rows = sheet.iter_rows(values_only=True)
            header = [str(h).strip() if h is not None else "" for h in next(rows, ())]
            if not header or "" in header:
                self._refuse(name, "its first row must name every column")
            columns: list[list[str | None]] = [[] for _ in header]
            for number, row in enumerate(rows, start=2):
                if len(row) > len(header) and any(v is not None for v in row[len(header) :]):
                    self._refuse(name, f"row {number} has values beyond the named columns")
                if all(v is None for v in row):
                    continue
                for i in range(len(header)):
                    columns[i].append(_cell_text(row[i] if i < len(row) else None))
        finally:
            book.close()
        return pa.table(
            {h: pa.array(c, pa.large_string()) for h, c in zip(header, columns, strict=True)}
        )


def _cell_text(value: Any) -> str | None:
    """An Excel cell as text: numbers by their shortest exact repr, dates in ISO form."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
