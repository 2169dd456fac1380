#!/usr/bin/env bash
# Issue 3, two measurements on one backend, each on fresh databases, bounded, loopback only:
#  1. flat scaling: the clinical searches at 1 client on ≈10k and ≈100k resources (same
#     generator, 100 and 1,000 patients); the p50 ratio should stay ≤ 1.3;
#  2. what indexing costs writes: the ≈100k set loaded through the API by the normal build and
#     by a build that stores no index rows (cargo feature unindexed-writes-benchmark), then
#     single creates at 8 clients, alternating A-B-A-B.
#   build: cargo build --release -p renkei -p renkei-bench --features renkei/unindexed-writes-benchmark
#          cp target/release/renkei /tmp/renkei-unindexed
#          cargo build --release -p renkei -p renkei-bench
#   usage: bench/scaling.sh sqlite|postgres [OUT_DIR]
#   PARTS="scaling writes" (default) runs both; PARTS=writes only the second.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BACKEND=${1:-sqlite}; OUT=${2:-/tmp/renkei-scaling}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/renkei}; RB=${RB:-$ROOT/target/release/renkei-bench}
UNINDEXED=${UNINDEXED:-/tmp/renkei-unindexed}; DUR=${DUR:-8s}; PORT=${PORT:-18700}
PARTS=${PARTS:-scaling writes}
B=http://127.0.0.1:$PORT/fhir; mkdir -p "$OUT"
for n in 100 1000; do
  [ -f "/tmp/net$n/manifest.json" ] || "$RB" generate --patients $n --facilities 8 --seed 1 --out "/tmp/net$n" >/dev/null
done
WORK=$(mktemp -d); SPID=""; NAME=""
ADMIN=${RENKEI_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
fresh_db() { # sets DB and SIZE for a new empty database called $1
  case $BACKEND in
    sqlite) DB=sqlite:$WORK/$1.db; SIZE=$WORK/$1.db ;;
    postgres) NAME=renkei_scaling_$1_$$; psql "$ADMIN" -qc "CREATE DATABASE $NAME" >/dev/null
              DB=${ADMIN%/*}/$NAME$PG_URL_OPTIONS; SIZE=$DB ;;
  esac
}
drop_db() { [ "$BACKEND" = postgres ] && psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null; true; }
start() { RENKEI_LOG=warn "$1" serve --listen 127.0.0.1:$PORT --database "$DB" > "$OUT/server.log" 2>&1 & SPID=$!
  for _ in $(seq 1 100); do curl -sf "$B/metadata" >/dev/null && break; sleep 0.2; done; }
stop() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; SPID=""; }
trap 'stop; drop_db; rm -rf "$WORK"' EXIT
# PostgreSQL plans need statistics after a bulk load (autovacuum would get there later).
analyze() { [ "$BACKEND" = postgres ] && psql "$DB" -qc "VACUUM (ANALYZE)" >/dev/null; true; }

# 1. Flat scaling.
case " $PARTS " in *" scaling "*) ;; *) SKIP_SCALING=1 ;; esac
for n in 100 1000; do
  [ -n "${SKIP_SCALING:-}" ] && break
  fresh_db "n$n"; start "$BIN"
  register_facilities "$BIN" "$DB" "/tmp/net$n" "$WORK/tokens.json"
  "$RB" load --target "$B" --data "/tmp/net$n" --tokens "$WORK/tokens.json" --concurrency 2 --json "$OUT/load-$BACKEND-n$n.json" | tail -1
  analyze
  "$RB" run --target "$B" --data "/tmp/net$n" --tokens "$WORK/tokens.json" --workload searches,everything,read \
    --concurrency 1 --duration "$DUR" --warmup 2s --label "$BACKEND-n$n" --server-pid "$SPID" --db "$SIZE" \
    --json "$OUT/scaling-$BACKEND-n$n.json" --markdown "$OUT/scaling-$BACKEND-n$n.md" >/dev/null
  stop; drop_db
done
[ -z "${SKIP_SCALING:-}" ] && grep -h "| $BACKEND-n" "$OUT"/scaling-"$BACKEND"-n*.md

# 2. Writes with vs without indexing (needs the unindexed build).
case " $PARTS " in *" writes "*) ;; *) exit 0 ;; esac
if [ -x "$UNINDEXED" ]; then
  for round in 1 2; do
    for variant in indexed unindexed; do
      if [ $variant = indexed ]; then S=$BIN; else S=$UNINDEXED; fi
      fresh_db "$variant$round"; start "$S"
      register_facilities "$BIN" "$DB" /tmp/net1000 "$WORK/tokens.json"
      echo "== $variant round $round"
      "$RB" load --target "$B" --data /tmp/net1000 --tokens "$WORK/tokens.json" --concurrency 2 --json "$OUT/write-$BACKEND-$variant-r$round.json" | tail -1
      "$RB" run --target "$B" --data /tmp/net1000 --tokens "$WORK/tokens.json" --workload create,transaction \
        --concurrency 8 --duration "$DUR" --warmup 1s --label "$BACKEND-$variant-r$round" \
        --json "$OUT/writes-$BACKEND-$variant-r$round.json" --markdown "$OUT/writes-$BACKEND-$variant-r$round.md" >/dev/null
      stop; drop_db
    done
  done
  grep -h "| $BACKEND-" "$OUT"/writes-"$BACKEND"-*.md
else
  echo "no $UNINDEXED: skipping writes with vs without indexing"
fi
