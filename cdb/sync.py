"""`python -m cdb.sync OUTPUT_DIR`: replay metrics spooled while MLflow was unreachable into the run."""

import argparse
import sys

from cdb.tracking import sync


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdb.sync", description=__doc__)
    parser.add_argument("output_dir", help="the run's --output-dir")
    args = parser.parse_args(argv)
    try:
        replayed = sync(args.output_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: not found; is {args.output_dir} a cdb run folder?", file=sys.stderr)
        return 2
    except ValueError as exc:  # a run.json of something else
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the server is still down: say so, keep the spool
        print(f"error: could not reach the tracking server: {exc}", file=sys.stderr)
        return 1
    print(f"[cdb] replayed {replayed} spooled steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
