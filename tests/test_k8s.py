"""Offline checks of the Kubernetes manifests under k8s/.

Every kustomization is rendered with `kubectl kustomize` (kubectl is required: without it these tests
fail, they do not skip), and every object it renders is validated strictly:
* core kinds with kubernetes-validate's strict schemas (an unknown field fails);
* custom resources (RayJob, RayCronJob, Kueue's and Karpenter's kinds) against the openAPIV3Schema of
  the upstream CRDs vendored in k8s/schemas/ (its README names their source), at every vendored version
  (KubeRay's minimum and current release, ...), made strict: a schema with properties allows no other
  field unless the CRD says x-kubernetes-preserve-unknown-fields; their metadata against ObjectMeta;
* the pod templates inside the Ray kinds against kubernetes-validate's strict PodTemplateSpec.
Then the contracts: the overlays against the scale table; stopping (the preStop hook, the stop wait,
grace periods and staging disk sized from cdb.memory's checkpoint); security; network policies
(ingress and egress); Kueue; the sweep launcher (against a fake kubectl); image pins and the refresh
script (against a fake crane and docker); `--fresh` in a RayJob; the README.

Needs: pyyaml, jsonschema, referencing, kubernetes-validate, kubectl.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import importlib.resources
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")
from referencing import Registry, Resource  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
SCHEMAS = K8S / "schemas"

# The Kubernetes version the manifests are validated against.
K8S_VERSION = "1.31"

# The scale table (data the manifests must agree with):
# overlay dir -> (scale name, Ray workers, GPUs per worker, GPU nodes of 8 GPUs)
SCALES = {
    "tiny": ("tiny", 2, 0, 0),
    "gpt2": ("gpt2", 1, 1, 1),
    "phi-2": ("phi-2", 4, 1, 1),
    "7b": ("llama2-7b", 8, 1, 1),
    "13b": ("llama2-13b", 16, 1, 2),
    "70b": ("llama2-70b", 32, 1, 4),
}
ALIASES = {"llama2-7b": "7b", "llama2-13b": "13b", "llama2-70b": "70b"}
GPU_OVERLAYS = [d for d, (_, _, g, _) in SCALES.items() if g > 0]
GPUS_PER_NODE = 8

SWEEP_ENTRYPOINT = (
    "python -m cdb.sweep --scales smol-135m,7b,13b --methods contrastive,sft,dpo "
    "--output-dir /shared/sweeps/weekly --period week --set train.autoscaling=true"
)

RAY_KINDS = {"RayJob", "RayCluster", "RayCronJob"}
# Kinds kubernetes-validate has no schema for: validated against the vendored upstream CRDs.
CRD_KINDS = {"RayJob", "RayCronJob", "NodePool", "EC2NodeClass", "ResourceFlavor", "ClusterQueue", "LocalQueue"}
CLUSTER_SCOPED = {"Namespace", "NodePool", "EC2NodeClass", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ResourceFlavor", "ClusterQueue"}
SECRETISH_ENV = re.compile(r"TOKEN|PASSWORD|PASSWD|KEY|SECRET|CREDENTIAL", re.I)
PROJECT_IMAGES = {"cdb", "cdb-mlflow"}
"""Built from k8s/images/ (k8s/images/refresh.py --build pins them)."""

# Stopping a run (k8s/README.md, "Stopping"): assumptions the stop wait and the grace period are sized by.
WRITE_BANDWIDTH = 250e6
"""Bytes/s one node sustains into the run's storage (EFS or S3), shared by its ranks."""
STOP_MARGIN_S = 300
"""The step in progress, the driver's exit, Ray's teardown."""
GRACE_AFTER_WAIT_S = 60
"""The pods outlast Ray's stop wait by this much."""
RAY_SESSION_GIB = 10
"""Ray's session folder under /tmp (logs, spilled objects) beside the checkpoint staging."""


# --------------------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict]:
    """The documents of a YAML file, YAML anchors expanded into independent copies (as kustomize does)."""
    with open(path) as f:
        return [json.loads(json.dumps(d)) for d in yaml.safe_load_all(f) if d is not None]


def yaml_files() -> list[Path]:
    """The project's YAML under k8s/ (the vendored CRDs in k8s/schemas are not manifests)."""
    return sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file()
                  and not p.is_relative_to(SCHEMAS))


def kustomization_dirs() -> list[Path]:
    """Every kustomization that renders on its own (components only render inside one)."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml") if not is_component(p.parent))


def component_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml") if is_component(p.parent))


def is_component(d: Path) -> bool:
    return load_docs(d / "kustomization.yaml")[0]["kind"] == "Component"


def rel(p: Path) -> str:
    return str(p.relative_to(K8S))


def load_kustomization(d: Path) -> dict:
    return load_docs(d / "kustomization.yaml")[0]


def generator_files(k: dict) -> list[str]:
    """Files a kustomization packs into ConfigMaps/Secrets (`key=path` or `path`)."""
    out = []
    for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for entry in gen.get("files") or []:
            out.append(entry.split("=", 1)[-1])
    return out


@functools.lru_cache(maxsize=None)
def kustomize_inputs() -> dict[Path, str]:
    """YAML files that are inputs to kustomize rather than Kubernetes manifests."""
    out: dict[Path, str] = {}
    for d in kustomization_dirs() + component_dirs():
        k = load_kustomization(d)
        for c in k.get("configurations") or []:
            out[(d / c).resolve()] = "configuration"
        for g in generator_files(k):
            out[(d / g).resolve()] = "generated"
    return out


def sweep_template() -> dict:
    [doc] = load_docs(K8S / "sweep" / "rayjob-sweep.template.yaml")
    return doc


@functools.lru_cache(maxsize=None)
def raw_manifest_docs() -> tuple:
    """(file, doc) of every Kubernetes object kept under k8s/, including the sweep
    RayJob template that is packed into a ConfigMap."""
    out = []
    inputs = kustomize_inputs()
    for p in yaml_files():
        if p.name == "kustomization.yaml" or inputs.get(p.resolve()) == "configuration":
            continue
        for d in load_docs(p):
            if d.get("kind") == "Configuration":
                continue  # Kueue's manager configuration: a file in a ConfigMap, not an API object (checked below)
            out.append((rel(p), d))
    return tuple(out)


# ------------------------------------------------------------- kubectl kustomize


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is needed: the manifests are rendered with `kubectl kustomize` (install kubectl)"
    return path


def kustomize(d: Path) -> tuple:
    res = subprocess.run([kubectl(), "kustomize", str(d)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"kubectl kustomize {d} failed:\n{res.stderr}"
    return tuple(json.loads(json.dumps(x)) for x in yaml.safe_load_all(res.stdout) if x is not None)


@functools.lru_cache(maxsize=None)
def render(d: Path) -> tuple:
    return kustomize(d)


def render_composed(tmp_path: Path, resources: list[Path], components: list[Path] = ()) -> list[dict]:
    """Render a kustomization made here, of existing ones (kustomize takes relative paths only)."""
    d = tmp_path / "composed"
    d.mkdir()
    k = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
         "resources": [os.path.relpath(r, d) for r in resources],
         "components": [os.path.relpath(c, d) for c in components]}
    (d / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return list(kustomize(d))


def overlay_rayjob(overlay: str) -> dict:
    return overlay_rayjob_from(K8S / "overlays" / overlay)


def overlay_rayjob_from(d: Path) -> dict:
    [rj] = [copy.deepcopy(doc) for doc in render(d) if doc["kind"] == "RayJob"]
    return rj


def rendered_docs() -> list[tuple[str, dict]]:
    """Every object every kustomization renders, and the sweep's RayJob as its rendered ConfigMap
    carries it (the launcher creates it from there)."""
    out = []
    for d in kustomization_dirs():
        for doc in render(d):
            out.append((f"render:{rel(d)}", copy.deepcopy(doc)))
            for key, text in (doc.get("data") or {}).items() if doc["kind"] == "ConfigMap" else ():
                if key == "rayjob-sweep.yaml":
                    out.append((f"render:{rel(d)}:{key}", yaml.safe_load(text)))
    return out


def everything() -> list[tuple[str, dict]]:
    return list(raw_manifest_docs()) + rendered_docs()


# ------------------------------------------------------------------ pod templates


def ray_cluster_templates(cs: dict, where: str) -> list[tuple[str, dict]]:
    out = [(f"{where}.headGroupSpec", cs["headGroupSpec"]["template"])]
    for i, wg in enumerate(cs.get("workerGroupSpecs") or []):
        out.append((f"{where}.workerGroupSpecs[{i}]:{wg.get('groupName')}", wg["template"]))
    return out


def rayjob_spec_templates(spec: dict, where: str) -> list[tuple[str, dict]]:
    out = []
    if "rayClusterSpec" in spec:
        out += ray_cluster_templates(spec["rayClusterSpec"], f"{where}.rayClusterSpec")
    if "submitterPodTemplate" in spec:
        out.append((f"{where}.submitterPodTemplate", spec["submitterPodTemplate"]))
    return out


def ray_pod_templates(doc: dict) -> list[tuple[str, dict]]:
    kind, spec = doc["kind"], doc["spec"]
    if kind == "RayJob":
        return rayjob_spec_templates(spec, "spec")
    if kind == "RayCluster":
        return ray_cluster_templates(spec, "spec")
    if kind == "RayCronJob":
        return rayjob_spec_templates(spec["jobTemplate"], "spec.jobTemplate")
    return []


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, PodTemplateSpec) of every pod a manifest makes."""
    kind = doc.get("kind")
    if kind in RAY_KINDS:
        return ray_pod_templates(doc)
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return [("spec.template", doc["spec"]["template"])]
    if kind == "CronJob":
        return [("spec.jobTemplate.spec.template", doc["spec"]["jobTemplate"]["spec"]["template"])]
    if kind == "Pod":
        return [("pod", {"metadata": doc.get("metadata", {}), "spec": doc["spec"]})]
    return []


def all_pod_templates() -> list[tuple[str, dict]]:
    out = []
    for src, doc in everything():
        for where, tpl in pod_templates(doc):
            out.append((f"{src}:{doc['kind']}/{doc['metadata'].get('name') or doc['metadata'].get('generateName')}:{where}", tpl))
    return out


def containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("initContainers") or []) + list(pod_spec.get("containers") or [])


# --------------------------------------------------------------------- validators


@pytest.fixture(scope="session")
def kv():
    return pytest.importorskip("kubernetes_validate")


def strict_schema_dir() -> Path:
    from kubernetes_validate import utils

    version = [v for v in utils.all_versions() if utils.major_minor(v) <= K8S_VERSION][-1]
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return Path(str(root / f"v{version}-local-strict"))


def kubernetes_validator(schema: dict):
    """A validator of `schema` with kubernetes-validate's strict definitions to refer to."""
    defs = json.loads((strict_schema_dir() / "_definitions.json").read_text())
    registry = Resource.from_contents(defs) @ Registry()
    if "$id" in schema:
        registry = Resource.from_contents(schema) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.fixture(scope="session")
def pod_template_validator(kv):
    """The strict PodTemplateSpec schema shipped in kubernetes-validate."""
    return kubernetes_validator(json.loads((strict_schema_dir() / "podtemplatespec-v1.json").read_text()))


@pytest.fixture(scope="session")
def object_meta_validator(kv):
    """Strict ObjectMeta, for the metadata of custom resources (their CRDs leave it to the API server)."""
    return kubernetes_validator({"$ref": "https://kubernetes.io/api/_definitions.json#/$defs/"
                                         "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"})


def strict(node):
    """A CRD's OpenAPI v3 schema as a strict JSON schema: an object schema with properties admits no
    other field (as the API server prunes and, with fieldValidation=Strict, refuses it) unless the CRD
    marks it x-kubernetes-preserve-unknown-fields; `nullable` admits null."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) if k not in ("enum", "default", "example", "required") else v for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def vendored_crds() -> dict[tuple[str, str], dict[str, dict]]:
    """(apiVersion, kind) -> {"<project> <version>": strict openAPIV3Schema} over every vendored CRD."""
    out: dict = {}
    for path in sorted(SCHEMAS.glob("*/v*/*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                label = f"{path.parent.parent.name} {path.parent.name}"
                out.setdefault(key, {})[label] = strict(version["schema"]["openAPIV3Schema"])
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(api_version: str, kind: str, label: str):
    return jsonschema.Draft202012Validator(vendored_crds()[(api_version, kind)][label])


def crd_labels(api_version: str, kind: str) -> list[str]:
    return sorted(vendored_crds().get((api_version, kind), {}))


def errors_of(validator, instance) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
        for e in validator.iter_errors(instance)
    ]


def crd_errors(doc: dict) -> dict[str, list[str]]:
    """label -> errors, over every vendored version of the object's CRD."""
    labels = crd_labels(doc["apiVersion"], doc["kind"])
    assert labels, f"no vendored CRD serves {doc['apiVersion']} {doc['kind']}"
    return {label: errors_of(crd_validator(doc["apiVersion"], doc["kind"], label), doc) for label in labels}


# ====================================================================== the tests
# ------------------------------------------------------------------ render, parse, identity


def test_kubectl_is_there():
    """The render is the only one: these tests need kubectl and fail, not skip, without it."""
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "Kustomize Version" in version.stdout, version.stdout + version.stderr


@pytest.mark.parametrize("d", kustomization_dirs(), ids=rel)
def test_kustomization_renders(d):
    assert render(d)


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_yaml_parses_and_objects_have_identity(path):
    docs = load_docs(path)
    assert docs, f"{rel(path)} is empty"
    role = kustomize_inputs().get(path.resolve())
    if role == "configuration":
        # kustomize transformer configuration: kustomize rejects apiVersion/kind in it.
        assert all(isinstance(d, dict) for d in docs)
        return
    for d in docs:
        assert isinstance(d, dict), f"{rel(path)}: a document is not a mapping"
        assert d.get("apiVersion"), f"{rel(path)}: missing apiVersion"
        assert d.get("kind"), f"{rel(path)}: missing kind"
        meta = d.get("metadata") or {}
        if role == "generated":
            # A template `kubectl create`d with a fresh name each time, or Kueue's manager configuration.
            assert meta.get("name") or meta.get("generateName") or d["kind"] == "Configuration", rel(path)
        else:
            assert meta.get("name"), f"{rel(path)}: {d['kind']} without metadata.name"


def test_no_secret_objects_anywhere():
    for src, doc in everything():
        assert doc["kind"] != "Secret", f"{src}: Secret objects must be created by hand (README)"
    for d in kustomization_dirs():
        assert not load_kustomization(d).get("secretGenerator"), f"{rel(d)}: secretGenerator"


# ---------------------------------------------------------- strict core validation


def test_core_kinds_pass_strict_validation(kv):
    validated, skipped = set(), set()
    for src, doc in everything():
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
            validated.add(doc["kind"])
        except kv.utils.SchemaNotFoundError:
            # Only the custom resources (checked against their CRDs below) may lack a schema: a typo in a
            # core apiVersion must not be skipped silently.
            assert doc["kind"] in CRD_KINDS, f"{src}: no schema for {doc['apiVersion']} {doc['kind']}"
            skipped.add(doc["kind"])
        except kv.ValidationError as e:
            path = "/".join(map(str, e.path))
            pytest.fail(f"{src}: {doc['kind']}/{doc['metadata'].get('name')}: {path}: {e.message}")
    expected = {
        "Namespace", "PersistentVolumeClaim", "Service", "StatefulSet", "Deployment",
        "ConfigMap", "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding", "CronJob",
        "PriorityClass", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    }
    assert expected <= validated, f"not validated: {expected - validated}"
    assert skipped == CRD_KINDS


def test_strict_validation_rejects_unknown_field(kv):
    [dep] = [d for _, d in raw_manifest_docs() if d["kind"] == "Deployment"]
    kv.validate(dep, K8S_VERSION, strict=True)
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    kv.validate(bad, K8S_VERSION, strict=False)  # the lax schema lets it through...
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)  # ...strict mode does not
    bad = copy.deepcopy(dep)
    bad["spec"]["replica"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


# ------------------------------------------------- pod templates inside Ray CRDs


def ray_docs() -> list[tuple[str, dict]]:
    return [(src, d) for src, d in everything() if d["kind"] in RAY_KINDS]


def test_ray_pod_templates_pass_strict_podtemplatespec(pod_template_validator):
    seen = 0
    for src, doc in ray_docs():
        for where, tpl in ray_pod_templates(doc):
            errs = errors_of(pod_template_validator, tpl)
            assert not errs, f"{src}: {doc['kind']}: {where}: {errs}"
            seen += 1
    assert seen >= 20


@pytest.mark.parametrize("kind", ["RayJob", "RayCronJob"])
def test_podtemplatespec_schema_rejects_unknown_fields(pod_template_validator, kind):
    doc = copy.deepcopy(sweep_template() if kind == "RayJob" else _first("RayCronJob"))
    templates = ray_pod_templates(doc)
    assert templates
    for _, tpl in templates:
        assert not errors_of(pod_template_validator, tpl)
    # A misspelt field deep in a container and one at pod level are both caught.
    templates[0][1]["spec"]["containers"][0]["securityContext"]["priviliged"] = False
    templates[-1][1]["spec"]["nodeSelectors"] = {"a": "b"}
    assert errors_of(pod_template_validator, templates[0][1])
    assert errors_of(pod_template_validator, templates[-1][1])


# ----------------------------------------------------- custom resources: upstream CRDs


def schemas_readme_table() -> dict[str, dict]:
    """k8s/schemas/README.md's table: path -> {source, tag, commit, sha256}."""
    rows = {}
    for line in (SCHEMAS / "README.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].endswith(".yaml") and "/" in cells[0]:
            rows[cells[0]] = dict(zip(("source", "tag", "commit", "sha256"), cells[1:]))
    return rows


def test_vendored_schemas_are_the_upstream_files_the_readme_names():
    """Every vendored file is listed with its source (repository and path at a tag), the tag's commit
    and its sha256, and is byte for byte that file: nobody edits a vendored CRD."""
    table = schemas_readme_table()
    vendored = sorted(str(p.relative_to(SCHEMAS)) for p in SCHEMAS.glob("*/v*/*.yaml"))
    assert sorted(table) == vendored
    for name, row in table.items():
        project, tag, _ = name.split("/")
        assert row["tag"] == tag and re.fullmatch(r"[0-9a-f]{40}", row["commit"]), name
        assert row["source"].startswith("https://github.com/") and f"/blob/{tag}/" in row["source"], name
        assert hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest() == row["sha256"], f"{name} was edited"
    for project in {n.split("/")[0] for n in table}:
        assert "Apache License" in (SCHEMAS / project / "LICENSE").read_text()


def test_every_custom_resource_passes_every_vendored_version_of_its_crd(object_meta_validator):
    seen = {}
    for src, doc in everything():
        if doc["kind"] not in CRD_KINDS:
            continue
        for label, errs in crd_errors(doc).items():
            assert not errs, f"{src}: {doc['kind']}/{doc['metadata'].get('name')} against {label}: {errs}"
            seen.setdefault(doc["kind"], set()).add(label)
        assert not errors_of(object_meta_validator, doc["metadata"]), f"{src}: metadata"
    assert seen == {
        "RayJob": {"kuberay v1.5.1", "kuberay v1.7.0"}, "RayCronJob": {"kuberay v1.6.0", "kuberay v1.7.0"},
        "NodePool": {"karpenter v1.0.0", "karpenter v1.14.1"}, "EC2NodeClass": {"karpenter v1.0.0", "karpenter v1.14.1"},
        "ResourceFlavor": {"kueue v0.14.2"}, "ClusterQueue": {"kueue v0.14.2"}, "LocalQueue": {"kueue v0.14.2"},
    }


def _first(kind):
    return copy.deepcopy(next(d for _, d in raw_manifest_docs() if d["kind"] == kind))


def _set(doc, path, value):
    node = doc
    for t in path[:-1]:
        node = node[t]
    node[path[-1]] = value
    return doc


def _del(doc, path):
    node = doc
    for t in path[:-1]:
        node = node[t]
    del node[path[-1]]
    return doc


MUTATIONS = {
    "RayJob unknown spec field": ("RayJob", lambda d: _set(d, ["spec", "shutdownAfterJobFinish"], True)),
    "RayJob unknown cluster field": ("RayJob", lambda d: _set(d, ["spec", "rayClusterSpec", "headGroupSpecs"], {})),
    "RayJob unknown worker field": ("RayJob", lambda d: _set(d, ["spec", "rayClusterSpec", "workerGroupSpecs", 0,
                                                                  "replica"], 1)),
    "RayJob unknown container field": ("RayJob", lambda d: _set(d, ["spec", "rayClusterSpec", "headGroupSpec",
                                                                     "template", "spec", "containers", 0, "lifecycles"], {})),
    "RayJob backoffLimit as text": ("RayJob", lambda d: _set(d, ["spec", "backoffLimit"], "1")),
    "RayJob unquoted rayStartParams": ("RayJob", lambda d: _set(d, ["spec", "rayClusterSpec", "headGroupSpec",
                                                                     "rayStartParams", "num-cpus"], 0)),
    "RayJob bad authOptions mode": ("RayJob", lambda d: _set(d, ["spec", "rayClusterSpec", "authOptions", "mode"], "tokens")),
    "RayCronJob concurrencyPolicy (no such field)": ("RayCronJob", lambda d: _set(d, ["spec", "concurrencyPolicy"], "Forbid")),
    "RayCronJob without schedule": ("RayCronJob", lambda d: _del(d, ["spec", "schedule"])),
    "RayCronJob typo inside jobTemplate": ("RayCronJob", lambda d: _set(d, ["spec", "jobTemplate", "entryPoint"], "x")),
    "NodePool unknown disruption field": ("NodePool", lambda d: _set(d, ["spec", "disruption", "consolidateAfterr"], "1m")),
    "NodePool bad policy": ("NodePool", lambda d: _set(d, ["spec", "disruption", "consolidationPolicy"], "WhenUnderutilized")),
    "NodePool without requirements": ("NodePool", lambda d: _del(d, ["spec", "template", "spec", "requirements"])),
    "EC2NodeClass unknown field": ("EC2NodeClass", lambda d: _set(d, ["spec", "subnetSelector"], {"a": "b"})),
    "EC2NodeClass bad httpTokens": ("EC2NodeClass", lambda d: _set(d, ["spec", "metadataOptions", "httpTokens"], "always")),
    "ClusterQueue unknown field": ("ClusterQueue", lambda d: _set(d, ["spec", "queueingStrategys"], "StrictFIFO")),
    "ClusterQueue bad strategy": ("ClusterQueue", lambda d: _set(d, ["spec", "queueingStrategy"], "FIFO")),
    "LocalQueue clusterQueue not a name": ("LocalQueue", lambda d: _set(d, ["spec", "clusterQueue"], "CDB queue")),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_upstream_crds_reject_bad_objects(case):
    """The strict CRD schemas catch what the API server would refuse or silently drop: each mutation of a
    valid object is an error against every vendored version of its CRD."""
    kind, mutate = MUTATIONS[case]
    doc = _first(kind)
    assert not any(crd_errors(doc).values())
    for label, errs in crd_errors(mutate(doc)).items():
        assert errs, f"{case}: {label} accepted it"


@pytest.mark.parametrize("kind,path,value,older,newer", [
    ("RayJob", ["spec", "preRunningDeadlineSeconds"], 600, "kuberay v1.5.1", "kuberay v1.7.0"),
    ("RayCronJob", ["spec", "timeZone"], "Etc/UTC", "kuberay v1.6.0", "kuberay v1.7.0"),
])
def test_a_field_newer_than_the_minimum_fails_the_minimums_crd(kind, path, value, older, newer):
    """What the README states as each kind's minimum is the oldest CRD the manifests are validated against:
    a field the minimum lacks fails there, while the newest release knows it."""
    doc = _set(sweep_template() if kind == "RayJob" else _first(kind), path, value)
    errors = crd_errors(doc)
    assert not errors[newer]
    assert any("/".join(path[1:]) in e or "Additional properties" in e for e in errors[older]), errors[older]


def test_readme_states_the_versions_validated_against():
    readme = (K8S / "README.md").read_text()
    for kind, minimum in (("RayJob", "1.5.1"), ("RayCronJob", "1.6.0")):
        labels = crd_labels("ray.io/v1", kind)
        assert labels[0] == f"kuberay v{minimum}" and f"KubeRay >= {minimum}" in readme, kind
    newest = max(crd_labels("ray.io/v1", "RayJob"), key=lambda label: tuple(map(int, label.split("v")[-1].split("."))))
    assert f"--version {newest.split('v')[-1]}" in readme  # the version the README installs is validated
    assert "/v0.14.2/manifests.yaml" in readme and crd_labels("kueue.x-k8s.io/v1beta1", "ClusterQueue") == ["kueue v0.14.2"]


def test_pre_running_deadline_component_needs_kuberay_1_6(tmp_path):
    """KubeRay's pre-running deadline is a component (the base's minimum, v1.5.1, lacks the field): composed
    onto an overlay it sets the deadline, which v1.7.0's CRD accepts and v1.5.1's refuses."""
    docs = render_composed(tmp_path, [K8S / "overlays" / "13b"], [K8S / "components" / "pre-running-deadline"])
    [rj] = [d for d in docs if d["kind"] == "RayJob"]
    assert 1800 <= rj["spec"]["preRunningDeadlineSeconds"] <= rj["spec"]["activeDeadlineSeconds"]
    errors = crd_errors(rj)
    assert not errors["kuberay v1.7.0"] and errors["kuberay v1.5.1"]
    assert "preRunningDeadlineSeconds" not in overlay_rayjob("13b")["spec"]


# ---------------------------------------------------------------------- overlays


@pytest.mark.parametrize("d", kustomization_dirs() + component_dirs(), ids=rel)
def test_kustomization_references_exist(d):
    k = load_kustomization(d)
    assert (k["apiVersion"], k["kind"]) in {("kustomize.config.k8s.io/v1beta1", "Kustomization"),
                                            ("kustomize.config.k8s.io/v1alpha1", "Component")}
    for c in k.get("components") or []:
        assert is_component(d / c), f"{rel(d)}: {c} is not a Component"
    for r in k.get("resources") or []:
        p = d / r
        assert p.is_file() or (p / "kustomization.yaml").is_file(), f"{rel(d)}: missing resource {r}"
    for name in generator_files(k) + list(k.get("configurations") or []):
        assert (d / name).is_file(), f"{rel(d)}: missing file {name}"


def test_every_scale_has_an_overlay():
    assert {p.name for p in (K8S / "overlays").iterdir() if p.is_dir()} == set(SCALES)


@pytest.mark.parametrize("overlay", sorted(SCALES))
def test_overlays_patch_the_base_rayjob(overlay):
    k = load_kustomization(K8S / "overlays" / overlay)
    assert k["resources"] == ["../../base"]
    assert k.get("patches"), f"{overlay}: no patches"
    for patch in k["patches"]:
        assert patch["target"] == {"group": "ray.io", "version": "v1", "kind": "RayJob", "name": "cdb-train"}
        ops = yaml.safe_load(patch["patch"])
        assert isinstance(ops, list) and ops, "CRD lists (workerGroupSpecs) need JSON 6902 patches"
    # The render holds the base's other objects unchanged.
    base = {(d["kind"], d["metadata"]["name"]): d for d in render(K8S / "base") if d["kind"] != "RayJob"}
    mine = {(d["kind"], d["metadata"]["name"]): d for d in render(K8S / "overlays" / overlay) if d["kind"] != "RayJob"}
    assert mine == base


def worker_groups(rj: dict) -> list[dict]:
    return rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]


def gpu_of(container: dict, part: str = "limits") -> int:
    return int((container.get("resources", {}).get(part) or {}).get("nvidia.com/gpu", 0))


def scale_arg(entrypoint: str) -> str:
    m = re.search(r"--scale(?:=|\s+)(\S+)", entrypoint)
    assert m, entrypoint
    return m.group(1)


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_overlay_matches_scale_table(overlay):
    scale, workers, gpus_per_worker, nodes = SCALES[overlay]
    rj = overlay_rayjob(overlay)
    spec = rj["spec"]
    assert scale_arg(spec["entrypoint"]) in {scale, ALIASES.get(scale)}
    assert spec["entrypoint"].startswith("python -m cdb.train ")
    assert f"--output-dir /shared/runs/{scale}" in spec["entrypoint"]
    assert rj["metadata"]["name"] == f"cdb-train-{scale}"
    assert rj["metadata"]["labels"]["cdb.dev/scale"] == scale

    total, pods, gpus_per_pod = 0, 0, set()
    for wg in worker_groups(rj):
        assert wg["replicas"] == wg["minReplicas"] == wg["maxReplicas"], "fixed-size worker group"
        [c] = wg["template"]["spec"]["containers"]
        g = gpu_of(c)
        assert g == gpu_of(c, "requests"), "nvidia.com/gpu requests must equal limits"
        assert 1 <= g <= GPUS_PER_NODE
        total += wg["replicas"] * g
        pods += wg["replicas"] * (wg.get("numOfHosts") or 1)
        gpus_per_pod.add(g)
    assert total == workers * gpus_per_worker, f"{overlay}: {total} GPUs, table says {workers * gpus_per_worker}"
    # Multi-node scales use whole 8-GPU nodes, one pod per node.
    if nodes > 1 or workers >= GPUS_PER_NODE:
        assert gpus_per_pod == {GPUS_PER_NODE} and pods == nodes
    else:
        assert pods == 1 and gpus_per_pod == {workers * gpus_per_worker}
    # The head stays off the GPUs and off training.
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert all(gpu_of(c) == 0 for c in head["template"]["spec"]["containers"])


def test_deadlines_grow_with_scale():
    deadlines = [overlay_rayjob(o)["spec"]["activeDeadlineSeconds"] for o in ["tiny"] + GPU_OVERLAYS]
    assert deadlines == sorted(deadlines) and len(set(deadlines)) == len(deadlines)


def test_tiny_overlay_is_cpu_only():
    rj = overlay_rayjob("tiny")
    assert scale_arg(rj["spec"]["entrypoint"]) == "tiny"
    [wg] = worker_groups(rj)
    assert wg["replicas"] == wg["minReplicas"] == wg["maxReplicas"] == SCALES["tiny"][1]
    spec = wg["template"]["spec"]
    assert not gpu_pools_allowed(spec) and "tolerations" not in spec and "affinity" not in spec
    for _, tpl in ray_pod_templates(rj):
        for c in containers(tpl["spec"]):
            assert gpu_of(c) == 0 and gpu_of(c, "requests") == 0


def ray_containers(doc: dict):
    for where, tpl in ray_pod_templates(doc):
        if where.endswith("submitterPodTemplate"):
            continue
        for c in tpl["spec"]["containers"]:
            yield where, tpl, c


def rayjobs() -> list[tuple[str, dict]]:
    """Every RayJob as it is applied: each overlay and example rendered, the sweep's as the rendered
    ConfigMap carries it, and the RayCronJob's job template."""
    out = [(f"overlay:{o}", overlay_rayjob(o)) for o in sorted(SCALES)]
    out += [(f"example:{d.name}", overlay_rayjob_from(d)) for d in example_dirs()]
    [(_, sweep)] = [(s, d) for s, d in rendered_docs() if s.endswith(":rayjob-sweep.yaml")]
    out.append(("sweep", sweep))
    [rcj] = [d for _, d in rendered_docs() if d["kind"] == "RayCronJob"]
    out.append(("raycronjob", {"kind": "RayJob", "metadata": {}, "spec": rcj["spec"]["jobTemplate"]}))
    return out


def example_dirs() -> list[Path]:
    return sorted(p for p in (K8S / "examples").iterdir() if p.is_dir())


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env") or []}


@pytest.mark.parametrize("where,rj", rayjobs(), ids=[w for w, _ in rayjobs()])
def test_rayjob_contract(where, rj):
    spec = rj["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 0
    assert spec["activeDeadlineSeconds"] > 0
    cs = spec["rayClusterSpec"]
    head = cs["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["num-cpus"] == "0"
    for w, tpl, c in ray_containers(rj):
        assert c["image"].split(":")[0] == "cdb", f"{where} {w}: the training image"
        env = env_of(c)
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.cdb.svc:5000"
        assert "secretKeyRef" in env["HF_TOKEN"]["valueFrom"] and "value" not in env["HF_TOKEN"]
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "cdb-mlflow-client"
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in tpl["spec"]["volumes"]}
        assert vols[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
        # Only the sub-paths the job writes: never MLflow's artifacts (the server owns them).
        shared = {path: m for path, m in mounts.items()
                  if vols[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == "cdb-shared"}
        assert {path: m.get("subPath") for path, m in shared.items()} == {
            "/shared/runs": "runs", "/shared/sweeps": "sweeps", "/shared/hf-cache": "hf-cache"}
        assert tpl["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cdb"
        assert tpl["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    priority = "cdb-sweep" if "cdb.sweep" in spec["entrypoint"] else "cdb-training"
    for w, tpl in rayjob_spec_templates(spec, where):
        assert tpl["spec"]["priorityClassName"] == priority, w
    # The head never on spot capacity; the workers in the zone of their own cluster's pods.
    [term] = head["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    spot = {e["key"]: e for e in term["matchExpressions"]}
    assert spot["karpenter.sh/capacity-type"] == {"key": "karpenter.sh/capacity-type", "operator": "NotIn",
                                                  "values": ["spot"]}
    for wg in cs["workerGroupSpecs"]:
        if "affinity" not in wg["template"]["spec"]:
            assert where == "overlay:tiny"  # CPU smoke test on any cluster, zone labels or not
            continue
        [zone] = wg["template"]["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert zone["topologyKey"] == "topology.kubernetes.io/zone" and zone["matchLabelKeys"] == ["ray.io/cluster"]
        assert _selects(zone["labelSelector"], {"ray.io/node-type": "head"})
    for wg in cs["workerGroupSpecs"]:
        pod = wg["template"]["spec"]
        if any(gpu_of(c) for c in pod["containers"]):
            assert gpu_pools_allowed(pod), f"{where}: a GPU worker must select a GPU pool"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


# ------------------------------------------------------------------ stopping a run


PRESTOP = "/usr/local/bin/cdb-ray-prestop"
"""Where the training image installs k8s/images/ray-prestop.sh."""


@pytest.mark.parametrize("where,rj", rayjobs(), ids=[w for w, _ in rayjobs()])
def test_every_ray_container_stops_the_ray_job_before_it_goes(where, rj):
    """KubeRay deletes the Ray cluster without `ray job stop` on suspend (Kueue preemption), deadline and
    retry: the head's preStop hook stops the job by its fixed submission ID, the workers' wait for their
    ranks. Token auth is on (KubeRay then gives every Ray container RAY_AUTH_TOKEN), and nothing in the
    containers' environment overrides what KubeRay sets for it."""
    spec = rj["spec"]
    assert re.fullmatch(r"[a-z0-9-]+", spec["jobId"])
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    for w, tpl, c in ray_containers(rj):
        role = ["head", spec["jobId"]] if w.endswith("headGroupSpec") else ["worker"]
        assert c["lifecycle"]["preStop"]["exec"]["command"] == [PRESTOP, *role], f"{where} {w}"
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "FQ_RAY_IP"} & set(env_of(c)), f"{where} {w}: KubeRay sets these"
    dockerfile = (K8S / "images" / "train.Dockerfile").read_text()
    assert re.search(rf"^COPY --chmod=755 k8s/images/ray-prestop\.sh {re.escape(PRESTOP)}$", dockerfile, re.M)


FAKE_RAY = """#!/bin/sh
# fake ray: records its arguments and the token it was given, exits $FAKE_RC
printf '%s\\n' "$*" > "$FAKE_DIR/ray-args"
printf '%s' "${RAY_AUTH_TOKEN:-}" > "$FAKE_DIR/ray-token"
exit "${FAKE_RC:-0}"
"""


@pytest.mark.parametrize("rc", [0, 1])
def test_head_prestop_hook_runs_ray_job_stop_with_the_containers_token(tmp_path, rc):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ray").write_text(FAKE_RAY)
    (bindir / "ray").chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path), "FAKE_RC": str(rc),
           "RAY_AUTH_TOKEN": "token-from-the-secret"}
    res = subprocess.run(["bash", str(K8S / "images" / "ray-prestop.sh"), "head", "cdb"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == rc  # ray's own answer: the kubelet logs a failed hook, then stops the container
    assert (tmp_path / "ray-args").read_text().split() == ["job", "stop", "--address", "http://127.0.0.1:8265", "cdb"]
    assert (tmp_path / "ray-token").read_text() == "token-from-the-secret"
    bad = subprocess.run(["bash", str(K8S / "images" / "ray-prestop.sh"), "head"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode != 0 and "JOB_ID" in bad.stderr


def test_worker_prestop_hook_waits_while_ray_work_runs_on_the_node(tmp_path):
    """The worker's hook returns once no Ray task or actor process is left (idle pool workers do not
    count), and at once on a node with nothing running."""
    import time

    proc = tmp_path / "proc"
    for pid, argv in ((11, ["ray::IDLE"]), (12, ["/opt/venv/bin/python", "-m", "ray.util.client.server"]),
                      (13, ["ray::RayTrainWorker.run_train_fn"])):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    hook = ["bash", str(K8S / "images" / "ray-prestop.sh"), "worker"]
    env = {"PATH": os.environ["PATH"], "PROC_DIR": str(proc)}
    started = time.monotonic()
    waiting = subprocess.Popen(hook, env=env)
    time.sleep(1.0)
    assert waiting.poll() is None  # a rank is still at work
    shutil.rmtree(proc / "13")
    assert waiting.wait(timeout=30) == 0
    assert time.monotonic() - started >= 1.0
    started = time.monotonic()
    assert subprocess.run(hook, env=env, timeout=30).returncode == 0
    assert time.monotonic() - started < 3  # only ray::IDLE and other processes: nothing to wait for


@functools.lru_cache(maxsize=None)
def checkpoint_bytes_per_rank(scale: str) -> int:
    """cdb.memory's plan for the scale as its preset runs it: each rank's part of a checkpoint."""
    from cdb import config as cfg
    from cdb.memory import estimate_memory

    config = cfg.resolve(scale=scale)
    ranks = config.scale.num_workers * max(config.scale.gpus_per_worker, 1)
    return estimate_memory(config, ranks, None).checkpoint_bytes


@functools.lru_cache(maxsize=None)
def model_bytes(scale: str) -> int:
    """The 16-bit model rank 0 exports (staged locally when the storage is an object store)."""
    from cdb import config as cfg
    from cdb.memory import estimate_memory

    config = cfg.resolve(scale=scale)
    plan = estimate_memory(config, config.scale.num_workers * max(config.scale.gpus_per_worker, 1), None)
    return 2 * plan.total_params


def scales_of(spec: dict) -> list[str]:
    """The scale presets a RayJob trains: the training entrypoint's, or every point of the sweep's."""
    entry = spec["entrypoint"]
    if "cdb.sweep" in entry:
        return re.search(r"--scales (\S+)", entry).group(1).split(",")
    return [scale_arg(entry)]


def quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(q))
    assert m, q
    return int(m.group(1)) * units.get(m.group(2), 1)


def stop_seconds(checkpoint_per_node: int) -> float:
    """A stop's worst case: the checkpoint a stop writes and one still uploading, from one node at the
    assumed bandwidth, plus the margin (k8s/README.md, "Stopping")."""
    return 2 * checkpoint_per_node / WRITE_BANDWIDTH + STOP_MARGIN_S


def staging_bytes(checkpoint_per_node: int, model: int) -> int:
    """The staging a worker pod needs under /tmp: two checkpoints in flight, the exported model, Ray's session."""
    return 2 * checkpoint_per_node + model + RAY_SESSION_GIB * 2**30


@pytest.mark.parametrize("where,rj", rayjobs(), ids=[w for w, _ in rayjobs()])
def test_stop_wait_grace_period_and_staging_disk_are_sized_from_the_checkpoint(where, rj):
    """Ray's stop wait (RAY_JOB_STOP_WAIT_TIME_S, read by the head's job supervisor) covers the checkpoint
    a node writes on a stop (cdb.memory's checkpoint per rank x the ranks of the node); the pods' grace
    period outlasts that wait; the worker pods request the staging disk it needs, on an emptyDir."""
    spec = rj["spec"]
    per_node, model = 0, 0
    for scale in scales_of(spec):
        per_rank = checkpoint_bytes_per_rank(scale)
        from cdb import config as cfg

        preset = cfg.resolve(scale=scale).scale
        ranks = preset.num_workers * max(preset.gpus_per_worker, 1)
        per_node = max(per_node, per_rank * min(ranks, GPUS_PER_NODE))
        model = max(model, model_bytes(scale))
    waits = set()
    for w, tpl, c in ray_containers(rj):
        wait = int(env_of(c)["RAY_JOB_STOP_WAIT_TIME_S"]["value"])
        waits.add(wait)
        assert wait >= stop_seconds(per_node), f"{where} {w}: {wait} s < {stop_seconds(per_node):.0f} s"
        assert tpl["spec"]["terminationGracePeriodSeconds"] >= wait + GRACE_AFTER_WAIT_S, f"{where} {w}"
    assert len(waits) == 1
    for wg in worker_groups(rj):
        [c] = wg["template"]["spec"]["containers"]
        if "cdb.sweep" in spec["entrypoint"] and not gpu_of(c):
            need = staging_bytes(checkpoint_bytes_per_rank("smol-135m") * 2, model_bytes("smol-135m"))
        else:
            need = staging_bytes(per_node, model)
        request = quantity_bytes(c["resources"]["requests"]["ephemeral-storage"])
        assert request >= need, f"{where} {wg['groupName']}: {request / 2**30:.0f} GiB < {need / 2**30:.0f} GiB"
        assert "ephemeral-storage" not in (c["resources"].get("limits") or {}), "a limit evicts the pod: the run"


STOP_TABLE = {"llama2-13b": (927, 1020, 180), "llama2-70b": (1959, 2100, 525)}
"""scale -> (stop seconds needed, grace period set, staging GiB needed), as k8s/README.md states them."""


def test_readme_states_the_stop_arithmetic():
    readme = (K8S / "README.md").read_text()
    for scale, (seconds, grace, staging) in STOP_TABLE.items():
        rj = overlay_rayjob(ALIASES.get(scale, scale))
        per_node = checkpoint_bytes_per_rank(scale) * GPUS_PER_NODE
        assert round(stop_seconds(per_node)) == pytest.approx(seconds, abs=2), scale
        assert round(staging_bytes(per_node, model_bytes(scale)) / 2**30) == pytest.approx(staging, abs=1), scale
        assert rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace
        row = f"| `{scale}` | {per_node / 2**30:.1f} GiB | {seconds} s |"
        assert row in readme, f"README lacks the row {row!r}"
    assert f"{WRITE_BANDWIDTH / 1e6:.0f} MB/s" in readme and f"{STOP_MARGIN_S} s" in readme


@pytest.mark.parametrize("where,rj", rayjobs(), ids=[w for w, _ in rayjobs()])
def test_ray_pods_have_a_read_only_root_with_writable_tmp_and_home(where, rj):
    """Ray's session folder and the checkpoint staging (cdb-ckpt-* under the temp folder) go to /tmp,
    caches to $HOME (/home/ray, the image's user): both emptyDirs on the node's disk."""
    for w, tpl, c in ray_containers(rj):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, f"{where} {w}"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in tpl["spec"]["volumes"]}
        for path in ("/tmp", "/home/ray"):
            assert vols[mounts[path]]["emptyDir"].get("medium") != "Memory", f"{where} {w}: {path} on disk"
        assert not any(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"] in ("/tmp", "/home/ray"))


def test_the_staging_folder_is_under_the_temp_folder(tmp_path, monkeypatch):
    """What the /tmp emptyDir and its ephemeral-storage request are for: cdb stages each rank's checkpoint
    shard in <temp folder>/cdb-ckpt-<pid>-*, and clears a dead process's shard from there."""
    import tempfile

    from cdb import worker

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    orphan = tmp_path / f"{worker.STAGING_PREFIX}{2**22 + 12345}-abc"  # above Linux's default pid_max: dead
    orphan.mkdir()
    assert worker.remove_orphaned_staging() == [orphan] and not orphan.exists()


# ------------------------------------------------------------------ --fresh in a RayJob


def test_fresh_is_refused_inside_a_training_rayjob(tmp_path):
    """A retried RayJob runs the same entrypoint again: with --fresh it would archive the run and start over
    each time. The training RayJob marks its pods (the env var below, read from the rendered manifest) and
    cdb.train refuses --fresh there, before touching the run folder."""
    rj = overlay_rayjob("13b")
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    [marker] = [e for e in head["env"] if e["name"].startswith("CDB_RAY")]
    from cdb.train import RAYJOB_ENV

    assert marker["name"] == RAYJOB_ENV and marker["value"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("scale: {name: tiny}\n")
    env = {**os.environ, marker["name"]: marker["value"], "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "cdb.train", "--scale", "tiny", "--fresh", "--output-dir", str(run)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"--fresh: refused inside a RayJob ({RAYJOB_ENV} is set)" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing archived
    # The sweep's RayJob does not carry it: cdb.sweep itself passes --fresh to a point it starts anew.
    [sweep] = [d for w, d in rayjobs() if w == "sweep"]
    for _, _, c in ray_containers(sweep):
        assert RAYJOB_ENV not in env_of(c)


def test_image_placeholders_agree():
    """The sweep's and the RayCronJob's kustomizations pin the same cdb image as the base."""
    base = {i["name"]: i for i in load_kustomization(K8S / "base")["images"]}
    assert set(base) == {"cdb", "cdb-mlflow", "postgres"}
    for d in (K8S / "sweep", K8S / "sweep" / "raycronjob"):
        imgs = {i["name"]: i for i in load_kustomization(d)["images"]}
        assert imgs["cdb"] == base["cdb"], f"{rel(d)}: set the same cdb image as k8s/base"
    [dep] = [d for _, d in raw_manifest_docs() if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "cdb-mlflow"


# ----------------------------------------------------------- platform services


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in raw_manifest_docs() if d["kind"] == kind]


def sweep_cronjob() -> dict:
    [cj] = [d for d in by_kind("CronJob") if d["metadata"]["name"] == "cdb-sweep"]
    return cj


def test_shared_pvc_is_rwx():
    [pvc] = by_kind("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "cdb-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"]


def test_mlflow_server():
    [dep] = by_kind("Deployment")
    svc = next(s for s in by_kind("Service") if s["metadata"]["name"] == "mlflow")
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["port"] == 5000
    pod = dep["spec"]["template"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())
    [c] = pod["spec"]["containers"]
    argv = c["command"] + c["args"]
    assert argv[:2] == ["mlflow", "server"]
    args = dict(zip(argv, argv[1:]))
    assert args["--app-name"] == "basic-auth"
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert args["--host"] == "0.0.0.0" and args["--port"] == "5000"
    assert args["--backend-store-uri"].startswith("postgresql://$(PGUSER)@")
    assert "PASSWORD" not in args["--backend-store-uri"], "libpq takes the password from PGPASSWORD"
    assert "--serve-artifacts" in argv and args["--artifacts-destination"]
    env = {e["name"]: e for e in c["env"]}
    for name in ("PGUSER", "PGPASSWORD", "PGDATABASE"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "cdb-postgres"
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "cdb-mlflow-admin"
    # The auth config is the mounted ConfigMap, and names no admin password of its own.
    [auth_cm] = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "mlflow-auth"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    [auth_vol] = [n for n, v in vols.items() if v.get("configMap", {}).get("name") == "mlflow-auth"]
    ini_name = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"]).name
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == f"{mounts[auth_vol]['mountPath']}/{ini_name}"
    ini = auth_cm["data"][ini_name]
    assert "[mlflow]" in ini and "admin_password" not in ini and "default_permission = READ" in ini
    # Of the shared volume, only the artifacts sub-path, where the artifacts go.
    shared = [m for m in c["volumeMounts"] if vols[m["name"]].get("persistentVolumeClaim")]
    assert [(m["mountPath"], m["subPath"]) for m in shared] == [("/mlflow-artifacts", "mlflow-artifacts")]
    [cm] = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "mlflow-config"]
    assert cm["data"]["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlflow-artifacts"
    # $(VAR) references in args resolve to env or envFrom variables.
    known = set(env) | set(cm["data"])
    for ref in re.findall(r"\$\((\w+)\)", " ".join(argv)):
        assert ref in known, ref
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
        assert c[probe]["httpGet"]["port"] in ("http", 5000)


def test_postgres():
    [sts] = by_kind("StatefulSet")
    svc = next(s for s in by_kind("Service") if s["metadata"]["name"] == sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["volumeClaimTemplates"]
    [c] = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "cdb-postgres"
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 999
    [cm] = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "mlflow-config"]
    assert cm["data"]["PGHOST"].startswith(svc["metadata"]["name"] + ".")


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        op, key = expr["operator"], expr["key"]
        if op == "In" and labels.get(key) not in expr["values"]:
            return False
        if op == "NotIn" and labels.get(key) in expr["values"]:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def kuberay_pod_labels(template_labels: dict, node_type: str, cluster: str, group: str) -> dict:
    """The labels KubeRay (v1.5.1 to v1.7.0) puts on a head or worker pod: its own set, then the
    template's labels, except that a template cannot override ray.io/node-type, ray.io/group or
    ray.io/cluster."""
    fixed = {"ray.io/node-type": node_type, "ray.io/group": group, "ray.io/cluster": cluster}
    own = {**fixed, "ray.io/is-ray-node": "yes", "ray.io/identifier": f"{cluster}-{node_type}",
           "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    return {**own, **{k: v for k, v in template_labels.items() if k not in fixed}}


def submitter_pod_labels(template_labels: dict, rayjob: str) -> dict:
    """The labels of the K8sJobMode submitter pod: the template's, plus (KubeRay >= 1.6) the
    originated-from ones and the batch Job controller's."""
    return {**template_labels, "ray.io/originated-from-cr-name": rayjob, "ray.io/originated-from-crd": "RayJob",
            "app.kubernetes.io/created-by": "kuberay-operator", "batch.kubernetes.io/job-name": rayjob,
            "job-name": rayjob}


def _ip_in(block: dict, ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    return address in ipaddress.ip_network(block["cidr"]) and not any(
        address in ipaddress.ip_network(e) for e in block.get("except") or [])


def _ports(rule: dict, protocol: str = "TCP") -> set:
    return {p["port"] for p in rule.get("ports") or [{"port": 0, "protocol": protocol}]
            if p.get("protocol", "TCP") == protocol}


def test_network_policies():
    """Every flow the project needs is allowed, in both directions, by selectors that match the labels the
    pods really carry (KubeRay's own included), and nothing else: ingress and egress are denied by default
    in the namespace, egress to the outside only on 443 and outside the private ranges."""
    nps = [d for src, d in rendered_docs() if d["kind"] == "NetworkPolicy" and src in ("render:base", "render:sweep")]
    names = {n["metadata"]["name"] for n in nps}
    assert len(names) == len(nps)  # the base's policies once, the sweep's own
    [deny_in] = [n for n in nps if n["spec"]["podSelector"] == {} and n["spec"]["policyTypes"] == ["Ingress"]]
    [deny_out] = [n for n in nps if n["spec"]["podSelector"] == {} and not n["spec"].get("egress")
                  and n["spec"]["policyTypes"] == ["Egress"]]
    assert not deny_in["spec"].get("ingress")
    [dep] = by_kind("Deployment")
    [sts] = by_kind("StatefulSet")
    backup = next(d for d in by_kind("CronJob") if d["metadata"]["name"] == "postgres-backup")
    mlflow = dep["spec"]["template"]["metadata"]["labels"]
    postgres = sts["spec"]["template"]["metadata"]["labels"]
    backup_pod = backup["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    launcher = sweep_cronjob()["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    coredns = {"k8s-app": "kube-dns"}
    ray = {}
    for where, spec in (("train", overlay_rayjob("13b")["spec"]), ("sweep", sweep_template()["spec"])):
        cs = spec["rayClusterSpec"]
        ray[f"{where}-head"] = kuberay_pod_labels(cs["headGroupSpec"]["template"]["metadata"]["labels"], "head",
                                                  f"cdb-{where}-abcde", "headgroup")
        for wg in cs["workerGroupSpecs"]:
            ray[f"{where}-{wg['groupName']}"] = kuberay_pod_labels(wg["template"]["metadata"]["labels"], "worker",
                                                                   f"cdb-{where}-abcde", wg["groupName"])
        ray[f"{where}-submitter"] = submitter_pod_labels(spec["submitterPodTemplate"]["metadata"]["labels"],
                                                         f"cdb-{where}")
    heads = [v for k, v in ray.items() if k.endswith("-head")]
    workers = [v for k, v in ray.items() if k.endswith(("-gpu", "-cpu"))]
    submitters = [v for k, v in ray.items() if k.endswith("-submitter")]
    assert len(heads) == 2 and len(workers) == 3 and len(submitters) == 2

    def peer_matches(peer: dict, labels: dict | None, namespace: str) -> bool:
        pod_ok = "podSelector" not in peer or (labels is not None and _selects(peer["podSelector"], labels))
        if "namespaceSelector" in peer:
            ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
        else:
            ns_ok = namespace == "cdb"
        return pod_ok and ns_ok and ("podSelector" in peer or "namespaceSelector" in peer)

    def allowed(target: dict, source: dict | None = None, namespace: str = "cdb") -> set:
        """Ports (0: any) on which a pod labelled `target` accepts a pod labelled `source` from `namespace`."""
        ports = set()
        for np in nps:
            if not _selects(np["spec"]["podSelector"], target):
                continue
            for rule in np["spec"].get("ingress") or []:
                if any(peer_matches(peer, source, namespace) for peer in rule["from"]):
                    ports |= _ports(rule)
        return ports

    def egress(source: dict, target: dict | str | None = None, namespace: str = "cdb", protocol: str = "TCP") -> set:
        """Ports (0: any) on which a pod labelled `source` may reach a pod labelled `target` in `namespace`,
        or the address `target`."""
        ports = set()
        for np in nps:
            if not _selects(np["spec"]["podSelector"], source) or "Egress" not in np["spec"]["policyTypes"]:
                continue
            for rule in np["spec"].get("egress") or []:
                for peer in rule["to"]:
                    hit = _ip_in(peer["ipBlock"], target) if "ipBlock" in peer and isinstance(target, str) else \
                        "ipBlock" not in peer and not isinstance(target, str) and peer_matches(peer, target, namespace)
                    if hit:
                        ports |= _ports(rule, protocol)
        return ports

    # --- ingress
    stranger = {"app.kubernetes.io/part-of": "cdb", "app.kubernetes.io/name": "debug"}
    for head in heads:
        for peer in heads + workers:
            assert allowed(head, peer) == {0}  # Ray's node-to-node ports
        for submitter in submitters:
            assert allowed(head, submitter) == {8265}
        assert allowed(head, {}, namespace="kuberay-system") == {8265}  # the operator polls job status
        for outsider in (stranger, launcher, mlflow, backup_pod):
            assert allowed(head, outsider) == set()
        assert allowed(head, {}, namespace="default") == set()
    for worker in workers:
        assert all(allowed(worker, peer) == {0} for peer in heads + workers)
        assert all(allowed(worker, other) == set() for other in submitters + [stranger, mlflow, launcher])
    for peer in heads + workers:
        assert allowed(mlflow, peer) == {5000}
    assert allowed(mlflow, {}, namespace="ingress-nginx") == {5000}
    for outsider in submitters + [stranger, launcher, postgres, backup_pod]:
        assert allowed(mlflow, outsider) == set()
    assert allowed(mlflow, {}, namespace="default") == set()
    assert allowed(postgres, mlflow) == {5432} and allowed(postgres, backup_pod) == {5432}
    for outsider in heads + workers + submitters + [stranger, launcher]:
        assert allowed(postgres, outsider) == set()
    assert allowed(postgres, {}, namespace="ingress-nginx") == set()
    assert allowed(launcher, stranger) == set() and allowed(backup_pod, stranger) == set()

    # --- egress: DNS for everyone; each flow above from its source's side; HTTPS outside the private ranges
    everyone = heads + workers + submitters + [mlflow, postgres, backup_pod, launcher, stranger]
    for pod in everyone:
        assert egress(pod, coredns, "kube-system", "UDP") == {53} and egress(pod, coredns, "kube-system") == {53}
        assert egress(pod, coredns, "default", "UDP") == set()
    for pod in heads + workers:
        assert all(egress(pod, peer) == {0} for peer in heads + workers)  # incl. the preStop hook's 8265
        assert egress(pod, mlflow) == {5000} and egress(pod, postgres) == set()
        assert egress(pod, "18.239.50.1") == {443}  # a public address (the Hugging Face hub, S3)
    for pod in submitters:
        assert all(egress(pod, head) == {8265} for head in heads)
        assert all(egress(pod, worker) == set() for worker in workers) and egress(pod, "18.239.50.1") == set()
    assert egress(mlflow, postgres) == {5432} and egress(mlflow, "52.216.0.1") == {443}
    assert egress(backup_pod, postgres) == {5432} and egress(backup_pod, "52.216.0.1") == set()
    assert egress(postgres, "52.216.0.1") == set() and egress(stranger, "52.216.0.1") == set()
    for private in ("10.0.12.7", "172.20.0.1", "192.168.1.1", "100.64.3.4", "169.254.169.254"):
        for pod in heads[:1] + workers + [mlflow]:
            assert egress(pod, private) == set(), (private, pod.get("ray.io/node-type", "mlflow"))
    # The Kubernetes API (private or public endpoint, 443): the sweep's launcher and its autoscaling head only.
    assert egress(launcher, "10.0.12.7") == {443} and egress(ray["sweep-head"], "10.0.12.7") == {443}
    assert egress(ray["train-head"], "10.0.12.7") == set() and egress(stranger, "10.0.12.7") == set()


def test_postgres_backup_cronjob():
    cj = next(d for d in by_kind("CronJob") if d["metadata"]["name"] == "postgres-backup")
    [sts] = by_kind("StatefulSet")
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == sts["spec"]["template"]["spec"]["containers"][0]["image"]  # same pg_dump major
    env = {e["name"]: e for e in c["env"]}
    for name in ("PGUSER", "PGPASSWORD", "PGDATABASE"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "cdb-postgres"
    assert {"configMapRef": {"name": "mlflow-config"}} in c["envFrom"]  # PGHOST, PGPORT
    script = c["args"][0]
    assert "pg_dump" in script and "PGPASSWORD" not in script and "set -eu" in script
    [mount] = c["volumeMounts"]
    assert mount["subPath"] == "backups/postgres" and mount["mountPath"] in script
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"



# ------------------------------------------------------------------------ security


def pod_security_problems(tpl: dict) -> list[str]:
    spec = tpl["spec"]
    problems = []
    psc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(flag)
    if any("hostPath" in v for v in spec.get("volumes") or []):
        problems.append("hostPath volume")
    for c in containers(spec):
        name = c.get("name")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{name}: capabilities not dropped")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append(f"{name}: adds capabilities")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser", 1)) == 0:
            problems.append(f"{name}: runs as uid 0")
        if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    problems.append(f"{name}: no {part}.{r}")
        if gpu_of(c) != gpu_of(c, "requests"):
            problems.append(f"{name}: GPU requests != limits")
        for e in c.get("env") or []:
            if SECRETISH_ENV.search(e["name"]) and "value" in e:
                problems.append(f"{name}: literal value for {e['name']}")
        for ef in c.get("envFrom") or []:
            if "secretRef" not in ef and "configMapRef" not in ef:
                problems.append(f"{name}: odd envFrom")
    return problems


def test_pod_security_everywhere():
    templates = all_pod_templates()
    assert len(templates) >= 30
    bad = {w: p for w, tpl in templates if (p := pod_security_problems(tpl))}
    assert not bad, json.dumps(bad, indent=1)


def test_pod_security_check_catches_violations():
    [dep] = by_kind("Deployment")
    tpl = copy.deepcopy(dep["spec"]["template"])
    assert pod_security_problems(tpl) == []
    c = tpl["spec"]["containers"][0]
    c["securityContext"]["privileged"] = True
    del c["resources"]["limits"]
    c["env"].append({"name": "HF_TOKEN", "value": "hf_xxx"})
    tpl["spec"]["securityContext"].pop("seccompProfile")
    problems = " ".join(pod_security_problems(tpl))
    for word in ("privileged", "limits.cpu", "HF_TOKEN", "seccompProfile"):
        assert word in problems


def test_autoscaler_sidecar_is_locked_down():
    cs = sweep_template()["spec"]["rayClusterSpec"]
    assert cs["enableInTreeAutoscaling"] is True
    ao = cs["autoscalerOptions"]
    assert ao["securityContext"]["allowPrivilegeEscalation"] is False
    assert ao["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(ao["resources"]["requests"]) and {"cpu", "memory"} <= set(ao["resources"]["limits"])


# ------------------------------------------------------------------ GPU nodes


def gpu_pools_allowed(pod: dict) -> set:
    """The cdb.dev/gpu values a pod may be scheduled on (nodeSelector or required node affinity)."""
    allowed = set()
    if "cdb.dev/gpu" in (pod.get("nodeSelector") or {}):
        allowed.add(pod["nodeSelector"]["cdb.dev/gpu"])
    required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in required.get("nodeSelectorTerms") or []:
        for e in term.get("matchExpressions") or []:
            if e["key"] == "cdb.dev/gpu" and e["operator"] == "In":
                allowed |= set(e["values"])
    return allowed


def pool_fits_pod(pool: dict, pod: dict, container: dict) -> bool:
    """The pool's instances (per its instance-family requirement) hold the pod's CPU and memory."""
    families = next(r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]
                    if r["key"] == "karpenter.k8s.aws/instance-family")
    smallest = min(INSTANCES[f] for f in families)
    limits = container["resources"]["limits"]
    memory = int(limits["memory"].removesuffix("Gi"))
    return int(limits["cpu"]) <= smallest[0] and memory <= smallest[1] and gpu_of(container) <= smallest[2]


# vCPU, GiB, GPUs of the 8-GPU instance of each family the NodePools allow.
INSTANCES = {"p5": (192, 2048, 8), "p4de": (96, 1152, 8), "p4d": (96, 1152, 8)}


def test_karpenter_nodepools_fit_the_jobs():
    pools = by_kind("NodePool")
    classes = {c["metadata"]["name"] for c in by_kind("EC2NodeClass")}
    assert pools
    for p in pools:
        t = p["spec"]["template"]
        ref = t["spec"]["nodeClassRef"]
        assert (ref["group"], ref["kind"]) == ("karpenter.k8s.aws", "EC2NodeClass") and ref["name"] in classes
        assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in t["spec"]["taints"]
        assert "cdb.dev/gpu" in t["metadata"]["labels"]
        assert p["spec"]["disruption"]["consolidationPolicy"] == "WhenEmpty"
        assert int(p["spec"]["limits"]["nvidia.com/gpu"]) >= GPUS_PER_NODE
    # Every GPU worker pod selects labels some NodePool sets, tolerates its taints,
    # and the largest run fits under that pool's GPU limit.
    for overlay in GPU_OVERLAYS:
        rj = overlay_rayjob(overlay)
        need = SCALES[overlay][1] * SCALES[overlay][2]
        for wg in worker_groups(rj):
            pod = wg["template"]["spec"]
            allowed = gpu_pools_allowed(pod)
            fits = [p for p in pools if p["spec"]["template"]["metadata"]["labels"]["cdb.dev/gpu"] in allowed]
            assert len(fits) == len(allowed), f"{overlay}: {allowed} are not all NodePools"
            # Every pool the pod accepts can really take it: the fallback is selectable.
            for p in fits:
                assert pool_fits_pod(p, pod, pod["containers"][0]), (overlay, p["metadata"]["name"])
            for p in fits:
                for taint in p["spec"]["template"]["spec"]["taints"]:
                    assert any(
                        tol["key"] == taint["key"] and tol["effect"] == taint["effect"] and tol["operator"] == "Exists"
                        for tol in pod["tolerations"]
                    )
            assert max(int(p["spec"]["limits"]["nvidia.com/gpu"]) for p in fits) >= need


def _gpu_memory_mib(pool: dict) -> set:
    """GPU memory (MiB) the pool's requirement admits, checked on the A100 sizes AWS sells."""
    [req] = [r for r in pool["spec"]["template"]["spec"]["requirements"]
             if r["key"] == "karpenter.k8s.aws/instance-gpu-memory"] or [None]
    sizes = {40960, 81920}
    if req is None:
        return sizes
    bound = int(req["values"][0])
    return {m for m in sizes if (m > bound if req["operator"] == "Gt" else m < bound if req["operator"] == "Lt"
                                 else str(m) in req["values"])}


def test_a100_pools_are_split_by_gpu_memory_and_the_fallback_is_selectable():
    pools = {p["spec"]["template"]["metadata"]["labels"]["cdb.dev/gpu"]: p for p in by_kind("NodePool")}
    assert set(pools) == {"h100", "a100-80gb", "a100-40gb"}
    assert _gpu_memory_mib(pools["a100-80gb"]) == {81920} and _gpu_memory_mib(pools["a100-40gb"]) == {40960}
    weights = {k: p["spec"]["weight"] for k, p in pools.items()}
    assert weights["h100"] > weights["a100-80gb"] > weights["a100-40gb"]
    # The 80 GB jobs accept the A100 80 GB pool (preferring H100) and never the 40 GB one.
    for overlay in ("7b", "13b", "70b"):
        pod = worker_groups(overlay_rayjob(overlay))[0]["template"]["spec"]
        assert gpu_pools_allowed(pod) == {"h100", "a100-80gb"}
        [pref] = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert pref["preference"]["matchExpressions"][0]["values"] == ["h100"]
    # The 40 GB pool runs the offload variant the planner sizes for it.
    rj = overlay_rayjob_from(K8S / "examples" / "70b-offload-a100-40gb")
    pod = worker_groups(rj)[0]["template"]["spec"]
    assert gpu_pools_allowed(pod) == {"a100-40gb"} and scale_arg(rj["spec"]["entrypoint"]) == "llama2-70b-offload"
    assert pool_fits_pod(pools["a100-40gb"], pod, pod["containers"][0])


# ----------------------------------------------------------------------- sweep


def test_sweep_rbac_is_minimal():
    [role] = by_kind("Role")
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}
    ]
    [rb] = by_kind("RoleBinding")
    [sa] = by_kind("ServiceAccount")
    cj = sweep_cronjob()
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert rb["subjects"][0]["name"] == sa["metadata"]["name"]
    assert cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_sweep_cronjob():
    cj = sweep_cronjob()
    s = cj["spec"]
    assert s["concurrencyPolicy"] == "Forbid"
    assert s["successfulJobsHistoryLimit"] >= 1 and s["failedJobsHistoryLimit"] >= 1
    pod = s["jobTemplate"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    images = {i["name"]: i for i in load_kustomization(K8S / "sweep")["images"]}
    assert re.fullmatch(r"\d+\.\d+\.\d+", images[c["image"]]["newTag"]), "kubectl image's tag names its version"
    assert c["command"][0] == "/bin/bash"  # launch.sh needs pipefail
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    env = {e["name"]: e for e in c["env"]}
    mount = next(m for m in c["volumeMounts"] if env["TEMPLATE"]["value"].startswith(m["mountPath"] + "/"))
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    gen = next(g for g in load_kustomization(K8S / "sweep")["configMapGenerator"] if g["name"] == vol["configMap"]["name"])
    keys = {f.split("=", 1)[0] for f in gen["files"]}
    assert Path(env["TEMPLATE"]["value"]).name in keys
    assert c["command"][-1] == mount["mountPath"] + "/launch.sh" and "launch.sh" in keys


def test_sweep_render_wires_configmap_and_image(tmp_path):
    docs = render(K8S / "sweep")
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("cdb-sweep-template")]
    [cj] = [d for d in docs if d["kind"] == "CronJob"]
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in pod["volumes"])
    assert yaml.safe_load(cm["data"]["rayjob-sweep.yaml"]) == sweep_template()
    # The cdb image pinned in k8s/sweep reaches the launcher's CDB_IMAGE and the admission policy's params.
    work = tmp_path / "sweep"
    shutil.copytree(K8S / "sweep", work)
    k = load_kustomization(work)
    digest = "sha256:" + hashlib.sha256(b"cdb").hexdigest()
    for im in k["images"]:
        if im["name"] == "cdb":
            im.update(newName="registry.example/cdb", newTag="1.2.3", digest=digest)
    (work / "kustomization.yaml").write_text(yaml.safe_dump(k))
    docs = kustomize(work)
    [cj] = [d for d in docs if d["kind"] == "CronJob"]
    env = {e["name"]: e for e in cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CDB_IMAGE"]["value"] == f"registry.example/cdb:1.2.3@{digest}"
    [params] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cdb-sweep-policy"]
    assert params["data"]["image"] == f"registry.example/cdb:1.2.3@{digest}"


def test_sweep_admission_policy():
    """The ValidatingAdmissionPolicy binds to the launcher's ServiceAccount and its params hold the
    Secrets the sweep's pods really use. (Its CEL is executed in tests/test_admission_policy.py.)"""
    [vap] = by_kind("ValidatingAdmissionPolicy")
    [binding] = by_kind("ValidatingAdmissionPolicyBinding")
    [sa] = by_kind("ServiceAccount")
    params = next(d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "cdb-sweep-policy")
    spec = vap["spec"]
    assert binding["spec"]["policyName"] == vap["metadata"]["name"] and binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["paramRef"]["name"] == params["metadata"]["name"]
    assert binding["spec"]["paramRef"]["parameterNotFoundAction"] == "Deny"
    assert spec["failurePolicy"] == "Fail" and spec["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"] and "CREATE" in rule["operations"]
    [cond] = spec["matchConditions"]
    assert f'"system:serviceaccount:cdb:{sa["metadata"]["name"]}"' in cond["expression"]
    cel = " ".join(v["expression"] for v in spec["validations"])
    for needle in ("clusterSelector", "params.data.image", "serviceAccountName", "privileged", "hostPath",
                   "hostNetwork", "secretKeyRef", "secretRef", "variables.autoscaler", "variables.allowedSecrets"):
        assert needle in cel, needle
    # The Secrets the sweep template uses are exactly the allowed ones; the image placeholder is the same.
    used = set()
    for _, tpl in ray_pod_templates(sweep_template()):
        for c in containers(tpl["spec"]):
            used |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env") or []
                     if "secretKeyRef" in (e.get("valueFrom") or {})}
        assert "serviceAccountName" not in tpl["spec"]
    assert used == set(params["data"]["secrets"].split(","))
    assert params["data"]["image"] == "cdb"


def test_sweep_template():
    rj = sweep_template()
    assert rj["metadata"]["generateName"] == "cdb-sweep-" and "name" not in rj["metadata"]
    assert rj["metadata"]["labels"]["cdb.dev/sweep"] == "weekly"
    spec = rj["spec"]
    assert spec["entrypoint"] == SWEEP_ENTRYPOINT
    # Room for the largest scale of the sweep (13b: 16 workers x 1 GPU) and for the
    # CPU scale (smol-135m: 2 CPU workers) without GPUs.
    wgs = spec["rayClusterSpec"]["workerGroupSpecs"]
    max_gpus = sum(wg["maxReplicas"] * gpu_of(wg["template"]["spec"]["containers"][0]) for wg in wgs)
    assert max_gpus >= SCALES["13b"][1] * SCALES["13b"][2]
    cpu = [wg for wg in wgs if gpu_of(wg["template"]["spec"]["containers"][0]) == 0]
    assert cpu and cpu[0]["maxReplicas"] >= 2
    # A sweep ends before the next weekly run.
    assert spec["activeDeadlineSeconds"] < 7 * 24 * 3600


def test_raycronjob_runs_the_same_sweep():
    rcj = _first("RayCronJob")
    cj = sweep_cronjob()
    assert rcj["spec"]["jobTemplate"] == sweep_template()["spec"]
    assert rcj["spec"]["schedule"] == cj["spec"]["schedule"]


FAKE_KUBECTL = """#!/bin/sh
# fake kubectl: `get` prints $FAKE_GET (or fails when FAKE_GET_FAILS is set), `create -f -`
# stores stdin (or answers AlreadyExists when FAKE_EXISTS is set).
echo "$*" >> "$FAKE_DIR/calls"
case "$1" in
  get) [ -z "${FAKE_GET_FAILS:-}" ] || { echo "error: connection refused" >&2; exit 1; }
       printf '%s' "$FAKE_GET" ;;
  create) if [ -n "${FAKE_EXISTS:-}" ]; then
            echo 'Error from server (AlreadyExists): rayjobs.ray.io "x" already exists' >&2; exit 1
          fi
          cat > "$FAKE_DIR/created.yaml"; echo rayjob.ray.io/created ;;
  *) exit 3 ;;
esac
"""


def this_week() -> str:
    """The ISO week now, as cdb.sweep names its folder (2026-W49)."""
    year, week, _ = datetime.datetime.now(datetime.timezone.utc).isocalendar()
    return f"{year}-W{week:02d}"


def this_weeks_sweep() -> str:
    return f"cdb-sweep-{this_week().lower()}"


@pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "sed", "grep")), reason="needs bash, sed, grep")
@pytest.mark.parametrize(
    "existing,fake,rc,creates,says",
    [
        ("", {}, 0, True, "rayjob.ray.io/created"),
        ("cdb-sweep-2026-w01=Complete\ncdb-sweep-2025-w52=Failed\n", {}, 0, True, "rayjob.ray.io/created"),
        ("cdb-sweep-2026-w01=Running\n", {}, 1, False, "cdb-sweep-2026-w01=Running"),
        ("cdb-sweep-2026-w01=Suspended\n", {}, 1, False, "cdb-sweep-2026-w01=Suspended"),
        ("cdb-sweep-2026-w01=ValidationFailed\n", {}, 1, False, "cdb-sweep-2026-w01=ValidationFailed"),
        ("{this}=Running\n", {"FAKE_EXISTS": "1"}, 0, False, "already exists"),
        ("", {"FAKE_GET_FAILS": "1"}, 1, False, "connection refused"),
    ],
    ids=["none", "finished", "running", "suspended", "validation-failed", "same-week", "kubectl-fails"],
)
def test_sweep_launch_script(tmp_path, existing, fake, rc, creates, says):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl_ = bindir / "kubectl"
    kubectl_.write_text(FAKE_KUBECTL)
    kubectl_.chmod(kubectl_.stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "FAKE_GET": existing.replace("{this}", this_weeks_sweep()),
        "POD_NAMESPACE": "cdb",
        "CDB_IMAGE": "registry.example/cdb:1.2.3",
        "TEMPLATE": str(K8S / "sweep" / "rayjob-sweep.template.yaml"),
        **fake,
    }
    res = subprocess.run(["bash", str(K8S / "sweep" / "launch.sh")], env=env, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == rc, res.stdout + res.stderr
    assert says in res.stdout + res.stderr
    created = tmp_path / "created.yaml"
    assert created.exists() == creates
    calls = (tmp_path / "calls").read_text()
    assert "get rayjobs -n cdb -l cdb.dev/sweep=weekly" in calls
    assert ("create -n cdb -f -" in calls) == (rc == 0)
    if creates:
        # The template with this week's name, this week as the sweep's period (fixed at launch: a
        # resubmission after Monday 00:00 still writes into this week's folder), and the image.
        [doc] = load_docs(created)
        expected = copy.deepcopy(sweep_template())
        del expected["metadata"]["generateName"]
        expected["metadata"]["name"] = this_weeks_sweep()
        expected["spec"]["entrypoint"] = SWEEP_ENTRYPOINT.replace("--period week", f"--period {this_week()}")
        for _, tpl in ray_pod_templates(expected):
            for c in tpl["spec"]["containers"]:
                c["image"] = "registry.example/cdb:1.2.3"
        assert doc == expected
        # ...which cdb.sweep takes as one period, named as it names the folder.
        from cdb import sweep

        args = sweep.parse_args(doc["spec"]["entrypoint"].split()[3:])
        settings_, _ = sweep.settings_from_args(args)
        assert sweep.period_kind(settings_.period) == "week"
        folder = sweep.period_folder(Path("/shared/sweeps/weekly"), settings_.period,
                                     datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=8))
        assert folder == Path("/shared/sweeps/weekly") / this_week()


def test_sweep_launch_script_refuses_a_template_without_the_period(tmp_path):
    template = tmp_path / "rayjob-sweep.yaml"
    template.write_text((K8S / "sweep" / "rayjob-sweep.template.yaml").read_text().replace("--period week", ""))
    env = {"PATH": os.environ["PATH"], "POD_NAMESPACE": "cdb", "CDB_IMAGE": "x", "TEMPLATE": str(template)}
    res = subprocess.run(["bash", str(K8S / "sweep" / "launch.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "no '--period week'" in res.stderr


# ------------------------------------------------------------ Kueue and EFA (components)


def test_kueue_component_gang_admits_the_rayjob():
    """The composed example is queued (label + suspend) in a LocalQueue that exists, whose ClusterQueue
    covers every resource the job's pods request, and gives the head a GPU-free flavor and the GPU
    workers the flavor whose node label they select."""
    rj = overlay_rayjob_from(K8S / "examples" / "70b-kueue-efa")
    queues = render(K8S / "kueue")
    kueue = {d["kind"]: d for d in queues if d["kind"] != "ResourceFlavor"}
    flavors = {d["metadata"]["name"]: d for d in queues if d["kind"] == "ResourceFlavor"}
    lq, cq = kueue["LocalQueue"], kueue["ClusterQueue"]
    assert rj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == lq["metadata"]["name"]
    assert rj["spec"]["suspend"] is True and rj["spec"]["shutdownAfterJobFinishes"] is True
    assert "clusterSelector" not in rj["spec"] and not rj["spec"]["rayClusterSpec"].get("enableInTreeAutoscaling")
    assert lq["metadata"]["namespace"] == rj["metadata"]["namespace"] and lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    assert _selects(cq["spec"]["namespaceSelector"], {"kubernetes.io/metadata.name": rj["metadata"]["namespace"]})
    [group] = cq["spec"]["resourceGroups"]
    quota = {f["name"]: {r["name"]: r["nominalQuota"] for r in f["resources"]} for f in group["flavors"]}
    assert set(quota) <= set(flavors)
    for _, tpl in ray_pod_templates(rj):
        for c in tpl["spec"]["containers"]:
            assert set(c["resources"]["requests"]) <= set(group["coveredResources"])
            # Kueue tries the flavors in order and takes one with quota for every resource; the
            # node labels of each flavor it may take must be ones the pod accepts anyway.
            usable = [f["name"] for f in group["flavors"]
                      if all(quota[f["name"]].get(r) not in (0, None) for r in c["resources"]["requests"]
                             if r in ("nvidia.com/gpu", "vpc.amazonaws.com/efa"))]
            assert usable
            labels_of = {name: (flavors[name].get("spec") or {}).get("nodeLabels") or {} for name in usable}
            if gpu_of(c):
                for name, labels in labels_of.items():
                    assert labels and labels["cdb.dev/gpu"] in gpu_pools_allowed(tpl["spec"]), name
            else:
                assert not labels_of[usable[0]]  # the head and the submitter stay off the GPU nodes
            # The flavor the pod gets holds what it requests, ephemeral storage (its staging) included.
            flavor = usable[0] if not gpu_of(c) else next(n for n in usable if labels_of[n])
            for resource, amount in c["resources"]["requests"].items():
                assert quantity_of(quota[flavor][resource]) >= quantity_of(amount), (flavor, resource)
    total_gpus = sum(wg["replicas"] * gpu_of(wg["template"]["spec"]["containers"][0])
                     for wg in worker_groups(rj))
    assert max(int(q.get("nvidia.com/gpu", 0)) for q in quota.values()) >= total_gpus


def quantity_of(q) -> float:
    """A Kubernetes quantity as a number (cpu "500m" = 0.5, "16Gi" = 16 * 2**30)."""
    m = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi|Ti)?", str(q))
    assert m, q
    return float(m.group(1)) * {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}.get(m.group(2), 1)


def test_kueue_manager_config_waits_for_pods_ready():
    """Kueue's own default configuration (vendored) with waitForPodsReady turned on, nothing else changed:
    a RayJob whose pods are not all ready within the timeout is evicted and requeued with back-off."""
    [cm] = render(K8S / "kueue" / "manager-config")
    assert (cm["kind"], cm["metadata"]["name"], cm["metadata"]["namespace"]) == \
        ("ConfigMap", "kueue-manager-config", "kueue-system")
    ours = yaml.safe_load(cm["data"]["controller_manager_config.yaml"])
    upstream = yaml.safe_load((SCHEMAS / "kueue" / "v0.14.2" / "controller_manager_config.yaml").read_text())
    wait = ours.pop("waitForPodsReady")
    assert ours == upstream
    assert "ray.io/rayjob" in ours["integrations"]["frameworks"]
    assert wait["enable"] is True and wait["blockAdmission"] is False
    timeout = re.fullmatch(r"(\d+)m", wait["timeout"])
    assert timeout and 15 <= int(timeout.group(1)) <= 60  # a GPU node and the image pull fit; a stuck job goes
    assert wait["requeuingStrategy"]["timestamp"] == "Eviction" and wait["requeuingStrategy"]["backoffLimitCount"] >= 1


@pytest.mark.parametrize("component,per_node", [("efa-p5", 32), ("efa-p4d", 4)])
def test_efa_component_requests_the_interfaces_and_sets_libfabric(tmp_path, component, per_node):
    docs = render_composed(tmp_path, [K8S / "overlays" / "70b"], [K8S / "components" / component])
    [rj] = [d for d in docs if d["kind"] == "RayJob"]
    [wg] = worker_groups(rj)
    [c] = wg["template"]["spec"]["containers"]
    assert c["resources"]["requests"]["vpc.amazonaws.com/efa"] == c["resources"]["limits"]["vpc.amazonaws.com/efa"]
    assert int(c["resources"]["limits"]["vpc.amazonaws.com/efa"]) == per_node
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1" and env["FI_EFA_FORK_SAFE"] == "1"
    head_env = {e["name"] for e in rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert "FI_PROVIDER" not in head_env  # the head (a CPU node) is untouched
    assert "MLFLOW_TRACKING_PASSWORD" in env  # the base env is kept, not replaced


# ------------------------------------------------------------------------ images


PINNED = re.compile(r"(?P<repo>[\w./-]+):(?P<tag>[\w.-]+)@(?P<digest>sha256:[0-9a-f]{64})")


def placeholder(digest: str) -> bool:
    """An all-zero digest, or any other made of one repeated character."""
    return len(set(digest.removeprefix("sha256:"))) == 1


def project_files() -> list[Path]:
    """k8s/ as the project writes it: everything but the vendored upstream CRDs."""
    return sorted(p for p in K8S.rglob("*") if p.is_file() and not p.is_relative_to(SCHEMAS))


def test_no_latest_and_no_placeholder_digest_anywhere_in_k8s():
    """No `latest` tag, AMI alias or version anywhere the project writes under k8s/ (prose in the README
    may say "the latest checkpoint"; a `:latest` or `@latest` there fails too), no placeholder digest."""
    for path in project_files():
        text = path.read_text()
        pattern = r"[:@]latest\b|newTag: *\"?latest" if path.suffix == ".md" else r"\blatest\b"
        assert not re.search(pattern, text), f"{rel(path)}: 'latest'"
        for digest in re.findall(r"sha256:[0-9a-f]{64}", text):
            assert not placeholder(digest), f"{rel(path)}: placeholder digest {digest}"
    assert placeholder("sha256:" + "0" * 64) and not placeholder("sha256:" + hashlib.sha256(b"x").hexdigest())


def test_every_image_is_pinned_by_tag_and_digest():
    """Every container of every render names its image as REPOSITORY:TAG@sha256:DIGEST, except the
    project's own before their first build: the project's version as the tag and no registry, which
    pulls from nowhere (k8s/images/refresh.py --build pins them)."""
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    images = set()
    for src, doc in rendered_docs():
        if src.endswith(":rayjob-sweep.yaml"):
            continue  # the launcher's template: its `image: cdb` becomes CDB_IMAGE (below) when it launches
        for where, tpl in pod_templates(doc):
            for c in containers(tpl["spec"]):
                images.add((src, c["image"]))
        if doc["kind"] == "CronJob":
            env = {e["name"]: e.get("value") for e in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                   ["containers"][0].get("env") or []}
            if "CDB_IMAGE" in env:
                images.add((src, env["CDB_IMAGE"]))
    seen = set()
    for src, image in images:
        m = PINNED.fullmatch(image)
        if m:
            assert not placeholder(m["digest"]), f"{src}: {image}"
            seen.add(m["repo"].rsplit("/", 1)[-1])
        else:
            assert image in {f"{name}:{version}" for name in PROJECT_IMAGES}, f"{src}: {image} is not pinned"
            seen.add(image.split(":")[0])
    assert seen == {"cdb", "cdb-mlflow", "postgres", "kubectl"}
    # The template's `image: cdb` placeholders are replaced at launch by the pinned CDB_IMAGE above.


def test_dockerfiles_pin_their_inputs():
    train = (K8S / "images" / "train.Dockerfile").read_text()
    mlflow = (K8S / "images" / "mlflow.Dockerfile").read_text()
    for name, text in (("train", train), ("mlflow", mlflow)):
        [base] = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M)
        assert PINNED.fullmatch(base) and not placeholder(base.split("@")[1]), name
        assert re.findall(r"^FROM .*$", text, re.M) == [f"FROM ${{{base_arg}}}" for base_arg in
                                                         re.findall(r"^ARG (\w+_IMAGE)=", text, re.M)], name
    # Every package at a version: MLflow's server and its two extras; cdb's own pins (pyproject.toml), the
    # same DeepSpeed again with its ops, and the offline assets' list in the training image.
    assert re.search(r'pip install --no-cache-dir "mlflow\[auth\]==\$\{MLFLOW_VERSION\}" psycopg2-binary==[\d.]+ '
                     r'boto3==[\d.]+ ', mlflow) and re.search(r"^ARG MLFLOW_VERSION=\d+\.\d+\.\d+$", mlflow, re.M)
    installs = re.findall(r"^[^#\n]*pip install ([^\n]*?)(?: \\)?$", train, re.M)
    assert installs == ["--no-cache-dir /tmp/cdb-src", "--no-cache-dir --no-deps --no-build-isolation --force-reinstall",
                        "--no-cache-dir --no-deps -r /tmp/cdb-src/offline-assets.txt"], installs
    assert "\"deepspeed==$(python -c 'import importlib.metadata as m; print(m.version(\"deepspeed\"))')\"" in train
    # EFA: the installer and aws-ofi-nccl at fixed versions, the plugin checked against its tag's commit.
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", train, re.M))
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["EFA_INSTALLER_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["AWS_OFI_NCCL_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{40}", args["AWS_OFI_NCCL_COMMIT"])
    assert 'aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz' in train and "--skip-kmod" in train
    assert '--branch "v${AWS_OFI_NCCL_VERSION}"' in train and '= "${AWS_OFI_NCCL_COMMIT}"' in train
    assert "--with-libfabric=/opt/amazon/efa" in train and "--with-cuda=/usr/local/cuda" in train
    # DeepSpeed's ops built in the image for its CUDA and the GPUs the node pools have (A100 8.0, H100 9.0),
    # and checked there.
    assert "DS_BUILD_CPU_ADAM=1" in train and "DS_BUILD_FUSED_ADAM=1" in train and args["TORCH_CUDA_ARCH_LIST"] == '"8.0;9.0"'
    assert "installed_ops['cpu_adam'] and installed_ops['fused_adam']" in train


def test_offline_assets_come_from_one_list():
    """The image and scripts/dev.sh install the same file, the same way (pinned, without dependencies);
    no other copy of the pins in either."""
    listed = [line for line in (REPO / "offline-assets.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert listed and all(re.fullmatch(r"[\w-]+==[\w.]+", line) for line in listed)
    train = (K8S / "images" / "train.Dockerfile").read_text()
    dev = (REPO / "scripts" / "dev.sh").read_text()
    assert "pip install --no-cache-dir --no-deps -r /tmp/cdb-src/offline-assets.txt" in train
    assert re.search(r"^COPY [^\n]*\boffline-assets\.txt\b[^\n]* /tmp/cdb-src/$", train, re.M)
    assert "-m pip install -q --no-deps -r offline-assets.txt" in dev and "offline-assets.txt" in dev.split("want=")[1]
    for pin in listed:
        assert pin not in train and pin not in dev
    assert "!offline-assets.txt" in (K8S / "images" / "train.Dockerfile.dockerignore").read_text().split()


FAKE_CRANE = """#!/bin/sh
# fake crane: `digest REF` answers a digest made from REF (a new one for every tag)
[ "$1" = digest ] || exit 3
printf 'sha256:%s\\n' "$(printf '%s' "$2" | sha256sum | cut -d' ' -f1)"
"""
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$FAKE_DIR/docker"
"""


def fake_digest(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def test_refresh_script_pins_every_image(tmp_path):
    """k8s/images/refresh.py against a fake crane and docker: the third-party tags get their digests, the
    project's images are built, pushed and pinned in every kustomization, the render carries them, and
    a second run changes nothing."""
    repo = tmp_path / "repo"
    shutil.copytree(K8S, repo / "k8s", ignore=shutil.ignore_patterns("schemas"))
    shutil.copy(REPO / "pyproject.toml", repo / "pyproject.toml")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("crane", FAKE_CRANE), ("docker", FAKE_DOCKER)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path)}
    cmd = [sys.executable, str(repo / "k8s" / "images" / "refresh.py"), "--repo", str(repo),
           "--build", "registry.example/team", "--tag", "0.1.0-abc1234"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    built = (tmp_path / "docker").read_text().splitlines()
    for name in PROJECT_IMAGES:
        assert any(line.startswith("build -f") and f"registry.example/team/{name}:0.1.0-abc1234" in line for line in built)
        assert f"push registry.example/team/{name}:0.1.0-abc1234" in built
    cdb = f"registry.example/team/cdb:0.1.0-abc1234@{fake_digest('registry.example/team/cdb:0.1.0-abc1234')}"
    postgres = f"postgres:16.6@{fake_digest('postgres:16.6')}"
    base = {c["image"] for doc in kustomize(repo / "k8s" / "overlays" / "13b") for _, tpl in pod_templates(doc)
            for c in containers(tpl["spec"])}
    assert cdb in base and postgres in base
    assert f"registry.example/team/cdb-mlflow:0.1.0-abc1234@{fake_digest('registry.example/team/cdb-mlflow:0.1.0-abc1234')}" in base
    sweep = kustomize(repo / "k8s" / "sweep")
    [cj] = [d for d in sweep if d["kind"] == "CronJob"]
    [launcher] = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in launcher["env"]}["CDB_IMAGE"] == cdb
    assert launcher["image"].endswith(fake_digest(launcher["image"].split("@")[0]))
    [rcj] = [d for d in kustomize(repo / "k8s" / "sweep" / "raycronjob") if d["kind"] == "RayCronJob"]
    assert {c["image"] for _, tpl in ray_pod_templates(rcj) for c in tpl["spec"]["containers"]} == {cdb}
    cuda = re.search(r"^ARG CUDA_IMAGE=(\S+)@(\S+)$", (repo / "k8s" / "images" / "train.Dockerfile").read_text(), re.M)
    assert cuda[2] == fake_digest(cuda[1])
    # The kustomizations keep their comments; a second run finds every pin current.
    assert (repo / "k8s" / "base" / "kustomization.yaml").read_text().startswith(
        (K8S / "base" / "kustomization.yaml").read_text().split("images:")[0])
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "every pin is current" in again.stdout, again.stdout + again.stderr


# ----------------------------------------------------------------------- README


def test_readme_walkthrough_mentions_every_step():
    # Namespace flags are ignored: `kubectl -n cdb get rayjob` counts as `kubectl get rayjob`.
    readme = (K8S / "README.md").read_text()
    text = re.sub(r" (-n|--namespace)[ =]cdb\b", "", readme)
    cj = sweep_cronjob()
    for needle in [
        "helm install kuberay-operator",
        "--version 1.7.0",
        "RayCronJob",
        "nvidia-device-plugin",
        "kubectl kustomize k8s/nodes",
        "nvidia.com/gpu=true:NoSchedule",
        "cdb.dev/gpu=h100",
        "kubectl create secret generic cdb-postgres",
        "kubectl create secret generic cdb-hf",
        "python k8s/images/refresh.py",
        "kubectl apply -k k8s/overlays/13b",
        "kubectl get rayjob",
        "kubectl port-forward",
        "kubectl apply -k k8s/sweep",
        f"kubectl create job --from=cronjob/{cj['metadata']['name']}",
        "object store",
        # Secrets, auth, policies, Kueue, versions (issue 16).
        "kubectl -n cdb create secret generic cdb-mlflow-admin",
        "kubectl -n cdb create secret generic cdb-mlflow-client",
        "--from-file=",
        "--app-name basic-auth",
        "/api/2.0/mlflow/users/create",
        "kubectl create job --from=cronjob/postgres-backup",
        "default-deny-ingress",
        "ValidatingAdmissionPolicy",
        "--dry-run=server",
        "-l ray.io/cronjob-name=cdb-sweep-weekly",
        "kubectl apply -k k8s/kueue",
        "kubectl apply -k k8s/examples/70b-kueue-efa",
        "components/efa-p5",
        "aws-efa-k8s-device-plugin",
        "cdb-training",
        "karpenter.k8s.aws/instance-gpu-memory",
        "python -m cdb.memory --scale 70b --gpu-memory 40",
        "kubectl apply -k k8s/examples/70b-offload-a100-40gb",
        "x-kubernetes-preserve-unknown-fields",
        # Stopping, storage, egress, images (issue 25).
        "ray job stop --address http://127.0.0.1:8265 cdb",
        "RAY_AUTH_TOKEN",
        "terminationGracePeriodSeconds",
        "ephemeral-storage",
        "readOnlyRootFilesystem",
        "default-deny-egress",
        "waitForPodsReady",
        "kubectl apply --server-side --force-conflicts -k k8s/kueue/manager-config",
        "components/pre-running-deadline",
        "python k8s/images/refresh.py --build",
        "offline-assets.txt",
        "aws-ofi-nccl",
        "instanceStorePolicy: RAID0",
        "--period 2026-W49",
    ]:
        assert needle in text or needle in readme, f"README lacks {needle!r}"
