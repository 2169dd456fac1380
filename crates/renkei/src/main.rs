//! `renkei`: the gateway binary (serve, import).

mod admin;
mod built_with;
mod config;
mod loader;

use clap::{Parser, Subcommand};
use config::{Config, Overrides};
use renkei_repository::{Repository, RepositoryOptions};
use renkei_store::{DatabaseUrl, Store, StoreOptions};
use std::net::TcpListener;
use std::process::ExitCode;

/// glibc's allocator was a quarter of the server's CPU time while ingesting (malloc, free and
/// their consolidation in a profile of `renkei-bench load`); see docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "renkei",
    version,
    about = "FHIR R4 gateway for regional health-information networks"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "RENKEI_CONFIG")]
    config: Option<String>,
    /// Database URL: sqlite:PATH or postgres://USER@HOST/DB (default: sqlite:./renkei-data/renkei.db).
    #[arg(long, global = true, env = "RENKEI_DATABASE_URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server.
    Serve {
        /// Address to listen on (default 127.0.0.1:8080); port 0 picks a free port.
        #[arg(long, env = "RENKEI_LISTEN")]
        listen: Option<String>,
        /// Load the demo network (fixtures/demo) if the database is empty. `--demo=false` or
        /// RENKEI_DEMO=false turns off `demo = true` of the configuration file.
        // An Option, so that "not given" and "false" differ: a plain flag read false either
        // way and could not override the file.
        #[arg(
            long,
            env = "RENKEI_DEMO",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = demo_switch
        )]
        demo: Option<bool>,
        /// Serve HTTPS with this certificate chain (PEM).
        #[arg(long, env = "RENKEI_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<String>,
        /// The certificate's private key (PEM).
        #[arg(long, env = "RENKEI_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<String>,
        /// CA (PEM) for client certificates (mutual TLS); presented certificates must chain to
        /// it and match the client's registration.
        #[arg(long, env = "RENKEI_CLIENT_CA", requires = "tls_cert")]
        client_ca: Option<String>,
    },
    /// Load FHIR Bundles (transaction, batch, collection) and NDJSON files into the database.
    Import {
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Manage registered clients (facility systems, patient apps, auditors, administrators).
    Client {
        #[command(subcommand)]
        action: ClientCommand,
    },
    /// Print an access token for a registered client (alone on the last line).
    Token {
        #[arg(long)]
        client_id: String,
        /// Practitioner the token acts for (Practitioner/ID), as fhirUser.
        #[arg(long)]
        practitioner: Option<String>,
        /// Requested scopes (space separated); default: everything registered.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// The audit trail: verify its hash chain, export it for a SIEM.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Print the SQL and the database's query plan of a search, as the server would run it
    /// (PostgreSQL: EXPLAIN ANALYZE, which executes the statement).
    Explain {
        /// The search relative to the FHIR base, e.g. 'Observation?patient=P1&code=C',
        /// 'Patient/P1/Observation?code=C' or 'Patient/P1/$everything'.
        search: String,
        /// Plan it as this facility sees it (Organization/ID), consent predicate included;
        /// without it, unrestricted (the gateway's own view).
        #[arg(long, value_parser = organization_reference)]
        organization: Option<String>,
        /// Purpose of use of the facility's request (a v3 ActReason purpose of use).
        #[arg(long, default_value = "TREAT", value_parser = purpose_of_use)]
        purpose: String,
    },
    /// Rebuild the search index rows of every stored resource (after a change of search
    /// parameter definitions, of index extraction or of `time_zone`, which it records).
    Reindex {
        /// Resources per write transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register (or replace) a client.
    Add {
        #[arg(long)]
        id: String,
        /// The client's facility, Organization/ID.
        #[arg(long)]
        organization: String,
        /// facility, patient, auditor or admin.
        #[arg(long, default_value = "facility")]
        role: String,
        /// For patient clients: Patient/ID.
        #[arg(long)]
        patient: Option<String>,
        #[arg(long)]
        practitioner: Option<String>,
        /// SMART v2 scopes, space separated (default by role, e.g. system/*.cruds).
        #[arg(long)]
        scope: Option<String>,
        /// JWKS file with the public keys of the client's assertions.
        #[arg(long)]
        jwks: Option<String>,
        /// The client may break the glass (ETREAT).
        #[arg(long)]
        break_glass: bool,
        /// SHA-256 of the client's TLS certificate, for certificate-bound tokens.
        #[arg(long)]
        cert_fingerprint: Option<String>,
    },
    /// List registered clients.
    List,
    /// Remove a client.
    Remove {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit code 1 and the first bad record when it was tampered with.
    Verify {
        /// An anchor printed by an earlier verify (`SEQ:HASH`), kept outside the database:
        /// the record must still be there with that hash. Catches a trail rewritten or cut
        /// short by someone who recomputed every hash. Repeatable.
        #[arg(long = "expect-head", value_name = "SEQ:HASH")]
        expect_head: Vec<String>,
    },
    /// Write AuditEvents as NDJSON to stdout, then verify the trail as `verify` does: exit
    /// code 1, after writing every event, when it was tampered with.
    Export {
        /// Only events recorded at or after this date/instant.
        #[arg(long)]
        since: Option<String>,
    },
}

/// Prints a line for the operator of a running server: `println!` panics when standard output
/// is closed (`renkei serve | head -2`), which must not stop the server.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // An unset RENKEI_LOG means `info`; one that cannot be read is said so, not passed over
    // (every other setting that cannot be read stops the start).
    let filter = match std::env::var("RENKEI_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
        Ok(text) if text.trim().is_empty() => tracing_subscriber::EnvFilter::new("info"),
        Ok(text) => tracing_subscriber::EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!(
                "renkei: warning: RENKEI_LOG '{text}' is not a log filter ({e}); logging at info"
            );
            tracing_subscriber::EnvFilter::new("info")
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("renkei: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let (listen, demo) = match &cli.command {
        Command::Serve { listen, demo, .. } => (listen.clone(), *demo),
        _ => (None, None),
    };
    let config = Config::load(&Overrides {
        config: cli.config.clone(),
        listen,
        database: cli.database.clone(),
        demo,
    })
    .map_err(|e| e.to_string())?;
    // `serve`, `import` and `client add` may start a new database; the other commands only
    // make sense on one that exists.
    let creates = matches!(
        cli.command,
        Command::Serve { .. }
            | Command::Import { .. }
            | Command::Client {
                action: ClientCommand::Add { .. }
            }
    );
    if creates {
        refuse_foreign_database(&config)?;
    } else {
        require_existing_database(&config)?;
    }
    // What `serve` needs besides the database is checked first: a typo in the address or a
    // TLS file must not leave a new (or newly migrated) database behind.
    let serving = matches!(cli.command, Command::Serve { .. });
    if serving {
        check_listen_address(&config.listen)?;
    }
    let tls_config = match &cli.command {
        Command::Serve {
            tls_cert: Some(cert),
            tls_key: Some(key),
            client_ca,
            ..
        } => Some(renkei_http::tls::server_config(
            &renkei_http::tls::TlsSettings {
                cert: cert.into(),
                key: key.into(),
                client_ca: client_ca.as_ref().map(Into::into),
            },
        )?),
        _ => None,
    };
    let repository = open_repository(&config, serving)?;
    let store = repository.store().clone();
    match cli.command {
        Command::Serve { .. } => serve(config, repository, tls_config),
        Command::Client { action } => match action {
            ClientCommand::Add {
                id,
                organization,
                role,
                patient,
                practitioner,
                scope,
                jwks,
                break_glass,
                cert_fingerprint,
            } => {
                let registration = admin::add_client(
                    &store,
                    admin::NewClient {
                        id,
                        organization,
                        role,
                        patient,
                        practitioner,
                        scope,
                        jwks,
                        break_glass,
                        cert_fingerprint,
                    },
                )?;
                println!(
                    "registered client '{}' ({:?} of {}), scopes: {}",
                    registration.client_id,
                    registration.role,
                    registration.organization,
                    registration.scopes.join(" ")
                );
                Ok(())
            }
            ClientCommand::List => {
                for c in admin::list_clients(&store)? {
                    // What the client is bound to, so registrations can be reviewed here.
                    let mut bound = Vec::new();
                    if let Some(patient) = &c.patient {
                        bound.push(format!("patient={patient}"));
                    }
                    if let Some(practitioner) = &c.practitioner {
                        bound.push(format!("practitioner={practitioner}"));
                    }
                    if c.jwks.is_some() {
                        bound.push("jwks".to_string());
                    }
                    if let Some(fingerprint) = &c.cert_fingerprint {
                        bound.push(format!("cert={fingerprint}"));
                    }
                    if c.break_glass {
                        bound.push("break-glass".to_string());
                    }
                    let bound = if bound.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", bound.join(", "))
                    };
                    println!(
                        "{:<28} {:<10} {:<36} {}{bound}",
                        c.client_id,
                        format!("{:?}", c.role).to_lowercase(),
                        c.organization,
                        c.scopes.join(" "),
                    );
                }
                Ok(())
            }
            ClientCommand::Remove { id } => {
                if admin::remove_client(&store, &id)? {
                    println!("removed client '{id}'");
                    Ok(())
                } else {
                    Err(format!("no client '{id}' is registered"))
                }
            }
        },
        Command::Token {
            client_id,
            practitioner,
            scope,
            ttl,
        } => {
            let token = admin::issue_token(
                &store,
                &client_id,
                practitioner.as_deref(),
                scope.as_deref(),
                ttl,
            )?;
            println!("access token for '{client_id}' (valid {ttl} s):\n{token}");
            Ok(())
        }
        Command::Audit { action } => match action {
            AuditCommand::Verify { expect_head } => admin::verify_audit(&store, &expect_head),
            AuditCommand::Export { since } => {
                // A `--since` without a zone is read in the server's zone, as `_since` is.
                renkei_repository::set_local_zone(config.time_zone);
                let since_ms = match since {
                    Some(text) => renkei_repository::parse_instant_ms(&text)
                        .ok_or_else(|| format!("--since '{text}' is not a FHIR date"))?,
                    None => 0,
                };
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                let n = admin::export_audit(&store, since_ms, &mut out)?;
                eprintln!("exported {n} audit events");
                // Written whole first: the events are the evidence either way.
                admin::check_exported_trail(&store)
            }
        },
        Command::Import { files } => {
            renkei_repository::set_local_bases(&offline_local_bases(&config, &store)?);
            use_index_rules(&config, &store)?;
            let operator = loader::Operator::new("renkei import");
            let report = loader::import_files(&repository, &files, &operator).map_err(|e| {
                format!("{e}\nnothing was imported: every file is read and parsed before anything is written")
            })?;
            let total = report.counts.total();
            if total == 0 {
                println!("imported no resources");
            } else {
                println!(
                    "imported {}:\n{}",
                    plural(total, "resource", "resources"),
                    report.counts.report()
                );
            }
            if report.failures.is_empty() {
                return Ok(());
            }
            for failure in &report.failures {
                eprintln!("renkei: import: {failure}");
            }
            for skipped in &report.not_attempted {
                eprintln!("renkei: import: not imported: {skipped}");
            }
            Err(format!(
                "import incomplete: {} failed (listed above); {} imported",
                plural(report.failures.len(), "entry or line", "entries or lines"),
                plural(report.counts.total(), "resource was", "resources were")
            ))
        }
        Command::Explain {
            search,
            organization,
            purpose,
        } => {
            // Plans date values as the server reads them (no check of the index: read only).
            renkei_repository::set_local_zone(config.time_zone);
            let plan = renkei_http::explain_plan(&search, &explain_parse_options(&config))
                .map_err(|e| e.to_string())?;
            let policy = consent_policy(&config);
            let visibility = match organization {
                Some(organization) => renkei_store::Visibility::Facility {
                    organization,
                    practitioner: None,
                    purpose,
                    now_ms: chrono::Utc::now().timestamp_millis(),
                    break_glass: None,
                    deny_holds_on_break_glass: policy.patient_deny_holds_on_break_glass,
                    implicit_permit: policy.implicit == renkei_consent::Implicit::OptOut,
                },
                None => renkei_store::Visibility::Unrestricted,
            };
            let explanation = repository
                .explain_search(&plan, &visibility)
                .map_err(|e| e.to_string())?;
            println!("-- {search}\n{}", explanation.sql);
            println!("-- binds: {}", explanation.binds.join(", "));
            println!("-- plan ({}):", store.backend().name());
            for line in explanation.plan {
                println!("{line}");
            }
            Ok(())
        }
        Command::Reindex { batch } => {
            // A running server would go on writing rows under its own rules (its time zone,
            // an older index format) into what this rebuilds under new ones, and nothing
            // would say so. Under the same rules, rebuilding beside it is harmless.
            if built_with::changes_rules(&config, &store)?
                && renkei_access::audit_log::served_elsewhere(&store).map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "a server is running on {}, and this reindex changes the rules it indexes \
                     by (time zone, linking systems, base_url or index format): stop every \
                     server of this database first, then reindex, then start them with the new \
                     settings or binary",
                    DatabaseUrl::parse(&config.database)
                        .map(|url| url.redacted())
                        .unwrap_or_default()
                ));
            }
            renkei_repository::set_local_bases(&offline_local_bases(&config, &store)?);
            renkei_repository::set_local_zone(config.time_zone);
            let zone = config.time_zone.to_string();
            let started = std::time::Instant::now();
            let reindexed = built_with::rebuilding(&config, &store, || {
                repository
                    .reindex(batch, |done| {
                        if done % 10_000 < batch as u64 {
                            tracing::info!(done, "reindexing");
                        }
                    })
                    .map_err(|e| e.to_string())
            })?;
            println!(
                "reindexed {} resources and {} deleted records' tombstones in {:.1} s (time zone {zone})",
                reindexed.resources,
                reindexed.tombstones,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// The setting holding the address the last server listened on.
const SERVED_AT: &str = "served_at";

/// The server's own bases for commands that do not listen (`import`, `reindex`): those of the
/// configured listen address and of the address a server last listened on, which they would
/// otherwise not know (`serve --listen`), so they index absolute references as it does.
fn offline_local_bases(config: &Config, store: &Store) -> Result<Vec<String>, String> {
    let mut bases = config.local_bases(&config.listen);
    let served = store
        .read(|tx| tx.setting(SERVED_AT))
        .map_err(|e| e.to_string())?;
    if let Some(address) = served {
        bases.extend(config.local_bases(&address));
    }
    Ok(bases)
}

/// Reads zone-less dates in the configured zone from now on, for `serve` and `import`, and
/// refuses a database whose rows were built under other rules ([`built_with::check`]).
fn use_index_rules(config: &Config, store: &Store) -> Result<(), String> {
    renkei_repository::set_local_zone(config.time_zone);
    built_with::check(config, store)
}

/// `--organization` as consent decisions name a facility: `Organization/ID`. A bare ID would
/// plan for a facility no consent or record names.
/// `--purpose`: a code consents can name (a misspelt one would plan a search no request
/// makes).
fn purpose_of_use(text: &str) -> Result<String, String> {
    match renkei_consent::PURPOSE_OF_USE_CODES.contains(&text) {
        true => Ok(text.to_string()),
        false => Err(format!(
            "'{text}' is no v3-ActReason purpose of use (such as TREAT, ETREAT, HPAYMT, PUBHLTH)"
        )),
    }
}

fn organization_reference(text: &str) -> Result<String, String> {
    renkei_auth::check_reference(text, &["Organization"], "--organization")
        .map(|()| text.to_string())
        .map_err(|e| e.description)
}

/// The consent policy the configuration sets, for `serve` and `explain` alike.
fn consent_policy(config: &Config) -> renkei_consent::Policy {
    renkei_consent::Policy {
        implicit: if config.implicit_policy == "opt-out" {
            renkei_consent::Implicit::OptOut
        } else {
            renkei_consent::Implicit::OptIn
        },
        patient_deny_holds_on_break_glass: config.patient_deny_holds_on_break_glass,
    }
}

/// How the server parses searches, strict: `explain` must not plan less than was asked.
fn explain_parse_options(config: &Config) -> renkei_http::ParseOptions {
    renkei_http::ParseOptions {
        default_count: config.default_page_size,
        max_count: config.max_page_size,
        strict: true,
    }
}

/// Commands that work on what a gateway holds (`audit`, `client list`/`remove`, `token`,
/// `explain`, `reindex`) must not create an empty SQLite database where a mistyped path
/// points, and then report an intact empty trail, no clients or "reindexed 0 resources".
/// (A PostgreSQL database that does not exist fails to connect by itself.)
/// Nor may they put Renkei's schema into a file or database that is not a gateway's (an empty
/// file, another application's database, a restore gone wrong) and certify it.
fn require_existing_database(config: &Config) -> Result<(), String> {
    let url = DatabaseUrl::parse(&config.database).map_err(|e| e.to_string())?;
    if let DatabaseUrl::Sqlite(path) = &url {
        if !path.exists() {
            return Err(format!(
                "no database at {}: this command works on an existing database and creates \
                 nothing (only `serve`, `import` and `client add` create one)",
                path.display()
            ));
        }
    }
    match schema_state(&url)? {
        renkei_store::SchemaState::Renkei => Ok(()),
        _ => Err(format!(
            "{} is not a Renkei database (it holds no Renkei schema): this command works on an \
             existing gateway's database and changes nothing",
            url.redacted()
        )),
    }
}

/// Commands that may start a database (`serve`, `import`, `client add`) do so only where
/// nothing else is: Renkei's tables must not be put beside another application's.
fn refuse_foreign_database(config: &Config) -> Result<(), String> {
    let url = DatabaseUrl::parse(&config.database).map_err(|e| e.to_string())?;
    match schema_state(&url)? {
        renkei_store::SchemaState::Foreign => Err(format!(
            "{} holds another application's tables and no Renkei schema: give Renkei a \
             database (or PostgreSQL schema) of its own",
            url.redacted()
        )),
        _ => Ok(()),
    }
}

fn schema_state(url: &DatabaseUrl) -> Result<renkei_store::SchemaState, String> {
    Store::schema_state(url).map_err(|e| format!("{e} (database {})", url.redacted()))
}

/// `--demo[=true|false]` and `RENKEI_DEMO`: exactly `true` or `false`, as every boolean
/// setting (CONFIGURATION.md), with a message naming the variable too.
fn demo_switch(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "--demo and RENKEI_DEMO take exactly true or false, not '{other}'"
        )),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn open_repository(config: &Config, serving: bool) -> Result<Repository, String> {
    let url = DatabaseUrl::parse(&config.database).map_err(|e| e.to_string())?;
    let store = Store::open(
        &url,
        &StoreOptions {
            max_connections: config.max_connections,
            connect_timeout: std::time::Duration::from_secs(config.database_wait_seconds),
            serving,
        },
    )
    .map_err(|e| format!("{e} (database {})", url.redacted()))?;
    tracing::info!(database = %url.redacted(), backend = store.backend().name(), "database ready");
    Ok(Repository::new(
        store,
        RepositoryOptions {
            linking: std::sync::Arc::new(config.linking.clone()),
            max_bundle_response_bytes: config.max_bundle_response_bytes,
            ..RepositoryOptions::default()
        },
    ))
}

/// Whether `serve` can listen on `listen` (a valid address, free now): bound and let go at
/// once, so that the server binds it for good only once its database is ready.
fn check_listen_address(listen: &str) -> Result<(), String> {
    TcpListener::bind(listen)
        .map(drop)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
}

fn serve(
    config: Config,
    repository: Repository,
    tls_config: Option<renkei_http::tls::ServerConfig>,
) -> Result<(), String> {
    if cfg!(feature = "unaudited-reads-benchmark") {
        eprintln!(
            "WARNING: this renkei binary was built with the unaudited-reads-benchmark feature: \
             reads are NOT audited. It exists only to measure what auditing costs; never run it \
             with real data."
        );
        tracing::warn!("built with unaudited-reads-benchmark: reads are not audited");
    }
    if cfg!(feature = "unindexed-writes-benchmark") {
        eprintln!(
            "WARNING: this renkei binary was built with the unindexed-writes-benchmark feature: \
             writes store NO search-index rows, so searches answer wrongly. It exists only to \
             measure what indexing costs; never run it with real data."
        );
        tracing::warn!("built with unindexed-writes-benchmark: writes are not indexed");
    }
    // Before binding: a refused database must not look like a server that came up.
    use_index_rules(&config, repository.store())?;
    let listener = TcpListener::bind(&config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    renkei_repository::set_local_bases(&config.local_bases(&address.to_string()));
    // For `import` and `reindex`, which do not listen: absolute references to this address
    // name records here for them as for the server.
    repository
        .store()
        .write(|tx| tx.put_setting(SERVED_AT, &address.to_string()))
        .map_err(|e| e.to_string())?;
    let mut demo_loaded = false;
    if config.demo {
        let operator = loader::Operator::new("renkei serve --demo");
        match loader::load_demo_if_empty(&repository, &operator).map_err(|e| e.to_string())? {
            Some(counts) => {
                demo_loaded = true;
                say!(
                    "demo network loaded: {} resources\n{}",
                    counts.total(),
                    counts.report()
                );
            }
            // The demo clients (break-glass, system/*.cruds) are for the demo data only: on
            // a database with other data they would be real credentials to real records.
            None => say!(
                "demo network: the database already holds data (resources or registered \
                 clients), so nothing was loaded"
            ),
        }
    }
    let store = repository.store().clone();
    let key = admin::server_key(&store)?;
    if demo_loaded {
        print_demo_tokens(&store)?;
    } else if config.demo {
        // A database the demo was loaded into earlier (the README's command run again)
        // still has its demo clients: fresh tokens for them give nothing new. Any other
        // database gets none, since there they would be real credentials to real records.
        let registered: Vec<String> = admin::list_clients(&store)?
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        if admin::demo_clients()
            .iter()
            .all(|c| registered.contains(&c.id))
        {
            print_demo_tokens(&store)?;
        } else {
            say!("no demo tokens issued: the demo clients are not all registered on this database (it was not loaded with the demo network, or a demo client was removed since)");
        }
    }
    let policy = consent_policy(&config);
    let state = renkei_http::AppState {
        gate: renkei_access::Gate::new(repository, policy),
        auth: renkei_http::auth::AuthState {
            key: std::sync::Arc::new(key),
            token_ttl_seconds: config.token_ttl_seconds,
            clients: renkei_http::auth::ClientDirectory::default(),
            token_urls: renkei_http::auth::token_endpoint_urls(
                config.base_url.as_deref(),
                scheme,
                address,
            ),
        },
        max_body_bytes: config.max_body_bytes,
        default_page_size: config.default_page_size,
        max_page_size: config.max_page_size,
        max_bundle_entries: config.max_bundle_entries,
        max_bundle_response_bytes: config.max_bundle_response_bytes,
        started_at: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        base_url: config.base_url.clone(),
        cors: config.cors.clone(),
    };
    let gate = state.gate.clone();
    let system = actix_web::rt::System::new();
    let served = system.block_on(async move {
        let server = renkei_http::serve(listener, state, config.workers, tls_config)
            .map_err(|e| format!("cannot start the server: {e}"))?;
        say!("Renkei listening on {scheme}://{address}/fhir");
        server.await.map_err(|e| format!("server failed: {e}"))
    });
    // On a graceful stop, journaled read AuditEvents go into the trail now rather than at
    // the next start (a crash leaves them in the journal, which the next start replays).
    if let Err(e) = gate.flush_audit() {
        tracing::warn!(error = %e, "journaled audit events stay in the journal until the next start");
    }
    served
}

/// Registers the demo network's clients that are not registered yet and prints a ready token
/// for each. A client already registered is kept as it is: registering it again would end the
/// tokens printed by an earlier start (or by another gateway on the same database).
fn print_demo_tokens(store: &renkei_store::Store) -> Result<(), String> {
    say!("demo clients and tokens (valid 12 h; send as Authorization: Bearer <token>):");
    let registered: Vec<String> = admin::list_clients(store)?
        .into_iter()
        .map(|client| client.client_id)
        .collect();
    for client in admin::demo_clients() {
        let id = client.id.clone();
        if !registered.contains(&id) {
            admin::add_client(store, client)?;
        }
        // As registered now: an operator may have changed a demo client since.
        let organization = admin::client(store, &id)?.organization;
        let token = admin::issue_token(store, &id, None, None, 12 * 3600)?;
        say!("  {id} ({organization}):\n    {token}");
    }
    Ok(())
}
