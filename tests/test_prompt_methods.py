"""Decoding-time debiasing in cdb.eval (cdb.eval.decoding): the self-debiasing reweighting worked out by
hand on a stub model whose logits the test fixes, the processor on the tiny random Llama (KV cache
against recomputation, generations that change), log-likelihoods under self-debias, instructive
prompts actually fed, and the CLI logging cdb.method into a real sqlite MLflow."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from cdb import settings
from cdb.eval import make_options, run_suite
from cdb.eval.decoding import Decoding, SelfDebiasingLogitsProcessor, self_debias, with_prefix
from cdb.eval.lm import EvalLM
from cdb.eval.options import INSTRUCTION, SELF_DEBIAS_PREFIXES
from cdb.model import TINY

# ---- the reweighting on a stub model -------------------------------------------------------------
BOS, PAD = 1, 0
PREFIX_A, PREFIX_B = [7, 8], [9]  # token ids of two "debiasing prefixes"
P_REGULAR = [0.4, 0.3, 0.2, 0.1]
P_A = [0.1, 0.5, 0.2, 0.2]        # under prefix A: token 0 falls, 1 and 3 rise, 2 unchanged
P_B = [0.05, 0.2, 0.35, 0.4]      # under prefix B: 2 and 3 rise


class StubLM(torch.nn.Module):
    """Logits over a 4-token vocabulary fixed by which prefix (if any) occurs among a row's real
    tokens, at every position; no KV cache. Records the real tokens of every row it is given."""

    def __init__(self):
        super().__init__()
        self.seen: list[list[list[int]]] = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids, mask)]
        self.seen.append(rows)
        probs = [P_A if PREFIX_A[0] in r else P_B if PREFIX_B[0] in r else P_REGULAR for r in rows]
        logits = torch.tensor(probs).log()[:, None, :].expand(-1, input_ids.shape[1], -1)
        return SimpleNamespace(logits=logits)


def expected(decay, biased, epsilon=0.01):
    """p' by the formula, written out: alpha = 1 where p_biased <= p, else exp(-decay * delta),
    floored at epsilon."""
    weighted = [p * max(1.0 if b - p <= 0 else math.exp(-decay * (b - p)), epsilon) for p, b in zip(P_REGULAR, biased)]
    return [w / sum(weighted) for w in weighted]


def stub_batch():
    # Row 0 left-padded by one; the model saw [BOS, 5, 6] and [BOS, 5, 6, 6].
    ids = torch.tensor([[PAD, BOS, 5, 6], [BOS, 5, 6, 6]])
    return ids, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])


def test_self_debias_on_stub_logits_one_prefix():
    stub = StubLM()
    ids, mask = stub_batch()
    processor = SelfDebiasingLogitsProcessor(stub, [PREFIX_A], decay=10.0, attention_mask=mask, bos_token_id=BOS,
                                             pad_token_id=PAD)
    scores = stub(ids, mask).logits[:, -1]  # the regular next-token logits, as generate passes them
    out = processor(ids, scores.clone())
    # The prefix went after BOS, the padding was dropped.
    assert stub.seen[-1] == [[BOS, 7, 8, 5, 6], [BOS, 7, 8, 5, 6, 6]]
    p_new = out.exp()
    want = expected(10.0, P_A)  # delta = (-0.3, +0.2, 0, +0.1)
    z = 0.4 + 0.3 * math.exp(-2.0) + 0.2 + 0.1 * math.exp(-1.0)
    assert want == pytest.approx([0.4 / z, 0.3 * math.exp(-2.0) / z, 0.2 / z, 0.1 * math.exp(-1.0) / z])
    for row in p_new:
        assert row.tolist() == pytest.approx(want, abs=1e-6)
        assert float(row.sum()) == pytest.approx(1.0, abs=1e-6)  # renormalised
        # Tokens the prefix makes less likely (0) or leaves (2) keep p up to the common 1/Z ...
        assert float(row[0]) / P_REGULAR[0] == pytest.approx(1 / z, rel=1e-5)
        assert float(row[2]) / P_REGULAR[2] == pytest.approx(1 / z, rel=1e-5)
        # ... those it makes likelier lose mass, the more the larger their rise.
        assert float(row[1]) / P_REGULAR[1] < float(row[3]) / P_REGULAR[3] < 1 / z
    # lambda 0: the scores untouched; a huge lambda leaves every risen token epsilon (0.01) of its p,
    # and removes it without the floor.
    plain = SelfDebiasingLogitsProcessor(stub, [PREFIX_A], decay=0.0, attention_mask=mask, bos_token_id=BOS)
    assert torch.equal(plain(ids, scores.clone()), scores)
    harsh = SelfDebiasingLogitsProcessor(stub, [PREFIX_A], decay=1e4, attention_mask=mask, bos_token_id=BOS)
    z = 0.4 + 0.3 * 0.01 + 0.2 + 0.1 * 0.01
    assert harsh(ids, scores.clone()).exp()[0].tolist() == pytest.approx([0.4 / z, 0.003 / z, 0.2 / z, 0.001 / z], abs=1e-6)
    unfloored = SelfDebiasingLogitsProcessor(stub, [PREFIX_A], decay=1e4, epsilon=0.0, attention_mask=mask, bos_token_id=BOS)
    assert unfloored(ids, scores.clone()).exp()[0].tolist() == pytest.approx([0.4 / 0.6, 0.0, 0.2 / 0.6, 0.0], abs=1e-6)


def test_self_debias_on_stub_logits_two_prefixes_and_steps():
    stub = StubLM()
    ids, mask = stub_batch()
    processor = SelfDebiasingLogitsProcessor(stub, [PREFIX_A, PREFIX_B], decay=5.0, attention_mask=mask,
                                             bos_token_id=BOS, pad_token_id=PAD)
    scores = torch.tensor([P_REGULAR, P_REGULAR]).log() + 3.0  # unnormalised logits are fine
    out = processor(ids, scores)
    # p_biased is the elementwise max over prefixes: (0.1, 0.5, 0.35, 0.4)
    want = expected(5.0, [max(a, b) for a, b in zip(P_A, P_B)])
    assert out.exp()[1].tolist() == pytest.approx(want, abs=1e-6)
    assert stub.seen[-2:] == [[[BOS, 7, 8, 5, 6], [BOS, 7, 8, 5, 6, 6]], [[BOS, 9, 5, 6], [BOS, 9, 5, 6, 6]]]
    # The next step (one token appended, the prompt mask still applies): no cache, so recomputed,
    # with the new token in every prefixed context.
    step = torch.cat([ids, torch.tensor([[2], [3]])], dim=1)
    processor(step, scores)
    assert processor.forward_passes == 4 and not processor.cached
    assert stub.seen[-1] == [[BOS, 9, 5, 6, 2], [BOS, 9, 5, 6, 6, 3]]
    # num_return_sequences: the mask is given per prompt, input_ids per sample.
    twice = SelfDebiasingLogitsProcessor(stub, [PREFIX_A], decay=5.0, attention_mask=mask, bos_token_id=BOS)
    twice(ids.repeat_interleave(2, dim=0), scores.repeat_interleave(2, dim=0))
    assert stub.seen[-1] == [[BOS, 7, 8, 5, 6]] * 2 + [[BOS, 7, 8, 5, 6, 6]] * 2


def test_self_debias_function_and_prefix_insertion():
    logp = torch.tensor(P_REGULAR).log()
    out = self_debias(logp, [torch.tensor(P_A).log()], 10.0)
    assert out.exp().tolist() == pytest.approx(expected(10.0, P_A), abs=1e-6)
    assert torch.allclose(self_debias(logp, torch.tensor(P_A).log()[None], 0.0), logp)
    floored = self_debias(logp, [torch.tensor(P_A).log()], 1e4, epsilon=0.01)
    assert floored.exp().tolist() == pytest.approx(expected(1e4, P_A, 0.01), abs=1e-6)
    assert with_prefix([BOS, 5, 6], [7, 8], BOS) == [BOS, 7, 8, 5, 6]
    assert with_prefix([5, 6], [7, 8], BOS) == [7, 8, 5, 6]
    assert with_prefix([BOS, 4, 5, 6], [7, 8], BOS, limit=5) == [BOS, 7, 8, 5, 6]  # oldest tokens dropped
    with pytest.raises(ValueError, match="prefix"):
        SelfDebiasingLogitsProcessor(StubLM(), [], decay=1.0)


# ---- on the tiny random Llama --------------------------------------------------------------------
PROMPTS = ["The cat sat", "Maria Lopez opened a new library in Leeds on", "Hi", "He said that the people were"]


def test_processor_cache_matches_recomputation_and_direct_logits(tiny):
    model, tokenizer = tiny
    lm = EvalLM(model, tokenizer, batch_size=4)
    ids, mask = lm._left_pad([[lm.bos] + lm.encode(p) for p in PROMPTS])
    prefixes = [lm.encode(p) for p in SELF_DEBIAS_PREFIXES[:2]]
    runs = {}
    for use_cache in (True, False):
        processor = SelfDebiasingLogitsProcessor(model, prefixes, 1000.0, attention_mask=mask, bos_token_id=lm.bos,
                                                 pad_token_id=lm.pad, use_cache=use_cache)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=lm.pad,
                             logits_processor=[processor], output_scores=True, return_dict_in_generate=True)
        assert processor.cached == use_cache
        runs[use_cache] = out
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    for a, b in zip(runs[True].scores, runs[False].scores):
        assert torch.allclose(torch.log_softmax(a, -1), torch.log_softmax(b, -1), atol=2e-3)
    # The last step against direct, unpadded forward passes of each row.
    step = len(runs[True].scores) - 1
    for r in range(len(PROMPTS)):
        row = [lm.bos] + lm.encode(PROMPTS[r]) + runs[True].sequences[r, ids.shape[1]:ids.shape[1] + step].tolist()
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([row])).logits[0, -1], -1)
            biased = [torch.log_softmax(model(torch.tensor([with_prefix(row, p, lm.bos)])).logits[0, -1], -1) for p in prefixes]
        want = self_debias(logp, biased, 1000.0)
        assert torch.allclose(torch.log_softmax(runs[True].scores[step][r], -1), want, atol=2e-3)


def test_self_debias_changes_greedy_generations_and_samples(tiny):
    model, tokenizer = tiny
    prompts = PROMPTS + ["You are such a", "The women in the office", "Those people are all", "My neighbour is a"]
    plain = EvalLM(model, tokenizer, batch_size=8).generate(prompts, max_new_tokens=10)
    debiased = EvalLM(model, tokenizer, batch_size=8, decoding=Decoding("self-debias", decay=1e4)).generate(prompts, 10)
    assert any(a != b for a, b in zip(plain, debiased))
    # lambda 0 is the model as it is.
    assert EvalLM(model, tokenizer, batch_size=8, decoding=Decoding("self-debias", decay=0.0)).generate(prompts, 10) == plain
    sampler = EvalLM(model, tokenizer, batch_size=4, decoding=Decoding("self-debias", prefixes=SELF_DEBIAS_PREFIXES[:2]))
    sampled = sampler.generate(PROMPTS, 4, samples=2, do_sample=True, temperature=0.7, top_p=0.9, seed=1)
    assert all(len(s) == 2 for s in sampled)
    assert sampled == sampler.generate(PROMPTS, 4, samples=2, do_sample=True, temperature=0.7, top_p=0.9, seed=1)


def test_self_debias_reweights_loglikelihoods(tiny):
    model, tokenizer = tiny
    method = Decoding("self-debias", prefixes=SELF_DEBIAS_PREFIXES[:2], decay=200.0)
    requests = [("The cat sat", " on the mat."), ("", "Hello world, said the robot.")]
    got = EvalLM(model, tokenizer, batch_size=2, decoding=method).loglikelihood(requests)
    plain = EvalLM(model, tokenizer, batch_size=2).loglikelihood(requests)
    lm = EvalLM(model, tokenizer)
    for (context, continuation), result, base in zip(requests, got, plain):
        ctx, cont = [lm.bos] + lm.encode(context), lm.encode(continuation)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], -1)
            biased = [torch.log_softmax(model(torch.tensor([with_prefix(ctx + cont, lm.encode(p), lm.bos)])).logits[0], -1)
                      for p in method.prefixes]
        total = 0.0
        for j, token in enumerate(cont):
            at = len(ctx) - 1 + j  # the position predicting cont[j]; a prefix shifts it by its length
            total += float(self_debias(logp[at], [b[at + len(b) - len(logp)] for b in biased], method.decay)[token])
        assert result.logprob == pytest.approx(total, abs=1e-3) and result.tokens == len(cont)
        assert result.logprob != pytest.approx(base.logprob, abs=1e-3)
    # Generation only: log-likelihoods are the model's own.
    off = Decoding("self-debias", prefixes=SELF_DEBIAS_PREFIXES[:2], decay=200.0, loglik=False)
    unchanged = EvalLM(model, tokenizer, batch_size=2, decoding=off).loglikelihood(requests)
    assert [r.logprob for r in unchanged] == pytest.approx([r.logprob for r in plain], abs=1e-5)


def test_self_debias_scores_bias_items_under_their_bias_type_prefix(tiny):
    from cdb.eval.bias import BiasTask, load_crows, load_stereoset
    from cdb.eval.base import Resources
    from cdb.eval.options import bias_type_prefix

    model, tokenizer = tiny
    options = make_options("quick", limit=3, progress=False, decoding="self-debias", self_debias_lambda=200.0)
    lm = EvalLM(model, tokenizer, batch_size=4, decoding=Decoding.from_options(options))
    result = BiasTask().run(lm, options, Resources(options))
    crows = [s for s in result.samples if s["probe"] == "crows"]
    pairs, items = load_crows(3), load_stereoset(3)
    assert {p.bias_type for p in pairs} != {pairs[0].bias_type}  # more than one bias type in play
    for pair, sample in zip(pairs, crows):
        own = Decoding("self-debias", prefixes=(bias_type_prefix(pair.bias_type),), decay=200.0)
        want = EvalLM(model, tokenizer, batch_size=1, decoding=own).loglikelihood([("", pair.more), ("", pair.less)])
        assert [sample["ll_more"], sample["ll_less"]] == pytest.approx([w.logprob for w in want], abs=1e-3)
    toxicity_prefixes = EvalLM(model, tokenizer, batch_size=1, decoding=Decoding.from_options(options))
    assert crows[0]["ll_more"] != pytest.approx(toxicity_prefixes.loglikelihood([("", pairs[0].more)])[0].logprob, abs=1e-3)
    stereo = [s for s in result.samples if s["probe"] == "stereoset"][0]
    own = Decoding("self-debias", prefixes=(bias_type_prefix(items[0].bias_type),), decay=200.0)
    want = EvalLM(model, tokenizer, batch_size=1, decoding=own).loglikelihood([("", items[0].stereotype)])[0]
    assert stereo["mean_ll_stereotype"] == pytest.approx(want.mean, abs=1e-3)


def test_instructive_feeds_the_instruction(tiny):
    model, tokenizer = tiny
    options = {"tasks": ("toxicity", "bias"), "limit": 2, "samples": 1, "max_new_tokens": 4, "progress": False,
               "decoding": "instructive"}
    result = run_suite(model, tokenizer, "quick", options)
    rows = [s for s in result.samples if s["task"] == "toxicity"]
    assert len(rows) == 2
    for s in rows:
        assert s["fed_prompt"] == INSTRUCTION + s["prompt"]
    # What was fed is the instruction + prompt: the same greedy text as the plain model given it.
    lm = EvalLM(model, tokenizer, batch_size=4, decoding=Decoding("instructive"))
    plain = EvalLM(model, tokenizer, batch_size=4)
    assert lm.generate(PROMPTS, 5) == plain.generate([INSTRUCTION + p for p in PROMPTS], 5)
    assert lm.generate(PROMPTS, 5) != plain.generate(PROMPTS, 5)
    # Log-likelihood tasks are unchanged by the instruction.
    none = run_suite(model, tokenizer, "quick", {**options, "tasks": "bias", "decoding": "none"})
    assert none.metrics == {k: v for k, v in result.metrics.items() if k.startswith("bias/")}


def test_decoding_options():
    assert make_options("quick").decoding == "none"
    options = make_options("quick", decoding="self-debias", self_debias_prefixes="The text is rude:\n", self_debias_lambda=10)
    assert options.self_debias_prefixes == ("The text is rude:\n",)
    assert Decoding.from_options(options).decay == 10.0
    with pytest.raises(settings.ConfigError, match="decoding: 'dpo' is not one of none, instructive, self-debias"):
        make_options("quick", decoding="dpo")
    with pytest.raises(ValueError, match="self_debias_lambda"):
        make_options("quick", self_debias_lambda=-1.0)
    with pytest.raises(ValueError, match="at least one prefix"):
        make_options("quick", decoding="self-debias", self_debias_prefixes=[])
    assert Decoding.from_options(make_options("quick", self_debias_epsilon=0.05)).epsilon == 0.05
    with pytest.raises(ValueError, match="self_debias_epsilon: must be in"):
        make_options("quick", self_debias_epsilon=2.0)


# ---- the CLI into MLflow, and the report's rows ----------------------------------------------------
def test_cli_self_debias_logs_the_decoding(tmp_path):
    from cdb.eval.__main__ import main
    from cdb.report import collect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["--model", TINY, "--decoding", "self-debias", "--suite", "quick", "--limit", "2", "--max-new-tokens", "4",
                 "--self-debias-prefix", SELF_DEBIAS_PREFIXES[0], "--self-debias-prefix", SELF_DEBIAS_PREFIXES[1],
                 "--threads", "1", "--no-progress", "--tracking-uri", uri, "--output", str(tmp_path / "out")])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert summary["method"] == "self-debias" and summary["options"]["self_debias_prefixes"] == list(SELF_DEBIAS_PREFIXES[:2])
    client = MlflowClient(uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["cdb.method"] == "self-debias" and run.data.tags["cdb.eval.method"] == "self-debias"
    assert run.data.params["eval.decoding"] == "self-debias"
    assert "eval/toxicity/mean_toxicity" in run.data.metrics and "eval/bias/crows_stereo_share" in run.data.metrics
    # cdb.report: the decoding-time baseline is its own row; a trained model decoded with it shows both.
    experiment = client.get_experiment_by_name("cdb").experiment_id
    trained = client.create_run(experiment, tags={"cdb.method": "contrastive", "cdb.eval.method": "self-debias"})
    client.log_metric(trained.info.run_id, "eval/toxicity/mean_toxicity", 0.1)
    methods = {r.run_id: r.method for r in collect(uri, "cdb")}
    assert methods == {summary["run_id"]: "self-debias", trained.info.run_id: "contrastive+self-debias"}
