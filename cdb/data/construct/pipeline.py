"""The build: read sources -> augment (one stage per augmenter) -> score -> label and filter -> write.

Sources are cut into chunks of `chunk_size`; every (stage, chunk) result is cached atomically under
OUTPUT/.cache (see cache.py), so an interrupted build re-run with the same command redoes only the
missing chunks. Randomness is derived from (seed, stage, chunk content): the same seed gives the same
bytes. With Ray (`ray.enabled`, or RAY_ADDRESS set) the model-based augmenters and the scorers run as
Ray Data `map_batches` stages over actor pools, one chunk per batch; rule-based augmenters run on the
driver. Either way the per-chunk computation is the same function.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cdb import scoring
from cdb.data.bold import bold_corpus
from cdb.data.construct.augmenters import AugmenterError, Candidate, make_augmenter
from cdb.data.construct.cache import ChunkCache
from cdb.data.files import write_atomic
from cdb.data.construct.config import BuildSettings
from cdb.data.construct.inputs import read_input
from cdb.data.sources import Item
from cdb.data.construct.label import POSITIVE_KINDS, Outcome, Scored, label_source
from cdb.data.entities import make_tagger
from cdb.data.text import derived_rng, stable_hash
from cdb.data.records import DataError, validate

CACHE_FORMAT = 1


@dataclass
class BuildResult:
    output: Path
    records: int
    card: dict
    seconds: float


def _selected(augmenter, seed: int, item: Item) -> bool:
    fraction = augmenter.options.fraction
    if fraction >= 1.0:
        return True
    return int(stable_hash("select", seed, augmenter.name, item.id)[:8], 16) / 0xFFFFFFFF < fraction


def _chunk_hash(items: list[Item]) -> str:
    return stable_hash([(it.id, it.source, it.reference) for it in items])


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="chunk", disable=not enabled, leave=True, dynamic_ncols=True, file=sys.stderr)


# --- per-chunk work (the same function locally and in Ray actors) ------------------------------------

def augment_payload(items: list[Item], seed: int, name: str, chunk_hash: str) -> dict:
    return {"items": [[it.id, it.source, it.reference, it.where] for it in items], "seed": seed, "name": name,
            "chunk_hash": chunk_hash}


def run_augment(augmenter, payload: dict) -> dict:
    items = [Item(*row) for row in payload["items"]]
    rng = derived_rng(payload["seed"], payload["name"], payload["chunk_hash"])
    result = augmenter(items, rng) if items else []
    if len(result) != len(items):
        raise AugmenterError(f"augmenter {augmenter.name} returned {len(result)} results for {len(items)} sources")
    out = []
    for cands in result:
        row = []
        for c in cands:
            c = c if isinstance(c, Candidate) else Candidate(str(c), augmenter.name)
            if c.text.strip():
                row.append([c.text, c.origin])
        out.append(row)
    return {"format": CACHE_FORMAT, "ids": [it.id for it in items], "candidates": out}


def run_score(tox, faith, payload: dict) -> dict:
    groups = [(g["source"], g["texts"]) for g in payload["groups"]]
    return {"format": CACHE_FORMAT, "ids": [g["id"] for g in payload["groups"]],
            "scores": scoring.score_groups(tox, faith, groups),
            "scorers": {"toxicity": scoring.describe(tox), "faithfulness": scoring.describe(faith)}}


class ChunkWorker:
    """A Ray Data actor: builds its augmenter (or scorers) once, then maps chunks (one per batch)."""

    def __init__(self, stage: str, spec: dict):
        self.stage = stage
        if stage == "augment":
            self.augmenter = make_augmenter(spec["name"], spec["options"], spec["device"])
        else:
            self.tox = scoring.toxicity_scorer(spec["toxicity"], spec["device"])
            self.faith = scoring.faithfulness_scorer(spec["faithfulness"], spec["device"])

    def __call__(self, batch):
        import numpy as np

        results = []
        for payload in batch["payload"]:
            payload = json.loads(str(payload))
            value = run_augment(self.augmenter, payload) if self.stage == "augment" else run_score(self.tox, self.faith, payload)
            results.append(json.dumps(value, ensure_ascii=False))
        return {"chunk": np.asarray(batch["chunk"]), "result": np.asarray(results, dtype=object)}


# --- the runner: local or Ray ---------------------------------------------------------------------------

class Runner:
    def __init__(self, use_ray: bool, build: BuildSettings):
        self.use_ray = use_ray
        self.build = build
        self.progress = build.progress
        self.started_ray = False
        self.gpus = 0.0
        if use_ray:
            self._init_ray()

    def _init_ray(self) -> None:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(log_to_driver=True)
            else:
                temp_dir = Path(tempfile.gettempdir()) / f"cdb-ray-{os.getuid()}"
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _temp_dir=str(temp_dir),
                         configure_logging=False, log_to_driver=True)
            self.started_ray = True
        want = self.build.ray.num_gpus
        self.gpus = (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0) if want < 0 else want
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = self.progress

    def device(self) -> str:
        return "cuda" if self.use_ray and self.gpus > 0 else self.build.device

    def close(self) -> None:
        if self.started_ray:
            import ray

            ray.shutdown()

    def map_chunks(self, stage: str, spec: dict, tasks: list[tuple[int, dict]], local: Callable[[dict], dict],
                   on_result: Callable[[int, dict], None], desc: str, remote: bool) -> None:
        """Run `local(payload)` (or a ChunkWorker in Ray when remote) for each (chunk, payload) task;
        on_result(chunk, value) is called as each finishes (and caches it)."""
        bar = _progress(self.progress, len(tasks), desc)
        try:
            if not tasks:
                return
            if not (self.use_ray and remote):
                for index, payload in tasks:
                    on_result(index, local(payload))
                    bar.update(1)
                return
            import ray

            env = {k: os.environ[k] for k in ("CDB_CACHE_DIR", "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE")
                   if k in os.environ}
            rows = [{"chunk": index, "payload": json.dumps(payload, ensure_ascii=False)} for index, payload in tasks]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            size = max(1, min(self.build.ray.concurrency, len(rows)))
            ds = ds.map_batches(ChunkWorker, fn_constructor_kwargs={"stage": stage, "spec": spec}, batch_size=1,
                                compute=ray.data.ActorPoolStrategy(size=size), num_cpus=self.build.ray.num_cpus,
                                num_gpus=self.gpus, runtime_env={"env_vars": env} if env else None)
            for row in ds.iter_rows():
                on_result(int(row["chunk"]), json.loads(str(row["result"])))
                bar.update(1)
        finally:
            bar.close()


# --- the build -----------------------------------------------------------------------------------------

def run_build(build: BuildSettings, command: str = "", log: Callable[[str], None] | None = None) -> BuildResult:
    """Build OUTPUT/records.jsonl, card.json, card.md (and scores.jsonl, rejected.jsonl). `build`
    comes from cdb.data.construct.config.resolve (checked there); `command` is recorded in the card.
    Phases: read the sources, augment (one stage per augmenter), score every candidate, label and
    filter, write; the augment and score stages are cached per chunk, so a re-run redoes only what is missing."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.time()
    names = list(build.augmenters)
    use_ray = build.ray.enabled or bool(os.environ.get("RAY_ADDRESS"))

    # Augmenters are built before anything is read or written; models load on first use.
    augs = [make_augmenter(name, build.augmenter_options(name)) for name in names]
    data = _read_sources(build, log)
    out = Path(build.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = ChunkCache(out / ".cache" / data.sha256[:16])
    size = build.chunk_size
    chunks = [data.items[i:i + size] for i in range(0, len(data.items), size)]
    log(f"[build] {len(data.items)} sources from {data.location} in {len(chunks)} chunks of <= {size}; "
        f"augmenters: {', '.join(names) or '(none)'}; {'Ray' if use_ray else 'local'}")

    if build.torch_threads > 0:
        # One thread is faster than two on a busy 2-core machine (OpenMP threads wait for each other).
        import torch

        torch.set_num_threads(build.torch_threads)
    runner = Runner(use_ray, build)
    try:
        device = runner.device()
        for augmenter in augs:
            augmenter.device = device
        produced = _augment(build, augs, chunks, cache, runner, device, use_ray)
        groups_per_chunk = _candidates(augs, chunks, produced)
        scores = _score(build, groups_per_chunk, cache, runner, device)
    finally:
        runner.close()

    tagger = make_tagger(build.entity_tagger)
    outcomes = _label(build, groups_per_chunk, scores, tagger)
    records, card = _write(build, command, use_ray, out, data, augs, groups_per_chunk, scores, outcomes, tagger)
    seconds = time.time() - t0
    reasons = ", ".join(f"{k} {v}" for k, v in card["counts"]["rejected_sources"].items()) or "none"
    log(f"[build] {len(records)} records from {len(data.items)} sources ({len(data.bad)} bad input lines; "
        f"rejected: {reasons}) -> {out / 'records.jsonl'} in {seconds:.0f} s")
    if not records:
        raise DataError(f"{data.location}: no source passed the filters (rejected: {reasons})")
    return BuildResult(out, len(records), card, seconds)


def _read_sources(build: BuildSettings, log: Callable[[str], None]):
    """The sources (the given input, else the offline BOLD corpus); bad input lines logged (20 at most)."""
    if build.input:
        data = read_input(build.input, build.source_field, build.reference_field, build.id_field, build.split,
                          build.limit, build.max_reference_words)
    else:
        data = bold_corpus(build.limit, build.max_reference_words, build.bold.min_sentences, build.bold.max_sentences,
                           build.bold.max_source_words)
    for bad in data.bad[:20]:
        log(f"[build] bad input {bad.where}: {bad.reason}")
    if len(data.bad) > 20:
        log(f"[build] ... and {len(data.bad) - 20} more bad input lines (all in rejected.jsonl and the card)")
    return data


def _augment(build: BuildSettings, augs: list, chunks: list, cache: ChunkCache, runner, device: str,
             use_ray: bool) -> dict[str, list[list[list]]]:
    """Augmenter name -> per chunk, per source, its (text, origin) candidates: one stage per
    augmenter, one cache entry per chunk."""
    hashes = [_chunk_hash(c) for c in chunks]
    produced: dict[str, list[list[list]]] = {}
    for augmenter in augs:
        stage = f"aug-{augmenter.name}-{stable_hash(augmenter.config(), code_fingerprint(augmenter), build.seed, CACHE_FORMAT)[:12]}"
        results: list[list[list] | None] = [None] * len(chunks)
        tasks = []
        hits = 0
        for index, (chunk, chash) in enumerate(zip(chunks, hashes)):
            chosen = [it for it in chunk if _selected(augmenter, build.seed, it)]
            key = stable_hash(chash, [it.id for it in chosen])
            hit = cache.get(stage, index, key)
            if hit is not None and hit.get("ids") == [it.id for it in chosen]:
                results[index] = _spread(chunk, hit)
                hits += 1
                continue
            if not chosen:  # nothing to do: no need to reach for a model or an actor
                value = run_augment(augmenter, augment_payload([], build.seed, augmenter.name, key))
                cache.put(stage, index, key, value)
                results[index] = _spread(chunk, value)
                continue
            tasks.append((index, augment_payload(chosen, build.seed, augmenter.name, key), key, chunk))

        def done(index: int, value: dict, _tasks={t[0]: t for t in tasks}, _stage=stage, _results=results) -> None:
            _, _, key, chunk = _tasks[index]
            cache.put(_stage, index, key, value)
            _results[index] = _spread(chunk, value)

        spec = {"name": augmenter.name, "options": augmenter.options, "device": device}
        if augmenter.uses_model and use_ray:
            _prepare_models(augmenter)
        runner.map_chunks("augment", spec, [(t[0], t[1]) for t in tasks], lambda p, a=augmenter: run_augment(a, p),
                          done, f"{augmenter.name} ({hits} cached)" if hits else augmenter.name,
                          remote=augmenter.uses_model)
        produced[augmenter.name] = results  # type: ignore[assignment]
    return produced


def _candidates(augs: list, chunks: list, produced: dict) -> list[list[tuple]]:
    """Per chunk, per source: (item, [(kind, text, origin)]), the reference first, positives before negatives."""
    groups_per_chunk = []
    for index, chunk in enumerate(chunks):
        groups = []
        for pos, it in enumerate(chunk):
            cands = [("reference", it.reference, "reference")]
            for augmenter in sorted(augs, key=lambda a: a.kind != "positive"):
                for text, origin in produced[augmenter.name][index][pos]:
                    cands.append((augmenter.kind, text, origin))
            groups.append((it, cands))
        groups_per_chunk.append(groups)
    return groups_per_chunk


def _score(build: BuildSettings, groups_per_chunk: list, cache: ChunkCache, runner, device: str) -> list[dict]:
    """Per chunk, the toxicity and faithfulness of every candidate (cached per chunk)."""
    score_spec = {"toxicity": build.toxicity_scorer, "faithfulness": build.faithfulness_scorer, "device": device}
    score_stage = f"score-{stable_hash(build.toxicity_scorer, build.faithfulness_scorer, code_fingerprint(None), CACHE_FORMAT)[:12]}"
    scores: list[dict | None] = [None] * len(groups_per_chunk)
    tasks = []
    for index, groups in enumerate(groups_per_chunk):
        payload = {"groups": [{"id": it.id, "source": it.source, "texts": [c[1] for c in cands]} for it, cands in groups]}
        key = stable_hash(payload)
        hit = cache.get(score_stage, index, key)
        if hit is not None and hit.get("ids") == [g["id"] for g in payload["groups"]]:
            scores[index] = hit
        else:
            tasks.append((index, payload, key))
    keys = {t[0]: t[2] for t in tasks}

    def scored(index: int, value: dict) -> None:
        cache.put(score_stage, index, keys[index], value)
        scores[index] = value

    local_scorers: list = []

    def score_local(payload: dict) -> dict:
        if not local_scorers:
            local_scorers.extend([scoring.toxicity_scorer(build.toxicity_scorer, device),
                                  scoring.faithfulness_scorer(build.faithfulness_scorer, device)])
        return run_score(local_scorers[0], local_scorers[1], payload)

    cached = len(groups_per_chunk) - len(tasks)
    runner.map_chunks("score", score_spec, [(t[0], t[1]) for t in tasks], score_local, scored,
                      f"score ({cached} cached)" if cached else "score", remote=True)
    return scores  # type: ignore[return-value]


def _label(build: BuildSettings, groups_per_chunk: list, scores: list[dict], tagger) -> list[tuple[Item, Outcome]]:
    """Label and filter every source; the early-entity filter tags every positive candidate in one
    batch with the tagger training pools over."""
    positive_texts = sorted({text for groups in groups_per_chunk for _, cands in groups
                             for kind, text, _ in cands if kind in POSITIVE_KINDS})
    spans_of = dict(zip(positive_texts, tagger(positive_texts)))
    outcomes: list[tuple[Item, Outcome]] = []
    bar = _progress(build.progress, len(groups_per_chunk), "label")
    for index, groups in enumerate(groups_per_chunk):
        for (it, cands), sc in zip(groups, scores[index]["scores"]):
            scored_cands = [Scored(text, kind, origin, t, f) for (kind, text, origin), (t, f) in zip(cands, sc)]
            outcomes.append((it, label_source(it.id, it.source, scored_cands, build.label, spans_of.__getitem__)))
        bar.update(1)
    bar.close()
    return outcomes


def _write(build: BuildSettings, command: str, use_ray: bool, out: Path, data, augs: list, groups_per_chunk: list,
           scores: list[dict], outcomes: list, tagger) -> tuple[list, dict]:
    """records.jsonl (each record validated as training reads it), scores.jsonl, rejected.jsonl and
    the card; returns (records, card)."""
    from cdb.data.construct.card import make_card, render_markdown
    from cdb.data.construct.probe import shortcut_probe

    records = [o.record for _, o in outcomes if o.record is not None]
    lines = []
    for n, record in enumerate(records, start=1):
        obj = record.to_json()
        validate(obj, f"{out / 'records.jsonl'}:{n}")  # what we write is what training accepts
        lines.append(json.dumps(obj, ensure_ascii=False))
    write_atomic(out / "records.jsonl", "".join(line + "\n" for line in lines))
    score_lines = [json.dumps({
        "id": o.record.id,
        "positives": [{"origin": p.origin, "toxicity": p.toxicity, "faithfulness": p.faithfulness} for p in o.positives],
        "negatives": [{"type": n.kind, "origin": n.origin, "toxicity": n.toxicity, "faithfulness": n.faithfulness}
                      for n in o.negatives]}, ensure_ascii=False) for _, o in outcomes if o.record is not None]
    write_atomic(out / "scores.jsonl", "".join(line + "\n" for line in score_lines))
    rejected_lines = [json.dumps({"where": b.where, "stage": "input", "reason": b.reason}, ensure_ascii=False) for b in data.bad]
    rejected_lines += [json.dumps({"where": it.where, "id": it.id, "stage": "filter", "reason": o.reason}, ensure_ascii=False)
                       for it, o in outcomes if o.record is None]
    write_atomic(out / "rejected.jsonl", "".join(line + "\n" for line in rejected_lines))

    toxic_candidates = [(origin, toxicity) for index, groups in enumerate(groups_per_chunk)
                        for (_, cands), group_scores in zip(groups, scores[index]["scores"])
                        for (kind, _, origin), (toxicity, _) in zip(cands, group_scores) if kind == "toxic"]
    scorer_info = next((s["scorers"] for s in scores if s and "scorers" in s), None)
    card = make_card(build, command, use_ray, data, augs, scorer_info, outcomes, len(groups_per_chunk),
                     shortcut_probe(records, tagger), toxic_candidates)
    write_atomic(out / "card.json", json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / "card.md", render_markdown(card))
    return records, card


def code_fingerprint(augmenter) -> str:
    """A hash of the code a stage's results depend on (the build modules, the scorers, and the
    augmenter's own class), so that a cache never serves results of older code."""
    import hashlib
    import inspect

    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    scorers = Path(scoring.__file__).resolve()
    files = (sorted((here / "augmenters").glob("*.py")) + [here / "lm.py", here.parent / "text.py", scorers,
                                                          here.parent / "entities.py"])
    if augmenter is None:
        files = [scorers]
    for path in files:
        digest.update(path.read_bytes())
    if augmenter is not None:
        try:
            digest.update(inspect.getsource(type(augmenter)).encode())
        except (OSError, TypeError):
            digest.update(type(augmenter).__qualname__.encode())
    return digest.hexdigest()


def _spread(chunk: list[Item], value: dict) -> list[list]:
    """A chunk's augmenter result as one candidate list per item of the chunk (unselected: [])."""
    by_id = dict(zip(value["ids"], value["candidates"]))
    return [by_id.get(it.id, []) for it in chunk]


def _prepare_models(augmenter) -> None:
    """Convert packaged (gguf:) models once on the driver, so that local actors only load them."""
    spec = getattr(augmenter.options, "model", None)
    if isinstance(spec, str) and "gguf:" in spec:
        from cdb.data.construct import lm

        lm.resolve(spec)
