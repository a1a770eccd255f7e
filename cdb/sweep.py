"""python -m cdb.sweep: train every (scale, method) point as its own `python -m cdb.train` job, then report.

    python -m cdb.sweep --scales tiny,smol-135m,7b,13b --methods contrastive,sft,dpo
        [--config SWEEP.yaml] [--set KEY.PATH=VALUE ...] [--output-dir DIR] [--max-steps N] [--parallel N]
        [--seeds N] [--experiment NAME] [--tracking-uri URI] [--fresh] [--period week|day|2026-W49|2026-12-02]

Settings (the grammar of every cdb entry point, cdb/settings.py): defaults <- --config FILE.yaml <-
flags <- --set, over two kinds of key.
  - The sweep's own keys (SweepSettings, listed below; each flag is a shorthand for one of them).
  - Training keys, whose first part is a section of cdb.train's config (scale., data., objective.,
    optim., train., eval., tracking.; cdb/configs/resolved/ shows them all). They go to every point, as
    `python -m cdb.train --set KEY=VALUE`, and are checked by resolving each point's config before
    anything starts. --max-steps N is the shorthand for train.max_steps=N. The sweep sets scale.name,
    objective.method, train.output_dir and tracking.{uri,experiment,run_name,parent_run_id} of each point
    itself.
A key of neither kind, a wrong value or a broken rule is an error naming the key (exit 2). In a
--config file the sweep's keys sit at the top level, beside training sections:

    scales: [tiny, smol-135m]
    methods: [contrastive, sft]
    parallel: 2
    train: {max_steps: 30}
    data: {max_records: 256}

Each point runs `python -m cdb.train --scale S --method M --output-dir DIR/S-M --run-name S-M
--set tracking.parent_run_id=PARENT --set train.base_eval_dir=DIR/base_evals` (plus the training keys)
in a subprocess of this driver; with `seeds` N > 1 every (scale, method) is N points, S-M-seed<k>, k =
train.seed + i. The points share their starting model's evaluation (DIR/base_evals): one base
evaluation per scale serves every method and seed. All of
them join one Ray cluster: the one in RAY_ADDRESS (as under `ray job submit`), else a local one this
command starts and stops. Points run one after another, or up to `parallel` at once while the
cluster's free CPUs and GPUs (ray.available_resources: other sweeps and jobs hold theirs) hold them (a
point that cannot fit even an empty cluster is started alone, and the trainer's message recorded).

MLflow: one parent run per sweep (tag cdb.method=sweep, params scales/methods), every point a child
run (tag mlflow.parentRunId). A point's outcome is a tag on the parent, `cdb.sweep.<scale>-<method>`
(`finished: run ID` or `failed: <the trainer's last error line>`), and an entry of DIR/sweep.json. A
failed point does not stop the sweep. Running the same command again with the same output_dir
reuses the parent run and skips the points that finished (sweep.json says FINISHED, the model exists,
same training keys); points stopped by a signal continue from their checkpoint (--resume).
At the end cdb.report writes DIR/report/ over this sweep's points (the parent's children; the seeds of
a (scale, method) pooled into one row) and logs it to its own report run, beside the training runs
(not a child of the parent; the parent's tag cdb.sweep.report names it). The parent run gets each
(scale, method)'s change against the base model, pooled over its seeds, at 95%, as metrics
`pooled/<scale>-<method>/delta/<task>/<metric>` with `_n`, `_ci95_low`, `_ci95_high`, and
`pooled/<scale>-<method>/seeds` (cdb.report.pooled_metrics), so MLflow's UI shows them on the sweep.

Scheduled sweeps (--period week|day): DIR becomes OUTPUT_DIR/<period> (2026-W49, 2026-12-02), so a new
period is a new sweep in a new folder (new parent run, every point and its base evaluated anew) and the
same command within a period continues that period's sweep; at its start a sweep deletes the point
checkpoints of period folders older than the newest keep_periods. `week`/`day` take the period from the
driver's clock; a scheduler passes the period it launched for instead (--period 2026-W49, as
k8s/sweep/launch.sh does), so a retry that starts after the period's end still continues that sweep.

Exit codes: 0 every point finished and the report was written; 1 a point failed or the report could
not be made; 2 bad arguments (nothing started); 75 stopped by SIGTERM/SIGINT (rerun to continue).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import yaml

from cdb import config as cfg
from cdb import settings, tracking
from cdb.cli import Command, Flag, describe

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 75
STATE_FILE = "sweep.json"
TRAINER_ERROR = "cdb.train: error:"
"""How cdb.train's own error line starts."""
LOCK_FILE = ".sweep.lock"
DEFAULT_EXPERIMENT = "cdb-sweep"
DEFAULT_OUTPUT = "runs/sweep"
HEARTBEAT_S = 60.0
# The sweep decides these per point; a training key on them would make every point the same run.
# Each maps to the sweep's own key that sets it, where there is one.
RESERVED_KEYS = {"scale.name": "scales", "objective.method": "methods", "train.output_dir": "output_dir",
                 "tracking.uri": "tracking_uri", "tracking.experiment": "experiment", "tracking.run_name": "",
                 "tracking.parent_run_id": "", "train.base_eval_dir": "base_eval_dir"}
TRAINING_SECTIONS = tuple(f.name for f in dataclasses.fields(cfg.Config))
PERIOD_FORMATS = {"week": "%G-W%V", "day": "%Y-%m-%d"}
"""A period's folder name (strftime, UTC); both sort in time order as text."""
PERIOD_NAMES = {"week": r"\d{4}-W\d{2}", "day": r"\d{4}-\d{2}-\d{2}"}


def period_kind(period: str) -> str:
    """`week` or `day` for a period setting (a kind, or one period named as PERIOD_FORMATS writes it), ''
    for none; a ConfigError for anything else."""
    if period in ("", *PERIOD_FORMATS):
        return period
    for kind, pattern in PERIOD_NAMES.items():
        if re.fullmatch(pattern, period):
            try:  # a real week or day: formatting the parsed date gives the same name back
                parsed = datetime.strptime(period + ("-1" if kind == "week" else ""),
                                           PERIOD_FORMATS[kind] + ("-%u" if kind == "week" else ""))
            except ValueError:
                break
            if parsed.strftime(PERIOD_FORMATS[kind]) == period:
                return kind
            break
    raise cfg.ConfigError(f"period: {period!r} is not one of: '' (none), {', '.join(PERIOD_FORMATS)}, "
                          "or one period: an ISO week YYYY-Www (2026-W49) or a day YYYY-MM-DD (2026-12-02)")


class UsageError(Exception):
    """A bad argument: one line for the user, exit 2, nothing started."""


@dataclass(frozen=True)
class Point:
    scale: str    # canonical preset name
    method: str
    cpus: int     # what its Ray Train workers hold: one CPU per worker
    gpus: int     # workers x gpus_per_worker
    seed: int | None = None
    """train.seed of this point in a sweep of several seeds; None: one seed, the training keys' own."""

    @property
    def name(self) -> str:
        return f"{self.scale}-{self.method}" + (f"-seed{self.seed}" if self.seed is not None else "")


# --- settings and the plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSettings:
    scales: tuple[str, ...] = ()
    """Scale presets or aliases to train (cdb/scales.py), e.g. [tiny, smol-135m, 13b]; at least one."""
    methods: tuple[str, ...] = ()
    """Training methods (objective.method) to train at every scale, e.g. [contrastive, sft]; at least one."""
    output_dir: str = DEFAULT_OUTPUT
    """Sweep folder: sweep.json, logs/, report/ and one run folder per point (<scale>-<method>); with
    `period`, the folder that holds one such folder per period."""
    experiment: str = ""
    """MLflow experiment of the sweep and its runs; empty = the one in OUTPUT_DIR/sweep.json when
    continuing, else cdb-sweep."""
    tracking_uri: str = ""
    """MLflow store of the sweep and its runs; empty = the one in OUTPUT_DIR/sweep.json when continuing,
    else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    parallel: int = 1
    """Points trained at once, while the Ray cluster has room for them; >= 1."""
    base_eval_dir: str = ""
    """The folder of starting-model evaluations the points share (train.base_eval_dir of every point): one
    base evaluation per model and evaluation options serves every method and seed; empty =
    OUTPUT_DIR/base_evals. Sweeps that name one folder share it."""
    seeds: int = 1
    """Training runs of every (scale, method), each its own point and MLflow run under the parent, with
    train.seed = the training keys' train.seed (default 0) + i for i < seeds; the evaluation's seed
    stays, so one base evaluation serves every seed. cdb.report pools a method's seeds; >= 1."""
    fresh: bool = False
    """Start a new sweep (new parent run, every point trained again) even if OUTPUT_DIR holds one; the
    old sweep.json is kept beside it."""
    period: str = ""
    """For scheduled sweeps: `week` keeps each ISO week's sweep in OUTPUT_DIR/<ISO year>-W<week> (e.g.
    2026-W49), `day` each UTC day's in OUTPUT_DIR/<YYYY-MM-DD>, the period the driver's clock is in. A
    new period is a new sweep in a new folder (new parent run; every point trained and its base
    evaluated again; nothing of an earlier period's runs reused); the same command again within the
    period continues it. One period by name (2026-W49, 2026-12-02): that period's folder whatever the
    clock says, for a scheduler that fixes the period when it launches (a retry after the period's end
    continues the same sweep). Empty: the sweep lives in OUTPUT_DIR itself."""
    keep_periods: int = 4
    """With `period`: how many period folders, the current one included, keep their points'
    checkpoints; a sweep deletes <point>/checkpoints/ in the older ones (their models, logs, reports and
    sweep.json stay). 0 keeps every checkpoint."""


FLAGS = (
    Flag("--scales", key="scales", metavar="A,B"),
    Flag("--methods", key="methods", metavar="A,B"),
    Flag("--output-dir", key="output_dir", metavar="DIR"),
    Flag("--experiment", key="experiment", metavar="NAME"),
    Flag("--tracking-uri", key="tracking_uri", metavar="URI"),
    Flag("--parallel", key="parallel", type=int, metavar="N"),
    Flag("--seeds", key="seeds", type=int, metavar="N"),
    Flag("--fresh", key="fresh", const=True),
    Flag("--period", key="period", metavar="week|day|PERIOD"),
    Flag("--max-steps", key="train.max_steps", type=int, metavar="N", help="every point"),
)
"""Each flag a shorthand for one key: a sweep key, or a training key for every point."""


def _is_training(key: str) -> bool:
    return key.split(".", 1)[0] in TRAINING_SECTIONS


def _check_key(key: str, where: str) -> None:
    if not _is_training(key) and key.split(".", 1)[0] not in {f.name for f in dataclasses.fields(SweepSettings)}:
        raise cfg.ConfigError(f"{where}: unknown key '{key}'; sweep keys: "
                              f"{', '.join(f.name for f in dataclasses.fields(SweepSettings))}; training keys start "
                              f"with {', '.join(s + '.' for s in TRAINING_SECTIONS)}")


def _as_text(value) -> str:
    """A YAML value as the text `--set` reads back to the same value."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").rstrip("\n")


def resolve_settings(config_file: str | None = None, sets: Sequence[str] = ()) -> tuple[SweepSettings, tuple[str, ...]]:
    """(the sweep's settings, the training keys for every point as `key.path=value` texts), from a
    --config file and `key.path=value` texts (the flags' first, then --set); a ConfigError names a bad key."""
    file_values = settings.load_yaml(config_file) if config_file else {}
    for key in file_values:
        _check_key(key, str(config_file))
    training = [f"{key}={_as_text(value)}" for key, value in
                settings.flatten({k: v for k, v in file_values.items() if _is_training(k)}).items()]
    own_sets = []
    for key, value in settings.parse_sets(sets):
        _check_key(key, f"--set {key}={value}")
        (training if _is_training(key) else own_sets).append(f"{key}={value}")
    sweep = settings.resolve(SweepSettings, defaults={k: v for k, v in file_values.items() if not _is_training(k)},
                             sets=own_sets)
    if not sweep.scales:
        raise cfg.ConfigError("scales: give at least one scale preset, e.g. --scales tiny")
    if not sweep.methods:
        raise cfg.ConfigError("methods: give at least one training method, e.g. --methods contrastive")
    if sweep.parallel < 1:
        raise cfg.ConfigError(f"parallel: must be >= 1, got {sweep.parallel}")
    if sweep.seeds < 1:
        raise cfg.ConfigError(f"seeds: must be >= 1, got {sweep.seeds}")
    period_kind(sweep.period)
    if sweep.keep_periods < 0:
        raise cfg.ConfigError(f"keep_periods: must be >= 0 (0 keeps every checkpoint), got {sweep.keep_periods}")
    for item in training:
        key = item.split("=", 1)[0]
        if key in RESERVED_KEYS:
            instead = f"; use the sweep's key '{RESERVED_KEYS[key]}'" if RESERVED_KEYS[key] else ""
            raise cfg.ConfigError(f"{key}: the sweep sets {key} for each point itself{instead}")
    return sweep, tuple(training)


def methods_known() -> tuple[str, ...]:
    """The training methods (cdb.methods.METHODS)."""
    from cdb.methods import METHODS

    return tuple(METHODS)


def method_overrides(overrides: Sequence[str], method: str) -> list[str]:
    """The training keys for a point of `method`: a method's own options (objective.<m>.KEY) go to that
    method's points only, so one sweep can set options of several methods."""
    from cdb.methods import METHODS

    def other_methods(item: str) -> bool:
        parts = item.split("=", 1)[0].split(".")
        return len(parts) > 2 and parts[0] == "objective" and parts[1] in METHODS and parts[1] != method
    return [item for item in overrides if not other_methods(item)]


def sweep_points(scales: Sequence[str], methods: Sequence[str], overrides: Sequence[str] = (), seeds: int = 1) -> list[Point]:
    """The sweep's points, scale-major then method then seed, with their resource needs (with `seeds`
    > 1, one point per seed: train.seed = the overrides' train.seed + i). UsageError on an unknown scale or
    method, or training keys (`overrides`, key.path=value) some point's config rejects: checked here,
    before anything is started."""
    from cdb.scales import canonical_scale

    canonical = []
    for name in scales:
        try:
            canonical.append(canonical_scale(name))
        except ValueError as exc:
            raise UsageError(f"scales: {exc}") from None
    canonical = list(dict.fromkeys(canonical))  # 13b and llama2-13b are one point
    methods = list(dict.fromkeys(methods))
    known = methods_known()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UsageError(f"methods: unknown method {unknown[0]!r}; known methods: {', '.join(known)}")
    points = []
    for scale in canonical:
        for method in methods:
            try:
                config = cfg.resolve(flags={"objective.method": method}, sets=method_overrides(overrides, method), scale=scale)
            except cfg.ConfigError as exc:
                raise UsageError(f"{scale}-{method}: {exc}") from None
            s = config.scale
            for i in range(seeds):
                points.append(Point(scale, method, cpus=s.num_workers, gpus=s.num_workers * s.gpus_per_worker,
                                    seed=config.train.seed + i if seeds > 1 else None))
    return points


def _settings_help() -> str:
    lines = ["sweep keys (top-level keys of --config, or --set KEY=VALUE):"]
    for key, kind, default, doc in settings.describe(SweepSettings):
        lines += textwrap.wrap(f"{key} ({kind}, default {default!r}): {doc}", 100, initial_indent="  ",
                               subsequent_indent="      ")
    lines.append("training keys: SECTION.FIELD of cdb.train's config, for every point; see cdb/configs/resolved/tiny.yaml")
    return "\n".join(lines)


def command() -> Command:
    return Command("cdb.sweep", "python -m cdb.sweep", __doc__.split("\n", 1)[1], FLAGS,
                   defaults=describe(SweepSettings), epilog=_settings_help(), what="sweep and training")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return command().parse(argv)


def settings_from_args(args: argparse.Namespace) -> tuple[SweepSettings, tuple[str, ...]]:
    """The flags as the `key=value` texts they stand for, then --set, over the --config file."""
    return resolve_settings(args.config, command().texts(args))


# --- state: OUTPUT_DIR/sweep.json ---------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_state(output_dir: Path) -> dict | None:
    path = output_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable ({exc}); move it away or pass --fresh") from None
    return state if isinstance(state, dict) else None


def save_state(state: dict, output_dir: Path) -> None:
    state["updated"] = _now()
    staging = output_dir / f".{STATE_FILE}.tmp"
    staging.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(staging, output_dir / STATE_FILE)


def spec_of(overrides: Sequence[str]) -> dict:
    """What a point was trained with, beyond its scale and method: a finished point is reused only for the same spec."""
    return {"sets": list(overrides)}


def is_done(entry: Mapping | None, point_dir: Path, spec: Mapping) -> bool:
    return bool(entry) and entry.get("status") == "FINISHED" and (point_dir / "model").is_dir() \
        and entry.get("spec", spec) == spec


# --- scheduling ---------------------------------------------------------------------------------


def fits(point: Point, resources: Mapping[str, float], used_cpus: int = 0, used_gpus: int = 0) -> bool:
    return point.cpus + used_cpus <= int(resources.get("CPU", 0)) and point.gpus + used_gpus <= int(resources.get("GPU", 0))


def admit(pending: Sequence[Point], running: Iterable[Point], total: Mapping[str, float], parallel: int,
          available: Mapping[str, float] | None = None) -> list[Point]:
    """The pending points to start now, in order (later ones may fill room an earlier one cannot use).

    A point starts when fewer than `parallel` run and the cluster's free (available) CPUs and GPUs
    hold it beside the running ones: another sweep or job on the cluster holds what it uses. This
    sweep's running points count against the free resources even when they hold theirs already (a
    point just started may not have claimed them yet), so a sweep may start fewer points than would
    fit, never more. A point that would not fit even the whole, empty cluster starts only when nothing
    of this sweep runs: the trainer then decides (it fails at once with what it needs and what there is).
    `available` None: the whole cluster is free."""
    available = total if available is None else available
    running = list(running)
    started: list[Point] = []
    for point in pending:
        active = running + started
        if len(active) >= parallel:
            break
        used = sum(p.cpus for p in active), sum(p.gpus for p in active)
        if not fits(point, total):
            if not active:
                started.append(point)
        elif fits(point, total, *used) and fits(point, available, *used):
            started.append(point)
    return started


def period_folder(base: Path, period: str, now: datetime) -> Path:
    """The sweep's folder: `base`, its subfolder for the period `now` falls in, or the one of the period
    named (see SweepSettings.period)."""
    if period in PERIOD_FORMATS:
        return base / now.astimezone(timezone.utc).strftime(PERIOD_FORMATS[period])
    return base / period if period else base


def _locked(folder: Path) -> bool:
    """Whether a sweep holds `folder`'s lock now."""
    if not (folder / LOCK_FILE).exists():
        return False
    with (folder / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def prune_checkpoints(base: Path, period: str, keep: int, current: Path) -> list[Path]:
    """Delete <point>/checkpoints/ in `base`'s period folders older than the newest `keep` (`current`
    counted among them); a folder a running sweep holds is left alone. Returns what was deleted."""
    if keep <= 0 or not base.is_dir():
        return []
    folders = sorted({p for p in base.iterdir() if p.is_dir() and re.fullmatch(PERIOD_NAMES[period], p.name)
                      and p.name < current.name})
    removed = []
    for folder in folders[:max(len(folders) - (keep - 1), 0)]:
        if not (folder / STATE_FILE).is_file() or _locked(folder):
            continue
        for checkpoints in sorted(folder.glob("*/checkpoints")):
            if (checkpoints.parent / tracking.RUN_FILE).is_file():  # a point's run folder
                shutil.rmtree(checkpoints)
                removed.append(checkpoints)
    return removed


# --- one point: a cdb.train subprocess ----------------------------------------------------------


def last_error_line(lines: Sequence[str], returncode: int) -> str:
    """The trainer's own `cdb.train: error: ...` line, else the last exception line, else the exit status."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith(TRAINER_ERROR):
            return text[len(TRAINER_ERROR):].strip()
    for line in reversed(lines):
        text = line.strip()
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", text):
            return text
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"python -m cdb.train exited with code {returncode}"


@dataclass
class Job:
    point: Point
    index: int                  # 1-based position in the sweep
    process: subprocess.Popen
    log_path: Path
    started: float
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=400))
    reader: threading.Thread | None = None


BASE_EVALS = "base_evals"
"""In the sweep's folder: the starting models' evaluations its points share (train.base_eval_dir)."""


def train_command(point: Point, point_dir: Path, uri: str, experiment: str, parent_run_id: str,
                  overrides: Sequence[str], resume: bool, base_eval_dir: str = "") -> list[str]:
    cmd = [sys.executable, "-m", "cdb.train", "--scale", point.scale, "--method", point.method,
           "--output-dir", str(point_dir), "--tracking-uri", uri, "--experiment", experiment, "--run-name", point.name]
    for item in method_overrides(overrides, point.method):
        cmd += ["--set", item]
    if point.seed is not None:  # after the overrides: the point's own seed wins
        cmd += ["--set", f"train.seed={point.seed}"]
    shared = Path(base_eval_dir).resolve() if base_eval_dir else point_dir.parent / BASE_EVALS
    cmd += ["--set", f"tracking.parent_run_id={parent_run_id}", "--set", f"train.base_eval_dir={shared}"]
    cmd.append("--resume" if resume else "--fresh")  # a point not resumed starts anew, its old folder archived
    return cmd


def _pump(job: Job, echo: Callable[[str], None]) -> None:
    """Child output -> the point's log file, the console (prefixed) and a tail for the error line."""
    with job.log_path.open("a", encoding="utf-8", errors="replace") as log:
        for line in job.process.stdout:  # type: ignore[union-attr]
            log.write(line)
            log.flush()
            job.tail.append(line.rstrip("\n"))
            echo(f"[{job.point.name}] {line.rstrip()}")


def _die_with_parent(signum: int) -> Callable[[], None] | None:
    """preexec_fn: the child gets `signum` when the sweep dies, however it dies (Linux prctl)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the sweep died before the line above
            os._exit(1)
    return setup


def start_job(point: Point, index: int, cmd: list[str], env: Mapping[str, str], log_path: Path,
              echo: Callable[[str], None], on_parent_death: int = signal.SIGTERM) -> Job:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n=== {_now()} {' '.join(cmd)}\n")
    # Its own session: a terminal's Ctrl-C reaches the sweep, which forwards it once (see Sweep.on_signal).
    # Should the sweep itself be killed, the point gets `on_parent_death` instead of living on unwatched.
    process = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", bufsize=1, start_new_session=True,
                               preexec_fn=_die_with_parent(on_parent_death) if sys.platform.startswith("linux") else None)
    job = Job(point, index, process, log_path, time.monotonic())
    job.reader = threading.Thread(target=_pump, args=(job, echo), daemon=True, name=f"sweep-{point.name}")
    job.reader.start()
    return job


# --- MLflow -------------------------------------------------------------------------------------


def ensure_parent(state: dict, uri: str, experiment: str, scales: Sequence[str], methods: Sequence[str],
                  echo: Callable[[str], None]) -> tracking.Run:
    """The sweep's parent run: the one in sweep.json (set RUNNING again) or a new one."""
    parent = None
    if state.get("parent_run_id"):
        try:
            parent = tracking.attach(uri, state["parent_run_id"], resume=True)
            echo(f"[sweep] continuing sweep: parent run {parent.id} (experiment '{experiment}')")
        except Exception as exc:  # deleted or unknown to this store: a new parent
            echo(f"[sweep] warning: parent run {state['parent_run_id']} not usable ({type(exc).__name__}: {exc}); "
                 "starting a new one")
    if parent is None:
        parent = tracking.open_run(uri, experiment, state.get("name") or "sweep",
                                     {"scales": ",".join(scales), "methods": ",".join(methods),
                                      "sets": " ".join(state.get("sets", []))},
                                     {tracking.TAG_METHOD: tracking.SWEEP_RUN})
        echo(f"[sweep] parent run {parent.id} (experiment '{experiment}', {uri})")
    parent.set_tags({tracking.TAG_SWEEP_SCALES: ",".join(scales), tracking.TAG_SWEEP_METHODS: ",".join(methods)})
    return parent


def _tag(uri: str, run_id: str, key: str, value: str, echo: Callable[[str], None]) -> None:
    try:
        tracking.attach(uri, run_id).set_tags({key: value})
    except Exception as exc:  # the tracking server is not a reason to stop the sweep
        echo(f"[sweep] warning: could not tag the parent run ({type(exc).__name__}: {exc})")


# --- Ray ----------------------------------------------------------------------------------------


def connect_ray(points: Sequence[Point], echo: Callable[[str], None], temp_dir: str | None) -> tuple[str, bool]:
    """(GCS address for the points' RAY_ADDRESS, whether this process started the cluster). Joins
    RAY_ADDRESS when set, else starts a local cluster in `temp_dir` (its own: Ray's `auto` address
    lookup fails when two clusters share a temp dir), stopped by ray.shutdown()."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, configure_logging=False)
        started = False
    else:
        need = max([p.cpus for p in points if p.gpus == 0] or [1])
        ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _temp_dir=temp_dir)
        started = True
    address = ray.get_runtime_context().gcs_address
    total = ray.cluster_resources()
    echo(f"[sweep] Ray cluster {address} ({'started here' if started else 'joined'}): "
         f"{int(total.get('CPU', 0))} CPUs, {int(total.get('GPU', 0))} GPUs")
    return address, started


def _remove_tree(path: str, attempts: int = 10) -> None:
    """Remove the local cluster's temp dir; Ray processes on their way out may still write to it."""
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(1)


def cluster_resources() -> tuple[dict, dict]:
    """(the cluster's total resources, those free now)."""
    import ray

    try:
        return dict(ray.cluster_resources()), dict(ray.available_resources())
    except Exception:  # a hiccup reading resources: assume only what already runs fits
        return {}, {}


# --- the sweep ----------------------------------------------------------------------------------


def _elapsed(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class Sweep:
    def __init__(self, sweep_settings: SweepSettings, overrides: Sequence[str], points: list[Point],
                 echo: Callable[[str], None] = print):
        self.settings, self.overrides, self.points, self.echo = sweep_settings, tuple(overrides), points, echo
        self.output_dir = period_folder(Path(sweep_settings.output_dir).resolve(), sweep_settings.period,
                                        datetime.now(timezone.utc))
        self.spec = spec_of(overrides)
        self.jobs: dict[str, Job] = {}
        self.stop_signals: list[int] = []
        self.lock = threading.RLock()  # re-entered by the signal handler on the main thread
        self.started = time.monotonic()
        self.on_parent_death = signal.SIGTERM

    def say(self, text: str) -> None:
        with self.lock:
            self.echo(text)

    # signals: the first one is forwarded to every running point (cdb.train checkpoints and exits 75),
    # a second one kills them.
    def on_signal(self, signum, _frame) -> None:
        self.stop_signals.append(signum)
        hard = len(self.stop_signals) > 1
        self.say(f"\n[sweep] {signal.Signals(signum).name}: " + (
            "killing the running points" if hard else
            "no new points; running points checkpoint and stop (again to kill them)"))
        for job in list(self.jobs.values()):
            try:
                if hard:
                    os.killpg(job.process.pid, signal.SIGKILL)
                else:
                    job.process.send_signal(signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def prepare_state(self, uri_arg: str | None, experiment_arg: str | None) -> dict:
        previous = None if self.settings.fresh else load_state(self.output_dir)
        if self.settings.fresh and (self.output_dir / STATE_FILE).is_file():
            archived = self.output_dir / f"sweep.{time.strftime('%Y%m%d-%H%M%S')}.json"
            os.replace(self.output_dir / STATE_FILE, archived)
            self.say(f"[sweep] --fresh: previous state kept as {archived}")
        if previous:
            for key, given in (("tracking_uri", uri_arg), ("experiment", experiment_arg)):
                if given and previous.get(key) and given != previous[key]:
                    raise UsageError(f"{key} {given}: {self.output_dir} holds a sweep with {key} {previous[key]}; "
                                     "use the same value, another output_dir, or fresh")
        uri = uri_arg or (previous or {}).get("tracking_uri") or tracking.resolve_uri("")
        experiment = experiment_arg or (previous or {}).get("experiment") or DEFAULT_EXPERIMENT
        state = previous or {"version": 1, "created": _now(), "points": {}}
        state.update(tracking_uri=uri, experiment=experiment, output_dir=str(self.output_dir),
                     scales=[s for s in dict.fromkeys(p.scale for p in self.points)],
                     methods=[m for m in dict.fromkeys(p.method for p in self.points)],
                     sets=list(self.overrides), parallel=self.settings.parallel,
                     status="RUNNING")
        state.setdefault("name", f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
        return state

    def lock_output_dir(self):
        """An exclusive lock on OUTPUT_DIR: two sweeps must not share one folder and parent run."""
        handle = (self.output_dir / LOCK_FILE).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                handle.close()
                raise UsageError(f"another sweep is running in {self.output_dir}") from None
            self.say(f"[sweep] warning: cannot lock {self.output_dir} ({exc.strerror}); not guarding against a second sweep")
        return handle

    def run(self) -> int:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        lock = self.lock_output_dir()
        try:
            if self.settings.period:
                for removed in prune_checkpoints(self.output_dir.parent, period_kind(self.settings.period),
                                                 self.settings.keep_periods, self.output_dir):
                    self.say(f"[sweep] removed {removed} (keep_periods={self.settings.keep_periods})")
            return self._run()
        finally:
            lock.close()

    def _run(self) -> int:
        state = self.prepare_state(self.settings.tracking_uri, self.settings.experiment)
        uri, experiment = state["tracking_uri"], state["experiment"]
        try:
            state["parent_run_id"] = ensure_parent(state, uri, experiment, state["scales"], state["methods"], self.say).id
        except Exception as exc:  # nothing trained yet: better to stop than to train into nowhere
            self.say(f"[sweep] error: cannot create the sweep's parent run in MLflow at {uri}: {type(exc).__name__}: {exc}")
            return EXIT_FAILED
        parent = state["parent_run_id"]
        save_state(state, self.output_dir)
        n = len(self.points)
        index = {p.name: i for i, p in enumerate(self.points, 1)}

        pending: list[Point] = []
        for point in self.points:
            entry = state["points"].get(point.name)
            if is_done(entry, self.output_dir / point.name, self.spec):
                self.say(f"[sweep] point {index[point.name]}/{n} {point.name}: skipped, finished earlier (run {entry.get('run_id')})")
                continue
            if entry and entry.get("status") == "FINISHED":
                self.say(f"[sweep] point {index[point.name]}/{n} {point.name}: finished earlier with other settings "
                         f"or its model is gone; training it again")
            pending.append(point)

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        temp_dir = tempfile.mkdtemp(prefix="cdb-sweep-ray-") if pending and not os.environ.get("RAY_ADDRESS") else None
        previous_handlers: dict = {}
        connected = False
        try:
            if pending:
                connected = True
                address, ray_started = connect_ray(pending, self.say, temp_dir)
                env["RAY_ADDRESS"] = address
                # A local cluster dies with this process: its points cannot outlive it. On a real
                # cluster a point told of the sweep's death checkpoints and stops (resumed on rerun).
                self.on_parent_death = signal.SIGKILL if ray_started else signal.SIGTERM
            # After ray.init, which sets a SIGTERM handler of its own (sys.exit) in the driver.
            previous_handlers = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
            self.loop(pending, state, env, index, n)
        finally:
            for job in self.jobs.values():  # only on an error in this driver: do not leave points behind
                self._kill(job)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if connected:
                import ray

                ray.shutdown()  # stops the local cluster when this process started it
            if temp_dir:
                _remove_tree(temp_dir)

        failed = [p.name for p in self.points if state["points"].get(p.name, {}).get("status") != "FINISHED"]
        stopped = bool(self.stop_signals) and bool(failed)  # a stop that came after the last point changes nothing
        report_ok = True
        if not stopped:
            report_ok = self.report(state, uri, experiment, parent)
        state["status"] = "STOPPED" if stopped else ("FINISHED" if not failed and report_ok else "FAILED")
        save_state(state, self.output_dir)
        try:
            parent_run = tracking.attach(uri, parent)
            parent_run.log_artifact(self.output_dir / STATE_FILE)
            parent_run.finish({"STOPPED": "KILLED"}.get(state["status"], state["status"]))
        except Exception as exc:
            self.say(f"[sweep] warning: could not finish the parent run ({type(exc).__name__}: {exc})")
        self.summary(state, index, n)
        if stopped:
            return EXIT_STOPPED
        return EXIT_OK if not failed and report_ok else EXIT_FAILED

    def loop(self, pending: list[Point], state: dict, env: dict, index: dict, n: int) -> None:
        uri, experiment, parent = state["tracking_uri"], state["experiment"], state["parent_run_id"]
        last_beat = time.monotonic()
        waiting = False  # said that nothing of this sweep runs and the next point does not fit
        while (pending and not self.stop_signals) or self.jobs:
            if pending and not self.stop_signals:
                total, available = cluster_resources()
                admitted = admit(pending, [j.point for j in self.jobs.values()], total, self.settings.parallel, available)
                if not admitted and not self.jobs and not waiting:
                    waiting = True
                    self.say(f"[sweep] waiting for room for {pending[0].name}: the cluster has "
                             f"{int(available.get('CPU', 0))} CPUs, {int(available.get('GPU', 0))} GPUs free "
                             "(other jobs hold the rest)")
                for point in admitted:
                    waiting = False
                    pending.remove(point)
                    self.launch(point, index[point.name], n, state, env, uri, experiment, parent)
            for name, job in list(self.jobs.items()):
                if job.process.poll() is not None:
                    del self.jobs[name]
                    self.finish(job, n, state, uri, parent)
            if self.jobs and time.monotonic() - last_beat >= HEARTBEAT_S:
                last_beat = time.monotonic()
                running = ", ".join(f"{j.point.name} ({j.index}/{n}, {_elapsed(time.monotonic() - j.started)})"
                                    for j in self.jobs.values())
                done = sum(1 for p in self.points if state["points"].get(p.name, {}).get("status") == "FINISHED")
                self.say(f"[sweep] running {running} | finished {done}/{n}, waiting {len(pending)} | "
                         f"elapsed {_elapsed(time.monotonic() - self.started)}")
            time.sleep(0.5)

    def launch(self, point: Point, i: int, n: int, state: dict, env: dict, uri: str, experiment: str, parent: str) -> None:
        point_dir = self.output_dir / point.name
        entry = state["points"].get(point.name) or {}
        # A point a signal stopped, or one an earlier sweep left RUNNING when it died, continues from
        # its checkpoint in its own MLflow run.
        resume = entry.get("status") in ("STOPPED", "RUNNING") and (point_dir / tracking.RUN_FILE).is_file() \
            and (point_dir / "config.yaml").is_file() and entry.get("spec", self.spec) == self.spec
        cmd = train_command(point, point_dir, uri, experiment, parent, self.overrides, resume, self.settings.base_eval_dir)
        log_path = self.output_dir / "logs" / f"{point.name}.log"
        state["points"][point.name] = {
            "scale": point.scale, "method": point.method, "status": "RUNNING", "output_dir": str(point_dir),
            "log": str(log_path), "spec": self.spec, "started": _now(), "attempts": entry.get("attempts", 0) + 1,
            "needs": {"CPU": point.cpus, "GPU": point.gpus}, "run_id": entry.get("run_id") if resume else None,
        }
        save_state(state, self.output_dir)
        self.say(f"[sweep] point {i}/{n} {point.name}: {'resuming' if resume else 'starting'} "
                 f"({point.cpus} CPUs, {point.gpus} GPUs; log {log_path}) | elapsed {_elapsed(time.monotonic() - self.started)}")
        self.jobs[point.name] = start_job(point, i, cmd, env, log_path, self.say, self.on_parent_death)

    def finish(self, job: Job, n: int, state: dict, uri: str, parent: str) -> None:
        if job.reader:
            job.reader.join(timeout=30)
        point, code = job.point, job.process.returncode
        point_dir = self.output_dir / point.name
        run_id = None
        try:
            run_id = tracking.RunRecord.read(point_dir).run_id
        except (OSError, ValueError):  # no record: the point failed before its run was made
            pass
        elapsed = time.monotonic() - job.started
        entry = state["points"][point.name]
        entry.update(exit_code=code, run_id=run_id, elapsed_s=round(elapsed, 1), ended=_now())
        if code == 0:
            entry.update(status="FINISHED", error=None)
            tag = f"finished: run {run_id}"
            verdict = f"FINISHED in {_elapsed(elapsed)}, run {run_id}"
        elif code == EXIT_STOPPED:
            entry.update(status="STOPPED", error="stopped by a signal after a checkpoint; rerun the sweep to continue")
            tag = "stopped: checkpointed; rerun the sweep to continue"
            verdict = f"STOPPED after {_elapsed(elapsed)} (checkpointed)"
        else:
            error = last_error_line(list(job.tail), code)
            entry.update(status="FAILED", error=error)
            tag = f"failed: {error}"
            verdict = f"FAILED after {_elapsed(elapsed)} (exit {code}): {error}"
        save_state(state, self.output_dir)
        _tag(uri, parent, tracking.sweep_point_tag(point.name), tag, self.say)
        self.say(f"[sweep] point {job.index}/{n} {point.name}: {verdict} | elapsed {_elapsed(time.monotonic() - self.started)}")

    def _kill(self, job: Job) -> None:
        if job.process.poll() is None:
            try:
                os.killpg(job.process.pid, signal.SIGTERM)
                job.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(job.process.pid, signal.SIGKILL)
                job.process.wait(timeout=30)
            except ProcessLookupError:
                pass

    def report(self, state: dict, uri: str, experiment: str, parent: str) -> bool:
        from cdb.report import ReportError, report

        out = self.output_dir / "report"
        self.say(f"[sweep] writing the report of this sweep (parent run {parent}) to {out}")
        try:
            result = report(experiment, out, uri, parent_run_id=parent)
            # The report run stays beside the training runs, not among them; the parent points to it
            # and holds the changes pooled over each point's seeds.
            parent_run = tracking.attach(uri, parent)
            parent_run.set_tags({tracking.TAG_SWEEP_REPORT: result["run_id"]})
            if result["pooled_metrics"]:
                parent_run.log_metrics(result["pooled_metrics"])
        except ReportError as exc:
            self.say(f"[sweep] report: {exc}")
            state["report"] = {"error": str(exc)}
            return False
        except Exception as exc:
            self.say(f"[sweep] report failed: {type(exc).__name__}: {exc}")
            state["report"] = {"error": f"{type(exc).__name__}: {exc}"}
            return False
        state["report"] = {"dir": str(out), "files": result["files"], "run_id": result["run_id"], "written": _now()}
        return True

    def summary(self, state: dict, index: dict, n: int) -> None:
        lines = [f"\n[sweep] {state['status']} in {_elapsed(time.monotonic() - self.started)}: "
                 f"experiment '{state['experiment']}', parent run {state['parent_run_id']} ({state['tracking_uri']})"]
        for point in self.points:
            e = state["points"].get(point.name, {})
            detail = e.get("error") or (f"run {e.get('run_id')}" if e.get("run_id") else "")
            lines.append(f"  {index[point.name]}/{n} {point.name:<28} {e.get('status', 'NOT RUN'):<9} {detail}")
        if state.get("report", {}).get("dir"):
            lines.append(f"  report: {state['report']['dir']}/report.md")
        lines.append(f"  state:  {self.output_dir / STATE_FILE}")
        uri = state["tracking_uri"]
        try:  # the sweep's training runs in MLflow's runs page, as a saved view that compares methods
            experiment = tracking.experiment_id(uri, state["experiment"])
            view = tracking.save_comparison_view(uri, experiment, f"sweep-{state['parent_run_id']}",
                                                 f"{state.get('name') or 'sweep'}: methods compared",
                                                 tracking.sweep_filter(state["parent_run_id"]))
            lines.append(f"  MLflow: {tracking.ui_hint(uri, tracking.runs_url(uri, experiment, view=view))}")
            lines.append(f"  MLflow charts: {tracking.runs_url(uri, experiment, view=view, charts=True)}")
        except Exception as exc:  # an unreachable server: the parent run id above is what there is
            lines.append(f"  MLflow: no link ({type(exc).__name__}: {exc})")
        self.say("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sweep, overrides = settings_from_args(args)
        points = sweep_points(sweep.scales, sweep.methods, overrides, sweep.seeds)
        return Sweep(sweep, overrides, points, echo=lambda text: print(text, flush=True)).run()
    except (UsageError, cfg.ConfigError) as exc:
        return command().fail(str(exc), EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
