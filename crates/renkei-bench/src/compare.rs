//! Side by side on this machine: Renkei on SQLite and on PostgreSQL and Helios FHIR Server on
//! SQLite, each on a fresh database, the same generated data loaded through the API, the same
//! workloads run in alternation (A, B, C, A, B, C, …), medians over the rounds, and the result
//! written into the generated section of `docs/BENCHMARKS.md` with the ratios against the goals
//! of the issues. Builds nothing: it expects `target/release/renkei` and, optionally, `hfs`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Target, Tokens};
use crate::generate::{generate, GenerateOptions, Manifest};
use crate::load::{load, LoadResult};
use crate::report::{db_bytes, rss_kib, Machine};
use crate::run::{measure, Phase};
use crate::stats::{median, Summary};
use crate::workload::{pool, Access, Workload};
use crate::Error;

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
    /// The Helios binary; skipped (and said so) when missing.
    #[arg(long, env = "HFS_BIN")]
    pub hfs: Option<PathBuf>,
    /// Servers to run, in alternation order.
    #[arg(long, default_value = "renkei-sqlite,renkei-postgres,helios-sqlite")]
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
    /// PostgreSQL admin URL (a database per run is created there and dropped afterwards).
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
    /// The R4 search-parameter bundle Helios needs in its data directory.
    #[arg(long, default_value = "fixtures/r4-definitions/search-parameters.json")]
    pub search_parameters: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    RenkeiSqlite,
    RenkeiPostgres,
    HeliosSqlite,
}

impl Kind {
    fn parse(s: &str) -> Result<Kind, Error> {
        match s.trim() {
            "renkei-sqlite" => Ok(Kind::RenkeiSqlite),
            "renkei-postgres" => Ok(Kind::RenkeiPostgres),
            "helios-sqlite" => Ok(Kind::HeliosSqlite),
            other => Err(Error::Usage(format!(
                "unknown server {other} (renkei-sqlite, renkei-postgres, helios-sqlite)"
            ))),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::RenkeiSqlite => "renkei-sqlite",
            Kind::RenkeiPostgres => "renkei-postgres",
            Kind::HeliosSqlite => "helios-sqlite",
        }
    }

    fn is_renkei(self) -> bool {
        self != Kind::HeliosSqlite
    }
}

/// A running server with its database; stops and cleans up when dropped.
struct Running {
    kind: Kind,
    base: String,
    child: Child,
    dir: PathBuf,
    db: String,
    pg_drop: Option<(String, String)>,
    tokens: Tokens,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((admin, name)) = &self.pg_drop {
            let _ = Command::new("psql")
                .args([
                    admin.as_str(),
                    "-qc",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
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

fn run_cli(bin: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(bin)
        .args(args)
        .env("RENKEI_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(bin, e))?;
    if !out.status.success() {
        return Err(Error::Server(format!(
            "{} {}: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_ready(base: &str, child: &mut Child, log: &Path) -> Result<(), Error> {
    let target = Target::new(base, false, 1)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(Error::Server(format!(
                "{base}: server exited ({status}):\n{tail}"
            )));
        }
        if let Ok(a) = target
            .send(&Method::GET, "metadata", None, None, false)
            .await
        {
            if a.status == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Server(format!("{base}: not ready within 120 s")))
}

fn work_dir(label: &str) -> Result<PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("renkei-bench-{label}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

async fn start(
    kind: Kind,
    opts: &CompareOptions,
    hfs: Option<&Path>,
    port: u16,
    manifest: &Manifest,
) -> Result<Running, Error> {
    let dir = work_dir(kind.label())?;
    let log_path = dir.join("server.log");
    let log = fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let log2 = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    let listen = format!("127.0.0.1:{port}");
    let (child, base, db, pg_drop) = match kind {
        Kind::RenkeiSqlite | Kind::RenkeiPostgres => {
            let (db, pg_drop) = if kind == Kind::RenkeiSqlite {
                (format!("sqlite:{}", dir.join("renkei.db").display()), None)
            } else {
                let name = format!("renkei_bench_{}_{port}", std::process::id());
                let admin = opts.pg_admin_url.clone();
                let out = Command::new("psql")
                    .args([admin.as_str(), "-qc", &format!("CREATE DATABASE {name}")])
                    .output()
                    .map_err(|e| Error::Server(format!("psql: {e}")))?;
                if !out.status.success() {
                    return Err(Error::Server(format!(
                        "CREATE DATABASE {name}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                let prefix = admin.rsplit_once('/').map_or(admin.as_str(), |(p, _)| p);
                (format!("{prefix}/{name}"), Some((admin.clone(), name)))
            };
            let child = Command::new(&opts.renkei)
                .args(["serve", "--listen", &listen, "--database", &db])
                .env("RENKEI_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| Error::io(&opts.renkei, e))?;
            (child, format!("http://{listen}/fhir"), db, pg_drop)
        }
        Kind::HeliosSqlite => {
            let hfs = hfs.ok_or_else(|| Error::Usage("no hfs binary".into()))?;
            let params = dir.join("search-parameters-r4.json");
            fs::copy(&opts.search_parameters, &params)
                .map_err(|e| Error::io(&opts.search_parameters, e))?;
            let db = dir.join("hfs.db").display().to_string();
            let child = Command::new(hfs)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--database-url",
                    &db,
                ])
                .arg("--data-dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| Error::io(hfs, e))?;
            (
                child,
                format!("http://{listen}"),
                dir.display().to_string(),
                None,
            )
        }
    };
    let mut running = Running {
        kind,
        base,
        child,
        dir,
        db,
        pg_drop,
        tokens: Tokens::None,
    };
    wait_ready(&running.base, &mut running.child, &log_path).await?;
    if kind.is_renkei() {
        let mut map = BTreeMap::new();
        for f in &manifest.facilities {
            let client = format!("bench-{}", f.id);
            let org = format!("Organization/{}", f.id);
            run_cli(
                &opts.renkei,
                &[
                    "client",
                    "add",
                    "--database",
                    &running.db,
                    "--id",
                    &client,
                    "--organization",
                    &org,
                    "--scope",
                    "system/*.cruds",
                ],
            )?;
            let out = run_cli(
                &opts.renkei,
                &[
                    "token",
                    "--database",
                    &running.db,
                    "--client-id",
                    &client,
                    "--ttl",
                    "7200",
                ],
            )?;
            let token = out
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or_default()
                .to_string();
            map.insert(f.id.clone(), token);
        }
        running.tokens = Tokens::PerFacility(map);
    }
    Ok(running)
}

fn find_hfs(opts: &CompareOptions) -> Option<PathBuf> {
    if let Some(p) = &opts.hfs {
        return p.exists().then(|| p.clone());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut candidates: Vec<PathBuf> = home.iter().map(|h| h.join(".cargo/bin/hfs")).collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|p| p.join("hfs")));
    }
    candidates.into_iter().find(|p| p.is_file())
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
    let mut kinds = Vec::new();
    for s in opts.servers.split(',').filter(|s| !s.trim().is_empty()) {
        kinds.push(Kind::parse(s)?);
    }
    let hfs = find_hfs(&opts);
    let mut skipped = Vec::new();
    if hfs.is_none() && kinds.contains(&Kind::HeliosSqlite) {
        kinds.retain(|k| *k != Kind::HeliosSqlite);
        skipped.push("helios-sqlite: no hfs binary (cargo install helios-hfs --version 0.2.7 --locked --no-default-features --features R4,sqlite,postgres)".to_string());
    }
    let workloads = Workload::parse_list(&opts.workload)?;
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
    for (i, kind) in kinds.iter().enumerate() {
        eprintln!(
            "== {}: start and load {} resources",
            kind.label(),
            manifest.resources
        );
        let running = match start(
            *kind,
            &opts,
            hfs.as_deref(),
            opts.port + i as u16,
            &manifest,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                result.skipped.push(format!("{}: {e}", kind.label()));
                eprintln!("   skipped: {e}");
                continue;
            }
        };
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
        let sr = ServerResult {
            server: kind.label().into(),
            load: loaded,
            rss_kib_after_load: rss_kib(running.child.id()),
            db_bytes_after_load: db_bytes(&running.db),
            ..ServerResult::default()
        };
        servers.push((running, sr));
    }

    for round in 0..result.rounds {
        for (running, sr) in &mut servers {
            eprintln!("== round {} on {}", round + 1, running.kind.label());
            let target = Target::new(&running.base, false, 64)?;
            let mut plans: Vec<(Workload, Access)> =
                workloads.iter().map(|w| (*w, Access::Owner)).collect();
            if running.kind.is_renkei() && !manifest.consented_pairs.is_empty() {
                for w in &workloads {
                    if w.expects_entries() {
                        plans.push((*w, Access::PairOwner));
                        plans.push((*w, Access::Consented));
                    }
                }
            }
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
        sr.rss_kib_end = rss_kib(running.child.id());
        sr.db_bytes_end = db_bytes(&running.db);
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
        if !bad.is_empty() {
            return Err(Error::Smoke(format!("servers failed: {}", bad.join(", "))));
        }
    }
    Ok(())
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
    o.push_str("Renkei decides consent and writes a durable AuditEvent on every request; Helios has neither (no access control, no audit).\n\n");
    o.push_str("| server | ingest res/s (all / clinical) | failed bundles | RSS after load / end | DB after load / end | bytes per resource |\n|---|---|---|---|---|---|\n");
    for s in &r.servers {
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
    o.push('\n');
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
    let helios = r.servers.iter().find(|s| s.server == "helios-sqlite");
    for renkei in r.servers.iter().filter(|s| s.server.starts_with("renkei")) {
        let n = renkei.server.as_str();
        if let Some(h) = helios {
            let ing = renkei.load.resources_per_s / h.load.resources_per_s.max(1e-9);
            o.push_str(&format!(
                "| ingest ≥ 5× Helios (6) | {n}: {} | {} |\n",
                ratio(renkei.load.resources_per_s, h.load.resources_per_s),
                yes(ing >= 5.0)
            ));
            if let (Some(a), Some(b)) = (
                get(r, n, Workload::Read, &Access::Owner, c_hi),
                get(r, "helios-sqlite", Workload::Read, &Access::Owner, c_hi),
            ) {
                o.push_str(&format!(
                    "| read by id at c={c_hi} ≥ 1.5× Helios (6) | {n}: {} | {} |\n",
                    ratio(a.throughput, b.throughput),
                    yes(a.throughput >= 1.5 * b.throughput)
                ));
            }
            if let (Some(a), Some(b)) = (
                get(r, n, Workload::Read, &Access::Owner, c_lo),
                get(r, "helios-sqlite", Workload::Read, &Access::Owner, c_lo),
            ) {
                o.push_str(&format!(
                    "| read p50 at c={c_lo} no worse than Helios (6) | {n}: {:.2} vs {:.2} ms | {} |\n",
                    a.p50_ms, b.p50_ms, yes(a.p50_ms <= b.p50_ms)
                ));
            }
            if let (Some(a), Some(b)) = (
                get(r, n, Workload::Create, &Access::Owner, c_hi),
                get(r, "helios-sqlite", Workload::Create, &Access::Owner, c_hi),
            ) {
                o.push_str(&format!(
                    "| create at c={c_hi} ≥ 3× Helios, p99 ≤ 30 ms (6) | {n}: {}, p99 {:.1} ms | {} |\n",
                    ratio(a.throughput, b.throughput),
                    a.p99_ms,
                    yes(a.throughput >= 3.0 * b.throughput && a.p99_ms <= 30.0)
                ));
            }
            if let (Some(a), Some(b)) = (
                get(r, n, Workload::SearchLabTrend, &Access::Owner, c_lo),
                get(
                    r,
                    "helios-sqlite",
                    Workload::SearchLabTrend,
                    &Access::Owner,
                    c_lo,
                ),
            ) {
                o.push_str(&format!(
                    "| `Observation?patient&code` at c={c_lo} ≥ 4× Helios, p50 ≤ 0.4 ms (3) | {n}: {}, p50 {:.2} ms | {} |\n",
                    ratio(a.throughput, b.throughput),
                    a.p50_ms,
                    yes(a.throughput >= 4.0 * b.throughput && a.p50_ms <= 0.4)
                ));
            }
            if let (Some(a), Some(b)) = (renkei.rss_kib_end, h.rss_kib_end) {
                o.push_str(&format!(
                    "| RSS ≤ Helios (6) | {n}: {} | {} |\n",
                    ratio(a as f64, b as f64),
                    yes(a <= b)
                ));
            }
            if let (Some(a), Some(b)) = (renkei.db_bytes_end, h.db_bytes_end) {
                o.push_str(&format!(
                    "| disk per resource ≤ 0.5× Helios (6) | {n}: {} (Renkei's includes the audit trail) | {} |\n",
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
    o.push_str("| read throughput with audit ≥ 80 % of without (5) | not measurable: Renkei has no switch to turn auditing off | — |\n");
    o.push_str("| nginx static-file ceiling (7) | not run by `renkei-bench compare`; bench-kit reference 20.6k req/s c=1, 79k c=8 | — |\n");
    o
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
}
