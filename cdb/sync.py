"""`python -m cdb.sync OUTPUT_DIR`: replay metrics spooled while MLflow was unreachable into the run."""

import sys

from cdb.cli import Command
from cdb.tracking import sync

EXIT_UNREACHABLE = 1


def main(argv=None) -> int:
    command = Command("cdb.sync", "python -m cdb.sync", __doc__, (), positionals=[("output_dir", "the run's --output-dir")],
                      with_settings=False)
    args = command.parse(argv)
    try:
        replayed = sync(args.output_dir)
    except FileNotFoundError as exc:
        return command.fail(f"{exc.filename}: not found; is {args.output_dir} a cdb run folder?")
    except ValueError as exc:  # a run.json of something else
        return command.fail(str(exc))
    except Exception as exc:  # the server is still down: say so, keep the spool
        return command.fail(f"could not reach the tracking server: {exc}", EXIT_UNREACHABLE)
    print(f"[cdb] replayed {replayed} spooled steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
