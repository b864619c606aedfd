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
DOCKERFILE = ROOT / "Dockerfile"

LOCAL_IMAGE = "sponsorflow"
# Two worker versions side by side, a rollout half-way (README "Releasing a workflow change").
WORKERS = ("worker-v1", "worker-v2")
REQUIRED_SERVICES = ("postgres", "temporal", "temporal-ui", "api", *WORKERS, "migrate")
LONG_RUNNING = ("postgres", "temporal", "api", *WORKERS)
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
