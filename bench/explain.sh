#!/usr/bin/env bash
# The query plans of the benchmark queries (issue 3), as markdown: each query of the
# `renkei-bench run` search workloads and `$everything`, for a consented pair's patient, planned
# by `renkei explain` on a loaded database, unrestricted and as the consented facility (consent
# predicate included). PostgreSQL plans come from EXPLAIN ANALYZE (the statement runs).
#   usage: bench/explain.sh BIN DATABASE DATA_DIR > plans.md
set -euo pipefail
BIN=$1; DB=$2; DATA=$3
mapfile -t Q < <(python3 - "$DATA/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
pair = m["consented_pairs"][0]
s = next(x for x in m["samples"] if x["id"] == pair["patient"])
# the sample with the most CT studies and active prescriptions keeps those plans non-trivial
ct = max(m["samples"], key=lambda x: (x["ct_studies"], x["active_meds"]))
lab = s["labs"][0]
print(pair["consented"])
print(f"Observation?patient={s['id']}&code={lab['system']}|{lab['code']}&_sort=-date")
print(f"MedicationRequest?patient={ct['id']}&status=active")
print(f"Patient?family={s['family_kanji']}&birthdate={s['birthdate']}")
print(f"ImagingStudy?patient={ct['id']}&modality=CT")
print(f"Observation?subject:Patient.identifier={s['identifier_system']}|{s['identifier_value']}")
print(f"Patient/{s['id']}/$everything")
EOF
)
FACILITY=${Q[0]}
for q in "${Q[@]:1}"; do
  for who in "" "Organization/$FACILITY"; do
    echo "#### \`$q\` $(if [ -n "$who" ]; then echo "as $who"; else echo unrestricted; fi)"
    echo '```'
    if [ -n "$who" ]; then args=(--organization "$who"); else args=(); fi
    RENKEI_LOG=warn "$BIN" explain --database "$DB" "${args[@]}" "$q" | sed -n '/^-- plan/,$p'
    echo '```'
  done
done
