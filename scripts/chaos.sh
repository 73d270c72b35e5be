#!/usr/bin/env bash
# Chaos with loss accounting (bench/chaos.ts): 3 nodes on loopback, QoS 1 publishers and
# persistent subscribers on each, a random node killed with -9 and restarted periodically.
#   bash scripts/chaos.sh [--duration 60] [--every 10] [--down 3] [--rate 100] [--down-after 5]
# Exit 1 when an acked message that had to arrive was lost.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[[ -f dist/src/main.js ]] || npm run build >/dev/null
exec node --import tsx bench/chaos.ts "$@"
