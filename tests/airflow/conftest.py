"""Real Airflow 3 for the DAG tests: an isolated AIRFLOW_HOME per session, demo resources applied.

Airflow runs as subprocesses (its command line), never in the test process, so every test sees
what a deployment sees: the DAG file parsed from ``dags/``, the metadata database, the executor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from govbus.demo import build_sources, examples_dir
from govbus.settings import Settings, load_settings
from registry.catalogue import ResourceSpec
from registry.db import registry_engine
from registry.resources import apply_files, list_current

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
COMPANIES = 2_000


def clean_environ() -> dict[str, str]:
    """This process's environment without any Airflow or govbus settings it may carry."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GOVBUS_", "_AIRFLOW"))
    }


@dataclass
class AirflowSite:
    """One Airflow installation with a govbus home whose registry holds the demo resources."""

    root: Path
    env: dict[str, str]
    settings: Settings
    specs: list[ResourceSpec] = field(default_factory=list)

    def airflow(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        """Run an ``airflow`` command; return its standard output."""
        done = subprocess.run(
            [AIRFLOW, *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-60:])
            raise AssertionError(f"airflow {' '.join(args)} exited {done.returncode}:\n{tail}")
        return done.stdout

    def airflow_json(self, *args: str) -> object:
        out = self.airflow(*args, "-o", "json")
        # Log lines and warnings may precede the document, which is printed as one line.
        lines = [line for line in out.splitlines() if line.startswith(("[{", "[]", "{"))]
        return json.loads(lines[-1])

    def cloud(self) -> sa.Engine:
        return sa.create_engine(self.settings.cloud_url)


@pytest.fixture(scope="session")
def demo_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's department databases (civil affairs, market supervision), built once."""
    directory = tmp_path_factory.mktemp("sources")
    build_sources(directory, COMPANIES)
    return directory


def make_site(
    root: Path,
    demo_sources: Path,
    airflow_settings: dict[str, str],
    govbus_env: dict[str, str] | None = None,
) -> AirflowSite:
    """An Airflow home and a govbus home under ``root``, the demo resources registered."""
    airflow_home = root / "airflow"
    airflow_home.mkdir(parents=True)
    env = clean_environ()
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "GOVBUS_HOME": str(root / "govbus"),
            "GOVBUS_DEMO_SOURCES": str(demo_sources),
            # The repository on the import path, as an installed package would be.
            "PYTHONPATH": str(REPO),
            **airflow_settings,
            **(govbus_env or {}),
        }
    )
    settings = load_settings(env)
    settings.ensure_dirs()

    # The registry keeps ${GOVBUS_DEMO_SOURCES} unexpanded; tests that also sync in this process
    # (test_ferry_dags) need it here as well. Every demo-source build uses the same seed and size,
    # and tests that run govbus as a subprocess drop GOVBUS_* variables, so it leaks nothing.
    os.environ.setdefault("GOVBUS_DEMO_SOURCES", str(demo_sources))
    engine = registry_engine(settings.registry_url)
    apply_files(engine, [examples_dir()])
    specs = [r.spec for r in list_current(engine)]
    engine.dispose()
    return AirflowSite(root=root, env=env, settings=settings, specs=specs)


@pytest.fixture(scope="session")
def sqlite_site(tmp_path_factory: pytest.TempPathFactory, demo_sources: Path) -> AirflowSite:
    """Airflow on SQLite metadata with the default executor, migrated once for the session."""
    root = tmp_path_factory.mktemp("airflow-sqlite")
    site = make_site(root, demo_sources, {})
    site.airflow("db", "migrate")
    return site


@pytest.fixture(scope="session")
def serialized_site(sqlite_site: AirflowSite) -> Iterator[AirflowSite]:
    """The SQLite site with the DAG file parsed and its DAGs serialized into the database."""
    sqlite_site.airflow("dags", "reserialize")
    yield sqlite_site


@pytest.fixture(scope="session")
def site_factory():  # type: ignore[no-untyped-def]
    """``make_site`` for tests that need an Airflow home of their own (another executor)."""
    return make_site
