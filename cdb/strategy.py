"""The DeepSpeed strategy: the one place that touches DeepSpeed and torch.distributed.

`deepspeed_environment` readies a rank's process for DeepSpeed (CPU accelerator, JIT op builds with
DeepSpeed's own ninja). The Strategy builds the ZeRO-3 config from a ds_configs/ file and the scale, builds LM (+ contrast head, +
frozen reference, as the method's record asks) so that no rank materialises the whole model, owns
the optimizer, schedule, clipping, the collectives, checkpointing and the HF export. It chooses no
loss: the Trainer (cdb.loop) computes the method's objective from `forward`'s outputs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from cdb.config import Config, ConfigError
from cdb.model import DTYPES, ContrastiveLM, build_lm, disable_dropout
from cdb.methods import Method
from cdb.objective import ContrastHead

def deepspeed_environment(cpu: bool, torch_extensions_dir: str) -> None:
    """Process settings that must be in place before DeepSpeed (or MLflow) is imported in a rank."""
    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    # A dead tracking server must cost seconds, not minutes of retries: metrics get spooled.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", torch_extensions_dir)
    use_deepspeeds_ninja()
    # DeepSpeed 0.19 calls collectives torch 2.13 deprecates, once per step: not the user's concern.
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*", category=FutureWarning)


def use_deepspeeds_ninja() -> None:
    """Build DeepSpeed's JIT ops with the ninja DeepSpeed depends on, whatever the PATH says.

    A system ninja (1.11, build log v5) and the PyPI one (1.13, log v7) each discard the other's log,
    so processes that find different ones on PATH rebuild the op every time they alternate; a process
    killed during a build leaves torch's lock file, and later builds wait on it forever. (`BIN_DIR` is
    empty where the package's script is not beside the interpreter: then PATH decides.)
    """
    import ninja

    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR and not path.startswith(ninja.BIN_DIR + os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR")  # unset: torch's default, not cdb's cache
    for lock in Path(extensions).glob("*/lock") if extensions else []:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # its build just finished
            continue
        if age > 1800:
            print(f"[cdb] warning: {lock} is {age / 60:.0f} minutes old; DeepSpeed will wait on it. If no other "
                  "process is building that op, a killed build left it: remove the file.", file=sys.stderr, flush=True)


def _ds_config_dir() -> Path:
    """ds_configs/ inside the installed package (the wheel carries the top-level folder there, mapped in
    pyproject.toml), else at the top of the source tree the package is imported from (editable installs,
    PYTHONPATH)."""
    package = Path(__file__).resolve().parent
    installed = package / "ds_configs"
    return installed if installed.is_dir() else package.parent / "ds_configs"


DS_CONFIG_DIR = _ds_config_dir()
"""The shipped DeepSpeed configs: the repository's ds_configs/, one copy, which the wheel carries as package data."""
CHECKPOINT_TAG = "state"


def ds_config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    shipped = DS_CONFIG_DIR / name
    if shipped.is_file():
        return shipped
    raise ConfigError(f"scale.ds_config: no file {name!r} (looked in {DS_CONFIG_DIR})")


def build_ds_config(config: Config, world_size: int) -> dict:
    """The ds_config file with the fields the scale owns filled in, so the two never disagree."""
    path = ds_config_path(config.scale.ds_config)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    ds = {k: v for k, v in ds.items() if not k.startswith("_")}
    scale = config.scale
    owned = {
        "train_micro_batch_size_per_gpu": scale.micro_batch,
        "gradient_accumulation_steps": scale.grad_accum,
        "train_batch_size": scale.micro_batch * scale.grad_accum * world_size,
        "gradient_clipping": config.optim.grad_clip,
    }
    for key, value in owned.items():
        if ds.get(key, "auto") not in ("auto", value):
            raise ConfigError(f"{path}: '{key}' is {ds[key]!r} but the scale gives {value!r}; set it to \"auto\"")
        ds[key] = value
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": scale.precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": scale.precision == "fp16"}
    if ds.get("zero_optimization", {}).get("stage") != 3:
        raise ConfigError(f"{path}: cdb trains with ZeRO stage 3 ('zero_optimization.stage': 3)")
    if "offload_optimizer" in ds["zero_optimization"]:
        # Offloaded optimizer states need DeepSpeed's own (CPU) Adam, configured here.
        opt = config.optim
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": opt.lr, "betas": list(opt.betas), "weight_decay": opt.weight_decay}}
    return ds


def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warm-up to the peak, then linear decay to 0 at the last step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def rng_state() -> dict:
    """RNG states in types a weights_only load accepts (no pickled numpy objects)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), position, has_gauss, cached),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])


@contextmanager
def weights_only_loads():
    """Every torch.load inside (DeepSpeed's included) refuses to unpickle arbitrary objects."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        # DeepSpeed's own stage enum and loss-scaler state are the non-tensor types its checkpoints hold.
        with torch.serialization.safe_globals([ZeroStageEnum, LossScaler, DynamicLossScaler]):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous



def _is_op_load_line(line: str) -> bool:
    return line.startswith("DeepSpeed ") and line.rstrip().endswith(" built successfully")


class _DropOpLoadLines(io.TextIOBase):
    """A stdout that passes every line on except DeepSpeed's "DeepSpeed <op> built successfully"."""

    def __init__(self, target):
        self.target, self.pending = target, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not _is_op_load_line(line):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.target.write(self.pending)
            self.pending = ""
        self.target.flush()


@contextmanager
def quiet_op_loads():
    """DeepSpeed prints that line on every rank each time a communication backend loads its (already
    built) op, several times a run, from several call sites; a worker runs inside this, and the
    console keeps the rest of what it prints. Inside a Ray Train worker `print` goes to the root
    logger (Ray Train's print patch) as well as to a replaced stdout: both are filtered."""
    quiet = _DropOpLoadLines(sys.stdout)
    previous, sys.stdout = sys.stdout, quiet
    root = logging.getLogger()
    drop = logging.Filter()
    drop.filter = lambda record: not _is_op_load_line(record.getMessage())
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        quiet.flush()
        sys.stdout = previous


class Strategy:
    """Owns the DeepSpeed engine of one rank. Every method is collective unless it says otherwise."""

    def __init__(self, config: Config, model_source: str, tokenizer, world_size: int, rank: int, total_steps: int,
                 method: Method):
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        self.config = config
        self.rank = rank
        self.tokenizer = tokenizer
        self.ds_config = build_ds_config(config, world_size)
        # Kept alive while models are built: transformers then builds/loads them inside
        # zero.Init, partitioned from the start.
        self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        lm = self._build_lm(model_source, len(tokenizer))
        if not method.policy_dropout:
            disable_dropout(lm)
        if config.scale.activation_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        head = None
        if method.contrast_head:
            # No dtype argument: zero.Init takes it from the config's bf16/fp16 flags (passing one
            # is mis-parsed by DeepSpeed 0.19 on accelerators without fp16, which then picks bf16).
            with deepspeed.zero.Init(config_dict_or_path=self.ds_config):
                head = ContrastHead(lm.config.hidden_size, config.objective.contrastive.projection_dim or None,
                                    config.objective.contrastive.head_init)
        model = ContrastiveLM(lm, head)
        self.reference = self._build_reference(model_source, len(tokenizer)) if method.reference_model else None

        optim = config.optim
        client_optimizer = None
        if "optimizer" not in self.ds_config:
            client_optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
            )
        schedule = lr_lambda(optim.warmup_steps, total_steps)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad] if client_optimizer is None else None,
            optimizer=client_optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=self.ds_config,
        )
        self.device = self.engine.device

    def _build_lm(self, model_source: str, vocab_size: int):
        torch.manual_seed(self.config.train.seed)  # the policy and a DPO reference start identical
        scale = self.config.scale
        lm = build_lm(model_source, DTYPES[scale.precision], scale.attn_implementation, vocab_size, scale.trust_remote_code)
        lm.config.use_cache = False
        return lm

    def _build_reference(self, model_source: str, vocab_size: int):
        """DPO's frozen reference: its own ZeRO-3 engine (sharded like the policy, never a copy of
        it), no optimizer, no gradients, eval mode."""
        import deepspeed

        reference = ContrastiveLM(self._build_lm(model_source, vocab_size), None)
        reference.requires_grad_(False)
        ds_config = {k: v for k, v in self.ds_config.items() if k not in ("optimizer", "scheduler")}
        engine, _, _, _ = deepspeed.initialize(model=reference, config=ds_config)
        engine.eval()
        return engine

    # -- training ------------------------------------------------------------------------------

    @staticmethod
    def init_distributed(cpu: bool) -> None:
        """Join the process group the launcher set up (Ray Train, torchrun)."""
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor,
                pool_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One forward pass: `logits` at the scored positions, `z` at the pooled ones (with a contrast
        head), `ref_logits` from the frozen reference (when there is one)."""
        outputs = self.engine(input_ids, attention_mask, score_mask, pool_mask)
        if self.reference is not None:
            with torch.no_grad():
                outputs["ref_logits"] = self.reference(input_ids, attention_mask, score_mask)["logits"]
        return outputs

    @contextmanager
    def evaluating(self):
        """Forward passes without dropout and without gradients (validation); training mode after."""
        self.engine.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.engine.train()

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Backward; the optimizer step applies at accumulation boundaries (DeepSpeed counts them)."""
        self.engine.backward(loss)
        self.engine.step()

    # -- collectives ---------------------------------------------------------------------------

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value)
        return value.item() > 0

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a small tensor over ranks, returned on CPU."""
        import torch.distributed as dist

        values = values.to(self.device)
        dist.all_reduce(values)
        return values.cpu()

    def gather_objects(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        import torch.distributed as dist

        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    # -- what the trainer reads ----------------------------------------------------------------

    @property
    def model_config(self):
        """The LM's transformers config (for FLOPs per token)."""
        return self.engine.module.lm.config

    def device_name(self) -> str:
        device = torch.device(self.device)
        return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (DeepSpeed counts them at accumulation boundaries)."""
        return int(self.engine.global_steps)

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def param_counts(self) -> tuple[int, int]:
        """(parameters held by this rank, parameters of the whole model). Not collective."""
        local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in self.engine.module.parameters())
        total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.engine.module.parameters())
        return local, total

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, directory: str | Path, client_state: dict) -> None:
        """This rank's shard of model, optimizer and schedule state, plus client state."""
        self.engine.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, client_state={**client_state, "rng": rng_state()})

    def load_checkpoint(self, directory: str | Path) -> dict:
        with weights_only_loads():
            path, client_state = self.engine.load_checkpoint(str(directory), tag=CHECKPOINT_TAG)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {directory}")
        set_rng_state(client_state.pop("rng"))
        return client_state

    # -- export --------------------------------------------------------------------------------

    def export(self, directory: str | Path) -> Path | None:
        """Write the trained model as HF safetensors + tokenizer (+ contrast head) on rank 0.

        The gather is collective; the files go to a staging folder that is renamed into place, so
        an earlier export survives a crash half-way.
        """
        from safetensors.torch import save_file

        state = self.engine._zero3_consolidated_16bit_state_dict()
        if self.rank != 0:
            return None
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.staging."))
        lm_state = {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}
        head_state = {k[len("head."):]: v.contiguous() for k, v in state.items() if k.startswith("head.")}
        module = self.engine.module
        module.lm.save_pretrained(staging, state_dict=lm_state, safe_serialization=True)
        self.tokenizer.save_pretrained(staging)
        if head_state:
            save_file(head_state, str(staging / "contrast_head.safetensors"))
            (staging / "contrast_head.json").write_text(json.dumps(
                {"hidden_size": module.lm.config.hidden_size, "projection_dim": self.config.objective.contrastive.projection_dim or None}))
        previous = directory.with_name(f".{directory.name}.previous")
        if directory.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(directory, previous)
        os.replace(staging, directory)
        shutil.rmtree(previous, ignore_errors=True)
        return directory

    def close(self) -> None:
        self.engine.destroy() if hasattr(self.engine, "destroy") else None
        self._hf_ds_config = None

