//! `renkei`: the gateway binary (serve, import).

mod config;
mod loader;

use clap::{Parser, Subcommand};
use config::{Config, Overrides};
use renkei_repository::{Repository, RepositoryOptions};
use renkei_store::{DatabaseUrl, Store, StoreOptions};
use std::net::TcpListener;
use std::process::ExitCode;

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
        /// Load the demo network (fixtures/demo) if the database is empty.
        #[arg(long, env = "RENKEI_DEMO")]
        demo: bool,
    },
    /// Load FHIR Bundles (transaction, batch, collection) and NDJSON files into the database.
    Import {
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Rebuild the search index rows of every stored resource (after a change of search
    /// parameter definitions or of index extraction).
    Reindex {
        /// Resources per write transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RENKEI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
        Command::Serve { listen, demo } => (listen.clone(), *demo),
        Command::Import { .. } | Command::Reindex { .. } => (None, false),
    };
    let config = Config::load(&Overrides {
        config: cli.config.clone(),
        listen,
        database: cli.database.clone(),
        demo,
    })
    .map_err(|e| e.to_string())?;
    let repository = open_repository(&config)?;
    match cli.command {
        Command::Serve { .. } => serve(config, repository),
        Command::Import { files } => {
            let counts = loader::import_files(&repository, &files).map_err(|e| e.to_string())?;
            println!(
                "imported {} resources:\n{}",
                counts.total(),
                counts.report()
            );
            Ok(())
        }
        Command::Reindex { batch } => {
            let started = std::time::Instant::now();
            let count = repository
                .reindex(batch, |done| {
                    if done % 10_000 < batch as u64 {
                        tracing::info!(done, "reindexing");
                    }
                })
                .map_err(|e| e.to_string())?;
            println!(
                "reindexed {count} resources in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn open_repository(config: &Config) -> Result<Repository, String> {
    let url = DatabaseUrl::parse(&config.database).map_err(|e| e.to_string())?;
    let store = Store::open(
        &url,
        &StoreOptions {
            max_connections: config.max_connections,
            ..StoreOptions::default()
        },
    )
    .map_err(|e| format!("{e} (database {})", url.redacted()))?;
    tracing::info!(database = %url.redacted(), backend = store.backend().name(), "database ready");
    Ok(Repository::new(store, RepositoryOptions::default()))
}

fn serve(config: Config, repository: Repository) -> Result<(), String> {
    if config.demo {
        match loader::load_demo_if_empty(&repository).map_err(|e| e.to_string())? {
            Some(counts) => println!(
                "demo network loaded: {} resources\n{}",
                counts.total(),
                counts.report()
            ),
            None => println!("demo network not loaded: the database already holds data"),
        }
    }
    let listener = TcpListener::bind(&config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let state = renkei_http::AppState {
        repository,
        max_body_bytes: config.max_body_bytes,
        default_page_size: config.default_page_size,
        max_page_size: config.max_page_size,
        default_custodian: None,
        started_at: chrono::Utc::now().format("%Y-%m-%d").to_string(),
    };
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = renkei_http::serve(listener, state, config.workers)
            .map_err(|e| format!("cannot start the server: {e}"))?;
        println!("Renkei listening on http://{address}/fhir");
        server.await.map_err(|e| format!("server failed: {e}"))
    })
}
