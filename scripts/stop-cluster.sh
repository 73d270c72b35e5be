#!/usr/bin/env bash
# Stops the nodes started by start-cluster.sh (SIGTERM: graceful, they leave the cluster).
set -euo pipefail
marker="${TMPDIR:-/tmp}/emqx-ts-cluster.dir"
dir="${EMQX_CLUSTER_DIR:-$( [[ -f "$marker" ]] && cat "$marker" || true )}"
[[ -n "$dir" && -d "$dir" ]] || { echo "no cluster started by start-cluster.sh found" >&2; exit 0; }
pids=()
for f in "$dir"/node*.pid; do
  [[ -f "$f" ]] || continue
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; pids+=("$pid"); fi
  rm -f "$f"
done
for pid in "${pids[@]}"; do
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
done
rm -f "$marker"
echo "stopped ${#pids[@]} node(s); logs kept in $dir"
