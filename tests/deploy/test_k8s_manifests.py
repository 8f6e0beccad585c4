"""Checks of deploy/k8s/: every manifest against the official Kubernetes schemas, offline.

kubernetes-validate (PyPI) ships the OpenAPI-derived JSON schemas of each Kubernetes release and
resolves them from the package, so no cluster and no network are needed. Strict mode rejects unknown
fields, which is what catches a misspelt `readinesProbe` that a cluster would silently drop. Schemas
cannot see how the objects refer to each other, so the cross-references are checked here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import DEPLOY_DIR, missing

try:
    import kubernetes_validate
except ImportError:
    missing("kubernetes-validate", "pip install kubernetes-validate")

K8S_DIR = DEPLOY_DIR / "k8s"
MANIFESTS = sorted(path for path in K8S_DIR.glob("*.yaml") if path.name != "kustomization.yaml")
# The oldest release we claim to support (autoscaling/v2 and policy/v1 are GA well before it) and the
# newest the installed schemas know.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def by_kind() -> dict[str, dict[str, Any]]:
    resources = [resource for path in MANIFESTS for resource in load(path)]
    kinds = {resource["kind"]: resource for resource in resources}
    assert len(kinds) == len(resources), "one object of each kind expected"
    return kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_matches_kubernetes_schema(path: Path, version: str) -> None:
    errors = []
    for resource in load(path):
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            location = ".".join(str(part) for part in error.path)
            errors.append(f"{resource['kind']} against {version}: {location}: {error.message}")
    assert not errors, "\n".join(errors)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load(K8S_DIR / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(path.name for path in MANIFESTS)
    assert [image["name"] for image in kustomization["images"]] == ["eluserve"]


def test_objects_refer_to_each_other() -> None:
    kinds = by_kind()
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names


def test_deployment_follows_the_serving_contract() -> None:
    """What eluserve needs from its pod: probes, no tracking, workers × threads = CPUs, scrape annotations."""
    deployment = by_kind()["Deployment"]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["image"] == "eluserve:latest"
    assert {"name": "BENTOML_DO_NOT_TRACK", "value": "True"} in container["env"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "startupProbe" in container
    cpus = container["resources"]["limits"]["cpu"]
    assert container["resources"]["requests"]["cpu"] == cpus == "2"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert int(env["ELUSERVE_WORKERS"]) * int(env["ELUSERVE_INTRA_OP_THREADS"]) == int(cpus)
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) in {port["containerPort"] for port in container["ports"]}
    hpa = by_kind()["HorizontalPodAutoscaler"]
    assert hpa["spec"]["minReplicas"] >= 2, "with one replica the PodDisruptionBudget blocks every drain"
