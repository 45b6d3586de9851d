"""deploy/kubernetes: every manifest validates against the Kubernetes schemas (kubernetes-validate's bundled,
offline copies), and the pieces fit together (names, secrets, probes, GPU, drain time).

KEDA's resources are custom: no bundled schema, so their fields are checked here by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reimagine.config import Settings

K8S = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
#: the oldest Kubernetes the manifests promise to work on (policy/v1 PDBs, autoscaling/v2 by KEDA)
KUBERNETES_VERSION = "1.29.0"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_validates_against_the_kubernetes_schema(path: str) -> None:
    for doc in _documents(K8S / path):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: test_keda_scales_the_worker_deployment_on_queue_depth
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_examples_and_the_one_off_job() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml", "models-pull.yaml"}
    assert listed == present


def _pod(resources: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = resources[("Deployment", name)]["spec"]["template"]["spec"]
    return spec


def test_api_probes_health_and_workers_drain_for_the_longest_job() -> None:
    resources = _all()
    api = _pod(resources, "reimagine-api")["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert api["args"][:3] == ["serve", "--workers", "0"]

    worker_pod = _pod(resources, "reimagine-worker")
    worker = worker_pod["containers"][0]
    assert worker["args"][0] == "worker"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert {"/hf", "/data/compile-cache"} <= mounts
    # The worker's own drain lets the longest job finish, and ends before the pod is killed.
    drain_s = float(worker["args"][worker["args"].index("--drain-grace-s") + 1])
    assert Settings().sync_timeout_s <= drain_s < worker_pod["terminationGracePeriodSeconds"]
    assert ("PodDisruptionBudget", "reimagine-api") in resources
    assert ("PodDisruptionBudget", "reimagine-worker") in resources


def test_every_reference_names_something_defined() -> None:
    resources = _all()
    secret_keys = set(resources[("Secret", "reimagine-env")]["stringData"])
    assert "REIMAGINE_DATABASE_URL" in secret_keys
    for kind, name in resources:
        if kind not in ("Deployment", "Job"):
            continue
        pod = resources[(kind, name)]["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in resources
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in resources
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == "reimagine-env"
    # Every REIMAGINE_* variable of the ConfigMap and the Secret is a setting.
    config = resources[("ConfigMap", "reimagine-config")]["data"]
    for variable in [*config, *secret_keys]:
        if variable.startswith("REIMAGINE_"):
            assert variable.removeprefix("REIMAGINE_").lower() in Settings.model_fields, variable


def test_keda_scales_the_worker_deployment_on_queue_depth() -> None:
    resources = _all()
    scaled = resources[("ScaledObject", "reimagine-worker")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in resources
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql" and "FROM jobs" in trigger["metadata"]["query"]
    auth = resources[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    (target,) = auth["spec"]["secretTargetRef"]
    assert target["parameter"] == "connection" and target["key"] in resources[("Secret", "reimagine-env")]["stringData"]
