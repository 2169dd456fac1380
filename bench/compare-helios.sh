#!/usr/bin/env bash
# Side by side with Helios FHIR Server on SQLite, same machine, same data, alternating runs
# (Renkei, Helios, Renkei, Helios). Results in $OUT (default /tmp/renkei-compare).
#   needs: hfs on PATH (cargo install helios-hfs --version 0.2.7 --locked
#          --no-default-features --features R4,sqlite,postgres), ../shared/bench-kit
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); KIT=${BENCH_KIT:-$ROOT/../shared/bench-kit}
DATA=${DATA:-/tmp/renkei-bench-data}; OUT=${OUT:-/tmp/renkei-compare}; mkdir -p "$OUT"
[ -d "$DATA/bundles_urn" ] || (P=500 K=19 PB=5 python3 "$KIT/gen.py" "$DATA" >/dev/null)
helios() {
  local dir; dir=$(mktemp -d)
  cp "$ROOT/fixtures/r4-definitions/search-parameters.json" "$dir/search-parameters-r4.json"
  hfs --host 127.0.0.1 --port 8090 --database-url "$dir/hfs.db" --data-dir "$dir" > "$dir/log" 2>&1 & local pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:8090/metadata >/dev/null && break; sleep 0.2; done
  DATA=$DATA OUT=$OUT/helios-$1 "$KIT/run_peer.sh" helios http://127.0.0.1:8090 $pid
  du -sb "$dir" | cut -f1 > "$OUT/helios-$1/disk_bytes"
  kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
}
for round in 1 2; do
  "$ROOT/bench/run.sh" sqlite "$DATA" | tee "$OUT/renkei-$round.txt"
  helios "$round"
done
