#!/bin/bash
# The preStop hook of every Ray container of the RayJobs in k8s/ (installed in the training image as
# /usr/local/bin/cdb-ray-prestop). KubeRay deletes a RayJob's Ray cluster without stopping the Ray job
# when it suspends the RayJob (Kueue preemption), passes its deadline or retries it; the kubelet runs
# this hook before it sends the container SIGTERM, within terminationGracePeriodSeconds.
#
#   cdb-ray-prestop head JOB_ID   stop the Ray job through this head's job API and wait until it has
#                                 stopped: cdb.train gets SIGTERM, its ranks checkpoint, it exits 75.
#                                 The token is the one KubeRay puts in the container (RAY_AUTH_TOKEN);
#                                 Ray's job supervisor kills the driver after RAY_JOB_STOP_WAIT_TIME_S.
#   cdb-ray-prestop worker        wait while this node runs Ray tasks or actors (processes titled
#                                 `ray::<name>`; idle pool workers are `ray::IDLE`): the training ranks
#                                 writing their part of the checkpoint, evaluation tasks. Talks to no
#                                 one: the head's Service goes away with the cluster.
# A job that already ended (or a node with nothing running) returns at once.
# PROC_DIR (default /proc) is where the worker looks for processes.
set -uo pipefail

ray_work_running() {
  local cmdline title
  for cmdline in "${PROC_DIR:-/proc}"/[0-9]*/cmdline; do
    title=$(tr '\0' ' ' < "$cmdline" 2>/dev/null) || continue
    if [[ $title == ray::* && $title != ray::IDLE* ]]; then
      return 0
    fi
  done
  return 1
}

case "${1:-}" in
  head)
    exec ray job stop --address http://127.0.0.1:8265 "${2:?usage: cdb-ray-prestop head JOB_ID}"
    ;;
  worker)
    while ray_work_running; do
      sleep 2
    done
    ;;
  *)
    echo "usage: cdb-ray-prestop head JOB_ID | worker" >&2
    exit 2
    ;;
esac
