use crate::error::{classify, too_complex, MAX_BINDS};
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
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Connections are replaced after this long, dropping their prepared statements.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// How often the background checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// The most SQLite writes one group commit holds (see [`SqliteWriter`]). Each member waits
/// until its group commits, so a group never holds more writes than are in flight at once;
/// the cap bounds how long the group's first member waits when very many are.
const MAX_GROUP_MEMBERS: usize = 64;

/// How long a member waiting for its group's commit sleeps before it checks again whether
/// the writer is still healthy (a write that panicked while holding it left it poisoned).
const GROUP_WAIT_TICK: Duration = Duration::from_millis(100);

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
    /// Whether this process serves requests: on PostgreSQL its sessions then say so
    /// (`application_name`), for [`Store::serving_elsewhere`].
    pub serving: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            connect_timeout: Duration::from_secs(10),
            serving: false,
        }
    }
}

/// The `application_name` of a serving process's PostgreSQL sessions, before their schema.
const SERVING_APPLICATION: &str = "renkei serve";

/// Names a serving process's session with its schema, so that `renkei reindex` finds the
/// servers of its own schema only ([`Store::serving_elsewhere`]).
fn name_serving_session(conn: &mut PgConnection) -> diesel::QueryResult<()> {
    conn.batch_execute(&format!(
        "SELECT set_config('application_name', '{SERVING_APPLICATION} ' || current_schema(), false)"
    ))
}

/// A serving process keeps one named session open for as long as it runs (reconnecting after
/// the database restarts): its pool may hold none while idle, and `renkei reindex` must still
/// see it.
fn hold_serving_session(url: String) {
    let held = std::thread::Builder::new()
        .name("renkei-presence".into())
        .spawn(move || loop {
            if let Ok(mut conn) = PgConnection::establish(&url) {
                if name_serving_session(&mut conn).is_ok() {
                    while conn.batch_execute("SELECT 1").is_ok() {
                        std::thread::sleep(Duration::from_secs(30));
                    }
                }
            }
            std::thread::sleep(Duration::from_secs(5));
        });
    if let Err(e) = held {
        tracing::warn!(error = %e, "cannot start the thread that shows this server to renkei reindex");
    }
}

/// How long a SQLite connection waits for a file another connection holds (pool and probes
/// alike).
const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 10000";

/// One connection to a SQLite file outside the pool, waiting like the pool's connections when
/// another connection (a running server, its checkpoints) holds the file's lock.
fn probe_sqlite(path: &std::path::Path) -> Result<SqliteConnection, StoreError> {
    let mut conn = SqliteConnection::establish(&path.display().to_string())
        .map_err(|e| StoreError::Connect(e.to_string()))?;
    conn.batch_execute(BUSY_TIMEOUT)
        .map_err(|e| StoreError::Connect(e.to_string()))?;
    Ok(conn)
}

/// What a database holds, before Renkei opens it ([`Store::schema_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaState {
    /// A Renkei database (its migrations table).
    Renkei,
    /// No tables at all (or no SQLite file yet): Renkei may create its schema.
    Empty,
    /// Another application's tables and no Renkei schema.
    Foreign,
}

#[derive(Clone)]
enum Pools {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Postgres(Pool<PgManager>),
}

/// A handle on the database: a connection pool plus, for SQLite, the in-process writer lock.
#[derive(Clone)]
pub struct Store {
    pools: Pools,
    /// SQLite's one writer connection and the group commit of concurrent writes.
    sqlite_writer: Arc<SqliteWriter>,
    /// The SQLite database file (None on PostgreSQL); files kept beside it are named after it.
    sqlite_path: Option<std::path::PathBuf>,
    /// SQLite: stops the background checkpointer when the last clone of the store is dropped.
    _checkpointer: Option<Arc<mpsc::Sender<()>>>,
    /// SQLite, a serving process: a shared lock on [`serving_lock_path`] for as long as it
    /// runs, which [`Store::serving_elsewhere`] looks for.
    _serving_lock: Option<Arc<std::fs::File>>,
}

/// The file beside a SQLite database that each process serving it holds a shared lock on,
/// named after the database file itself however it was reached (a symlink, `..`), so that
/// every process finds the same one.
pub fn serving_lock_path(database: &std::path::Path) -> std::path::PathBuf {
    let database = std::fs::canonicalize(database).unwrap_or_else(|_| database.to_path_buf());
    let mut name = database.into_os_string();
    name.push("-serving");
    std::path::PathBuf::from(name)
}

/// Whether another process holds a lock on the file at `path` (false when there is no such
/// file): the serving lock of a SQLite database, the read-audit journal of its writer.
pub fn locked_by_another_process(path: &std::path::Path) -> Result<bool, StoreError> {
    let unavailable =
        |e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", path.display()));
    let file = match std::fs::OpenOptions::new().read(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(unavailable(e)),
    };
    // Dropping the file releases the lock when it was free.
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(unavailable(e)),
    }
}

/// Takes a serving process's shared lock on the SQLite database's serving file.
fn hold_serving_lock(database: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let path = serving_lock_path(database);
    let unavailable =
        |e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    // Beside the database, as private as it is.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path).map_err(unavailable)?;
    file.lock_shared().map_err(unavailable)?;
    Ok(file)
}

/// SQLite allows one writer; queueing writers here is fairer and faster than letting them
/// spin on `SQLITE_BUSY`. Every write runs on one connection kept here: SQLite keeps a
/// connection's page cache between transactions only while no other connection has written,
/// so writes spread over the pool re-read the hot index pages (from the WAL, through read(2))
/// in every transaction. The connection is replaced after [`CONNECTION_LIFETIME`], like
/// pooled ones.
///
/// Writes that overlap in time share one transaction (group commit). The first write of a
/// group opens the transaction; each later one runs in its own savepoint, so one write's
/// failure undoes only its own changes. A write that finishes while another is waiting for the
/// writer leaves the transaction open and waits for the group to commit; the last write of the
/// group commits for all of them. A commit then costs one WAL append and one fsync for the
/// whole group, and the pages several writes touch (the right-hand leaves of every rowid and
/// `rid` index, the audit chain's head) are written once instead of once per write. No write
/// is answered before its group has committed, and if the group fails, every write in it fails.
///
/// Large writes (transaction Bundles, imports, audit ingestion) run alone
/// ([`Store::write_alone`]): under a savepoint SQLite copies every page a write touches into
/// an in-memory sub-journal and walks it at the end of each statement that keeps a statement
/// journal, which made a 500-resource Bundle four times slower; and one fsync is already a
/// small share of their cost.
struct SqliteWriter {
    state: Mutex<WriterState>,
    /// Signalled whenever a group commits or fails. Waiters wake every [`GROUP_WAIT_TICK`]
    /// anyway, so a group whose last write panicked is still settled (see `recover`).
    settled: Condvar,
    /// Writes waiting for `state`: a finished write keeps its group open only while one is.
    waiting: AtomicUsize,
}

#[derive(Default)]
struct WriterState {
    conn: Option<(AnyConn, Instant)>,
    /// The group transaction that is open on `conn`, if any.
    open: Option<OpenGroup>,
    /// The number the next group gets; groups settle in this order.
    next_group: u64,
    /// Every group numbered below this one has committed or failed.
    settled_below: u64,
    /// Failed groups whose members have not all been told yet: why, and how many to tell.
    failures: HashMap<u64, (String, usize)>,
    /// Groups committed so far (tests assert that concurrent writes share commits).
    committed_groups: u64,
}

struct OpenGroup {
    number: u64,
    /// Writes that succeeded in this group and wait for its commit.
    members: usize,
}

impl SqliteWriter {
    fn new() -> Self {
        SqliteWriter {
            state: Mutex::new(WriterState::default()),
            settled: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let locked = self.state.lock();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        locked.unwrap_or_else(|poisoned| self.recover(poisoned.into_inner()))
    }

    /// After a write panicked while holding the writer: its group (whatever other writes it
    /// held) is rolled back and reported failed to them, and writing goes on. A panic is a
    /// defect, but it must not leave every later write failing.
    fn recover<'a>(
        &'a self,
        mut state: MutexGuard<'a, WriterState>,
    ) -> MutexGuard<'a, WriterState> {
        self.state.clear_poison();
        if state.open.is_some() {
            tracing::error!("a write panicked inside a group commit; rolling the group back");
            let _ = state.close_group(false, 0);
            self.settled.notify_all();
        }
        state
    }

    /// Runs `work` as a member of the open group (opening one if needed), then either commits
    /// the group or, when another write is already waiting, leaves it open for that write and
    /// waits for the group's outcome. `alone` first commits any open group and then never
    /// lets another write join.
    fn write<T, E>(
        &self,
        store: &Store,
        alone: bool,
        work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut state = self.lock();
        if alone && state.open.is_some() {
            // Its members learn the outcome from the group; this write starts afresh either way.
            let _ = state.close_group(true, 0);
            self.settled.notify_all();
        }
        let (group, first) = match &state.open {
            Some(group) => (group.number, false),
            None => (state.begin_group(store)?, true),
        };
        let (result, intact) = match state.conn.as_mut() {
            // The first write is alone in the transaction: if it fails, rolling the whole
            // transaction back undoes it, so it needs no savepoint.
            Some((conn, _)) if first => {
                let result = work(&mut Tx::new(conn));
                let intact = result.is_ok();
                (result, intact)
            }
            Some((conn, _)) => run_member(conn, work),
            None => return Err(E::from(no_writer_connection())),
        };
        if let (Some(open), Ok(_)) = (state.open.as_mut(), &result) {
            if intact {
                open.members += 1;
            }
        }
        let members = state.open.as_ref().map_or(0, |open| open.members);
        let others_waiting = self.waiting.load(Ordering::SeqCst) > 0;
        if !alone && intact && others_waiting && members < MAX_GROUP_MEMBERS {
            // Someone else will close the group; a failed write has nothing in it to wait for.
            let value = result?;
            return self
                .await_group(state, group)
                .map(|()| value)
                .map_err(E::from);
        }
        let own_member = usize::from(intact && result.is_ok());
        let outcome = state.close_group(intact, own_member);
        self.settled.notify_all();
        match (result, outcome) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(why)) => Err(E::from(StoreError::Unavailable(why))),
            (Err(error), _) => Err(error),
        }
    }

    fn await_group<'a>(
        &'a self,
        mut state: MutexGuard<'a, WriterState>,
        group: u64,
    ) -> Result<(), StoreError> {
        while state.settled_below <= group {
            state = match self.settled.wait_timeout(state, GROUP_WAIT_TICK) {
                Ok((state, _)) => state,
                Err(poisoned) => self.recover(poisoned.into_inner().0),
            };
        }
        match state.failures.get_mut(&group) {
            None => Ok(()),
            Some((why, untold)) => {
                let error = StoreError::Unavailable(why.clone());
                *untold -= 1;
                if *untold == 0 {
                    state.failures.remove(&group);
                }
                Err(error)
            }
        }
    }
}

impl WriterState {
    /// Opens a new group transaction, (re)connecting first when the connection is missing or
    /// has lived its time.
    fn begin_group(&mut self, store: &Store) -> Result<u64, StoreError> {
        let (mut conn, since) = match self.conn.take() {
            Some((conn, since)) if since.elapsed() < CONNECTION_LIFETIME => (conn, since),
            _ => (store.connection()?, Instant::now()),
        };
        execute_raw(&mut conn, "BEGIN IMMEDIATE")?;
        self.conn = Some((conn, since));
        let number = self.next_group;
        self.next_group += 1;
        self.open = Some(OpenGroup { number, members: 0 });
        Ok(number)
    }

    /// Commits the open group (rolls it back when a member broke it) and records the outcome
    /// for its waiting members; `own_member` is 1 when the closing write is itself a member,
    /// which learns the outcome from the return value instead.
    fn close_group(&mut self, intact: bool, own_member: usize) -> Result<(), String> {
        let Some(group) = self.open.take() else {
            return Ok(());
        };
        let outcome = match self.conn.as_mut() {
            None => Err("the writer connection was lost".to_string()),
            Some((conn, _)) if intact => execute_raw(conn, "COMMIT").map_err(|e| e.to_string()),
            Some(_) => Err("a write of the group left its transaction unusable".to_string()),
        };
        if outcome.is_ok() {
            self.committed_groups += 1;
        } else {
            let rolled_back = self
                .conn
                .as_mut()
                .is_some_and(|(conn, _)| execute_raw(conn, "ROLLBACK").is_ok());
            if !rolled_back {
                // Its state is unknown: the next group starts on a fresh connection.
                self.conn = None;
            }
        }
        self.settled_below = group.number + 1;
        let untold = group.members.saturating_sub(own_member);
        if let (Err(why), true) = (&outcome, untold > 0) {
            let why = format!("the write was rolled back with its group commit: {why}");
            self.failures.insert(group.number, (why, untold));
        }
        outcome
    }
}

/// Runs one write of a group in its own savepoint. The flag tells whether the group's
/// transaction is still usable afterwards (the savepoint was released or rolled back).
fn run_member<T, E>(
    conn: &mut AnyConn,
    work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
) -> (Result<T, E>, bool)
where
    E: From<StoreError>,
{
    let bracket = Bracket {
        open: Some("SAVEPOINT group_member"),
        close: "RELEASE group_member",
        undo: "ROLLBACK TO group_member; RELEASE group_member",
    };
    bracket.run(conn, work)
}

fn no_writer_connection() -> StoreError {
    StoreError::Unavailable("the SQLite writer has no connection".into())
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
        conn.batch_execute(BUSY_TIMEOUT)?;
        conn.batch_execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
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
struct PostgresSession {
    serving: bool,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PostgresSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        if self.serving {
            name_serving_session(conn).map_err(diesel::r2d2::Error::QueryError)?;
        }
        // The search statements' cost estimates (correlated consent subqueries) cross the JIT
        // thresholds, and compiling them took seconds for queries that run in milliseconds.
        // Generic plans: PostgreSQL otherwise kept planning each execution of a prepared search
        // anew for its bind values (custom plans), 1.3–4.6 ms of planning for 1 ms of execution
        // at 1M resources. The plans are index-driven by the statement's shape, so one generic
        // plan serves every value: 1.5–2.6× the searches per second (docs/BENCHMARKS.md).
        conn.batch_execute("SET jit = off; SET plan_cache_mode = force_generic_plan")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub(crate) enum AnyConn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Postgres(PooledConnection<PgManager>),
}

/// diesel's PostgreSQL connection manager, plus a way to drop a connection from the pool.
///
/// The pool does not test PostgreSQL connections when it hands them out: that test, a
/// `SELECT 1`, was a round trip of every request (reads by id +8 % without it at 1M,
/// docs/BENCHMARKS.md, fifteenth session). A transaction's `BEGIN` tests its connection
/// instead, and autocommit work on a pooled connection starts with a test of its own (see
/// [`Store::begun`]). The one connection used without a test is the one a [`WriterSession`]
/// keeps between its autocommit statements: its caller, the audit writer, retries a failed
/// append on another connection. A connection found dead, or left in an unknown state, goes
/// through [`discard`]: diesel judges a connection broken only by its transaction state, so
/// without this it would return to the pool.
#[derive(Debug)]
pub(crate) struct PgManager(ConnectionManager<PgConnection>);

thread_local! {
    /// Set only while [`discard`] drops a connection: the pool asks `has_broken` on this
    /// thread during that drop.
    static DISCARDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl diesel::r2d2::ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<PgConnection, Self::Error> {
        self.0.connect()
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), Self::Error> {
        self.0.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        DISCARDING.with(std::cell::Cell::get) || self.0.has_broken(conn)
    }
}

/// Drops `conn` so that the pool closes it instead of handing it out again. PostgreSQL only:
/// a SQLite connection is a handle on a local file, which a restart of nothing can end; it is
/// returned to the pool as before.
fn discard(conn: AnyConn) {
    /// Clears the flag however the drop ends.
    struct Discarding;
    impl Drop for Discarding {
        fn drop(&mut self) {
            DISCARDING.with(|flag| flag.set(false));
        }
    }
    match conn {
        AnyConn::Postgres(conn) => {
            DISCARDING.with(|flag| flag.set(true));
            let _clear = Discarding;
            drop(conn);
        }
        AnyConn::Sqlite(conn) => drop(conn),
    }
}

/// A unit of work on one connection. Obtained only through [`Store::read`] or
/// [`Store::write`], which own the transaction boundaries.
pub struct Tx<'c> {
    pub(crate) conn: &'c mut AnyConn,
    /// Set when the work runs outside a transaction, as one statement ([`Store::read_lone`]).
    lone: Option<Lone>,
}

/// A [`Tx`]'s statements outside a transaction: each sees a snapshot of its own, so only one
/// statement whose answer must agree with another's may run.
#[derive(Debug, Clone, Copy, Default)]
struct Lone {
    /// That statement ran.
    used: bool,
    /// Statements run now need no shared snapshot ([`Tx::outside_snapshot`]).
    exempt: bool,
    /// A second statement was refused, or a statement failed: the work's result is dropped
    /// and the work runs again in a transaction.
    exceeded: bool,
}

impl<'c> Tx<'c> {
    fn new(conn: &'c mut AnyConn) -> Tx<'c> {
        Tx { conn, lone: None }
    }
}

/// Creates `dir` (and its parents) readable by the server's user alone: the database holds
/// patient data, the audit trail and the key that signs access tokens, whatever the umask.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates the SQLite database file, when it does not exist yet, readable and writable by the
/// server's user alone; SQLite gives its `-wal` and `-shm` files the same permissions.
fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Connects, creates the SQLite directory if needed, and runs pending migrations.
    pub fn open(url: &DatabaseUrl, options: &StoreOptions) -> Result<Store, StoreError> {
        let pools = match url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    create_private_dir(dir).map_err(|source| StoreError::Directory {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                create_private_file(path).map_err(|source| StoreError::Directory {
                    path: path.display().to_string(),
                    source,
                })?;
                // One connection and query first: a file that is no database fails here with
                // its reason, not after the pool retried it until its timeout.
                let mut probe = probe_sqlite(path)?;
                diesel::sql_query("SELECT count(*) FROM sqlite_master")
                    .execute(&mut probe)
                    .map_err(|e| StoreError::Connect(e.to_string()))?;
                drop(probe);
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
                // One connection first: a server that is down or a database that does not
                // exist fails here with its reason, not after the pool retried it until its
                // timeout.
                drop(PgConnection::establish(url).map_err(|e| StoreError::Connect(e.to_string()))?);
                if options.serving {
                    hold_serving_session(url.clone());
                }
                let manager = PgManager(ConnectionManager::<PgConnection>::new(url.clone()));
                // No background replenishment (min_idle 0): with min_idle 1, checking out the
                // idle connection made r2d2 open another one on its worker thread, and a
                // short-lived process (`renkei client add`, `renkei token`) exiting meanwhile
                // crashed in libpq (SIGSEGV, ~7% of runs). Returned connections are still kept.
                let pool = Pool::builder()
                    .max_size(options.max_connections)
                    .min_idle(Some(0))
                    .max_lifetime(Some(CONNECTION_LIFETIME))
                    .connection_timeout(options.connect_timeout)
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(PostgresSession {
                        serving: options.serving,
                    }))
                    .build(manager)
                    .map_err(|e| StoreError::Connect(e.to_string()))?;
                Pools::Postgres(pool)
            }
        };
        let _checkpointer = match &pools {
            Pools::Sqlite(pool) => Some(Arc::new(spawn_checkpointer(pool.clone()))),
            Pools::Postgres(_) => None,
        };
        let sqlite_path = match url {
            DatabaseUrl::Sqlite(path) => Some(path.clone()),
            DatabaseUrl::Postgres(_) => None,
        };
        let _serving_lock = match &sqlite_path {
            Some(path) if options.serving => Some(Arc::new(hold_serving_lock(path)?)),
            _ => None,
        };
        let store = Store {
            pools,
            sqlite_writer: Arc::new(SqliteWriter::new()),
            sqlite_path,
            _checkpointer,
            _serving_lock,
        };
        store.migrate()?;
        Ok(store)
    }

    /// What the database at `url` holds, found without creating or changing anything:
    /// commands that only read what a gateway holds refuse anything but a Renkei database,
    /// and no command puts Renkei's schema beside another application's tables (where
    /// [`Store::open`] would create it).
    pub fn schema_state(url: &DatabaseUrl) -> Result<SchemaState, StoreError> {
        #[derive(QueryableByName)]
        struct Tables {
            #[diesel(sql_type = BigInt)]
            renkei: i64,
            #[diesel(sql_type = BigInt)]
            tables: i64,
        }
        let connect = |e: diesel::ConnectionError| StoreError::Connect(e.to_string());
        let found: Vec<Tables> = match url {
            DatabaseUrl::Sqlite(path) => {
                if !path.exists() {
                    return Ok(SchemaState::Empty);
                }
                let mut conn = probe_sqlite(path)?;
                diesel::sql_query(
                    "SELECT count(*) FILTER (WHERE name = '__diesel_schema_migrations') AS renkei, \
                     count(*) AS tables FROM sqlite_master \
                     WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                )
                .load(&mut conn)?
            }
            DatabaseUrl::Postgres(url) => {
                let mut conn = PgConnection::establish(url).map_err(connect)?;
                // Through the search path, as the gateway's own statements find their tables.
                diesel::sql_query(
                    "SELECT count(*) FILTER (WHERE tablename = '__diesel_schema_migrations') AS renkei, \
                     count(*) AS tables FROM pg_tables WHERE schemaname = current_schema()",
                )
                .load(&mut conn)?
            }
        };
        Ok(match found.first() {
            Some(tables) if tables.renkei > 0 => SchemaState::Renkei,
            Some(tables) if tables.tables > 0 => SchemaState::Foreign,
            _ => SchemaState::Empty,
        })
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

    /// Whether another process serves requests on this database: `renkei reindex` must not
    /// rebuild rows such a server keeps writing under its own rules. On SQLite, a serving
    /// process holds a shared lock on the file beside the database ([`serving_lock_path`]);
    /// on PostgreSQL, one of its sessions on this database and schema is open.
    pub fn serving_elsewhere(&self) -> Result<bool, StoreError> {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        if let Some(database) = &self.sqlite_path {
            return locked_by_another_process(&serving_lock_path(database));
        }
        let sql = format!(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = '{SERVING_APPLICATION} ' || current_schema() \
             AND pid <> pg_backend_pid()"
        );
        let mut conn = self.connection()?;
        let AnyConn::Postgres(pg) = &mut conn else {
            return Ok(false);
        };
        let counts: Vec<Count> = diesel::sql_query(sql)
            .load(&mut **pg)
            .map_err(StoreError::Query)?;
        Ok(counts.first().is_some_and(|c| c.n > 0))
    }

    /// Brings the schema up to date. Two servers started at once on a new database both find
    /// every migration pending; the one that loses a race (a table, or diesel's own table of
    /// migrations, created meanwhile) lists what is pending again and goes on: each migration
    /// runs in a transaction, so the lost attempt left nothing behind.
    fn migrate(&self) -> Result<(), StoreError> {
        const ATTEMPTS: u64 = 5;
        let mut attempt = 1;
        loop {
            let mut conn = self.connection()?;
            let result = match &mut conn {
                AnyConn::Sqlite(c) => run_migrations(&mut **c, SQLITE_MIGRATIONS),
                AnyConn::Postgres(c) => run_migrations(&mut **c, POSTGRES_MIGRATIONS),
            };
            match result {
                Err(StoreError::Migration { name, message }) if attempt < ATTEMPTS => {
                    tracing::warn!(migration = %name, error = %message, attempt, "a schema migration failed, perhaps raced by another server starting; listing the pending ones again");
                    std::thread::sleep(std::time::Duration::from_millis(100 * attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs `work` in a read transaction (a consistent snapshot for multi-query reads).
    pub fn read<T, E>(&self, work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.in_transaction(None, false, work).0
    }

    /// Runs `work` as one statement outside any transaction when one is all it needs, else in
    /// a read transaction like [`Store::read`]. On PostgreSQL a statement alone sees one
    /// snapshot, and `BEGIN` and `COMMIT` are two round trips: about a tenth of the server time
    /// of a patient's lab-trend search (docs/BENCHMARKS.md, nineteenth session). Work that
    /// asks for a second statement, or whose statement fails, is run again, whole, in a read
    /// transaction; the first attempt's result is dropped, so its statements must only read.
    /// On SQLite a read transaction costs no round trip: this is [`Store::read`].
    pub fn read_lone<T, E>(&self, work: impl Fn(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        if self.backend() == Backend::Sqlite {
            return self.read(work);
        }
        let mut conn = self.connection().map_err(E::from)?;
        let mut tx = Tx {
            conn: &mut conn,
            lone: Some(Lone::default()),
        };
        let result = work(&mut tx);
        if !tx.lone.is_some_and(|lone| lone.exceeded) {
            return result;
        }
        drop(result);
        // A connection that failed is tested by `BEGIN` there and replaced if it is gone.
        self.in_transaction(Some(conn), false, work).0
    }

    /// Runs `work` in a transaction on `held` (when it is still alive) or a pooled
    /// connection; the connection comes back when it can serve another transaction.
    fn in_transaction<T, E>(
        &self,
        held: Option<AnyConn>,
        immediate: bool,
        work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> (Result<T, E>, Option<AnyConn>)
    where
        E: From<StoreError>,
    {
        let mut conn = match self.begun(held, begin_statement(self.backend(), immediate)) {
            Ok(conn) => conn,
            Err(e) => return (Err(E::from(e)), None),
        };
        let (result, reusable) = TRANSACTION.run(&mut conn, work);
        if reusable {
            (result, Some(conn))
        } else {
            discard(conn);
            (result, None)
        }
    }

    /// A connection on which `first` (`BEGIN …`, or a test) succeeded: `held` if it still
    /// works, else a pooled one. A PostgreSQL connection whose first statement fails (the
    /// server restarted or ended the session) is discarded and the next one tried; after the
    /// pool's idle connections it opens new ones. So a request that starts once the server is
    /// back does not fail on a stale pooled connection (requests in flight during a restart
    /// still fail). SQLite's pool tests its connections itself: one attempt.
    fn begun(&self, held: Option<AnyConn>, first: &str) -> Result<AnyConn, StoreError> {
        let attempts = match &self.pools {
            Pools::Postgres(pool) => pool.max_size() + 1,
            Pools::Sqlite(_) => 1,
        };
        let mut held = held;
        let mut failed = 0;
        let mut failure = None;
        for _ in 0..attempts {
            let mut conn = match held.take() {
                Some(conn) => conn,
                None => self.connection()?,
            };
            match execute_raw(&mut conn, first) {
                Ok(()) => {
                    if let Some(e) = failure {
                        tracing::warn!(error = %e, discarded = failed, "database connections had ended (a restart?); discarded them");
                    }
                    return Ok(conn);
                }
                Err(e) => {
                    discard(conn);
                    failed += 1;
                    failure = Some(e);
                }
            }
        }
        Err(failure.unwrap_or_else(|| StoreError::Unavailable("no database connection".into())))
    }

    /// A writer that keeps one connection across its transactions (see [`WriterSession`]).
    pub fn writer_session(&self) -> WriterSession {
        WriterSession {
            store: self.clone(),
            conn: None,
        }
    }

    /// Runs `work` in a write transaction: its changes are committed when it returns `Ok`
    /// (before this returns), and undone on `Err`. On SQLite, writes that overlap in time share
    /// one transaction, each in its own savepoint (see [`SqliteWriter`]); the transaction
    /// starts `IMMEDIATE` so it never fails late on a lock upgrade.
    pub fn write<T, E>(&self, work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.write_grouped(false, work)
    }

    /// [`Store::write`] for a large write (many resources or events): on SQLite it commits on
    /// its own instead of sharing a group commit (see [`SqliteWriter`]).
    pub fn write_alone<T, E>(&self, work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.write_grouped(true, work)
    }

    fn write_grouped<T, E>(
        &self,
        alone: bool,
        work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        match self.pools {
            Pools::Postgres(_) => self.in_transaction(None, true, work).0,
            Pools::Sqlite(_) => self.sqlite_writer.write(self, alone, work),
        }
    }

    /// How many group commits the SQLite writer has made (0 on PostgreSQL).
    pub fn committed_write_groups(&self) -> u64 {
        self.sqlite_writer
            .state
            .lock()
            .map_or(0, |state| state.committed_groups)
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
        // On SQLite every write already shares the store's one writer connection; the
        // session's writes are batches, so they commit alone.
        if let Pools::Sqlite(_) = self.store.pools {
            return self.store.write_alone(work);
        }
        let (result, kept) = self.store.in_transaction(self.conn.take(), true, work);
        self.conn = kept;
        result
    }

    /// Runs `work` on the session's connection outside any transaction: each statement
    /// commits on its own. For a single statement that must not pay for `BEGIN` and `COMMIT`
    /// round trips ([`Tx::append_audit_after`]).
    pub fn autocommit<T, E>(
        &mut self,
        work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        // A pooled connection is tested first: this work's own statement could not be retried
        // safely on another connection if it failed.
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.store.begun(None, "SELECT 1")?,
        };
        let result = work(&mut Tx::new(&mut conn));
        // A failed statement may have lost the connection; the next call opens another.
        if result.is_ok() {
            self.conn = Some(conn);
        } else {
            discard(conn);
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

/// The statement that opens a transaction. diesel only issues BEGIN/COMMIT/ROLLBACK here
/// (the work needs the AnyConn while diesel would hold the concrete connection); the work
/// runs on the same physical connection.
fn begin_statement(backend: Backend, immediate: bool) -> &'static str {
    match (backend, immediate) {
        (Backend::Sqlite, true) => "BEGIN IMMEDIATE",
        (Backend::Sqlite, false) => "BEGIN DEFERRED",
        (Backend::Postgres, true) => "BEGIN ISOLATION LEVEL READ COMMITTED",
        (Backend::Postgres, false) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    }
}

/// The end of a transaction whose `BEGIN` [`Store::begun`] ran.
const TRANSACTION: Bracket = Bracket {
    open: None,
    close: "COMMIT",
    undo: "ROLLBACK",
};

/// Statements around a unit of work: `open` (if any) before it, `close` after it succeeded, `undo`
/// after it (or `close`) failed.
struct Bracket {
    open: Option<&'static str>,
    close: &'static str,
    undo: &'static str,
}

impl Bracket {
    /// Runs `work` inside the bracket; the flag tells whether the connection ended in a
    /// usable state (closed or cleanly undone).
    fn run<T, E>(
        &self,
        conn: &mut AnyConn,
        work: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> (Result<T, E>, bool)
    where
        E: From<StoreError>,
    {
        if let Some(Err(e)) = self.open.map(|open| execute_raw(conn, open)) {
            return (Err(E::from(e)), false);
        }
        let result = {
            let mut tx = Tx::new(conn);
            work(&mut tx)
        };
        let failure = match result {
            Ok(value) => match execute_raw(conn, self.close) {
                Ok(()) => return (Ok(value), true),
                Err(e) => E::from(e),
            },
            Err(e) => e,
        };
        let undone = execute_raw(conn, self.undo).is_ok();
        (Err(failure), undone)
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
    Option<f64>: ToSql<Nullable<Double>, DB>,
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
                Some(Bind::OptFloat(v)) => out.push_bind_param::<Nullable<Double>, _>(v)?,
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

    /// Runs data-modifying statements in order. On PostgreSQL they travel as one statement
    /// (all but the last in a data-modifying `WITH`): one round trip instead of one each. They
    /// then share one snapshot, so none may read what another one writes.
    pub fn execute_together(&mut self, statements: &[Sql]) -> Result<(), StoreError> {
        match self.backend() {
            Backend::Sqlite => {
                for statement in statements {
                    self.execute(statement)?;
                }
            }
            Backend::Postgres => {
                if let Some((last, others)) = statements.split_last() {
                    self.execute(&with_statements(others, last))?;
                }
            }
        }
        Ok(())
    }

    /// Runs a statement and returns the number of affected rows.
    pub fn execute(&mut self, sql: &Sql) -> Result<usize, StoreError> {
        within_bind_limit(sql)?;
        if let Some(lone) = self.lone.as_mut() {
            // Lone work only reads: it may run twice. A write runs in the (read-only)
            // transaction of its second attempt, where the database refuses it.
            lone.exceeded = true;
            return Err(StoreError::Unavailable(
                "a data-changing statement in read work".into(),
            ));
        }
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
        within_bind_limit(sql)?;
        self.admit()?;
        let result = match self.conn {
            AnyConn::Sqlite(c) => CachedStatement(sql).load::<T>(&mut **c),
            AnyConn::Postgres(c) => CachedStatement(sql).load::<T>(&mut **c),
        }
        .map_err(classify);
        self.settle(result)
    }

    /// Runs `work`, whose statements need not share a snapshot with the statement that
    /// follows them: outside a transaction they do not count as that one statement (see
    /// [`Store::read_lone`]). For lookups whose answer the next statement checks again itself,
    /// such as the one Patient a chain names (the page query decides consent on every row).
    pub(crate) fn outside_snapshot<T>(&mut self, work: impl FnOnce(&mut Tx<'_>) -> T) -> T {
        let exempt = |tx: &mut Tx<'_>, on: bool| {
            tx.lone
                .as_mut()
                .map(|lone| std::mem::replace(&mut lone.exempt, on))
        };
        let before = exempt(self, true);
        let result = work(self);
        exempt(self, before.unwrap_or(false));
        result
    }

    /// Lets a statement run, unless it would be a lone work's second (see [`Lone`]).
    fn admit(&mut self) -> Result<(), StoreError> {
        let Some(lone) = self.lone.as_mut() else {
            return Ok(());
        };
        if lone.exempt {
            return Ok(());
        }
        if lone.used {
            lone.exceeded = true;
            return Err(StoreError::Unavailable(
                "a second statement outside a transaction (the work runs again in one)".into(),
            ));
        }
        lone.used = true;
        Ok(())
    }

    /// A lone work whose statement failed runs again in a transaction, on a connection that
    /// `BEGIN` has tested: the failure may have been a connection the server had closed.
    fn settle<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let (Err(_), Some(lone)) = (&result, self.lone.as_mut()) {
            lone.exceeded = true;
        }
        result
    }

    /// The number a counting query (one `BIGINT` column named `n`) returns; 0 without a row.
    pub(crate) fn load_count(&mut self, sql: &Sql) -> Result<i64, StoreError> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        Ok(self.load::<Count>(sql)?.first().map_or(0, |c| c.n))
    }

    /// `FOR UPDATE` where the backend has row locks; SQLite's IMMEDIATE transaction already
    /// excludes other writers.
    pub fn for_update(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// `FOR SHARE` on PostgreSQL: the row may not change until the transaction ends, while
    /// others may read it so too (SQLite's one writer needs nothing).
    pub fn for_share(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR SHARE",
        }
    }
}

/// Refuses a statement with more bound values than [`MAX_BINDS`] before the database does, so
/// both backends answer it alike ([`StoreError::TooComplex`]).
fn within_bind_limit(sql: &Sql) -> Result<(), StoreError> {
    let binds = sql.binds().len();
    if binds > MAX_BINDS {
        return Err(too_complex(format!(
            "{binds} bound values, more than {MAX_BINDS}"
        )));
    }
    Ok(())
}

/// `WITH s0 AS (<first>), s1 AS (<second>), … <last>`: PostgreSQL runs every data-modifying
/// statement of a `WITH` exactly once, whether or not the main statement reads its output.
fn with_statements(others: &[Sql], last: &Sql) -> Sql {
    if others.is_empty() {
        return last.clone();
    }
    let mut combined = Sql::new("WITH ");
    for (n, statement) in others.iter().enumerate() {
        if n > 0 {
            combined.push(", ");
        }
        combined
            .push(&format!("s{n} AS ("))
            .push_sql(statement)
            .push(")");
    }
    combined.push(" ").push_sql(last);
    combined
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

/// Ends every other session connected to database `name`, as a restart of the server would
/// (what the gateway must survive without failing requests; used by its tests).
pub fn end_postgres_sessions(admin_url: &str, name: &str) -> Result<(), StoreError> {
    admin_statement(
        admin_url,
        &format!(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
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

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn statements_together_become_one_with_statement_keeping_order_and_binds() {
        let mut first = Sql::new("INSERT INTO a VALUES (");
        first.bind(Bind::Int(1)).push(")");
        let mut second = Sql::new("INSERT INTO b VALUES (");
        second.bind(Bind::Text("x".into())).push(")");
        let mut last = Sql::new("UPDATE c SET v = ");
        last.bind(Bind::Int(3));
        let combined = with_statements(&[first, second], &last);
        assert_eq!(
            combined.text(),
            "WITH s0 AS (INSERT INTO a VALUES (?)), s1 AS (INSERT INTO b VALUES (?)) UPDATE c SET v = ?"
        );
        assert_eq!(
            combined.binds(),
            &[Bind::Int(1), Bind::Text("x".into()), Bind::Int(3)]
        );
        assert_eq!(with_statements(&[], &last).text(), "UPDATE c SET v = ?");
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    /// A fresh SQLite store in its own directory, removed when dropped.
    struct TempStore {
        store: Store,
        dir: std::path::PathBuf,
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn temp_store(name: &str) -> TempStore {
        let dir = std::env::temp_dir().join(format!(
            "renkei-conn-{name}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        let store = Store::open(
            &DatabaseUrl::Sqlite(dir.join("test.db")),
            &StoreOptions::default(),
        )
        .expect("open store");
        store
            .write(|tx| {
                tx.execute(&Sql::new(
                    "CREATE TABLE scratch (n BIGINT NOT NULL PRIMARY KEY)",
                ))
            })
            .expect("create scratch table");
        TempStore { store, dir }
    }

    /// The database holds patient data and the token-signing key: a new database and its
    /// directory are the server's user's alone, whatever the umask (a review read the key
    /// from a world-readable file and forged tokens).
    #[cfg(unix)]
    #[test]
    fn a_new_database_is_readable_by_its_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!(
            "renkei-private-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        let path = root.join("data").join("renkei.db");
        let store = Store::open(&DatabaseUrl::Sqlite(path.clone()), &StoreOptions::default())
            .expect("open");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("data")), 0o700);
        assert_eq!(mode(&path), 0o600);
        let wal = root.join("data").join("renkei.db-wal");
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600);
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// `client add`, `serve` and `import` put Renkei's schema into another application's
    /// database; reading commands certified it. Both ask first what a database holds.
    #[test]
    fn tells_renkei_empty_and_foreign_databases_apart() {
        let dir = std::env::temp_dir().join(format!(
            "renkei-schema-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = |name: &str| DatabaseUrl::Sqlite(dir.join(name));
        assert_eq!(
            Store::schema_state(&url("missing.db")).unwrap(),
            SchemaState::Empty
        );
        assert!(!dir.join("missing.db").exists(), "looking created the file");
        std::fs::write(dir.join("empty.db"), b"").unwrap();
        assert_eq!(
            Store::schema_state(&url("empty.db")).unwrap(),
            SchemaState::Empty
        );
        let mut other =
            SqliteConnection::establish(&dir.join("other.db").display().to_string()).unwrap();
        diesel::sql_query("CREATE TABLE foo (x INTEGER)")
            .execute(&mut other)
            .unwrap();
        drop(other);
        assert_eq!(
            Store::schema_state(&url("other.db")).unwrap(),
            SchemaState::Foreign
        );
        drop(Store::open(&url("renkei.db"), &StoreOptions::default()).unwrap());
        assert_eq!(
            Store::schema_state(&url("renkei.db")).unwrap(),
            SchemaState::Renkei
        );
        std::fs::write(dir.join("text.db"), b"hello\n").unwrap();
        assert!(Store::schema_state(&url("text.db")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn unique_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    }

    fn insert(tx: &mut Tx<'_>, n: i64) -> Result<usize, StoreError> {
        let mut sql = Sql::new("INSERT INTO scratch (n) VALUES (");
        sql.bind(Bind::Int(n)).push(")");
        tx.execute(&sql)
    }

    fn stored(store: &Store) -> Vec<i64> {
        store
            .read(|tx| tx.load::<Count>(&Sql::new("SELECT n FROM scratch ORDER BY n")))
            .expect("read scratch")
            .into_iter()
            .map(|row| row.n)
            .collect()
    }

    /// Runs `writers` writes at once (each inserting its number, failing when `fails` says
    /// so, holding the writer for a moment so that the others queue behind it).
    fn concurrent_writes(
        store: &Store,
        writers: i64,
        fails: impl Fn(i64) -> bool + Sync,
    ) -> Vec<Result<usize, StoreError>> {
        let start = Barrier::new(writers as usize);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|n| {
                    let (start, fails) = (&start, &fails);
                    scope.spawn(move || {
                        start.wait();
                        store.write(|tx| {
                            let inserted = insert(tx, n)?;
                            std::thread::sleep(Duration::from_millis(5));
                            if fails(n) {
                                return Err(StoreError::Unavailable(format!("write {n} fails")));
                            }
                            Ok(inserted)
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("writer thread"))
                .collect()
        })
    }

    #[test]
    fn settings_keep_the_first_insert_and_put_replaces() {
        let temp = temp_store("settings");
        let store = &temp.store;
        let read = |key: &str| store.read(|tx| tx.setting(key)).expect("read setting");
        assert_eq!(read("index_time_zone"), None);
        store
            .write(|tx| tx.insert_setting("index_time_zone", "+09:00"))
            .expect("insert");
        store
            .write(|tx| tx.insert_setting("index_time_zone", "Z"))
            .expect("second insert");
        assert_eq!(read("index_time_zone").as_deref(), Some("+09:00"));
        store
            .write(|tx| tx.put_setting("index_time_zone", "Z"))
            .expect("put");
        assert_eq!(read("index_time_zone").as_deref(), Some("Z"));
        assert_eq!(read("other"), None);
    }

    #[test]
    fn concurrent_writes_share_commits_and_all_land() {
        let temp = temp_store("share");
        let before = temp.store.committed_write_groups();
        let results = concurrent_writes(&temp.store, 8, |_| false);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(stored(&temp.store), (0..8).collect::<Vec<_>>());
        let groups = temp.store.committed_write_groups() - before;
        assert!(
            (1..8).contains(&groups),
            "8 overlapping writes took {groups} commits"
        );
    }

    #[test]
    fn a_failed_write_undoes_only_its_own_changes() {
        let temp = temp_store("member-fails");
        let results = concurrent_writes(&temp.store, 8, |n| n % 2 == 1);
        for (n, result) in results.iter().enumerate() {
            assert_eq!(result.is_ok(), n % 2 == 0, "write {n}: {result:?}");
        }
        assert_eq!(stored(&temp.store), vec![0, 2, 4, 6]);
    }

    /// Runs a first write that holds the writer long enough for `second` to queue behind it
    /// (so the first leaves its group open and waits), then `second`, which must break the
    /// group: both fail, neither is stored, and the next write commits on its own.
    fn assert_second_write_breaks_the_group(
        name: &str,
        second: impl FnOnce(&Store) -> Result<usize, StoreError> + Send,
    ) {
        let temp = temp_store(name);
        let store = &temp.store;
        std::thread::scope(|scope| {
            let first = scope.spawn(|| {
                store.write(|tx| {
                    insert(tx, 1)?;
                    std::thread::sleep(Duration::from_millis(300));
                    Ok::<_, StoreError>(())
                })
            });
            std::thread::sleep(Duration::from_millis(100));
            let second = scope.spawn(|| second(store)).join();
            assert!(!matches!(second, Ok(Ok(_))), "the second write succeeded");
            let first = first.join().expect("first writer");
            assert!(
                matches!(&first, Err(StoreError::Unavailable(why)) if why.contains("group commit")),
                "{first:?}"
            );
        });
        assert!(stored(store).is_empty());
        store
            .write(|tx| insert(tx, 3))
            .expect("write after a failed group");
        assert_eq!(stored(store), vec![3]);
    }

    #[test]
    fn a_write_that_breaks_the_transaction_fails_its_whole_group() {
        assert_second_write_breaks_the_group("broken", |store| {
            store.write(|tx| {
                insert(tx, 2)?;
                // Ends the group's transaction behind the writer's back.
                tx.execute(&Sql::new("ROLLBACK"))
            })
        });
    }

    #[test]
    fn a_panicking_write_fails_its_group_and_writing_goes_on() {
        assert_second_write_breaks_the_group("panic", |store| {
            store.write(|tx| {
                insert(tx, 2)?;
                panic!("a defect inside a write");
            })
        });
    }

    #[test]
    fn a_lone_write_commits_at_once() {
        let temp = temp_store("lone");
        let before = temp.store.committed_write_groups();
        temp.store.write(|tx| insert(tx, 7)).expect("write");
        assert_eq!(temp.store.committed_write_groups() - before, 1);
        assert_eq!(stored(&temp.store), vec![7]);
    }

    #[test]
    fn lone_work_runs_one_statement_besides_those_outside_its_snapshot() {
        let temp = temp_store("lone");
        let count = Sql::new("SELECT COUNT(*) AS n FROM scratch");
        let mut conn = temp.store.connection().expect("connection");
        let exceeded = |tx: &Tx<'_>| tx.lone.is_some_and(|lone| lone.exceeded);

        let mut tx = Tx {
            conn: &mut conn,
            lone: Some(Lone::default()),
        };
        // Lookups outside the snapshot run, however many, before and after the one statement.
        tx.outside_snapshot(|tx| {
            tx.load::<Count>(&count)?;
            tx.load::<Count>(&count)
        })
        .expect("lookups outside the snapshot");
        tx.load::<Count>(&count).expect("the one statement");
        tx.outside_snapshot(|tx| tx.load::<Count>(&count))
            .expect("a lookup after it");
        assert!(!exceeded(&tx));
        // A second statement is refused, and so is every later one.
        assert!(tx.load::<Count>(&count).is_err());
        assert!(exceeded(&tx));
        assert!(tx.load::<Count>(&count).is_err());

        // A failed statement marks the work too, even outside the snapshot.
        let mut tx = Tx {
            conn: &mut conn,
            lone: Some(Lone::default()),
        };
        let missing = Sql::new("SELECT COUNT(*) AS n FROM no_such_table");
        assert!(tx
            .outside_snapshot(|tx| tx.load::<Count>(&missing))
            .is_err());
        assert!(exceeded(&tx));

        // Lone work only reads: a write is refused (it would run twice) and marks the work.
        let mut tx = Tx {
            conn: &mut conn,
            lone: Some(Lone::default()),
        };
        assert!(insert(&mut tx, 1).is_err());
        assert!(exceeded(&tx));

        // In a transaction every statement runs.
        let mut tx = Tx::new(&mut conn);
        for _ in 0..3 {
            tx.load::<Count>(&count)
                .expect("statement in a transaction");
        }
        assert!(tx.lone.is_none());
    }
}
