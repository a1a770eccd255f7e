"""objective.contrastive.head_init=authors under real ZeRO-3 (2 gloo processes): the init survives partitioning."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, free_port


@pytest.mark.integration  # two torchrun ranks
def test_authors_head_init_under_zero3(tmp_path):
    out = tmp_path / "head.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(REPO / "tests" / "dist_head_init.py"), str(out), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(out.read_text())
    params, hidden = result["params"], result["hidden"]
    assert result["sharded"]  # the head is partitioned like the LM
    assert params["dense.weight"]["numel"] == hidden * hidden
    assert params["dense.weight"]["std"] == pytest.approx(0.01, rel=0.1)
    assert params["proj.weight"]["std"] == pytest.approx(1 / hidden, rel=0.1)
    assert params["dense.bias"]["max_abs"] == 0.0 and params["proj.bias"]["max_abs"] == 0.0
