"""Tests for cdb.config (presets, YAML, flags, --set, checks, field docs, the committed resolved
configs, round trip) and strategy.build_ds_config.

No DeepSpeed or Ray is imported: build_ds_config only reads JSON from ds_configs/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from cdb import config as cfg
from cdb import settings
from cdb.config import Config, ConfigError, from_dict, resolve
from cdb.strategy import DS_CONFIG_DIR, build_ds_config
from cdb.scales import ALIASES, SCALES

from conftest import REPO

SCALE_FIELDS = ("model", "ds_config", "num_workers", "gpus_per_worker", "micro_batch", "grad_accum",
                "max_source_tokens", "max_target_tokens", "precision", "activation_checkpointing")


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def with_scale(config: Config, **changes) -> Config:
    return dataclasses.replace(config, scale=dataclasses.replace(config.scale, **changes))


def with_ds_file(config: Config, tmp_path: Path, content: dict, name: str = "ds.json") -> Config:
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return with_scale(config, ds_config=str(path))


# --- presets ------------------------------------------------------------------------------------


def test_defaults_are_the_tiny_preset():
    config = resolve()
    assert config.scale.name == "tiny"
    assert config.scale.model == "builtin:tiny-llama"
    assert config.scale.ds_config == "zero3_cpu_fp32.json"
    assert (config.scale.num_workers, config.scale.gpus_per_worker) == (2, 0)
    assert (config.scale.micro_batch, config.scale.grad_accum) == (2, 1)
    assert config.scale.precision == "fp32"
    # The preset's optimizer settings replace the dataclass defaults (lr 3e-3).
    assert config.optim.lr == pytest.approx(1e-2)
    assert config.optim.warmup_steps == 2
    for key in SCALE_FIELDS:
        assert getattr(config.scale, key) == SCALES["tiny"][key], key


def test_alias_13b_gives_the_llama2_13b_preset():
    config = resolve(scale="13b")
    assert config.scale.name == "llama2-13b"
    assert config.scale.model == "meta-llama/Llama-2-13b-hf"
    assert config.scale.num_workers == 16
    assert config.scale.gpus_per_worker == 1
    assert config.scale.ds_config == "zero3_bf16_7b_13b.json"
    assert config.scale.precision == "bf16"
    assert config.scale.activation_checkpointing is True
    assert config.optim.lr == pytest.approx(1e-5)
    assert config.optim.warmup_steps == 10


@pytest.mark.parametrize("name", list(SCALES) + list(ALIASES))
def test_every_scale_and_alias_resolves(name):
    config = resolve(scale=name)
    canonical = ALIASES.get(name, name)
    assert config.scale.name == canonical
    for key in SCALE_FIELDS:
        assert getattr(config.scale, key) == SCALES[canonical][key], key
    for key, value in SCALES[canonical]["optim"].items():
        assert getattr(config.optim, key) == pytest.approx(value), key


def test_unknown_scale_lists_known_scales():
    with pytest.raises(ConfigError) as info:
        resolve(scale="giant")
    message = str(info.value)
    assert "giant" in message
    for name in list(SCALES) + list(ALIASES):
        assert name in message


def test_resolve_does_not_mutate_the_presets():
    before = json.dumps(SCALES, sort_keys=True)
    resolve(sets=["optim.lr=0.5", "scale.micro_batch=7"], flags={"scale.grad_accum": 3})
    assert json.dumps(SCALES, sort_keys=True) == before
    assert resolve().optim.lr == pytest.approx(1e-2)


# --- precedence -----------------------------------------------------------------------------------


def test_yaml_file_overrides_preset(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"optim": {"lr": 0.25}, "scale": {"micro_batch": 5}, "train": {"epochs": 3}})
    config = resolve(config_file=str(path))
    assert config.optim.lr == pytest.approx(0.25)
    assert config.scale.micro_batch == 5
    assert config.train.epochs == 3
    # Untouched preset fields stay.
    assert config.optim.warmup_steps == 2
    assert config.scale.grad_accum == 1


def test_flags_override_file_and_set_overrides_flags(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"optim": {"lr": 0.25}, "scale": {"micro_batch": 5}})
    config = resolve(config_file=str(path), flags={"scale.micro_batch": 6, "optim.lr": 0.5})
    assert config.scale.micro_batch == 6
    assert config.optim.lr == pytest.approx(0.5)
    config = resolve(config_file=str(path), flags={"scale.micro_batch": 6, "optim.lr": 0.5},
                     sets=["scale.micro_batch=7", "optim.lr=0.75"])
    assert config.scale.micro_batch == 7
    assert config.optim.lr == pytest.approx(0.75)


def test_file_scale_name_selects_preset_and_scale_argument_beats_it(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"scale": {"name": "gpt2", "micro_batch": 9}})
    config = resolve(config_file=str(path))
    assert config.scale.name == "gpt2"
    assert config.scale.model == "openai-community/gpt2"
    assert config.scale.micro_batch == 9
    config = resolve(config_file=str(path), scale="7b")
    assert config.scale.name == "llama2-7b"
    assert config.scale.model == "meta-llama/Llama-2-7b-hf"
    assert config.scale.micro_batch == 9  # the file still overrides the chosen preset's field
    config = resolve(config_file=str(path), scale="7b", sets=["scale.name=70b"])
    assert config.scale.name == "llama2-70b"
    assert config.scale.ds_config == "zero3_bf16_70b.json"


def test_empty_yaml_file_is_no_override(tmp_path):
    path = write_yaml(tmp_path / "empty.yaml", "")
    assert resolve(config_file=str(path)) == resolve()


# --- errors name the key ------------------------------------------------------------------------------


def error_of(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(**kwargs)
    return str(info.value)


def test_unknown_top_level_key(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"optimiser": {"lr": 1.0}})
    assert "optimiser" in error_of(config_file=str(path))


def test_unknown_nested_key():
    message = error_of(sets=["scale.nope=1"])
    assert "scale.nope" in message
    assert "micro_batch" in message  # lists the known keys of the section


def test_unknown_nested_key_from_flags():
    assert "train.epoch" in error_of(flags={"train.epoch": 2})


@pytest.mark.parametrize("section, key, value, words", [
    ("scale", "micro_batch", "four", ("scale.micro_batch", "integer")),
    ("scale", "micro_batch", True, ("scale.micro_batch", "integer")),
    ("scale", "micro_batch", 2.5, ("scale.micro_batch", "integer")),
    ("optim", "lr", "fast", ("optim.lr", "number")),
    ("optim", "lr", False, ("optim.lr", "number")),
    ("scale", "activation_checkpointing", 1, ("scale.activation_checkpointing", "true or false")),
    ("scale", "activation_checkpointing", "true", ("scale.activation_checkpointing", "true or false")),
    ("tracking", "experiment", 5, ("tracking.experiment", "string")),
    ("optim", "betas", [0.9], ("optim.betas", "2 values")),
    ("optim", "betas", 0.9, ("optim.betas", "2 values")),
])
def test_wrong_type_from_yaml(tmp_path, section, key, value, words):
    path = write_yaml(tmp_path / "c.yaml", {section: {key: value}})
    message = error_of(config_file=str(path))
    for word in words:
        assert word in message


def test_yaml_int_for_float_is_accepted(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"objective": {"contrastive": {"alpha": 8}}})
    config = resolve(config_file=str(path))
    assert config.objective.contrastive.alpha == 8.0
    assert isinstance(config.objective.contrastive.alpha, float)


def test_yaml_exponent_float_without_dot(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", "optim:\n  lr: 1e-4\n")
    assert resolve(config_file=str(path)).optim.lr == pytest.approx(1e-4)


def test_literal_outside_choices():
    message = error_of(sets=["scale.precision=fp8"])
    assert "scale.precision" in message and "fp8" in message
    assert "bf16" in message  # lists the choices
    message = error_of(flags={"objective.contrastive.pooling": "max"})
    assert "objective.contrastive.pooling" in message and "entity_or_last" in message


def test_set_without_equals():
    message = error_of(sets=["optim.lr"])
    assert "optim.lr" in message and "key.path=value" in message


def test_bad_set_number():
    message = error_of(sets=["scale.micro_batch=abc"])
    assert "scale.micro_batch" in message and "abc" in message
    assert "optim.lr" in error_of(sets=["optim.lr=1e-4x"])


def test_set_into_a_non_section():
    assert "scale.micro_batch.x" in error_of(sets=["scale.micro_batch.x=1"])


@pytest.mark.parametrize("text", ["optim: 3\n", "optim: [1, 2]\n", "train:\n"])
def test_non_mapping_section(tmp_path, text):
    path = write_yaml(tmp_path / "c.yaml", text)
    message = error_of(config_file=str(path))
    section = text.split(":")[0]
    assert section in message and "mapping" in message


@pytest.mark.parametrize("text", ["scale: 3\n", "scale:\n"])
def test_non_mapping_scale_section_from_yaml(tmp_path, text):
    path = write_yaml(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match="scale"):
        resolve(config_file=str(path))


def test_non_mapping_scale_section_from_set():
    with pytest.raises(ConfigError, match="scale"):
        resolve(sets=["scale=3"])


def test_top_level_not_a_mapping(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", "- a\n- b\n")
    message = error_of(config_file=str(path))
    assert str(path) in message and "mapping" in message


def test_missing_yaml_file(tmp_path):
    path = tmp_path / "absent.yaml"
    message = error_of(config_file=str(path))
    assert str(path) in message and "not found" in message


def test_invalid_yaml(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", "optim: {lr: [1, 2\n")
    message = error_of(config_file=str(path))
    assert str(path) in message and "YAML" in message


@pytest.mark.parametrize("assignment, message", [
    ("scale.micro_batch=0", "scale.micro_batch: must be >= 1, got 0"),
    ("scale.num_workers=0", "scale.num_workers: must be >= 1, got 0"),
    ("scale.gpus_per_worker=-1", "scale.gpus_per_worker: must be >= 0, got -1"),
    ("scale.grad_accum=0", "scale.grad_accum: must be >= 1, got 0"),
    ("scale.max_source_tokens=7", "scale.max_source_tokens: must be >= 8, got 7"),
    ("scale.max_target_tokens=3", "scale.max_target_tokens: must be >= 4, got 3"),
    ("data.max_records=-1", "data.max_records: must be >= 0, got -1"),
    ("objective.contrastive.contrast_temperature=0", "objective.contrastive.contrast_temperature: must be > 0, got 0.0"),
    ("objective.contrastive.alpha=-1", "objective.contrastive.alpha: must be >= 0, got -1.0"),
    ("objective.contrastive.projection_dim=-8", "objective.contrastive.projection_dim: must be >= 0, got -8"),
    ("objective.label_smoothing=1", "objective.label_smoothing: must be in [0, 1), got 1.0"),
    ("objective.dpo.beta=0", "objective.dpo.beta: must be > 0, got 0.0"),
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.betas=[0.9,1.0]", "optim.betas: must be in [0, 1), got (0.9, 1.0)"),
    ("optim.grad_clip=-1", "optim.grad_clip: must be >= 0, got -1.0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps: must be >= 0, got -1"),
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("train.log_every=0", "train.log_every: must be >= 1, got 0"),
    ("train.max_failures=-2", "train.max_failures: must be >= -1, got -2"),
])
def test_a_broken_rule_is_stated_with_the_value(assignment, message):
    assert error_of(sets=[assignment]) == message


def test_every_rule_is_stated_in_its_fields_docstring():
    sections = typing.get_type_hints(Config)
    for key, (_, rule) in cfg.RULES.items():
        section, name = key.split(".")
        if section == "eval":  # the eval section is cdb.eval's EvalOptions, documented there
            continue
        doc = settings.field_docs(sections[section])[name]
        assert rule in doc, (key, rule, doc)


def test_boundary_values_pass_the_rules():
    config = resolve(sets=["scale.max_source_tokens=8", "scale.max_target_tokens=4", "objective.contrastive.alpha=0",
                           "train.max_failures=-1", "optim.warmup_steps=0", "optim.grad_clip=0",
                           "optim.betas=[0.0,0.99]", "objective.label_smoothing=0.5"])
    assert (config.scale.max_source_tokens, config.scale.max_target_tokens) == (8, 4)
    assert config.objective.contrastive.alpha == 0.0
    assert config.train.max_failures == -1
    assert (config.optim.grad_clip, config.optim.betas, config.objective.label_smoothing) == (0.0, (0.0, 0.99), 0.5)


@pytest.mark.parametrize("spec", ["bogus", "spacy", "spacy:", "hf:", "ner:model"])
def test_bad_entity_tagger(spec):
    message = error_of(sets=[f"data.entity_tagger={spec}"])
    assert "data.entity_tagger" in message


@pytest.mark.parametrize("spec", ["regex", "spacy:en_core_web_sm", "hf:dslim/bert-base-NER"])
def test_good_entity_tagger_specs(spec):
    assert resolve(sets=[f"data.entity_tagger={spec}"]).data.entity_tagger == spec


def test_fp16_on_cpu_is_an_error():
    assert "scale.precision" in error_of(sets=["scale.precision=fp16"])
    config = resolve(sets=["scale.precision=fp16", "scale.gpus_per_worker=1"])
    assert config.scale.precision == "fp16"


# --- --set text coercion --------------------------------------------------------------------------------


def test_set_coerces_text():
    config = resolve(sets=[
        "optim.lr=1e-4",
        "optim.weight_decay=0.01",
        "objective.contrastive.alpha=3",
        "scale.micro_batch=4",
        "scale.activation_checkpointing=true",
        "optim.betas=[0.9,0.95]",
        "tracking.run_name=my run=1",  # only the first '=' splits
        "train.seed=-3",
    ])
    assert config.optim.lr == pytest.approx(1e-4) and isinstance(config.optim.lr, float)
    assert config.optim.weight_decay == pytest.approx(0.01)
    assert config.objective.contrastive.alpha == 3.0 and isinstance(config.objective.contrastive.alpha, float)
    assert config.scale.micro_batch == 4 and isinstance(config.scale.micro_batch, int)
    assert config.scale.activation_checkpointing is True
    assert config.optim.betas == (0.9, 0.95)
    assert isinstance(config.optim.betas, tuple)
    assert config.tracking.run_name == "my run=1"
    assert config.train.seed == -3


def test_set_bool_false_and_case():
    config = resolve(scale="7b", sets=["scale.activation_checkpointing=False"])
    assert config.scale.activation_checkpointing is False
    assert "scale.activation_checkpointing" in error_of(sets=["scale.activation_checkpointing=maybe"])


def test_set_tuple_wrong_length():
    assert "optim.betas" in error_of(sets=["optim.betas=[0.9,0.95,0.99]"])


# --- output_dir -----------------------------------------------------------------------------------------


def test_output_dir_is_filled_and_made_absolute_when_a_run_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve()
    assert config.train.output_dir == ""  # resolve() does not depend on the directory it runs in
    run = cfg.with_run_output_dir(config)
    assert Path(run.train.output_dir) == (tmp_path / "runs" / "tiny-contrastive").resolve()
    assert dataclasses.replace(run, train=config.train) == config  # nothing else changes
    run = cfg.with_run_output_dir(resolve(scale="13b", flags={"objective.method": "dpo"}))
    assert Path(run.train.output_dir) == (tmp_path / "runs" / "llama2-13b-dpo").resolve()
    assert cfg.with_run_output_dir(run) == run


def test_relative_output_dir_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve(flags={"train.output_dir": "out/here"})
    assert config.train.output_dir == "out/here"
    assert Path(cfg.with_run_output_dir(config).train.output_dir) == (tmp_path / "out" / "here").resolve()
    absolute = tmp_path / "abs"
    config = resolve(flags={"train.output_dir": str(absolute)})
    assert Path(cfg.with_run_output_dir(config).train.output_dir) == absolute.resolve()


# --- field docs and the committed resolved configs --------------------------------------------------


@pytest.mark.parametrize("cls", [cfg.ScaleConfig, cfg.DataConfig, cfg.ObjectiveConfig, cfg.OptimConfig,
                                 cfg.TrainConfig, cfg.TrackingConfig])
def test_every_field_has_a_docstring(cls):
    assert settings.undocumented(cls) == []


RESOLVED = cfg.RESOLVED_DIR


def test_every_scale_preset_has_a_resolved_config_and_no_other_file_is_there():
    assert sorted(p.stem for p in RESOLVED.glob("*")) == sorted(SCALES), \
        "regenerate with: python -m cdb.config --write-resolved"


@pytest.mark.parametrize("name", list(SCALES))
def test_committed_resolved_config_is_what_resolve_gives(name):
    text = (RESOLVED / f"{name}.yaml").read_text()
    assert text == cfg.resolved_yaml(name), \
        f"cdb/configs/resolved/{name}.yaml is stale; review the change, then: python -m cdb.config --write-resolved"
    # It reads back as the same config, from a file and as --config.
    assert from_dict(yaml.safe_load(text)) == resolve(scale=name)
    assert resolve(config_file=str(RESOLVED / f"{name}.yaml")) == resolve(scale=name)


def test_config_command_prints_the_resolved_config(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cdb.config", "--scale", "13b", "--set", "optim.lr=2e-5"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert from_dict(yaml.safe_load(proc.stdout)) == resolve(scale="13b", sets=["optim.lr=2e-5"])
    assert "  # Peak AdamW learning rate; > 0.\n  lr: 2.0e-05\n" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "cdb.config", "--set", "train.log_every=0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "cdb.config: error: train.log_every: must be >= 1, got 0"
    assert proc.stdout == ""


# --- round trip ---------------------------------------------------------------------------------------


def test_save_and_from_dict_round_trip(tmp_path):
    config = resolve(scale="70b", sets=["optim.betas=[0.8,0.95]", "optim.lr=2.5e-5", "objective.contrastive.contrast_temperature=0.07",
                                        "data.on_bad_record=skip", "tracking.run_name=x"])
    path = tmp_path / "config.yaml"
    config.save(path)
    loaded = yaml.safe_load(path.read_text())
    assert set(loaded) == {"scale", "data", "objective", "optim", "train", "eval", "tracking"}
    again = from_dict(loaded)
    assert again == config
    assert isinstance(again.optim.betas, tuple)
    assert again.optim.lr == 2.5e-5


def test_flat_has_every_field():
    config = resolve()
    flat = config.flat()
    expected = {key for key, *_ in settings.describe(Config)}
    assert set(flat) == expected and "objective.dpo.beta" in flat and "objective.contrastive.alpha" in flat
    assert flat["scale.name"] == "tiny"
    assert flat["optim.lr"] == pytest.approx(1e-2)
    assert flat["optim.betas"] == [0.9, 0.999]


def test_from_dict_checks_keys():
    values = resolve().to_dict()
    values["scale"]["bogus"] = 1
    with pytest.raises(ConfigError, match="scale.bogus"):
        from_dict(values)


# --- build_ds_config ------------------------------------------------------------------------------------


def test_ds_config_owned_fields_filled_from_config():
    config = resolve(sets=["scale.micro_batch=3", "scale.grad_accum=5", "optim.grad_clip=0.5"])
    ds = build_ds_config(config, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5
    assert ds["train_batch_size"] == 3 * 5 * 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"]["enabled"] is False
    assert ds["fp16"]["enabled"] is False
    assert not any(key.startswith("_") for key in ds)
    assert "optimizer" not in ds


def test_ds_config_bf16_follows_precision():
    config = resolve(scale="gpt2")
    assert build_ds_config(config, 1)["bf16"]["enabled"] is True
    ds = build_ds_config(with_scale(config, precision="fp32"), 1)
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    ds = build_ds_config(with_scale(config, precision="fp16"), 1)
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is True
    # The tiny preset's file disables bf16; a bf16 scale turns it on.
    assert build_ds_config(with_scale(resolve(), precision="bf16"), 2)["bf16"]["enabled"] is True


def test_ds_config_drops_underscore_keys_and_keeps_others(tmp_path):
    content = {"_comment": "x", "_private": {"a": 1}, "steps_per_print": 7,
               "zero_optimization": {"stage": 3, "overlap_comm": True}}
    ds = build_ds_config(with_ds_file(resolve(), tmp_path, content), 1)
    assert "_comment" not in ds and "_private" not in ds
    assert ds["steps_per_print"] == 7
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}


@pytest.mark.parametrize("field, value", [
    ("train_micro_batch_size_per_gpu", 4),
    ("gradient_accumulation_steps", 8),
    ("train_batch_size", 64),
    ("gradient_clipping", 0.1),
])
def test_ds_config_conflicting_explicit_value(tmp_path, field, value):
    content = {field: value, "zero_optimization": {"stage": 3}}
    config = with_ds_file(resolve(), tmp_path, content)  # tiny: micro 2, accum 1, clip 1.0
    with pytest.raises(ConfigError) as info:
        build_ds_config(config, world_size=2)
    assert field in str(info.value)


def test_ds_config_matching_explicit_values_are_fine(tmp_path):
    content = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 6,
               "gradient_clipping": 1.0, "zero_optimization": {"stage": 3}}
    ds = build_ds_config(with_ds_file(resolve(), tmp_path, content), world_size=3)
    assert ds["train_batch_size"] == 2 * 1 * 3


@pytest.mark.parametrize("zero", [{"stage": 2}, {"stage": "3"}, {}, None])
def test_ds_config_stage_must_be_3(tmp_path, zero):
    content = {} if zero is None else {"zero_optimization": zero}
    with pytest.raises(ConfigError, match="stage"):
        build_ds_config(with_ds_file(resolve(), tmp_path, content), 1)


def test_ds_config_missing_file_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="scale.ds_config"):
        build_ds_config(with_scale(resolve(), ds_config="no_such_config.json"), 1)
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_ds_config(with_scale(resolve(), ds_config=str(path)), 1)


def test_ds_config_70b_offload_gets_optimizer():
    config = resolve(scale="llama2-70b-offload", sets=["optim.betas=[0.85,0.95]", "optim.weight_decay=0.1"])
    ds = build_ds_config(config, world_size=32)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"
    params = ds["optimizer"]["params"]
    assert params["lr"] == pytest.approx(1e-5)
    assert params["betas"] == [0.85, 0.95]
    assert params["weight_decay"] == pytest.approx(0.1)
    assert ds["train_batch_size"] == 1 * 4 * 32
    assert ds["bf16"]["enabled"] is True


def test_ds_config_files_are_valid():
    files = sorted(DS_CONFIG_DIR.glob("*.json"))
    assert files
    for path in files:
        ds = json.loads(path.read_text())
        assert ds["zero_optimization"]["stage"] == 3, path.name
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True, path.name


@pytest.mark.parametrize("name", list(SCALES))
def test_every_scale_ds_config_exists_and_builds(name):
    assert (DS_CONFIG_DIR / SCALES[name]["ds_config"]).is_file()
    config = resolve(scale=name)
    ds = build_ds_config(config, world_size=config.scale.num_workers)
    assert ds["train_batch_size"] == config.scale.micro_batch * config.scale.grad_accum * config.scale.num_workers


def test_a_config_saved_before_methods_owned_their_options_still_loads(tmp_path, capsys):
    """config.yaml of an older run (flat objective.alpha, dpo_beta, data.cda_attributes): read under the
    keys of today with one line saying so; the same keys given to --set name their new place."""
    old = resolve().to_dict()
    options = old["objective"].pop("contrastive")
    old["objective"].pop("dpo"), old["objective"].pop("unlikelihood"), old["objective"].pop("cda")
    old["objective"].update({**options, "alpha": 4.0, "dpo_beta": 0.1, "unlikelihood_weight": 1.0})
    old["data"]["cda_attributes"] = ["gender", "race", "religion"]
    path = write_yaml(tmp_path / "config.yaml", old)
    config = resolve(config_file=str(path))
    notice = capsys.readouterr().err
    assert f"{path}: read objective.alpha as objective.contrastive.alpha" in notice and len(notice.splitlines()) == 1
    assert config.objective.contrastive.alpha == 4.0 and from_dict(yaml.safe_load(path.read_text())) == config
    assert "objective.alpha: that setting is objective.contrastive.alpha now" in error_of(sets=["objective.alpha=2"])



def test_broken_yaml_and_json_are_named_by_file_line_and_column(tmp_path):
    from cdb.data.records import DataError, load_records

    path = tmp_path / "bad.yaml"
    path.write_text('train:\n  max_steps: "3\n')
    with pytest.raises(ConfigError) as caught:
        resolve(str(path))
    assert str(caught.value) == f"{path}:3:1: not valid YAML: while scanning a quoted scalar; found unexpected end of stream"
    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": "a\tb"}\n')
    with pytest.raises(DataError) as caught:
        load_records(str(data))
    assert str(caught.value).startswith(f"{data}:1: bad JSON at column 10: Invalid control character (a raw tab")
