#!/usr/bin/env bash
# Audit on vs off (issue 5): one SQLite database served alternately by the normal build and by
# the benchmark build that does not audit reads, A-B-A-B, same workloads. Bounded, loopback.
#   build: cargo build --release -p renkei -p renkei-bench --features renkei/unaudited-reads-benchmark
#          cp target/release/renkei /tmp/renkei-unaudited
#          cargo build --release -p renkei -p renkei-bench && cp target/release/renkei /tmp/renkei-audited
#   usage: bench/audit-ab.sh [DATA_DIR]   (DATA_DIR from `renkei-bench generate`, default /tmp/net500)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RB=${RB:-$ROOT/target/release/renkei-bench}; ON=${ON:-/tmp/renkei-audited}; OFF=${OFF:-/tmp/renkei-unaudited}
DATA=${1:-/tmp/net500}; OUT=${OUT:-/tmp/renkei-audit-ab}; DUR=${DUR:-5s}
[ -f "$DATA/manifest.json" ] || "$RB" generate --patients 500 --facilities 8 --seed 1 --out "$DATA"
W=$(mktemp -d); mkdir -p "$OUT"; DB=sqlite:$W/renkei.db; PORT=${PORT:-18600}; B=http://127.0.0.1:$PORT/fhir
start() { RENKEI_LOG=warn "$1" serve --listen 127.0.0.1:$PORT --database "$DB" > "$W/server.log" 2>&1 & SPID=$!
  for _ in $(seq 1 100); do curl -sf "$B/metadata" >/dev/null && break; sleep 0.1; done; }
stop() { kill "$SPID"; wait "$SPID" 2>/dev/null || true; }
trap 'kill "${SPID:-0}" 2>/dev/null || true; rm -rf "$W"' EXIT
start "$ON"
register_facilities "$ON" "$DB" "$DATA" "$W/tokens.json"
"$RB" load --target "$B" --data "$DATA" --tokens "$W/tokens.json" --concurrency 2 | tail -1
stop
for round in 1 2; do
  for variant in on off; do
    if [ "$variant" = on ]; then start "$ON"; else start "$OFF"; fi
    "$RB" run --target "$B" --data "$DATA" --tokens "$W/tokens.json" --workload read,search-lab-trend \
      --concurrency "${CONC:-1,8,32}" --duration "$DUR" --warmup 1s --label "audit-$variant-r$round" \
      --json "$OUT/audit-$variant-r$round.json" --markdown "$OUT/audit-$variant-r$round.md" >/dev/null
    stop
  done
done
grep -h '| audit-' "$OUT"/audit-*.md
