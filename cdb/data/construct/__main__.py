"""`python -m cdb.data build ...` (or `python -m cdb.data.construct ...`): build contrastive records.

Exit codes: 0 built, 1 the build failed (what was done is cached: re-run the same command to
resume), 2 bad arguments or settings, 3 bad data (no usable source, or none passed the filters).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from cdb.data.records import DataError

EXIT_OK, EXIT_FAILED, EXIT_ARGS, EXIT_DATA = 0, 1, 2, 3


def parse_args(argv: list[str]) -> argparse.Namespace:
    from cdb.data.construct.augmenters import AUGMENTERS, DEFAULT_AUGMENTERS

    p = argparse.ArgumentParser(prog="python -m cdb.data build",
                                description="Build contrastive training records (one per source) with typed negatives.")
    p.add_argument("--input", default="", help="JSONL, CSV, parquet, a dataset folder or a HF dataset id; "
                   "default: the offline corpus of BOLD's Wikipedia sentences")
    p.add_argument("--source-field", default="source")
    p.add_argument("--reference-field", default="reference",
                   help="field with the reference (first positive); '' = the lead sentence of the source")
    p.add_argument("--id-field", default="id", help="field with a record id (missing: FILE-ROW)")
    p.add_argument("--split", default="train", help="split of a HF dataset")
    p.add_argument("--output", required=True, help="output directory (records.jsonl, card.json, card.md, .cache/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use the first N valid sources (0: all)")
    p.add_argument("--augmenters", default=",".join(DEFAULT_AUGMENTERS),
                   help=f"comma-separated, in order; known: {', '.join(sorted(AUGMENTERS))}")
    p.add_argument("--faithfulness-threshold", type=float, default=0.4)
    p.add_argument("--ray", action="store_true", help="run model-based stages on Ray (also when RAY_ADDRESS is set)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a build setting (e.g. chunk_size=8, max_jaccard=0.8) or AUGMENTER.OPTION=VALUE "
                        "(e.g. sys_lowcon.fraction=0.25, toxic.model=rules, mask_ent.model=mlm:DIR)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        argv = argv[1:]
    args = parse_args(argv)
    from cdb.data.construct.augmenters import AugmenterError
    from cdb.data.construct.pipeline import BuildConfig, SettingsError, run_build

    settings = {}
    for item in args.settings:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            print(f"error: --set {item!r}: expected KEY=VALUE", file=sys.stderr)
            return EXIT_ARGS
        settings[key.strip()] = value
    config = BuildConfig(
        output=args.output, input=args.input, source_field=args.source_field, reference_field=args.reference_field,
        id_field=args.id_field, split=args.split, seed=args.seed, limit=args.limit,
        augmenters=tuple(a.strip() for a in args.augmenters.split(",") if a.strip()),
        faithfulness_threshold=args.faithfulness_threshold, use_ray=args.ray, settings=settings,
        progress=not args.no_progress,
        command=" ".join(["python -m cdb.data build"] + [shlex.quote(a) for a in argv]))
    try:
        run_build(config)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except (SettingsError, AugmenterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ARGS
    except KeyboardInterrupt:
        print(f"interrupted: finished chunks are cached under {args.output}/.cache; re-run the same command to resume",
              file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # an augmenter or scorer failed: what was built is cached
        print(f"error: the build failed: {type(exc).__name__}: {exc}\n"
              f"finished chunks are cached under {args.output}/.cache; re-run the same command to resume", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
