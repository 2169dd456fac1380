//! The servers `compare` runs side by side: which kinds there are, which executable runs each,
//! how each starts on a fresh database (nginx: on one static file) and how it is stopped and
//! cleaned up.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{Target, Tokens, FHIR_JSON};
use crate::generate::Manifest;
use crate::workload::{Access, Workload};
use crate::Error;

use super::CompareOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    RenkeiSqlite,
    /// Renkei on SQLite from a build with the `unaudited-reads-benchmark` feature (no
    /// AuditEvent for reads): the audit-off baseline of issue 5.
    RenkeiSqliteUnaudited,
    RenkeiPostgres,
    HeliosSqlite,
    HeliosPostgres,
    /// nginx answering every read with one static Patient: the HTTP ceiling of issue 7.
    NginxStatic,
}

/// The program behind a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Software {
    Renkei,
    Helios,
    Nginx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Sqlite,
    Postgres,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::RenkeiSqlite,
        Kind::RenkeiSqliteUnaudited,
        Kind::RenkeiPostgres,
        Kind::HeliosSqlite,
        Kind::HeliosPostgres,
        Kind::NginxStatic,
    ];

    pub fn parse(text: &str) -> Result<Kind, Error> {
        let text = text.trim();
        Kind::ALL
            .into_iter()
            .find(|k| k.label() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.label()).collect();
                Error::Usage(format!("unknown server {text} ({})", names.join(", ")))
            })
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::RenkeiSqlite => "renkei-sqlite",
            Kind::RenkeiSqliteUnaudited => "renkei-sqlite-unaudited",
            Kind::RenkeiPostgres => "renkei-postgres",
            Kind::HeliosSqlite => "helios-sqlite",
            Kind::HeliosPostgres => "helios-postgres",
            Kind::NginxStatic => "nginx-static",
        }
    }

    pub fn software(self) -> Software {
        match self {
            Kind::RenkeiSqlite | Kind::RenkeiSqliteUnaudited | Kind::RenkeiPostgres => {
                Software::Renkei
            }
            Kind::HeliosSqlite | Kind::HeliosPostgres => Software::Helios,
            Kind::NginxStatic => Software::Nginx,
        }
    }

    /// The database behind it; none for the static file server.
    pub fn storage(self) -> Option<Storage> {
        match self {
            Kind::RenkeiSqlite | Kind::RenkeiSqliteUnaudited | Kind::HeliosSqlite => {
                Some(Storage::Sqlite)
            }
            Kind::RenkeiPostgres | Kind::HeliosPostgres => Some(Storage::Postgres),
            Kind::NginxStatic => None,
        }
    }

    /// The Renkei builds the goals are about (reads audited); the unaudited build is only the
    /// baseline of the audit-cost ratio.
    pub fn is_audited_renkei(self) -> bool {
        matches!(self, Kind::RenkeiSqlite | Kind::RenkeiPostgres)
    }

    /// Whether the data set is loaded into it (nginx serves a file and loads nothing).
    pub fn loads_data(self) -> bool {
        self.storage().is_some()
    }

    /// The Helios servers to compare this one with, preferred first: the same storage, then
    /// the other.
    pub fn helios_peers(self) -> [Kind; 2] {
        if self.storage() == Some(Storage::Postgres) {
            [Kind::HeliosPostgres, Kind::HeliosSqlite]
        } else {
            [Kind::HeliosSqlite, Kind::HeliosPostgres]
        }
    }

    /// What is measured on it: every workload as the owner; on the audited Renkei builds also
    /// the same-patient owner and consented runs of the searches (the consent overhead); the
    /// unaudited build only as the owner (it is there for the audit on/off ratio); nginx only
    /// `read` (a static file answers no search).
    pub fn plans(
        self,
        workloads: &[Workload],
        has_consented_pairs: bool,
    ) -> Vec<(Workload, Access)> {
        let mut plans: Vec<(Workload, Access)> = workloads
            .iter()
            .filter(|w| self.loads_data() || **w == Workload::Read)
            .map(|w| (*w, Access::Owner))
            .collect();
        if self.is_audited_renkei() && has_consented_pairs {
            for w in workloads.iter().filter(|w| w.expects_entries()) {
                plans.push((*w, Access::PairOwner));
                plans.push((*w, Access::Consented));
            }
        }
        plans
    }
}

/// The executables `compare` may start, looked up once; a missing optional one says why.
#[derive(Debug, Clone)]
pub struct Executables {
    renkei: PathBuf,
    renkei_unaudited: Result<PathBuf, String>,
    hfs: Result<PathBuf, String>,
    nginx: Result<PathBuf, String>,
}

impl Executables {
    pub fn find(opts: &CompareOptions) -> Executables {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let cargo_hfs: Vec<PathBuf> = home.iter().map(|h| h.join(".cargo/bin/hfs")).collect();
        Executables {
            renkei: opts.renkei.clone(),
            renkei_unaudited: match &opts.renkei_unaudited {
                None => Err("no --renkei-unaudited binary given".into()),
                Some(p) if !p.is_file() => Err(format!("{} not found", p.display())),
                Some(p) => Ok(p.clone()),
            },
            hfs: find_executable(opts.hfs.as_deref(), &cargo_hfs, "hfs"),
            nginx: find_executable(
                opts.nginx.as_deref(),
                &[PathBuf::from("/usr/sbin/nginx")],
                "nginx",
            ),
        }
    }

    /// The executable that runs `kind`, or why it cannot run here (with how to fix that).
    pub fn for_kind(&self, kind: Kind) -> Result<&Path, String> {
        let (found, remedy) = match kind {
            Kind::RenkeiSqlite | Kind::RenkeiPostgres => return Ok(&self.renkei),
            Kind::RenkeiSqliteUnaudited => (
                &self.renkei_unaudited,
                "build one with `cargo build --release -p renkei --features \
                 renkei/unaudited-reads-benchmark` and copy target/release/renkei aside",
            ),
            Kind::HeliosSqlite | Kind::HeliosPostgres => (
                &self.hfs,
                "cargo install helios-hfs --version 0.2.7 --locked --no-default-features \
                 --features R4,sqlite,postgres",
            ),
            Kind::NginxStatic => (&self.nginx, "--nginx PATH, or apt-get install nginx"),
        };
        found
            .as_deref()
            .map_err(|reason| format!("{reason} ({remedy})"))
    }
}

/// `explicit` if given (and present), else the first of `preferred`, else `name` on `PATH`.
fn find_executable(
    explicit: Option<&Path>,
    preferred: &[PathBuf],
    name: &str,
) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("{} not found", p.display()))
        };
    }
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|p| p.join(name)).collect())
        .unwrap_or_default();
    preferred
        .iter()
        .chain(&on_path)
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| format!("no {name} binary"))
}

/// A scratch directory for one server (database file, log, configuration), removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(label: &str) -> Result<WorkDir, Error> {
        let dir = std::env::temp_dir().join(format!("renkei-bench-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(WorkDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL database created for one server under the admin URL, dropped on drop.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(admin_url: &str, name: String) -> Result<PgDatabase, Error> {
        psql(admin_url, &format!("CREATE DATABASE {name}"))?;
        Ok(PgDatabase {
            url: database_url_beside(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Result<(), Error> {
    let out = Command::new("psql")
        .args([url, "-qc", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Server(format!("psql: {e}")))?;
    if !out.status.success() {
        return Err(Error::Server(format!(
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The URL of database `name` on the server of `admin_url`: same user, host, port and options.
fn database_url_beside(admin_url: &str, name: &str) -> String {
    let (location, options) = match admin_url.split_once('?') {
        Some((location, options)) => (location, Some(options)),
        None => (admin_url, None),
    };
    let server = match location.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split('/').next().unwrap_or_default();
            format!("{scheme}://{authority}")
        }
        None => location
            .rsplit_once('/')
            .map_or(location, |(server, _)| server)
            .to_string(),
    };
    match options {
        Some(options) => format!("{server}/{name}?{options}"),
        None => format!("{server}/{name}"),
    }
}

/// A running server; stops it and removes its database and scratch directory when dropped.
pub struct Running {
    pub kind: Kind,
    pub base: String,
    /// What `report::db_bytes` measures (SQLite file, data directory or PostgreSQL URL); none
    /// for nginx.
    pub database: Option<String>,
    pub tokens: Tokens,
    /// The size of the one response nginx serves.
    pub static_response_bytes: Option<usize>,
    child: Child,
    // Held for their `Drop` only, which runs after `Running::drop` has stopped the process:
    // the database is dropped, then the scratch directory removed.
    _postgres: Option<PgDatabase>,
    _work_dir: WorkDir,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.kind.software() == Software::Nginx {
            // SIGKILL would stop only the master and leave its workers serving the port.
            terminate(&mut self.child, Duration::from_secs(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM and waits up to `grace` for the process to exit.
fn terminate(child: &mut Child, grace: Duration) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !sent.is_ok_and(|s| s.success()) {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How to start one server and where it answers.
struct Launch {
    command: Command,
    base: String,
    database: Option<String>,
    static_response_bytes: Option<usize>,
}

/// Starts `kind` from `executable` on `port`, waits until it answers `metadata`, and for
/// Renkei registers one client per facility of the manifest and issues their tokens.
pub async fn start(
    kind: Kind,
    executable: &Path,
    opts: &CompareOptions,
    port: u16,
    manifest: &Manifest,
) -> Result<Running, Error> {
    let work_dir = WorkDir::create(kind.label())?;
    let dir = work_dir.path();
    let postgres = match kind.storage() {
        Some(Storage::Postgres) => Some(PgDatabase::create(
            &opts.pg_admin_url,
            format!(
                "bench_{}_{}_{port}",
                kind.label().replace('-', "_"),
                std::process::id()
            ),
        )?),
        Some(Storage::Sqlite) | None => None,
    };
    let postgres_url = postgres.as_ref().map(|pg| pg.url.clone());
    let launch = match kind.software() {
        Software::Renkei => renkei_launch(executable, dir, port, postgres_url),
        Software::Helios => {
            helios_launch(executable, dir, port, postgres_url, &opts.search_parameters)?
        }
        Software::Nginx => nginx_launch(executable, dir, port, &opts.data, manifest)?,
    };
    let log_path = dir.join("server.log");
    let child = spawn_logged(launch.command, &log_path)?;
    let mut running = Running {
        kind,
        base: launch.base,
        database: launch.database,
        tokens: Tokens::None,
        static_response_bytes: launch.static_response_bytes,
        child,
        _postgres: postgres,
        _work_dir: work_dir,
    };
    wait_ready(&running.base, &mut running.child, &log_path).await?;
    if kind.software() == Software::Renkei {
        let log = fs::read_to_string(&log_path).map_err(|e| Error::io(&log_path, e))?;
        check_audit_build(kind, &log)
            .map_err(|e| Error::Usage(format!("{}: {e}", executable.display())))?;
        let database = running.database.as_deref().unwrap_or_default();
        running.tokens = facility_tokens(executable, database, manifest)?;
    }
    Ok(running)
}

fn renkei_launch(executable: &Path, dir: &Path, port: u16, postgres_url: Option<String>) -> Launch {
    let database =
        postgres_url.unwrap_or_else(|| format!("sqlite:{}", dir.join("renkei.db").display()));
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(executable);
    command
        .args(["serve", "--listen", &listen, "--database", &database])
        .env("RENKEI_LOG", "warn");
    Launch {
        command,
        base: format!("http://{listen}/fhir"),
        database: Some(database),
        static_response_bytes: None,
    }
}

/// Helios (`hfs` 0.2.7): SQLite file or PostgreSQL database, the R4 search parameters copied
/// into its data directory.
fn helios_launch(
    executable: &Path,
    dir: &Path,
    port: u16,
    postgres_url: Option<String>,
    search_parameters: &Path,
) -> Result<Launch, Error> {
    let params = dir.join("search-parameters-r4.json");
    fs::copy(search_parameters, &params).map_err(|e| Error::io(search_parameters, e))?;
    // On SQLite the size reported is the data directory's (database, WAL, search parameters).
    let (backend, database_url, measured) = match postgres_url {
        Some(url) => ("postgres", url.clone(), url),
        None => (
            "sqlite",
            dir.join("hfs.db").display().to_string(),
            dir.display().to_string(),
        ),
    };
    let mut command = Command::new(executable);
    command
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--storage-backend",
            backend,
            "--database-url",
            &database_url,
        ])
        .arg("--data-dir")
        .arg(dir);
    Ok(Launch {
        command,
        base: format!("http://127.0.0.1:{port}"),
        database: Some(measured),
        static_response_bytes: None,
    })
}

/// The file nginx answers every request under `/fhir/` with.
const STATIC_PATIENT_FILE: &str = "patient.json";

/// nginx in the foreground on a generated configuration serving one Patient of the data set.
fn nginx_launch(
    executable: &Path,
    dir: &Path,
    port: u16,
    data: &Path,
    manifest: &Manifest,
) -> Result<Launch, Error> {
    let patient = static_patient(data, manifest)?;
    let patient_path = dir.join(STATIC_PATIENT_FILE);
    fs::write(&patient_path, &patient).map_err(|e| Error::io(&patient_path, e))?;
    let config_path = dir.join("nginx.conf");
    fs::write(&config_path, nginx_config(dir, port, STATIC_PATIENT_FILE))
        .map_err(|e| Error::io(&config_path, e))?;
    let mut command = Command::new(executable);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&config_path)
        .args(["-g", "daemon off;"]);
    Ok(Launch {
        command,
        base: format!("http://127.0.0.1:{port}/fhir"),
        database: None,
        static_response_bytes: Some(patient.len()),
    })
}

/// A minimal nginx configuration: one worker per core, pid, error log and temporary paths
/// inside `dir` (so it runs as root without /var/lib/nginx), no access log, and every request
/// under `/fhir/` (the reads' `/fhir/<type>/<id>` and the readiness check's `/fhir/metadata`)
/// answered with `dir/<file>` as FHIR JSON.
fn nginx_config(dir: &Path, port: u16, file: &str) -> String {
    let dir = dir.display();
    format!(
        r#"worker_processes auto;
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path "{dir}/client_body_temp";
    proxy_temp_path "{dir}/proxy_temp";
    fastcgi_temp_path "{dir}/fastcgi_temp";
    uwsgi_temp_path "{dir}/uwsgi_temp";
    scgi_temp_path "{dir}/scgi_temp";
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    open_file_cache max=16;

    server {{
        listen 127.0.0.1:{port};
        root "{dir}";
        types {{ }}
        default_type {FHIR_JSON};

        location /fhir/ {{
            try_files /{file} =404;
        }}
    }}
}}
"#
    )
}

/// Which bundles hold the Patients (`BundleFile::phase`: 0 organizations, 1 patients and
/// consents, 2 clinical data).
const PATIENTS_PHASE: u8 = 1;

/// The first Patient of the data set's first patients Bundle, serialized as nginx serves it.
fn static_patient(data: &Path, manifest: &Manifest) -> Result<Vec<u8>, Error> {
    let file = manifest
        .bundles
        .iter()
        .find(|b| b.phase == PATIENTS_PHASE)
        .ok_or_else(|| Error::Usage(format!("{}: no patients Bundle", data.display())))?;
    let path = data.join(&file.path);
    let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let bundle: Value = serde_json::from_slice(&text).map_err(|e| Error::json(&path, e))?;
    let patient = first_patient(&bundle)
        .ok_or_else(|| Error::Usage(format!("{}: no Patient entry", path.display())))?;
    serde_json::to_vec(patient).map_err(|e| Error::json(&path, e))
}

fn first_patient(bundle: &Value) -> Option<&Value> {
    bundle["entry"]
        .as_array()?
        .iter()
        .map(|entry| &entry["resource"])
        .find(|resource| resource["resourceType"] == "Patient")
}

/// Renkei prints this at start when built with the benchmark-only feature that skips the
/// AuditEvents of reads.
const UNAUDITED_BUILD_MARKER: &str = "unaudited-reads-benchmark";

/// The unaudited kind must run an unaudited build and the others must not, or the audit
/// on/off ratio (and every other Renkei number) would silently measure the wrong thing.
fn check_audit_build(kind: Kind, startup_log: &str) -> Result<(), String> {
    let unaudited_build = startup_log.contains(UNAUDITED_BUILD_MARKER);
    match (kind == Kind::RenkeiSqliteUnaudited, unaudited_build) {
        (true, false) => Err(format!(
            "audits reads: {} needs a build with --features renkei/{UNAUDITED_BUILD_MARKER}",
            kind.label()
        )),
        (false, true) => Err(format!(
            "built with {UNAUDITED_BUILD_MARKER} (reads not audited): give it as \
             --renkei-unaudited and a normal build as --renkei"
        )),
        _ => Ok(()),
    }
}

fn spawn_logged(mut command: Command, log_path: &Path) -> Result<Child, Error> {
    let log = fs::File::create(log_path).map_err(|e| Error::io(log_path, e))?;
    let log_too = log.try_clone().map_err(|e| Error::io(log_path, e))?;
    let program = PathBuf::from(command.get_program());
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_too)
        .spawn()
        .map_err(|e| Error::io(&program, e))
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

/// One Renkei client per facility (`system/*.cruds` on behalf of its Organization) and a
/// token for each, so every facility writes and reads as itself.
fn facility_tokens(renkei: &Path, database: &str, manifest: &Manifest) -> Result<Tokens, Error> {
    let mut map = BTreeMap::new();
    for f in &manifest.facilities {
        let client = format!("bench-{}", f.id);
        let org = format!("Organization/{}", f.id);
        run_cli(
            renkei,
            &[
                "client",
                "add",
                "--database",
                database,
                "--id",
                &client,
                "--organization",
                &org,
                "--scope",
                "system/*.cruds",
            ],
        )?;
        let out = run_cli(
            renkei,
            &[
                "token",
                "--database",
                database,
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
    Ok(Tokens::PerFacility(map))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_parse_by_label() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.label()).unwrap(), kind);
        }
        assert_eq!(
            Kind::parse(" helios-postgres ").unwrap(),
            Kind::HeliosPostgres
        );
        let err = Kind::parse("nginx").unwrap_err().to_string();
        assert!(err.contains("nginx-static"), "{err}");
    }

    #[test]
    fn plans_per_kind() {
        let workloads = [Workload::Read, Workload::SearchLabTrend, Workload::Create];
        let audited = Kind::RenkeiSqlite.plans(&workloads, true);
        assert_eq!(audited.len(), 3 + 2);
        assert!(audited.contains(&(Workload::SearchLabTrend, Access::Consented)));
        assert_eq!(Kind::RenkeiPostgres.plans(&workloads, false).len(), 3);
        let owner_only: Vec<(Workload, Access)> =
            workloads.iter().map(|w| (*w, Access::Owner)).collect();
        assert_eq!(
            Kind::RenkeiSqliteUnaudited.plans(&workloads, true),
            owner_only
        );
        assert_eq!(Kind::HeliosPostgres.plans(&workloads, true), owner_only);
        assert_eq!(
            Kind::NginxStatic.plans(&workloads, true),
            vec![(Workload::Read, Access::Owner)]
        );
        assert!(Kind::NginxStatic
            .plans(&[Workload::Everything], true)
            .is_empty());
    }

    #[test]
    fn helios_peer_prefers_the_same_storage() {
        assert_eq!(Kind::RenkeiPostgres.helios_peers()[0], Kind::HeliosPostgres);
        assert_eq!(Kind::RenkeiSqlite.helios_peers()[0], Kind::HeliosSqlite);
    }

    #[test]
    fn database_url_keeps_user_host_port_and_options() {
        assert_eq!(
            database_url_beside("postgres://postgres@127.0.0.1:5432/test", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(
            database_url_beside("postgres://u:p@db:5433", "b1"),
            "postgres://u:p@db:5433/b1"
        );
        assert_eq!(
            database_url_beside("postgresql://u@h/test?sslmode=disable", "b1"),
            "postgresql://u@h/b1?sslmode=disable"
        );
    }

    #[test]
    fn nginx_config_keeps_everything_in_the_work_dir() {
        let conf = nginx_config(Path::new("/tmp/w"), 18405, "patient.json");
        assert!(conf.contains("listen 127.0.0.1:18405;"));
        assert!(conf.contains("pid \"/tmp/w/nginx.pid\";"));
        assert!(conf.contains("error_log \"/tmp/w/error.log\""));
        assert!(conf.contains("access_log off;"));
        for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            assert!(
                conf.contains(&format!("{temp}_temp_path \"/tmp/w/{temp}_temp\";")),
                "{temp}"
            );
        }
        assert!(conf.contains("location /fhir/ {"));
        assert!(conf.contains("try_files /patient.json =404;"));
        assert!(conf.contains("default_type application/fhir+json;"));
        // `daemon off` comes from the command line (-g): nginx refuses it twice.
        assert!(!conf.contains("daemon"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn static_patient_is_the_first_patient_entry() {
        let bundle = json!({
            "resourceType": "Bundle",
            "entry": [
                { "resource": { "resourceType": "Consent", "id": "c1" } },
                { "resource": { "resourceType": "Patient", "id": "p1" } },
                { "resource": { "resourceType": "Patient", "id": "p2" } },
            ]
        });
        assert_eq!(first_patient(&bundle).unwrap()["id"], "p1");
        assert!(first_patient(&json!({ "resourceType": "Bundle" })).is_none());
    }

    #[test]
    fn static_patient_comes_from_the_generated_data() {
        let dir =
            std::env::temp_dir().join(format!("renkei-bench-nginx-data-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let manifest =
            crate::generate::generate(&crate::generate::GenerateOptions::new(4, 2, 3, &dir))
                .unwrap();
        let patient: Value =
            serde_json::from_slice(&static_patient(&dir, &manifest).unwrap()).unwrap();
        assert_eq!(patient["resourceType"], "Patient");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn audit_build_must_match_the_kind() {
        let warning = "WARNING: this renkei binary was built with the unaudited-reads-benchmark \
                       feature: reads are NOT audited.";
        assert!(check_audit_build(Kind::RenkeiSqliteUnaudited, warning).is_ok());
        assert!(check_audit_build(Kind::RenkeiSqliteUnaudited, "").is_err());
        assert!(check_audit_build(Kind::RenkeiSqlite, "").is_ok());
        assert!(check_audit_build(Kind::RenkeiPostgres, warning).is_err());
    }

    #[test]
    fn missing_optional_executables_say_why() {
        let found = find_executable(Some(Path::new("/nonexistent/hfs")), &[], "hfs");
        assert_eq!(found.unwrap_err(), "/nonexistent/hfs not found");
        let none = find_executable(None, &[], "renkei-bench-no-such-program");
        assert_eq!(none.unwrap_err(), "no renkei-bench-no-such-program binary");
    }
}
