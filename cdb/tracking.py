"""MLflow, the one door to it: every cdb module, bench and script logs and reads through here and
imports nothing of mlflow itself.

The door, in three verbs:
- open: `open_run(...)` makes a new run (RUNNING); `attach(uri, run_id)` is an existing one
  (`resume=True` sets it RUNNING again). Used as a context manager (`with open_run(...) as run`), a
  run is FINISHED when the block ends and FAILED when it raises; otherwise its owner calls `finish`.
- log: `Run.log_params / set_tags / log_metrics / log_artifact`, lineage (`log_training_data`,
  `log_model_location`); workers log from rank 0 through `RunLogger`, spooling what an unreachable
  server cannot take; `system_metrics` samples each node's CPU, memory and GPUs.
- finish: `Run.finish(status)`.
The training job's run is resumable and lives in its folder as a typed record (`RunRecord`, in
OUTPUT_DIR/run.json): `training_record(config, ...)` assembles its params and tags,
`start_job_run` opens or attaches it (never failing training for the server), `finish_job_run`
replays the spool and finishes it, `sync` does both later (`python -m cdb.sync`).
Reading back: `experiment_runs`, `find_run`, `metric_history`.

The contract between the modules that write runs and those that read them: the TAG_* names, the
PREFIX_* metric prefixes and TRAINING_RUNS_FILTER below; every run gets MLflow's source tags.
Links into MLflow's UI for the user: `runs_url`, `run_url`, `ui_hint`; what a method comparison shows
first there: `save_comparison_view` (a saved view of the runs page: columns and charts).
A run's artifact read back: `download_artifact` (the report's per-item values).

Default store: sqlite:///<cwd>/mlflow.db with artifacts in <cwd>/mlartifacts, unless
--tracking-uri / tracking.uri or MLFLOW_TRACKING_URI says otherwise. MLflow's own INFO lines (a new
store's tables, the system-metrics monitor starting and stopping) stay off the console unless
MLFLOW_LOGGING_LEVEL says otherwise.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Protocol, Sequence

# Read by MLflow when it is first imported, in this process and in the Ray workers that import cdb.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

if TYPE_CHECKING:
    from cdb.config import Config

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small file: noise in logs

RUN_FILE = "run.json"
"""In OUTPUT_DIR: the MLflow run and Ray run name of the job, for a rerun (which continues it) and cdb.sync."""
SPOOL_FILE = "metrics.jsonl"
"""In OUTPUT_DIR: metrics that could not reach the tracking server yet."""

# --- run tags -----------------------------------------------------------------------------------
TAG_COMMIT = "cdb.commit"
"""The git commit of the code that made the run (set by open_run)."""
TAG_METHOD = "cdb.method"
"""What the run is: a training objective, a prompt-time method, or one of the *_RUN values below."""
TAG_SCALE = "cdb.scale"
"""The scale preset a training run used."""
TAG_MODEL = "cdb.model"
"""The model an evaluation run evaluated (hub id, directory, gguf:...)."""
TAG_EXPORTED_MODEL = "cdb.exported_model"
"""Where a training run's exported model lies (a URI; the weights are not in the artifact store)."""
TAG_PARENT_RUN = "mlflow.parentRunId"
"""MLflow's own: the run this one is nested under (a sweep's training runs)."""
TAG_KIND = "cdb.kind"
"""On every training run: TRAIN_RUN (see TRAINING_RUNS_FILTER)."""
TRAIN_RUN = "train"
TRAINING_RUNS_FILTER = f"tags.{TAG_KIND} = '{TRAIN_RUN}'"
"""The MLflow search filter (UI search box, `mlflow.search_runs(filter_string=...)`) that selects
exactly the training runs of an experiment: not evaluation runs, sweep parents or reports."""
TAG_SWEEP_REPORT = "cdb.sweep.report"
"""On a sweep's parent run: the id of its report run (the report's files live there, once)."""
TAG_SWEEP_SCALES = "cdb.sweep.scales"
TAG_SWEEP_METHODS = "cdb.sweep.methods"
"""On a sweep's parent run: its scales and methods, comma-separated."""

# MLflow's own tags, shown by its UI as Source, Version, Created by and the run's Description.
TAG_SOURCE_COMMIT = "mlflow.source.git.commit"
"""The git commit of the code (the same as TAG_COMMIT, where MLflow's UI looks for it)."""
TAG_SOURCE_NAME = "mlflow.source.name"
"""The entry point that made the run, e.g. `python -m cdb.train`."""
TAG_USER = "mlflow.user"
"""The login of the user who started the run."""
TAG_NOTE = "mlflow.note.content"
"""The command line that made the run (its arguments only: nothing from the environment; passwords in
URLs masked)."""

RUN_SPECIFIC_KEYS = ("train.output_dir", "train.storage_path", "train.base_eval_dir", "tracking.uri", "tracking.run_name",
                     "tracking.parent_run_id")
"""Config keys whose values differ on every run by construction: logged as tags `cdb.<key>`, not as
params, so the Compare view's params show only what a user chose."""


def config_tag(key: str) -> str:
    """The tag holding a RUN_SPECIFIC_KEYS value."""
    return f"cdb.{key}"


EVAL_RUN = "eval"
"""TAG_METHOD of an evaluation of a model as it is (no prompt-time method)."""
REPORT_RUN = "report"
SWEEP_RUN = "sweep"
BOOKKEEPING_RUNS = (REPORT_RUN, SWEEP_RUN)
"""TAG_METHOD values of runs that hold no model: a report lists every run but these."""


def sweep_point_tag(point: str) -> str:
    """On a sweep's parent run: a point's (`<scale>-<method>`) outcome."""
    return f"cdb.sweep.{point}"


def eval_tag(prefix: str, field: str) -> str:
    """What the `<prefix>/` metrics were measured with: field model, suite, method or scorer.<kind>."""
    return f"cdb.{prefix}.{field}"


# --- metric prefixes: every metric is `<prefix>/<name>` ------------------------------------------
PREFIX_TRAIN = "train"
"""Training steps, logged by the workers."""
PREFIX_VAL = "val"
"""The held-out validation sources, logged by the workers (the same metrics for every method)."""
PREFIX_EVAL = "eval"
"""cdb.eval of the trained model (or of a model as it is, in an evaluation run)."""
PREFIX_EVAL_BASE = "eval_base"
"""cdb.eval of the starting model, logged into the training run before training."""
PREFIX_DELTA = "delta"
"""The tuned model's change against the base (eval/ minus eval_base/), paired over the items both
evaluated; logged on the training run after its eval/ (cdb.eval.estimates)."""

INTERVAL_SUFFIXES = ("_n", "_ci95_low", "_ci95_high")
"""Beside every eval/, eval_base/ and delta/ metric `K`: K_n (items it used), K_ci95_low, K_ci95_high."""
TAG_DELTA_WITHHELD = "cdb.delta.withheld"
"""Why no delta/ metrics were logged (base and tuned not comparable); empty when they were."""


def interval_metrics(key: str, value: float, n: int, low: float, high: float) -> dict[str, float]:
    """A metric with its n and 95% interval, under the names of INTERVAL_SUFFIXES."""
    return {key: value, **dict(zip((key + s for s in INTERVAL_SUFFIXES), (n, low, high)))}


def split_interval_metrics(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{K: {"value", "n", "ci95_low", "ci95_high"}} from the flat names interval_metrics writes."""
    fields = dict(zip(INTERVAL_SUFFIXES, ("n", "ci95_low", "ci95_high")))
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        suffix = next((s for s in INTERVAL_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            out.setdefault(key, {})["value"] = value
        else:
            out.setdefault(key[:-len(suffix)], {})[fields[suffix]] = value
    return {k: v for k, v in out.items() if "value" in v}


def undefined_tag(prefix: str, metric: str) -> str:
    """Why `<prefix>/<metric>` is absent: the metric is undefined for that evaluation."""
    return eval_tag(prefix, f"undefined.{metric}")


def metric_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}"


def metrics_under(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """The metrics logged under `prefix/`, by their names without it."""
    head = f"{prefix}/"
    return {k[len(head):]: v for k, v in metrics.items() if k.startswith(head)}


def run_name(scale: str, method: str) -> str:
    """A default run name that says what the run is: `<scale>-<method>-<4 hex digits>`."""
    return f"{scale}-{method}-{secrets.token_hex(2)}"


def masked(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` replaced by ***."""
    return re.sub(r"(://[^/\s:@]+:)[^/\s@]+@", r"\1***@", text)


def entry_point(argv0: str) -> str:
    """How the program was started: `python -m cdb.<module>` for cdb's own modules, else its file name."""
    path = Path(argv0).resolve()
    package = Path(__file__).resolve().parent
    if path.suffix == ".py" and path.is_relative_to(package):
        module = ".".join(("cdb", *path.relative_to(package).with_suffix("").parts))
        return f"python -m {module.removesuffix('.__main__')}"
    return Path(argv0).name


def source_tags(argv: Sequence[str] | None = None) -> dict[str, str]:
    """MLflow's standard tags of a run made by this process (`argv`: default sys.argv)."""
    argv = list(sys.argv if argv is None else argv)
    source = entry_point(argv[0]) if argv else "python"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a name (some containers)
        user = str(os.getuid())
    return {TAG_SOURCE_COMMIT: git_commit(), TAG_SOURCE_NAME: source, TAG_USER: user,
            TAG_NOTE: masked(" ".join([source, *map(shlex.quote, argv[1:])]))}


def resolve_uri(configured: str) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        uri = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    return uri


ARTIFACTS_DIR = "mlartifacts"
"""The artifact folder of a local (sqlite) store, beside its database (_artifact_root)."""


def _artifact_root(uri: str) -> str | None:
    """Local stores get an explicit, absolute artifact folder beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS_DIR).resolve().as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow 3's experiment tag for a model-training experiment: its UI opens such an experiment on the
runs table, not on the GenAI overview."""


def experiment_id(uri: str, name: str) -> str:
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_root(uri), tags=EXPERIMENT_KIND)


# --- links into MLflow's UI (MLflow 3's routes) ------------------------------------------------
LOCAL_UI = "http://127.0.0.1:5000"
"""Where `ui_command`'s `mlflow ui` serves a local store."""


def mlflow_executable() -> str:
    """How to call this environment's `mlflow` from the current folder: `mlflow` where PATH finds that
    one, else its path (relative below the current folder: `.venv/bin/mlflow` after the README's set-up,
    which does not activate the environment)."""
    beside = Path(sys.executable).parent / "mlflow"
    if not beside.is_file():
        return "mlflow"
    found = shutil.which("mlflow")
    if found and Path(found).resolve() == beside.resolve():
        return "mlflow"
    return str(beside.relative_to(Path.cwd())) if beside.is_relative_to(Path.cwd()) else str(beside)


def ui_command(uri: str) -> str | None:
    """The `mlflow ui` command that serves a local store (sqlite, file, database), None for a server."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return f"{mlflow_executable()} ui --backend-store-uri {masked(uri)} --host 127.0.0.1 --port 5000"


def ui_hint(uri: str, link: str) -> str:
    """How to open `link`: start `mlflow ui` first for a local store."""
    command = ui_command(uri)
    return f"{command}, then open {link}" if command else link


def _ui_base(uri: str) -> str:
    return masked(uri).rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


UI_MODEL_TRAINING = "workflowType=machine_learning"
"""The query that opens MLflow 3's UI in its model-training view (not the GenAI one) in any browser."""


def runs_url(uri: str, experiment: str, search_filter: str = "", view: str = "", charts: bool = False) -> str:
    """The runs page of an experiment (by id) in MLflow's UI: its table, or with `charts` its charts;
    with `search_filter` in its search box, or as the saved `view` (save_comparison_view) shows it."""
    from urllib.parse import quote

    if view and search_filter:
        raise ValueError("a saved view carries its own search filter (MLflow ignores the view beside another)")
    query = [f"searchFilter={quote(search_filter, safe='')}"] if search_filter else []
    query += [f"{VIEW_URL_PARAMETER}={quote(view, safe='')}"] if view else []
    query += ["compareRunsMode=CHART"] if charts else []
    return f"{_ui_base(uri)}/#/experiments/{experiment}/runs?{'&'.join(query + [UI_MODEL_TRAINING])}"


def run_url(uri: str, experiment: str, run_id: str) -> str:
    """One run's page (experiment by id) in MLflow's UI."""
    return f"{_ui_base(uri)}/#/experiments/{experiment}/runs/{run_id}?{UI_MODEL_TRAINING}"


def sweep_filter(parent_run_id: str) -> str:
    """A search filter for the training runs of one sweep."""
    return f"{TRAINING_RUNS_FILTER} and tags.{TAG_PARENT_RUN} = '{parent_run_id}'"


# --- a method comparison as MLflow's runs page first shows it: a saved view -----------------------
# MLflow 3's runs page chooses its table columns (Source, Models, Dataset) and its charts (every metric)
# in the browser; the one server-side say is a saved view: an experiment tag VIEW_TAG_PREFIX + id whose
# value names the view and holds the page's state (search filter, columns, charts), opened by the URL
# parameter VIEW_URL_PARAMETER and listed under the page's Views menu. MLflow reads the state only when
# the URL holds no search parameter of its own (searchFilter, orderByKey, ...): a view's link has none.

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_URL_PARAMETER = "viewStateShareKey"

COMPARISON_METRICS = ("val/pref_accuracy", "val/lm_loss")
"""The validation metrics every method logs the same way (higher accuracy, lower loss is better)."""
HEADLINE_METRICS = ("toxicity/mean_toxicity", "faithfulness/entity_precision_all")
"""cdb.eval's headline metrics (toxicity by the evaluation's toxicity instrument, lower is better; the
faithfulness headline, higher is better), shown under eval_base/, eval/ and delta/."""


def comparison_metrics(logged: Iterable[str]) -> list[str]:
    """What compares methods, of the metric names `logged`: the validation metrics, then each headline's
    base value, tuned value and change. Never train/: each method's own objective."""
    wanted = [*COMPARISON_METRICS, *(metric_key(prefix, name) for name in HEADLINE_METRICS
                                     for prefix in (PREFIX_EVAL_BASE, PREFIX_EVAL, PREFIX_DELTA))]
    present = set(logged)
    return [key for key in wanted if key in present]


def _chart_section(key: str) -> str:
    """The charts section MLflow's runs page puts a metric in: its name up to the last '/'."""
    head = key.rpartition("/")[0]
    return "Model metrics" if not head else "System metrics" if head == PREFIX_SYSTEM else head


def comparison_view_state(search_filter: str, logged: Iterable[str], scales: int = 1) -> dict:
    """The runs page's state of a method comparison over the runs `search_filter` selects, which logged
    the metric names `logged` at `scales` scales: runs grouped by method (and scale, where there are
    several; a group's values are its runs' mean, e.g. over seeds); the table's columns are the
    comparison metrics, in comparison_metrics' order, before the run's start and duration; the charts
    open on one bar chart (latest value per group) per comparison metric that differs between methods
    (not the base values), every other metric's section folded below."""
    logged = sorted(set(logged))
    compared = comparison_metrics(logged)
    columns = [f"metrics.`{key}`" for key in compared]
    charted = [key for key in compared if not key.startswith(f"{PREFIX_EVAL_BASE}/")]
    first = {"uuid": "cdb-compared", "name": "Methods compared", "display": True, "isReordered": True,
             "deleted": False, "isGenerated": False}
    others = sorted({_chart_section(key) for key in set(logged) - set(charted)})
    sections = [first] + [{"uuid": f"cdb-section-{i}", "name": name, "display": False, "isReordered": False,
                           "deleted": False, "isGenerated": True} for i, name in enumerate(others)]
    charts = [{"uuid": f"cdb-chart-{i}", "type": "BAR", "runsCountToCompare": 10, "metricSectionId": first["uuid"],
               "deleted": False, "isGenerated": False, "metricKey": key} for i, key in enumerate(charted)]
    grouped = [TAG_SCALE, TAG_METHOD] if scales > 1 else [TAG_METHOD]
    run_name = "attributes.`Run Name`"
    return {"searchFilter": search_filter, "selectedColumns": columns,
            "columnOrder": [run_name, *columns, "runDateAndNestInfo", "duration"],
            "columnWidths": {run_name: 200, **{f"metrics.`{key}`": min(280, 6 * len(key) + 24) for key in compared}},
            "groupBy": {"aggregateFunction": "average",
                        "groupByKeys": [{"mode": "tag", "groupByData": tag} for tag in grouped]},
            "compareRunCharts": charts, "compareRunSections": sections, "isAccordionReordered": True,
            "hideEmptyCharts": True}


def save_comparison_view(uri: str, experiment: str, view_id: str, name: str, search_filter: str) -> str:
    """Save (or replace) the method-comparison view `view_id` of experiment `experiment` (by id) over
    the runs `search_filter` selects, as their metrics are now; returns `view_id` for runs_url."""
    client = _client(uri)
    runs = client.search_runs([experiment], filter_string=search_filter, max_results=1000)
    state = comparison_view_state(search_filter, {key for run in runs for key in run.data.metrics},
                                  len({run.data.tags.get(TAG_SCALE) for run in runs}))
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment, VIEW_TAG_PREFIX + view_id, json.dumps(envelope))
    return view_id


def saved_view(uri: str, experiment: str, view_id: str) -> dict | None:
    """A saved view of experiment `experiment` (by id): its name and its state, or None."""
    value = _client(uri).get_experiment(experiment).tags.get(VIEW_TAG_PREFIX + view_id)
    if value is None:
        return None
    envelope = json.loads(value)
    return {"name": envelope["name"], "state": json.loads(envelope["state"])}


def experiment_runs(uri: str, name: str) -> list | None:
    """Every run of experiment `name` (MLflow Run objects: .info, .data.tags/params/metrics), or
    None when the store has no such experiment."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


class DatasetIdentity(Protocol):
    """What identifies a data set as an MLflow dataset input (cdb.data.lineage computes it)."""

    name: str
    digest: str
    source_type: str
    source: str
    profile: str


def download_artifact(uri: str, run_id: str, path: str, folder: str | Path) -> Path | None:
    """Run `run_id`'s artifact `path` copied into `folder` (under its own name), or None where the
    run has no such artifact (a run logged before cdb wrote it). A local store moved with its artifact
    folder (a committed copy, docs/results/) is read where it lies now: its runs still name the folder
    they were logged to."""
    import shutil

    from mlflow.exceptions import MlflowException

    try:
        return Path(_client(uri).download_artifacts(run_id, path, str(folder)))
    except (MlflowException, OSError):
        pass
    if not uri.startswith("sqlite:///"):
        return None
    logged = _client(uri).get_run(run_id).info.artifact_uri
    _, found, below = logged.partition(f"/{ARTIFACTS_DIR}/")
    moved = Path(uri[len("sqlite:///"):]).parent / ARTIFACTS_DIR / below / path
    if not found or not moved.is_file():
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(moved, Path(folder) / moved.name))


class Run:
    """One MLflow run, by id: what cdb logs through (made by open_run or attach). As a context manager
    it finishes the run: FINISHED when the block ends, FAILED when it raises (the error goes on)."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.id = uri, run_id
        self._client = _client(uri)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.finish("FINISHED")
            return
        try:
            self.finish("FAILED")
        except Exception as exc:  # the block's own error is the one to show
            print(f"[cdb] warning: could not mark MLflow run {self.id} FAILED ({type(exc).__name__}: {exc})", flush=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._client.log_batch(self.id, params=items[start:start + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        entry = {"step": step, "timestamp": int(time.time() * 1000), "metrics": {k: float(v) for k, v in metrics.items()}}
        _log_entries(self._client, self.id, [entry])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.id, str(path), artifact_path)

    def finish(self, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        self._client.set_terminated(self.id, status)

    # Lineage: what went into the run and what came out, where MLflow users look for them.

    def log_training_data(self, identity: DatasetIdentity) -> str:
        """The training data as the run's dataset input (context "training"), identified as
        cdb.data.lineage.dataset_identity says; returns its digest. Logging the same data again (a
        resumed run) adds nothing."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = Dataset(identity.name, identity.digest, identity.source_type, identity.source, profile=identity.profile)
        self._client.log_inputs(self.id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
        return dataset.digest

    def log_model_location(self, model_dir: str | Path, step: int) -> str:
        """Where the run's exported model lies, without copying it into the artifact store: tag
        TAG_EXPORTED_MODEL on the run, and a logged model of the run's name (MLflow's Models view)
        with the same tag, recorded as the run's output at `step`. Returns the logged model's id."""
        from mlflow.entities import LoggedModelOutput

        location = str(model_dir) if "://" in str(model_dir) else Path(model_dir).resolve().as_uri()
        self.set_tags({TAG_EXPORTED_MODEL: location})
        info = self._client.get_run(self.id).info
        model = self._client.create_logged_model(info.experiment_id, name=info.run_name or None, source_run_id=self.id,
                                                 tags={TAG_EXPORTED_MODEL: location})
        self._client.finalize_logged_model(model.model_id, "READY")
        self._client.log_outputs(self.id, [LoggedModelOutput(model.model_id, step)])
        return model.model_id


def open_run(uri: str, experiment: str, run_name: str = "", params: Mapping[str, Any] | None = None,
             tags: Mapping[str, str] | None = None) -> Run:
    """A new RUNNING run with its params and tags (and TAG_COMMIT, `source_tags()`) in `experiment`,
    created if need be. Its owner finishes it: `with open_run(...) as run:` or `run.finish(status)`."""
    standard = source_tags()
    created = _client(uri).create_run(experiment_id(uri, experiment), run_name=run_name or None,
                                      tags={TAG_COMMIT: standard[TAG_SOURCE_COMMIT], **standard, **(tags or {})})
    run = Run(uri, created.info.run_id)
    run.log_params(params or {})
    return run


def attach(uri: str, run_id: str, resume: bool = False) -> Run:
    """An existing run, to log into; its status is left as it is unless `resume` (set RUNNING again:
    LookupError when the store has it deleted)."""
    run = Run(uri, run_id)
    if resume:
        if run._client.get_run(run_id).info.lifecycle_stage == "deleted":
            raise LookupError(f"run {run_id} is deleted")
        run._client.update_run(run_id, status="RUNNING")
    return run


# --- the training job's run: resumable, kept in its folder -----------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """A training job's MLflow run as OUTPUT_DIR/RUN_FILE keeps it: what a rerun continues and what
    `python -m cdb.sync` replays into. run_id is None until the server could be reached."""

    tracking_uri: str
    experiment: str
    run_name: str
    ray_name: str
    """Ray Train's run name: the same name when continuing restores the latest checkpoint."""
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None

    @classmethod
    def read(cls, output_dir: str | Path) -> RunRecord:
        """The record in `output_dir` (FileNotFoundError when it holds none)."""
        path = Path(output_dir) / RUN_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown or not {"tracking_uri", "experiment"} <= set(data):
            raise ValueError(f"{path}: not a cdb run record (fields {sorted(data)})")
        return cls(**data)

    def write(self, output_dir: str | Path) -> None:
        staging = Path(output_dir) / f".{RUN_FILE}.tmp"
        staging.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        os.replace(staging, Path(output_dir) / RUN_FILE)


def training_record(config: Config, extra_params: Mapping[str, Any]) -> RunRecord:
    """A new training job's record: each setting once, as a param under its config key (or as a tag
    `cdb.<key>` for RUN_SPECIFIC_KEYS); `extra_params`, what is not a setting, under their own names."""
    settings = config.flat()
    params = {**extra_params, **{k: v for k, v in settings.items() if k not in RUN_SPECIFIC_KEYS}}
    scale, method = config.scale.name, config.objective.method
    tags = {TAG_KIND: TRAIN_RUN, TAG_SCALE: scale, TAG_METHOD: method,
            **{config_tag(k): masked(str(settings[k])) for k in RUN_SPECIFIC_KEYS if settings[k] not in ("", None)}}
    if config.tracking.parent_run_id:
        tags[TAG_PARENT_RUN] = config.tracking.parent_run_id
    return RunRecord(tracking_uri=resolve_uri(config.tracking.uri), experiment=config.tracking.experiment,
                     run_name=config.tracking.run_name or run_name(scale, method),
                     ray_name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                     params={k: str(v) for k, v in params.items()}, tags=tags)


def start_job_run(record: RunRecord, output_dir: Path) -> RunRecord:
    """The record with its run: opened (with params, tags, config.yaml) when the job has none yet,
    set RUNNING again when it has. While the server is unreachable the record comes back as it was,
    with a warning: training goes on and `finish_job_run` or `python -m cdb.sync` opens it later."""
    uri = record.tracking_uri
    try:
        if record.run_id:
            return dataclasses.replace(record, run_id=attach(uri, record.run_id, resume=True).id)
        run = open_run(uri, record.experiment, record.run_name, record.params, record.tags)
        for name in ("config.yaml", "rejected.jsonl"):
            if (output_dir / name).exists():
                run.log_artifact(output_dir / name)
        return dataclasses.replace(record, run_id=run.id)
    except Exception as exc:  # unreachable or failing server: never a reason to stop training
        print(f"[cdb] warning: MLflow at {masked(uri)} unreachable ({type(exc).__name__}: {exc}); "
              f"metrics go to {output_dir / SPOOL_FILE}, replay with `python -m cdb.sync {output_dir}`", flush=True)
        return record


def finish_job_run(record: RunRecord, output_dir: Path, status: str) -> bool:
    """Open the run if it never could be, replay spooled metrics, set the final status; the record
    is written to `output_dir` either way. Whether the run could be finished."""
    record = start_job_run(record, output_dir)
    record.write(output_dir)
    if not record.run_id:
        return False
    try:
        client = _client(record.tracking_uri)
        replay_spool(client, record.run_id, output_dir / SPOOL_FILE)
        client.set_terminated(record.run_id, status)
        return True
    except Exception as exc:
        print(f"[cdb] warning: could not finish the MLflow run ({exc}); run `python -m cdb.sync {output_dir}` later", flush=True)
        return False


class RunLogger:
    """Metrics of one run from one worker; only rank 0 writes, the others are silent.

    A metric that cannot reach the tracking server is spooled to `spool` (JSONL) with a warning and
    replayed, in order, at the next successful call (or by `python -m cdb.sync OUTPUT_DIR`): the
    run never stops for the server and never loses a metric. After a restart from a checkpoint,
    steps the run already holds are not logged again, so the step axis has no duplicates.
    """

    def __init__(self, uri: str, run_id: str, rank: int, spool: str | Path):
        self.uri, self.run_id, self.active = uri, run_id, rank == 0
        self.spool = Path(spool)
        self.logged_through = 0
        self._client = _client(uri) if self.active else None
        self._warned = False

    def skip_logged_steps(self, metric: str = f"{PREFIX_TRAIN}/loss") -> None:
        """Called after a restore: find the last step already in the run (or in the spool)."""
        if not self.active:
            return
        steps = [entry["step"] for entry in read_spool(self.spool, self.run_id)]
        try:
            steps += [m.step for m in self._client.get_metric_history(self.run_id, metric)]
        except Exception as exc:  # an unreachable server: the spool alone tells
            self._warn(exc)
        self.logged_through = max(steps, default=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or step <= self.logged_through:
            return
        entry = {"run_id": self.run_id, "step": step, "timestamp": int(time.time() * 1000),
                 "metrics": {k: float(v) for k, v in metrics.items()}}
        try:
            replay_spool(self._client, self.run_id, self.spool)
            _log_entries(self._client, self.run_id, [entry])
        except Exception as exc:  # any transport or server error: keep the metric, go on training
            self._warn(exc)
            with self.spool.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
        self.logged_through = step

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            print(f"[cdb] warning: MLflow unreachable ({type(exc).__name__}); spooling metrics to {self.spool}", flush=True)
            self._warned = True


PREFIX_SYSTEM = "system"
"""MLflow's system metrics (CPU, memory, disk, network; GPU utilisation and memory where pynvml finds
NVIDIA GPUs), sampled on the run's nodes by `system_metrics`."""


@contextmanager
def system_metrics(uri: str, run_id: str | None, interval_s: float) -> Iterator[None]:
    """MLflow's system metrics of this node, logged to run `run_id` every `interval_s` seconds while the
    block runs and once as it ends. Sampled by the first process of each node (LOCAL_RANK 0, as Ray Train and torchrun set
    it); a run over several nodes logs node k's under `system/node<k>/`. Off for interval_s 0 and while
    the run does not exist yet (an unreachable server). A resumed run continues the steps it holds."""
    if not run_id or interval_s <= 0 or os.environ.get("LOCAL_RANK", "0") != "0":
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    multi_node = int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    node = f"node{os.environ.get('NODE_RANK', '0')}" if multi_node else None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True, node_id=node,
                                   tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        try:  # and one sample at the end, so that a run shorter than an interval has one too
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # an unreachable server: the sample is what is lost
            print(f"[cdb] warning: could not log system metrics ({type(exc).__name__}: {exc})", flush=True)


def _log_entries(client, run_id: str, entries: list[dict]) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(k, v, e["timestamp"], e["step"]) for e in entries for k, v in e["metrics"].items()]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start:start + 500])


def _spooled(spool: Path) -> list[dict]:
    if not spool.exists():
        return []
    return [json.loads(line) for line in spool.read_text().splitlines() if line.strip()]


def _of_run(entry: dict, run_id: str | None) -> bool:
    # Spooled before the run had an id (the server was down at its start): the folder's current run.
    return entry.get("run_id") in (None, run_id)


def read_spool(spool: Path, run_id: str | None) -> list[dict]:
    """The spooled entries of run `run_id`: an earlier run's, left in the same folder, are never its."""
    return [entry for entry in _spooled(spool) if _of_run(entry, run_id)]


def replay_spool(client, run_id: str, spool: Path) -> int:
    """Log the run's spooled entries, then drop them from the spool (another run's stay, never
    replayed into this one). Returns how many steps were replayed."""
    entries = _spooled(spool)
    mine = [entry for entry in entries if _of_run(entry, run_id)]
    if mine:
        _log_entries(client, run_id, mine)
        others = [entry for entry in entries if not _of_run(entry, run_id)]
        if others:
            spool.write_text("".join(json.dumps(entry) + "\n" for entry in others))
        else:
            spool.unlink()
    return len(mine)


def sync(output_dir: str | Path) -> int:
    """Replay a job's spooled metrics into its MLflow run, opening the run if it never could be."""
    output_dir = Path(output_dir)
    record = start_job_run(RunRecord.read(output_dir), output_dir)
    record.write(output_dir)
    if not record.run_id:
        raise ConnectionError(f"MLflow at {masked(record.tracking_uri)} is still unreachable")
    return replay_spool(_client(record.tracking_uri), record.run_id, output_dir / SPOOL_FILE)


# --- reading back ---------------------------------------------------------------------------------


def find_run(uri: str, experiment: str, run_name: str) -> Run | None:
    """The newest run of that name in the experiment, or None."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return Run(uri, runs[0].info.run_id) if runs else None


def metric_history(uri: str, run_id: str, key: str) -> dict[int, float]:
    """step -> value of one metric of a run."""
    return {m.step: m.value for m in _client(uri).get_metric_history(run_id, key)}


def metric_timestamps(uri: str, run_id: str, key: str) -> dict[int, int]:
    """step -> when (ms since the epoch) one metric of a run was logged at that step."""
    return {m.step: m.timestamp for m in _client(uri).get_metric_history(run_id, key)}


def run_info(uri: str, run_id: str):
    """The MLflow Run (.info, .data.tags/params/metrics) of `run_id`."""
    return _client(uri).get_run(run_id)
