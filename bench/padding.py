"""Share of real (non-pad) tokens in the micro-batches the trainer builds: assign_micro_batches +
collate on the embedded dataset, default `tiny` and `smol-135m` settings, 2 ranks, epoch 0.

    python bench/padding.py [--scales tiny smol-135m] [--world 2]

Also reports, for the lead, what other grouping windows would give (`group_size`, the window of
micro-batches sorted by length) and where the padding comes from: rows of one source differ in
length (their candidates do), and sources differ from each other.
"""

import argparse

import _common

_common.setup_env(cpu=True)


def fill(sources, micro_batch: int, world: int, group_size: int = 64, seed: int = 0) -> dict:
    from cdb.data.batch import collate, assign_micro_batches

    real = total = within = 0
    for rank in range(world):
        for batch in assign_micro_batches(sources, micro_batch, seed, 0, rank, world, group_size=group_size):
            tensors = collate(batch, 0)
            mask = tensors["attention_mask"]
            real += int(mask.sum())
            total += mask.numel()
            # Padding if every source were padded only to its own longest row (the floor for any grouping).
            within += sum(s.longest * len(s.rows) for s in batch)
    return {"fill": real / total, "real": real, "padded": total, "own_source_fill": real / within}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scales", nargs="+", default=["tiny", "smol-135m"])
    p.add_argument("--world", type=int, default=2)
    args = p.parse_args()
    worst = 1.0
    for scale in args.scales:
        config = _common.scale_config(scale, args.world)
        _, tokenizer = _common.model_source_and_tokenizer(config)
        sources = _common.load_sources(config, tokenizer)
        result = fill(sources, config.scale.micro_batch, args.world)
        worst = min(worst, result["fill"])
        windows = {g: round(fill(sources, config.scale.micro_batch, args.world, g)["fill"], 4) for g in (1, 4, 16, 64, 1000)}
        print(f"[padding] {scale}: micro_batch {config.scale.micro_batch}, {args.world} ranks: non-pad share "
              f"{result['fill']:.4f} ({result['real']:,} of {result['padded']:,} tokens); padding each source only to "
              f"its own longest row would give {result['own_source_fill']:.4f}; by group_size {windows}", flush=True)
    _common.summary("padding", f"{worst:.4f} (lowest non-pad share over {', '.join(args.scales)})", ">= 0.85")


if __name__ == "__main__":
    main()
