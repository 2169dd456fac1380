//! `renkei-bench`: see `renkei-bench --help` and docs/BENCHMARKS.md ("How to reproduce").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use renkei_bench::client::{Target, Tokens};
use renkei_bench::compare::{compare, CompareOptions};
use renkei_bench::generate::{generate, GenerateOptions, Manifest};
use renkei_bench::load::load;
use renkei_bench::report::{db_bytes, db_bytes_cmd, rss_kib, Report, Row};
use renkei_bench::run::{measure, Phase};
use renkei_bench::workload::{pool, Access, Workload};
use renkei_bench::Error;

#[derive(Parser)]
#[command(
    name = "renkei-bench",
    version,
    about = "Benchmark any FHIR R4 server by base URL: deterministic regional-network data, \
             API load, clinical workloads (closed or open loop), side-by-side comparison.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Write a deterministic data set: transaction Bundles per facility plus manifest.json.
    Generate {
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        #[arg(long, default_value_t = 8)]
        facilities: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory (must not hold a data set already).
        #[arg(long)]
        out: PathBuf,
        /// Patients' worth of clinical data per Bundle (≈ 100 resources each).
        #[arg(long, default_value_t = 10)]
        patients_per_bundle: usize,
    },
    /// POST the data set's Bundles (organizations, then patients and consents, then clinical
    /// data), N in flight, each with its facility's token; prints resources/s.
    Load {
        #[arg(long)]
        target: String,
        #[arg(long)]
        data: PathBuf,
        /// One bearer token for every request.
        #[arg(long)]
        token: Option<String>,
        /// JSON object facility id → bearer token (the writer becomes the custodian).
        #[arg(long)]
        tokens: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        #[arg(long)]
        allow_remote: bool,
        /// Write the result as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run workloads against a loaded server: read, vread, search-lab-trend,
    /// search-active-meds, search-patient-kanji, search-patient-kana, search-imaging,
    /// search-chained, everything, create, transaction (or `all`, `searches`).
    Run {
        #[arg(long)]
        target: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Comma-separated workload names, `all` or `searches`.
        #[arg(long, default_value = "all")]
        workload: String,
        /// Comma-separated concurrency levels.
        #[arg(long, default_value = "1,8,32")]
        concurrency: String,
        /// Measured time per workload and concurrency (e.g. 10s, 500ms; capped at 600s).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: Duration,
        /// Open loop: requests per second in total, latency measured from the intended send
        /// time. Without it: closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// owner (the facility holding the data), consented (another facility the patient's
        /// consent permits; same result sets) or pair-owner (the owner, asking about the same
        /// patients as consented: the baseline of the consent-overhead comparison).
        #[arg(long, default_value = "owner")]
        access: String,
        /// Send every request with this facility's token instead.
        #[arg(long)]
        as_facility: Option<String>,
        /// Label of the server in the report.
        #[arg(long)]
        label: Option<String>,
        /// Read the server's VmRSS after the runs.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Database whose size to report: sqlite file or URL, postgres URL, or a directory.
        #[arg(long)]
        db: Option<String>,
        /// Shell command printing the database size in bytes.
        #[arg(long)]
        db_size_cmd: Option<String>,
        #[arg(long)]
        allow_remote: bool,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Seconds-long check of every workload at concurrency 1–2 on a tiny generated data set
    /// (loads it first: use an empty server). Tokens for fac-001..fac-003.
    Smoke {
        #[arg(long)]
        target: String,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        tokens: Option<PathBuf>,
    },
    /// Start Renkei (SQLite, PostgreSQL; with --renkei-unaudited also its unaudited-reads
    /// build on SQLite) and Helios (SQLite, PostgreSQL) on fresh databases on this machine, plus
    /// nginx serving one static Patient; load the same data, run the workloads alternating
    /// A-B-C-A-B-C, and rewrite the generated section of docs/BENCHMARKS.md with medians and
    /// ratios against the goals (audit on/off read ratio, nginx ceiling included). Servers
    /// whose executable is missing are skipped and listed as not run.
    Compare(CompareOptions),
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((t, "s"), |i| t.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {text}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("bad duration unit in {text} (ms, s, m)")),
    };
    if !(0.0..=600.0).contains(&secs) {
        return Err(format!("duration {text} out of range (0–600 s)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_levels(text: &str) -> Result<Vec<usize>, Error> {
    text.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .ok()
                .filter(|c| (1..=512).contains(c))
                .ok_or_else(|| Error::Usage(format!("bad concurrency {p} (1–512)")))
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("renkei-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("renkei-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> Result<(), Error> {
    let invocation = std::env::args().collect::<Vec<_>>().join(" ");
    match command {
        Command::Generate {
            patients,
            facilities,
            seed,
            out,
            patients_per_bundle,
        } => {
            let start = std::time::Instant::now();
            let mut opts = GenerateOptions::new(patients, facilities, seed, &out);
            opts.patients_per_bundle = patients_per_bundle;
            let m = generate(&opts)?;
            println!(
                "{} resources ({} patients, {} facilities, {} bundles) in {:.1} s → {}",
                m.resources,
                m.patients,
                m.facilities.len(),
                m.bundles.len(),
                start.elapsed().as_secs_f64(),
                out.display()
            );
            for (t, n) in &m.by_type {
                println!("  {t}: {n}");
            }
            Ok(())
        }
        Command::Load {
            target,
            data,
            token,
            tokens,
            concurrency,
            allow_remote,
            json,
        } => {
            let tokens = Tokens::from_args(token, tokens.as_deref())?;
            let target = Target::new(&target, allow_remote, concurrency)?;
            let r = load(&target, &data, &tokens, concurrency, true).await?;
            println!(
                "loaded {} resources in {} bundles ({} failed) in {:.1} s: {:.0} resources/s (clinical phase {:.0}/s)",
                r.resources, r.bundles, r.failed_bundles, r.seconds, r.resources_per_s, r.clinical_resources_per_s
            );
            if let Some(e) = &r.first_error {
                println!("first error: {e}");
            }
            if let Some(path) = json {
                let text = serde_json::to_vec_pretty(&r).map_err(|e| Error::json(&path, e))?;
                std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            }
            if r.failed_bundles > 0 {
                return Err(Error::Server(format!(
                    "{} bundles failed",
                    r.failed_bundles
                )));
            }
            Ok(())
        }
        Command::Run {
            target,
            data,
            token,
            tokens,
            workload,
            concurrency,
            duration,
            warmup,
            rate,
            access,
            as_facility,
            label,
            server_pid,
            db,
            db_size_cmd,
            allow_remote,
            json,
            markdown,
        } => {
            let tokens = Tokens::from_args(token, tokens.as_deref())?;
            let workloads = Workload::parse_list(&workload)?;
            let levels = parse_levels(&concurrency)?;
            let access = match as_facility {
                Some(f) => Access::Facility(f),
                None => access.parse()?,
            };
            let manifest = Manifest::read(&data)?;
            let max = levels.iter().copied().max().unwrap_or(1);
            let target_h = Target::new(&target, allow_remote, max)?;
            let mut report = Report::new(invocation);
            let label = label.unwrap_or_else(|| target_h.base.clone());
            for w in &workloads {
                let p = match pool(*w, &manifest, &tokens, &access, 5000) {
                    Ok(p) => p,
                    Err(e) => {
                        println!("{:<22} skipped: {e}", w.name());
                        continue;
                    }
                };
                for c in &levels {
                    let phase = Phase {
                        concurrency: *c,
                        duration,
                        warmup,
                        rate,
                        seed: manifest.seed,
                    };
                    let s = measure(&target_h, &p, &phase).await;
                    let row = Row {
                        server: label.clone(),
                        workload: w.name().into(),
                        access: access.to_string(),
                        concurrency: *c,
                        mode: rate.map_or("closed".into(), |r| format!("open@{r}/s")),
                        summary: s,
                    };
                    println!(
                        "{:<22} c={:<3} {:>8.0} req/s  p50 {:>7.2} ms  p95 {:>7.2}  p99 {:>7.2}  max {:>8.1}  errors {}  empty {}",
                        row.workload, c, row.summary.throughput, row.summary.p50_ms, row.summary.p95_ms,
                        row.summary.p99_ms, row.summary.max_ms, row.summary.errors, row.summary.empty
                    );
                    if let Some(e) = &row.summary.first_error {
                        println!("    first error: {e}");
                    }
                    report.rows.push(row);
                }
            }
            report.rss_kib = server_pid.and_then(rss_kib);
            report.db_bytes = db
                .as_deref()
                .and_then(db_bytes)
                .or_else(|| db_size_cmd.as_deref().and_then(db_bytes_cmd));
            if let Some(path) = json {
                report.write_json(&path)?;
            }
            let md = report.markdown();
            match markdown {
                Some(path) => std::fs::write(&path, md).map_err(|e| Error::io(&path, e))?,
                None => println!("\n{md}"),
            }
            Ok(())
        }
        Command::Smoke {
            target,
            token,
            tokens,
        } => {
            let tokens = Tokens::from_args(token, tokens.as_deref())?;
            let report = renkei_bench::smoke(&target, &tokens).await?;
            println!("{}", report.markdown());
            println!("smoke: ok");
            Ok(())
        }
        Command::Compare(opts) => {
            // On Ctrl-C or SIGTERM the compare future is dropped, which stops the servers it
            // started and drops their databases.
            tokio::select! {
                r = compare(opts, invocation) => r,
                () = shutdown_signal() => Err(Error::Usage(
                    "interrupted: servers stopped, their databases removed".into(),
                )),
            }
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
