"""The scale-out topology of ARCHITECTURE section 9: docker-compose.yml and the Dockerfile, parsed only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDERS = ROOT / "ops" / "grafana" / "provisioning" / "dashboards"
DOCKERFILE = ROOT / "Dockerfile"

LOCAL_IMAGE = "sponsorflow"
# Two worker versions side by side, a rollout half-way (README "Releasing a workflow change").
WORKERS = ("worker-v1", "worker-v2")
REQUIRED_SERVICES = (
    "postgres",
    "temporal",
    "temporal-ui",
    "api",
    *WORKERS,
    "migrate",
    "prometheus",
    "grafana",
)
LONG_RUNNING = ("postgres", "temporal", "api", *WORKERS, "prometheus", "grafana")
APP_SERVICES = ("api", *WORKERS)
PREFIX = "SPONSORFLOW_"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """The `services` mapping of docker-compose.yml, YAML merge keys resolved."""
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    services = compose.get("services")
    assert isinstance(services, dict)
    return services


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever form the file uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def build_context(service: dict[str, Any]) -> str | None:
    """The build context of a service, or None if it only pulls an image."""
    build = service.get("build")
    if isinstance(build, dict):
        return str(build.get("context", "."))
    return None if build is None else str(build)


def test_required_services_exist(services: dict[str, Any]) -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks {missing}"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_a_healthcheck(services: dict[str, Any], name: str) -> None:
    check = services[name].get("healthcheck")
    assert isinstance(check, dict) and check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable"), f"{name} disables its healthcheck"


def test_api_and_worker_share_one_image(services: dict[str, Any]) -> None:
    # worker-v2 is the release built from this checkout; worker-v1 runs the image of the last one.
    api, worker = services["api"], services["worker-v2"]
    assert api.get("image") and api.get("image") == worker.get("image")
    assert build_context(api) is not None
    assert build_context(api) == build_context(worker)


@pytest.mark.parametrize("name", WORKERS)
def test_worker_scales_horizontally(services: dict[str, Any], name: str) -> None:
    worker = services[name]
    assert "container_name" not in worker, "a container_name allows a single replica"
    for port in worker.get("ports", []):
        published = port.get("published") if isinstance(port, dict) else ":" in str(port)
        assert not published, f"a fixed host port ({port}) allows a single replica"
    replicas = (worker.get("deploy") or {}).get("replicas", 1)
    assert replicas > 1


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert build_context(service) is not None, f"{name} has neither image nor build"
            continue
        repo, _, tag = image.rpartition(":")
        if repo == LOCAL_IMAGE and build_context(service) is not None:
            continue
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_connects_as_non_owner_and_to_temporal(services: dict[str, Any], name: str) -> None:
    env = environment(services[name])
    url = env.get("SPONSORFLOW_DATABASE_URL", "")
    assert re.match(r"^postgres(ql)?(\+\w+)?://sponsorflow_app[:@]", url), url
    assert "SPONSORFLOW_MIGRATION_DATABASE_URL" not in env, f"{name} must not hold the owner's login"
    assert env.get("SPONSORFLOW_TEMPORAL_ADDRESS") == "temporal:7233"


def test_sponsorflow_variables_are_settings(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    for name, service in services.items():
        if build_context(service) is None and name not in APP_SERVICES:
            continue
        for var in environment(service):
            if var.startswith(PREFIX):
                assert var[len(PREFIX) :].lower() in fields, f"{name}: {var} is not a Settings field"


def test_dockerfile_is_production_ready() -> None:
    assert DOCKERFILE.exists()
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    froms = [line for line in instructions if line.upper().startswith("FROM ")]
    assert froms and re.match(r"^FROM\s+python:3\.11\S*", froms[-1], re.IGNORECASE), froms
    assert any(line.upper().startswith("HEALTHCHECK ") for line in instructions)
    users = [line.split(None, 1)[1] for line in instructions if line.upper().startswith("USER ")]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"the image runs as {users[-1]}"


# ---------------------------------------------------------------------------- the operations pack


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts from this checkout: {container path: host path}."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if source.startswith("./"):
            mounts[rest.split(":")[0]] = ROOT / source
    return mounts


def test_prometheus_reads_the_ops_config_and_rules(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    mounts = bind_mounts(prometheus)
    config_path = next(
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    )
    assert mounts[config_path] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for rule_file in config["rule_files"]:
        assert rule_file in mounts and mounts[rule_file].exists(), f"{rule_file} is not mounted from ops/"


def test_prometheus_scrapes_the_api_and_every_worker_where_they_serve(services: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    api_env = environment(services["api"])
    (target,) = [t for sc in jobs["sponsorflow-api"]["static_configs"] for t in sc["targets"]]
    assert target == f"api:{api_env['SPONSORFLOW_API_PORT']}"
    path = api_env.get("SPONSORFLOW_API_METRICS_PATH", Settings.model_fields["api_metrics_path"].default)
    assert path and jobs["sponsorflow-api"]["metrics_path"] == path
    # Every service running `sponsorflow worker` is a DNS name of the worker job, on its metrics port.
    workers = [name for name, svc in services.items() if svc.get("command") == ["sponsorflow", "worker"]]
    assert sorted(workers) == sorted(WORKERS)
    (dns,) = jobs["sponsorflow-worker"]["dns_sd_configs"]
    assert sorted(dns["names"]) == sorted(workers)
    for name in workers:
        address = environment(services[name]).get("SPONSORFLOW_WORKER_METRICS_ADDRESS", "")
        host, _, port = address.rpartition(":")
        assert host == "0.0.0.0", f"{name} serves its metrics on {address!r}: unreachable from prometheus"
        assert int(port) == dns["port"], name


def test_grafana_is_provisioned_from_ops(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == ROOT / "ops" / "grafana" / "provisioning"
    for path in sorted(GRAFANA_DASHBOARD_PROVIDERS.glob("*.yml")):
        for provider in yaml.safe_load(path.read_text())["providers"]:
            folder = mounts[provider["options"]["path"]]
            assert sorted(folder.glob("*.json")), f"no dashboard in {folder}"
    env = environment(grafana)
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${"), (
        "Grafana's admin password must come from the shell"
    )
    assert "prometheus" in grafana.get("depends_on", {})
