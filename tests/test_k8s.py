"""Offline checks of the Kubernetes manifests under k8s/.

What runs where:
* Always: YAML parsing, strict schema validation of core kinds (kubernetes-validate),
  strict PodTemplateSpec validation of every pod template inside RayJob / RayCluster /
  RayCronJob, the project's own JSON schemas for the CRD kinds (k8s/schemas), the
  consistency of every overlay with the scale table (overlays are rendered by a small
  JSON-patch renderer below, since they only use JSON 6902 patches), security rules
  over every pod spec, the sweep launcher script (run against a fake kubectl).
* Only when `kubectl` (or `kustomize`) is on PATH: rendering every kustomization with
  the real tool, and checking that the small renderer agrees with it.

Needs: pyyaml, jsonschema, referencing, kubernetes-validate (strict core schemas).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import os
import re
import shutil
import stat
import subprocess
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

# Custom resources kubernetes-validate has no schema for; validated by k8s/schemas.
CRD_SCHEMA_FILES = {
    ("ray.io/v1", "RayJob"): "rayjob.schema.json",
    ("ray.io/v1", "RayCluster"): "raycluster.schema.json",
    ("ray.io/v1", "RayCronJob"): "raycronjob.schema.json",
    ("karpenter.sh/v1", "NodePool"): "nodepool.schema.json",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "ec2nodeclass.schema.json",
    ("kueue.x-k8s.io/v1beta1", "ResourceFlavor"): "resourceflavor.schema.json",
    ("kueue.x-k8s.io/v1beta1", "ClusterQueue"): "clusterqueue.schema.json",
    ("kueue.x-k8s.io/v1beta1", "LocalQueue"): "localqueue.schema.json",
}
RAY_KINDS = {"RayJob", "RayCluster", "RayCronJob"}
NOT_VALIDATED_BY_KUBERNETES_VALIDATE = {kind for _, kind in CRD_SCHEMA_FILES} | {"Kustomization"}
CLUSTER_SCOPED = {"Namespace", "NodePool", "EC2NodeClass", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ResourceFlavor", "ClusterQueue"}
SECRETISH_ENV = re.compile(r"TOKEN|PASSWORD|PASSWD|KEY|SECRET|CREDENTIAL", re.I)


# --------------------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict]:
    """The documents of a YAML file, YAML anchors expanded into independent copies (as kustomize does)."""
    with open(path) as f:
        return [json.loads(json.dumps(d)) for d in yaml.safe_load_all(f) if d is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


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
            out.append((rel(p), d))
    return tuple(out)


# ------------------------------------------------- a tiny kustomize (JSON 6902 only)


def _ptr(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _walk(doc, tokens):
    for t in tokens:
        doc = doc[int(t)] if isinstance(doc, list) else doc[t]
    return doc


def apply_json_patch(doc: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in ops:
        tokens = _ptr(op["path"])
        parent = _walk(doc, tokens[:-1])
        last = tokens[-1]
        kind = op["op"]
        if kind == "test":
            assert _walk(doc, tokens) == op["value"], f"JSON patch test failed at {op['path']}"
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                del parent[last]
        elif kind == "replace":
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op["value"])
            else:
                assert last in parent, f"replace of missing {op['path']}"
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                parent.insert(idx, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"unsupported JSON patch op {kind!r}")
    return doc


def _target_matches(target: dict, doc: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return (
        target.get("kind", doc["kind"]) == doc["kind"]
        and target.get("name", doc["metadata"].get("name")) == doc["metadata"].get("name")
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


def _set_images(node, images: list[dict]):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    for im in images:
                        if c.get("image", "").split(":")[0].split("@")[0] == im["name"]:
                            name = im.get("newName", im["name"])
                            tag = im.get("newTag")
                            c["image"] = f"{name}:{tag}" if tag else name
            _set_images(value, images)
    elif isinstance(node, list):
        for v in node:
            _set_images(v, images)


def _apply_patches(d: Path, k: dict, docs: list[dict]) -> None:
    for patch in k.get("patches") or []:
        ops = yaml.safe_load(patch["patch"])
        assert isinstance(ops, list), f"{rel(d)}: only inline JSON 6902 patches are used"
        hits = [i for i, doc in enumerate(docs) if _target_matches(patch["target"], doc)]
        assert hits, f"{rel(d)}: patch target {patch['target']} matches nothing"
        for i in hits:
            docs[i] = apply_json_patch(docs[i], ops)


def py_build(d: Path) -> list[dict]:
    """Render a kustomization that uses resources, components, inline JSON 6902 patches, namespace
    and images only (what k8s/base, k8s/overlays/* and k8s/examples/* use)."""
    k = load_kustomization(d)
    docs: list[dict] = []
    for r in k.get("resources") or []:
        p = d / r
        docs += py_build(p) if p.is_dir() else load_docs(p)
    _apply_patches(d, k, docs)
    for c in k.get("components") or []:  # after the kustomization's own patches, in order
        _apply_patches(d / c, load_kustomization(d / c), docs)
    if k.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    if k.get("images"):
        for doc in docs:
            _set_images(doc, k["images"])
    return docs


# ------------------------------------------------------------- the real kustomize


def kustomize_cmd() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


needs_kustomize = pytest.mark.skipif(kustomize_cmd() is None, reason="neither kubectl nor kustomize on PATH")


@functools.lru_cache(maxsize=None)
def real_build(d: Path) -> tuple:
    cmd = kustomize_cmd()
    assert cmd is not None
    res = subprocess.run(cmd + [str(d)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{' '.join(cmd)} {rel(d)} failed:\n{res.stderr}"
    return tuple(d for d in yaml.safe_load_all(res.stdout) if d is not None)


def overlay_rayjob(overlay: str, real: bool = False) -> dict:
    d = K8S / "overlays" / overlay
    docs = real_build(d) if real else py_build(d)
    [rj] = [doc for doc in docs if doc["kind"] == "RayJob"]
    return rj


def all_rendered_docs() -> list[tuple[str, dict]]:
    """Every rendered object: with the real tool when there is one, else the small
    renderer for base/overlays (sweep and nodes are then taken from their files)."""
    out = []
    for d in kustomization_dirs():
        if kustomize_cmd():
            out += [(f"render:{rel(d)}", doc) for doc in real_build(d)]
        elif d == K8S / "base" or d.parent in (K8S / "overlays", K8S / "examples"):
            out += [(f"render:{rel(d)}", doc) for doc in py_build(d)]
    return out


def everything() -> list[tuple[str, dict]]:
    return list(raw_manifest_docs()) + all_rendered_docs()


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


def strict_schema_dir(kv_module) -> Path:
    from kubernetes_validate import utils

    version = [v for v in utils.all_versions() if utils.major_minor(v) <= K8S_VERSION][-1]
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return Path(str(root / f"v{version}-local-strict"))


@pytest.fixture(scope="session")
def pod_template_validator(kv):
    """The strict PodTemplateSpec schema shipped in kubernetes-validate."""
    d = strict_schema_dir(kv)
    schema = json.loads((d / "podtemplatespec-v1.json").read_text())
    defs = json.loads((d / "_definitions.json").read_text())
    registry = Resource.from_contents(schema) @ (Resource.from_contents(defs) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.fixture(scope="session")
def crd_validators() -> dict:
    resources = []
    for p in sorted(SCHEMAS.glob("*.json")):
        resources.append(Resource.from_contents(json.loads(p.read_text())))
    registry = Registry().with_resources((r.id(), r) for r in resources)
    out = {}
    for key, fname in CRD_SCHEMA_FILES.items():
        schema = json.loads((SCHEMAS / fname).read_text())
        out[key] = jsonschema.Draft202012Validator(schema, registry=registry)
    return out


def errors_of(validator, instance) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


# ====================================================================== the tests
# ------------------------------------------------------------------ parse + identity


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
            # A template `kubectl create`d with a fresh name each time.
            assert meta.get("name") or meta.get("generateName"), f"{rel(path)}: no name/generateName"
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
            # Only the CRDs (checked below) and kustomize's own files may lack a schema:
            # a typo in a core apiVersion must not be skipped silently.
            assert doc["kind"] in NOT_VALIDATED_BY_KUBERNETES_VALIDATE, (
                f"{src}: no schema for {doc['apiVersion']} {doc['kind']}"
            )
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
    assert {"RayJob", "NodePool", "EC2NodeClass", "ClusterQueue"} <= skipped


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


def _synthetic_raycluster() -> dict:
    rj = copy.deepcopy(sweep_template())
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "x"},
        "spec": rj["spec"]["rayClusterSpec"],
    }


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster", "RayCronJob"])
def test_podtemplatespec_schema_rejects_unknown_fields(pod_template_validator, kind):
    rj = copy.deepcopy(sweep_template())
    if kind == "RayJob":
        doc = rj
    elif kind == "RayCluster":
        doc = _synthetic_raycluster()
    else:
        [(_, doc)] = [(s, d) for s, d in raw_manifest_docs() if d["kind"] == "RayCronJob"]
        doc = copy.deepcopy(doc)
    templates = ray_pod_templates(doc)
    assert templates
    for _, tpl in templates:
        assert not errors_of(pod_template_validator, tpl)
    # A misspelt field deep in a container and one at pod level are both caught.
    templates[0][1]["spec"]["containers"][0]["securityContext"]["priviliged"] = False
    templates[-1][1]["spec"]["nodeSelectors"] = {"a": "b"}
    assert errors_of(pod_template_validator, templates[0][1])
    assert errors_of(pod_template_validator, templates[-1][1])


# ----------------------------------------------------- CRD fields: project schemas


def test_project_schemas_are_valid_json_schemas():
    for p in sorted(SCHEMAS.glob("*.json")):
        jsonschema.Draft202012Validator.check_schema(json.loads(p.read_text()))
    assert {p.name for p in SCHEMAS.glob("*.json")} == set(CRD_SCHEMA_FILES.values())


def test_crd_objects_match_project_schemas(crd_validators):
    seen = set()
    for src, doc in everything():
        key = (doc["apiVersion"], doc["kind"])
        if doc["kind"] in NOT_VALIDATED_BY_KUBERNETES_VALIDATE - {"Kustomization"}:
            assert key in crd_validators, f"{src}: unexpected API version {key}"
        if key in crd_validators:
            errs = errors_of(crd_validators[key], doc)
            assert not errs, f"{src}: {doc['kind']}/{doc['metadata']}: {errs}"
            seen.add(doc["kind"])
    assert seen == {"RayJob", "RayCronJob", "NodePool", "EC2NodeClass", "ResourceFlavor", "ClusterQueue", "LocalQueue"}
    cluster = _synthetic_raycluster()
    assert not errors_of(crd_validators[("ray.io/v1", "RayCluster")], cluster)


def _first(kind):
    return copy.deepcopy(next(d for _, d in raw_manifest_docs() if d["kind"] == kind))


def _mutations():
    """(kind, description, mutate) -- each must make the object invalid."""

    def rj(f):
        def m():
            d = _first("RayJob")
            f(d)
            return d
        return ("RayJob", m)

    def setp(path, value):
        def f(d):
            node = d
            for t in path[:-1]:
                node = node[t]
            node[path[-1]] = value
        return f

    def delp(path):
        def f(d):
            node = d
            for t in path[:-1]:
                node = node[t]
            del node[path[-1]]
        return f

    cases = {
        "RayJob unknown spec field": rj(setp(["spec", "shutdownAfterJobFinish"], True)),
        "RayJob unknown cluster field": rj(setp(["spec", "rayClusterSpec", "headGroupSpecs"], {})),
        "RayJob unknown worker field": rj(setp(["spec", "rayClusterSpec", "workerGroupSpecs", 0, "replica"], 1)),
        "RayJob bad submissionMode": rj(setp(["spec", "submissionMode"], "K8sJob")),
        "RayJob unquoted rayStartParams": rj(setp(["spec", "rayClusterSpec", "headGroupSpec", "rayStartParams", "num-cpus"], 0)),
        "RayJob without entrypoint": rj(delp(["spec", "entrypoint"])),
        "RayJob wrong apiVersion": rj(setp(["apiVersion"], "ray.io/v1alpha1")),
    }

    def other(kind, f):
        def m():
            d = _first(kind)
            f(d)
            return d
        return (kind, m)

    cases.update({
        "RayCronJob concurrencyPolicy (not a v1.6 field)": other("RayCronJob", setp(["spec", "concurrencyPolicy"], "Forbid")),
        "RayCronJob without schedule": other("RayCronJob", delp(["spec", "schedule"])),
        "RayCronJob typo inside jobTemplate": other("RayCronJob", setp(["spec", "jobTemplate", "entryPoint"], "x")),
        "NodePool v1beta1 nodeClassRef": other("NodePool", setp(["spec", "template", "spec", "nodeClassRef"], {"apiVersion": "karpenter.k8s.aws/v1beta1", "kind": "EC2NodeClass", "name": "x"})),
        "NodePool unknown disruption field": other("NodePool", setp(["spec", "disruption", "consolidateAfterr"], "1m")),
        "NodePool bad policy": other("NodePool", setp(["spec", "disruption", "consolidationPolicy"], "WhenUnderutilized")),
        "NodePool without requirements": other("NodePool", delp(["spec", "template", "spec", "requirements"])),
        "EC2NodeClass v1beta1 amiFamily-only": other("EC2NodeClass", delp(["spec", "amiSelectorTerms"])),
        "EC2NodeClass unknown field": other("EC2NodeClass", setp(["spec", "subnetSelector"], {"a": "b"})),
        "EC2NodeClass no role": other("EC2NodeClass", delp(["spec", "role"])),
    })
    return cases


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_project_schemas_reject_bad_objects(crd_validators, case):
    kind, make = _mutations()[case]
    doc = make()
    key = next(k for k in CRD_SCHEMA_FILES if k[1] == kind)
    assert errors_of(crd_validators[key], doc), f"{case}: schema accepted it"


# ------------------------------------------- KubeRay versions: the stated minimum is true


KUBERAY_SCHEMAS = {"RayJob": "rayjob.schema.json", "RayCluster": "raycluster.schema.json",
                   "RayCronJob": "raycronjob.schema.json"}


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


@functools.lru_cache(maxsize=None)
def _schema_doc(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def _resolve(node: dict, file: str) -> tuple[dict, str]:
    while "$ref" in node:
        target, _, pointer = node["$ref"].partition("#")
        file = target or file
        node = _schema_doc(file)
        for token in filter(None, pointer.split("/")):
            node = node[token]
    return node, file


def fields_since(instance, node: dict | None = None, file: str = "rayjob.schema.json", path: str = "") -> list:
    """(path, version) of every field of `instance` that its schema marks with x-kuberay-since."""
    node, file = _resolve(node if node is not None else _schema_doc(file), file)
    out = [(path or "<kind>", node["x-kuberay-since"])] if "x-kuberay-since" in node else []
    if isinstance(instance, dict) and "properties" in node:
        for key, value in instance.items():
            if key in node["properties"]:
                out += fields_since(value, node["properties"][key], file, f"{path}/{key}")
    elif isinstance(instance, list) and "items" in node:
        for i, value in enumerate(instance):
            out += fields_since(value, node["items"], file, f"{path}/{i}")
    return out


def newer_than_minimum(doc: dict) -> list:
    schema = _schema_doc(KUBERAY_SCHEMAS[doc["kind"]])
    minimum = _version(schema["x-kuberay-minimum"])
    return [(p, v) for p, v in fields_since(doc, file=KUBERAY_SCHEMAS[doc["kind"]]) if _version(v) > minimum]


def test_kuberay_schemas_state_their_version_and_minimum():
    readme = (K8S / "README.md").read_text()
    for kind, name in KUBERAY_SCHEMAS.items():
        schema = _schema_doc(name)
        assert schema["x-kuberay-describes"] == "1.7.0", name
        assert f"--version {schema['x-kuberay-describes']}" in readme  # the version the README installs
        assert f"KubeRay >= {schema['x-kuberay-minimum']}" in readme, f"README does not state {kind}'s minimum"
        assert _version(schema["x-kuberay-minimum"]) <= _version(schema["x-kuberay-describes"])


def test_manifests_use_no_kuberay_field_newer_than_the_stated_minimum():
    newest: dict[str, tuple] = {}
    for src, doc in ray_docs() + [("k8s/sweep/rayjob-sweep.template.yaml", sweep_template())]:
        assert not newer_than_minimum(doc), f"{src}: {doc['kind']} uses fields newer than its minimum: " \
                                            f"{newer_than_minimum(doc)}"
        used = [_version(v) for _, v in fields_since(doc, file=KUBERAY_SCHEMAS[doc["kind"]])]
        newest[doc["kind"]] = max([newest.get(doc["kind"], (1, 4, 0)), *used])
    # ...and the minimum is what the manifests need, not a guess: some field (or the kind) requires it.
    for kind, version in newest.items():
        assert version == _version(_schema_doc(KUBERAY_SCHEMAS[kind])["x-kuberay-minimum"]), kind
    assert set(newest) == {"RayJob", "RayCronJob"}


@pytest.mark.parametrize("kind,path,value,field", [
    ("RayJob", ["spec", "preRunningDeadlineSeconds"], 600, "/spec/preRunningDeadlineSeconds"),
    ("RayJob", ["spec", "rayClusterSpec", "upgradeStrategy"], {"type": "None"}, "/spec/rayClusterSpec/upgradeStrategy"),
    ("RayCronJob", ["spec", "timeZone"], "Etc/UTC", "/spec/timeZone"),
])
def test_version_check_catches_a_field_newer_than_the_minimum(crd_validators, kind, path, value, field):
    doc = sweep_template() if kind == "RayJob" else _first(kind)
    node = doc
    for token in path[:-1]:
        node = node[token]
    node[path[-1]] = value
    assert not errors_of(crd_validators[("ray.io/v1", kind)], doc)  # a valid field of v1.7.0...
    assert field in dict(newer_than_minimum(doc))  # ...that the stated minimum lacks


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
    for patch in k.get("patches") or []:
        if "path" in patch:
            assert (d / patch["path"]).is_file(), f"{rel(d)}: missing patch {patch['path']}"


def raw_resources(d: Path) -> list[dict]:
    docs = []
    for r in load_kustomization(d).get("resources") or []:
        p = d / r
        docs += raw_resources(p) if p.is_dir() else load_docs(p)
    return docs


def test_every_scale_has_an_overlay():
    assert {p.name for p in (K8S / "overlays").iterdir() if p.is_dir()} == set(SCALES)


@pytest.mark.parametrize("overlay", sorted(SCALES))
def test_overlay_patches_target_base_objects(overlay):
    d = K8S / "overlays" / overlay
    k = load_kustomization(d)
    assert k["resources"] == ["../../base"]
    base_docs = raw_resources(K8S / "base")
    assert k.get("patches"), f"{overlay}: no patches"
    for patch in k["patches"]:
        t = patch["target"]
        assert any(_target_matches(t, doc) for doc in base_docs), f"{overlay}: target {t} not in base"
        ops = yaml.safe_load(patch["patch"])
        assert isinstance(ops, list) and ops, "CRD lists (workerGroupSpecs) need JSON 6902 patches"
    # Every patch applies (paths exist, `test` ops hold).
    py_build(d)


@needs_kustomize
@pytest.mark.parametrize("d", kustomization_dirs(), ids=rel)
def test_kustomization_renders(d):
    docs = real_build(d)
    assert docs


def example_dirs() -> list[Path]:
    return sorted(p for p in (K8S / "examples").iterdir() if p.is_dir())


@needs_kustomize
@pytest.mark.parametrize("d", [K8S / "base"] + [K8S / "overlays" / o for o in sorted(SCALES)] + example_dirs(), ids=rel)
def test_small_renderer_agrees_with_kustomize(d):
    key = lambda doc: (doc["kind"], doc["metadata"]["name"])  # noqa: E731
    mine = sorted(py_build(d), key=key)
    real = sorted(real_build(d), key=key)
    assert [key(x) for x in mine] == [key(x) for x in real]
    for a, b in zip(mine, real):
        assert a == b, f"{rel(d)}: {key(a)} differs"


# ------------------------------------------------------------------- consistency


def worker_groups(rj: dict) -> list[dict]:
    return rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]


def gpu_of(container: dict, part: str = "limits") -> int:
    return int((container.get("resources", {}).get(part) or {}).get("nvidia.com/gpu", 0))


def scale_arg(entrypoint: str) -> str:
    m = re.search(r"--scale(?:=|\s+)(\S+)", entrypoint)
    assert m, entrypoint
    return m.group(1)


@pytest.mark.parametrize("real", [False, pytest.param(True, marks=needs_kustomize)], ids=["py", "kustomize"])
@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_overlay_matches_scale_table(overlay, real):
    scale, workers, gpus_per_worker, nodes = SCALES[overlay]
    rj = overlay_rayjob(overlay, real)
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


def rayjob_specs() -> list[tuple[str, dict]]:
    """Every RayJobSpec: base + overlays, the sweep template and the RayCronJob's."""
    out = [(f"overlay:{o}", overlay_rayjob(o)["spec"]) for o in SCALES]
    out.append(("base", next(d for _, d in raw_manifest_docs() if d["kind"] == "RayJob" and "name" in d["metadata"])["spec"]))
    out.append(("sweep", sweep_template()["spec"]))
    out.append(("raycronjob", _first("RayCronJob")["spec"]["jobTemplate"]))
    return out


@pytest.mark.parametrize("where,spec", rayjob_specs(), ids=[w for w, _ in rayjob_specs()])
def test_rayjob_contract(where, spec):
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 0
    assert spec["activeDeadlineSeconds"] > 0
    cs = spec["rayClusterSpec"]
    head = cs["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["num-cpus"] == "0"
    doc = {"kind": "RayJob", "spec": spec}
    for w, tpl, c in ray_containers(doc):
        assert c["image"].split(":")[0] == "cdb", f"{where} {w}: image placeholder is `cdb`"
        env = {e["name"]: e for e in c.get("env", [])}
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
    # A stop reaches every rank, which checkpoints before `ray job stop` SIGKILLs the driver, and the
    # pods' grace period outlasts that wait.
    for w, tpl, c in ray_containers(doc):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 600, f"{where} {w}"
        assert tpl["spec"]["terminationGracePeriodSeconds"] > int(env["RAY_JOB_STOP_WAIT_TIME_S"]), f"{where} {w}"
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


def test_image_placeholders_agree():
    base = {i["name"]: i for i in load_kustomization(K8S / "base")["images"]}
    assert set(base) == {"cdb", "cdb-mlflow"}
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


def test_network_policies():
    """Every flow the project needs is allowed, by selectors that match the labels the pods really
    carry (KubeRay's own included), and nothing else reaches the pods of the namespace."""
    nps = by_kind("NetworkPolicy")
    [deny] = [n for n in nps if n["spec"]["podSelector"] == {}]
    assert deny["spec"]["policyTypes"] == ["Ingress"] and not deny["spec"].get("ingress")
    [dep] = by_kind("Deployment")
    [sts] = by_kind("StatefulSet")
    backup = next(d for d in by_kind("CronJob") if d["metadata"]["name"] == "postgres-backup")
    mlflow = dep["spec"]["template"]["metadata"]["labels"]
    postgres = sts["spec"]["template"]["metadata"]["labels"]
    backup_pod = backup["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    launcher = sweep_cronjob()["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
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

    def allowed(target: dict, source: dict | None = None, namespace: str = "cdb") -> set:
        """Ports (0: any) on which a pod labelled `target` accepts a pod labelled `source` from `namespace`."""
        ports = set()
        for np in nps:
            if not _selects(np["spec"]["podSelector"], target):
                continue
            for rule in np["spec"].get("ingress") or []:
                for peer in rule["from"]:
                    pod_ok = "podSelector" not in peer or (source is not None and _selects(peer["podSelector"], source))
                    if "namespaceSelector" in peer:
                        ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
                    else:
                        ns_ok = namespace == "cdb"
                    if pod_ok and ns_ok and ("podSelector" in peer or "namespaceSelector" in peer):
                        ports |= {p["port"] for p in rule.get("ports") or [{"port": 0}]}
        return ports

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
    assert c["image"].startswith("bitnami/kubectl")
    images = {i["name"]: i for i in load_kustomization(K8S / "sweep")["images"]}
    tag = images[c["image"]]["newTag"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), "kubectl image's tag names its version"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", images[c["image"]]["digest"]), "kubectl image pinned by digest"
    assert c["command"][0] == "/bin/bash"  # launch.sh needs pipefail
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    env = {e["name"]: e for e in c["env"]}
    mount = next(m for m in c["volumeMounts"] if env["TEMPLATE"]["value"].startswith(m["mountPath"] + "/"))
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    gen = next(g for g in load_kustomization(K8S / "sweep")["configMapGenerator"] if g["name"] == vol["configMap"]["name"])
    keys = {f.split("=", 1)[0] for f in gen["files"]}
    assert Path(env["TEMPLATE"]["value"]).name in keys
    assert c["command"][-1] == mount["mountPath"] + "/launch.sh" and "launch.sh" in keys


@needs_kustomize
def test_sweep_render_wires_configmap_and_image(tmp_path):
    docs = real_build(K8S / "sweep")
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("cdb-sweep-template")]
    [cj] = [d for d in docs if d["kind"] == "CronJob"]
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in pod["volumes"])
    assert yaml.safe_load(cm["data"]["rayjob-sweep.yaml"]) == sweep_template()
    # `kustomize edit set image cdb=...` in k8s/sweep reaches the launcher's CDB_IMAGE.
    work = tmp_path / "sweep"
    shutil.copytree(K8S / "sweep", work)
    k = load_kustomization(work)
    for im in k["images"]:
        if im["name"] == "cdb":
            im.update(newName="registry.example/cdb", newTag="1.2.3")
    (work / "kustomization.yaml").write_text(yaml.safe_dump(k))
    [cj] = [d for d in real_build(work) if d["kind"] == "CronJob"]
    env = {e["name"]: e for e in cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CDB_IMAGE"]["value"] == "registry.example/cdb:1.2.3"
    # ...and the image the admission policy allows.
    docs = real_build(work)
    [params] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cdb-sweep-policy"]
    assert params["data"]["image"] == "registry.example/cdb:1.2.3"


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


def this_weeks_sweep() -> str:
    import datetime

    year, week, _ = datetime.datetime.now(datetime.timezone.utc).isocalendar()
    return f"cdb-sweep-{year}-w{week:02d}"


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
    kubectl = bindir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
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
        [doc] = load_docs(created)
        expected = copy.deepcopy(sweep_template())
        _set_images(expected, [{"name": "cdb", "newName": "registry.example/cdb", "newTag": "1.2.3"}])
        del expected["metadata"]["generateName"]
        expected["metadata"]["name"] = this_weeks_sweep()
        assert doc == expected
        images = {c["image"] for _, tpl in ray_pod_templates(doc) for c in tpl["spec"]["containers"]}
        assert images == {"registry.example/cdb:1.2.3"}


# ------------------------------------------------------------ Kueue and EFA (components)


def test_kueue_component_gang_admits_the_rayjob():
    """The composed example is queued (label + suspend) in a LocalQueue that exists, whose ClusterQueue
    covers every resource the job's pods request, and gives the head a GPU-free flavor and the GPU
    workers the flavor whose node label they select."""
    rj = overlay_rayjob_from(K8S / "examples" / "70b-kueue-efa")
    kueue = {d["kind"]: d for d in load_docs(K8S / "kueue" / "queues.yaml") if d["kind"] != "ResourceFlavor"}
    flavors = {d["metadata"]["name"]: d for d in load_docs(K8S / "kueue" / "queues.yaml") if d["kind"] == "ResourceFlavor"}
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
    total_gpus = sum(wg["replicas"] * gpu_of(wg["template"]["spec"]["containers"][0])
                     for wg in worker_groups(rj))
    assert max(int(q.get("nvidia.com/gpu", 0)) for q in quota.values()) >= total_gpus


def overlay_rayjob_from(d: Path) -> dict:
    [rj] = [doc for doc in py_build(d) if doc["kind"] == "RayJob"]
    return rj


@pytest.mark.parametrize("component,per_node", [("efa-p5", 32), ("efa-p4d", 4)])
def test_efa_component_requests_the_interfaces_and_sets_libfabric(component, per_node):
    k = load_kustomization(K8S / "components" / component)
    docs = py_build(K8S / "overlays" / "70b")
    _apply_patches(K8S / "components" / component, k, docs)
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
        "kustomize edit set image cdb=",
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
        "kustomize edit set image bitnami/kubectl=",
        "-l ray.io/cronjob-name=cdb-sweep-weekly",
        "kubectl apply -k k8s/kueue",
        "kubectl apply -k k8s/examples/70b-kueue-efa",
        "components/efa-p5",
        "aws-efa-k8s-device-plugin",
        "cdb-training",
        "karpenter.k8s.aws/instance-gpu-memory",
        "python -m cdb.memory --scale 70b --gpu-memory 40",
        "kubectl apply -k k8s/examples/70b-offload-a100-40gb",
        "x-kuberay-minimum",
    ]:
        assert needle in text or needle in readme, f"README lacks {needle!r}"
