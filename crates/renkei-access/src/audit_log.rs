//! Durable audit recording. Writes append their AuditEvent inside their own transaction; reads
//! hand theirs to a group-commit writer and wait until it is on disk before answering, so one
//! disk flush serves many concurrent reads. On SQLite the group lands in the read-audit journal
//! (`audit_journal`) and a background ingester moves it into the hash-chained trail in large
//! transactions; on PostgreSQL each group is committed to the trail directly.

use crate::audit_journal::{journal_path, read_journal, Journal, JournalContents};
use renkei_audit::{record_hash, AuditOutcome, EventBuilder};
use renkei_store::{
    AuditBody, AuditHead, Backend, NewAuditEvent, Store, StoreError, Tx, WriterSession,
};
use serde_json::Value;
use std::cell::RefCell;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most events flushed together (on PostgreSQL in one statement: see
/// `Tx::append_audit_after`), so that one group's wait stays short.
const MAX_BATCH: usize = 256;
/// Most journaled events the ingester appends to the trail in one transaction.
const MAX_INGEST: usize = 16384;
/// How long the ingester lets events gather before a transaction, unless someone is waiting.
/// Long: the per-patient and per-resource reference index takes random pages, and every
/// transaction writes each page it touched once, so fewer, larger transactions write less
/// (16,384 events per 2 s instead of 4,096 per 500 ms took 17-35 µs less CPU per audited read
/// here; 32,768 per 4 s took no less: docs/BENCHMARKS.md).
const INGEST_GATHER: Duration = Duration::from_millis(2000);
/// A journal that has grown past this is emptied once all of it is in the trail.
const JOURNAL_CLEAR_BYTES: u64 = crate::audit_journal::PREALLOCATED_BYTES - 4 * 1024 * 1024;
/// How long a search of the trail waits for journaled events to reach it.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for its audit events to be durable before it fails (503), whether
/// its thread blocks or its task awaits [`Deferred::durable`].
const DURABILITY_TIMEOUT: Duration = Duration::from_secs(30);

impl AuditUnavailable {
    fn writer_stopped() -> AuditUnavailable {
        AuditUnavailable("the audit writer has stopped".into())
    }

    fn no_answer() -> AuditUnavailable {
        AuditUnavailable("the audit writer did not answer".into())
    }
}

/// The events of one request, appended together: a group is cut between requests, never
/// inside one, so a request's decision events and its own event commit or fail as one.
struct Pending {
    events: Vec<NewAuditEvent>,
    done: Done,
}

/// The writer's answer for one deferred event.
type DurabilityAnswer = oneshot::Receiver<Result<(), String>>;

/// How the recorder of an event learns that it is durable (or that it cannot be).
enum Done {
    /// A thread blocks until the answer comes.
    Blocking(SyncSender<Result<(), String>>),
    /// An async task awaits it (see [`deferring_durability`]).
    Deferred(oneshot::Sender<Result<(), String>>),
}

impl Done {
    fn send(self, outcome: Result<(), String>) {
        // A recorder that has gone away (its request was dropped) needs no answer.
        match self {
            Done::Blocking(sender) => {
                let _ = sender.send(outcome);
            }
            Done::Deferred(sender) => {
                let _ = sender.send(outcome);
            }
        }
    }
}

thread_local! {
    /// While [`deferring_durability`] runs work on this thread: the answers its recorded
    /// events are still owed.
    static DEFERRED: RefCell<Option<Vec<DurabilityAnswer>>> = const { RefCell::new(None) };
}

/// A piece of work's result, held until the audit events it recorded are durable: the only
/// way to the value is [`Deferred::durable`], so nothing it produced can leave the gateway
/// before then.
#[must_use = "the work's result may not be answered before its audit events are durable"]
pub struct Deferred<T> {
    value: T,
    owed: Vec<DurabilityAnswer>,
}

impl<T> Deferred<T> {
    /// The work's result once every event it recorded is durable; the first failure
    /// otherwise, or none within [`DURABILITY_TIMEOUT`].
    pub async fn durable(self) -> Result<T, AuditUnavailable> {
        let answers = async {
            for answer in self.owed {
                match answer.await {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => return Err(AuditUnavailable(message)),
                    Err(_) => return Err(AuditUnavailable::writer_stopped()),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(DURABILITY_TIMEOUT, answers).await {
            Ok(Ok(())) => Ok(self.value),
            Ok(Err(unavailable)) => Err(unavailable),
            Err(_) => Err(AuditUnavailable::no_answer()),
        }
    }
}

/// Runs `work`, letting the events it records be durable after it returns instead of blocking
/// its thread until each is on disk; the caller awaits [`Deferred::durable`] before answering.
/// Why: a blocked request thread costs a sleep and a wake-up per read, and the audit writer
/// then wakes every such thread itself; an awaiting task is woken on its event loop, where one
/// wake-up serves every request of that loop whose events shared a flush. Work nested in
/// deferred work stays in the outer deferral: the outer result then waits for its events too.
pub fn deferring_durability<T>(work: impl FnOnce() -> T) -> Deferred<T> {
    /// Ends the deferral even when `work` unwinds, so the thread's next work blocks as usual.
    struct Scope;
    impl Drop for Scope {
        fn drop(&mut self) {
            DEFERRED.with(|deferred| deferred.borrow_mut().take());
        }
    }
    if DEFERRED.with(|deferred| deferred.borrow().is_some()) {
        return Deferred {
            value: work(),
            owed: Vec::new(),
        };
    }
    DEFERRED.with(|deferred| *deferred.borrow_mut() = Some(Vec::new()));
    let scope = Scope;
    let value = work();
    let owed = DEFERRED.with(|deferred| deferred.borrow_mut().take().unwrap_or_default());
    drop(scope);
    Deferred { value, owed }
}

/// Handle on the audit writer; cloning shares the same writer thread.
#[derive(Clone)]
pub struct AuditLog {
    queue: SyncSender<Pending>,
    /// Journal mode (SQLite): how far the ingester has moved the journal into the trail.
    ingest: Option<Arc<Progress>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the audit trail cannot be written: {0}")]
pub struct AuditUnavailable(pub String);

enum IngestMessage {
    /// Events just journaled by this process: none of them can be in the trail yet.
    Events(Vec<NewAuditEvent>),
    /// Events a previous run left in the journal: some may already be in the trail.
    Replayed(Vec<NewAuditEvent>),
}

/// Counts of events journaled and moved into the trail since start, and the ingester's last
/// failure (while it persists, new reads are refused: the trail is not taking records).
#[derive(Default)]
struct Progress {
    state: Mutex<Counts>,
    changed: Condvar,
}

#[derive(Default)]
struct Counts {
    journaled: u64,
    ingested: u64,
    failure: Option<String>,
    /// Threads waiting until everything journaled is in the trail; while there are any, the
    /// ingester does not let events gather.
    flush_waiters: usize,
}

impl Counts {
    /// Whether at least one full ingest transaction's worth of journaled events is not in
    /// the trail yet.
    fn backlog_full(&self) -> bool {
        self.journaled.saturating_sub(self.ingested) >= MAX_INGEST as u64
    }
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl AuditLog {
    /// Starts the group-commit writer over `store` (and, on SQLite, the journal ingester, which
    /// first moves any events a previous run left in the journal into the trail).
    pub fn start(store: Store) -> AuditLog {
        let (queue, receiver) = mpsc::sync_channel::<Pending>(4096);
        let journal = store
            .sqlite_path()
            .map(journal_path)
            .map(|path| Journal::open(&path).map_err(|e| (path, e)));
        let ingest = match journal {
            None => {
                spawn("renkei-audit", move || direct_writer(&store, &receiver));
                None
            }
            Some(Err((path, e))) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Another server (or `renkei import`) on this database owns the journal: this
                // process commits its groups to the trail directly, as on PostgreSQL.
                tracing::warn!(journal = %path.display(), "audit journal in use by another process; committing read audit directly");
                spawn("renkei-audit", move || direct_writer(&store, &receiver));
                None
            }
            Some(Err((path, e))) => {
                let message = format!("{}: {e}", path.display());
                // Every read will answer 503 naming the problem; nothing is served unaudited.
                tracing::error!(error = %message, "cannot open the audit journal");
                spawn("renkei-audit", move || refuse_all(&receiver, &message));
                None
            }
            Some(Ok((journal, contents))) => {
                report_journal_damage(&store, &contents);
                let left_over: Vec<NewAuditEvent> =
                    contents.events.into_iter().map(with_current_refs).collect();
                let progress = Arc::new(Progress::default());
                let (ingest_tx, ingest_rx) = mpsc::channel::<IngestMessage>();
                if !left_over.is_empty() {
                    tracing::info!(
                        events = left_over.len(),
                        "audit journal of the previous run read; any of its events not yet in the trail are moved there (the others are skipped)"
                    );
                    progress.lock().journaled = left_over.len() as u64;
                    let _ = ingest_tx.send(IngestMessage::Replayed(left_over));
                }
                let writer_progress = Arc::clone(&progress);
                spawn("renkei-audit", move || {
                    journal_writer(journal, &receiver, &ingest_tx, &writer_progress)
                });
                let ingester_progress = Arc::clone(&progress);
                spawn("renkei-audit-ingest", move || {
                    ingester(&store, &ingest_rx, &ingester_progress)
                });
                Some(progress)
            }
        };
        AuditLog { queue, ingest }
    }

    /// Records an event and returns once it is durable. Blocking: call from a blocking thread.
    pub fn record(&self, event: NewAuditEvent) -> Result<(), AuditUnavailable> {
        self.record_all(vec![event])
    }

    /// Records several events (queued together, so they share commits) and returns once all
    /// are durable; inside [`deferring_durability`], once they are queued, the work's
    /// [`Deferred`] result then waiting for them.
    pub fn record_all(&self, events: Vec<NewAuditEvent>) -> Result<(), AuditUnavailable> {
        self.queue_events(events, true)
    }

    /// [`AuditLog::record_all`] that returns only once the events are durable, even inside
    /// [`deferring_durability`]: for a caller that must know the outcome before it answers
    /// (a batch whose writes committed answers per entry when its own event fails).
    pub fn record_all_now(&self, events: Vec<NewAuditEvent>) -> Result<(), AuditUnavailable> {
        self.queue_events(events, false)
    }

    fn queue_events(
        &self,
        events: Vec<NewAuditEvent>,
        may_defer: bool,
    ) -> Result<(), AuditUnavailable> {
        // Only in binaries built for the audit-on vs audit-off benchmark (issue 5); a normal
        // build cannot switch read auditing off.
        if cfg!(feature = "unaudited-reads-benchmark") {
            return Ok(());
        }
        if events.is_empty() {
            return Ok(());
        }
        let deferred = DEFERRED.with(|deferred| {
            deferred
                .borrow_mut()
                .as_mut()
                .filter(|_| may_defer)
                .map(|owed| {
                    let (done, answer) = oneshot::channel();
                    owed.push(answer);
                    done
                })
        });
        let (done, wait) = match deferred {
            Some(done) => (Done::Deferred(done), None),
            None => {
                let (done, wait) = mpsc::sync_channel(1);
                (Done::Blocking(done), Some(wait))
            }
        };
        self.queue
            .send(Pending { events, done })
            .map_err(|_| AuditUnavailable::writer_stopped())?;
        match wait.map(|wait| wait.recv_timeout(DURABILITY_TIMEOUT)) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(message))) => Err(AuditUnavailable(message)),
            Some(Err(_)) => Err(AuditUnavailable::no_answer()),
        }
    }

    /// Returns once every event recorded so far is in the searchable trail (journal mode), so
    /// a search of the trail sees every access answered before it, including those this
    /// thread's deferred work recorded earlier (a read earlier in the same batch).
    pub fn flush(&self) -> Result<(), AuditUnavailable> {
        settle_deferred(FLUSH_TIMEOUT)?;
        match &self.ingest {
            None => Ok(()),
            Some(progress) => {
                wait_until_ingested(progress, FLUSH_TIMEOUT).map_err(AuditUnavailable)
            }
        }
    }
}

/// Inside [`deferring_durability`]: waits until the events this thread's work recorded so
/// far are durable (they are then journaled, so a flush that follows covers them). Polls: the
/// answers are async channels, and this runs on a blocking thread, rarely.
fn settle_deferred(timeout: Duration) -> Result<(), AuditUnavailable> {
    let mut owed: std::collections::VecDeque<DurabilityAnswer> = DEFERRED
        .with(|deferred| deferred.borrow_mut().as_mut().map(std::mem::take))
        .unwrap_or_default()
        .into();
    let deadline = Instant::now() + timeout;
    let mut failure = None;
    while let Some(mut answer) = owed.pop_front() {
        match answer.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => failure = Some(AuditUnavailable(message)),
            Err(oneshot::error::TryRecvError::Closed) => {
                failure = Some(AuditUnavailable::writer_stopped());
            }
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                owed.push_front(answer);
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(oneshot::error::TryRecvError::Empty) => {
                owed.push_front(answer);
                failure = Some(AuditUnavailable::no_answer());
            }
        }
        if failure.is_some() {
            break;
        }
    }
    // Whatever was not confirmed stays owed: the work's result still waits for it.
    DEFERRED.with(|deferred| {
        if let Some(still_owed) = deferred.borrow_mut().as_mut() {
            still_owed.extend(owed);
        }
    });
    failure.map_or(Ok(()), Err)
}

/// Waits until every event journaled so far is in the trail, cutting the ingester's
/// gathering short.
fn wait_until_ingested(progress: &Progress, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut counts = progress.lock();
    // Events are sent to the ingester before they are counted as journaled, so the ones
    // waited for here are already in its queue or its hands.
    let target = counts.journaled;
    if counts.ingested >= target {
        return Ok(());
    }
    counts.flush_waiters += 1;
    progress.changed.notify_all();
    let outcome = loop {
        if counts.ingested >= target {
            break Ok(());
        }
        if let Some(failure) = &counts.failure {
            break Err(failure.clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err("journaled audit events did not reach the trail in time".into());
        }
        counts = progress
            .changed
            .wait_timeout(counts, left)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner().0);
    };
    counts.flush_waiters -= 1;
    outcome
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .map_err(|e| tracing::error!(error = %e, thread = name, "cannot start an audit thread"))
        .ok();
}

/// The next group: the first waiting event and whatever else is already queued behind it,
/// as the events and, in the same order, the recorders waiting for them.
fn next_batch(receiver: &Receiver<Pending>) -> Option<(Vec<NewAuditEvent>, Vec<Done>)> {
    let first = receiver.recv().ok()?;
    let mut events = first.events;
    let mut waiting = vec![first.done];
    while events.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(more) => {
                events.extend(more.events);
                waiting.push(more.done);
            }
            Err(_) => break,
        }
    }
    Some((events, waiting))
}

fn answer(waiting: Vec<Done>, outcome: &Result<(), String>) {
    for done in waiting {
        done.send(outcome.clone());
    }
}

/// PostgreSQL: each group is appended to the trail directly, in one statement while this
/// writer's idea of the chain's head holds (see [`append_after_known_head`]).
fn direct_writer(store: &Store, receiver: &Receiver<Pending>) {
    let mut session = store.writer_session();
    let mut head: Option<AuditHead> = None;
    while let Some((events, waiting)) = next_batch(receiver) {
        let result: Result<(), StoreError> = match store.backend() {
            Backend::Postgres => append_after_known_head(&mut session, &mut head, &events),
            Backend::Sqlite => session.write(|tx| append(tx, &events)),
        };
        let outcome = result.map_err(|e| {
            tracing::error!(error = %e, "audit append failed");
            e.to_string()
        });
        answer(waiting, &outcome);
    }
}

/// Appends a group after the head this writer last saw, one round trip when no other writer
/// (a write's own AuditEvent, another process) appended since. Otherwise it reads the head
/// again and retries, and after a few lost races takes the head's lock in a transaction.
fn append_after_known_head(
    session: &mut WriterSession,
    head: &mut Option<AuditHead>,
    events: &[NewAuditEvent],
) -> Result<(), StoreError> {
    const ATTEMPTS: usize = 3;
    // The session keeps its connection between groups; when the database ended it (a restart),
    // the group is tried once more on a connection that works. Only failures of the statement
    // itself are retried (not a duplicate or a refused statement, which would fail again).
    // Should the lost statement have committed after all, the retry cannot append the events
    // twice (the head moved, and event ids are unique); the group is then reported failed
    // although its events are in the trail: a refused request with an AuditEvent, never
    // data without one.
    let mut reconnected = false;
    for _ in 0..ATTEMPTS {
        let appended = match head.take() {
            Some(known) => Ok(known),
            None => session.autocommit(|tx| tx.audit_head()),
        }
        .and_then(|known| {
            session.autocommit(|tx| tx.append_audit_after(&known, events, &record_hash))
        });
        match appended {
            Ok(Some(next)) => {
                *head = Some(next);
                return Ok(());
            }
            Ok(None) => {}
            Err(e @ (StoreError::Query(_) | StoreError::Unavailable(_))) if !reconnected => {
                tracing::warn!(error = %e, "audit append failed; trying again on another connection");
                reconnected = true;
            }
            Err(e) => return Err(e),
        }
    }
    session.write(|tx| append(tx, events))
}

fn refuse_all(receiver: &Receiver<Pending>, message: &str) {
    while let Some((_, waiting)) = next_batch(receiver) {
        answer(waiting, &Err(format!("audit journal: {message}")));
    }
}

/// SQLite: each group is appended to the journal and flushed, then handed to the ingester.
fn journal_writer(
    mut journal: Journal,
    receiver: &Receiver<Pending>,
    ingest: &Sender<IngestMessage>,
    progress: &Progress,
) {
    while let Some((events, waiting)) = next_batch(receiver) {
        if let Some(failure) = progress.lock().failure.clone() {
            answer(waiting, &Err(failure));
            continue;
        }
        if journal.len() > JOURNAL_CLEAR_BYTES || journal.damaged() {
            // Reuse the journal's space once everything in it is in the trail (a short pause);
            // a damaged journal at once, so nothing new is written after the damage.
            match wait_until_ingested(progress, FLUSH_TIMEOUT) {
                Ok(()) => journal.rewind(),
                Err(e) => tracing::warn!(error = %e, "audit journal not emptied; it grows"),
            }
        }
        let outcome = match journal.append(&events) {
            Ok(()) => {
                // Sent before counted: a flush that sees the count finds the events ahead of
                // its own wake-up in the ingester's queue.
                let count = events.len() as u64;
                let _ = ingest.send(IngestMessage::Events(events));
                let mut counts = progress.lock();
                let was_full = counts.backlog_full();
                counts.journaled += count;
                // A full transaction's worth is waiting: the ingester need not gather longer.
                if counts.backlog_full() && !was_full {
                    progress.changed.notify_all();
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "audit journal append failed");
                Err(format!("audit journal: {e}"))
            }
        };
        answer(waiting, &outcome);
    }
}

/// Moves journaled events into the trail, many per transaction; retries after a failure and
/// reports it meanwhile, so reads are refused until the trail takes records again.
fn ingester(store: &Store, messages: &Receiver<IngestMessage>, progress: &Progress) {
    let mut session = store.writer_session();
    let mut pending: Vec<NewAuditEvent> = Vec::new();
    // Whether some pending events may already be in the trail (a replay, or a retry after a
    // failure whose commit outcome is unknown); only then is each id looked up first.
    let mut may_be_present = false;
    loop {
        if pending.is_empty() {
            match messages.recv() {
                Ok(message) => gather(message, &mut pending, &mut may_be_present),
                Err(_) => return,
            }
            // The queue fills meanwhile without waking this thread for every group (a wake-up
            // per group cost more than the group's rows); a flush, or a full transaction's
            // worth of events waiting, cuts the wait short.
            let counts = progress.lock();
            drop(
                progress
                    .changed
                    .wait_timeout_while(counts, INGEST_GATHER, |c| {
                        c.flush_waiters == 0 && !c.backlog_full()
                    })
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
        }
        while pending.len() < MAX_INGEST {
            match messages.try_recv() {
                Ok(message) => gather(message, &mut pending, &mut may_be_present),
                Err(_) => break,
            }
        }
        let result: Result<(), StoreError> = session.write(|tx| {
            if may_be_present {
                append_missing(tx, &pending).map(|_| ())
            } else {
                append(tx, &pending)
            }
        });
        let mut counts = progress.lock();
        match result {
            Ok(()) => {
                counts.ingested += pending.len() as u64;
                counts.failure = None;
                pending.clear();
                may_be_present = false;
            }
            Err(e) => {
                tracing::error!(error = %e, "journaled audit events cannot be added to the trail; retrying");
                counts.failure = Some(format!("audit trail: {e}"));
                may_be_present = true;
            }
        }
        let failed = counts.failure.is_some();
        drop(counts);
        progress.changed.notify_all();
        if failed {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Adds a message's events to `pending`.
fn gather(message: IngestMessage, pending: &mut Vec<NewAuditEvent>, may_be_present: &mut bool) {
    match message {
        IngestMessage::Events(events) => pending.extend(events),
        IngestMessage::Replayed(events) => {
            pending.extend(events);
            *may_be_present = true;
        }
    }
}

/// Appends the events the trail does not hold yet (a journal replayed after a crash, or by an
/// operator command while the server runs, must not append anything twice).
fn append_missing(tx: &mut Tx<'_>, events: &[NewAuditEvent]) -> Result<usize, StoreError> {
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let present = tx.audit_events_present(&ids)?;
    let missing: Vec<NewAuditEvent> = events
        .iter()
        .filter(|e| !present.contains(&e.event_id))
        .cloned()
        .collect();
    append(tx, &missing)?;
    Ok(missing.len())
}

/// A damaged journal at start-up: frames after an unreadable stretch whose events the trail
/// does not hold mean acknowledged reads were in that stretch, and are lost. Said loudly (the
/// events after it are replayed as usual); `audit verify` fails until the journal is reused.
fn report_journal_damage(store: &Store, contents: &JournalContents) {
    let after = contents.after_damage();
    if after.is_empty() {
        return;
    }
    let ids: Vec<&str> = after.iter().map(|e| e.event_id.as_str()).collect();
    match store.read(|tx| tx.audit_events_present(&ids)) {
        Ok(present) => {
            if let Some((damage, unrecorded)) =
                contents.damage_before_unrecorded(|e| present.contains(&e.event_id))
            {
                tracing::error!(
                    offset = damage.offset,
                    recovered = unrecorded,
                    "audit journal damaged: an unreadable stretch with read events after it that the trail does not hold; those are added now, whatever the stretch held is lost"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "audit journal damage could not be checked"),
    }
}

/// What a stopped or crashed server left in its read-audit journal (SQLite) that the trail
/// does not hold yet.
pub struct JournalBacklog {
    /// The events not in the trail yet. The server adds them when it starts.
    pub events: Vec<NewAuditEvent>,
    /// Where the journal is damaged, if events after the damage are among them (acknowledged
    /// reads in the damaged stretch are lost).
    pub damaged_at: Option<u64>,
}

/// Operator commands (`audit verify`, `audit export`): the journal's backlog. They only read.
pub fn journal_backlog(store: &Store) -> Result<JournalBacklog, StoreError> {
    let mut backlog = JournalBacklog {
        events: Vec::new(),
        damaged_at: None,
    };
    let Some(path) = store.sqlite_path().map(journal_path) else {
        return Ok(backlog);
    };
    let contents = read_journal(&path)
        .map_err(|e| StoreError::Unavailable(format!("audit journal {}: {e}", path.display())))?;
    if contents.events.is_empty() {
        return Ok(backlog);
    }
    let ids: Vec<&str> = contents
        .events
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    let present = store.read(|tx| tx.audit_events_present(&ids))?;
    backlog.damaged_at = contents
        .damage_before_unrecorded(|e| present.contains(&e.event_id))
        .map(|(damage, _)| damage.offset);
    backlog.events = contents
        .events
        .into_iter()
        .filter(|e| !present.contains(&e.event_id))
        .collect();
    Ok(backlog)
}

/// Whether a server is running on this database ([`Store::serving_elsewhere`], or on SQLite
/// a process writing the read-audit journal). Operator commands that rebuild what servers
/// write (`renkei reindex`) refuse to run beside one.
pub fn served_elsewhere(store: &Store) -> Result<bool, StoreError> {
    Ok(store.serving_elsewhere()? || journal_being_written(store)?)
}

/// SQLite: whether a server is writing the read-audit journal (it holds the journal's lock),
/// the one server that moves the journal's events into the trail.
pub fn journal_being_written(store: &Store) -> Result<bool, StoreError> {
    match store.sqlite_path().map(journal_path) {
        Some(path) => renkei_store::locked_by_another_process(&path),
        None => Ok(false),
    }
}

/// Appends events inside the caller's transaction (writes: no audit, no data).
pub fn append(tx: &mut Tx<'_>, events: &[NewAuditEvent]) -> Result<(), StoreError> {
    tx.append_audit(events, &record_hash)
}

/// Turns a built event into the row the store keeps, with the references it is searched by.
pub fn to_row(builder: &EventBuilder, custodians: &[String]) -> NewAuditEvent {
    // Time-ordered (UUIDv7): the unique index on event ids grows at its end instead of
    // taking a random page per event, which made every group commit write far more pages.
    let event_id = uuid::Uuid::now_v7().to_string();
    let body = builder.stored(&event_id, custodians);
    row_of(builder, event_id, custodians, body)
}

/// A journaled event with the references this version derives from its body: a journal left
/// by an earlier version holds the references that version derived, and the trail must hold
/// what `renkei audit verify` expects now.
fn with_current_refs(event: NewAuditEvent) -> NewAuditEvent {
    match expected_row(&event.body) {
        Ok(Some((expected, _))) => NewAuditEvent {
            refs: expected.refs,
            ..event
        },
        _ => event,
    }
}

/// The row a stored record must have: every search column and reference follows from its
/// hashed text, so that `renkei audit verify` can tell when one was changed. `None` for a
/// record written before events were stored in compact form; its holders are checked only
/// when the record names them.
pub fn expected_row(
    body: &str,
) -> Result<Option<(NewAuditEvent, bool)>, renkei_audit::UnreadableEvent> {
    let Some((event_id, builder, custodians)) = renkei_audit::parse_stored(body)? else {
        return Ok(None);
    };
    let names_custodians = custodians.is_some();
    let custodians = custodians.unwrap_or_default();
    Ok(Some((
        row_of(&builder, event_id, &custodians, body.to_string()),
        names_custodians,
    )))
}

/// The first search column or reference of a trail record that disagrees with the record's
/// hashed text (`body`): tampering that the hash chain alone cannot see, since searches and
/// the patients' and facilities' views filter on these. `None` when all agree.
pub fn disagreement(
    body: &str,
    columns: &renkei_store::AuditColumns,
    refs: &[renkei_store::AuditRef],
) -> Option<String> {
    let (expected, names_custodians) = match expected_row(body) {
        Ok(Some(found)) => found,
        // A record from before compact storage: its columns were not derived this way.
        Ok(None) => return None,
        Err(e) => return Some(format!("its content cannot be read ({e})")),
    };
    let pairs: [(&str, Option<&str>, Option<&str>); 10] = [
        (
            "event_id",
            Some(&expected.event_id),
            Some(&columns.event_id),
        ),
        (
            "request_id",
            Some(&expected.request_id),
            Some(&columns.request_id),
        ),
        (
            "type_code",
            Some(&expected.type_code),
            Some(&columns.type_code),
        ),
        ("subtype", Some(&expected.subtype), Some(&columns.subtype)),
        ("action", Some(&expected.action), Some(&columns.action)),
        ("outcome", Some(&expected.outcome), Some(&columns.outcome)),
        (
            "agent_client",
            expected.agent_client.as_deref(),
            columns.agent_client.as_deref(),
        ),
        (
            "agent_org",
            expected.agent_org.as_deref(),
            columns.agent_org.as_deref(),
        ),
        (
            "agent_user",
            expected.agent_user.as_deref(),
            columns.agent_user.as_deref(),
        ),
        (
            "purpose",
            expected.purpose.as_deref(),
            columns.purpose.as_deref(),
        ),
    ];
    if let Some((name, said, stored)) = pairs.iter().find(|(_, said, stored)| said != stored) {
        return Some(format!(
            "its {name} column holds {} where its content says {}",
            stored.unwrap_or("nothing"),
            said.unwrap_or("nothing")
        ));
    }
    let checked = |kind: &str| kind != "custodian" || names_custodians;
    let mut said: Vec<(&str, &str)> = expected
        .refs
        .iter()
        .filter(|(kind, _)| checked(kind))
        .map(|(kind, reference)| (kind.as_str(), reference.as_str()))
        .collect();
    let mut stored: Vec<(&str, &str)> = refs
        .iter()
        .filter(|r| checked(&r.kind))
        .map(|r| (r.kind.as_str(), r.reference.as_str()))
        .collect();
    // A reference named twice is stored once (the append keeps one of each), so compare the
    // sets; a stored reference repeated was added afterwards (a search would list the event
    // once more for it).
    said.sort_unstable();
    said.dedup();
    stored.sort_unstable();
    if let Some(pair) = stored.windows(2).find(|pair| pair[0] == pair[1]) {
        let (kind, reference) = pair[0];
        return Some(format!(
            "audit_refs holds its {kind} reference {reference} more than once"
        ));
    }
    if said != stored {
        let missing = said.iter().find(|r| !stored.contains(r));
        let extra = stored.iter().find(|r| !said.contains(r));
        return Some(match (missing, extra) {
            (Some((kind, reference)), _) => {
                format!("its {kind} reference {reference} was removed from audit_refs")
            }
            (None, Some((kind, reference))) => {
                format!(
                    "audit_refs gives it a {kind} reference {reference} its content does not name"
                )
            }
            (None, None) => "its references in audit_refs differ from its content".to_string(),
        });
    }
    None
}

/// The columns and references of `builder`'s event stored as `body`.
fn row_of(
    builder: &EventBuilder,
    event_id: String,
    custodians: &[String],
    body: String,
) -> NewAuditEvent {
    let mut refs: Vec<(String, String)> = Vec::new();
    for patient in &builder.patients {
        refs.push(("patient".into(), column_text(patient)));
    }
    for resource in &builder.resources {
        let base = resource.split("/_history").next().unwrap_or(resource);
        refs.push(("entity".into(), column_text(base)));
    }
    // The Consent (or policy) that decided is an entity of the event (role 13): an auditor
    // finds every decision a Consent made with `entity=Consent/…`.
    if let Some(decider) = builder.decider_reference().map(column_text) {
        if !refs.iter().any(|(k, r)| k == "entity" && *r == decider) {
            refs.push(("entity".into(), decider));
        }
    }
    for custodian in custodians {
        if !refs.iter().any(|(k, r)| k == "custodian" && r == custodian) {
            refs.push(("custodian".into(), column_text(custodian)));
        }
    }
    let (type_code, subtype) = builder.type_and_subtype();
    let optional = |value: &Option<String>| value.as_deref().map(column_text);
    NewAuditEvent {
        event_id,
        recorded: builder.recorded_ms,
        request_id: column_text(&builder.request_id),
        type_code: type_code.to_string(),
        subtype: subtype.to_string(),
        action: builder.interaction.action().to_string(),
        outcome: builder.outcome.code().to_string(),
        agent_client: optional(&builder.agent.client_id),
        agent_org: optional(&builder.agent.organization),
        agent_user: optional(&builder.agent.practitioner)
            .or_else(|| optional(&builder.agent.patient)),
        purpose: optional(&builder.agent.purpose),
        body,
        refs,
    }
}

/// A value for a search column or reference of the trail. PostgreSQL's text holds no NUL
/// character: one named in a request (`GET Patient/x%00`) would fail the append of every
/// event grouped with it, other clients' reads included. It becomes U+FFFD here (the stored
/// body keeps it escaped as JSON writes it, so the record is unchanged).
fn column_text(value: &str) -> String {
    value.replace('\0', "\u{FFFD}")
}

/// An AuditEvent read back from the trail: its position (for paging) and the resource.
#[derive(Debug)]
pub struct TrailEvent {
    pub seq: i64,
    pub recorded: i64,
    pub resource: Value,
}

impl TrailEvent {
    pub fn render(row: AuditBody) -> Result<TrailEvent, crate::AccessError> {
        let resource = renkei_audit::render_stored(&row.body).map_err(|e| {
            crate::AccessError::UnreadableAudit {
                seq: row.seq,
                reason: e.to_string(),
            }
        })?;
        Ok(TrailEvent {
            seq: row.seq,
            recorded: row.recorded,
            resource,
        })
    }
}

/// The outcome code of a status, for callers that only know the HTTP status.
pub fn outcome_of(status: u16) -> AuditOutcome {
    AuditOutcome::from_status(status)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::audit_journal::tests::event;
    use renkei_store::{DatabaseUrl, StoreOptions};

    #[test]
    fn deferred_events_are_durable_when_the_wait_resolves_and_the_thread_blocks_again_after() {
        let dir = std::env::temp_dir().join(format!(
            "renkei-audit-log-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7()
        ));
        let store = Store::open(
            &DatabaseUrl::Sqlite(dir.join("test.db")),
            &StoreOptions::default(),
        )
        .expect("open store");
        let log = AuditLog::start(store.clone());
        let deferred = deferring_durability(|| log.record(event(1)));
        assert_eq!(
            deferred.owed.len(),
            1,
            "the deferred event is owed an answer"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        assert!(matches!(runtime.block_on(deferred.durable()), Ok(Ok(()))));
        // Outside the scope, recording blocks until durable and owes nothing afterwards.
        assert!(DEFERRED.with(|deferred| deferred.borrow().is_none()));
        assert!(log.record(event(2)).is_ok());
        assert!(log.flush().is_ok());
        let present = store
            .read(|tx| tx.audit_events_present(&["event-1", "event-2"]))
            .expect("query the trail");
        assert!(present.contains("event-1") && present.contains("event-2"));
        // A search of the trail inside deferred work sees what that work recorded before it.
        let searched = deferring_durability(|| {
            log.record(event(3))?;
            log.flush()?;
            store
                .read(|tx| tx.audit_events_present(&["event-3"]))
                .map_err(|e| AuditUnavailable(e.to_string()))
        });
        assert!(searched.owed.is_empty(), "settled by the flush");
        // Nested deferred work leaves its events to the outer result.
        let outer = deferring_durability(|| {
            let inner = deferring_durability(|| log.record(event(4)));
            assert!(inner.owed.is_empty());
            inner.value
        });
        assert_eq!(outer.owed.len(), 1);
        assert!(matches!(runtime.block_on(outer.durable()), Ok(Ok(()))));
        let searched = runtime.block_on(searched.durable()).expect("durable");
        assert!(searched.expect("search").contains("event-3"));
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deferral_ends_when_its_work_unwinds() {
        let unwound =
            std::panic::catch_unwind(|| deferring_durability(|| -> () { panic!("work failed") }));
        assert!(unwound.is_err());
        assert!(DEFERRED.with(|deferred| deferred.borrow().is_none()));
    }
}
