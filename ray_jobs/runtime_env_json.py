"""Print a Ray runtime_env as one JSON line: ray_jobs/runtime_env.yaml plus variables taken from the
caller's environment (by default MLFLOW_TRACKING_URI and HF_TOKEN_PATH, each only when set and non-empty).

    python ray_jobs/runtime_env_json.py [--file YAML] [--working-dir DIR] [--pass-env NAME ...]
                                        [--pass-secret NAME ...] [--names]

Used by ray_jobs/submit.sh to build `ray job submit --runtime-env-json` in memory: Ray's runtime_env
`env_vars` are literal strings (no ${VAR} expansion), and `ray job submit` takes only one of
--runtime-env / --runtime-env-json, so the file and the caller's values are merged here. Nothing is
written to disk. With --names it prints only the names of the passed variables (never values).

Secrets stay out of the runtime env by default: a value there is on `ray job submit`'s command line
(`ps` shows it) and stored with the job (`ray job list` returns it). The cluster provides them instead
(k8s: Secrets as `secretKeyRef` env on the Ray pods; elsewhere: a token file named by HF_TOKEN_PATH).
`--pass-env` refuses a secret-looking name (a TOKEN, PASSWORD, SECRET, KEY or CREDENTIAL part; a *_PATH or
*_FILE name is a location, not a secret); `--pass-secret NAME` is the explicit opt-in, and warns.

A relative local `working_dir` is resolved against the repository root (the folder above ray_jobs/),
so the result does not depend on the directory the script is called from.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_FILE = HERE / "runtime_env.yaml"
DEFAULT_PASS = ("MLFLOW_TRACKING_URI", "HF_TOKEN_PATH")
SECRET_NAME = re.compile(r"(^|_)(TOKEN|PASSWORD|PASSWD|SECRET|KEY|CREDENTIALS?)(_|$)", re.I)
LOCATION_NAME = re.compile(r"_(PATH|FILE|DIR)$", re.I)


def looks_secret(name: str) -> bool:
    """A variable whose value is a credential (HF_TOKEN, MLFLOW_TRACKING_PASSWORD), not its location."""
    return bool(SECRET_NAME.search(name)) and not LOCATION_NAME.search(name)


def build(file: str | Path = DEFAULT_FILE, working_dir: str | None = None,
          pass_env: tuple[str, ...] | list[str] = DEFAULT_PASS, pass_secret: tuple[str, ...] | list[str] = (),
          environ: dict | None = None) -> tuple[dict, list[str]]:
    """(runtime_env, names of the variables taken from `environ`). A secret-looking name in `pass_env`
    is a ValueError; only `pass_secret` may carry one."""
    import yaml

    environ = os.environ if environ is None else environ
    refused = [name for name in pass_env if looks_secret(name)]
    if refused:
        raise ValueError(f"--pass-env {refused[0]}: looks like a secret; the job should read it from the "
                         f"cluster (a Secret, or a file named by a *_PATH variable), or pass it with "
                         f"--pass-secret {refused[0]}")
    with open(file, encoding="utf-8") as handle:
        runtime_env = yaml.safe_load(handle) or {}
    if not isinstance(runtime_env, dict):
        raise ValueError(f"{file}: a runtime_env must be a mapping")
    if working_dir is not None:
        runtime_env["working_dir"] = working_dir
    local = runtime_env.get("working_dir")
    if isinstance(local, str) and "://" not in local and not os.path.isabs(local):
        runtime_env["working_dir"] = str((REPO / local).resolve())
    env_vars = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    secret_in_file = [name for name in env_vars if looks_secret(name)]
    if secret_in_file:
        raise ValueError(f"{file}: env_vars.{secret_in_file[0]} looks like a secret; keep secrets out of the file")
    passed = []
    for name in (*pass_env, *pass_secret):
        value = environ.get(name)
        if value:
            env_vars[name] = value
            passed.append(name)
    runtime_env["env_vars"] = env_vars
    return runtime_env, passed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python ray_jobs/runtime_env_json.py", description=__doc__.split("\n")[0])
    p.add_argument("--file", default=str(DEFAULT_FILE), help="runtime_env YAML (default: ray_jobs/runtime_env.yaml)")
    p.add_argument("--working-dir", help="override working_dir (local folder or remote URI)")
    p.add_argument("--pass-env", action="append", metavar="NAME",
                   help=f"a non-secret variable to copy from this environment; repeatable "
                        f"(default: {', '.join(DEFAULT_PASS)})")
    p.add_argument("--pass-secret", action="append", default=[], metavar="NAME",
                   help="opt-in: copy a secret's value into the runtime env (visible in `ps` and `ray job list`)")
    p.add_argument("--names", action="store_true", help="print the names of the variables passed, not the JSON")
    args = p.parse_args(argv)
    try:
        runtime_env, passed = build(args.file, args.working_dir, tuple(args.pass_env or DEFAULT_PASS),
                                    tuple(args.pass_secret))
    except (OSError, ValueError) as exc:
        print(f"runtime_env_json: {exc}", file=sys.stderr)
        return 2
    print(" ".join(passed) if args.names else json.dumps(runtime_env, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
