"""Ray's own loggers, set so that a run's console shows cdb's lines and Ray's real warnings and errors,
while Ray's routine internals go to Ray's log files (logs/train/ under the Ray session folder).

Two sources would otherwise fill the console:
  - Ray Train writes a line per checkpoint and per report on every rank, and several per worker group
    start, at INFO. Its LoggingConfig level (WARNING) keeps the `ray.train` logger's INFO off the
    console (Ray Train's system log files take every level regardless); the report line's logger is
    not under `ray.train` and is routed like the cleaner's, below.
  - Ray Train's placement group cleaner (a detached actor) asks Ray's state API every second whether
    the controller lives, and warns at every failed ask; a local cluster started without the dashboard
    has no state API, so it warns all run long (and its monitor thread may end on that error with a
    traceback). `route_ray_internals`, run in every Ray worker process of the job (a
    worker_process_setup_hook), sends that logger and that thread's end to a log file of its own.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

TRAIN_LOG_LEVEL = "WARNING"
"""Ray Train's console level: its warnings and errors show, its routine INFO lines do not."""

ROUTED_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
"""Ray loggers whose every line goes to Ray's log files, never to the console."""

ROUTED_FILE_LOGGERS = ("train/v2/_internal/execution/context.py",)
"""The same for Ray modules that name their logger by their file's path (`getLogger(__file__)`), which
puts it under the root logger rather than `ray.train`: here the per-rank "Reporting training result"."""

ROUTED_THREADS = ("PlacementGroupCleanerMonitor",)
"""Ray threads whose uncaught exception is written to that file (with its traceback), not to stderr."""

RUNTIME_ENV = {"worker_process_setup_hook": "cdb.raylog.route_ray_internals"}
"""Given to ray.init: every worker process of the job runs the hook (Ray merges it with the runtime
env of a `ray job submit`)."""


def plain_prefixes_off_a_terminal() -> None:
    """No colour codes around Ray's `(Worker pid=...)` prefixes when the console is a file or a pipe
    (a sweep's point logs, `ray job logs`, CI); a terminal keeps them. RAY_COLOR_PREFIX set decides."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def train_logging_config():
    """Ray Train's LoggingConfig for RunConfig(logging_config=...)."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level=TRAIN_LOG_LEVEL)


def route_ray_internals() -> None:
    """Send ROUTED_LOGGERS to logs/train/cdb-routed-<pid>.log in the Ray session, not to stderr (which
    Ray streams to the driver's console)."""
    # Ray Train's handler that opens its file in the session's logs/train/ on the first record
    # (Ray is pinned in pyproject.toml, so this internal import is stable).
    from ray.train.v2._internal.logging.logging import SessionFileHandler

    import ray

    handler = SessionFileHandler(f"cdb-routed-{os.getpid()}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_dir = Path(ray.__file__).parent
    for name in (*ROUTED_LOGGERS, *(str(ray_dir / path) for path in ROUTED_FILE_LOGGERS)):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
    routed = logging.getLogger(ROUTED_LOGGERS[0])
    previous = threading.excepthook

    def excepthook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name in ROUTED_THREADS:
            routed.error("thread %s ended", args.thread.name,
                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        else:
            previous(args)

    threading.excepthook = excepthook
