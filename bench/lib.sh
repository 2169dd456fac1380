# Shared by the bench scripts (source it).

# Connection options of the databases the scripts create. PostgreSQL runs on this machine, over
# loopback, where TLS protects nothing: libpq's default (`sslmode=prefer`) still negotiates it,
# and encrypting every statement cost 13-22 % of the throughput (docs/BENCHMARKS.md, "TLS to a
# local PostgreSQL"). A deployment with PostgreSQL on another host keeps TLS in its URL.
PG_URL_OPTIONS=${PG_URL_OPTIONS-?sslmode=disable}

# register_facilities BIN DATABASE DATA_DIR TOKENS_FILE: one client per facility of the data
# set's manifest (so each facility's writes are its own), and a JSON map facility → token.
register_facilities() {
  local bin=$1 db=$2 data=$3 out=$4 sep="" f token
  echo "{" > "$out"
  for f in $(python3 -c "import json,sys;print(' '.join(x['id'] for x in json.load(open(sys.argv[1]))['facilities']))" "$data/manifest.json"); do
    "$bin" client add --database "$db" --id "bench-$f" --organization "Organization/$f" --scope "system/*.cruds" >/dev/null
    token=$("$bin" token --database "$db" --client-id "bench-$f" --ttl 7200 | tail -n 1)
    printf '%s"%s": "%s"\n' "$sep" "$f" "$token" >> "$out"; sep=","
  done
  echo "}" >> "$out"
}
