"""deploy/kubernetes cannot be applied here (no cluster): check it statically.

Core resources are validated against the official Kubernetes JSON schemas, which the
`kubernetes-validate` package ships (no network), in strict mode (an unknown field is an error),
for the oldest supported Kubernetes version and the newest the package knows. KEDA's resources
are custom resources that no core schema describes: their fields are checked by hand below.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, get_args

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, SecretStr
from typer.main import get_command

from painpath.cli import app
from shared.settings import Settings
from shared.topics import EVENTS

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
NAMESPACE = "painpath"
SECRET_NAME = "painpath-secrets"
CONFIG_NAME = "painpath-config"
IMAGE = "painpath"  # the name kustomize's `images` rewrites
# The oldest Kubernetes release these manifests support, and the newest the schemas cover.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())

SETTINGS = {name.upper(): field for name, field in Settings.model_fields.items()}
# Each service: its web port's setting and the Secret keys it cannot start without.
SERVICES = {
    "gateway": ("GATEWAY_PORT", {"DATABASE_URL", "GATEWAY_API_KEYS", "LOG_PSEUDONYM_KEY"}),
    "classifier": ("CLASSIFIER_PORT", {"DATABASE_URL", "LOG_PSEUDONYM_KEY"}),
    "coordinator": (
        "COORDINATOR_PORT",
        {"DATABASE_URL", "COORDINATOR_TOKENS", "LOG_PSEUDONYM_KEY"},
    ),
}
REPLICAS = {"gateway": 2, "coordinator": 2}  # the classifier's are KEDA's
HTTP_SERVICES = {"gateway", "coordinator"}
DOCKERFILE_UID = int(
    re.search(r"useradd\b.*--uid (\d+)", (ROOT / "deploy" / "Dockerfile").read_text()).group(1)
)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    """The resources a kustomization lists, followed through the directories it names."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    found = []
    for resource in kustomization["resources"]:
        path = directory / resource
        if path.is_dir():
            found += _kustomize(path)
        elif path.is_file():  # a missing one fails test_every_kustomization_resource_exists
            found += _documents(path)
    return found


KUSTOMIZATIONS = sorted(KUBE.rglob("kustomization.yaml"))
MAIN = _kustomize(KUBE)
SETUP = _kustomize(KUBE / "setup")
DEPLOYED = MAIN + [doc for doc in SETUP if doc not in MAIN]
SECRET_EXAMPLE = _documents(KUBE / "secret.example.yaml")
MANIFEST_FILES = sorted(path for path in KUBE.rglob("*.yaml") if path.name != "kustomization.yaml")


def _of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def _one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in _of_kind(documents, kind) if doc["metadata"]["name"] == name]
    return found


DEPLOYMENTS = {service: _one(MAIN, "Deployment", f"painpath-{service}") for service in SERVICES}
JOB = _one(SETUP, "Job", "painpath-setup")
CONFIG = _one(DEPLOYED, "ConfigMap", CONFIG_NAME)["data"]
SCALED_OBJECT = _one(MAIN, "ScaledObject", "painpath-classifier")
WORKLOADS = {**{f"deployment/{s}": d for s, d in DEPLOYMENTS.items()}, "job/setup": JOB}


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(workload)
    return pod.get("initContainers", []) + pod["containers"]


def _main_container(service: str) -> dict[str, Any]:
    (container,) = [c for c in _pod(DEPLOYMENTS[service])["containers"] if c["name"] == service]
    return container


def _env_value(container: dict[str, Any], name: str) -> str | None:
    """A variable's literal value in the container, else in the ConfigMap it loads, else None."""
    for variable in container.get("env", []):
        if variable["name"] == name:
            return variable.get("value")
    for source in container.get("envFrom", []):
        if source.get("configMapRef", {}).get("name") == CONFIG_NAME and name in CONFIG:
            return CONFIG[name]
    return None


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _holds_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(_holds_secret(field.annotation) for field in annotation.model_fields.values())
    return any(_holds_secret(argument) for argument in get_args(annotation))


SECRET_SETTINGS = {name for name, field in SETTINGS.items() if _holds_secret(field.annotation)}


# --- parsing and layout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", MANIFEST_FILES + KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(KUBE))
)
def test_every_file_parses_into_kubernetes_objects(path):
    documents = _documents(path)
    assert documents
    for document in documents:
        assert isinstance(document, dict)
        assert document.get("apiVersion") and document.get("kind"), path
        if document["kind"] != "Kustomization":
            assert document["metadata"]["name"], path


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(KUBE)))
def test_every_kustomization_resource_exists(path):
    kustomization = yaml.safe_load(path.read_text())
    assert kustomization["resources"]
    for resource in kustomization["resources"]:
        target = path.parent / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource


def test_every_manifest_is_deployed_except_the_secret_example():
    listed = set()
    for path in KUSTOMIZATIONS:
        for resource in yaml.safe_load(path.read_text())["resources"]:
            listed.add((path.parent / resource).resolve())
    assert {path.resolve() for path in MANIFEST_FILES} - listed == {
        (KUBE / "secret.example.yaml").resolve()
    }


def test_no_secret_is_deployed_and_the_example_holds_every_secret_setting():
    assert not _of_kind(DEPLOYED, "Secret")
    (secret,) = SECRET_EXAMPLE
    assert secret["kind"] == "Secret"
    assert secret["metadata"] == {**secret["metadata"], "name": SECRET_NAME, "namespace": NAMESPACE}
    assert set(secret["stringData"]) == SECRET_SETTINGS
    assert {
        "DATABASE_URL",
        "GATEWAY_API_KEYS",
        "COORDINATOR_TOKENS",
        "LOG_PSEUDONYM_KEY",
        "KAFKA_SASL_PASSWORD",
    } == SECRET_SETTINGS


def test_everything_is_in_the_one_namespace():
    for path in KUSTOMIZATIONS:
        if path.parent != KUBE / "config":  # included by the two that set it
            assert yaml.safe_load(path.read_text())["namespace"] == NAMESPACE, path
    for document in DEPLOYED + SECRET_EXAMPLE:
        if document["kind"] == "Namespace":
            assert document["metadata"]["name"] == NAMESPACE
        else:
            assert document["metadata"]["namespace"] == NAMESPACE, document["metadata"]["name"]


def test_the_namespace_enforces_the_restricted_pod_security_standard():
    (namespace,) = _of_kind(DEPLOYED, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- the official schemas -------------------------------------------------------------------

CORE_DOCUMENTS = [doc for doc in DEPLOYED + SECRET_EXAMPLE if "keda.sh" not in doc["apiVersion"]]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "document", CORE_DOCUMENTS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_core_resources_validate_against_the_kubernetes_schema(document, version):
    kubernetes_validate.validate(document, version, strict=True)


def test_only_keda_resources_are_custom():
    custom = {(d["apiVersion"], d["kind"]) for d in DEPLOYED if d not in CORE_DOCUMENTS}
    assert custom == {("keda.sh/v1alpha1", "ScaledObject")}


# --- workloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_probes_ask_the_right_port_and_path(service):
    container = _main_container(service)
    port_setting = SERVICES[service][0]
    host_setting = port_setting.replace("_PORT", "_HOST")
    port = int(_env_value(container, port_setting) or SETTINGS[port_setting].default)
    assert port == SETTINGS[port_setting].default
    assert _env_value(container, host_setting) == "0.0.0.0"  # reachable by the kubelet

    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port(container, get["port"]) == port, probe
    if "startupProbe" in container:
        get = container["startupProbe"]["httpGet"]
        assert (get["path"], _port(container, get["port"])) == ("/healthz", port)
    # /readyz takes up to 3 s to report a dead broker or database: do not time out first.
    assert container["readinessProbe"]["timeoutSeconds"] > 3 or service == "classifier"


def _quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return float(number) * units.get(unit, 1)


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_every_container_requests_and_limits_cpu_and_memory(workload):
    for container in _containers(WORKLOADS[workload]):
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = _quantity(resources["requests"][resource])
            assert 0 < request <= _quantity(resources["limits"][resource]), resource


def test_resources_are_sized_per_service():
    expected = {"gateway": ("250m", "512Mi"), "coordinator": ("250m", "512Mi")}
    expected["classifier"] = ("500m", "1Gi")
    for service, (cpu, memory) in expected.items():
        requests = _main_container(service)["resources"]["requests"]
        assert (requests["cpu"], requests["memory"]) == (cpu, memory), service


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_pods_run_as_the_image_user_without_privileges(workload):
    pod = _pod(WORKLOADS[workload])
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    # The Dockerfile's USER is a name: the kubelet cannot check runAsNonRoot without the uid.
    assert context["runAsUser"] == DOCKERFILE_UID
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in _containers(WORKLOADS[workload]):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
        assert "/tmp" in writable  # Python's temporary files
        state_dir = _env_value(container, "PAINPATH_STATE_DIR")
        if state_dir is not None:
            assert any(Path(state_dir).is_relative_to(path) for path in writable), state_dir
    classifier = _main_container("classifier")
    assert _env_value(classifier, "PAINPATH_STATE_DIR") == "/tmp/painpath"  # on the emptyDir


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_pods_stop_gracefully_and_spread(service):
    deployment = DEPLOYMENTS[service]
    pod = _pod(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert pod["terminationGracePeriodSeconds"] == 30
    spread = pod.get("topologySpreadConstraints", [])
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    assert spread or anti
    keys = set()
    for constraint in spread:
        assert _selects(constraint["labelSelector"]["matchLabels"], labels)
        keys.add(constraint["topologyKey"])
    for term in anti.get("preferredDuringSchedulingIgnoredDuringExecution", []):
        assert _selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
        keys.add(term["podAffinityTerm"]["topologyKey"])
    assert "kubernetes.io/hostname" in keys


def test_replica_counts():
    for service, replicas in REPLICAS.items():
        assert DEPLOYMENTS[service]["spec"]["replicas"] == replicas
    # Owned by KEDA's HorizontalPodAutoscaler: `kubectl apply` must not reset it.
    assert "replicas" not in DEPLOYMENTS["classifier"]["spec"]
    # At maxReplicaCount (one pod per partition) a surge pod would get no partition and never
    # be ready: the rollout must replace pods, not add one.
    assert DEPLOYMENTS["classifier"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_disruption_budget_keeps_one_pod_of_each_service(service):
    labels = DEPLOYMENTS[service]["spec"]["template"]["metadata"]["labels"]
    budgets = [
        budget
        for budget in _of_kind(MAIN, "PodDisruptionBudget")
        if _selects(budget["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(budgets) == 1
    assert budgets[0]["spec"]["minAvailable"] == 1
    for other, deployment in DEPLOYMENTS.items():
        if other != service:
            other_labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert not _selects(budgets[0]["spec"]["selector"]["matchLabels"], other_labels)


@pytest.mark.parametrize("service", sorted(HTTP_SERVICES))
def test_services_select_their_deployment_and_its_port(service):
    (svc,) = [
        s for s in _of_kind(MAIN, "Service") if s["metadata"]["name"] == f"painpath-{service}"
    ]
    selected = [
        name
        for name, deployment in DEPLOYMENTS.items()
        if _selects(svc["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    ]
    assert selected == [service]
    container = _main_container(service)
    for port in svc["spec"]["ports"]:
        target = _port(container, port["targetPort"])
        assert target == SETTINGS[SERVICES[service][0]].default


# --- configuration and secrets --------------------------------------------------------------


def test_the_configmap_holds_only_non_secret_settings():
    assert set(CONFIG) <= set(SETTINGS)
    assert not set(CONFIG) & SECRET_SETTINGS
    assert all(isinstance(value, str) for value in CONFIG.values())
    Settings(**{name.lower(): value for name, value in CONFIG.items() if value})  # valid values


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_every_variable_given_to_a_container_is_a_setting(workload):
    for container in _containers(WORKLOADS[workload]):
        names = {variable["name"] for variable in container.get("env", [])}
        assert names <= set(SETTINGS), names - set(SETTINGS)
        assert [s["configMapRef"]["name"] for s in container["envFrom"]] == [CONFIG_NAME]


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_secrets_come_from_the_secret_only(workload):
    for container in _containers(WORKLOADS[workload]):
        given = {}
        for variable in container.get("env", []):
            if variable["name"] in SECRET_SETTINGS:
                assert "value" not in variable, variable["name"]
                reference = variable["valueFrom"]["secretKeyRef"]
                assert (reference["name"], reference["key"]) == (SECRET_NAME, variable["name"])
                given[variable["name"]] = reference.get("optional", False)
        needed = (
            SERVICES[workload.split("/")[1]][1] if workload.startswith("deployment/") else set()
        )
        assert {name for name, optional in given.items() if not optional} >= needed
        assert {"DATABASE_URL", "LOG_PSEUDONYM_KEY"} <= set(given)
        # Absent from the Secret when the cluster takes no SASL: optional everywhere.
        assert given.get("KAFKA_SASL_PASSWORD") is True


def test_kafka_settings_are_consistent():
    protocol = CONFIG["KAFKA_SECURITY_PROTOCOL"]
    assert CONFIG["KAFKA_BOOTSTRAP_SERVERS"]
    if protocol.startswith("SASL"):
        assert CONFIG["KAFKA_SASL_USERNAME"]


# --- commands and images --------------------------------------------------------------------


def _painpath_invocations(command: list[str]) -> list[str]:
    text = command[-1] if command[0] == "sh" else " ".join(command)
    return re.findall(r"painpath ([a-z ]+?)(?: --| &&|$)", text)


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_every_command_a_container_runs_exists(workload):
    cli = get_command(app)
    for container in _containers(WORKLOADS[workload]):
        invocations = _painpath_invocations(container["command"])
        assert invocations
        for invocation in invocations:
            command = cli
            for word in invocation.split():
                assert word in command.commands, invocation
                command = command.commands[word]
            assert not hasattr(command, "commands"), f"{invocation} is a group, not a command"


def test_each_service_runs_its_own_command_and_setup_runs_topics_then_migrations():
    for service in SERVICES:
        assert _painpath_invocations(_main_container(service)["command"]) == [service]
    (container,) = _containers(JOB)
    assert _painpath_invocations(container["command"]) == ["topics create", "db migrate"]
    assert JOB not in MAIN  # a Job's template is immutable: it is re-created per release
    assert _pod(JOB)["restartPolicy"] == "Never"


def test_every_container_runs_the_one_image_and_both_kustomizations_pin_it_alike():
    for workload in WORKLOADS.values():
        for container in _containers(workload):
            assert container["image"] == IMAGE
    images = [
        yaml.safe_load((KUBE / d / "kustomization.yaml").read_text())["images"]
        for d in ("", "setup")
    ]
    assert images[0] == images[1]
    (image,) = images[0]
    assert image["name"] == IMAGE and image["newName"]
    assert image["newTag"] and image["newTag"] != "latest"


# --- KEDA (custom resources: checked by hand) -----------------------------------------------

SCALED_OBJECT_FIELDS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
METRICS_API_TRIGGER_METADATA = {
    "url",
    "format",
    "valueLocation",
    "targetValue",
    "activationTargetValue",
    "unsafeSsl",
    "authMode",
    "aggregateFromKubeServiceEndpoints",
    "aggregationType",
}


def test_the_scaled_object_scales_the_classifier_within_the_events_partitions():
    spec = SCALED_OBJECT["spec"]
    assert set(spec) <= SCALED_OBJECT_FIELDS, set(spec) - SCALED_OBJECT_FIELDS
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": DEPLOYMENTS["classifier"]["metadata"]["name"],
    }
    assert isinstance(spec["minReplicaCount"], int) and isinstance(spec["maxReplicaCount"], int)
    assert 2 == spec["minReplicaCount"] <= spec["maxReplicaCount"] <= EVENTS.partitions
    assert isinstance(spec.get("pollingInterval", 30), int)


def test_the_trigger_reads_the_classifier_groups_lag_from_the_coordinator():
    """KEDA reads the group's status as a whole (what `painpath run` reads too), from the
    coordinator's Service, not the broker: it needs no Kafka credentials."""
    from prometheus_client import CollectorRegistry

    from services.coordinator.classifier_group import ClassifierGroupMonitor
    from shared.consumer_group import Observation, Tracker, judge

    (trigger,) = SCALED_OBJECT["spec"]["triggers"]
    assert trigger["type"] == "metrics-api" and "authenticationRef" not in trigger
    metadata = trigger["metadata"]
    assert set(metadata) <= METRICS_API_TRIGGER_METADATA, (
        set(metadata) - METRICS_API_TRIGGER_METADATA
    )
    assert all(isinstance(value, str) for value in metadata.values())  # map[string]string
    service = _one(MAIN, "Service", "painpath-coordinator")
    port = service["spec"]["ports"][0]["port"]
    base = f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}"
    assert metadata["url"].startswith(base + "/")
    path = metadata["url"][len(base) :]
    monitor = ClassifierGroupMonitor(Settings(_env_file=None), "127.0.0.1:1", CollectorRegistry())
    assert path in {route.path for route in monitor.router().routes}
    assert metadata.get("format", "json") == "json"
    status = judge("g", EVENTS, Observation("Empty", 0, {}, {}, {}), Tracker(), 0, 1)
    assert isinstance(status.as_dict()[metadata["valueLocation"]], int)
    assert float(metadata["targetValue"]) > 0
    fallback = SCALED_OBJECT["spec"]["fallback"]
    assert fallback["failureThreshold"] > 0
    assert SCALED_OBJECT["spec"]["minReplicaCount"] <= fallback["replicas"]
    assert fallback["replicas"] <= SCALED_OBJECT["spec"]["maxReplicaCount"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_autoscaler_behavior_validates_against_the_kubernetes_schema(version):
    spec = SCALED_OBJECT["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    autoscaler = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-painpath-classifier", "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "minReplicas": spec["minReplicaCount"],
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(autoscaler, version, strict=True)


# --- what kustomize renders -----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (built-in kustomize) absent")
@pytest.mark.parametrize("directory", ["", "setup"])
def test_kustomize_renders_valid_namespaced_resources_with_the_pinned_image(directory):
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBE / directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    expected = _kustomize(KUBE / directory)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in documents) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in expected
    )
    (image,) = yaml.safe_load((KUBE / directory / "kustomization.yaml").read_text())["images"]
    for document in documents:
        if "keda.sh" not in document["apiVersion"]:
            kubernetes_validate.validate(document, KUBERNETES_VERSIONS[0], strict=True)
        if document["kind"] in ("Deployment", "Job"):
            for container in _containers(document):
                assert container["image"] == f"{image['newName']}:{image['newTag']}"
