#!/usr/bin/env bash
# Submit a cdb job to a running Ray cluster, with MLFLOW_TRACKING_URI (and HF_TOKEN_PATH, a token
# file's path on the cluster) taken from this shell's environment. Secrets are not passed: the job
# reads HF_TOKEN and the MLflow credentials from the cluster (k8s Secrets on the Ray pods).
#
#   bash ray_jobs/submit.sh --address http://HEAD:8265 -- --scale 13b --output-dir /shared/runs/13b
#   bash ray_jobs/submit.sh --address http://HEAD:8265 --module cdb.sweep -- --scales smol-135m,7b --methods contrastive
#
# Options before `--`:
#   --address URL        Ray dashboard address (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)
#   --module NAME        python module to run (default: cdb.train)
#   --runtime-env FILE   runtime_env YAML to start from (default: ray_jobs/runtime_env.yaml)
#   --working-dir DIR    override the YAML's working_dir (default: the repository root)
#   --pass-env NAME      also copy NAME (not a secret) from this environment into the job; repeatable
#   --pass-secret NAME   opt-in: copy a secret's VALUE into the job's runtime env (warns: it shows
#                        in `ps` while this runs and in `ray job list` for as long as the job is kept)
#   anything else        passed to `ray job submit` as is (--no-wait, --submission-id ID,
#                        --entrypoint-num-cpus N, --metadata-json ...)
# Everything after `--` goes to `python -m MODULE`.
#
# The YAML and the variables are merged by ray_jobs/runtime_env_json.py into one
# `--runtime-env-json` (ray job submit accepts only one of --runtime-env/--runtime-env-json).
# Exit status: that of `ray job submit` (0: the job SUCCEEDED, 1: it failed; with --no-wait, 0
# once submitted), 2 for a usage error here.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

address="${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-}}"
module="cdb.train"
runtime_env="$here/runtime_env.yaml"
working_dir=""
pass_env=(MLFLOW_TRACKING_URI HF_TOKEN_PATH)
pass_secret=()
submit_opts=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; break ;;
    --address) address="${2:?--address needs a value}"; shift 2 ;;
    --address=*) address="${1#*=}"; shift ;;
    --module) module="${2:?--module needs a value}"; shift 2 ;;
    --module=*) module="${1#*=}"; shift ;;
    --runtime-env) runtime_env="${2:?--runtime-env needs a value}"; shift 2 ;;
    --runtime-env=*) runtime_env="${1#*=}"; shift ;;
    --working-dir) working_dir="${2:?--working-dir needs a value}"; shift 2 ;;
    --working-dir=*) working_dir="${1#*=}"; shift ;;
    --pass-env) pass_env+=("${2:?--pass-env needs a value}"); shift 2 ;;
    --pass-env=*) pass_env+=("${1#*=}"); shift ;;
    --pass-secret) pass_secret+=("${2:?--pass-secret needs a value}"); shift 2 ;;
    --pass-secret=*) pass_secret+=("${1#*=}"); shift ;;
    --runtime-env-json|--runtime-env-json=*)
      echo "submit.sh: --runtime-env-json is built here; edit $runtime_env or use --pass-env" >&2; exit 2 ;;
    -h|--help) usage; exit 0 ;;
    *) submit_opts+=("$1"); shift ;;
  esac
done
if [[ -z "$address" ]]; then
  echo "submit.sh: no Ray address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS" >&2
  exit 2
fi

# The repo's venv when there is one, else whatever is on PATH.
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi
ray_cli="${RAY_CLI:-}"
if [[ -z "$ray_cli" ]]; then
  if command -v ray >/dev/null 2>&1; then ray_cli="ray"
  elif [[ -x "$repo/.venv/bin/ray" ]]; then ray_cli="$repo/.venv/bin/ray"
  else echo "submit.sh: the ray CLI is not on PATH (pip install 'ray[default]==2.60.0')" >&2; exit 2
  fi
fi

helper_args=(--file "$runtime_env")
[[ -n "$working_dir" ]] && helper_args+=(--working-dir "$working_dir")
for name in "${pass_env[@]}"; do helper_args+=(--pass-env "$name"); done
for name in ${pass_secret[@]+"${pass_secret[@]}"}; do
  helper_args+=(--pass-secret "$name")
  echo "submit.sh: WARNING: --pass-secret $name puts its value on the command line of \`ray job submit\`" \
       "(visible in ps) and in the job's stored runtime env (returned by \`ray job list\`);" \
       "prefer a cluster-side Secret" >&2
done

# Kept in shell variables only: no temp file, no `set -x`, values never printed. A refused name
# (a secret given to --pass-env) stops here with the helper's message and exit status 2.
runtime_env_json="$("$python" "$here/runtime_env_json.py" "${helper_args[@]}")" || exit 2
passed="$("$python" "$here/runtime_env_json.py" "${helper_args[@]}" --names)" || exit 2
echo "[submit] $address: python -m $module $* (passing from this environment: ${passed:-nothing})" >&2

exec "$ray_cli" job submit --address "$address" --runtime-env-json "$runtime_env_json" \
  ${submit_opts[@]+"${submit_opts[@]}"} -- python -m "$module" "$@"
