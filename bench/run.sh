#!/usr/bin/env bash
# Bounded loopback benchmark of a release `renkei` on one backend, with the workload of
# ../shared/bench-kit (same data generator, same phases). Prints a markdown row block.
#   usage: bench/run.sh sqlite|postgres [DATA_DIR]
#   needs: wrk, curl, bc, python3; a release build (cargo build --release -p renkei)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BACKEND=${1:-sqlite}; DATA=${2:-/tmp/renkei-bench-data}
ROOT=$(cd "$(dirname "$0")/.." && pwd); BIN=$ROOT/target/release/renkei; HERE=$ROOT/bench
KIT=${BENCH_KIT:-$ROOT/../shared/bench-kit}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p renkei"; exit 2; }
[ -d "$DATA/bundles_urn" ] || (P=500 K=19 PB=5 python3 "$KIT/gen.py" "$DATA" >/dev/null)
WORK=$(mktemp -d); PORT=${PORT:-18080}; B=http://127.0.0.1:$PORT/fhir
case $BACKEND in
  sqlite) DB=sqlite:$WORK/renkei.db ;;
  postgres) NAME=renkei_bench_$$; ADMIN=${RENKEI_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
            psql "$ADMIN" -qc "CREATE DATABASE $NAME" >/dev/null; DB=${ADMIN%/*}/$NAME$PG_URL_OPTIONS ;;
esac
cleanup() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true
  [ "$BACKEND" = postgres ] && psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
RENKEI_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT --database "$DB" > "$WORK/server.log" 2>&1 & SPID=$!
for _ in $(seq 1 100); do curl -sf "$B/metadata" >/dev/null && break; sleep 0.1; done
"$BIN" client add --database "$DB" --id bench --organization Organization/bench --scope "system/*.cruds" >/dev/null
export TOKEN=$("$BIN" token --database "$DB" --client-id bench --ttl 7200 | tail -n 1)
AUTH="Authorization: Bearer $TOKEN"
ingest() { local dir=$1 start end; start=$(date +%s.%N)
  ls "$dir"/*.json | xargs -P 2 -I{} curl -s -o /dev/null -w '%{http_code}\n' --max-time 120 -X POST \
    -H 'Content-Type: application/fhir+json' -H 'Prefer: return=minimal' -H "$AUTH" --data-binary @{} "$B" | sort | uniq -c >&2
  end=$(date +%s.%N); echo "$end - $start" | bc; }
COUNT=$(python3 -c "import json,glob;print(sum(len(json.load(open(f))['entry']) for f in glob.glob('$DATA/bundles_urn/*.json')))")
T=$(ingest "$DATA/bundles_urn"); echo "ingest_txn: $COUNT resources in $T s = $(echo "$COUNT / $T" | bc) res/s"
T=$(ingest "$DATA/bundles_batch"); echo "ingest_batch_put: $COUNT resources in $T s = $(echo "$COUNT / $T" | bc) res/s"
wrkrun() { wrk "$@" 2>&1 | grep -E 'Requests/sec|Non-2xx|50%|99%|Socket' | tr -s ' ' | paste -sd' '; }
wrk -t1 -c4 -d3s -s "$HERE/get.lua" "$B" -- "$DATA/reads.txt" /fhir >/dev/null 2>&1
for c in 1 8; do t=$(( c < 2 ? 1 : 2 ))
  echo "read c=$c: $(wrkrun -t$t -c$c -d10s --latency -s "$HERE/get.lua" "$B" -- "$DATA/reads.txt" /fhir)"
  echo "search c=$c: $(wrkrun -t$t -c$c -d10s --latency -s "$HERE/get.lua" "$B" -- "$DATA/searches.txt" /fhir)"
done
for c in 1 8; do t=$(( c < 2 ? 1 : 2 ))
  echo "create c=$c: $(wrkrun -t$t -c$c -d10s --latency -s "$HERE/post.lua" "$B/Observation" -- "$DATA/observation.json")"
done
echo "rss_kb: $(grep VmRSS /proc/$SPID/status | tr -s ' ' | cut -d' ' -f2)"
if [ "$BACKEND" = sqlite ]; then
  N=$(python3 -c "import sqlite3;c=sqlite3.connect('$WORK/renkei.db');print(c.execute('select count(*) from resources').fetchone()[0]);c.execute('PRAGMA wal_checkpoint(TRUNCATE)')")
  A=$(python3 -c "import sqlite3;print(sqlite3.connect('$WORK/renkei.db').execute('select count(*) from audit_events').fetchone()[0])")
  echo "audit events: $A"
  SZ=$(du -sb "$WORK" | cut -f1); echo "disk: $SZ bytes for $N resources = $(echo "$SZ / $N" | bc) B/resource (incl. audit trail)"
fi
