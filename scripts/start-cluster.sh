#!/usr/bin/env bash
# Starts a 3-node emqx-ts cluster on loopback (static discovery), from dist/ (built if missing).
#   node i (1..3): MQTT 1882+i, cluster 8081+10*(i-1), metrics 8082+10*(i-1), REST 18083+10*(i-1)
# Logs, pids and data dirs go under $EMQX_CLUSTER_DIR (default: a temp dir remembered in
# ${TMPDIR:-/tmp}/emqx-ts-cluster.dir, which stop-cluster.sh reads). Extra arguments are passed
# to every node, e.g. `npm run cluster:start -- --log-level debug`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
marker="${TMPDIR:-/tmp}/emqx-ts-cluster.dir"
if [[ -f "$marker" ]] && [[ -d "$(cat "$marker")" ]]; then
  for pid in "$(cat "$marker")"/node*.pid; do
    [[ -f "$pid" ]] && kill -0 "$(cat "$pid")" 2>/dev/null && { echo "cluster already running (see $(cat "$marker")); npm run cluster:stop first" >&2; exit 1; }
  done
fi
dir="${EMQX_CLUSTER_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/emqx-ts-cluster.XXXXXX")}"
mkdir -p "$dir"
echo "$dir" > "$marker"
[[ -f "$root/dist/src/main.js" ]] || (cd "$root" && npm run build >/dev/null)
seeds="127.0.0.1:8081,127.0.0.1:8091,127.0.0.1:8101"
for i in 1 2 3; do
  off=$((10 * (i - 1)))
  mkdir -p "$dir/data$i"
  node "$root/dist/src/main.js" \
    --name "emqx-ts$i@127.0.0.1" \
    --host 127.0.0.1 --port $((1882 + i)) \
    --metrics.host 127.0.0.1 --metrics.port $((8082 + off)) \
    --api.host 127.0.0.1 --api.port $((18083 + off)) \
    --node.data_dir "$dir/data$i" \
    --cluster.discovery static --cluster.static.seeds "$seeds" \
    --cluster.listen_host 127.0.0.1 --cluster.port $((8081 + off)) --cluster.advertise 127.0.0.1 \
    "$@" >"$dir/node$i.log" 2>&1 &
  echo $! >"$dir/node$i.pid"
done
# Ready when every node answers /readyz.
for i in 1 2 3; do
  port=$((8082 + 10 * (i - 1)))
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null || { echo "node $i exited; see $dir/node$i.log" >&2; tail -5 "$dir/node$i.log" >&2; exit 1; }
    sleep 0.1
  done
done
echo "3 nodes running: MQTT 1883/1884/1885, cluster 8081/8091/8101, metrics 8082/8092/8102, REST 18083/18093/18103"
echo "logs and pids in $dir (REST API keys in $dir/data*/api_key)"
