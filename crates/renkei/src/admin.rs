//! Operator commands that work on the database directly: the token-signing key, client
//! registrations, tokens, and the audit trail (verify, export).

use renkei_audit::{verify_chain, ChainRecord, ChainVerdict};
use renkei_auth::{ClientRegistration, Role, ServerKey};
use renkei_store::Store;
use std::io::Write;

/// The gateway's signing key: created and stored on first use, the same for every process
/// that shares the database (server, `renkei token`).
pub fn server_key(store: &Store) -> Result<ServerKey, String> {
    let existing = store
        .read(|tx| tx.server_key())
        .map_err(|e| e.to_string())?;
    if let Some(row) = existing {
        return ServerKey::from_pem(&row.private).map_err(|e| format!("stored signing key: {e}"));
    }
    let key = ServerKey::generate();
    let pem = key.to_pkcs8_pem().map_err(|e| e.to_string())?;
    let now = chrono::Utc::now().timestamp_millis();
    store
        .write(|tx| tx.insert_server_key(key.kid(), &pem, now))
        .map_err(|e| e.to_string())?;
    // Another process may have won the race: use whatever is stored now.
    let row = store
        .read(|tx| tx.server_key())
        .map_err(|e| e.to_string())?
        .ok_or("the signing key could not be stored")?;
    ServerKey::from_pem(&row.private).map_err(|e| e.to_string())
}

pub struct NewClient {
    pub id: String,
    pub organization: String,
    pub role: String,
    pub patient: Option<String>,
    pub practitioner: Option<String>,
    pub scope: Option<String>,
    pub jwks: Option<String>,
    pub break_glass: bool,
    pub cert_fingerprint: Option<String>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "facility" => Ok(Role::Facility),
        "patient" => Ok(Role::Patient),
        "auditor" => Ok(Role::Auditor),
        "admin" => Ok(Role::Admin),
        other => Err(format!(
            "unknown role '{other}': use facility, patient, auditor or admin"
        )),
    }
}

fn default_scopes(role: Role) -> Vec<String> {
    match role {
        Role::Facility => vec!["system/*.cruds".into()],
        Role::Patient => vec!["patient/*.rs".into()],
        Role::Auditor => vec!["system/AuditEvent.rs".into()],
        Role::Admin => vec!["system/AuditEvent.rs".into()],
    }
}

pub fn add_client(store: &Store, new: NewClient) -> Result<ClientRegistration, String> {
    let role = parse_role(&new.role)?;
    let mut registration = ClientRegistration::new(new.id.clone(), new.organization.clone());
    registration.role = role;
    registration.patient = new.patient;
    registration.practitioner = new.practitioner;
    registration.scopes = match new.scope {
        Some(scope) => scope.split_whitespace().map(str::to_string).collect(),
        None => default_scopes(role),
    };
    registration.break_glass = new.break_glass;
    registration.cert_fingerprint = new.cert_fingerprint;
    if let Some(path) = new.jwks {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
        registration.jwks =
            Some(serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))?);
    }
    registration.validate().map_err(|e| e.to_string())?;
    // The scope grammar allows any type name; one no FHIR R4 resource has is a typo that
    // would leave the client without the access it was registered for.
    for typed in &registration.scopes {
        let parsed = renkei_auth::Scopes::parse(typed).map_err(|e| e.to_string())?;
        let unknown = parsed
            .iter()
            .filter_map(|scope| scope.resource_type.as_deref())
            .find(|res_type| !renkei_fhir::is_resource_type(res_type));
        if let Some(res_type) = unknown {
            return Err(format!(
                "scope '{typed}' names '{res_type}', which is no FHIR R4 resource type"
            ));
        }
    }
    // A reference to nothing stored here is allowed (clients are often registered before the
    // facility's data is loaded) but never silent: a typo would otherwise go unnoticed until
    // consent decisions named a facility nobody knows.
    for reference in [
        Some(&registration.organization),
        registration.patient.as_ref(),
        registration.practitioner.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if !is_stored(store, reference)? {
            eprintln!(
                "warning: {reference} is not stored in this database (yet); check the spelling"
            );
        }
    }
    let json = serde_json::to_string(&registration).map_err(|e| e.to_string())?;
    let now = chrono::Utc::now().timestamp_millis();
    store
        .write(|tx| tx.put_client(&registration.client_id, &json, now))
        .map_err(|e| e.to_string())?;
    // As stored: the registration time is what its tokens name (claim `reg`).
    registration.registered_at = now;
    Ok(registration)
}

/// Whether `Type/id` is a stored, not deleted, resource.
fn is_stored(store: &Store, reference: &str) -> Result<bool, String> {
    let Some((res_type, id)) = reference.split_once('/') else {
        return Ok(false);
    };
    store
        .read(|tx| tx.current(res_type, id))
        .map(|row| row.is_some_and(|row| !row.deleted))
        .map_err(|e| e.to_string())
}

pub fn list_clients(store: &Store) -> Result<Vec<ClientRegistration>, String> {
    let rows = store.read(|tx| tx.clients()).map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| {
            ClientRegistration::from_stored(&row.registration, row.created)
                .map_err(|e| e.to_string())
        })
        .collect()
}

pub fn remove_client(store: &Store, id: &str) -> Result<bool, String> {
    store
        .write(|tx| tx.remove_client(id))
        .map_err(|e| e.to_string())
}

pub fn client(store: &Store, id: &str) -> Result<ClientRegistration, String> {
    let row = store
        .read(|tx| tx.client(id))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no client '{id}' is registered (see `renkei client list`)"))?;
    ClientRegistration::from_stored(&row.registration, row.created).map_err(|e| e.to_string())
}

/// Issues an access token for a registered client, signed with the server key.
pub fn issue_token(
    store: &Store,
    client_id: &str,
    practitioner: Option<&str>,
    scope: Option<&str>,
    ttl: u64,
) -> Result<String, String> {
    let registration = client(store, client_id)?;
    // Who a client acts for is part of its registration, which an operator reviews; a
    // practitioner named only at token time would let any facility client act as anyone
    // (another facility's practitioner, or one that does not exist).
    if let (Some(asked), None) = (practitioner, registration.practitioner.as_deref()) {
        return Err(format!(
            "client '{client_id}' is registered without a practitioner, so its tokens cannot act for {asked}: \
             register the client with `renkei client add --practitioner {asked}` (or one client per practitioner)"
        ));
    }
    let key = server_key(store)?;
    let practitioner = practitioner.or(registration.practitioner.as_deref());
    renkei_auth::issue_access_token(
        &key,
        &registration,
        scope,
        practitioner,
        ttl,
        chrono::Utc::now(),
    )
    .map(|(token, _)| token)
    .map_err(|e| e.to_string())
}

/// The demo network's clients: one system per facility (the hospitals may break the glass),
/// an auditor and a patient app.
pub fn demo_clients() -> Vec<NewClient> {
    let facility = |id: &str, org: &str, break_glass: bool| NewClient {
        id: id.into(),
        organization: format!("Organization/{org}"),
        role: "facility".into(),
        patient: None,
        practitioner: None,
        scope: None,
        jwks: None,
        break_glass,
        cert_fingerprint: None,
    };
    vec![
        facility("okayama-central-ehr", "hosp-okayama-central", true),
        facility("kurashiki-general-ehr", "hosp-kurashiki-general", true),
        facility("hareyaka-clinic-ehr", "clinic-hareyaka", false),
        NewClient {
            id: "network-auditor".into(),
            organization: "Organization/hosp-okayama-central".into(),
            role: "auditor".into(),
            patient: None,
            practitioner: None,
            scope: None,
            jwks: None,
            break_glass: false,
            cert_fingerprint: None,
        },
        NewClient {
            id: "yamada-patient-app".into(),
            organization: "Organization/clinic-hareyaka".into(),
            role: "patient".into(),
            patient: Some("Patient/pat-yamada-taro".into()),
            practitioner: None,
            scope: None,
            jwks: None,
            break_glass: false,
            cert_fingerprint: None,
        },
    ]
}

/// Read AuditEvents in the journal (SQLite) that are not in the trail yet: a running server's,
/// or those a stopped or crashed server left there. They are
/// durable, and added to the trail by a running server's ingester, or by the next
/// start of a stopped one.
fn journal_backlog(store: &Store) -> Result<renkei_access::audit_log::JournalBacklog, String> {
    renkei_access::audit_log::journal_backlog(store).map_err(|e| e.to_string())
}

/// An anchor of the trail kept outside the database: record `seq` had hash `hash`.
struct Anchor {
    seq: i64,
    hash: String,
}

/// `SEQ:HASH` as `verify` prints it on its `anchor:` line.
fn parse_anchor(text: &str) -> Result<Anchor, String> {
    let (seq, hash) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("--expect-head '{text}': expected SEQ:HASH"))?;
    let seq: i64 = seq
        .parse()
        .ok()
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| format!("--expect-head '{text}': '{seq}' is no record number"))?;
    let hash = hash.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "--expect-head '{text}': the hash must be 64 hexadecimal digits"
        ));
    }
    Ok(Anchor { seq, hash })
}

/// The first anchor the trail's records (in `seq` order, `head` the last one's number)
/// no longer hold: a record rewritten since, or gone with the end of the trail.
fn first_broken_anchor(anchors: &[Anchor], records: &[ChainRecord], head: i64) -> Option<String> {
    anchors.iter().find_map(|anchor| {
        if anchor.seq == 0 {
            return None;
        }
        let stored = records
            .binary_search_by_key(&anchor.seq, |record| record.seq)
            .ok()
            .map(|index| records[index].hash.as_str());
        match stored {
            Some(hash) if hash == anchor.hash => None,
            Some(_) => Some(format!(
                "audit trail BROKEN at record {}: its hash is not the one anchored ({}): the trail up to it was rewritten since the anchor was taken",
                anchor.seq, anchor.hash
            )),
            None => Some(format!(
                "audit trail BROKEN: anchored record {} is missing (the trail ends at record {head}): records were removed since the anchor was taken",
                anchor.seq
            )),
        }
    })
}

/// Walks the audit chain; prints the verdict and the head hash. Err when the chain is broken
/// or no longer holds one of `expected_heads` (anchors printed by an earlier verify).
pub fn verify_audit(store: &Store, expected_heads: &[String]) -> Result<(), String> {
    let anchors = expected_heads
        .iter()
        .map(|text| parse_anchor(text))
        .collect::<Result<Vec<_>, _>>()?;
    let intact = check_audit(store, &anchors)?;
    println!("audit trail intact: {} records", intact.records);
    println!("head hash: {}", intact.head_hash);
    // What to keep outside the database and give back as `--expect-head`.
    println!("anchor: {}:{}", intact.head_seq, intact.head_hash);
    if intact.backlog > 0 {
        // Only the server holding the journal moves it into the trail: another one
        // on the same database does not take it over while it runs.
        let by = match renkei_access::audit_log::journal_being_written(store) {
            Ok(true) => "the server writing the journal adds them within moments",
            _ => {
                "no server is writing the journal: the next server started on this \
                  database adds them (a server already running beside it does not)"
            }
        };
        println!(
            "read-audit journal: {} events not in the trail yet (durable; {by})",
            intact.backlog
        );
    }
    Ok(())
}

/// What a trail that verified holds.
struct IntactTrail {
    records: u64,
    head_seq: i64,
    head_hash: String,
    /// Journaled read events not in the trail yet.
    backlog: usize,
}

/// The trail's verdict: its chain of hashes, the anchors given, every record's search columns
/// and references, and the read-audit journal; the first problem found, described for an
/// operator, when one is broken.
fn check_audit(store: &Store, anchors: &[Anchor]) -> Result<IntactTrail, String> {
    let journal = journal_backlog(store)?;
    let backlog = journal.events.len();
    // The head and the records come from one read transaction, so one snapshot (SQLite's
    // deferred read transaction; REPEATABLE READ on PostgreSQL). Read in separate
    // transactions, a running server's append that commits in between leaves records after
    // the head read earlier, which looked exactly like records removed at the end.
    let (head, records) = store
        .read(|tx| {
            let head = tx.audit_head()?;
            let mut records: Vec<ChainRecord> = Vec::new();
            let mut after = 0;
            loop {
                let rows = tx.audit_chain(after, 10_000)?;
                let Some(last) = rows.last().map(|r| r.seq) else {
                    break;
                };
                records.extend(rows.into_iter().map(|r| ChainRecord {
                    seq: r.seq,
                    recorded_ms: r.recorded,
                    body: r.body,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                }));
                after = last;
            }
            Ok::<_, renkei_store::StoreError>(((head.seq, head.hash), records))
        })
        .map_err(|e| e.to_string())?;
    let head_seq = head.0;
    let anchor_broken = first_broken_anchor(anchors, &records, head_seq);
    match verify_chain(records, Some(head)) {
        ChainVerdict::Intact { records, head_hash } => {
            if let Some(problem) = anchor_broken {
                return Err(problem);
            }
            if let Some((seq, problem)) = first_disagreeing_record(store)? {
                return Err(format!(
                    "audit trail BROKEN at record {seq}: {problem} (the chain of hashes is intact, \
                     but searches and the patients' and facilities' views read these columns)"
                ));
            }
            if let Some(offset) = journal.damaged_at {
                return Err(format!(
                    "read-audit journal DAMAGED at byte {offset}: the frame there cannot be read, \
                     and read events after it are not in the trail; the reads it held are lost \
                     (the trail's {records} records are intact; a server started on this \
                     database adds the events after the damage)"
                ));
            }
            Ok(IntactTrail {
                records,
                head_seq,
                head_hash,
                backlog,
            })
        }
        ChainVerdict::Broken {
            seq,
            problem,
            records_checked,
        } => Err(format!(
            "audit trail BROKEN at record {seq}: {problem} ({records_checked} records before it verified)"
        )),
    }
}

/// The first record whose search columns or references (`audit_refs`) disagree with its
/// hashed content, and how; `None` when every record agrees.
fn first_disagreeing_record(store: &Store) -> Result<Option<(i64, String)>, String> {
    // Large batches: SQLite keys `audit_refs` by reference, so each batch's range of
    // records reads the whole table once.
    const BATCH: usize = 100_000;
    let mut after = 0;
    loop {
        let (rows, columns, refs) = store
            .read(|tx| {
                let rows = tx.audit_chain(after, BATCH)?;
                let columns = tx.audit_columns(after, BATCH)?;
                let refs = match (rows.first(), rows.last()) {
                    (Some(first), Some(last)) => tx.audit_refs_between(first.seq, last.seq)?,
                    _ => Vec::new(),
                };
                Ok((rows, columns, refs))
            })
            .map_err(|e: renkei_store::StoreError| e.to_string())?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            // References of records the trail does not hold (after its head: every append
            // moves the head with its records and references, in one transaction) would make
            // searches find events that do not exist. Head and references from one snapshot,
            // so a running server's appends meanwhile are not taken for them.
            let beyond = store
                .read(|tx| {
                    let head = tx.audit_head()?;
                    tx.audit_refs_between(head.seq.max(after) + 1, i64::MAX)
                })
                .map_err(|e: renkei_store::StoreError| e.to_string())?;
            return Ok(beyond.first().map(|r| {
                (
                    r.seq,
                    format!(
                        "audit_refs holds a {} reference {} of record {}, which the trail does not hold",
                        r.kind, r.reference, r.seq
                    ),
                )
            }));
        };
        // The three lists come from one snapshot, over the same seq range in seq order: they
        // pair up record by record.
        let mut refs = refs.as_slice();
        for (row, stored) in rows.iter().zip(&columns) {
            let held = refs.iter().take_while(|r| r.seq <= row.seq).count();
            let (up_to_here, rest) = refs.split_at(held);
            refs = rest;
            let of_record: Vec<renkei_store::AuditRef> = up_to_here
                .iter()
                .filter(|r| r.seq == row.seq)
                .cloned()
                .collect();
            if let Some(problem) =
                renkei_access::audit_log::disagreement(&row.body, stored, &of_record)
            {
                return Ok(Some((row.seq, problem)));
            }
        }
        after = last;
    }
}

/// One NDJSON line: the AuditEvent resource rendered from its stored form.
fn write_event(out: &mut dyn Write, stored: &str, what: &str) -> Result<(), String> {
    let resource = renkei_audit::render_stored(stored).map_err(|e| format!("{what}: {e}"))?;
    writeln!(out, "{resource}").map_err(|e| e.to_string())
}

/// Whether the trail verifies as `renkei audit verify` would check it (no anchors): an export
/// for an investigation must not pass off a tampered trail as the record.
pub fn check_exported_trail(store: &Store) -> Result<(), String> {
    check_audit(store, &[]).map(|_| ()).map_err(|problem| {
        format!(
            "the exported events are as the database holds them, but the trail does not verify: \
             {problem}; run `renkei audit verify` and treat the export as evidence of tampering"
        )
    })
}

/// Writes every AuditEvent recorded since `since_ms` as NDJSON.
pub fn export_audit(store: &Store, since_ms: i64, out: &mut dyn Write) -> Result<u64, String> {
    let mut after = 0;
    let mut written = 0;
    loop {
        let rows = store
            .read(|tx| tx.audit_chain(after, 10_000))
            .map_err(|e| e.to_string())?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            // Then the journaled events the trail does not hold yet, so the SIEM misses none.
            for event in journal_backlog(store)?
                .events
                .iter()
                .filter(|e| e.recorded >= since_ms)
            {
                write_event(
                    out,
                    &event.body,
                    &format!("journaled event {}", event.event_id),
                )?;
                written += 1;
            }
            return Ok(written);
        };
        for row in rows.iter().filter(|r| r.recorded >= since_ms) {
            write_event(out, &row.body, &format!("audit record {}", row.seq))?;
            written += 1;
        }
        after = last;
    }
}
