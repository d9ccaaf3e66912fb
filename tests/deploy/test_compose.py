"""docker/: no Docker engine runs here, so the files are checked for what they must say.

The compose file must name the same services, queues and settings as the local Celery cluster
(tests/airflow/test_celery.py), which takes them from govbus.orchestration as this test does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from govbus.demo import examples_dir
from govbus.orchestration import CLUSTER_SETTINGS, DEFAULT_QUEUE, departments
from registry.catalogue import load_resource_file

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")
CORE = {
    "postgres",
    "redis",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker-default",
    "lookup",
    "sftp",
}
AIRFLOW_IMAGE = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker-default",
    "lookup",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def example_departments():  # type: ignore[no-untyped-def]
    specs = [spec for f in sorted(examples_dir().glob("*.yaml")) for spec in load_resource_file(f)]
    return departments(specs)


def _queues(service: dict) -> list[str]:
    command = service["command"]
    assert command[:3] == ["airflow", "celery", "worker"], command
    return command[command.index("-q") + 1].split(",")


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_the_services_are_the_cloud_side_and_one_front_end_worker_per_department(
    compose, example_departments
) -> None:
    fronts = {d.worker_service for d in example_departments}

    assert fronts == {"frontend-mzb", "frontend-scjg"}
    assert set(compose["services"]) == CORE | fronts


def test_department_queues_are_the_ones_the_dags_route_to(compose, example_departments) -> None:
    services = compose["services"]

    assert _queues(services["airflow-worker-default"]) == [DEFAULT_QUEUE]
    for dept in example_departments:
        worker = services[dept.worker_service]
        assert _queues(worker) == [dept.queue]
        # The recorded host name is the service's, so the API server can fetch its logs.
        assert worker["hostname"] == dept.worker_service
        assert "GOVBUS_WORKER_NAME" not in worker["environment"]


def test_airflow_services_share_the_image_and_the_cluster_settings(compose) -> None:
    services = compose["services"]

    for name in AIRFLOW_IMAGE | {d for d in services if d.startswith("frontend-")}:
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
        env = service["environment"]
        assert {k: env.get(k) for k in CLUSTER_SETTINGS} == CLUSTER_SETTINGS, name
        assert env["GOVBUS_REGISTRY_URL"].startswith("postgresql+psycopg://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name


def test_init_applies_the_catalogue_and_creates_the_department_pools(compose) -> None:
    script = compose["services"]["airflow-init"]["command"][-1]

    steps = [line.strip() for line in script.splitlines() if line.strip()]
    assert steps[0] == "set -euo pipefail"
    assert "airflow db migrate" in steps
    assert "govbus registry apply /opt/govbus/resources" in steps
    assert steps[-2:] == [
        "python -m govbus.orchestration pools > /tmp/govbus-pools.json",
        "airflow pools import /tmp/govbus-pools.json",
    ]
    for name, service in compose["services"].items():
        if name not in {"postgres", "redis", "sftp", "airflow-init"}:
            assert service["depends_on"]["airflow-init"] == {
                "condition": "service_completed_successfully"
            }, name


def test_lookup_and_ferry_endpoints(compose) -> None:
    lookup, sftp = compose["services"]["lookup"], compose["services"]["sftp"]

    assert "govbus serve --host 0.0.0.0 --port 8000" in lookup["command"][-1]
    assert sftp["image"].startswith("atmoz/sftp")  # OpenSSH's sshd with internal-sftp
    assert sftp["ports"] == ["2222:22"]
    assert all(v.startswith("./secrets/") for v in sftp["volumes"][:2])


def test_no_secret_is_written_in_the_compose_file(compose) -> None:
    text = (DOCKER / "compose.yaml").read_text()

    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert VARIABLE.fullmatch(value), f"{name}: {key} must come from docker/.env"
            # A URL with credentials takes its password from a variable.
            for password in re.findall(r"://[^:/@]*:([^@]*)@", value):
                assert VARIABLE.fullmatch(password), f"{name}: {key} holds a literal password"
    assert "PRIVATE KEY" not in text


def test_env_example_names_every_secret_and_holds_no_value(compose) -> None:
    lines = [
        line
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    declared = {line.split("=", 1)[0] for line in lines}

    assert all(line.endswith("=") for line in lines), "placeholders only, no values"
    required = {
        m.group(1)
        for s in _strings(compose)
        for m in VARIABLE.finditer(s)
        if not (m.group(2) or "").startswith(":-")
    }
    assert required == declared
    assert ".env" in (DOCKER / ".gitignore").read_text().splitlines()


def test_the_image_is_the_official_airflow_image_of_the_locked_version() -> None:
    lock = (REPO / "requirements.lock").read_text()
    (airflow,) = re.findall(r"^apache-airflow==(\S+)$", lock, flags=re.M)
    dockerfile = (DOCKER / "Dockerfile").read_text()

    (base,) = re.findall(r"^FROM (\S+)$", dockerfile, flags=re.M)
    assert base == f"apache/airflow:{airflow}-python3.11"
    assert "pip install --no-cache-dir -r /opt/govbus/requirements.lock" in dockerfile
    assert "COPY --chown=airflow:0 dags /opt/airflow/dags" in dockerfile
