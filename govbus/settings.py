"""Where govbus keeps things, read from the environment.

With nothing set, everything lives under ``GOVBUS_HOME`` (default ``./.govbus``): a SQLite
registry, a SQLite cloud database and a Parquet lake directory. ``GOVBUS_REGISTRY_URL``,
``GOVBUS_CLOUD_URL`` (SQLAlchemy URLs) and ``GOVBUS_LAKE`` (a directory) override each part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    home: Path
    registry_url: str
    cloud_url: str
    lake: Path

    @property
    def staging(self) -> Path:
        """Scratch space for files that must appear atomically elsewhere."""
        return self.home / "staging"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.lake, self.staging):
            path.mkdir(parents=True, exist_ok=True)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("GOVBUS_HOME") or ".govbus").resolve()
    registry_url = env.get("GOVBUS_REGISTRY_URL") or f"sqlite:///{home / 'registry.db'}"
    cloud_url = env.get("GOVBUS_CLOUD_URL") or f"sqlite:///{home / 'cloud.db'}"
    lake = Path(env.get("GOVBUS_LAKE") or home / "lake").resolve()
    return Settings(home=home, registry_url=registry_url, cloud_url=cloud_url, lake=lake)
