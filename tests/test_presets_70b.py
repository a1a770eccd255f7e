"""The 70b presets are sized by the planner (cdb.memory): no offload on 80 GB GPUs, the offload variant
only where the planner says the plain preset does not fit (40 GB GPUs)."""

from __future__ import annotations

import json

from cdb.config import resolve
from cdb.strategy import DS_CONFIG_DIR
from cdb.memory import GiB, estimate_memory
from cdb.scales import SCALES



def test_70b_preset_offloads_nothing_and_fits_80gb_gpus():
    config = resolve(scale="70b")
    ds = json.loads((DS_CONFIG_DIR / config.scale.ds_config).read_text())
    assert "offload_optimizer" not in ds["zero_optimization"] and "offload_param" not in ds["zero_optimization"]
    gpus = config.scale.num_workers * config.scale.gpus_per_worker
    plan = estimate_memory(config, gpus, 80 * GiB)
    assert plan.offload == "none" and plan.fits


def test_offload_variant_is_chosen_by_the_planners_verdict_on_40gb_gpus():
    plain, variant = resolve(scale="70b"), resolve(scale="llama2-70b-offload")
    gpus = plain.scale.num_workers * plain.scale.gpus_per_worker
    verdict = estimate_memory(plain, gpus, 40 * GiB)
    assert not verdict.fits and verdict.suggestion["offload"] != "none"
    assert variant.scale.ds_config in verdict.message  # the planner names the variant's ds_config
    assert estimate_memory(variant, gpus, 40 * GiB).fits
    # The variant is the same run: only the ds_config differs.
    differs = {k for k in SCALES["llama2-70b"] if SCALES["llama2-70b"][k] != SCALES["llama2-70b-offload"][k]}
    assert differs == {"ds_config"}
