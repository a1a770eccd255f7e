"""ContrastiveLM's forward against the model's own: logits through the model's output path (Gemma-2's
final soft-capping), and DPO's policy without dropout. Tiny configs, random weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig

from cdb.model import ContrastiveLM, disable_dropout
from cdb.methods import METHODS


def _batch(vocab: int):
    torch.manual_seed(0)
    input_ids = torch.randint(0, vocab, (3, 9))
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[2, 6:] = 0
    score_mask = torch.zeros(3, 9, dtype=torch.bool)
    score_mask[0, 4:8] = score_mask[1, 2:5] = score_mask[2, 3:6] = True
    return input_ids, attention_mask, score_mask


@pytest.mark.parametrize("cap", [None, 0.5])
def test_scored_logits_equal_the_models_own_under_soft_capping(cap):
    config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=cap,
                          attn_implementation="eager")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config).eval()
    input_ids, attention_mask, score_mask = _batch(64)
    with torch.no_grad():
        ours = ContrastiveLM(lm, None)(input_ids, attention_mask, score_mask)["logits"]
        theirs = lm(input_ids=input_ids, attention_mask=attention_mask).logits[score_mask].float()
        uncapped = lm.get_output_embeddings()(lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if cap:
        assert ours.abs().max().item() < cap  # the cap binds: the lm_head alone gives something else
        assert not torch.allclose(ours, uncapped[score_mask], atol=1e-3)


@pytest.mark.parametrize("config", [
    GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5),
    LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, attention_dropout=0.5),
], ids=["gpt2-dropout-modules", "llama-attention-dropout"])
def test_dpo_policy_runs_without_dropout_in_train_mode(config):
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config).train()
    model = ContrastiveLM(lm, None).train()
    batch = _batch(64)
    before = [model(*batch)["logits"] for _ in range(2)]
    assert not torch.allclose(before[0], before[1])  # dropout is live: the check below can fail

    assert METHODS["dpo"].policy_dropout is False  # the Strategy disables dropout for this method
    disable_dropout(lm)
    assert model.training
    first, second = (model(*batch)["logits"] for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    first.sum().backward()
    assert all(p.grad is not None for p in lm.parameters() if p.requires_grad)


def test_a_hub_model_out_of_reach_fails_at_once_naming_what_to_do(monkeypatch):
    """Not in the cache and the hub does not answer: our one error, before the hub client tries (and retries)."""
    from huggingface_hub import constants

    from conftest import free_port
    from cdb.model import prepare_model_source

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ValueError, match=r"cannot be reached from here .*hf download nobody/no-such-model"):
        prepare_model_source("nobody/no-such-model")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        prepare_model_source("nobody/no-such-model")
