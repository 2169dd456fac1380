//! The audit trail's rows. Append and read only: there is deliberately no update or delete.

use crate::sql::{Bind, Sql};
use crate::{StoreError, Tx};
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;

/// An event to append; the store assigns `seq` and the chain hashes.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub event_id: String,
    pub recorded: i64,
    pub request_id: String,
    pub type_code: String,
    pub subtype: String,
    pub action: String,
    pub outcome: String,
    pub agent_client: Option<String>,
    pub agent_org: Option<String>,
    pub agent_user: Option<String>,
    pub purpose: Option<String>,
    /// The stored form of the event (`renkei_audit::EventBuilder::stored`; records written
    /// before it hold the whole AuditEvent JSON). The hash covers these exact bytes.
    pub body: String,
    /// (kind, reference) pairs: `patient`, `entity`, `custodian`.
    pub refs: Vec<(String, String)>,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct AuditRow {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = BigInt)]
    pub recorded: i64,
    #[diesel(sql_type = Text)]
    pub body: String,
    #[diesel(sql_type = Text)]
    pub prev_hash: String,
    #[diesel(sql_type = Text)]
    pub hash: String,
}

/// A record's search columns as stored: `renkei audit verify` compares them with what the
/// record's hashed text says, since searches and views filter on them.
#[derive(Debug, Clone, QueryableByName)]
pub struct AuditColumns {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub event_id: String,
    #[diesel(sql_type = Text)]
    pub request_id: String,
    #[diesel(sql_type = Text)]
    pub type_code: String,
    #[diesel(sql_type = Text)]
    pub subtype: String,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Text)]
    pub outcome: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub agent_client: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub agent_org: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub agent_user: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub purpose: Option<String>,
}

/// One search reference of a record (`audit_refs`): kind `patient`, `entity` or `custodian`.
#[derive(Debug, Clone, QueryableByName)]
pub struct AuditRef {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub reference: String,
}

/// The last record of the hash chain: the next record's `seq` follows it and its hash is
/// the next record's `prev_hash`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct AuditHead {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub hash: String,
}

/// `UPDATE audit_head` to `head`, only if it is still at `expected` when one is given.
fn head_update(head: &AuditHead, expected: Option<&AuditHead>) -> Sql {
    let mut update = Sql::new("UPDATE audit_head SET seq = ");
    update
        .bind(Bind::Int(head.seq))
        .push(", hash = ")
        .bind(Bind::Text(head.hash.clone()))
        .push(" WHERE id = 1");
    if let Some(expected) = expected {
        update.push(" AND seq = ").bind(Bind::Int(expected.seq));
    }
    update
}

/// How an event of a request without a client names its agent (`renkei_audit`), and so
/// what an auditor searches for to find them.
pub const ANONYMOUS_AGENT: &str = "anonymous";

/// Filters of an audit search; every field narrows (AND).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// (kind, references): one of the references must be among the event's refs of that
    /// kind, e.g. ("patient", ["Patient/1"]). An empty list matches nothing.
    pub refs: Vec<(String, Vec<String>)>,
    /// The lists below match any one of their values (a search's comma); empty: no filter.
    /// The client, organization or user acting; [`ANONYMOUS_AGENT`] also matches events of
    /// requests without a client.
    pub agent: Vec<String>,
    pub type_code: Vec<String>,
    pub subtype: Vec<String>,
    pub action: Vec<String>,
    pub outcome: Vec<String>,
    pub purpose: Vec<String>,
    /// Only events that touched data one of these custodians owns (facility view).
    pub custodian_any_of: Option<Vec<String>>,
    /// One event by its id.
    pub event_id: Option<String>,
    /// Resume strictly after (descending) / before this seq.
    pub before_seq: Option<i64>,
    pub after_seq: Option<i64>,
    pub descending: bool,
    /// In order of `recorded` (`_sort=date`), rather than of the trail: on SQLite a read's
    /// event reaches the trail after the journal, behind writes recorded after it.
    pub by_recorded: bool,
    /// With `by_recorded`: resume strictly past this (recorded, seq) in the sort direction.
    pub past_recorded: Option<(i64, i64)>,
    pub limit: usize,
    /// Also count every event the filters match, whatever the page (`_total`).
    pub count_total: bool,
    /// `agent` matches the facility and the person only, not the requesting client's id (a
    /// patient's or facility's view, where client ids are left out of the events).
    pub agent_without_client: bool,
    /// Leaves out the decisions made by these deciders (`privacy-tag:UNDELIVERED`): a patient
    /// must not learn from a refusal that data withheld from them exists (CONSENT.md rule 10).
    /// Matched on the event's stored text, where the decider is a JSON string of its own.
    pub without_decisions_by: Vec<String>,
    /// Leaves out the events about records of these patients (ids) that a privacy tag
    /// withholds from them, and about none of theirs that it does not: in a patient's own view,
    /// a read of such a record, even with the record left out of the event, would tell them
    /// that withheld data exists (CONSENT.md rule 10). An event that also names records they
    /// may see stays, without the withheld ones (the view's redaction). Decided on the records
    /// as they are now, like that redaction.
    pub without_records_withheld_from: Vec<String>,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct AuditBody {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = BigInt)]
    pub recorded: i64,
    #[diesel(sql_type = Text)]
    pub body: String,
}

/// A record hash from (seq, recorded, previous hash, body).
pub type RecordHash<'a> = &'a dyn Fn(i64, i64, &str, &str) -> String;

/// Most events per multi-row INSERT: 40 rows × 15 binds stays under every bind limit.
const EVENTS_PER_INSERT: usize = 40;
/// Most references per multi-row INSERT.
const REFS_PER_INSERT: usize = 1000;

/// An event's row as appended, with its place in the chain.
struct ChainedEvent<'a> {
    seq: i64,
    event: &'a NewAuditEvent,
    prev_hash: String,
    hash: String,
}

/// Chains `events` after `head` (advanced to their last record): each record's seq and hashes,
/// and every (seq, kind, reference) row in key order. One row per (kind, ref) of an event: the
/// key of the reference table; a search event may name a thousand patients, so duplicates go by
/// sorting, not scanning. Key order lets a batch reach each page of the reference index once,
/// in turn, instead of a random page per row (events about many patients and resources
/// interleave in time, and the index is ordered by reference).
fn chain<'a>(
    head: &mut AuditHead,
    events: &'a [NewAuditEvent],
    hash: RecordHash<'_>,
) -> (Vec<ChainedEvent<'a>>, Vec<(i64, &'a str, &'a str)>) {
    let mut chained = Vec::with_capacity(events.len());
    let mut ref_rows: Vec<(i64, &str, &str)> = Vec::new();
    for event in events {
        let seq = head.seq + 1;
        let record_hash = hash(seq, event.recorded, &head.hash, &event.body);
        let mut own: Vec<(i64, &str, &str)> = event
            .refs
            .iter()
            .map(|(kind, reference)| (seq, kind.as_str(), reference.as_str()))
            .collect();
        own.sort_unstable();
        own.dedup();
        ref_rows.extend(own);
        let prev_hash = std::mem::replace(&mut head.hash, record_hash.clone());
        head.seq = seq;
        chained.push(ChainedEvent {
            seq,
            event,
            prev_hash,
            hash: record_hash,
        });
    }
    ref_rows.sort_unstable_by(|a, b| (a.1, a.2, a.0).cmp(&(b.1, b.2, b.0)));
    (chained, ref_rows)
}

/// Sizes to split `len` rows into: full chunks of `full`, then the rest in powers of two, so
/// that however many rows a group has, its statements come from a few fixed shapes. Each
/// connection keeps every distinct statement it prepared (diesel's cache has no bound), so
/// one shape per group size would grow without limit.
fn chunk_sizes(len: usize, full: usize) -> Vec<usize> {
    let mut sizes = vec![full; len / full];
    let mut rest = len % full;
    while rest > 0 {
        let size = 1 << rest.ilog2();
        sizes.push(size);
        rest -= size;
    }
    sizes
}

/// SQLite: the statements that append `events` after `head` (advanced to their last record):
/// multi-row INSERTs of the events, then of their references in key order, each of one of a
/// few fixed sizes ([`chunk_sizes`]).
fn chained_inserts(
    head: &mut AuditHead,
    events: &[NewAuditEvent],
    hash: RecordHash<'_>,
) -> Vec<Sql> {
    let (chained, ref_rows) = chain(head, events, hash);
    let mut statements = Vec::new();
    let mut rest = chained.as_slice();
    for size in chunk_sizes(rest.len(), EVENTS_PER_INSERT) {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut insert = Sql::new("INSERT INTO audit_events (seq, event_id, recorded, request_id, type_code, subtype, action, outcome, agent_client, agent_org, agent_user, purpose, body, prev_hash, hash) VALUES ");
        for (i, row) in chunk.iter().enumerate() {
            let event = row.event;
            insert.push_row(
                i == 0,
                [
                    Bind::Int(row.seq),
                    Bind::Text(event.event_id.clone()),
                    Bind::Int(event.recorded),
                    Bind::Text(event.request_id.clone()),
                    Bind::Text(event.type_code.clone()),
                    Bind::Text(event.subtype.clone()),
                    Bind::Text(event.action.clone()),
                    Bind::Text(event.outcome.clone()),
                    Bind::OptText(event.agent_client.clone()),
                    Bind::OptText(event.agent_org.clone()),
                    Bind::OptText(event.agent_user.clone()),
                    Bind::OptText(event.purpose.clone()),
                    Bind::Text(event.body.clone()),
                    Bind::Text(row.prev_hash.clone()),
                    Bind::Text(row.hash.clone()),
                ],
            );
        }
        statements.push(insert);
    }
    let mut rest = ref_rows.as_slice();
    for size in chunk_sizes(rest.len(), REFS_PER_INSERT) {
        let (rows, after) = rest.split_at(size);
        rest = after;
        let mut refs = Sql::new("INSERT INTO audit_refs (seq, kind, ref) VALUES ");
        for (i, (seq, kind, reference)) in rows.iter().enumerate() {
            refs.push_row(
                i == 0,
                [
                    Bind::Int(*seq),
                    Bind::Text((*kind).to_string()),
                    Bind::Text((*reference).to_string()),
                ],
            );
        }
        statements.push(refs);
    }
    statements
}

/// PostgreSQL: one statement that appends `events` after `head` (advanced to their last record)
/// and moves the head, its rows travelling as two JSON binds, so that every group runs the same
/// prepared statement whatever its size. With the rows as binds of a multi-row INSERT, each
/// group size was another statement for PostgreSQL to parse and plan, and every one stayed
/// prepared on the audit writer's connection (its backend's private memory was 11 MB after
/// 15 s at 32 clients, 4 MB with one statement). With `expected`, the statement writes
/// nothing unless the chain still ends there, and answers 1 when it wrote; without, it
/// answers the head's row count (1).
fn chained_append_statement(
    head: &mut AuditHead,
    events: &[NewAuditEvent],
    hash: RecordHash<'_>,
    expected: Option<&AuditHead>,
) -> Sql {
    let (chained, ref_rows) = chain(head, events, hash);
    let event_rows: Vec<serde_json::Value> = chained
        .iter()
        .map(|row| {
            let event = row.event;
            serde_json::json!({
                "seq": row.seq,
                "event_id": event.event_id,
                "recorded": event.recorded,
                "request_id": event.request_id,
                "type_code": event.type_code,
                "subtype": event.subtype,
                "action": event.action,
                "outcome": event.outcome,
                "agent_client": event.agent_client,
                "agent_org": event.agent_org,
                "agent_user": event.agent_user,
                "purpose": event.purpose,
                "body": event.body,
                "prev_hash": row.prev_hash,
                "hash": row.hash,
            })
        })
        .collect();
    let refs: Vec<serde_json::Value> = ref_rows
        .iter()
        .map(|(seq, kind, reference)| serde_json::json!({"seq": seq, "kind": kind, "ref": reference}))
        .collect();
    let mut sql = Sql::new("WITH h AS (");
    sql.push_sql(&head_update(head, expected))
        .push(
            " RETURNING seq), e AS (INSERT INTO audit_events (seq, event_id, recorded, request_id, \
             type_code, subtype, action, outcome, agent_client, agent_org, agent_user, purpose, body, \
             prev_hash, hash) SELECT seq, event_id, recorded, request_id, type_code, subtype, action, \
             outcome, agent_client, agent_org, agent_user, purpose, body, prev_hash, hash FROM \
             json_to_recordset(CAST(",
        )
        .bind(Bind::Text(serde_json::Value::Array(event_rows).to_string()))
        .push(
            " AS json)) AS x(seq bigint, event_id text, recorded bigint, request_id text, \
             type_code text, subtype text, action text, outcome text, agent_client text, \
             agent_org text, agent_user text, purpose text, body text, prev_hash text, hash text) \
             WHERE EXISTS (SELECT 1 FROM h)), r AS (INSERT INTO audit_refs (seq, kind, ref) \
             SELECT seq, kind, ref FROM json_to_recordset(CAST(",
        )
        .bind(Bind::Text(serde_json::Value::Array(refs).to_string()))
        .push(
            " AS json)) AS y(seq bigint, kind text, ref text) WHERE EXISTS (SELECT 1 FROM h)) \
             SELECT CAST(COUNT(*) AS BIGINT) AS n FROM h",
        );
    sql
}

impl Tx<'_> {
    /// The chain head: the last appended record.
    pub fn audit_head(&mut self) -> Result<AuditHead, StoreError> {
        self.head_row("")
    }

    /// The chain head, locked for the rest of the transaction (where the backend has row
    /// locks; SQLite's IMMEDIATE transaction already excludes other writers).
    fn locked_audit_head(&mut self) -> Result<AuditHead, StoreError> {
        let lock = self.for_update();
        self.head_row(lock)
    }

    fn head_row(&mut self, lock: &str) -> Result<AuditHead, StoreError> {
        let mut sql = Sql::new("SELECT seq, hash FROM audit_head WHERE id = 1");
        sql.push(lock);
        self.load::<AuditHead>(&sql)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Unavailable("audit head row is missing".into()))
    }

    /// Appends events to the chain inside the current transaction. `hash` computes a record's
    /// hash from (seq, recorded, previous hash, body). The head row is locked for the rest of
    /// the transaction, so appends from concurrent transactions serialize and the chain stays
    /// linear.
    pub fn append_audit(
        &mut self,
        events: &[NewAuditEvent],
        hash: RecordHash<'_>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut head = self.locked_audit_head()?;
        // A group commit of many events costs a few statements, not several per event.
        match self.backend() {
            crate::Backend::Sqlite => {
                let mut statements = chained_inserts(&mut head, events, hash);
                statements.push(head_update(&head, None));
                self.execute_together(&statements)
            }
            crate::Backend::Postgres => {
                let appended = chained_append_statement(&mut head, events, hash, None);
                self.load_count(&appended).map(|_| ())
            }
        }
    }

    /// PostgreSQL, outside a transaction: appends `events` after `head` in one statement that
    /// commits on its own, provided the chain still ends at `head`; the new head then, or
    /// `None` (nothing written) when another writer appended meanwhile. One round trip where
    /// [`Tx::append_audit`] takes four (begin, lock the head, append, commit).
    pub fn append_audit_after(
        &mut self,
        head: &AuditHead,
        events: &[NewAuditEvent],
        hash: RecordHash<'_>,
    ) -> Result<Option<AuditHead>, StoreError> {
        if self.backend() != crate::Backend::Postgres {
            // SQLite has no data-modifying `WITH`; its writers append under the write lock.
            return Err(StoreError::Unavailable(
                "appending after a known audit head needs PostgreSQL".into(),
            ));
        }
        let mut next = head.clone();
        // The head moves only if it is still where this writer last saw it; a concurrent
        // append holds its row lock until it commits, and the re-check then fails.
        let appended = chained_append_statement(&mut next, events, hash, Some(head));
        let moved = self.load_count(&appended)?;
        Ok((moved == 1).then_some(next))
    }

    /// Which of `event_ids` the trail already holds (a journal replayed twice appends nothing
    /// twice).
    pub fn audit_events_present(
        &mut self,
        event_ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        #[derive(QueryableByName)]
        struct Present {
            #[diesel(sql_type = Text)]
            event_id: String,
        }
        let mut present = std::collections::HashSet::new();
        for chunk in event_ids.chunks(512) {
            // Lists padded to a power of two (repeating an id) keep the number of distinct
            // statements each connection prepares small.
            let width = chunk.len().next_power_of_two();
            let mut sql = Sql::new("SELECT event_id FROM audit_events WHERE event_id IN (");
            for i in 0..width {
                if i > 0 {
                    sql.push(", ");
                }
                let id = chunk.get(i).unwrap_or(&chunk[0]);
                sql.bind(Bind::Text((*id).to_string()));
            }
            sql.push(")");
            present.extend(self.load::<Present>(&sql)?.into_iter().map(|p| p.event_id));
        }
        Ok(present)
    }

    /// Records in seq order starting after `after_seq`, at most `limit` (for verify/export).
    pub fn audit_chain(
        &mut self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut sql =
            Sql::new("SELECT seq, recorded, body, prev_hash, hash FROM audit_events WHERE seq > ");
        sql.bind(Bind::Int(after_seq))
            .push(" ORDER BY seq")
            .push_limit(limit);
        self.load::<AuditRow>(&sql)
    }

    /// The search columns of the records after `after_seq`, in seq order, at most `limit`.
    pub fn audit_columns(
        &mut self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditColumns>, StoreError> {
        let mut sql = Sql::new(
            "SELECT seq, event_id, request_id, type_code, subtype, action, outcome, agent_client, \
             agent_org, agent_user, purpose FROM audit_events WHERE seq > ",
        );
        sql.bind(Bind::Int(after_seq))
            .push(" ORDER BY seq")
            .push_limit(limit);
        self.load::<AuditColumns>(&sql)
    }

    /// The search references of the records `first_seq..=last_seq`, in seq order.
    pub fn audit_refs_between(
        &mut self,
        first_seq: i64,
        last_seq: i64,
    ) -> Result<Vec<AuditRef>, StoreError> {
        let mut sql = Sql::new("SELECT seq, kind, ref AS reference FROM audit_refs WHERE seq >= ");
        sql.bind(Bind::Int(first_seq))
            .push(" AND seq <= ")
            .bind(Bind::Int(last_seq))
            .push(" ORDER BY seq");
        self.load::<AuditRef>(&sql)
    }

    /// Audit events matching `query`, newest first unless `descending` is false.
    pub fn audit_search(&mut self, query: &AuditQuery) -> Result<Vec<AuditBody>, StoreError> {
        self.load::<AuditBody>(&audit_search_statement(query, Listing::Page))
    }

    /// How many events match `query`'s filters, on every page (its cursor and limit aside).
    pub fn audit_count(&mut self, query: &AuditQuery) -> Result<i64, StoreError> {
        let every_page = AuditQuery {
            before_seq: None,
            after_seq: None,
            past_recorded: None,
            ..query.clone()
        };
        self.load_count(&audit_search_statement(&every_page, Listing::Count))
    }
}

/// What [`audit_search_statement`] selects: a page of events, or how many match.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    Page,
    Count,
}

/// `column` holds reference kind `kind`. `entity` is `AuditEvent.entity.what`: the patient an
/// event names is one of its entities too (role 1), kept as a kind of its own for `patient=`.
fn push_ref_kind(sql: &mut Sql, column: &str, kind: &str) {
    if kind == "entity" {
        sql.push(&format!("{column} IN ("))
            .bind(Bind::Text("entity".into()))
            .push(", ")
            .bind(Bind::Text("patient".into()))
            .push(")");
    } else {
        sql.push(&format!("{column} = "))
            .bind(Bind::Text(kind.to_string()));
    }
}

/// ` AND ` [`crate::search::push_in`].
fn push_any_of(sql: &mut Sql, column: &str, values: &[String]) {
    sql.push(" AND ");
    crate::search::push_in(sql, column, values);
}

/// The statement of [`Tx::audit_search`].
pub(crate) fn audit_search_statement(query: &AuditQuery, listing: Listing) -> Sql {
    // A reference filter (a patient's "who viewed my record", `entity=`, a facility's own
    // data) drives the query from the reference index, whose (kind, ref, seq) order is
    // already the answer's order: the events of one patient are found without walking the
    // whole trail. Written as CROSS JOIN because SQLite then keeps the reference table as the
    // outer loop; it has no statistics that would tell it a patient's events are rare.
    let single_custodian = match query.custodian_any_of.as_deref() {
        Some([custodian]) => Some(("custodian".to_string(), custodian.clone())),
        _ => None,
    };
    // In `recorded` order a facility's view walks the trail by time instead: all of its
    // data's events would have to be sorted otherwise.
    let custodian_drives = single_custodian.is_some() && !query.by_recorded;
    let (driving_ref, other_refs) = match query.refs.split_first() {
        // A list of several (`patient=A,B`, the linked records of a patient's own view)
        // drives through its distinct events: an event naming two of them is found once.
        Some(((kind, refs), rest)) if !refs.is_empty() => (Some((kind, refs.as_slice())), rest),
        Some(_) => (None, &query.refs[..]),
        None if custodian_drives => (
            single_custodian
                .as_ref()
                .map(|(kind, reference)| (kind, std::slice::from_ref(reference))),
            &query.refs[..],
        ),
        None => (None, &query.refs[..]),
    };
    // When the facility's own custodian reference drives, it is the whole custodian filter.
    let custodian_filter = if query.refs.is_empty() && custodian_drives {
        None
    } else {
        query.custodian_any_of.as_ref()
    };
    let mut sql = Sql::new(match listing {
        Listing::Page => "SELECT e.seq, e.recorded, e.body FROM ",
        Listing::Count => "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM ",
    });
    let seq_column = match driving_ref {
        // `entity` reads two kinds of row, which one event may both have: found through its
        // distinct events, as a list is.
        Some((kind, [reference])) if kind != "entity" => {
            sql.push("audit_refs d CROSS JOIN audit_events e WHERE d.kind = ")
                .bind(Bind::Text(kind.clone()))
                .push(" AND d.ref = ")
                .bind(Bind::Text(reference.clone()));
            sql.push(" AND e.seq = d.seq");
            "d.seq"
        }
        Some((kind, references)) => {
            sql.push("(SELECT DISTINCT dr.seq FROM audit_refs dr WHERE ");
            push_ref_kind(&mut sql, "dr.kind", kind);
            push_any_of(&mut sql, "dr.ref", references);
            sql.push(") d CROSS JOIN audit_events e WHERE e.seq = d.seq");
            "d.seq"
        }
        None => {
            sql.push("audit_events e WHERE 1 = 1");
            "e.seq"
        }
    };
    if let Some(from) = query.from_ms {
        sql.push(" AND e.recorded >= ").bind(Bind::Int(from));
    }
    if let Some(to) = query.to_ms {
        sql.push(" AND e.recorded < ").bind(Bind::Int(to));
    }
    for (column, values) in [
        ("e.type_code", &query.type_code),
        ("e.subtype", &query.subtype),
        ("e.action", &query.action),
        ("e.outcome", &query.outcome),
        ("e.purpose", &query.purpose),
    ] {
        if !values.is_empty() {
            push_any_of(&mut sql, column, values);
        }
    }
    if !query.agent.is_empty() {
        sql.push(" AND (");
        let columns: &[&str] = if query.agent_without_client {
            &["e.agent_org", "e.agent_user"]
        } else {
            &["e.agent_client", "e.agent_org", "e.agent_user"]
        };
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            crate::search::push_in(&mut sql, column, &query.agent);
        }
        if !query.agent_without_client && query.agent.iter().any(|a| a == ANONYMOUS_AGENT) {
            sql.push(" OR e.agent_client IS NULL");
        }
        sql.push(")");
    }
    for (kind, references) in other_refs {
        sql.push(" AND EXISTS (SELECT 1 FROM audit_refs r WHERE r.seq = e.seq AND ");
        push_ref_kind(&mut sql, "r.kind", kind);
        push_any_of(&mut sql, "r.ref", references);
        sql.push(")");
    }
    if let Some(custodians) = custodian_filter {
        sql.push(
            " AND EXISTS (SELECT 1 FROM audit_refs r WHERE r.seq = e.seq AND r.kind = 'custodian'",
        );
        push_any_of(&mut sql, "r.ref", custodians);
        sql.push(")");
    }
    for decider in &query.without_decisions_by {
        let decider = crate::search::like_escape(decider);
        sql.push(" AND e.body NOT LIKE ")
            .bind(Bind::Text(format!("%\"{decider}\"%")))
            .push(" ESCAPE '\\'");
    }
    if !query.without_records_withheld_from.is_empty() {
        // The patient's records, withheld or not, are listed once per statement, then looked
        // up per event. Their Consents are not what an event is about for this: a decision
        // names the deciding Consent beside the record it decided on.
        let records_of = |sql: &mut Sql, withheld: bool| {
            sql.push("(SELECT pr.res_type || '/' || pr.res_id FROM resources pr WHERE ");
            crate::search::push_in(sql, "pr.patient_id", &query.without_records_withheld_from);
            sql.push(" AND pr.res_type <> 'Consent' AND ");
            if !withheld {
                sql.push("NOT ");
            }
            crate::visibility::push_withheld_from_patient(sql, "pr");
            sql.push(")");
        };
        sql.push(
            " AND NOT (EXISTS (SELECT 1 FROM audit_refs w WHERE w.seq = e.seq \
             AND w.kind = 'entity' AND w.ref IN ",
        );
        records_of(&mut sql, true);
        sql.push(
            ") AND NOT EXISTS (SELECT 1 FROM audit_refs v WHERE v.seq = e.seq \
             AND v.kind = 'entity' AND v.ref IN ",
        );
        records_of(&mut sql, false);
        sql.push("))");
    }
    if let Some(event_id) = &query.event_id {
        sql.push(" AND e.event_id = ")
            .bind(Bind::Text(event_id.clone()));
    }
    if let Some(before) = query.before_seq {
        sql.push(&format!(" AND {seq_column} < "))
            .bind(Bind::Int(before));
    }
    if let Some(after) = query.after_seq {
        sql.push(&format!(" AND {seq_column} > "))
            .bind(Bind::Int(after));
    }
    if listing == Listing::Count {
        return sql;
    }
    let direction = if query.descending { " DESC" } else { "" };
    if query.by_recorded {
        if let Some((recorded, seq)) = query.past_recorded {
            let past = if query.descending { "<" } else { ">" };
            sql.push(&format!(" AND (e.recorded {past} "))
                .bind(Bind::Int(recorded))
                .push(" OR (e.recorded = ")
                .bind(Bind::Int(recorded))
                .push(&format!(" AND e.seq {past} "))
                .bind(Bind::Int(seq))
                .push("))");
        }
        sql.push(&format!(
            " ORDER BY e.recorded{direction}, e.seq{direction}"
        ));
    } else {
        sql.push(&format!(" ORDER BY {seq_column}{direction}"));
    }
    sql.push_limit(query.limit);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_any_size_split_into_a_few_fixed_statement_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for len in 0..=3000 {
            let sizes = chunk_sizes(len, 1000);
            assert_eq!(sizes.iter().sum::<usize>(), len);
            shapes.extend(sizes);
        }
        // 1000 and the powers of two below it.
        assert_eq!(shapes.len(), 11, "{shapes:?}");
        assert_eq!(chunk_sizes(83, 40), vec![40, 40, 2, 1]);
    }

    #[test]
    fn postgres_appends_of_any_size_are_one_statement_text() {
        let event = |n: usize| NewAuditEvent {
            event_id: format!("e{n}"),
            recorded: 1,
            request_id: "r".into(),
            type_code: "rest".into(),
            subtype: "read".into(),
            action: "R".into(),
            outcome: "0".into(),
            agent_client: None,
            agent_org: Some("Organization/o".into()),
            agent_user: None,
            purpose: None,
            body: "{\"b\":\"x\"}".into(),
            refs: (0..n)
                .map(|i| ("patient".into(), format!("Patient/{i}")))
                .collect(),
        };
        let hash: RecordHash<'_> = &|seq, _, prev, _| format!("{prev}{seq}");
        let texts: std::collections::BTreeSet<String> = [1, 2, 7, 40, 300]
            .into_iter()
            .map(|n| {
                let events: Vec<NewAuditEvent> = (0..n).map(event).collect();
                let mut head = AuditHead {
                    seq: 0,
                    hash: String::new(),
                };
                let expected = head.clone();
                let sql = chained_append_statement(&mut head, &events, hash, Some(&expected));
                assert_eq!(head.seq, n as i64);
                assert_eq!(sql.binds().len(), 5);
                sql.text().to_string()
            })
            .collect();
        assert_eq!(texts.len(), 1);
    }

    #[test]
    fn audit_rows_have_no_update_or_delete_statement() {
        // The append-only guarantee is structural: this module never issues UPDATE or DELETE
        // against audit_events or audit_refs.
        let source = include_str!("audit.rs");
        let forbidden = [
            "UPDATE audit_events",
            "DELETE FROM audit_events",
            "DELETE FROM audit_refs",
            "UPDATE audit_refs",
        ];
        for statement in forbidden {
            let occurrences = source.matches(statement).count();
            // Each string appears exactly once: in the list above.
            assert_eq!(occurrences, 1, "{statement}");
        }
    }
}
