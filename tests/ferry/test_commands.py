"""The command functions end to end: keygen, pin, export, send, receive, import, status, resend."""

from __future__ import annotations

import textwrap

from typer.testing import CliRunner

from ferry.commands import app
from ferry.keys import load_public


def test_commands_end_to_end(tmp_path, monkeypatch):
    from tests_ferry_support import write_parquet_file  # noqa: F401 - created below

    run = CliRunner().invoke
    assert run(app, ["keygen", str(tmp_path / "dept"), "--name", "dept"]).exit_code == 0
    assert run(app, ["keygen", str(tmp_path / "cloud"), "--name", "cloud"]).exit_code == 0
    dept = load_public(tmp_path / "dept" / "public.json")
    cloud = load_public(tmp_path / "cloud" / "public.json")
    for who, trust in (("cloud", "dept-trust.json"), ("dept", "cloud-trust.json")):
        r = run(app, ["pin", str(tmp_path / who / "public.json"), "--trust", str(tmp_path / trust)])
        assert r.exit_code == 0, r.output
    parquet = write_parquet_file(tmp_path / "rows.parquet", 4)
    drop, inbox = tmp_path / "drop", tmp_path / "inbox"
    drop.mkdir()

    common = ["--home", str(tmp_path / "out"), "--keys", str(tmp_path / "dept")]
    r = run(
        app,
        [
            "export",
            *common,
            "--trust",
            str(tmp_path / "dept-trust.json"),
            "--recipient",
            cloud.key_id,
            "--channel",
            "ch-a",
            "--resource",
            "R1",
            "--schema-hash",
            "sha256:1",
            "--source-domain",
            "dept",
            "--destination-domain",
            "cloud",
            "--file",
            f"{parquet}:4",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "sequence 1:" in r.output
    bundle = next((tmp_path / "out" / "outbox").iterdir())
    assert run(app, ["send", str(bundle), "--drop", str(drop)]).exit_code == 0
    assert run(app, ["receive", "--inbox", str(inbox), "--drop", str(drop)]).exit_code == 0

    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    r = run(
        app,
        [
            "import",
            "--inbox",
            str(inbox),
            "--home",
            str(tmp_path / "in"),
            "--keys",
            str(tmp_path / "cloud"),
            "--trust",
            str(tmp_path / "cloud-trust.json"),
            "--db",
            db,
            "--loader",
            "tests_ferry_support:load",
            "--channel",
            "ch-a",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "imported  ch-a #1" in r.output
    import tests_ferry_support

    assert tests_ferry_support.LOADED == [4]

    r = run(app, ["status", "--db", db])
    assert r.exit_code == 0 and "ch-a" in r.output and dept.key_id[:12] in r.output

    r = run(
        app,
        [
            "resend",
            "--home",
            str(tmp_path / "out"),
            "--channel",
            "ch-a",
            "--sequence",
            "1",
            "--drop",
            str(drop),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (drop / bundle.name).is_dir()

    r = run(app, ["send", str(bundle)])
    assert r.exit_code == 2
    assert "give exactly one transport" in r.output


def setup_module(module):
    import sys
    import tempfile
    from pathlib import Path

    support = Path(tempfile.mkdtemp()) / "tests_ferry_support.py"
    support.write_text(
        textwrap.dedent("""
        import pyarrow as pa
        import pyarrow.parquet as pq

        LOADED = []

        def write_parquet_file(path, n):
            pq.write_table(pa.table({"id": list(range(n))}), path)
            return path

        def load(conn, files, envelope):
            LOADED.append(sum(pq.read_metadata(f).num_rows for f in files))
    """)
    )
    sys.path.insert(0, str(support.parent))
    module.SUPPORT_DIR = str(support.parent)


def teardown_module(module):
    import sys

    sys.path.remove(module.SUPPORT_DIR)
    sys.modules.pop("tests_ferry_support", None)
