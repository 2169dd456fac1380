//! Durable audit recording. Writes append their AuditEvent inside their own transaction; reads
//! hand theirs to a group-commit writer and wait until it is on disk before answering, so one
//! commit serves many concurrent reads.

use renkei_audit::{record_hash, AuditOutcome, EventBuilder};
use renkei_store::{NewAuditEvent, Store, StoreError, Tx};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

/// Most events committed together.
const MAX_BATCH: usize = 256;

struct Pending {
    event: NewAuditEvent,
    done: SyncSender<Result<(), String>>,
}

/// Handle on the audit writer; cloning shares the same writer thread.
#[derive(Clone)]
pub struct AuditLog {
    queue: SyncSender<Pending>,
}

#[derive(Debug, thiserror::Error)]
#[error("the audit trail cannot be written: {0}")]
pub struct AuditUnavailable(pub String);

impl AuditLog {
    /// Starts the group-commit writer over `store`.
    pub fn start(store: Store) -> AuditLog {
        let (queue, receiver) = mpsc::sync_channel::<Pending>(4096);
        std::thread::Builder::new()
            .name("renkei-audit".into())
            .spawn(move || writer_loop(&store, &receiver))
            .map_err(|e| tracing::error!(error = %e, "cannot start the audit writer"))
            .ok();
        AuditLog { queue }
    }

    /// Records an event and returns once it is durable. Blocking: call from a blocking thread.
    pub fn record(&self, event: NewAuditEvent) -> Result<(), AuditUnavailable> {
        self.record_all(vec![event])
    }

    /// Records several events (queued together, so they share commits) and returns once all
    /// are durable.
    pub fn record_all(&self, events: Vec<NewAuditEvent>) -> Result<(), AuditUnavailable> {
        // Only in binaries built for the audit-on vs audit-off benchmark (issue 5); a normal
        // build cannot switch read auditing off.
        if cfg!(feature = "unaudited-reads-benchmark") {
            return Ok(());
        }
        let mut waits = Vec::with_capacity(events.len());
        for event in events {
            let (done, wait) = mpsc::sync_channel(1);
            self.queue
                .send(Pending { event, done })
                .map_err(|_| AuditUnavailable("the audit writer has stopped".into()))?;
            waits.push(wait);
        }
        for wait in waits {
            match wait.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => return Err(AuditUnavailable(message)),
                Err(_) => return Err(AuditUnavailable("the audit writer did not answer".into())),
            }
        }
        Ok(())
    }
}

fn writer_loop(store: &Store, receiver: &Receiver<Pending>) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        // Take whatever else is already waiting: their commit rides on this one.
        while batch.len() < MAX_BATCH {
            match receiver.recv_timeout(Duration::from_micros(0)) {
                Ok(more) => batch.push(more),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let events: Vec<NewAuditEvent> = batch.iter().map(|p| p.event.clone()).collect();
        let result: Result<(), StoreError> = store.write(|tx| append(tx, &events));
        let outcome = result.map_err(|e| {
            tracing::error!(error = %e, "audit append failed");
            e.to_string()
        });
        for pending in batch {
            let _ = pending.done.send(outcome.clone());
        }
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
    let body = builder.build(&event_id);
    let mut refs: Vec<(String, String)> = Vec::new();
    for patient in &builder.patients {
        refs.push(("patient".into(), patient.clone()));
    }
    for resource in &builder.resources {
        let base = resource.split("/_history").next().unwrap_or(resource);
        refs.push(("entity".into(), base.to_string()));
    }
    for custodian in custodians {
        if !refs.iter().any(|(k, r)| k == "custodian" && r == custodian) {
            refs.push(("custodian".into(), custodian.clone()));
        }
    }
    let text = |pointer: &str| {
        body.pointer(pointer)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    NewAuditEvent {
        event_id,
        recorded: builder.recorded_ms,
        request_id: builder.request_id.clone(),
        type_code: text("/type/code").unwrap_or_default(),
        subtype: text("/subtype/0/code").unwrap_or_default(),
        action: builder.interaction.action().to_string(),
        outcome: builder.outcome.code().to_string(),
        agent_client: builder.agent.client_id.clone(),
        agent_org: builder.agent.organization.clone(),
        agent_user: builder
            .agent
            .practitioner
            .clone()
            .or_else(|| builder.agent.patient.clone()),
        purpose: builder.agent.purpose.clone(),
        body: serde_json::to_string(&body).unwrap_or_default(),
        refs,
    }
}

/// The outcome code of a status, for callers that only know the HTTP status.
pub fn outcome_of(status: u16) -> AuditOutcome {
    AuditOutcome::from_status(status)
}
