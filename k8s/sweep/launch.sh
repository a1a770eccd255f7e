#!/bin/bash
# Launches this ISO week's sweep: creates the RayJob cdb-sweep-<ISO year>-w<ISO week>
# from the template. Run by the cdb-sweep CronJob.
#   - The name is fixed per week, so a second launch in the same week gets
#     AlreadyExists from the API server and changes nothing (no check-then-create race).
#   - An earlier week's sweep that is not Complete or Failed (Running past its 6-day
#     deadline, Suspended, ValidationFailed, ...) fails this launch loudly, naming it.
#   - Any kubectl error fails the launch; nothing is created on a guess.
# Env: POD_NAMESPACE, CDB_IMAGE (training image), TEMPLATE (RayJob template path).
set -euo pipefail
: "${POD_NAMESPACE:?}" "${CDB_IMAGE:?}" "${TEMPLATE:?}"

name="cdb-sweep-$(date -u +%G-w%V)"

sweeps=$(kubectl get rayjobs -n "$POD_NAMESPACE" -l cdb.dev/sweep=weekly \
  -o jsonpath='{range .items[*]}{.metadata.name}={.status.jobDeploymentStatus}{"\n"}{end}')
stuck=$(printf '%s\n' "$sweeps" | grep -v -E "^${name}=|=(Complete|Failed)$" | grep . || true)
if [[ -n "$stuck" ]]; then
  echo "cdb-sweep: earlier sweep RayJob(s) not finished (name=jobDeploymentStatus):" >&2
  printf '  %s\n' $stuck >&2
  echo "cdb-sweep: not starting $name; inspect with kubectl describe rayjob, then delete or let it end" >&2
  exit 1
fi

# The template has `generateName: cdb-sweep-` and `image: cdb`: put the week's name and
# the image kustomize resolved in their places.
if ! created=$(sed -e "s|^\([[:space:]]*\)generateName:[[:space:]]*cdb-sweep-[[:space:]]*\$|\1name: ${name}|" \
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
