"""JSON APIs with page and cursor pagination, served by a local HTTP server the test starts."""

from __future__ import annotations

import json
import re
import textwrap
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import sqlalchemy as sa

from govbus.settings import Settings
from govbus.sync import cloud_for, sync
from registry.db import registry_engine
from registry.resources import apply_files

CODE = "330400-API-0001"

pytestmark = pytest.mark.postgres


class Api:
    """Records served page by page (``?page=&size=``) or by an opaque cursor (``?cursor=``)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.requests: list[dict[str, list[str]]] = []

    def answer(self, path: str, query: dict[str, list[str]]) -> Any:
        self.requests.append(query)
        ordered = sorted(self.records, key=lambda r: r["id"])
        if path == "/paged":
            page, size = int(query["page"][0]), int(query["size"][0])
            return {"code": 0, "data": ordered[(page - 1) * size : page * size]}
        start = int(query.get("cursor", ["0"])[0])
        chunk = ordered[start : start + 2]
        following = str(start + 2) if start + 2 < len(ordered) else None
        return {"result": {"items": chunk}, "next": following}


def number_json(value: Any) -> str:
    """JSON with decimals written as number literals, digit for digit (json.dumps cannot)."""
    text = json.dumps(value, ensure_ascii=False, default=lambda d: f"\u0000{d}\u0000")
    return re.sub(r'"\\u0000([^"]*)\\u0000"', r"\1", text)


@pytest.fixture
def api() -> Iterator[tuple[Api, str]]:
    state = Api()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            data = number_json(state.answer(url.path, parse_qs(url.query))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def register(settings: Settings, tmp_path: Path, url: str, options: str) -> None:
    path = tmp_path / "api.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            code: "{CODE}"
            name: 接口资源
            provider: {{code: "11330400MB1234562E", name: 嘉兴市市场监督管理局}}
            format: api
            update_cycle: hourly
            sharing: {{type: unconditional}}
            source:
              kind: http
              url: "{url}"
              cursor: updated_at
              primary_key: [id]
              options: {options}
            target: {{table: api_rows}}
            items:
              - {{name: id, type: I, nullable: false}}
              - {{name: name, type: M}}
              - {{name: amount, type: N}}
              - {{name: extra, type: M}}
              - {{name: updated_at, type: T}}
            """),
        encoding="utf-8",
    )
    apply_files(registry_engine(settings.registry_url), [path])


def cloud(settings: Settings) -> dict[int, tuple]:
    with cloud_for(settings).engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id, name, amount, extra FROM api_rows")).all()
    return {r[0]: tuple(r[1:]) for r in found}


RECORDS = [
    {
        "id": 1,
        "name": "𠮷野家 😀",
        "amount": Decimal("0.12345678901234567890"),
        "updated_at": "2025-03-01T10:00:00+08:00",
    },
    {
        "id": 2,
        "name": "第二",
        "amount": Decimal("12345.678901"),
        "updated_at": "2025-03-01T10:00:01+08:00",
    },
    {
        "id": 3,
        "name": "第三",
        "amount": Decimal("1E-20"),
        "extra": {"春江": "潮水"},
        "updated_at": "2025-03-01T10:00:02+08:00",
    },
    {"id": 4, "name": "无游标", "amount": None, "updated_at": None},
    {"id": 5, "name": "第五", "amount": 5, "updated_at": "2025-03-01T10:00:02+08:00"},
]


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("/paged", "{pagination: page, page_size: 2}"),
        ("/cursor", "{pagination: cursor, records: result.items, next_cursor: next}"),
    ],
)
def test_an_api_is_read_page_by_page_exactly_once(
    pg_home, tmp_path, api, path: str, options: str
) -> None:
    state, base = api
    # decimals written by the server as JSON number text, digit for digit
    state.records = [dict(r) for r in RECORDS]
    register(pg_home, tmp_path, base + path, options)

    run = sync(CODE, settings=pg_home)
    assert (run.read, run.loaded, run.rejected) == (5, 5, 0)
    assert cloud(pg_home) == {
        1: ("𠮷野家 😀", Decimal("0.12345678901234567890"), None),
        2: ("第二", Decimal("12345.678901"), None),
        3: ("第三", Decimal("1E-20"), '{"春江":"潮水"}'),
        4: ("无游标", None, None),
        5: ("第五", Decimal("5"), None),
    }
    # the first page once to see the fields (drift), then pages of 2, 2 and 1 records
    assert len(state.requests) == 4

    assert sync(CODE, settings=pg_home).read == 0

    # a new record at the checkpoint's value, and the cursorless one changed
    state.records.append(
        {"id": 6, "name": "同刻", "amount": 6, "updated_at": "2025-03-01T10:00:02+08:00"}
    )
    state.records[3]["name"] = "无游标（改）"
    run = sync(CODE, settings=pg_home)
    assert (run.read, run.loaded) == (2, 2)
    assert cloud(pg_home)[4][0] == "无游标（改）"
    assert sorted(cloud(pg_home)) == [1, 2, 3, 4, 5, 6]
    assert sync(CODE, settings=pg_home).read == 0
