"""Package boundaries, read from the import statements of every module (ast, so an import inside a
function counts too): data construction and evaluation share only cdb.scoring and the data layer
(records, entities, batch, text, sources, the BOLD corpus); the evaluation's options load no torch;
no import goes from a lower layer of cdb up to a higher one (LAYERS)."""

import ast
import subprocess
import sys

from conftest import REPO


def imports(package: str) -> dict[str, set[str]]:
    """Module name -> the absolute module names it imports, for every module of `package`."""
    root = REPO / package.replace(".", "/")
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the importing package
                    base = module.split(".")[:len(module.split(".")) - node.level + (path.name == "__init__.py")]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                names.add(prefix)
                names.update(f"{prefix}.{alias.name}" for alias in node.names)
        found[module] = names
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def reached(graph: dict[str, set[str]], start: list[str]) -> set[str]:
    """Modules of `graph` that `start` imports, directly or through others."""
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        for name in graph.get(module, ()):
            target = name if name in graph else name.rpartition(".")[0]
            if target in graph and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_data_and_eval_do_not_import_each_other():
    data, evaluation, everything = imports("cdb.data"), imports("cdb.eval"), imports("cdb")
    assert len(data) > 10 and len(evaluation) > 10
    bad = [f"{m} imports {n}" for m, names in data.items() for n in names if within(n, "cdb.eval")]
    assert bad == []
    # what eval uses of cdb.data (records, entities, the BOLD corpus) does not reach data construction
    assert sorted(m for m in reached(everything, list(evaluation)) if within(m, "cdb.data.construct")) == []
    assert "cdb.data.bold" in reached(everything, ["cdb.eval.faithfulness"])
    # both use the one scorers module
    assert any(within(n, "cdb.scoring") for names in data.values() for n in names)
    assert any(within(n, "cdb.scoring") for names in evaluation.values() for n in names)


def test_options_modules_load_no_torch():
    code = ("import sys, cdb.config, cdb.eval, cdb.eval.options; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_training_eval_section_is_the_evaluation_options():
    from cdb import settings
    from cdb.config import Config, resolve
    from cdb.eval.options import EvalOptions

    assert [k for k in settings.undocumented(Config) if k.startswith("eval.")] == []
    config = resolve(sets=["eval.suite=full", "eval.limit=3", "eval.decoding=instructive", "eval.tasks=bias"])
    assert isinstance(config.eval, EvalOptions)
    options = config.eval.for_suite()
    assert (options.suite, options.decoding, options.tasks, options.crows_limit) == ("full", "instructive", ("bias",), 3)


def test_scorers_reach_neither_evaluation_nor_data_construction():
    """cdb.scoring sits below both of its users: importing it reaches nothing of either."""
    everything = imports("cdb")
    scoring = [m for m in everything if within(m, "cdb.scoring")]
    assert {"cdb.scoring", "cdb.scoring.entities", "cdb.scoring.toxicity"} <= set(scoring)
    up = sorted(m for m in reached(everything, scoring) if within(m, "cdb.eval") or within(m, "cdb.data"))
    assert up == []


def test_tracking_is_one_door_that_reaches_no_data():
    """Only cdb.tracking imports mlflow (bench and scripts too), and it imports nothing of cdb.data:
    the data's lineage is computed by cdb.data.lineage and handed to it (the config it reads for a
    training run's params is the only layer below it that it names)."""
    everything = {**imports("cdb"), **imports("bench"), **imports("scripts")}
    mlflow_users = sorted(m for m, names in everything.items() if any(within(n, "mlflow") for n in names))
    assert mlflow_users == ["cdb.tracking"]
    assert sorted(n for n in everything["cdb.tracking"] if within(n, "cdb")) == ["cdb.config", "cdb.config.Config"]


LAYERS = [
    ("foundations", ["cdb.settings", "cdb.cli", "cdb.scales", "cdb.sentences", "cdb.objective", "cdb.eval.options"]),
    ("model", ["cdb.model"]),
    ("data and scorers", ["cdb.data", "cdb.scoring"]),
    ("methods", ["cdb.methods"]),
    ("config", ["cdb.config"]),
    ("tracking and storage", ["cdb.tracking", "cdb.storage", "cdb.perf", "cdb.raylog"]),
    ("engine", ["cdb.strategy", "cdb.loop", "cdb.memory"]),
    ("evaluation", ["cdb.eval"]),
    ("report", ["cdb.report"]),
    ("entry points", ["cdb.worker", "cdb.train", "cdb.sweep", "cdb.sync", "cdb.data.construct", "cdb.data.__main__"]),
]
"""cdb's layers, lowest first, as data flows (config -> data -> batch -> engine/objective ->
tracking/checkpoints -> eval -> report): a module is in the layer of its longest listed prefix."""


def layer_of(module: str) -> int:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if within(module, prefix)]
    return max(matches)[1] if matches else -1


def test_no_import_goes_from_a_lower_layer_up():
    graph = imports("cdb")
    unplaced = sorted(m for m in graph if m != "cdb" and layer_of(m) < 0)
    assert unplaced == [], f"modules in no layer: {unplaced}"
    upward = []
    for module, names in graph.items():
        for name in names:
            target = name if name in graph else name.rpartition(".")[0]
            if target in graph and target != "cdb" and layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert upward == []
