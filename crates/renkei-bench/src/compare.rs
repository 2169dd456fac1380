//! Side by side on this machine: Renkei on SQLite and on PostgreSQL (and, given a benchmark
//! build, Renkei on SQLite without read audit), Helios FHIR Server on SQLite and on PostgreSQL,
//! each on a fresh database, the same generated data loaded through the API, the same workloads
//! run in alternation (A, B, C, A, B, C, …), plus nginx serving one static Patient as the HTTP
//! ceiling of reads; medians over the rounds, written into the generated section of
//! `docs/BENCHMARKS.md` with the ratios against the goals of the issues. Builds nothing: it
//! expects `target/release/renkei` and, optionally, an unaudited Renkei build, `hfs` and nginx.

mod servers;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Target;
use crate::generate::{generate, GenerateOptions, Manifest};
use crate::load::{load, LoadResult};
use crate::report::{db_bytes, rss_kib, Machine};
use crate::run::{measure, Phase};
use crate::stats::{median, Summary};
use crate::workload::{pool, Access, Workload};
use crate::Error;

pub use servers::Kind;
use servers::{start, Executables, Running, Software};

pub const DOC_BEGIN: &str = "<!-- renkei-bench compare: generated section, begin -->";
pub const DOC_END: &str = "<!-- renkei-bench compare: generated section, end -->";

#[derive(Debug, Clone, clap::Args)]
pub struct CompareOptions {
    /// Seconds-long run on a tiny data set (checks the whole pipeline; writes no doc unless
    /// --doc is given).
    #[arg(long)]
    pub smoke: bool,
    /// The Renkei binary (a release build).
    #[arg(long, default_value = "target/release/renkei")]
    pub renkei: PathBuf,
    /// A second Renkei binary built with `--features renkei/unaudited-reads-benchmark` (writes
    /// no AuditEvent for reads), run as renkei-sqlite-unaudited, owner workloads only, for the
    /// audit on/off read ratio of issue 5. Without it that server is skipped (and said so).
    #[arg(long)]
    pub renkei_unaudited: Option<PathBuf>,
    /// The Helios binary (default: ~/.cargo/bin/hfs, then hfs on PATH); helios-sqlite and
    /// helios-postgres are skipped (and said so) when missing.
    #[arg(long, env = "HFS_BIN")]
    pub hfs: Option<PathBuf>,
    /// nginx, run as nginx-static: one static Patient JSON for every read (the read workload
    /// only, no data loaded), the static-file ceiling of issue 7. Default: /usr/sbin/nginx,
    /// then nginx on PATH; skipped (and said so) when missing.
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Servers to run, in alternation order: renkei-sqlite, renkei-sqlite-unaudited,
    /// renkei-postgres, helios-sqlite, helios-postgres, nginx-static. Those whose executable is
    /// missing are skipped and listed as not run.
    #[arg(
        long,
        default_value = "renkei-sqlite,renkei-sqlite-unaudited,renkei-postgres,helios-sqlite,helios-postgres,nginx-static"
    )]
    pub servers: String,
    /// Data set directory (generated there if it holds none).
    #[arg(long, default_value = "/tmp/renkei-bench-data")]
    pub data: PathBuf,
    #[arg(long, default_value_t = 500)]
    pub patients: usize,
    #[arg(long, default_value_t = 8)]
    pub facilities: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "all")]
    pub workload: String,
    #[arg(long, default_value = "1,8")]
    pub concurrency: String,
    /// Measured seconds per workload, concurrency and round (capped at 600).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Rounds of alternation; medians are taken over them.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Bundles in flight while loading.
    #[arg(long, default_value_t = 2)]
    pub load_concurrency: usize,
    /// PostgreSQL admin URL (a database per PostgreSQL server, Renkei's and Helios', is created
    /// there and dropped afterwards).
    #[arg(
        long,
        env = "RENKEI_TEST_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub pg_admin_url: String,
    /// First TCP port (one per server).
    #[arg(long, default_value_t = 18400)]
    pub port: u16,
    /// Write the generated section of this markdown file.
    #[arg(long)]
    pub doc: Option<PathBuf>,
    /// Also write every result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The R4 search-parameter bundle Helios needs in its data directory (both backends).
    #[arg(long, default_value = "fixtures/r4-definitions/search-parameters.json")]
    pub search_parameters: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ServerResult {
    pub server: String,
    pub load: LoadResult,
    pub rss_kib_after_load: Option<u64>,
    pub rss_kib_end: Option<u64>,
    pub db_bytes_after_load: Option<u64>,
    pub db_bytes_end: Option<u64>,
    /// (workload, access, concurrency) → one summary per round.
    pub runs: BTreeMap<String, Vec<Summary>>,
    /// nginx-static: the size of the one response it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_response_bytes: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CompareResult {
    pub started: String,
    pub machine: Machine,
    pub command: String,
    pub data: String,
    pub patients: usize,
    pub resources: usize,
    pub rounds: usize,
    pub duration_s: f64,
    pub servers: Vec<ServerResult>,
    pub skipped: Vec<String>,
}

fn key(w: Workload, access: &Access, c: usize) -> String {
    format!("{}|{}|{}", w.name(), access, c)
}

#[allow(clippy::too_many_lines)]
pub async fn compare(mut opts: CompareOptions, invocation: String) -> Result<(), Error> {
    if opts.smoke {
        opts.patients = 16;
        opts.facilities = 3;
        opts.duration = opts.duration.min(0.3);
        opts.warmup = 0.0;
        opts.rounds = 1;
        opts.concurrency = "1,2".into();
        if opts.data == Path::new("/tmp/renkei-bench-data") {
            opts.data = std::env::temp_dir()
                .join(format!("renkei-bench-compare-smoke-{}", std::process::id()));
        }
    }
    if !opts.renkei.is_file() {
        return Err(Error::Usage(format!(
            "{} not found: build it first (cargo build --release -p renkei)",
            opts.renkei.display()
        )));
    }
    let workloads = Workload::parse_list(&opts.workload)?;
    let executables = Executables::find(&opts);
    let mut kinds: Vec<(Kind, PathBuf)> = Vec::new();
    let mut skipped = Vec::new();
    for label in opts.servers.split(',').filter(|s| !s.trim().is_empty()) {
        let kind = Kind::parse(label)?;
        if kind.plans(&workloads, true).is_empty() {
            skipped.push(format!(
                "{}: it measures only the read workload, which --workload leaves out",
                kind.label()
            ));
            continue;
        }
        match executables.for_kind(kind) {
            Ok(executable) => kinds.push((kind, executable.to_path_buf())),
            Err(reason) => skipped.push(format!("{}: {reason}", kind.label())),
        }
    }
    let levels: Vec<usize> = opts
        .concurrency
        .split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .ok()
                .filter(|c| (1..=512).contains(c))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Usage(format!("bad --concurrency {}", opts.concurrency)))?;
    let duration = Duration::from_secs_f64(opts.duration.clamp(0.05, 600.0));
    let warmup = Duration::from_secs_f64(opts.warmup.clamp(0.0, 600.0));

    let manifest = if opts.data.join("manifest.json").exists() {
        Manifest::read(&opts.data)?
    } else {
        eprintln!(
            "generating {} patients into {}",
            opts.patients,
            opts.data.display()
        );
        generate(&GenerateOptions::new(
            opts.patients,
            opts.facilities,
            opts.seed,
            &opts.data,
        ))?
    };

    let mut result = CompareResult {
        started: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        machine: Machine::describe(),
        command: invocation,
        data: opts.data.display().to_string(),
        patients: manifest.patients,
        resources: manifest.resources,
        rounds: opts.rounds.max(1),
        duration_s: duration.as_secs_f64(),
        skipped,
        ..CompareResult::default()
    };
    let mut servers: Vec<(Running, ServerResult)> = Vec::new();
    for (i, (kind, executable)) in kinds.iter().enumerate() {
        eprintln!("== {}: start", kind.label());
        let port = opts.port + i as u16;
        let running = match start(*kind, executable, &opts, port, &manifest).await {
            Ok(r) => r,
            Err(e) => {
                result.skipped.push(format!("{}: {e}", kind.label()));
                eprintln!("   skipped: {e}");
                continue;
            }
        };
        let loaded = if kind.loads_data() {
            load_into(&running, &opts, manifest.resources).await?
        } else {
            LoadResult::default()
        };
        let sr = ServerResult {
            server: kind.label().into(),
            load: loaded,
            rss_kib_after_load: rss_kib(running.pid()),
            db_bytes_after_load: running.database.as_deref().and_then(db_bytes),
            static_response_bytes: running.static_response_bytes,
            ..ServerResult::default()
        };
        servers.push((running, sr));
    }

    for round in 0..result.rounds {
        for (running, sr) in &mut servers {
            eprintln!("== round {} on {}", round + 1, running.kind.label());
            let target = Target::new(&running.base, false, 64)?;
            let plans = running
                .kind
                .plans(&workloads, !manifest.consented_pairs.is_empty());
            for (w, access) in plans {
                let p = match pool(w, &manifest, &running.tokens, &access, 5000) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("   {w} ({access}): {e}");
                        continue;
                    }
                };
                for c in &levels {
                    let phase = Phase {
                        concurrency: *c,
                        duration,
                        warmup,
                        rate: None,
                        seed: manifest.seed + round as u64,
                    };
                    let s = measure(&target, &p, &phase).await;
                    eprintln!(
                        "   {:<22} {:<10} c={:<3} {:>7.0} req/s p50 {:>7.2} ms p99 {:>7.2} ms errors {} empty {}",
                        w.name(), access.to_string(), c, s.throughput, s.p50_ms, s.p99_ms, s.errors, s.empty
                    );
                    sr.runs.entry(key(w, &access, *c)).or_default().push(s);
                }
            }
        }
    }
    for (running, sr) in &mut servers {
        sr.rss_kib_end = rss_kib(running.pid());
        sr.db_bytes_end = running.database.as_deref().and_then(db_bytes);
    }
    let done: Vec<ServerResult> = servers.into_iter().map(|(_, sr)| sr).collect();
    result.servers = done;

    let md = markdown(&result, &workloads, &levels);
    println!("{md}");
    if let Some(path) = &opts.json {
        let text = serde_json::to_vec_pretty(&result).map_err(|e| Error::json(path, e))?;
        fs::write(path, text).map_err(|e| Error::io(path, e))?;
    }
    let doc = opts
        .doc
        .clone()
        .or_else(|| (!opts.smoke).then(|| PathBuf::from("docs/BENCHMARKS.md")));
    if let Some(path) = doc {
        replace_section(&path, &md)?;
        eprintln!("wrote the generated section of {}", path.display());
    }
    if opts.smoke {
        let _ = fs::remove_dir_all(&opts.data);
        let bad: Vec<String> = result
            .servers
            .iter()
            .filter(|s| s.load.failed_bundles > 0 || s.runs.is_empty())
            .map(|s| s.server.clone())
            .collect();
        if result.servers.is_empty() {
            return Err(Error::Smoke("no server ran".into()));
        }
        if !bad.is_empty() {
            return Err(Error::Smoke(format!("servers failed: {}", bad.join(", "))));
        }
    }
    Ok(())
}

/// Loads the data set through the API, each facility's Bundles with its token.
async fn load_into(
    running: &Running,
    opts: &CompareOptions,
    resources: usize,
) -> Result<LoadResult, Error> {
    eprintln!("   loading {resources} resources");
    let target = Target::new(&running.base, false, 64)?;
    let loaded = load(
        &target,
        &opts.data,
        &running.tokens,
        opts.load_concurrency,
        false,
    )
    .await?;
    eprintln!(
        "   loaded {} resources in {:.1} s: {:.0}/s ({} bundles failed{})",
        loaded.resources,
        loaded.seconds,
        loaded.resources_per_s,
        loaded.failed_bundles,
        loaded
            .first_error
            .as_deref()
            .map(|e| format!("; first: {e}"))
            .unwrap_or_default()
    );
    Ok(loaded)
}

/// Median summary over rounds.
fn med(runs: &[Summary]) -> Summary {
    let pick = |f: fn(&Summary) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Summary {
        requests: runs.iter().map(|s| s.requests).sum(),
        errors: runs.iter().map(|s| s.errors).sum(),
        empty: runs.iter().map(|s| s.empty).sum(),
        elapsed_s: runs.iter().map(|s| s.elapsed_s).sum(),
        throughput: pick(|s| s.throughput),
        p50_ms: pick(|s| s.p50_ms),
        p95_ms: pick(|s| s.p95_ms),
        p99_ms: pick(|s| s.p99_ms),
        max_ms: pick(|s| s.max_ms),
        mean_ms: pick(|s| s.mean_ms),
        first_error: runs.iter().find_map(|s| s.first_error.clone()),
    }
}

fn get<'a>(
    r: &'a CompareResult,
    server: &str,
    w: Workload,
    access: &Access,
    c: usize,
) -> Option<Summary> {
    let s = r.servers.iter().find(|s| s.server == server)?;
    let runs: &'a Vec<Summary> = s.runs.get(&key(w, access, c))?;
    Some(med(runs))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

fn mb(kib: Option<u64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.0} MB", k as f64 / 1024.0))
}

#[allow(clippy::too_many_lines)]
pub fn markdown(r: &CompareResult, workloads: &[Workload], levels: &[usize]) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "### Side by side, generated by `renkei-bench compare` ({})\n\n",
        r.started
    ));
    o.push_str(&format!(
        "Machine: {} vCPU, {} (kernel {}, load at start {}), commit `{}`. Data: {} patients, {} resources \
         (`renkei-bench generate`, {}), loaded through the API with one token per facility. \
         {} round(s) in alternation, {:.0} s per measurement, medians. Load generator on the same cores.\n\n",
        r.machine.nproc, r.machine.cpu, r.machine.kernel, r.machine.loadavg, r.machine.git_commit,
        r.patients, r.resources, r.data, r.rounds, r.duration_s
    ));
    o.push_str(&format!("Command: `{}`\n\n", r.command));
    for s in &r.skipped {
        o.push_str(&format!("- Not run: {s}\n"));
    }
    if !r.skipped.is_empty() {
        o.push('\n');
    }
    o.push_str("Renkei decides consent and writes a durable AuditEvent on every request; Helios has neither (no access control, no audit).");
    if ran(r, Kind::RenkeiSqliteUnaudited).is_some() {
        o.push_str(" `renkei-sqlite-unaudited` is the benchmark-only build (`--features renkei/unaudited-reads-benchmark`) that writes no AuditEvent for reads: the baseline of the audit-cost ratio, run with the owner's token only.");
    }
    if let Some(nginx) = ran(r, Kind::NginxStatic) {
        let size = nginx
            .static_response_bytes
            .map_or(String::new(), |b| format!(" ({b} bytes)"));
        o.push_str(&format!(
            " `nginx-static` is nginx answering every read with one static Patient of the data set{size}: no data loaded, no token, no database; the ceiling of HTTP on this machine, run for `read` only."
        ));
    }
    o.push_str("\n\n");
    let loaded: Vec<&ServerResult> = r
        .servers
        .iter()
        .filter(|s| kind_of(s).is_none_or(Kind::loads_data))
        .collect();
    if !loaded.is_empty() {
        o.push_str("| server | ingest res/s (all / clinical) | failed bundles | RSS after load / end | DB after load / end | bytes per resource |\n|---|---|---|---|---|---|\n");
    }
    for s in &loaded {
        let per = s.db_bytes_end.map_or("—".into(), |b| {
            format!("{:.1} KB", b as f64 / 1024.0 / r.resources.max(1) as f64)
        });
        o.push_str(&format!(
            "| {} | {:.0} / {:.0} | {} | {} / {} | {} / {} | {} |\n",
            s.server,
            s.load.resources_per_s,
            s.load.clinical_resources_per_s,
            s.load.failed_bundles,
            mb(s.rss_kib_after_load),
            mb(s.rss_kib_end),
            s.db_bytes_after_load.map_or("—".into(), |b| format!(
                "{:.0} MB",
                b as f64 / 1_048_576.0
            )),
            s.db_bytes_end.map_or("—".into(), |b| format!(
                "{:.0} MB",
                b as f64 / 1_048_576.0
            )),
            per
        ));
    }
    if !loaded.is_empty() {
        o.push('\n');
    }
    let names: Vec<&str> = r.servers.iter().map(|s| s.server.as_str()).collect();
    o.push_str("| workload | access | c |");
    for n in &names {
        o.push_str(&format!(" {n} req/s | p50 / p99 ms | err / empty |"));
    }
    o.push('\n');
    o.push_str("|---|---|---|");
    for _ in &names {
        o.push_str("---|---|---|");
    }
    o.push('\n');
    for access in [Access::Owner, Access::PairOwner, Access::Consented] {
        for w in workloads {
            for c in levels {
                let cells: Vec<Option<Summary>> =
                    names.iter().map(|n| get(r, n, *w, &access, *c)).collect();
                if cells.iter().all(Option::is_none) {
                    continue;
                }
                o.push_str(&format!("| {} | {} | {} |", w.name(), access, c));
                for cell in cells {
                    match cell {
                        Some(s) => o.push_str(&format!(
                            " {:.0} | {:.2} / {:.2} | {} / {} |",
                            s.throughput, s.p50_ms, s.p99_ms, s.errors, s.empty
                        )),
                        None => o.push_str(" n/a | | |"),
                    }
                }
                o.push('\n');
            }
        }
    }
    o.push('\n');
    o.push_str(&goals(r, levels));
    o
}

fn goals(r: &CompareResult, levels: &[usize]) -> String {
    let mut o = String::from("#### Against the goals of the issues\n\n| goal (issue) | measured | met? |\n|---|---|---|\n");
    let c_hi = levels.iter().copied().max().unwrap_or(1);
    let c_lo = levels.iter().copied().min().unwrap_or(1);
    let audited_renkei = r
        .servers
        .iter()
        .filter_map(|s| Some((kind_of(s)?, s)))
        .filter(|(kind, _)| kind.is_audited_renkei());
    for (kind, renkei) in audited_renkei {
        let n = renkei.server.as_str();
        // The Helios on the same storage if it ran, else the other one; the rows name it.
        let helios = kind
            .helios_peers()
            .into_iter()
            .find_map(|peer| ran(r, peer));
        if let Some(h) = helios {
            let hn = h.server.as_str();
            let ing = renkei.load.resources_per_s / h.load.resources_per_s.max(1e-9);
            o.push_str(&format!(
                "| ingest ≥ 5× Helios (6) | {n} ÷ {hn}: {} | {} |\n",
                ratio(renkei.load.resources_per_s, h.load.resources_per_s),
                yes(ing >= 5.0)
            ));
            if let (Some(a), Some(b)) = (
                get(r, n, Workload::Read, &Access::Owner, c_hi),
                get(r, hn, Workload::Read, &Access::Owner, c_hi),
            ) {
                o.push_str(&format!(
                    "| read by id at c={c_hi} ≥ 1.5× Helios (6) | {n} ÷ {hn}: {} | {} |\n",
                    ratio(a.throughput, b.throughput),
                    yes(a.throughput >= 1.5 * b.throughput)
                ));
            }
            if let (Some(a), Some(b)) = (
                get(r, n, Workload::Read, &Access::Owner, c_lo),
                get(r, hn, Workload::Read, &Access::Owner, c_lo),
            ) {
                o.push_str(&format!(
                    "| read p50 at c={c_lo} no worse than Helios (6) | {n}: {:.2} ms, {hn}: {:.2} ms | {} |\n",
                    a.p50_ms, b.p50_ms, yes(a.p50_ms <= b.p50_ms)
                ));
            }
            if let (Some(a), Some(b)) = (
                get(r, n, Workload::Create, &Access::Owner, c_hi),
                get(r, hn, Workload::Create, &Access::Owner, c_hi),
            ) {
                o.push_str(&format!(
                    "| create at c={c_hi} ≥ 3× Helios, p99 ≤ 30 ms (6) | {n} ÷ {hn}: {}, p99 {:.1} ms | {} |\n",
                    ratio(a.throughput, b.throughput),
                    a.p99_ms,
                    yes(a.throughput >= 3.0 * b.throughput && a.p99_ms <= 30.0)
                ));
            }
            if let (Some(a), Some(b)) = (
                get(r, n, Workload::SearchLabTrend, &Access::Owner, c_lo),
                get(r, hn, Workload::SearchLabTrend, &Access::Owner, c_lo),
            ) {
                o.push_str(&format!(
                    "| `Observation?patient&code` at c={c_lo} ≥ 4× Helios, p50 ≤ 0.4 ms (3) | {n} ÷ {hn}: {}, p50 {:.2} ms | {} |\n",
                    ratio(a.throughput, b.throughput),
                    a.p50_ms,
                    yes(a.throughput >= 4.0 * b.throughput && a.p50_ms <= 0.4)
                ));
            }
            if let (Some(a), Some(b)) = (renkei.rss_kib_end, h.rss_kib_end) {
                o.push_str(&format!(
                    "| RSS ≤ Helios (6) | {n} ÷ {hn}: {} | {} |\n",
                    ratio(a as f64, b as f64),
                    yes(a <= b)
                ));
            }
            if let (Some(a), Some(b)) = (renkei.db_bytes_end, h.db_bytes_end) {
                o.push_str(&format!(
                    "| disk per resource ≤ 0.5× Helios (6) | {n} ÷ {hn}: {} (Renkei's includes the audit trail) | {} |\n",
                    ratio(a as f64, b as f64),
                    yes(a as f64 <= 0.5 * b as f64)
                ));
            }
        }
        let mut worst: Option<(f64, f64)> = None;
        for w in Workload::SEARCHES {
            if let Some(s) = get(r, n, w, &Access::Owner, 8) {
                let (p50, p99) = worst.unwrap_or((0.0, 0.0));
                worst = Some((p50.max(s.p50_ms), p99.max(s.p99_ms)));
            }
        }
        if let Some((p50, p99)) = worst {
            o.push_str(&format!(
                "| clinical searches at c=8: p50 < 5 ms, p99 < 25 ms (3; goal stated at 1M resources, this run: {}) | {n}: worst p50 {p50:.2} ms, worst p99 {p99:.2} ms | {} |\n",
                r.resources,
                yes(p50 < 5.0 && p99 < 25.0)
            ));
        }
        if let Some(s) = get(r, n, Workload::Everything, &Access::Owner, c_lo) {
            o.push_str(&format!(
                "| `$everything` of a patient < 150 ms (3) | {n}: p50 {:.1} ms, p99 {:.1} ms (c={c_lo}) | {} |\n",
                s.p50_ms,
                s.p99_ms,
                yes(s.p99_ms < 150.0)
            ));
        }
        let mut ratios = Vec::new();
        let mut p99s = Vec::new();
        for w in Workload::SEARCHES.into_iter().chain([Workload::Everything]) {
            if let (Some(own), Some(con)) = (
                get(r, n, w, &Access::PairOwner, c_hi),
                get(r, n, w, &Access::Consented, c_hi),
            ) {
                ratios.push(con.throughput / own.throughput.max(1e-9));
                p99s.push(con.p99_ms / own.p99_ms.max(1e-9));
            }
        }
        if !ratios.is_empty() {
            let min_t = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let max_p = p99s.iter().copied().fold(0.0, f64::max);
            o.push_str(&format!(
                "| consented ÷ owner search throughput ≥ 0.85, p99 ≤ 1.3× (4), c={c_hi}, same patients | {n}: worst {min_t:.2}× throughput (median {:.2}×), worst p99 {max_p:.2}× | {} |\n",
                median(&ratios),
                yes(min_t >= 0.85 && max_p <= 1.3)
            ));
        }
    }
    o.push_str(&audit_cost_row(r, levels));
    o.push_str(&static_ceiling_row(r, levels));
    o
}

/// Issue 5's bar: audited reads at ≥ 80 % of the throughput of unaudited ones.
const AUDITED_READ_SHARE_GOAL: f64 = 0.80;

/// Issue 5: read by id on `renkei-sqlite` ÷ the same on `renkei-sqlite-unaudited`, at every
/// concurrency both ran; met when the ratio reaches the goal at the highest of them.
fn audit_cost_row(r: &CompareResult, levels: &[usize]) -> String {
    let goal = "read throughput with audit ≥ 80 % of without (5)";
    let audited = Kind::RenkeiSqlite.label();
    let unaudited = Kind::RenkeiSqliteUnaudited.label();
    let ratios = read_ratios(r, audited, unaudited, levels);
    let Some(&(c_top, at_top)) = ratios.last() else {
        return format!(
            "| {goal} | not measured: {unaudited} did not run (`--renkei-unaudited PATH`, a build \
             with `--features renkei/unaudited-reads-benchmark`) | — |\n"
        );
    };
    let reaching: Vec<String> = ratios
        .iter()
        .filter(|(_, x)| *x >= AUDITED_READ_SHARE_GOAL)
        .map(|(c, _)| format!("c={c}"))
        .collect();
    let reached = if reaching.is_empty() {
        "at no concurrency".to_string()
    } else {
        format!("at {}", reaching.join(", "))
    };
    let met = if at_top >= AUDITED_READ_SHARE_GOAL {
        format!("yes, at c={c_top}")
    } else {
        format!("**no** (c={c_top}: {at_top:.2})")
    };
    format!(
        "| {goal} | {audited} ÷ {unaudited}, read by id: {}; ≥ {AUDITED_READ_SHARE_GOAL:.2} {reached} | {met} |\n",
        ratio_list(&ratios)
    )
}

/// Issue 7: what nginx serving one static Patient reaches at each concurrency, and each
/// Renkei server's read by id as a fraction of it. A reference, not a goal to meet.
fn static_ceiling_row(r: &CompareResult, levels: &[usize]) -> String {
    let goal = "nginx static-file ceiling (7)";
    let nginx = Kind::NginxStatic.label();
    let ceiling: Vec<String> = ascending(levels)
        .into_iter()
        .filter_map(|c| {
            let s = get(r, nginx, Workload::Read, &Access::Owner, c)?;
            Some(format!("c={c}: {:.0} req/s", s.throughput))
        })
        .collect();
    if ceiling.is_empty() {
        return format!("| {goal} | not measured: {nginx} did not run (`--nginx PATH`) | — |\n");
    }
    let mut measured = format!("{nginx} read: {}", ceiling.join(", "));
    let renkei = r
        .servers
        .iter()
        .filter(|s| kind_of(s).is_some_and(|k| k.software() == Software::Renkei));
    for s in renkei {
        let ratios = read_ratios(r, &s.server, nginx, levels);
        if !ratios.is_empty() {
            measured.push_str(&format!(
                "; {} read ÷ nginx: {}",
                s.server,
                ratio_list(&ratios)
            ));
        }
    }
    format!("| {goal} | {measured} | — |\n")
}

/// Read by id (owner, median req/s) of `server` ÷ that of `baseline` at every concurrency
/// both measured, lowest first.
fn read_ratios(
    r: &CompareResult,
    server: &str,
    baseline: &str,
    levels: &[usize],
) -> Vec<(usize, f64)> {
    ascending(levels)
        .into_iter()
        .filter_map(|c| {
            let a = get(r, server, Workload::Read, &Access::Owner, c)?;
            let b = get(r, baseline, Workload::Read, &Access::Owner, c)?;
            (b.throughput > 0.0).then(|| (c, a.throughput / b.throughput))
        })
        .collect()
}

fn ascending(levels: &[usize]) -> Vec<usize> {
    let mut levels = levels.to_vec();
    levels.sort_unstable();
    levels.dedup();
    levels
}

/// `c=1: 0.31, c=8: 0.45`
fn ratio_list(ratios: &[(usize, f64)]) -> String {
    ratios
        .iter()
        .map(|(c, x)| format!("c={c}: {x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kind a result came from (none for results of a label this build does not know).
fn kind_of(s: &ServerResult) -> Option<Kind> {
    Kind::parse(&s.server).ok()
}

/// The result of `kind`, if it ran.
fn ran(r: &CompareResult, kind: Kind) -> Option<&ServerResult> {
    r.servers.iter().find(|s| s.server == kind.label())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "**no**"
    }
}

/// Replaces the text between the markers (or appends the section with markers at the end).
pub fn replace_section(path: &Path, section: &str) -> Result<(), Error> {
    let doc = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let block = format!("{DOC_BEGIN}\n{section}\n{DOC_END}");
    let new = match (doc.find(DOC_BEGIN), doc.find(DOC_END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &doc[..b], &doc[e + DOC_END.len()..]),
        _ => format!("{}\n{block}\n", doc.trim_end()),
    };
    fs::write(path, new).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn section_is_replaced_in_place() {
        let path = std::env::temp_dir().join(format!("renkei-bench-doc-{}.md", std::process::id()));
        fs::write(&path, "# B\n\ntext\n").unwrap();
        replace_section(&path, "one").unwrap();
        replace_section(&path, "two").unwrap();
        let doc = fs::read_to_string(&path).unwrap();
        assert!(doc.starts_with("# B\n\ntext\n"));
        assert!(doc.contains("two") && !doc.contains("one"));
        assert_eq!(doc.matches(DOC_BEGIN).count(), 1);
        let _ = fs::remove_file(path);
    }

    /// A server that read by id at `throughputs[i]` req/s at concurrency `levels[i]`.
    fn reads(kind: Kind, levels: &[usize], throughputs: &[f64]) -> ServerResult {
        let mut runs = BTreeMap::new();
        for (c, t) in levels.iter().zip(throughputs) {
            let s = Summary {
                requests: 100,
                throughput: *t,
                p50_ms: 1.0,
                p99_ms: 2.0,
                ..Summary::default()
            };
            runs.insert(key(Workload::Read, &Access::Owner, *c), vec![s]);
        }
        ServerResult {
            server: kind.label().into(),
            runs,
            ..ServerResult::default()
        }
    }

    fn result(servers: Vec<ServerResult>) -> CompareResult {
        CompareResult {
            servers,
            ..CompareResult::default()
        }
    }

    const LEVELS: [usize; 3] = [1, 8, 32];

    #[test]
    fn audit_cost_lists_every_level_and_judges_the_highest() {
        let r = result(vec![
            reads(Kind::RenkeiSqlite, &LEVELS, &[310.0, 450.0, 830.0]),
            reads(Kind::RenkeiSqliteUnaudited, &LEVELS, &[1000.0; 3]),
        ]);
        let row = audit_cost_row(&r, &[32, 1, 8]);
        assert!(
            row.contains("c=1: 0.31, c=8: 0.45, c=32: 0.83; ≥ 0.80 at c=32 | yes, at c=32 |"),
            "{row}"
        );
        let r = result(vec![
            reads(Kind::RenkeiSqlite, &LEVELS, &[850.0, 450.0, 300.0]),
            reads(Kind::RenkeiSqliteUnaudited, &LEVELS, &[1000.0; 3]),
        ]);
        let row = audit_cost_row(&r, &LEVELS);
        assert!(
            row.contains("≥ 0.80 at c=1 | **no** (c=32: 0.30) |"),
            "{row}"
        );
    }

    #[test]
    fn audit_cost_without_the_unaudited_build_says_so() {
        let r = result(vec![reads(Kind::RenkeiSqlite, &LEVELS, &[1.0; 3])]);
        let row = audit_cost_row(&r, &LEVELS);
        assert!(
            row.starts_with("| read throughput with audit ≥ 80 % of without (5) | not measured")
        );
        assert!(row.contains("--renkei-unaudited"));
    }

    #[test]
    fn static_ceiling_shows_nginx_and_renkei_as_a_fraction_of_it() {
        let r = result(vec![
            reads(Kind::RenkeiSqlite, &LEVELS, &[2000.0, 4000.0, 4000.0]),
            reads(Kind::RenkeiPostgres, &[1], &[1000.0]),
            reads(Kind::HeliosSqlite, &LEVELS, &[1.0; 3]),
            reads(Kind::NginxStatic, &LEVELS, &[20000.0, 80000.0, 80000.0]),
        ]);
        let row = static_ceiling_row(&r, &LEVELS);
        assert!(
            row.contains(
                "nginx-static read: c=1: 20000 req/s, c=8: 80000 req/s, c=32: 80000 req/s"
            ),
            "{row}"
        );
        assert!(
            row.contains("renkei-sqlite read ÷ nginx: c=1: 0.10, c=8: 0.05, c=32: 0.05"),
            "{row}"
        );
        assert!(
            row.contains("renkei-postgres read ÷ nginx: c=1: 0.05 |"),
            "{row}"
        );
        assert!(!row.contains("helios"), "{row}");
        let without = static_ceiling_row(&result(vec![]), &LEVELS);
        assert!(without.contains("not measured"), "{without}");
    }

    #[test]
    fn goals_compare_audited_renkei_with_the_helios_on_the_same_storage() {
        let r = result(vec![
            reads(Kind::RenkeiSqlite, &LEVELS, &[1.0; 3]),
            reads(Kind::RenkeiSqliteUnaudited, &LEVELS, &[1.0; 3]),
            reads(Kind::RenkeiPostgres, &LEVELS, &[1.0; 3]),
            reads(Kind::HeliosSqlite, &LEVELS, &[2.0; 3]),
            reads(Kind::HeliosPostgres, &LEVELS, &[4.0; 3]),
        ]);
        let table = goals(&r, &LEVELS);
        assert!(
            table.contains("| renkei-sqlite ÷ helios-sqlite: 0.50× |"),
            "{table}"
        );
        assert!(
            table.contains("| renkei-postgres ÷ helios-postgres: 0.25× |"),
            "{table}"
        );
        // The unaudited build is a baseline, not a subject of the goals.
        assert!(!table.contains("| renkei-sqlite-unaudited ÷"), "{table}");
        assert_eq!(table.matches("(5)").count(), 1);
        assert_eq!(table.matches("(7)").count(), 1);
    }

    #[test]
    fn static_server_has_no_ingest_row_and_is_na_elsewhere() {
        let mut nginx = reads(Kind::NginxStatic, &[1], &[20000.0]);
        nginx.static_response_bytes = Some(1234);
        let r = result(vec![reads(Kind::RenkeiSqlite, &[1], &[1000.0]), nginx]);
        let md = markdown(&r, &[Workload::Read, Workload::Create], &[1]);
        assert!(md.contains("| renkei-sqlite | 0 / 0 |"), "{md}");
        assert!(!md.contains("| nginx-static | 0 / 0 |"), "{md}");
        assert!(
            md.contains("one static Patient of the data set (1234 bytes)"),
            "{md}"
        );
        assert!(md.contains("| read | owner | 1 | 1000 |"), "{md}");
    }
}
