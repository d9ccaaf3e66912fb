"""JSON APIs of departments, read page by page (``source.kind: http``).

``source.url`` is the endpoint returning records. Options:

- ``records``: dotted path to the list of records in a response (default: the response itself
  when it is a list, else ``data``);
- ``pagination``: ``page`` (``page_param``, default ``page``, from ``first_page``, default 1;
  ``size_param``, default ``size``, ``page_size``, default 100; the last page is a short or
  empty one), ``cursor`` (``cursor_param``, default ``cursor``; ``next_cursor``, the dotted path
  of the next page's cursor in a response, default ``next_cursor``; the last page has none) or
  ``none``;
- ``since_param``: query parameter that asks the API for records whose cursor is at or after a
  value; without it every run reads all pages and rows older than the checkpoint are dropped
  here, before they count as read;
- ``params`` and ``headers``: added to every request (``${VAR}`` in a header is read from the
  environment, for tokens); ``timeout`` in seconds (default 30).

Numbers are parsed as exact decimals and travel as their text, like every other scalar except
whole-number and logical columns; nested objects and arrays travel as compact JSON text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import httpx
import pyarrow as pa

from govbus.errors import SourceError, SourceUnavailable
from registry.catalogue import ResourceSpec, expand_env

__all__ = ["HttpSource"]

log = logging.getLogger(__name__)


def _dig(data: Any, path: str | None) -> Any:
    for part in (path or "").split("."):
        if not part:
            continue
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _column(values: list[Any]) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    return pa.array([_text(v) for v in values], pa.large_string())


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


class HttpSource:
    """A paginated JSON API of one department."""

    def __init__(self, spec: ResourceSpec) -> None:
        self.spec = spec
        self.url = expand_env(spec.source.url)
        # What messages show: no user, password or query string, where API keys often travel.
        self.shown_url = str(httpx.URL(self.url).copy_with(userinfo=b"", query=None))
        options = spec.source.options
        self.options = options
        self.pagination = options.get("pagination", "page")
        self.since_param: str | None = options.get("since_param")
        headers = {k: expand_env(str(v)) for k, v in options.get("headers", {}).items()}
        self.client = httpx.Client(
            headers=headers,
            timeout=float(options.get("timeout", 30)),
            transport=httpx.HTTPTransport(retries=2),
        )

    by_cursor = True

    def columns(self) -> list[str]:
        """The record fields of the first page, with the registered items a record may omit."""
        first = next(self._pages(None), [])
        names = [item.name for item in self.spec.items]
        for record in first[:100]:
            names.extend(k for k in record if k not in names)
        return names

    def read(
        self, names: Sequence[str], cursor_from: Any = None, key_range: Any = None
    ) -> Iterator[pa.RecordBatch]:
        cursor = self.spec.source.cursor
        for records in self._pages(cursor_from):
            if cursor_from is not None and cursor is not None:
                # The API cannot filter: drop rows older than the checkpoint here.
                records = [
                    r for r in records if r.get(cursor) is None or _at_least(r[cursor], cursor_from)
                ]
            if not records:
                continue
            arrays = [_column([r.get(n) for r in records]) for n in names]
            yield pa.RecordBatch.from_arrays(arrays, names=list(names))

    def _pages(self, since: Any) -> Iterator[list[dict[str, Any]]]:
        params: dict[str, Any] = dict(self.options.get("params", {}))
        if since is not None and self.since_param:
            params[self.since_param] = str(since)
        size = int(self.options.get("page_size", 100))
        page = int(self.options.get("first_page", 1))
        next_cursor: Any = None
        while True:
            query = dict(params)
            if self.pagination == "page":
                query[self.options.get("page_param", "page")] = page
                query[self.options.get("size_param", "size")] = size
            elif self.pagination == "cursor" and next_cursor is not None:
                query[self.options.get("cursor_param", "cursor")] = next_cursor
            body = self._get(query)
            records = (
                body if isinstance(body, list) else _dig(body, self.options.get("records", "data"))
            )
            if not isinstance(records, list):
                raise SourceError(
                    f"{self.spec.code}: {self.shown_url} answered without a list of records at "
                    f"{self.options.get('records', 'data')!r}; set source.options.records"
                )
            yield records
            if self.pagination == "page":
                if len(records) < size:
                    return
                page += 1
            elif self.pagination == "cursor":
                next_cursor = _dig(body, self.options.get("next_cursor", "next_cursor"))
                if next_cursor in (None, ""):
                    return
            else:
                return

    def _get(self, params: dict[str, Any]) -> Any:
        try:
            response = self.client.get(self.url, params=params)
        except httpx.TransportError as exc:
            raise SourceUnavailable(
                f"{self.spec.code}: cannot reach {self.shown_url}: {exc}"
            ) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise SourceUnavailable(
                f"{self.spec.code}: {self.shown_url} answered {response.status_code}; "
                "try again later"
            )
        if response.status_code >= 400:
            raise SourceError(
                f"{self.spec.code}: {self.shown_url} refused the request ({response.status_code}): "
                f"{response.text[:200]}"
            )
        try:
            return json.loads(response.content, parse_float=Decimal)
        except ValueError as exc:
            raise SourceError(
                f"{self.spec.code}: {self.shown_url} did not answer JSON: {exc}"
            ) from exc

    def dispose(self) -> None:
        self.client.close()


def _at_least(value: Any, bound: Any) -> bool:
    try:
        return bool(value >= bound)
    except TypeError:
        return str(value) >= str(bound)
