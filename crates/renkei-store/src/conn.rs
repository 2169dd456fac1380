use crate::error::classify;
use crate::sql::{Bind, Sql};
use crate::{DatabaseUrl, StoreError};
use diesel::connection::SimpleConnection;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::sql_types::{BigInt, Bool, Double, Nullable, Text, Untyped};
use diesel::sqlite::Sqlite;
use diesel::{
    Connection, PgConnection, QueryResult, QueryableByName, RunQueryDsl, SqliteConnection,
};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Connections are replaced after this long, dropping their prepared statements.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// How often the background checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub connect_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
enum Pools {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Postgres(Pool<ConnectionManager<PgConnection>>),
}

/// A handle on the database: a connection pool plus, for SQLite, the in-process writer lock.
#[derive(Clone)]
pub struct Store {
    pools: Pools,
    /// SQLite allows one writer; queueing writers here is fairer and faster than letting them
    /// spin on `SQLITE_BUSY`. The lock also holds the one connection every write uses: SQLite
    /// keeps a connection's page cache between transactions only while no other connection
    /// has written, so writes spread over the pool re-read the hot index pages (from the WAL,
    /// through read(2)) in every transaction.
    /// The connection is replaced after [`CONNECTION_LIFETIME`], like pooled ones.
    sqlite_writer: Arc<Mutex<Option<(AnyConn, Instant)>>>,
    /// The SQLite database file (None on PostgreSQL); files kept beside it are named after it.
    sqlite_path: Option<std::path::PathBuf>,
    /// SQLite: stops the background checkpointer when the last clone of the store is dropped.
    _checkpointer: Option<Arc<mpsc::Sender<()>>>,
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL lets readers run beside the writer; synchronous=FULL makes every commit durable
        // before we answer 2xx. Statement journals stay in memory (writing them to temporary
        // files was a visible part of every multi-row index insert), and reads map the file
        // instead of copying pages through read(2). The automatic checkpoint is only a
        // backstop: a background thread checkpoints (see `spawn_checkpointer`).
        conn.batch_execute(
            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = ON; PRAGMA cache_size = -16000; PRAGMA temp_store = MEMORY; \
             PRAGMA mmap_size = 268435456; PRAGMA wal_autocheckpoint = 100000;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_INTERVAL`] until the returned sender is dropped.
/// SQLite's automatic checkpoint runs inside the commit that crosses its threshold, that is
/// while our writer lock is held: 8.6 % of a bulk load's CPU sat in that critical section.
/// A `PASSIVE` checkpoint (the same mode as the automatic one) waits for no reader or writer,
/// so here it runs beside them. Failures are left for the next tick; the connections'
/// `wal_autocheckpoint` remains the backstop if this thread falls behind.
fn spawn_checkpointer(pool: Pool<ConnectionManager<SqliteConnection>>) -> mpsc::Sender<()> {
    let (stop, stopped) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("sqlite-checkpointer".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_INTERVAL)
            {
                if let Ok(mut conn) = pool.get() {
                    if let Err(error) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::debug!(%error, "background checkpoint failed; retrying");
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no background checkpointer: commits will checkpoint");
    }
    stop
}

#[derive(Debug)]
struct PostgresSession;

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PostgresSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        // The search statements' cost estimates (correlated consent subqueries) cross the JIT
        // thresholds, and compiling them took seconds for queries that run in milliseconds.
        conn.batch_execute("SET jit = off")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub(crate) enum AnyConn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Postgres(PooledConnection<ConnectionManager<PgConnection>>),
}

/// A unit of work on one connection. Obtained only through [`Store::read`] or
/// [`Store::write`], which own the transaction boundaries.
pub struct Tx<'c> {
    pub(crate) conn: &'c mut AnyConn,
}

impl Store {
    /// Connects, creates the SQLite directory if needed, and runs pending migrations.
    pub fn open(url: &DatabaseUrl, options: &StoreOptions) -> Result<Store, StoreError> {
        let pools = match url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                let manager =
                    ConnectionManager::<SqliteConnection>::new(path.display().to_string());
                let pool = Pool::builder()
                    .max_size(options.max_connections)
                    .min_idle(Some(0))
                    .max_lifetime(Some(CONNECTION_LIFETIME))
                    .connection_timeout(options.connect_timeout)
                    .connection_customizer(Box::new(SqlitePragmas))
                    .build(manager)
                    .map_err(|e| StoreError::Connect(e.to_string()))?;
                Pools::Sqlite(pool)
            }
            DatabaseUrl::Postgres(url) => {
                let manager = ConnectionManager::<PgConnection>::new(url.clone());
                // No background replenishment (min_idle 0): with min_idle 1, checking out the
                // idle connection made r2d2 open another one on its worker thread, and a
                // short-lived process (`renkei client add`, `renkei token`) exiting meanwhile
                // crashed in libpq (SIGSEGV, ~7% of runs). Returned connections are still kept.
                let pool = Pool::builder()
                    .max_size(options.max_connections)
                    .min_idle(Some(0))
                    .max_lifetime(Some(CONNECTION_LIFETIME))
                    .connection_timeout(options.connect_timeout)
                    .connection_customizer(Box::new(PostgresSession))
                    .build(manager)
                    .map_err(|e| StoreError::Connect(e.to_string()))?;
                Pools::Postgres(pool)
            }
        };
        let _checkpointer = match &pools {
            Pools::Sqlite(pool) => Some(Arc::new(spawn_checkpointer(pool.clone()))),
            Pools::Postgres(_) => None,
        };
        let store = Store {
            pools,
            sqlite_writer: Arc::new(Mutex::new(None)),
            sqlite_path: match url {
                DatabaseUrl::Sqlite(path) => Some(path.clone()),
                DatabaseUrl::Postgres(_) => None,
            },
            _checkpointer,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The SQLite database file, or None on PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        self.sqlite_path.as_deref()
    }

    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite(_) => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    fn connection(&self) -> Result<AnyConn, StoreError> {
        match &self.pools {
            Pools::Sqlite(pool) => pool
                .get()
                .map(AnyConn::Sqlite)
                .map_err(|e| StoreError::Unavailable(e.to_string())),
            Pools::Postgres(pool) => pool
                .get()
                .map(AnyConn::Postgres)
                .map_err(|e| StoreError::Unavailable(e.to_string())),
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.connection()?;
        match &mut conn {
            AnyConn::Sqlite(c) => run_migrations(&mut **c, SQLITE_MIGRATIONS),
            AnyConn::Postgres(c) => run_migrations(&mut **c, POSTGRES_MIGRATIONS),
        }
    }

    /// Runs `work` in a read transaction (a consistent snapshot for multi-query reads).
    pub fn read<T, E>(&self, work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut conn = self.connection()?;
        in_transaction(&mut conn, false, work)
    }

    /// A writer that keeps one connection across its transactions (see [`WriterSession`]).
    pub fn writer_session(&self) -> WriterSession {
        WriterSession {
            store: self.clone(),
            conn: None,
        }
    }

    /// Runs `work` in a write transaction: committed when it returns `Ok`, rolled back on `Err`.
    /// On SQLite the transaction starts `IMMEDIATE` so it never fails late on a lock upgrade.
    pub fn write<T, E>(&self, work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        if let Pools::Postgres(_) = self.pools {
            return in_transaction(&mut self.connection()?, true, work);
        }
        let mut writer = self
            .sqlite_writer
            .lock()
            .map_err(|_| StoreError::Unavailable("writer lock poisoned".into()))?;
        let (mut conn, since) = match writer.take() {
            Some((conn, since)) if since.elapsed() < CONNECTION_LIFETIME => (conn, since),
            _ => (self.connection()?, Instant::now()),
        };
        let (result, reusable) = run_transaction(&mut conn, true, work);
        if reusable {
            *writer = Some((conn, since));
        }
        result
    }
}

/// One connection kept for a long-running writer (the audit group-commit thread) on
/// PostgreSQL, so it does not wait for a pooled connection per commit. On SQLite every write,
/// this one included, runs on the store's single writer connection (see `Store::write`).
pub struct WriterSession {
    store: Store,
    conn: Option<AnyConn>,
}

impl WriterSession {
    /// Runs `work` in a write transaction on the session's connection, reconnecting when the
    /// previous one failed.
    pub fn write<T, E>(&mut self, work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        // On SQLite every write already shares the store's one writer connection.
        if let Pools::Sqlite(_) = self.store.pools {
            return self.store.write(work);
        }
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.store.connection()?,
        };
        let (result, reusable) = run_transaction(&mut conn, true, work);
        if reusable {
            self.conn = Some(conn);
        }
        result
    }
}

fn run_migrations<C>(conn: &mut C, migrations: EmbeddedMigrations) -> Result<(), StoreError>
where
    C: MigrationHarness<C::Backend> + Connection,
{
    let pending = conn
        .pending_migrations(migrations)
        .map_err(|e| StoreError::Migration {
            name: "(listing migrations)".into(),
            message: e.to_string(),
        })?;
    for migration in pending {
        let name = migration.name().to_string();
        conn.run_migration(&*migration)
            .map_err(|e| StoreError::Migration {
                name,
                message: e.to_string(),
            })?;
    }
    Ok(())
}

fn in_transaction<T, E>(
    conn: &mut AnyConn,
    immediate: bool,
    work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    run_transaction(conn, immediate, work).0
}

/// [`in_transaction`], also telling whether the connection ended outside any transaction
/// (committed or cleanly rolled back), so that a kept connection can be used again.
fn run_transaction<T, E>(
    conn: &mut AnyConn,
    immediate: bool,
    work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
) -> (Result<T, E>, bool)
where
    E: From<StoreError>,
{
    // The closure needs the AnyConn while diesel holds the concrete connection, so diesel
    // only issues BEGIN/COMMIT/ROLLBACK here and the work runs on the same physical connection.
    let begin = match (&conn, immediate) {
        (AnyConn::Sqlite(_), true) => "BEGIN IMMEDIATE",
        (AnyConn::Sqlite(_), false) => "BEGIN DEFERRED",
        (AnyConn::Postgres(_), true) => "BEGIN ISOLATION LEVEL READ COMMITTED",
        (AnyConn::Postgres(_), false) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    };
    if let Err(e) = execute_raw(conn, begin) {
        return (Err(E::from(e)), false);
    }
    let result = {
        let mut tx = Tx { conn };
        work(&mut tx)
    };
    match result {
        Ok(value) => match execute_raw(conn, "COMMIT") {
            Ok(()) => (Ok(value), true),
            Err(e) => {
                let rolled_back = execute_raw(conn, "ROLLBACK").is_ok();
                (Err(E::from(e)), rolled_back)
            }
        },
        Err(e) => {
            let rolled_back = execute_raw(conn, "ROLLBACK").is_ok();
            (Err(e), rolled_back)
        }
    }
}

fn execute_raw(conn: &mut AnyConn, sql: &str) -> Result<(), StoreError> {
    match conn {
        AnyConn::Sqlite(c) => c.batch_execute(sql),
        AnyConn::Postgres(c) => c.batch_execute(sql),
    }
    .map_err(classify)
}

/// A statement diesel may keep prepared per connection: the text holds only `?` placeholders
/// (every value is bound), so equal texts are equal statements. Search statements are long (the
/// consent predicate alone is several kilobytes). On SQLite preparing them was a third of a
/// search's CPU time; on PostgreSQL parsing and planning took about 1.2 ms of every search,
/// and a named prepared statement lets the server reuse its plan. Connections are recycled
/// (`CONNECTION_LIFETIME`), which bounds both caches.
struct CachedStatement<'a>(&'a Sql);

impl QueryId for CachedStatement<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for CachedStatement<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for CachedStatement<'_> {}

impl<DB> QueryFragment<DB> for CachedStatement<'_>
where
    DB: diesel::backend::Backend
        + HasSqlType<Text>
        + HasSqlType<BigInt>
        + HasSqlType<Bool>
        + HasSqlType<Double>,
    String: ToSql<Text, DB>,
    Option<String>: ToSql<Nullable<Text>, DB>,
    i64: ToSql<BigInt, DB>,
    Option<i64>: ToSql<Nullable<BigInt>, DB>,
    bool: ToSql<Bool, DB>,
    f64: ToSql<Double, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let text = self.0.text();
        let mut binds = self.0.binds().iter();
        let mut segments = text.split('?');
        if let Some(first) = segments.next() {
            out.push_sql(first);
        }
        for segment in segments {
            match binds.next() {
                Some(Bind::Text(v)) => out.push_bind_param::<Text, _>(v)?,
                Some(Bind::OptText(v)) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                Some(Bind::Int(v)) => out.push_bind_param::<BigInt, _>(v)?,
                Some(Bind::OptInt(v)) => out.push_bind_param::<Nullable<BigInt>, _>(v)?,
                Some(Bind::Bool(v)) => out.push_bind_param::<Bool, _>(v)?,
                Some(Bind::Float(v)) => out.push_bind_param::<Double, _>(v)?,
                None => {
                    return Err(diesel::result::Error::QueryBuilderError(
                        "more placeholders than bound values".into(),
                    ))
                }
            }
            out.push_sql(segment);
        }
        Ok(())
    }
}

impl Tx<'_> {
    pub fn backend(&self) -> Backend {
        match self.conn {
            AnyConn::Sqlite(_) => Backend::Sqlite,
            AnyConn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs a statement and returns the number of affected rows.
    pub fn execute(&mut self, sql: &Sql) -> Result<usize, StoreError> {
        match self.conn {
            AnyConn::Sqlite(c) => CachedStatement(sql).execute(&mut **c),
            AnyConn::Postgres(c) => CachedStatement(sql).execute(&mut **c),
        }
        .map_err(classify)
    }

    /// Runs a query and maps its rows by column name.
    pub fn load<T>(&mut self, sql: &Sql) -> Result<Vec<T>, StoreError>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static,
    {
        match self.conn {
            AnyConn::Sqlite(c) => CachedStatement(sql).load::<T>(&mut **c),
            AnyConn::Postgres(c) => CachedStatement(sql).load::<T>(&mut **c),
        }
        .map_err(classify)
    }

    /// `FOR UPDATE` where the backend has row locks; SQLite's IMMEDIATE transaction already
    /// excludes other writers.
    pub fn for_update(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }
}

/// Creates a PostgreSQL database (tests and operators); `admin_url` names an existing database.
pub fn create_postgres_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    admin_statement(
        admin_url,
        &format!("CREATE DATABASE \"{}\"", checked_name(name)?),
    )
}

/// Drops a PostgreSQL database, disconnecting its sessions first.
pub fn drop_postgres_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    admin_statement(
        admin_url,
        &format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            checked_name(name)?
        ),
    )
}

fn checked_name(name: &str) -> Result<&str, StoreError> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name)
    } else {
        Err(StoreError::UnsupportedUrl(format!("database name {name}")))
    }
}

fn admin_statement(admin_url: &str, statement: &str) -> Result<(), StoreError> {
    let mut conn =
        PgConnection::establish(admin_url).map_err(|e| StoreError::Connect(e.to_string()))?;
    conn.batch_execute(statement).map_err(classify)
}
