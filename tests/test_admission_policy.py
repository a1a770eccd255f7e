"""Executes the CEL of k8s/sweep/admission-policy.yaml offline (cel-python), as the API server would.

The policy and its params ConfigMap come from the rendered k8s/sweep kustomization (so the image is the
one kustomize substituted); the RayJob is the one launch.sh really creates from the rendered template,
run against a fake kubectl. That RayJob must pass every validation; each mutation below must be refused.

Kubernetes hands `object`, `oldObject` and `params` to the expressions as dynamic JSON maps, which is
what cel_python's json_to_cel builds. The one Kubernetes CEL extension the policy uses, the strings
library's `split`, is defined here with its semantics (Go strings.Split = Python str.split for a
non-empty separator).

Needs: pyyaml, cel-python, kubectl.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

celpy = pytest.importorskip("celpy")

K8S = Path(__file__).resolve().parents[1] / "k8s"
SWEEP = K8S / "sweep"
LAUNCHER = "system:serviceaccount:cdb:cdb-sweep-launcher"


def load_docs(text: str) -> list[dict]:
    """YAML documents with anchors expanded into independent copies (as kustomize does)."""
    return [json.loads(json.dumps(d)) for d in yaml.safe_load_all(text) if d is not None]


@functools.cache
def sweep_docs() -> tuple:
    """The rendered k8s/sweep objects: `kubectl kustomize`, which these checks need (no kubectl: they fail)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render k8s/sweep (kubectl kustomize); install it"
    res = subprocess.run([kubectl, "kustomize", str(SWEEP)], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"kubectl kustomize {SWEEP} failed:\n{res.stderr}"
    return tuple(load_docs(res.stdout))


def one(kind: str, name_prefix: str = "") -> dict:
    [doc] = [d for d in sweep_docs() if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)]
    return doc


FAKE_KUBECTL = """#!/bin/sh
# fake kubectl: `get` lists no earlier sweep; `create -f -` stores the RayJob it is given.
case "$1" in
  get) ;;
  create) cat > "$FAKE_DIR/created.yaml"; echo rayjob.ray.io/created ;;
  *) exit 3 ;;
esac
"""


@pytest.fixture(scope="module")
def launched_rayjob(tmp_path_factory) -> dict:
    """The RayJob the sweep CronJob's launch.sh creates, from the rendered ConfigMap and CronJob env."""
    tmp = tmp_path_factory.mktemp("launch")
    files = one("ConfigMap", "cdb-sweep-template")["data"]
    for name, text in files.items():
        (tmp / name).write_text(text)
    kubectl = tmp / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    [container] = one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    cdb_image = next(e["value"] for e in container["env"] if e["name"] == "CDB_IMAGE")
    env = {"PATH": f"{tmp}:{os.environ['PATH']}", "FAKE_DIR": str(tmp), "POD_NAMESPACE": "cdb",
           "CDB_IMAGE": cdb_image, "TEMPLATE": str(tmp / "rayjob-sweep.yaml")}
    res = subprocess.run(["bash", str(tmp / "launch.sh")], check=False, env=env, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    [rj] = load_docs((tmp / "created.yaml").read_text())
    assert rj["kind"] == "RayJob" and rj["metadata"]["name"].startswith("cdb-sweep-")
    return rj


# ------------------------------------------------------------------- the evaluator


def cel_split(s, sep):
    """Kubernetes' strings library: string.split(string) -> list(string)."""
    return celpy.celtypes.ListType([celpy.celtypes.StringType(p) for p in str(s).split(str(sep))])


CEL_ENV = celpy.Environment()


@functools.cache
def program(expression: str):
    return CEL_ENV.program(CEL_ENV.compile(expression), functions={"split": cel_split})


class Refused(Exception):
    """An expression evaluated to an error: with failurePolicy Fail the API server refuses the request."""


def evaluate(expression: str, activation: dict):
    try:
        return program(expression).evaluate(activation)
    except celpy.CELEvalError as e:
        raise Refused(f"{expression!r}: {e}") from e


class LazyVariables(celpy.celtypes.MapType):
    """`variables.NAME`, evaluated on first use in the policy's order, as Kubernetes does (lazily)."""

    def __init__(self, decls: list[dict], activation: dict):
        super().__init__()
        self.decls = {v["name"]: v["expression"] for v in decls}
        self.activation = activation

    def __missing__(self, name):
        if name not in self.decls:
            raise KeyError(name)
        value = evaluate(self.decls[name], self.activation)
        self[name] = value
        return value


def admission(policy: dict, params: dict, rayjob: dict, username: str = LAUNCHER, operation: str = "CREATE",
              old: dict | None = None) -> list[str] | None:
    """What the policy says to this request: [] when admitted, else the messages of the validations that
    refuse it ("error: ..." for one whose evaluation failed). None when no matchCondition selects it."""
    spec = policy["spec"]
    request = {"operation": operation, "userInfo": {"username": username, "groups": ["system:serviceaccounts"]},
               "namespace": "cdb", "kind": {"group": "ray.io", "version": "v1", "kind": "RayJob"},
               "resource": {"group": "ray.io", "version": "v1", "resource": "rayjobs"}}
    activation = {"object": celpy.json_to_cel(rayjob), "oldObject": celpy.json_to_cel(old),
                  "request": celpy.json_to_cel(request), "params": celpy.json_to_cel(params)}
    for cond in spec.get("matchConditions") or []:
        if not evaluate(cond["expression"], activation):
            return None
    activation["variables"] = LazyVariables(spec.get("variables") or [], activation)
    refusals = []
    for v in spec["validations"]:
        try:
            ok = evaluate(v["expression"], activation)
        except Refused as e:
            refusals.append(f"error: {e}")
            continue
        assert isinstance(ok, celpy.celtypes.BoolType), f"{v['expression']!r} gave {ok!r}, not a bool"
        if not ok:
            refusals.append(str(evaluate(v["messageExpression"], activation)) if "messageExpression" in v
                            else v["message"])
    return refusals


@pytest.fixture(scope="module")
def policy() -> dict:
    return one("ValidatingAdmissionPolicy")


@pytest.fixture(scope="module")
def params() -> dict:
    return one("ConfigMap", "cdb-sweep-policy")


# ------------------------------------------------------------------------ the checks


def test_launched_sweep_rayjob_is_admitted(policy, params, launched_rayjob):
    images = {c["image"] for p in pod_specs(launched_rayjob) for c in p["containers"]}
    assert images == {params["data"]["image"]}, "the launcher and the policy agree on the image"
    assert admission(policy, params, launched_rayjob) == []


def test_policy_applies_to_the_launcher_only(policy, params, launched_rayjob):
    bad = copy.deepcopy(launched_rayjob)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["hostNetwork"] = True
    assert admission(policy, params, bad, username="system:serviceaccount:cdb:default") is None
    assert admission(policy, params, bad, username="alice@example.com") is None
    assert admission(policy, params, bad)


def pod_specs(rj: dict) -> list[dict]:
    cluster = rj["spec"]["rayClusterSpec"]
    return ([cluster["headGroupSpec"]["template"]["spec"]]
            + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
            + [rj["spec"]["submitterPodTemplate"]["spec"]])


def head(rj):
    return rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]


def gpu_worker(rj):
    return rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][-1]["template"]["spec"]


def submitter(rj):
    return rj["spec"]["submitterPodTemplate"]["spec"]


def autoscaler(rj):
    return rj["spec"]["rayClusterSpec"]["autoscalerOptions"]


def secret_env(name):
    return {"name": "STOLEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "password"}}}


OTHER_SECRET = "cdb-postgres"

# name -> (mutation of the launched RayJob, the message (start) of the validation that must refuse it)
MUTATIONS = {
    "cluster-selector": (lambda rj: rj["spec"].update(clusterSelector={"ray.io/cluster": "prod"}),
                         "a sweep RayJob brings its own Ray cluster"),
    "no-cluster-spec": (lambda rj: (rj["spec"].pop("rayClusterSpec"),
                                    rj["spec"].update(clusterSelector={"ray.io/cluster": "prod"})),
                        "a sweep RayJob brings its own Ray cluster"),
    "image-head": (lambda rj: head(rj)["containers"][0].update(image="evil.example/miner:1"),
                   "every container of a sweep RayJob runs"),
    "image-worker": (lambda rj: gpu_worker(rj)["containers"][0].update(image="cdb:other"),
                     "every container of a sweep RayJob runs"),
    "image-submitter": (lambda rj: submitter(rj)["containers"][0].update(image="python:3.11"),
                        "every container of a sweep RayJob runs"),
    "image-init-container": (lambda rj: gpu_worker(rj).update(initContainers=[{"name": "x", "image": "busybox"}]),
                             "every container of a sweep RayJob runs"),
    "image-sidecar": (lambda rj: head(rj)["containers"].append({"name": "x", "image": "busybox"}),
                      "every container of a sweep RayJob runs"),
    "image-autoscaler": (lambda rj: autoscaler(rj).update(image="evil.example/autoscaler:1"),
                         "every container of a sweep RayJob runs"),
    "service-account-head": (lambda rj: head(rj).update(serviceAccountName="kuberay-operator"),
                             "a sweep RayJob's pods set no serviceAccountName"),
    "service-account-worker": (lambda rj: gpu_worker(rj).update(serviceAccountName="cdb-sweep-launcher"),
                               "a sweep RayJob's pods set no serviceAccountName"),
    "service-account-submitter": (lambda rj: submitter(rj).update(serviceAccountName="admin"),
                                  "a sweep RayJob's pods set no serviceAccountName"),
    "service-account-deprecated": (lambda rj: head(rj).update(serviceAccount="admin"),
                                   "a sweep RayJob's pods set no serviceAccountName"),
    "privileged-head": (lambda rj: head(rj)["containers"][0]["securityContext"].update(privileged=True),
                        "no privileged container"),
    "privileged-submitter": (lambda rj: submitter(rj)["containers"][0]["securityContext"].update(privileged=True),
                             "no privileged container"),
    "privileged-init-container": (lambda rj: gpu_worker(rj).update(initContainers=[
        {"name": "x", "image": head(rj)["containers"][0]["image"], "securityContext": {"privileged": True}}]),
        "no privileged container"),
    "privileged-autoscaler": (lambda rj: autoscaler(rj)["securityContext"].update(privileged=True),
                              "no privileged container"),
    "capability-add": (lambda rj: gpu_worker(rj)["containers"][0]["securityContext"].update(
        capabilities={"add": ["SYS_ADMIN"]}), "no privileged container"),
    "capability-add-autoscaler": (lambda rj: autoscaler(rj)["securityContext"].update(
        capabilities={"add": ["NET_ADMIN"]}), "no privileged container"),
    "host-path": (lambda rj: gpu_worker(rj)["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
                  "no privileged container"),
    "host-path-submitter": (lambda rj: submitter(rj).update(volumes=[{"name": "r", "hostPath": {"path": "/"}}]),
                            "no privileged container"),
    "host-network": (lambda rj: head(rj).update(hostNetwork=True), "no privileged container"),
    "host-pid": (lambda rj: gpu_worker(rj).update(hostPID=True), "no privileged container"),
    "host-ipc": (lambda rj: submitter(rj).update(hostIPC=True), "no privileged container"),
    "secret-env": (lambda rj: head(rj)["containers"][0]["env"].append(secret_env(OTHER_SECRET)),
                   "a sweep RayJob may use only the Secrets"),
    "secret-env-submitter": (lambda rj: submitter(rj)["containers"][0].update(env=[secret_env(OTHER_SECRET)]),
                             "a sweep RayJob may use only the Secrets"),
    "secret-env-from": (lambda rj: gpu_worker(rj)["containers"][0].update(
        envFrom=[{"secretRef": {"name": OTHER_SECRET}}]), "a sweep RayJob may use only the Secrets"),
    "secret-volume": (lambda rj: gpu_worker(rj)["volumes"].append(
        {"name": "s", "secret": {"secretName": OTHER_SECRET}}), "a sweep RayJob may use only the Secrets"),
    "secret-projected": (lambda rj: head(rj)["volumes"].append(
        {"name": "p", "projected": {"sources": [{"configMap": {"name": "x"}}, {"secret": {"name": OTHER_SECRET}}]}}),
        "a sweep RayJob may use only the Secrets"),
    "secret-autoscaler-env-from": (lambda rj: autoscaler(rj).update(envFrom=[{"secretRef": {"name": OTHER_SECRET}}]),
                                   "a sweep RayJob may use only the Secrets"),
    "secret-autoscaler-env": (lambda rj: autoscaler(rj).update(env=[secret_env(OTHER_SECRET)]),
                              "a sweep RayJob may use only the Secrets"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutation_is_refused(policy, params, launched_rayjob, name):
    mutate, message = MUTATIONS[name]
    rj = copy.deepcopy(launched_rayjob)
    mutate(rj)
    assert rj != launched_rayjob
    refusals = admission(policy, params, rj)
    assert any(r.startswith(message) for r in refusals), f"{name}: refused by {refusals}, expected {message!r}"
    # ...also on an UPDATE of the admitted RayJob (the policy matches CREATE and UPDATE).
    assert admission(policy, params, rj, operation="UPDATE", old=launched_rayjob)


@pytest.mark.parametrize("change", ["allowed-secret-volume", "optional-fields-absent"])
def test_harmless_changes_are_admitted(policy, params, launched_rayjob, change):
    """The checks do not refuse what they should let through: an allowed Secret by volume and envFrom,
    pods without securityContext/volumes/env, no autoscalerOptions and no submitterPodTemplate."""
    rj = copy.deepcopy(launched_rayjob)
    allowed = params["data"]["secrets"].split(",")[0]
    if change == "allowed-secret-volume":
        head(rj)["volumes"].append({"name": "s", "secret": {"secretName": allowed}})
        head(rj)["volumes"].append({"name": "p", "projected": {"sources": [{"secret": {"name": allowed}}]}})
        gpu_worker(rj)["containers"][0]["envFrom"] = [{"secretRef": {"name": allowed}}, {"configMapRef": {"name": "x"}}]
    else:
        for p in pod_specs(rj):
            p.pop("volumes", None)
            for c in p["containers"]:
                for field in ("securityContext", "env", "volumeMounts"):
                    c.pop(field, None)
        del rj["spec"]["rayClusterSpec"]["autoscalerOptions"], rj["spec"]["submitterPodTemplate"]
    assert admission(policy, params, rj) == []


def test_refused_without_the_param_secrets(policy, params, launched_rayjob):
    """The Secret list comes from the params: emptied, the real RayJob's Secrets are refused."""
    p = copy.deepcopy(params)
    p["data"]["secrets"] = "cdb-hf"
    assert admission(policy, p, launched_rayjob) == ["a sweep RayJob may use only the Secrets cdb-hf"]
