"""docker-compose.yml and the Dockerfile cannot run here (no engine): check them statically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import compose_spec
import pytest
import yaml
from typer.main import get_command

from painpath.cli import app
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PAINPATH_SERVICES = {
    name: service
    for name, service in COMPOSE["services"].items()
    if service.get("image") == "painpath:latest"
}


def test_the_compose_file_is_valid_under_the_compose_specification():
    # YAML anchors and merge keys resolved first, as `docker compose config` does.
    compose_spec.PyCompose.from_json(json.dumps(COMPOSE))


def test_every_dependency_names_a_service():
    services = COMPOSE["services"]
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services) - {name}


def test_every_painpath_service_is_built_from_the_one_dockerfile():
    assert set(PAINPATH_SERVICES) >= {"setup", "gateway", "classifier", "coordinator"}
    for service in PAINPATH_SERVICES.values():
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("name", sorted(PAINPATH_SERVICES))
def test_every_variable_given_to_a_painpath_service_is_a_setting(name):
    settings = {field.upper() for field in Settings.model_fields}

    assert set(PAINPATH_SERVICES[name]["environment"]) <= settings


@pytest.mark.parametrize("name", sorted(PAINPATH_SERVICES))
def test_every_command_a_service_runs_exists(name):
    command = PAINPATH_SERVICES[name]["command"]
    text = command[-1] if command[0] == "sh" else " ".join(command)
    cli = get_command(app)
    invocations = re.findall(r"painpath ([a-z ]+?)(?: --| &&|$)", text)
    assert invocations
    for invocation in invocations:
        command = cli
        for word in invocation.split():
            assert word in command.commands, invocation
            command = command.commands[word]
        assert not hasattr(command, "commands"), f"{invocation} is a group, not a command"


def test_services_wait_for_their_dependencies_to_be_healthy():
    for name, service in PAINPATH_SERVICES.items():
        assert service.get("depends_on"), name
    assert COMPOSE["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_the_dockerfile_copies_only_what_exists():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+(?: \S+)*?) \S+$", dockerfile, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
