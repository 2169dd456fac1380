#!/usr/bin/env bash
# The 1M-resource runs of issue 3 (and the consent overhead of issue 4) on one Renkei backend:
# fresh database, one client per facility, load through the API, then the clinical searches,
# $everything and reads at 8 clients, owner vs consented facility. Bounded (every measurement
# has a duration); loopback only.
#   usage: bench/large.sh sqlite|postgres [DATA_DIR] [OUT_DIR]
#   output: OUT_DIR/{load,owner,pair-owner,consented}-BACKEND.{json,md}, plans-BACKEND.md
#   needs: a release build (cargo build --release -p renkei -p renkei-bench), psql for postgres
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BACKEND=${1:-sqlite}; DATA=${2:-/tmp/net10k}; OUT=${3:-/tmp/renkei-large}
ROOT=$(cd "$(dirname "$0")/.." && pwd); BIN=${BIN:-$ROOT/target/release/renkei}; RB=${RB:-$ROOT/target/release/renkei-bench}
[ -x "$BIN" ] && [ -x "$RB" ] || { echo "build first: cargo build --release -p renkei -p renkei-bench"; exit 2; }
[ -f "$DATA/manifest.json" ] || "$RB" generate --patients 10000 --facilities 8 --seed 1 --out "$DATA"
mkdir -p "$OUT"; WORK=$(mktemp -d); PORT=${PORT:-18500}; B=http://127.0.0.1:$PORT/fhir
# KEEP_SQLITE=DIR: use (or keep) DIR/renkei.db instead of a scratch file; an already loaded
# database there is measured again without reloading (same data, another build).
if [ "$BACKEND" = sqlite ] && [ -n "${KEEP_SQLITE:-}" ]; then mkdir -p "$KEEP_SQLITE"; rm -rf "$WORK"; WORK=$KEEP_SQLITE; fi
case $BACKEND in
  sqlite) DB=sqlite:$WORK/renkei.db; SIZE=$WORK/renkei.db ;;
  postgres) ADMIN=${RENKEI_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
            # KEEP_PG=NAME: measure an already loaded database NAME again (kept afterwards).
            if [ -n "${KEEP_PG:-}" ]; then NAME=$KEEP_PG; touch "$WORK/loaded"
            else NAME=renkei_large_$$; psql "$ADMIN" -qc "CREATE DATABASE $NAME" >/dev/null; fi
            DB=${ADMIN%/*}/$NAME$PG_URL_OPTIONS; SIZE=$DB ;;
esac
cleanup() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true
  [ "$BACKEND" = postgres ] && [ -z "${KEEP_PG:-}" ] && psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null
  [ -n "${KEEP_SQLITE:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
RENKEI_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT --database "$DB" > "$OUT/server-$BACKEND.log" 2>&1 & SPID=$!
for _ in $(seq 1 100); do curl -sf "$B/metadata" >/dev/null && break; sleep 0.2; done
register_facilities "$BIN" "$DB" "$DATA" "$WORK/tokens.json"
if [ -f "$WORK/loaded" ]; then
  echo "== $BACKEND: already loaded ($WORK)"
else
  echo "== $BACKEND: load $(date -u +%FT%TZ) load avg $(cut -d' ' -f1-3 /proc/loadavg)"
  "$RB" load --target "$B" --data "$DATA" --tokens "$WORK/tokens.json" --concurrency 2 --json "$OUT/load-$BACKEND.json"
  touch "$WORK/loaded"
fi
# PostgreSQL plans need statistics after a bulk load, and index-only scans need the visibility
# map (autovacuum would get there later; it is off on some test machines, where index-only
# scans then read the heap for every row).
[ "$BACKEND" = postgres ] && psql "$DB" -qc "VACUUM (ANALYZE)" >/dev/null
echo "== $BACKEND: query plans $(date -u +%FT%TZ)"
"$(dirname "$0")/explain.sh" "$BIN" "$DB" "$DATA" > "$OUT/plans-$BACKEND.md"
RUN=("$RB" run --target "$B" --data "$DATA" --tokens "$WORK/tokens.json" --concurrency 8 --duration ${DUR:-8s} --warmup 2s --label "renkei-$BACKEND" --server-pid "$SPID" --db "$SIZE")
"${RUN[@]}" --workload searches,everything,read --access owner --json "$OUT/owner-$BACKEND.json" --markdown "$OUT/owner-$BACKEND.md"
"${RUN[@]}" --workload searches,everything --access pair-owner --json "$OUT/pair-owner-$BACKEND.json" --markdown "$OUT/pair-owner-$BACKEND.md"
"${RUN[@]}" --workload searches,everything --access consented --json "$OUT/consented-$BACKEND.json" --markdown "$OUT/consented-$BACKEND.md"
echo "== done $(date -u +%FT%TZ) load avg $(cut -d' ' -f1-3 /proc/loadavg)"
