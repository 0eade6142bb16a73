"""Offline checks of everything under deploy/ and of the service Dockerfiles.

No cluster, no network, no Docker. What is checked:

- Kustomize (deploy/k8s): every resource file, and every kustomization that
  is not a component (base/ and the tests/ combinations) rendered by a small
  in-test Kustomize (only the features the tree uses; anything else fails
  loudly). Where ``kubectl`` exists, ``kubectl kustomize`` must render the very
  same objects, which keeps the small renderer honest.
- Helm (deploy/helm/livedesk): values.yaml against values.schema.json, a
  strict schema, a ``## @param`` for every value and a value for every
  ``## @param``. Where the ``helm-python-sdk`` package is installed (Helm's own
  Go engine, no helm binary needed), the chart is linted and rendered with
  several sets of values, and the output checked like the Kustomize output.
- Every rendered object is validated against the Kubernetes OpenAPI schema of
  the newest version ``kubernetes-validate`` ships, in strict mode (unknown
  fields fail); every Deployment has probes, requests and limits, a non-root
  locked-down securityContext and selector labels that its pods carry; every
  Service, HPA, PDB, NetworkPolicy and reference points at something real;
  every CronJob runs one at a time, bounded, in the same locked-down pods; a
  claim that several pods mount is ReadWriteMany; chat's archive CronJob runs
  ``archive`` with the chat image, env sources, settings and archive volume
  (or, in S3 mode, the same S3 settings and credentials and no volume).
- services/*/Dockerfile: the build and runtime rules, and ports that agree
  with the manifests.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

# No type stubs for jsonschema in the dev group: use it untyped.
jsonschema: Any = importlib.import_module("jsonschema")

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
CHART = REPO / "deploy" / "helm" / "livedesk"
K8S_VERSION = kubernetes_validate.latest_version()

SERVICES: dict[str, dict[str, int]] = {
    "chat": {"http": 8000},
    "assignment": {"http": 8001, "grpc": 50051},
    "analytics": {"http": 8002},
}
#: Labels whose value changes over a release's life: never in a selector.
MUTABLE_LABELS = {"app.kubernetes.io/version", "helm.sh/chart", "app.kubernetes.io/managed-by"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


# --------------------------------------------------------------------------
# Loading and schema validation
# --------------------------------------------------------------------------


def load_docs(text: str) -> list[Obj]:
    """All non-empty YAML documents of a stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def describe(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_k8s(obj: Obj, where: str) -> None:
    """Validate one object against the Kubernetes schema, strictly."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        problem = f"invalid for Kubernetes {K8S_VERSION}: {path}: {exc.message}"
        pytest.fail(f"{where}: {describe(obj)} is {problem}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{where}: {describe(obj)}: {exc.message}")


# --------------------------------------------------------------------------
# Rules every rendered set of objects must follow
# --------------------------------------------------------------------------


def pod_template(obj: Obj) -> Obj:
    """The pod template of a workload (a CronJob's is inside its job template)."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    template: Obj = spec["template"]
    return template


def container_problems(pod_spec: Obj, who: str, *, probes: bool) -> list[str]:
    """Security, resources and (for services) probes of every container."""
    problems: list[str] = []
    pod_sc = pod_spec.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append(f"{who}: pod securityContext.runAsNonRoot is not true")
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{who}: pod seccompProfile is not RuntimeDefault")
    if pod_spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{who}: automountServiceAccountToken is not false")
    for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        where = f"{who} container {container['name']}"
        sc = container.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged", False):
            problems.append(f"{where}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities.drop is not [ALL]")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        if sc.get("runAsUser") == 0 or pod_sc.get("runAsUser") == 0:
            problems.append(f"{where}: runs as uid 0")
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(section, {}):
                    problems.append(f"{where}: no resources.{section}.{resource}")
        image = str(container.get("image", ""))
        if not image or image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
            problems.append(f"{where}: image {image!r} has no pinned tag")
        if probes:
            problems += probe_problems(container, where)
    return problems


def probe_problems(container: Obj, where: str) -> list[str]:
    problems: list[str] = []
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    port_names = {p.get("name") for p in container.get("ports", [])}
    for probe_name, path in expected.items():
        probe = container.get(probe_name)
        if probe is None:
            problems.append(f"{where}: no {probe_name}")
            continue
        http_get = probe.get("httpGet", {})
        if http_get.get("path") != path:
            problems.append(f"{where}: {probe_name} does not GET {path}")
        port = http_get.get("port")
        if isinstance(port, str) and port not in port_names:
            problems.append(f"{where}: {probe_name} uses unknown port name {port!r}")
    if "lifecycle" in container and "preStop" in container["lifecycle"]:
        problems.append(f"{where}: has a preStop hook (the services stop gracefully on SIGTERM)")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    http_ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == "http"]
    if env.get("PORT") is None or [int(env["PORT"])] != http_ports:
        problems.append(f"{where}: env PORT does not match the container port named http")
    return problems


def deployment_problems(obj: Obj) -> list[str]:
    """The runtime contract of a LiveDesk service Deployment."""
    who = describe(obj)
    problems: list[str] = []
    spec = obj["spec"]
    template = pod_template(obj)
    selector = spec["selector"].get("matchLabels", {})
    template_labels = template["metadata"].get("labels", {})
    if not selector:
        problems.append(f"{who}: empty selector")
    if not set(selector.items()) <= set(template_labels.items()):
        problems.append(
            f"{who}: selector {selector} is not a subset of the pod labels {template_labels}"
        )
    if set(selector) & MUTABLE_LABELS:
        problems.append(
            f"{who}: selector carries mutable labels {sorted(set(selector) & MUTABLE_LABELS)}"
        )
    for key in (
        "app.kubernetes.io/name",
        "app.kubernetes.io/component",
        "app.kubernetes.io/part-of",
    ):
        if key not in template_labels or key not in obj["metadata"].get("labels", {}):
            problems.append(f"{who}: label {key} missing on the Deployment or its pods")
    pod_spec = template["spec"]
    if pod_spec.get("terminationGracePeriodSeconds") != 30:
        problems.append(f"{who}: terminationGracePeriodSeconds is not 30")
    problems += container_problems(pod_spec, who, probes=True)
    mounts = {m["mountPath"] for c in pod_spec["containers"] for m in c.get("volumeMounts", [])}
    if "/tmp" not in mounts:
        problems.append(f"{who}: no writable /tmp next to the read-only root filesystem")
    # Embedded chDB (a PVC-backed CHDB_PATH) means exactly one pod, never two at once.
    claims = {v["name"] for v in pod_spec.get("volumes", []) if "persistentVolumeClaim" in v}
    chdb_on_claim = any(
        mount["name"] in claims
        and mount["mountPath"]
        in [e.get("value") for e in c.get("env", []) if e["name"] == "CHDB_PATH"]
        for c in pod_spec["containers"]
        for mount in c.get("volumeMounts", [])
    )
    if chdb_on_claim:
        if spec.get("replicas") != 1:
            problems.append(f"{who}: mounts a PersistentVolumeClaim but replicas is not 1")
        if spec.get("strategy", {}).get("type") != "Recreate":
            problems.append(f"{who}: mounts a PersistentVolumeClaim but strategy is not Recreate")
    return problems


def cronjob_problems(obj: Obj) -> list[str]:
    """A LiveDesk CronJob: one run at a time, bounded, and the same locked-down pods."""
    who = describe(obj)
    problems: list[str] = []
    spec = obj["spec"]
    job = spec["jobTemplate"]["spec"]
    if spec.get("concurrencyPolicy") != "Forbid":
        problems.append(f"{who}: concurrencyPolicy is not Forbid (slow runs would pile up)")
    if not job.get("activeDeadlineSeconds"):
        problems.append(f"{who}: no activeDeadlineSeconds (a stuck run would block every next one)")
    if "backoffLimit" not in job:
        problems.append(f"{who}: no explicit backoffLimit")
    template = pod_template(obj)
    for key in (
        "app.kubernetes.io/name",
        "app.kubernetes.io/component",
        "app.kubernetes.io/part-of",
    ):
        if key not in template["metadata"].get("labels", {}) or key not in obj["metadata"].get(
            "labels", {}
        ):
            problems.append(f"{who}: label {key} missing on the CronJob or its pods")
    pod_spec = template["spec"]
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        problems.append(f"{who}: restartPolicy is not Never or OnFailure")
    problems += container_problems(pod_spec, who, probes=False)
    mounts = {m["mountPath"] for c in pod_spec["containers"] for m in c.get("volumeMounts", [])}
    if "/tmp" not in mounts:
        problems.append(f"{who}: no writable /tmp next to the read-only root filesystem")
    return problems


def effective_env(container: Obj, configmaps: list[Obj]) -> dict[str, str]:
    """Plain environment of a container: envFrom ConfigMaps, then env values."""
    env: dict[str, str] = {}
    data = {cm["metadata"]["name"]: cm.get("data", {}) for cm in configmaps}
    for source in container.get("envFrom", []):
        env.update(data.get(source.get("configMapRef", {}).get("name"), {}))
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def matches(selector: Obj, labels: Obj) -> bool:
    """Does a LabelSelector (matchLabels and matchExpressions) select these labels?"""
    if not set(selector.get("matchLabels", {}).items()) <= set(labels.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def shared_claim_problems(workloads: list[Obj], claims: list[Obj]) -> list[str]:
    """A rendered claim that several pods mount at once must be ReadWriteMany.

    Several pods: a Deployment that may run more than one (replicas above 1,
    or none set because an autoscaler owns it), or more than one workload.
    ReadWriteOnce would hold only while all of them share a node.
    """
    users: dict[str, list[Obj]] = {}
    for workload in workloads:
        for volume in pod_template(workload)["spec"].get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                users.setdefault(claim, []).append(workload)
    problems = []
    for claim in claims:
        name = claim["metadata"]["name"]
        mounted_by = users.get(name, [])
        several = len(mounted_by) > 1 or any(
            w["kind"] == "Deployment" and w["spec"].get("replicas", 2) > 1 for w in mounted_by
        )
        if several and "ReadWriteMany" not in claim["spec"]["accessModes"]:
            who = ", ".join(describe(w) for w in mounted_by)
            problems.append(
                f"{describe(claim)}: mounted by several pods ({who}) but not ReadWriteMany"
            )
    return problems


def check_objects(objs: list[Obj], where: str, *, external: Collection[str] = ()) -> None:
    """Schema-validate a rendered set and check it hangs together.

    ``external``: names of Secrets and PersistentVolumeClaims that the operator
    creates beside this set; every other reference must resolve inside it.
    """
    assert objs, f"{where}: nothing rendered"
    for obj in objs:
        validate_k8s(obj, where)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"{where}: duplicate objects {duplicates}"

    by_kind: dict[str, list[Obj]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    names = {kind: {o["metadata"]["name"] for o in items} for kind, items in by_kind.items()}
    deployments = by_kind.get("Deployment", [])
    cronjobs = by_kind.get("CronJob", [])
    problems: list[str] = []
    hook_pods = [
        o for o in by_kind.get("Pod", []) if "helm.sh/hook" in o["metadata"].get("annotations", {})
    ]

    for cronjob in cronjobs:
        problems += cronjob_problems(cronjob)
    for deploy in deployments:
        problems += deployment_problems(deploy)
    for deploy in deployments + cronjobs:
        pod_spec = pod_template(deploy)["spec"]
        sa = pod_spec.get("serviceAccountName", "default")
        if sa != "default" and sa not in names.get("ServiceAccount", set()):
            problems.append(f"{describe(deploy)}: ServiceAccount {sa} is not rendered")
        for volume in pod_spec.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if (
                claim
                and claim not in names.get("PersistentVolumeClaim", set())
                and claim not in external
            ):
                problems.append(
                    f"{describe(deploy)}: PersistentVolumeClaim {claim} is not rendered"
                )
        for container in pod_spec["containers"]:
            env = effective_env(container, by_kind.get("ConfigMap", []))
            if deploy["kind"] == "Deployment" and env.get("HOST") != "0.0.0.0":
                problems.append(
                    f"{describe(deploy)}: HOST is not 0.0.0.0 (the default is loopback)"
                )
            grace = pod_spec.get("terminationGracePeriodSeconds", 30)
            if not float(env.get("SHUTDOWN_TIMEOUT", 10)) < grace:
                problems.append(
                    f"{describe(deploy)}: SHUTDOWN_TIMEOUT is not below the grace period"
                )
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef", {})
                secret = ref.get("name")
                if (
                    secret
                    and not ref.get("optional")
                    and secret not in names.get("Secret", set())
                    and secret not in external
                ):
                    problems.append(
                        f"{describe(deploy)}: {var['name']} from Secret {secret}, "
                        "neither rendered nor external"
                    )
            for source in container.get("envFrom", []):
                cm = source.get("configMapRef", {}).get("name")
                if cm and cm not in names.get("ConfigMap", set()):
                    problems.append(f"{describe(deploy)}: ConfigMap {cm} is not rendered")
                secret = source.get("secretRef", {}).get("name")
                if secret and secret not in names.get("Secret", set()) and secret not in external:
                    problems.append(
                        f"{describe(deploy)}: Secret {secret} is neither rendered nor external"
                    )

    problems += shared_claim_problems(
        deployments + cronjobs, by_kind.get("PersistentVolumeClaim", [])
    )

    def selected(selector: Obj) -> list[Obj]:
        return [
            d
            for d in deployments
            if matches(selector, pod_template(d)["metadata"].get("labels", {}))
        ]

    for service in by_kind.get("Service", []):
        for cronjob in cronjobs:
            if matches(
                {"matchLabels": service["spec"].get("selector", {})},
                pod_template(cronjob)["metadata"].get("labels", {}),
            ):
                problems.append(f"{describe(service)}: selects the pods of {describe(cronjob)}")
        targets = selected({"matchLabels": service["spec"].get("selector", {})})
        if len(targets) != 1:
            problems.append(f"{describe(service)}: selects {len(targets)} Deployments")
            continue
        container_ports = {
            p.get("name")
            for c in pod_template(targets[0])["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            if (
                isinstance(port.get("targetPort"), str)
                and port["targetPort"] not in container_ports
            ):
                problems.append(
                    f"{describe(service)}: targetPort {port['targetPort']} is not a container port"
                )
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if len(selected(pdb["spec"]["selector"])) != 1:
            problems.append(f"{describe(pdb)}: does not select exactly one Deployment")
    for policy in by_kind.get("NetworkPolicy", []):
        if not selected(policy["spec"]["podSelector"]):
            problems.append(f"{describe(policy)}: selects no LiveDesk pod")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        target = [
            d
            for d in deployments
            if d["metadata"]["name"] == ref["name"] and ref["kind"] == "Deployment"
        ]
        if not target:
            problems.append(f"{describe(hpa)}: scale target {ref['name']} is not rendered")
        elif "replicas" in target[0]["spec"]:
            problems.append(
                f"{describe(hpa)}: its Deployment still sets replicas (apply would fight the HPA)"
            )
        if hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
            problems.append(f"{describe(hpa)}: minReplicas > maxReplicas")
    for pod in hook_pods:
        problems += container_problems(pod["spec"], describe(pod), probes=False)
    assert not problems, f"{where}:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------
# A minimal Kustomize: exactly the features deploy/k8s uses
# --------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "labels",
    "images",
    "patches",
}


class UnsupportedKustomizeFeatureError(Exception):
    """deploy/k8s uses a Kustomize feature that this file does not implement."""


def read_kustomization(directory: Path) -> Obj:
    kustomization: Obj = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise UnsupportedKustomizeFeatureError(
            f"{directory}: {sorted(unknown)}: teach the minimal Kustomize in {Path(__file__).name}"
        )
    return kustomization


def kustomize_build(directory: Path) -> list[Obj]:
    """Build a Kustomization the way ``kubectl kustomize`` does."""
    return build_level(directory, [], {})


def build_level(directory: Path, accumulated: list[Obj], renames: dict[str, str]) -> list[Obj]:
    """Build a Kustomization, or apply a Component on top of ``accumulated``.

    Follows Kustomize's order: resources, then components, then this
    kustomization's generators, then its transformers. ``renames`` collects
    generated ConfigMap names (name -> name-hash) of the whole build: an
    object a component adds above the base refers to the base's ConfigMap by
    its plain name, and Kustomize resolves that too.
    """
    kustomization = read_kustomization(directory)
    objs = list(accumulated)
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            if read_kustomization(path)["kind"] != "Kustomization":
                raise UnsupportedKustomizeFeatureError(f"{path}: a Component listed as a resource")
            objs += build_level(path, [], renames)
        else:
            objs += load_docs(path.read_text())
    for entry in kustomization.get("components", []):
        path = directory / entry
        if read_kustomization(path)["kind"] != "Component":
            raise UnsupportedKustomizeFeatureError(f"{path}: listed as a component but is not one")
        objs = build_level(path, objs, renames)
    for generator in kustomization.get("configMapGenerator", []):
        configmap = generate_configmap(generator)
        renames[generator["name"]] = configmap["metadata"]["name"]
        objs.append(configmap)
    for entry in kustomization.get("labels", []):
        add_labels(objs, entry)
    for entry in kustomization.get("images", []):
        set_image(objs, entry)
    for entry in kustomization.get("patches", []):
        apply_patch(objs, entry)
    rename_configmap_references(objs, renames)
    return objs


def generate_configmap(generator: Obj) -> Obj:
    if set(generator) - {"name", "literals"}:
        raise UnsupportedKustomizeFeatureError(
            f"configMapGenerator {generator}: only name and literals"
        )
    data = dict(literal.split("=", 1) for literal in generator.get("literals", []))
    # Kustomize's hash suffix (api/hasher): sha256 of the JSON of kind, name and
    # data, first 10 hex digits with 0,1,3,a,e mapped to g,h,k,m,t. Kustomize 5
    # looks up the name with a path that finds nothing, so it hashes "".
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True, separators=(",", ":")
    )
    suffix = (
        hashlib.sha256(encoded.encode()).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{generator['name']}-{suffix}"},
        "data": data,
    }


def add_labels(objs: list[Obj], entry: Obj) -> None:
    if entry.get("includeSelectors") or set(entry) - {
        "pairs",
        "includeSelectors",
        "includeTemplates",
    }:
        raise UnsupportedKustomizeFeatureError(f"labels {entry}: only pairs and includeTemplates")
    for obj in objs:
        obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
        if entry.get("includeTemplates") and obj["kind"] in WORKLOAD_KINDS:
            pod_template(obj).setdefault("metadata", {}).setdefault("labels", {}).update(
                entry["pairs"]
            )


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of an image reference (a registry may have a :port)."""
    name, _, digest = image.partition("@")
    repo_start = name.rfind("/") + 1
    tag = None
    if ":" in name[repo_start:]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def set_image(objs: list[Obj], entry: Obj) -> None:
    if set(entry) - {"name", "newName", "newTag", "digest"}:
        raise UnsupportedKustomizeFeatureError(f"images {entry}")
    for obj in objs:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_template(obj)["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            name, tag, digest = split_image(container["image"])
            if name != entry["name"]:
                continue
            name = entry.get("newName", name)
            tag = str(entry["newTag"]) if "newTag" in entry else tag
            digest = entry.get("digest", digest)
            container["image"] = (
                name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            )


def apply_patch(objs: list[Obj], entry: Obj) -> None:
    target = entry.get("target", {})
    if set(entry) - {"target", "patch"} or set(target) - {"group", "version", "kind", "name"}:
        raise UnsupportedKustomizeFeatureError(
            f"patches {entry}: only inline JSON 6902 with a simple target"
        )
    operations = yaml.safe_load(entry["patch"])
    if not isinstance(operations, list):
        raise UnsupportedKustomizeFeatureError(
            f"patches {entry}: strategic merge patches are not supported"
        )
    hits = 0
    for obj in objs:
        group, _, version = obj["apiVersion"].rpartition("/")
        wanted = {
            "group": group,
            "version": version,
            "kind": obj["kind"],
            "name": obj["metadata"]["name"],
        }
        if all(target[key] == wanted[key] for key in target):
            hits += 1
            for operation in operations:
                json_patch(obj, operation)
    if not hits:
        raise AssertionError(f"patch target {target} matches nothing")


def json_patch(doc: Obj, operation: Obj) -> None:
    """Apply one RFC 6902 add, remove or replace operation in place."""
    op, path = operation["op"], operation["path"]
    if op not in {"add", "remove", "replace"}:
        raise UnsupportedKustomizeFeatureError(f"JSON patch op {op}")
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")
    ]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "remove":
            del node[index]
        elif op == "replace":
            node[index] = copy.deepcopy(operation["value"])
        else:
            node.insert(index, copy.deepcopy(operation["value"]))
    elif op == "remove":
        del node[last]
    else:
        if op == "replace" and last not in node:
            raise AssertionError(f"replace of missing {path}")
        node[last] = copy.deepcopy(operation["value"])


def rename_configmap_references(objs: list[Obj], renames: dict[str, str]) -> None:
    for obj in objs:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_template(obj)["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref and ref["name"] in renames:
                    ref["name"] = renames[ref["name"]]
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["name"] in renames:
                    ref["name"] = renames[ref["name"]]
        for volume in spec.get("volumes", []):
            ref = volume.get("configMap")
            if ref and ref["name"] in renames:
                ref["name"] = renames[ref["name"]]


# --------------------------------------------------------------------------
# Kustomize tests
# --------------------------------------------------------------------------


def kustomization_dirs(kind: str) -> list[Path]:
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text())["kind"] == kind:
            found.append(path.parent)
    return found


BUILDS = kustomization_dirs("Kustomization")
COMPONENTS = kustomization_dirs("Component")
RESOURCE_FILES = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_tree_has_base_components_and_combinations() -> None:
    assert K8S / "base" in BUILDS
    assert {p.name for p in COMPONENTS} >= {"archive", "hpa", "network-policies", "pdb"}
    assert any(p.parent == K8S / "tests" for p in BUILDS), "no tests/ combinations"
    assert (K8S / "README.md").is_file()


@pytest.mark.parametrize("path", RESOURCE_FILES, ids=rel)
def test_resource_file_is_valid_kubernetes(path: Path) -> None:
    docs = load_docs(path.read_text())
    assert docs, f"{rel(path)} is empty"
    for doc in docs:
        validate_k8s(doc, rel(path))


@pytest.mark.parametrize("component", COMPONENTS, ids=rel)
def test_component_is_documented_and_rendered_by_a_combination(component: Path) -> None:
    assert (component / "README.md").is_file(), f"{rel(component)} has no README.md"
    users = [
        b
        for b in BUILDS
        if component in [(b / c).resolve() for c in read_kustomization(b).get("components", [])]
    ]
    assert users, f"no kustomization under deploy/k8s/tests uses {rel(component)}"


@pytest.mark.parametrize("build", BUILDS, ids=rel)
def test_kustomization_renders_valid_objects(build: Path) -> None:
    objs = kustomize_build(build)
    check_objects(objs, rel(build), external={f"{name}-secrets" for name in SERVICES})
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    assert set(deployments) == set(SERVICES)
    for name, ports in SERVICES.items():
        container = pod_template(deployments[name])["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == ports
        assert container["image"] == f"livedesk/{name}:0.1.0"
        secrets = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        assert secrets == [f"{name}-secrets"], "secrets come from a Secret per service"
    for obj in objs:
        assert obj["metadata"]["labels"].get("app.kubernetes.io/part-of") == "livedesk", describe(
            obj
        )


def test_base_runs_analytics_as_one_chdb_pod_on_a_volume() -> None:
    objs = kustomize_build(K8S / "base")
    analytics = next(
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "analytics"
    )
    assert analytics["spec"]["replicas"] == 1
    assert analytics["spec"]["strategy"] == {"type": "Recreate"}
    container = pod_template(analytics)["spec"]["containers"][0]
    chdb_path = {e["name"]: e.get("value") for e in container["env"]}["CHDB_PATH"]
    data_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == chdb_path)
    volume = next(
        v for v in pod_template(analytics)["spec"]["volumes"] if v["name"] == data_mount["name"]
    )
    assert volume["persistentVolumeClaim"]["claimName"] == "analytics-data"


def test_hpa_component_scales_chat_and_assignment() -> None:
    objs = kustomize_build(K8S / "tests" / "with-hpa")
    hpas = {
        o["spec"]["scaleTargetRef"]["name"]: o
        for o in objs
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    assert set(hpas) == {"chat", "assignment"}
    metric = hpas["chat"]["spec"]["metrics"][0]
    assert metric["resource"]["name"] == "cpu"


def archive_job_problems(objs: list[Obj]) -> list[str]:
    """The chat archive CronJob runs ``archive`` like a chat pod would.

    Same image, ServiceAccount, env sources (ConfigMap and Secrets) and chat
    settings as the chat Deployment, and the same archive: ARCHIVE_URL names
    the path where both mount the same claim, or the same S3 store (with the
    same ARCHIVE_S3_* and credentials, as chat env), which neither mounts.
    """

    def component(obj: Obj) -> str:
        value: str = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        return value

    chat = [o for o in objs if o["kind"] == "Deployment" and component(o) == "chat"]
    jobs = [o for o in objs if o["kind"] == "CronJob" and component(o) == "chat-archive"]
    if len(chat) != 1 or len(jobs) != 1:
        return [f"{len(chat)} chat Deployments and {len(jobs)} archive CronJobs"]
    chat_pod, job_pod = pod_template(chat[0])["spec"], pod_template(jobs[0])["spec"]
    server, job = chat_pod["containers"][0], job_pod["containers"][0]
    problems = []
    # No command: the image's ENTRYPOINT, python -m livedesk.chat (Dockerfile test).
    if "command" in job or job.get("args") != ["archive"]:
        problems.append(
            f"runs {job.get('command')} {job.get('args')}, not the image with `archive`"
        )
    for field in ("image", "imagePullPolicy", "envFrom", "securityContext"):
        if job.get(field) != server.get(field):
            problems.append(f"{field} differs: {job.get(field)} != {server.get(field)}")
    for field in ("serviceAccountName", "securityContext", "imagePullSecrets"):
        if job_pod.get(field) != chat_pod.get(field):
            problems.append(f"pod {field} differs")
    job_env = {e["name"]: e for e in job.get("env", [])}
    missing = [
        e for e in server.get("env", []) if e["name"] != "PORT" and job_env.get(e["name"]) != e
    ]
    if missing:
        problems.append(f"chat env missing from the job: {missing}")
    for key in ("ARCHIVE_AFTER_DAYS", "ARCHIVE_BATCH_SIZE"):
        if key not in job_env:
            problems.append(f"job env has no {key}")

    def archive_claim(pod_spec: Obj, container: Obj) -> str | None:
        """The claim mounted at a file:/// ARCHIVE_URL, or the s3:// URL itself."""
        url = next(
            (e.get("value") for e in container.get("env", []) if e["name"] == "ARCHIVE_URL"), ""
        )
        if url and url.startswith("s3://"):
            mounted = [m["mountPath"] for m in container.get("volumeMounts", [])]
            return url if mounted == ["/tmp"] else None
        if not url or not url.startswith("file:///"):
            return None
        mount = next(
            (m for m in container.get("volumeMounts", []) if m["mountPath"] == url[7:]), None
        )
        volume: Obj = next(
            (v for v in pod_spec["volumes"] if mount and v["name"] == mount["name"]), {}
        )
        claim: str | None = volume.get("persistentVolumeClaim", {}).get("claimName")
        return claim

    claims = archive_claim(chat_pod, server), archive_claim(job_pod, job)
    if claims[0] is None or claims[0] != claims[1]:
        problems.append(
            f"ARCHIVE_URL is not the same mounted claim (or unmounted S3 store) in chat and the "
            f"job: {claims}"
        )
    return problems


ARCHIVE_BUILDS = [
    b for b in BUILDS if "../../components/archive" in read_kustomization(b).get("components", [])
]


def test_the_archive_component_is_rendered() -> None:
    assert K8S / "tests" / "with-archive" in ARCHIVE_BUILDS
    assert K8S / "tests" / "all-components" in ARCHIVE_BUILDS
    assert not [o for o in kustomize_build(K8S / "base") if o["kind"] == "CronJob"]


@pytest.mark.parametrize("build", ARCHIVE_BUILDS, ids=rel)
def test_archive_cronjob_runs_archive_in_a_chat_pod(build: Path) -> None:
    objs = kustomize_build(build)
    assert archive_job_problems(objs) == []
    cronjob = next(o for o in objs if o["kind"] == "CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cronjob["spec"]["schedule"].split()) == 5
    claim = next(
        o
        for o in objs
        if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == "chat-archive"
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # The chat image's entrypoint, which `args: [archive]` extends.
    assert dockerfile_stages("chat")[-1][-1] == 'ENTRYPOINT ["python", "-m", "livedesk.chat"]'


def test_archive_rules_catch_a_job_that_drifts_from_chat() -> None:
    """The checks above fail on the mistakes they exist for."""
    good = kustomize_build(K8S / "tests" / "with-archive")

    def broken(change: Any) -> list[Obj]:
        objs = copy.deepcopy(good)
        change(objs)
        return objs

    def job(objs: list[Obj]) -> Obj:
        container: Obj = pod_template(next(o for o in objs if o["kind"] == "CronJob"))["spec"][
            "containers"
        ][0]
        return container

    def claim(objs: list[Obj]) -> Obj:
        return next(
            o
            for o in objs
            if o["metadata"]["name"] == "chat-archive" and o["kind"] == "PersistentVolumeClaim"
        )

    mistakes = {
        "other secret": lambda objs: job(objs)["envFrom"][1]["secretRef"].update(name="x"),
        "other image": lambda objs: job(objs).update(image="livedesk/chat:0.0.9"),
        "serves instead": lambda objs: job(objs).update(args=[]),
        "no hot cache env": lambda objs: job(objs)["env"].pop(0),
        "other archive path": lambda objs: job(objs)["volumeMounts"][1].update(mountPath="/x"),
    }
    for what, change in mistakes.items():
        assert archive_job_problems(broken(change)), what
    single_node = broken(lambda objs: claim(objs)["spec"].update(accessModes=["ReadWriteOnce"]))
    problems = shared_claim_problems(
        [o for o in single_node if o["kind"] in ("Deployment", "CronJob")],
        [o for o in single_node if o["kind"] == "PersistentVolumeClaim"],
    )
    assert [p for p in problems if "chat-archive" in p]


def kubectl_kustomize(build: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: rendered with the minimal Kustomize only")
    result = subprocess.run(
        [kubectl, "kustomize", str(build)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return load_docs(result.stdout)


@pytest.mark.parametrize("build", BUILDS, ids=rel)
def test_kubectl_kustomize_renders_the_same_objects(build: Path) -> None:
    def keyed(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
        return {(o["kind"], o["metadata"]["name"]): o for o in objs}

    real = keyed(kubectl_kustomize(build))
    ours = keyed(kustomize_build(build))
    assert sorted(ours) == sorted(real)
    for key, obj in real.items():
        assert ours[key] == obj, f"{rel(build)}: {key} differs from kubectl kustomize"


# --------------------------------------------------------------------------
# Helm chart: values, schema, documentation
# --------------------------------------------------------------------------

PARAM = re.compile(r"^\s*## @param (\S+)\s+\S")


def chart_values() -> Obj:
    values: Obj = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def chart_schema() -> Obj:
    schema: Obj = json.loads((CHART / "values.schema.json").read_text())
    return schema


def schema_errors(values: Obj) -> list[str]:
    validator = jsonschema.Draft7Validator(chart_schema())
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)
    ]


def documented_params() -> list[str]:
    lines = (CHART / "values.yaml").read_text().splitlines()
    return [m.group(1) for m in map(PARAM.match, lines) if m]


def leaf_paths(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value that is not a non-empty mapping."""
    if isinstance(node, dict) and node:
        return [p for key, value in node.items() for p in leaf_paths(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def lookup(values: Obj, dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def with_values(overrides: Obj) -> Obj:
    """values.yaml deep-merged with overrides (what helm does with -f)."""

    def merge(base: Any, extra: Any) -> Any:
        if isinstance(base, dict) and isinstance(extra, dict):
            return {k: merge(base.get(k), v) if k in base else v for k, v in extra.items()} | {
                k: v for k, v in base.items() if k not in extra
            }
        return copy.deepcopy(extra)

    merged: Obj = merge(chart_values(), overrides)
    return merged


def test_chart_metadata() -> None:
    chart: Obj = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"]
    for required in (
        "values.schema.json",
        "templates/NOTES.txt",
        "templates/_helpers.tpl",
        ".helmignore",
    ):
        assert (CHART / required).is_file(), required
    assert list((CHART / "templates" / "tests").glob("*.yaml")), "no helm test hook"


def test_helpers_define_names_and_stable_selector_labels() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for name in ("name", "fullname", "chart", "labels", "selectorLabels"):
        assert f'define "livedesk.{name}"' in helpers
    selector = helpers.split('define "livedesk.selectorLabels"', 1)[1].split("{{- end }}", 1)[0]
    for mutable in ("version", "Chart.Version", "AppVersion", "commonLabels", "managed-by"):
        assert mutable not in selector, f"selectorLabels uses {mutable}"


def test_values_match_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(chart_schema())
    assert schema_errors(chart_values()) == []


def test_schema_is_strict() -> None:
    """Every object the chart defines lists its keys and rejects others."""
    loose: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                loose.append(where)
            for key, value in node.items():
                if key in ("if", "then", "else"):
                    continue  # conditions on keys declared beside them, not objects
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(chart_schema(), "#")
    assert loose == []


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"unknownKey": 1}, "Additional properties"),
        ({"chat": {"replicas": 3}}, "Additional properties"),
        ({"config": {"logFormat": "xml"}}, "is not one of"),
        ({"chat": {"port": 70000}}, "is greater than the maximum"),
        ({"analytics": {"replicaCount": 2}}, "1 was expected"),
        ({"analytics": {"autoscaling": {"enabled": True}}}, "False was expected"),
        ({"commonLabels": {"app.kubernetes.io/name": "x"}}, "should not be valid"),
        ({"chat": {"resources": {"limits": {"cpus": "1"}}}}, "Additional properties"),
        ({"config": {"extraEnv": {"HOST": "127.0.0.1"}}}, "should not be valid"),
        ({"config": {"logLevel": "CRITICAL"}}, "is not one of"),
        ({"config": {"extraEnv": {"ARCHIVE_URL": "file:///x"}}}, "should not be valid"),
        ({"chat": {"archive": {"schedule": "hourly"}}}, "does not match"),
        ({"chat": {"archive": {"batchSize": 0}}}, "less than the minimum"),
        ({"chat": {"hotCache": {"redisUrl": "http://x"}}}, "does not match"),
        ({"config": {"extraEnv": {"ARCHIVE_S3_REGION": "x"}}}, "should not be valid"),
        ({"chat": {"archive": {"s3": {"url": "https://s3.example.com/b"}}}}, "does not match"),
        ({"chat": {"archive": {"s3": {"url": "s3://key:secret@bucket"}}}}, "does not match"),
        ({"chat": {"archive": {"s3": {"addressingStyle": "dns"}}}}, "is not one of"),
        ({"chat": {"archive": {"s3": {"endpointUrl": "minio:9000"}}}}, "does not match"),
        (
            {
                "chat": {
                    "archive": {
                        "s3": {"url": "s3://bucket"},
                        "persistence": {"existingClaim": "my-archive-volume"},
                    }
                }
            },
            "'' was expected",
        ),
    ],
)
def test_schema_rejects_bad_values(overrides: Obj, fragment: str) -> None:
    errors = schema_errors(with_values(overrides))
    assert any(fragment in e for e in errors), errors


def test_schema_allows_analytics_to_scale_out_with_clickhouse() -> None:
    overrides = {
        "analytics": {"embeddedChdb": False, "replicaCount": 3, "autoscaling": {"enabled": True}}
    }
    assert schema_errors(with_values(overrides)) == []


def test_every_param_names_a_real_value() -> None:
    params = documented_params()
    assert len(params) == len(set(params)), "a value is documented twice"
    values = chart_values()
    assert [p for p in params if not lookup(values, p)] == []


def test_every_value_is_documented() -> None:
    params = set(documented_params())
    undocumented = [
        leaf
        for leaf in leaf_paths(chart_values())
        if not any(leaf == p or leaf.startswith(p + ".") for p in params)
    ]
    assert undocumented == []


# --------------------------------------------------------------------------
# Helm chart: rendering with Helm's engine (helm-python-sdk)
# --------------------------------------------------------------------------

SCENARIOS: dict[str, Obj] = {
    "defaults": {},
    "everything-on": {
        "fullnameOverride": "ld",
        "commonLabels": {"team": "support"},
        "commonAnnotations": {"owner": "support@example.com"},
        "image": {"registry": "registry.example.com", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": ["regcred"],
        "config": {"environment": "prod", "extraEnv": {"OTEL_SERVICE_NAMESPACE": "livedesk"}},
        "serviceAccount": {"annotations": {"iam.example.com/role": "livedesk"}},
        "chat": {
            "secretEnv": {
                "DATABASE_URL": "postgresql://chat:pw@pg/chat",
                "REDIS_URL": "redis://redis:6379/0",
            },
            "existingSecret": "existing-chat-jwt",
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "podLabels": {"tier": "realtime"},
            "podAnnotations": {"example.com/note": "x"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "chat", "effect": "NoSchedule"}
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "pool", "operator": "In", "values": ["chat"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "pdb": {"maxUnavailable": "25%"},
            "redisCluster": True,
            "hotCache": {"messages": 50, "redisUrl": "redis://cache:6379/0"},
            "archive": {
                "enabled": True,
                "schedule": "@hourly",
                "afterDays": 7.5,
                "batchSize": 50,
                "persistence": {"storageClass": "efs-sc", "size": "100Gi"},
            },
        },
        "assignment": {
            "autoscaling": {"enabled": False},
            "replicaCount": 3,
            "existingSecret": "existing-assignment",
        },
        "analytics": {
            "embeddedChdb": False,
            "replicaCount": 2,
            "autoscaling": {"enabled": True},
            "pdb": {"enabled": True},
            "spreadAcrossNodes": True,
            "existingSecret": "existing-analytics-clickhouse",
        },
    },
    "archive-s3": {
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "chat": {
            "archive": {
                "enabled": True,
                "s3": {
                    "url": "s3://livedesk-archive/prod/chat",
                    "endpointUrl": "https://minio.storage.svc:9000",
                    "region": "eu-west-1",
                    "addressingStyle": "path",
                    "existingSecret": "chat-archive-s3",
                },
            },
        },
    },
    "minimal": {
        "serviceAccount": {"create": False},
        "metricsAnnotations": False,
        "chat": {
            "autoscaling": {"enabled": False},
            "pdb": {"enabled": False},
            "replicaCount": 1,
            "hotCache": {"messages": 0},
            "archive": {"enabled": True, "persistence": {"existingClaim": "my-archive-volume"}},
        },
        "assignment": {"enabled": False},
        "analytics": {"persistence": {"existingClaim": "my-chdb-volume", "keepOnUninstall": False}},
    },
}


@pytest.fixture(scope="module")
def helm() -> Any:
    return pytest.importorskip(
        "helm_python", reason="helm-python-sdk (Helm's engine) is not installed"
    )


def render(helm: Any, chart_dir: Path, overrides: Obj, release: str = "livedesk") -> dict[str, str]:
    with helm.Chart.load(str(chart_dir)) as chart:
        rendered: dict[str, str] = chart.render(
            overrides, name=release, namespace="support", is_install=True
        )
    return rendered


def manifests(rendered: dict[str, str]) -> list[Obj]:
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in load_docs(text)
    ]


def test_helm_lint_is_clean(helm: Any) -> None:
    report = helm.lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_renders_valid_objects(helm: Any, scenario: str) -> None:
    overrides = SCENARIOS[scenario]
    assert schema_errors(with_values(overrides)) == []
    rendered = render(helm, CHART, overrides)
    objs = manifests(rendered)
    values = with_values(overrides)
    existing = {values[name]["existingSecret"] for name in SERVICES}
    existing.add(values["analytics"]["persistence"]["existingClaim"])
    existing.add(values["chat"]["archive"]["persistence"]["existingClaim"])
    existing.add(values["chat"]["archive"]["s3"]["existingSecret"])
    check_objects(objs, f"chart with {scenario} values", external=existing - {""})
    cronjobs = [o for o in objs if o["kind"] == "CronJob"]
    if values["chat"]["archive"]["enabled"]:
        assert archive_job_problems(objs) == []
        job = pod_template(cronjobs[0])["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in job["env"]}
        assert env["ARCHIVE_AFTER_DAYS"] == str(values["chat"]["archive"]["afterDays"])
        assert env["ARCHIVE_BATCH_SIZE"] == str(values["chat"]["archive"]["batchSize"])
        assert env["HOT_CACHE_MESSAGES"] == str(values["chat"]["hotCache"]["messages"])
        assert ("REDIS_CLUSTER" in env) == values["chat"]["redisCluster"]
        assert cronjobs[0]["spec"]["schedule"] == values["chat"]["archive"]["schedule"]
    else:
        assert cronjobs == []

    deployments = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objs
        if o["kind"] == "Deployment"
    }
    enabled = {name for name in SERVICES if values[name]["enabled"]}
    assert set(deployments) == enabled
    configmap = next(o for o in objs if o["kind"] == "ConfigMap")
    config_sha = hashlib.sha256(rendered["livedesk/templates/configmap.yaml"].encode()).hexdigest()
    for name, deploy in deployments.items():
        svc = values[name]
        template = pod_template(deploy)
        container = template["spec"]["containers"][0]
        assert template["metadata"]["annotations"]["checksum/config"] == config_sha
        assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in container["envFrom"]
        expected_ports = {"http": svc["port"]} | (
            {"grpc": svc["grpcPort"]} if "grpcPort" in svc else {}
        )
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == expected_ports
        assert ("replicas" in deploy["spec"]) != svc["autoscaling"]["enabled"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if svc.get("embeddedChdb"):
            assert env["CHDB_PATH"] == svc["persistence"]["mountPath"]
        if name == "chat":
            assert env.get("REDIS_CLUSTER") == ("true" if svc["redisCluster"] else None)

    hooks = [o for o in objs if o["kind"] == "Pod"]
    services = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objs
        if o["kind"] == "Service"
    }
    assert len(hooks) == len(enabled)
    for pod in hooks:
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        url = pod["spec"]["containers"][0]["args"][-1]
        match = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url)
        assert match is not None, url
        host, port, path = match.groups()
        assert path == "/readyz"
        service = next(s for s in services.values() if s["metadata"]["name"] == host)
        assert int(port) in [p["port"] for p in service["spec"]["ports"]]


def test_chart_defaults_match_the_kustomize_base(helm: Any) -> None:
    """Both deploy trees run the same pods: ports, env, probes, resources, security, config."""

    def pods(objs: list[Obj]) -> dict[str, Obj]:
        return {
            o["metadata"]["labels"]["app.kubernetes.io/component"]: pod_template(o)["spec"]
            for o in objs
            if o["kind"] == "Deployment"
        }

    def config(objs: list[Obj]) -> Obj:
        configmap: Obj = next(o for o in objs if o["kind"] == "ConfigMap")["data"]
        return configmap

    chart_objs = manifests(render(helm, CHART, {}))
    base_objs = kustomize_build(K8S / "base")
    assert config(chart_objs) == config(base_objs)
    chart, base = pods(chart_objs), pods(base_objs)
    assert set(chart) == set(base)
    for name in base:
        assert chart[name]["securityContext"] == base[name]["securityContext"], name
        assert (
            chart[name]["terminationGracePeriodSeconds"]
            == base[name]["terminationGracePeriodSeconds"]
        )
        ours, theirs = chart[name]["containers"][0], base[name]["containers"][0]
        for field in ("ports", "env", "resources", "securityContext", "volumeMounts"):
            assert ours[field] == theirs[field], f"{name}: {field}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert ours[probe] == theirs[probe], f"{name}: {probe}"
        tmp = [
            [v for v in pod["volumes"] if v["name"] == "tmp"] for pod in (chart[name], base[name])
        ]
        assert tmp[0] == tmp[1], f"{name}: /tmp volume"


def test_chart_archive_matches_the_kustomize_component(helm: Any) -> None:
    """chat.archive.enabled renders what components/archive adds to the base."""

    def archive(objs: list[Obj]) -> tuple[Obj, Obj, Obj]:
        cronjob = next(o for o in objs if o["kind"] == "CronJob")
        claim = next(
            o
            for o in objs
            if o["kind"] == "PersistentVolumeClaim" and "archive" in o["metadata"]["name"]
        )
        chat = next(
            o
            for o in objs
            if o["kind"] == "Deployment"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "chat"
        )
        return cronjob, claim, chat

    chart = archive(manifests(render(helm, CHART, {"chat": {"archive": {"enabled": True}}})))
    base = archive(kustomize_build(K8S / "tests" / "with-archive"))
    (chart_job, chart_claim, chart_chat), (base_job, base_claim, base_chat) = chart, base
    for field in (
        "schedule",
        "timeZone",
        "concurrencyPolicy",
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ):
        assert chart_job["spec"].get(field) == base_job["spec"].get(field), field
    for field in ("activeDeadlineSeconds", "backoffLimit"):
        assert (
            chart_job["spec"]["jobTemplate"]["spec"][field]
            == base_job["spec"]["jobTemplate"]["spec"][field]
        ), field
    chart_pod, base_pod = pod_template(chart_job)["spec"], pod_template(base_job)["spec"]
    for field in (
        "restartPolicy",
        "securityContext",
        "terminationGracePeriodSeconds",
        "enableServiceLinks",
    ):
        assert chart_pod[field] == base_pod[field], field
    ours, theirs = chart_pod["containers"][0], base_pod["containers"][0]
    for field in ("args", "env", "resources", "securityContext", "volumeMounts"):
        assert ours.get(field) == theirs.get(field), field
    assert chart_claim["spec"] == base_claim["spec"]
    ours, theirs = (
        pod_template(chart_chat)["spec"]["containers"][0],
        pod_template(base_chat)["spec"]["containers"][0],
    )
    for field in ("env", "volumeMounts"):
        assert ours[field] == theirs[field], field


@pytest.mark.parametrize(
    ("overrides", "field", "refusal"),
    [
        (
            {"persistence": {"accessModes": ["ReadWriteOnce"]}},
            "accessModes",
            "every chat pod and the archive job",
        ),
        (
            {
                "s3": {"url": "s3://livedesk-archive"},
                "persistence": {"existingClaim": "my-archive-volume"},
            },
            "existingClaim",
            "exclude each other",
        ),
    ],
    ids=["volume-one-node-only", "s3-beside-a-claim"],
)
def test_chart_refuses_bad_archive_storage(
    helm: Any, tmp_path: Path, overrides: Obj, field: str, refusal: str
) -> None:
    overrides = {"chat": {"archive": {"enabled": True} | overrides}}
    assert [e for e in schema_errors(with_values(overrides)) if field in e]
    with pytest.raises(helm.HelmError, match=field):
        render(helm, CHART, overrides)
    # The template refuses too, for installs that skip the schema.
    schemaless = tmp_path / "livedesk"
    shutil.copytree(CHART, schemaless)
    (schemaless / "values.schema.json").unlink()
    with pytest.raises(helm.HelmError, match=refusal):
        render(helm, schemaless, overrides)


def test_chart_archive_on_s3_has_no_volume(helm: Any) -> None:
    """chat.archive.s3.url: no claim, no mount; the same ARCHIVE_* and AWS keys in chat and job."""
    s3 = SCENARIOS["archive-s3"]["chat"]["archive"]["s3"]
    objs = manifests(render(helm, CHART, SCENARIOS["archive-s3"]))
    claims = [o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"]
    assert claims == ["livedesk-analytics-data"]  # embedded chDB's, nothing for the archive
    chat = next(
        o
        for o in objs
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "chat"
    )
    cronjob = next(o for o in objs if o["kind"] == "CronJob")
    secret = s3["existingSecret"]
    expected = {
        "ARCHIVE_URL": {"value": s3["url"]},
        "ARCHIVE_S3_ENDPOINT_URL": {"value": s3["endpointUrl"]},
        "ARCHIVE_S3_REGION": {"value": s3["region"]},
        "ARCHIVE_S3_ADDRESSING_STYLE": {"value": s3["addressingStyle"]},
        "AWS_ACCESS_KEY_ID": {
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_ACCESS_KEY_ID"}}
        },
        "AWS_SECRET_ACCESS_KEY": {
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}}
        },
        "AWS_SESSION_TOKEN": {
            "valueFrom": {
                "secretKeyRef": {"name": secret, "key": "AWS_SESSION_TOKEN", "optional": True}
            }
        },
    }
    for workload in (chat, cronjob):
        pod = pod_template(workload)["spec"]
        container = pod["containers"][0]
        env = {
            e["name"]: {k: v for k, v in e.items() if k != "name"}
            for e in container["env"]
            if e["name"].startswith(("ARCHIVE_", "AWS_")) and "BATCH" not in e["name"]
        }
        env.pop("ARCHIVE_AFTER_DAYS", None)
        assert env == expected, describe(workload)
        assert [v["name"] for v in pod["volumes"]] == ["tmp"], describe(workload)
        assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert archive_job_problems(objs) == []
    # IRSA: the role annotation reaches the ServiceAccount both run as.
    account = next(
        o
        for o in objs
        if o["kind"] == "ServiceAccount"
        and o["metadata"]["name"] == pod_template(chat)["spec"]["serviceAccountName"]
    )
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    assert pod_template(cronjob)["spec"]["serviceAccountName"] == account["metadata"]["name"]

    # Without static keys (IRSA, instance role) and with botocore's own endpoint
    # and region, only the URL and the addressing style are set.
    bare = {"chat": {"archive": {"enabled": True, "s3": {"url": "s3://livedesk-archive"}}}}
    objs = manifests(render(helm, CHART, bare))
    check_objects(objs, "chart with a bare S3 archive")
    for workload in (o for o in objs if o["kind"] in ("Deployment", "CronJob")):
        names = [e["name"] for e in pod_template(workload)["spec"]["containers"][0].get("env", [])]
        if "ARCHIVE_URL" in names:
            assert not [n for n in names if n.startswith("AWS_")], describe(workload)
            assert "ARCHIVE_S3_REGION" not in names
            assert "ARCHIVE_S3_ADDRESSING_STYLE" in names


def test_archive_rules_catch_an_s3_job_that_drifts_from_chat(helm: Any) -> None:
    good = manifests(render(helm, CHART, SCENARIOS["archive-s3"]))

    def container(objs: list[Obj], kind: str) -> Obj:
        workload = next(
            o
            for o in objs
            if o["kind"] == kind
            and o["metadata"]["labels"]["app.kubernetes.io/component"] in ("chat", "chat-archive")
        )
        found: Obj = pod_template(workload)["spec"]["containers"][0]
        return found

    def env(objs: list[Obj], kind: str, name: str) -> Obj:
        found: Obj = next(e for e in container(objs, kind)["env"] if e["name"] == name)
        return found

    mistakes: dict[str, Callable[[list[Obj]], object]] = {
        "other bucket": lambda objs: env(objs, "CronJob", "ARCHIVE_URL").update(value="s3://x/y"),
        "other region": lambda objs: env(objs, "Deployment", "ARCHIVE_S3_REGION").update(
            value="us-east-1"
        ),
        "other keys": lambda objs: env(objs, "CronJob", "AWS_ACCESS_KEY_ID")["valueFrom"][
            "secretKeyRef"
        ].update(name="x"),
        "still mounted": lambda objs: container(objs, "Deployment")["volumeMounts"].append(
            {"name": "archive", "mountPath": "/var/lib/livedesk/archive"}
        ),
    }
    for what, change in mistakes.items():
        broken = copy.deepcopy(good)
        change(broken)
        assert archive_job_problems(broken), what


def test_selectors_survive_upgrades(helm: Any, tmp_path: Path) -> None:
    """A new chart or app version, or new free-form labels, keep every selector."""
    newer = tmp_path / "livedesk"
    shutil.copytree(CHART, newer)
    chart_yaml = newer / "Chart.yaml"
    chart_yaml.write_text(
        re.sub(r"(?m)^appVersion: .*$", 'appVersion: "9.9.9"', chart_yaml.read_text()).replace(
            "version: 0.1.0", "version: 9.9.9"
        )
    )

    def selectors(objs: list[Obj]) -> dict[tuple[str, str], Any]:
        found = {}
        for obj in objs:
            spec = obj.get("spec", {})
            if obj["kind"] in ("Deployment", "PodDisruptionBudget", "Service"):
                found[(obj["kind"], obj["metadata"]["name"])] = spec["selector"]
        return found

    before = manifests(render(helm, CHART, {}))
    after = manifests(
        render(helm, newer, {"commonLabels": {"team": "x"}, "chat": {"podLabels": {"a": "b"}}})
    )
    assert selectors(before) == selectors(after)
    assert any(o["metadata"]["labels"].get("app.kubernetes.io/version") == "9.9.9" for o in after)


def test_config_change_changes_the_checksum(helm: Any) -> None:
    def checksum(overrides: Obj) -> str:
        deploy = next(
            o for o in manifests(render(helm, CHART, overrides)) if o["kind"] == "Deployment"
        )
        value: str = pod_template(deploy)["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum({}) != checksum({"config": {"logLevel": "DEBUG"}})


@pytest.mark.parametrize(
    "overrides",
    [{"analytics": {"replicaCount": 2}}, {"analytics": {"autoscaling": {"enabled": True}}}],
)
def test_chart_refuses_two_chdb_pods(helm: Any, overrides: Obj) -> None:
    with pytest.raises(helm.HelmError):
        render(helm, CHART, overrides)


# --------------------------------------------------------------------------
# Dockerfiles
# --------------------------------------------------------------------------


def dockerfile_stages(svc: str) -> list[list[str]]:
    """Instructions (comments dropped, continuations joined) grouped by stage."""
    text = (REPO / "services" / svc / "Dockerfile").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    stages: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        instruction = " ".join(line.split())
        if instruction.upper().startswith("FROM "):
            stages.append([])
        elif instruction and stages:
            stages[-1].append(instruction)
    return stages


@pytest.mark.parametrize("svc", sorted(SERVICES))
def test_dockerfile_builds_the_locked_venv_then_runs_it_as_non_root(svc: str) -> None:
    text = (REPO / "services" / svc / "Dockerfile").read_text()
    assert "ghcr.io/astral-sh/uv" not in text, "install uv with pip: that registry is not reachable"
    stages = dockerfile_stages(svc)
    assert len(stages) == 2, "a builder stage and a runtime stage"
    builder, runtime = stages
    builder_text = "\n".join(builder)
    assert re.search(r'^RUN pip install .*"?uv==', builder_text, re.M)
    sync = f"uv sync --frozen --no-dev --package livedesk-{svc} --no-editable"
    runs = [i for i in builder if i.startswith("RUN") and sync in i]
    assert len(runs) == 2, "a dependency layer, then the workspace packages"
    assert "--no-install-workspace" in runs[0]
    assert "--no-install-workspace" not in runs[1]
    first_sync = builder.index(runs[0])
    copies_before = [i for i in builder[:first_sync] if i.startswith("COPY")]
    assert copies_before
    assert all(("pyproject.toml" in i or "uv.lock" in i) for i in copies_before), (
        "only project metadata and the lock before the dependency layer"
    )
    assert any(f"services/{svc}/" in i for i in builder[first_sync:] if i.startswith("COPY"))

    copies = [i for i in runtime if i.startswith("COPY")]
    assert copies == ["COPY --from=builder /opt/venv /opt/venv"], (
        "the runtime stage gets the venv only"
    )
    assert "USER 10001:10001" in runtime
    assert "HEALTHCHECK NONE" in runtime
    assert runtime[-1] == f'ENTRYPOINT ["python", "-m", "livedesk.{svc}"]'
    assert any(i.startswith("ENV ") and "HOST=0.0.0.0" in i for i in runtime), "bind the pod IP"
    exposed = {int(p) for i in runtime if i.startswith("EXPOSE") for p in i.split()[1:]}
    assert exposed == set(SERVICES[svc].values())
    project: Obj = tomllib.loads((REPO / "services" / svc / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"livedesk-{svc}"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/"))
        if any(compiled.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_what_the_images_need() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    needed = ["pyproject.toml", "uv.lock"]
    for package in sorted(
        [*REPO.glob("libs/*/pyproject.toml"), *REPO.glob("services/*/pyproject.toml")]
    ):
        root = package.parent
        needed.append(rel(package))
        readme = tomllib.loads(package.read_text())["project"].get("readme")
        if isinstance(readme, str):
            needed.append(rel(root / readme))
        needed += [
            rel(f)
            for f in (root / "src").rglob("*")
            if f.is_file() and "__pycache__" not in f.parts
        ]
    assert [path for path in needed if dockerignored(path, patterns)] == []
    for unwanted in (
        ".git/HEAD",
        ".venv/bin/python",
        ".env",
        "deploy/README.md",
        "tests/deploy/test_manifests.py",
        "services/chat/tests/test_x.py",
        "libs/platform/src/livedesk/platform/__pycache__/x.pyc",
        "node_modules/x/package.json",
    ):
        assert dockerignored(unwanted, patterns), unwanted
