"""The project as users install it (the training image, k8s/images/train.Dockerfile, does `pip install`
of the source), and what a run prints.

The image's pins are read statically (no Docker here). Then one module-scoped run: the wheel built from the package's files alone, installed (no dependencies,
so nothing is downloaded) into a fresh venv that sees the shared environment's packages but not this
repository, and `python -m cdb.train --max-steps 2` started from a folder outside the repository with
its own local Ray. The same run's console is what the console test reads.
"""

from __future__ import annotations

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

        # A fresh venv over the shared environment's site-packages, added as a plain path: its .pth files
        # (the editable install of this repository among them) are not processed.
        venv = work / "venv"
        _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)])
        python = venv / "bin" / "python"
        site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
        Path(site, "shared-environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
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
