#!/bin/bash
# Launches this ISO week's sweep: creates the RayJob cdb-sweep-<ISO year>-w<ISO week>
# from the template. Run by the cdb-sweep CronJob.
#   - The week is read from the clock once, here, and passed to cdb.sweep as
#     --period <ISO year>-W<ISO week> in place of the template's `--period week`: the sweep's
#     folder is that week's even when the driver starts (or a retry resubmits it) after
#     Monday 00:00 UTC, and the RayJob's name and the folder always agree.
#   - The name is fixed per week, so a second launch in the same week gets
#     AlreadyExists from the API server and changes nothing (no check-then-create race).
#   - An earlier week's sweep that is not Complete or Failed (Running past its 6-day
#     deadline, Suspended, ValidationFailed, ...) fails this launch loudly, naming it.
#   - Any kubectl error fails the launch; nothing is created on a guess.
# Env: POD_NAMESPACE, CDB_IMAGE (training image), TEMPLATE (RayJob template path).
set -euo pipefail
: "${POD_NAMESPACE:?}" "${CDB_IMAGE:?}" "${TEMPLATE:?}"

period=$(date -u +%G-W%V)          # e.g. 2026-W49: the folder cdb.sweep writes into
name="cdb-sweep-${period,,}"        # e.g. cdb-sweep-2026-w49 (object names are lower case)
if ! grep -q -e '--period week\b' "$TEMPLATE"; then
  echo "cdb-sweep: $TEMPLATE has no '--period week' in its entrypoint to fix to $period" >&2
  exit 1
fi

sweeps=$(kubectl get rayjobs -n "$POD_NAMESPACE" -l cdb.dev/sweep=weekly \
  -o jsonpath='{range .items[*]}{.metadata.name}={.status.jobDeploymentStatus}{"\n"}{end}')
stuck=$(printf '%s\n' "$sweeps" | grep -v -E "^${name}=|=(Complete|Failed)$" | grep . || true)
if [[ -n "$stuck" ]]; then
  echo "cdb-sweep: earlier sweep RayJob(s) not finished (name=jobDeploymentStatus):" >&2
  printf '  %s\n' $stuck >&2
  echo "cdb-sweep: not starting $name; inspect with kubectl describe rayjob, then delete or let it end" >&2
  exit 1
fi

# The template has `generateName: cdb-sweep-`, `--period week` and `image: cdb`: put the week's
# name, the week and the image kustomize resolved in their places.
if ! created=$(sed -e "s|^\([[:space:]]*\)generateName:[[:space:]]*cdb-sweep-[[:space:]]*\$|\1name: ${name}|" \
                   -e "s|--period week\b|--period ${period}|" \
                   -e "s|^\([[:space:]]*image:[[:space:]]*\)cdb[[:space:]]*\$|\1${CDB_IMAGE}|" "$TEMPLATE" \
               | kubectl create -n "$POD_NAMESPACE" -f - -o name 2>&1); then
  if [[ "$created" == *AlreadyExists* ]]; then
    echo "cdb-sweep: $name already exists: this week's sweep was launched before"
    exit 0
  fi
  echo "$created" >&2
  exit 1
fi
echo "$created"
