//! The harness: starts the real `renkei` binary on a fresh database (SQLite file or a
//! PostgreSQL database of its own), speaks HTTP (or HTTPS, with a per-test CA) to it, and
//! cleans up on drop.

use reqwest::blocking::Client;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::Value;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const FHIR_JSON: &str = "application/fhir+json";
pub const FHIR_XML: &str = "application/fhir+xml";
pub const JSON_PATCH: &str = "application/json-patch+json";

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const START_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// The backends to test: both unless `RENKEI_TEST_BACKENDS` names a subset explicitly.
pub fn backends() -> Vec<Backend> {
    match std::env::var("RENKEI_TEST_BACKENDS") {
        Err(_) => vec![Backend::Sqlite, Backend::Postgres],
        Ok(list) => {
            let chosen: Vec<Backend> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|name| match name {
                    "sqlite" => Backend::Sqlite,
                    "postgres" | "postgresql" | "pg" => Backend::Postgres,
                    other => panic!(
                        "RENKEI_TEST_BACKENDS: unknown backend '{other}' (use sqlite, postgres)"
                    ),
                })
                .collect();
            assert!(!chosen.is_empty(), "RENKEI_TEST_BACKENDS is empty");
            chosen
        }
    }
}

pub fn pg_admin_url() -> String {
    std::env::var("RENKEI_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string())
}

/// `postgres://u@h:p/admin?x` with the database name replaced.
fn pg_url_with_database(admin: &str, name: &str) -> String {
    let (main, query) = match admin.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (admin, None),
    };
    let scheme_end = main.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match main[scheme_end..].find('/') {
        Some(slash) => &main[..scheme_end + slash],
        None => main,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A database owned by one test; removed on drop.
pub struct Database {
    pub backend: Backend,
    pub url: String,
    temp_dir: Option<PathBuf>,
    pg_name: Option<String>,
}

impl Database {
    pub fn new(backend: Backend) -> Database {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("renkei-bb-{tag}"));
                std::fs::create_dir_all(&dir).expect("create temp dir");
                Database {
                    backend,
                    url: format!("sqlite:{}", dir.join("renkei.db").display()),
                    temp_dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("renkei_t_{tag}");
                if let Err(e) = renkei_store::admin::create_postgres_database(&admin, &name) {
                    panic!(
                        "PostgreSQL is required by the black-box tests but {admin} is unusable: {e}.\n\
                         Start PostgreSQL (or point RENKEI_TEST_PG_URL at one), or run only SQLite \
                         explicitly with RENKEI_TEST_BACKENDS=sqlite."
                    );
                }
                Database {
                    backend,
                    url: pg_url_with_database(&admin, &name),
                    temp_dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(name) = &self.pg_name {
            if let Err(e) = renkei_store::admin::drop_postgres_database(&pg_admin_url(), name) {
                eprintln!("warning: cannot drop test database {name}: {e}");
            }
        }
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (openssl and curl are needed): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Certificates for one test, made with the `openssl` command in a temporary directory
/// (removed on drop): a CA (`ca.pem`, `ca.key`), a server certificate for `localhost` and
/// 127.0.0.1 (`server.pem`, `server.key`) and a client certificate (`client.pem`,
/// `client.key`, CN `clinic-ehr`), both signed by the CA.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir =
            std::env::temp_dir().join(format!("renkei-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pki = Pki { dir };
        let sh = |script: &str| {
            run_ok(
                Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .current_dir(&pki.dir),
            )
        };
        sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=Renkei Test CA' 2>/dev/null");
        sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null");
        sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext");
        sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null");
        sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr -subj '/CN=clinic-ehr' 2>/dev/null");
        sh("printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client.ext");
        sh("openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null");
        pki
    }

    /// The path of one of the files, as a string (for environment variables).
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON: {e}\n{}",
                self.status,
                truncate(&self.body, 2000)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            truncate(&self.body, 3000)
        );
        self
    }

    /// Asserts an OperationOutcome body (JSON) and returns it.
    #[track_caller]
    pub fn outcome(&self) -> Value {
        let v = self.json();
        assert_eq!(
            v["resourceType"],
            "OperationOutcome",
            "expected an OperationOutcome, got {}",
            truncate(&self.body, 2000)
        );
        assert!(
            v["issue"].as_array().is_some_and(|a| !a.is_empty()),
            "OperationOutcome without issues: {v}"
        );
        v
    }
}

pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        text.to_string()
    } else {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…[{} more bytes]", &text[..end], text.len() - end)
    }
}

/// The client every test server registers, and the token requests send by default.
pub const TEST_CLIENT_ID: &str = "test-ehr";
pub const TEST_ORGANIZATION: &str = "Organization/test-facility";
pub const TEST_SCOPE: &str = "system/*.cruds";
const TOKEN_TTL: &str = "3600";

/// A running `renkei serve`, with a registered client (`test-ehr` of
/// `Organization/test-facility`, `system/*.cruds`) whose token every request helper sends as
/// `Authorization: Bearer …` unless told otherwise (`with_token`, `anonymous`, `request_as`,
/// or an explicit `Authorization` header). Started with `start_tls`, it speaks HTTPS and its
/// clients trust the test CA of its `Pki` (and nothing else).
pub struct Server {
    pub backend: Backend,
    pub base: String,
    /// An HTTP client that sends the default token on every request (for raw reqwest use).
    pub client: Client,
    /// The same without any default header (for unauthenticated raw requests).
    pub anonymous_client: Client,
    /// The default access token (client `test-ehr`).
    pub token: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
    env: Vec<(String, String)>,
    db: Option<Database>,
    /// The certificates of a TLS server (dropped after the process is gone).
    pki: Option<Pki>,
    startup_stdout: String,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_renkei")
}

/// A `renkei` command with the environment cleared of settings that would change it.
pub fn renkei_command() -> Command {
    let mut cmd = Command::new(binary());
    for name in [
        "RENKEI_CONFIG",
        "RENKEI_DATABASE_URL",
        "RENKEI_DATABASE_URL_FILE",
        "RENKEI_LISTEN",
        "RENKEI_DEMO",
        "RENKEI_MAX_BODY_BYTES",
        "RENKEI_DEFAULT_PAGE_SIZE",
        "RENKEI_MAX_PAGE_SIZE",
        "RENKEI_WORKERS",
        "RENKEI_MAX_CONNECTIONS",
        "RENKEI_TLS_CERT",
        "RENKEI_TLS_KEY",
        "RENKEI_CLIENT_CA",
        "RENKEI_TIME_ZONE",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("RENKEI_LOG", "warn");
    cmd
}

impl Server {
    pub fn start(backend: Backend) -> Server {
        Server::start_with(backend, &[])
    }

    pub fn start_with(backend: Backend, env: &[(&str, &str)]) -> Server {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        Server::launch(Database::new(backend), env, None)
    }

    /// A server speaking HTTPS with `pki`'s server certificate (no client certificate asked
    /// for); the request helpers verify it against `pki`'s CA.
    pub fn start_tls(backend: Backend, pki: Pki) -> Server {
        Server::start_tls_with(backend, pki, &[])
    }

    /// `start_tls` with more environment (e.g. `RENKEI_CLIENT_CA` for mutual TLS).
    pub fn start_tls_with(backend: Backend, pki: Pki, env: &[(&str, &str)]) -> Server {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        env.push(("RENKEI_TLS_CERT".into(), pki.path("server.pem")));
        env.push(("RENKEI_TLS_KEY".into(), pki.path("server.key")));
        Server::launch(Database::new(backend), env, Some(pki))
    }

    /// The certificates of a server started with `start_tls`.
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    fn launch(db: Database, env: Vec<(String, String)>, pki: Option<Pki>) -> Server {
        let mut cmd = renkei_command();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn renkei");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().expect("stderr");
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if s.len() > 200_000 {
                            let cut = s.len() - 100_000;
                            let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                            s.drain(..cut);
                        }
                    }
                }
            });
        }
        // The listening URL, and what the server printed before it (demo tokens, …).
        let (tx, rx) = mpsc::channel::<(String, String)>();
        {
            let pipe = child.stdout.take().expect("stdout");
            std::thread::spawn(move || {
                let mut sent = false;
                let mut before = String::new();
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if !sent {
                        if let Some(url) = line.strip_prefix("Renkei listening on ") {
                            let _ = tx.send((url.trim().to_string(), std::mem::take(&mut before)));
                            sent = true;
                        } else {
                            before.push_str(&line);
                            before.push('\n');
                        }
                    }
                    // Keep draining so the pipe never fills.
                }
            });
        }
        let (base, startup_stdout) = match rx.recv_timeout(START_TIMEOUT) {
            Ok(started) => started,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!(
                    "renkei ({} on {}) did not report listening within {START_TIMEOUT:?}; exit {status:?}\nstderr:\n{}",
                    db.backend, db.url, truncate(&err, 4000)
                );
            }
        };
        let ca = pki.as_ref().map(|pki| {
            let pem = std::fs::read(pki.dir.join("ca.pem")).expect("read test CA");
            reqwest::Certificate::from_pem(&pem).expect("test CA certificate")
        });
        let anonymous_client = http_client(HeaderMap::new(), ca.as_ref());
        let mut server = Server {
            backend: db.backend,
            base,
            client: anonymous_client.clone(),
            anonymous_client,
            token: String::new(),
            child,
            stderr,
            env,
            db: Some(db),
            pki,
            startup_stdout,
        };
        let token = server.token_for(
            TEST_CLIENT_ID,
            TEST_ORGANIZATION,
            "facility",
            &["--scope", TEST_SCOPE],
        );
        let mut defaults = HeaderMap::new();
        let mut value =
            HeaderValue::from_str(&format!("Bearer {token}")).expect("token header value");
        value.set_sensitive(true);
        defaults.insert(reqwest::header::AUTHORIZATION, value);
        server.client = http_client(defaults, ca.as_ref());
        server.token = token;
        server
    }

    /// What the server printed before it said it was listening.
    pub fn startup_stdout(&self) -> &str {
        &self.startup_stdout
    }

    /// The database URL this server runs on (for CLI commands against the same data).
    pub fn database_url(&self) -> &str {
        &self.db.as_ref().expect("database").url
    }

    /// The name of this server's PostgreSQL database (None on SQLite).
    pub fn pg_database_name(&self) -> Option<&str> {
        self.db.as_ref().and_then(|db| db.pg_name.as_deref())
    }

    /// Runs `renkei ARGS --database <this server's database>`, asserting success; returns
    /// stdout.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let out = renkei_command()
            .args(args)
            .args(["--database", self.database_url()])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run renkei {args:?}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "renkei {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            truncate(&stdout, 2000),
            truncate(&String::from_utf8_lossy(&out.stderr), 4000)
        );
        stdout
    }

    /// Registers (or replaces) a client with the real CLI and returns a fresh token for it.
    /// `organization` is `Organization/ID` (a bare ID is accepted); `role` is `facility`,
    /// `patient`, `auditor` or `admin`; `extra_args` go to `renkei client add` (e.g.
    /// `["--patient", "Patient/p1"]`, `["--practitioner", "Practitioner/d1"]`,
    /// `["--scope", "system/Patient.r"]`, `["--break-glass"]`).
    #[track_caller]
    pub fn token_for(
        &self,
        client_id: &str,
        organization: &str,
        role: &str,
        extra_args: &[&str],
    ) -> String {
        let organization = if organization.contains('/') {
            organization.to_string()
        } else {
            format!("Organization/{organization}")
        };
        let mut args = vec![
            "client",
            "add",
            "--id",
            client_id,
            "--organization",
            &organization,
            "--role",
            role,
        ];
        args.extend_from_slice(extra_args);
        self.cli(&args);
        self.issue_token(client_id, &[])
    }

    /// A new token for an already registered client; `extra_args` go to `renkei token`
    /// (e.g. `["--scope", "system/Patient.r"]`, `["--practitioner", "Practitioner/d1"]`,
    /// `["--ttl", "1"]`, which overrides the default of 3600 s).
    #[track_caller]
    pub fn issue_token(&self, client_id: &str, extra_args: &[&str]) -> String {
        let mut args = vec!["token", "--client-id", client_id];
        if !extra_args.contains(&"--ttl") {
            args.extend_from_slice(&["--ttl", TOKEN_TTL]);
        }
        args.extend_from_slice(extra_args);
        let stdout = self.cli(&args);
        let token = stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string();
        assert!(
            !token.is_empty() && !token.contains(' '),
            "renkei token printed no token on its last line:\n{stdout}"
        );
        token
    }

    /// Requests as another client: every helper of the returned view sends `token`.
    pub fn with_token<'a>(&'a self, token: &str) -> Caller<'a> {
        Caller {
            server: self,
            token: Some(token.to_string()),
        }
    }

    /// Requests without any `Authorization` header.
    pub fn anonymous(&self) -> Caller<'_> {
        Caller {
            server: self,
            token: None,
        }
    }

    /// Requests with the default token (what the helpers on `Server` do).
    pub fn as_default(&self) -> Caller<'_> {
        Caller {
            server: self,
            token: Some(self.token.clone()),
        }
    }

    /// SIGKILL (no graceful shutdown).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills this server with SIGKILL and starts a new one on the same database.
    pub fn restart(mut self) -> Server {
        self.kill9();
        let db = self.db.take().expect("database");
        let env = std::mem::take(&mut self.env);
        let pki = self.pki.take();
        drop(self);
        Server::launch(db, env, pki)
    }

    /// Kills this server with SIGKILL and starts a new one on the same database, with `env`
    /// in place of the environment it was started with.
    pub fn restart_with(mut self, env: &[(&str, &str)]) -> Server {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        self.restart()
    }

    pub fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let start = s.len().saturating_sub(4000);
        let start = (start..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s[start..].to_string()
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// Any request with the default token; `path` is relative to the FHIR base (or an
    /// absolute URL). An `Authorization` header in `headers` replaces the default token.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.request_as(Some(&self.token), method, path, headers, body)
    }

    /// Any request as `token` (`None`: no `Authorization` header at all).
    pub fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .anonymous_client
            .request(method.clone(), self.url(path));
        let mut map = HeaderMap::new();
        let explicit_auth = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let (Some(token), false) = (token, explicit_auth) {
            map.insert(
                reqwest::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).expect("token header value"),
            );
        }
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        req = req.headers(map);
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().unwrap_or_else(|e| {
            panic!(
                "{method} {path} failed: {e}\nserver stderr:\n{}",
                self.stderr_tail()
            )
        });
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.as_default().get(path)
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.as_default().get_with(path, headers)
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.as_default().delete(path)
    }

    /// Sends a JSON body as `application/fhir+json`.
    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> Resp {
        self.as_default().send_json(method, path, body)
    }

    pub fn send_json_with(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.as_default()
            .send_json_with(method, path, body, headers)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.as_default().post(path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.as_default().put(path, body)
    }

    pub fn send_raw(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Resp {
        self.as_default().send_raw(method, path, content_type, body)
    }

    /// Creates a resource and returns the stored representation.
    #[track_caller]
    pub fn create(&self, resource: &Value) -> Value {
        self.as_default().create(resource)
    }

    /// GET that must succeed with 200; returns JSON.
    #[track_caller]
    pub fn read_json(&self, path: &str) -> Value {
        self.as_default().read_json(path)
    }

    /// Follows `next` links from `path`, returning every entry of every page.
    pub fn all_pages(&self, path: &str) -> (Vec<Value>, usize) {
        self.as_default().all_pages(path)
    }
}

/// The request helpers of a `Server`, speaking as one client (or anonymously).
pub struct Caller<'a> {
    pub server: &'a Server,
    /// `None`: no `Authorization` header.
    pub token: Option<String>,
}

impl Caller<'_> {
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.server
            .request_as(self.token.as_deref(), method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers, None)
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, &[], None)
    }

    /// Sends a JSON body as `application/fhir+json`.
    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> Resp {
        self.send_json_with(method, path, body, &[])
    }

    pub fn send_json_with(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut all = vec![("Content-Type", FHIR_JSON)];
        all.extend_from_slice(headers);
        self.request(
            method,
            path,
            &all,
            Some(serde_json::to_vec(body).expect("serialize")),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.send_json("POST", path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.send_json("PUT", path, body)
    }

    pub fn send_raw(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Resp {
        self.request(
            method,
            path,
            &[("Content-Type", content_type)],
            Some(body.to_vec()),
        )
    }

    /// Creates a resource and returns the stored representation.
    #[track_caller]
    pub fn create(&self, resource: &Value) -> Value {
        let res_type = resource["resourceType"].as_str().expect("resourceType");
        self.post(res_type, resource).expect(201).json()
    }

    /// GET that must succeed with 200; returns JSON.
    #[track_caller]
    pub fn read_json(&self, path: &str) -> Value {
        self.get(path).expect(200).json()
    }

    /// Follows `next` links from `path`, returning every entry of every page.
    pub fn all_pages(&self, path: &str) -> (Vec<Value>, usize) {
        let mut entries = Vec::new();
        let mut pages = 0;
        let mut next = Some(path.to_string());
        while let Some(url) = next.take() {
            let page = self.read_json(&url);
            pages += 1;
            assert!(pages < 10_000, "paging does not terminate");
            if let Some(list) = page["entry"].as_array() {
                entries.extend(list.iter().cloned());
            }
            next = link(&page, "next");
        }
        (entries, pages)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `db` drops after the process is gone.
    }
}

/// With `ca`, HTTPS is verified against that CA only (certificates are always verified).
fn http_client(default_headers: HeaderMap, ca: Option<&reqwest::Certificate>) -> Client {
    let mut builder = Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .default_headers(default_headers);
    if let Some(ca) = ca {
        builder = builder.tls_certs_only([ca.clone()]);
    }
    builder.build().expect("http client")
}

pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "(non-text panic)".into()
    }
}

/// Runs `body` once per backend, each on a fresh server; failures name the backend.
pub fn for_each_backend(body: impl Fn(&Server)) {
    for_each_backend_with(&[], body)
}

pub fn for_each_backend_with(env: &[(&str, &str)], body: impl Fn(&Server)) {
    for_each_backend_raw(|backend| run_on(Server::start_with(backend, env), &body))
}

/// Runs `body` once per backend, each on a fresh HTTPS server with certificates of its own
/// (`Server::start_tls`).
pub fn for_each_backend_tls(body: impl Fn(&Server)) {
    for_each_backend_raw(|backend| run_on(Server::start_tls(backend, Pki::new()), &body))
}

/// Runs `body` on `server`; a failure carries the tail of the server's stderr.
fn run_on(server: Server, body: &impl Fn(&Server)) {
    let result = catch_unwind(AssertUnwindSafe(|| body(&server)));
    if let Err(payload) = result {
        let tail = server.stderr_tail();
        drop(server);
        // resume_unwind: no second report from the panic hook; for_each_backend_raw labels it.
        std::panic::resume_unwind(Box::new(format!(
            "{}\n--- server stderr (tail) ---\n{}",
            panic_text(payload.as_ref()),
            tail
        )));
    }
}

/// Runs `body` once per backend without starting a server (the test starts its own).
/// Every backend runs even when an earlier one fails; the failures are reported together.
pub fn for_each_backend_raw(body: impl Fn(Backend)) {
    let mut failures = Vec::new();
    for backend in backends() {
        let result = catch_unwind(AssertUnwindSafe(|| body(backend)));
        if let Err(payload) = result {
            failures.push(format!(
                "[backend {backend}] {}",
                panic_text(payload.as_ref())
            ));
        }
    }
    if !failures.is_empty() {
        panic!("{}", failures.join("\n\n"));
    }
}

/// The repository root (fixtures live there).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(path: &str) -> PathBuf {
    repo_root().join("fixtures").join(path)
}

pub fn read_fixture_json(path: &str) -> Value {
    let p = fixture(path);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
}

/// A copy of `value` without `id`, `meta` (top level) and `text`-free of nothing else.
pub fn without_id_meta(value: &Value) -> Value {
    let mut v = value.clone();
    if let Value::Object(map) = &mut v {
        map.remove("id");
        map.remove("meta");
    }
    v
}

/// A copy without `meta.versionId` / `meta.lastUpdated` and the server's custodian extension
/// (dropping `meta` if it empties).
pub fn without_version_meta(value: &Value) -> Value {
    let mut v = value.clone();
    if let Value::Object(map) = &mut v {
        let mut drop_meta = false;
        if let Some(Value::Object(meta)) = map.get_mut("meta") {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            // The server names the custodian in meta (CUSTODIAN_EXTENSION).
            if let Some(Value::Array(extensions)) = meta.get_mut("extension") {
                extensions.retain(|e| e["url"] != renkei_repository::CUSTODIAN_EXTENSION);
                if extensions.is_empty() {
                    meta.remove("extension");
                }
            }
            drop_meta = meta.is_empty();
        }
        if drop_meta {
            map.remove("meta");
        }
    }
    v
}

/// Semantic equality of FHIR JSON: object key order ignored, numbers compared by value.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_eq(v, w))
        }
        (Value::Number(x), Value::Number(y)) => {
            x.to_string() == y.to_string()
                || match (x.to_string().parse::<f64>(), y.to_string().parse::<f64>()) {
                    (Ok(p), Ok(q)) => p == q,
                    _ => false,
                }
        }
        _ => a == b,
    }
}

/// The first difference between two JSON values, as a path and both sides.
pub fn json_diff(a: &Value, b: &Value) -> Option<String> {
    fn walk(a: &Value, b: &Value, path: &str) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, v) in x {
                    match y.get(k) {
                        None => {
                            return Some(format!(
                                "{path}.{k}: only on the left: {}",
                                truncate(&v.to_string(), 300)
                            ))
                        }
                        Some(w) => {
                            if let Some(d) = walk(v, w, &format!("{path}.{k}")) {
                                return Some(d);
                            }
                        }
                    }
                }
                for (k, w) in y {
                    if !x.contains_key(k) {
                        return Some(format!(
                            "{path}.{k}: only on the right: {}",
                            truncate(&w.to_string(), 300)
                        ));
                    }
                }
                None
            }
            (Value::Array(x), Value::Array(y)) => {
                for (i, (v, w)) in x.iter().zip(y).enumerate() {
                    if let Some(d) = walk(v, w, &format!("{path}[{i}]")) {
                        return Some(d);
                    }
                }
                (x.len() != y.len())
                    .then(|| format!("{path}: array lengths {} vs {}", x.len(), y.len()))
            }
            _ => (!json_eq(a, b)).then(|| {
                format!(
                    "{path}: {} vs {}",
                    truncate(&a.to_string(), 300),
                    truncate(&b.to_string(), 300)
                )
            }),
        }
    }
    walk(a, b, "$")
}

#[track_caller]
pub fn assert_json_eq(actual: &Value, expected: &Value, what: &str) {
    if let Some(diff) = json_diff(actual, expected) {
        panic!(
            "{what}: JSON differs at {diff}\nactual:   {}\nexpected: {}",
            truncate(&actual.to_string(), 1500),
            truncate(&expected.to_string(), 1500)
        );
    }
}

/// A random-enough number from a v4 UUID (no `rand` dependency).
pub fn random_u64() -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[8],
    ])
}

/// Entries of a Bundle, as a slice.
pub fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

/// The ids of a searchset's matches (`search.mode = match`) among `entries`, sorted.
pub fn sorted_match_ids(entries: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = entries
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}
