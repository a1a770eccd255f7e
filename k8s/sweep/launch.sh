#!/bin/sh
# Launches one weekly sweep: creates a RayJob from the template unless a sweep
# RayJob created earlier is still running. Run by the cdb-sweep CronJob.
# Env: POD_NAMESPACE, CDB_IMAGE (training image), TEMPLATE (RayJob template path).
set -eu
: "${POD_NAMESPACE:?}" "${CDB_IMAGE:?}" "${TEMPLATE:?}"

active=$(kubectl get rayjobs -n "$POD_NAMESPACE" -l cdb.dev/sweep=weekly \
  -o jsonpath='{range .items[*]}{.metadata.name}={.status.jobDeploymentStatus}{"\n"}{end}' \
  | grep -v -E '=(Complete|Failed)$' | grep -c . || true)
if [ "${active:-0}" -gt 0 ]; then
  echo "cdb-sweep: $active sweep RayJob(s) still running; not starting another" >&2
  exit 0
fi

# The template says `image: cdb`; put the image kustomize resolved in its place.
sed "s|^\([[:space:]]*image:[[:space:]]*\)cdb[[:space:]]*\$|\1${CDB_IMAGE}|" "$TEMPLATE" \
  | kubectl create -n "$POD_NAMESPACE" -f - -o name
