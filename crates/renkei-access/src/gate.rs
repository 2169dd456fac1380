//! The gate every request passes: scope check, consent decision (as the store's visibility
//! predicate), the interaction itself, and its AuditEvent. Writes commit their AuditEvent in
//! the same transaction as the change; reads return only after theirs is durable.

use crate::audit_log::{append, to_row, AuditLog, TrailEvent};
use crate::requester::Requester;
use crate::AccessError;
use renkei_audit::{AuditOutcome, EventBuilder, Interaction};
use renkei_auth::Action;
use renkei_consent::Policy;
use renkei_repository::identity::{self, MatchCandidate, PixAnswer};
use renkei_repository::{
    percent_encode, Criteria, DeleteOutcome, HistoryRequest, PatchBody, PreparedResource,
    RepoError, Repository, StoredResource, WriteContext, WriteOutcome,
};
use renkei_search::plan::{Filter, SearchPlan};
use renkei_store::{
    AuditQuery, DecidedRow, HistoryPage, NewAuditEvent, SearchPage, SearchRow, Tx, Visibility,
};
use serde_json::Value;

#[derive(Clone)]
pub struct Gate {
    repository: Repository,
    audit: AuditLog,
    policy: Policy,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The patient a stored resource is about, as `Patient/<id>`, for the audit entity: the
/// classification stored with the record (the one consent is decided on).
/// What an AuthZ-Consent event names as the decider of a break-glass access.
const BREAK_GLASS: &str = "break-glass";

/// Why a break-glass request that names no one patient is refused: break-glass opens the
/// record of the patient in front of the doctor, never every patient's data in the network.
const BREAK_GLASS_NEEDS_ONE_PATIENT: &str = "break-glass (X-Purpose-Of-Use: ETREAT) applies to \
     one patient's data: name exactly one patient (read a resource by id, search with patient= \
     or subject= one Patient, Patient/[id]/[type] or Patient/[id]/$everything, or a Bundle \
     whose reads are all about one patient); this request names none or several";

/// What decided a facility's access to a row, as the store finds it.
#[derive(Default)]
struct Deciders {
    /// The deciding Consent; `None` when no rule applies (the implicit policy).
    consent: Option<String>,
    /// The Consent whose refusal a break-glass access overrode.
    overridden_refusal: Option<String>,
    /// The row is the break-glass patient's: break-glass showed it.
    by_break_glass: bool,
}

impl From<renkei_store::Decision> for Deciders {
    fn from(decision: renkei_store::Decision) -> Self {
        Deciders {
            consent: decision.consent_ref,
            overridden_refusal: decision.overridden_refusal,
            by_break_glass: decision.by_break_glass,
        }
    }
}

/// The one patient a search names, for break-glass: its Patient compartment (`$everything`
/// included), `Patient?_id=`, or reference filters that name one Patient (`patient=`,
/// `subject=Patient/…`, `:linked=`). `None` when it names none, or several (alternatives, or
/// filters that disagree): break-glass then has no patient to apply to.
fn break_glass_patient(plan: &SearchPlan) -> Option<String> {
    use renkei_search::plan::RefMatch;
    let mut named: Vec<Option<&str>> = Vec::new();
    for filter in &plan.filters {
        match filter {
            Filter::Compartment {
                target_type,
                target_id,
                ..
            } if target_type == "Patient" => named.push(Some(target_id)),
            Filter::Id { ids, not: false } if plan.types == ["Patient"] => {
                named.push(match ids.as_slice() {
                    [id] => Some(id),
                    _ => None,
                })
            }
            Filter::Reference { param, values } => {
                // An untyped id names a patient only through a parameter that means one.
                let patient_param = matches!(param.as_str(), "patient" | "subject");
                let one = match values.as_slice() {
                    [RefMatch::Id { types, id }]
                        if types.iter().any(|t| t == "Patient")
                            || (types.is_empty() && patient_param) =>
                    {
                        Some(Some(id.as_str()))
                    }
                    [RefMatch::LinkedPatient(id)] => Some(Some(id.as_str())),
                    // Several alternatives of a patient parameter: several patients.
                    _ if patient_param => Some(None),
                    _ => None,
                };
                named.extend(one);
            }
            _ => {}
        }
    }
    let first = named.first().copied().flatten()?;
    named
        .iter()
        .all(|id| *id == Some(first))
        .then(|| first.trim_start_matches("Patient/").to_string())
}

/// The resources a Bundle's entries read by id (`GET Type/id…`), for break-glass.
fn bundle_read_targets(bundle: &Value) -> Vec<(String, String)> {
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|entry| !is_write_entry(entry))
        .filter_map(|entry| entry.pointer("/request/url").and_then(Value::as_str))
        .filter(|url| !url.contains('?'))
        .filter_map(|url| {
            let relative = renkei_repository::relative_entry_url(url);
            let mut parts = relative.split('/').filter(|p| !p.is_empty());
            let (res_type, id) = (parts.next()?, parts.next()?);
            let named = !id.starts_with(['_', '$']) && !res_type.starts_with(['_', '$']);
            named.then(|| (res_type.to_string(), id.to_string()))
        })
        .collect()
}

fn patient_of(resource: &StoredResource) -> Option<String> {
    patient_entity(resource.patient_id.as_deref())
}

/// The values in order, each once.
fn distinct(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut values: Vec<String> = values.collect();
    values.sort();
    values.dedup();
    values
}

/// `Patient/<id>` for a stored patient id; none for a patient named only by identifier or
/// display (stored as a value that is not an id).
/// Whether the patient a record is about may see it (no privacy tag withholds it from them).
fn patient_may_see(tx: &mut Tx<'_>, row: &renkei_store::ResourceRow) -> Result<bool, RepoError> {
    match row.patient_id.clone() {
        Some(patient_id) => Ok(tx.is_visible(row, &Visibility::Patient { patient_id })?),
        None => Ok(false),
    }
}

/// The record `reference` names: `Type/id`, or a version of it (`Type/id/_history/n`).
fn record_named(reference: &str) -> Option<(&str, &str)> {
    let mut parts = reference.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(res_type), Some(id), None | Some("_history"))
            if renkei_repository::check_id(id).is_ok()
                && res_type.starts_with(|c: char| c.is_ascii_uppercase()) =>
        {
            Some((res_type, id))
        }
        _ => None,
    }
}

/// How many records a failed request's event looks up to name their patients and holders
/// (a rejected transaction names what its entries addressed).
const MAX_FAILED_TARGETS_NAMED: usize = 100;

fn patient_entity(patient_id: Option<&str>) -> Option<String> {
    patient_id
        .filter(|id| !id.contains(':'))
        .map(|id| format!("Patient/{id}"))
}

/// What a `$match` searched, as a query: the search parameters its candidates were gathered
/// by (from the Patient it was given) and its own parameters, so the trail shows what was
/// asked as it does for a search.
fn match_query(request: &renkei_identity::MatchRequest) -> String {
    let mut params: Vec<String> = renkei_identity::candidate_queries(&request.patient)
        .iter()
        .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
        .collect();
    params.push(format!("onlyCertainMatches={}", request.only_certain));
    if let Some(count) = request.count {
        params.push(format!("count={count}"));
    }
    format!("Patient/$match?{}", params.join("&"))
}

/// The resource whose compartment a search is confined to (`Patient/{id}/…`), if any.
fn compartment_owner(plan: &SearchPlan) -> Option<(&str, &str)> {
    plan.filters.iter().find_map(|filter| match filter {
        Filter::Compartment {
            target_type,
            target_id,
            ..
        } => Some((target_type.as_str(), target_id.as_str())),
        _ => None,
    })
}

/// `plan` confined to its compartment owner's own records, when it asked for the records
/// linked to the owner as the same person too (`$everything?_linked=true`).
fn without_linked_records(plan: &SearchPlan) -> Option<SearchPlan> {
    let mut unlinked = plan.clone();
    let mut changed = false;
    for filter in &mut unlinked.filters {
        if let Filter::Compartment { linked, .. } = filter {
            changed |= std::mem::replace(linked, false);
        }
    }
    changed.then_some(unlinked)
}

/// The types a search looks into besides its own: chained targets and `_has` sources. A
/// token must be allowed to search them too, or a filter on them would tell it what they hold.
fn searched_through(plan: &SearchPlan) -> Vec<String> {
    fn walk(filter: &renkei_search::plan::Filter, out: &mut Vec<String>) {
        use renkei_search::plan::Filter;
        match filter {
            Filter::Chain { targets, .. } => {
                for (target_type, inner) in targets {
                    out.push(target_type.clone());
                    walk(inner, out);
                }
            }
            Filter::Has {
                source_type,
                filter,
                ..
            } => {
                out.push(source_type.clone());
                walk(filter, out);
            }
            _ => {}
        }
    }
    let mut types = Vec::new();
    for filter in &plan.filters {
        walk(filter, &mut types);
    }
    types.sort();
    types.dedup();
    types
}

/// The rows of a page held by another facility than the requester's, per patient, in page
/// order (the first is the one decided on), and the facilities whose data the decision
/// disclosed (so each holder finds the decision in its own audit view). `facts` gives a row's
/// patient and holder.
fn foreign_rows_by_patient<'r, R>(
    who: &Requester,
    rows: impl Iterator<Item = &'r R>,
    facts: impl Fn(&'r R) -> (Option<&'r str>, Option<&'r String>),
) -> std::collections::BTreeMap<&'r str, (Vec<&'r R>, Vec<String>)> {
    let mut by_patient = std::collections::BTreeMap::new();
    for row in rows {
        let (patient, custodian) = facts(row);
        if custodian.map(String::as_str) == Some(who.principal.facility.as_str()) {
            continue;
        }
        if let Some(patient) = patient {
            let (rows, holders): &mut (Vec<&R>, Vec<String>) =
                by_patient.entry(patient).or_default();
            rows.push(row);
            if let Some(holder) = custodian {
                if !holders.contains(holder) {
                    holders.push(holder.clone());
                }
            }
        }
    }
    by_patient
}

/// A row an interaction returns, as its consent decision needs it.
struct ReturnedRow<'a> {
    res_type: &'a str,
    id: &'a str,
    patient: Option<&'a str>,
    custodian: Option<&'a String>,
}

/// Whether a Bundle entry changes data (anything but GET and HEAD).
fn is_write_entry(entry: &Value) -> bool {
    !matches!(
        entry.pointer("/request/method").and_then(Value::as_str),
        Some("GET" | "HEAD")
    )
}

/// A batch entry that answers 503: its answer could not be recorded in the audit trail (the
/// cause is logged; the database's own words are no client's business).
fn unavailable_entry() -> Value {
    renkei_repository::failed_entry(
        "503 Service Unavailable",
        vec![renkei_repository::error_issue(
            "transient",
            "the audit trail cannot be written, so this entry's answer is withheld; try again later",
        )],
    )
}

/// The response entry of a batch entry refused before it ran (its scope).
fn refused_entry(error: &AccessError) -> Value {
    let (status, code) = match error {
        AccessError::MethodNotAllowed(_) => ("405 Method Not Allowed", "not-supported"),
        _ => ("403 Forbidden", "forbidden"),
    };
    renkei_repository::failed_entry(
        status,
        vec![renkei_repository::error_issue(code, &error.to_string())],
    )
}

/// The status code of a Bundle response entry (200 when it names none).
fn entry_status(answer: &Value) -> u16 {
    answer
        .pointer("/response/status")
        .and_then(Value::as_str)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

/// The `response.location` of each Bundle response entry that has one.
fn locations(responses: &[Value]) -> Vec<String> {
    responses
        .iter()
        .filter_map(|entry| entry.pointer("/response/location").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

fn status_of(error: &AccessError) -> u16 {
    match error {
        AccessError::Forbidden(_) => 403,
        AccessError::MethodNotAllowed(_) => 405,
        AccessError::AuditUnavailable(_) => 503,
        AccessError::UnreadableAudit { .. } => 500,
        AccessError::Repo(e) => renkei_repository::status_of(e.root())
            .0
            .split(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(500),
    }
}

impl Gate {
    pub fn new(repository: Repository, policy: Policy) -> Gate {
        let audit = AuditLog::start(repository.store().clone());
        Gate {
            repository,
            audit,
            policy,
        }
    }

    /// Waits until every AuditEvent recorded so far is in the searchable trail.
    pub fn flush_audit(&self) -> Result<(), AccessError> {
        self.audit
            .flush()
            .map_err(|e| AccessError::AuditUnavailable(e.0))
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn visibility(&self, who: &Requester) -> Visibility {
        who.visibility(&self.policy, now_ms())
    }

    /// The requester's visibility for a request about `patient`: a granted break-glass
    /// opens that patient's data (and only theirs).
    fn visibility_for(&self, who: &Requester, patient: Option<&str>) -> Visibility {
        who.visibility_for(&self.policy, now_ms(), patient)
    }

    /// The patient of the current record `res_type/id` (none for a missing record or one about
    /// no patient): the patient a break-glass read of it is about. Looked up only for
    /// break-glass requests.
    fn break_glass_patient_of(
        &self,
        who: &Requester,
        res_type: &str,
        id: &str,
    ) -> Result<Option<String>, AccessError> {
        if !who.principal.break_glass {
            return Ok(None);
        }
        Ok(self
            .repository
            .read_tx(|tx| Ok(tx.current(res_type, id)?.and_then(|row| row.patient_id)))?)
    }

    fn context(&self, who: &Requester) -> WriteContext {
        let mut context = who.write_context();
        context.visibility = self.visibility(who);
        context.linking = self.repository.linking().clone();
        context
    }

    fn event(&self, who: &Requester, interaction: Interaction) -> EventBuilder {
        let mut builder = EventBuilder::new(interaction, &who.request_id, now_ms());
        builder.agent = who.agent();
        builder
    }

    /// Records an event durably (reads, failures); 503 when the trail cannot be written.
    fn record(&self, builder: &EventBuilder, custodians: &[String]) -> Result<(), AccessError> {
        self.audit
            .record(to_row(builder, custodians))
            .map_err(|e| AccessError::AuditUnavailable(e.0))
    }

    /// Audits a finished read-type interaction and passes its result through; a successful
    /// read whose AuditEvent cannot be written fails with 503 instead.
    fn audited<T>(
        &self,
        builder: EventBuilder,
        result: Result<T, AccessError>,
        describe: impl FnOnce(&T, &mut EventBuilder) -> Vec<String>,
    ) -> Result<T, AccessError> {
        self.audited_with(builder, result, describe, Vec::new())
    }

    /// [`Gate::audited`] plus further events (consent decisions) committed together with it.
    fn audited_with<T>(
        &self,
        mut builder: EventBuilder,
        result: Result<T, AccessError>,
        describe: impl FnOnce(&T, &mut EventBuilder) -> Vec<String>,
        mut extra: Vec<NewAuditEvent>,
    ) -> Result<T, AccessError> {
        let custodians = match &result {
            Ok(value) => describe(value, &mut builder),
            Err(error) => {
                builder.outcome = AuditOutcome::from_status(status_of(error));
                builder.outcome_desc = Some(error.to_string());
                self.name_holders_of_target(&mut builder)
            }
        };
        extra.insert(0, to_row(&builder, &custodians));
        self.audit
            .record_all(extra)
            .map_err(|e| AccessError::AuditUnavailable(e.0))?;
        result
    }

    fn describe_resource(resource: &StoredResource, builder: &mut EventBuilder) -> Vec<String> {
        builder.resources.push(format!(
            "{}/{}/_history/{}",
            resource.res_type, resource.id, resource.version
        ));
        if let Some(patient) = patient_of(resource) {
            builder.patients.push(patient);
        }
        resource.custodian.iter().cloned().collect()
    }

    /// What decided that a facility requester may (or may not) see a row: break-glass for a
    /// granted break-glass request (naming the patient's refusal it overrode, if any), else the
    /// deciding Consent, or the implicit policy when none applies. `lookup` gives the deciding
    /// Consent and the overridden refusal.
    fn decider(
        &self,
        who: &Requester,
        granted: bool,
        lookup: impl FnOnce() -> Result<Deciders, RepoError>,
    ) -> Result<String, RepoError> {
        let found = lookup()?;
        // Break-glass decided only the rows of its own patient; others were consent's.
        if who.principal.break_glass && found.by_break_glass && granted {
            return Ok(match found.overridden_refusal {
                Some(refusal) => format!("{BREAK_GLASS} over the refusal in {refusal}"),
                None => BREAK_GLASS.to_string(),
            });
        }
        Ok(match found.consent {
            Some(consent) => consent,
            None => format!("implicit-policy:{:?}", self.policy.implicit).to_lowercase(),
        })
    }

    /// A BALP AuthZ-Consent event: the decision about `patient`'s data held by another
    /// facility, naming what decided.
    fn consent_event(
        &self,
        who: &Requester,
        patient: &str,
        resource: Option<String>,
        decider: String,
        granted: bool,
    ) -> EventBuilder {
        let mut builder = self.event(who, Interaction::ConsentDecision);
        builder.outcome = if granted {
            AuditOutcome::Success
        } else {
            AuditOutcome::MinorFailure
        };
        builder.outcome_desc = Some(match (&who.break_glass_reason, granted) {
            (Some(reason), true) if decider.starts_with(BREAK_GLASS) => {
                format!("permit by {decider}: {reason}")
            }
            (_, true) => format!("permit by {decider}"),
            (_, false) => format!("deny by {decider}"),
        });
        builder.patients.extend(patient_entity(Some(patient)));
        builder.resources.extend(resource);
        builder.decided_by = Some(decider);
        builder
    }

    /// BALP AuthZ-Consent for a single-resource read: the decision about another facility's
    /// patient data, looked up in the read's own transaction so that it is recorded with the
    /// read's AuditEvent (one durable append for both). `None` when no consent decided: the
    /// requester's own data, data about no patient, a resource that does not exist, or a
    /// requester that is not a facility.
    fn single_read_decision(
        &self,
        who: &Requester,
        tx: &mut Tx<'_>,
        (res_type, id): (&str, &str),
        result: &Result<StoredResource, RepoError>,
        visibility: &Visibility,
    ) -> Result<Option<NewAuditEvent>, RepoError> {
        let granted = match result {
            Ok(resource)
                if resource.custodian.as_deref() == Some(who.principal.facility.as_str()) =>
            {
                return Ok(None)
            }
            Ok(_) => true,
            Err(RepoError::NotFound { .. } | RepoError::Forbidden(_)) => false,
            Err(_) => return Ok(None),
        };
        if who.principal.role != renkei_consent::Role::Facility {
            return Ok(None);
        }
        // The current row (also for a vread), its patient and its deciding Consent: one
        // statement.
        let Some(decision) =
            tx.deciding_consent(DecidedRow::Current { res_type, id }, visibility)?
        else {
            return Ok(None);
        };
        self.foreign_data_decision(who, decision, (res_type, id), granted)
    }

    /// The AuthZ-Consent event for a decided row, when it is another facility's patient data.
    fn foreign_data_decision(
        &self,
        who: &Requester,
        decision: renkei_store::Decision,
        (res_type, id): (&str, &str),
        granted: bool,
    ) -> Result<Option<NewAuditEvent>, RepoError> {
        let foreign = decision.custodian.as_deref() != Some(who.principal.facility.as_str());
        let Some(patient) = decision.patient_id.filter(|_| foreign) else {
            return Ok(None);
        };
        // Data its holder has not released is refused by that tag, not by any Consent.
        let decider = match (decision.withheld, granted) {
            (true, false) => format!(
                "{}{}",
                renkei_audit::PRIVACY_TAG_DECIDER,
                renkei_store::WITHHELD_TAG
            ),
            _ => self.decider(who, granted, || {
                Ok(Deciders {
                    consent: decision.consent_ref,
                    overridden_refusal: decision.overridden_refusal,
                    by_break_glass: decision.by_break_glass,
                })
            })?,
        };
        let builder = self.consent_event(
            who,
            &patient,
            Some(format!("{res_type}/{id}")),
            decider,
            granted,
        );
        // The holder of the data sees the decision (and so refused attempts) in its view.
        let holder: Vec<String> = decision.custodian.into_iter().collect();
        Ok(Some(to_row(&builder, &holder)))
    }

    /// A Bundle entry that succeeded (or a read that was refused), described from the database
    /// like the plain interaction: the patient and holder of its target (`Type/id…`) for the
    /// entry's AuditEvent, and for a read of another facility's patient data the AuthZ-Consent
    /// event that permitted or refused it.
    fn bundle_entry_facts(
        &self,
        who: &Requester,
        tx: &mut Tx<'_>,
        (target, is_read, granted): (&str, bool, bool),
        visibility: &Visibility,
        event: &mut EventBuilder,
    ) -> Result<(Vec<String>, Option<NewAuditEvent>), RepoError> {
        let mut parts = target.trim_start_matches('/').split('/');
        let (Some(res_type), Some(id)) = (parts.next(), parts.next()) else {
            return Ok((Vec::new(), None));
        };
        let decision = match visibility {
            Visibility::Facility { .. } if is_read => {
                tx.deciding_consent(DecidedRow::Current { res_type, id }, visibility)?
            }
            _ => None,
        };
        // A refused read names its patient only where the patient may see the record, as a
        // plain read's event does: a refusal of data withheld from them by a privacy tag
        // would tell them that it exists (the AuthZ-Consent event records whose data it was).
        let patient_sees_it = granted
            || match tx.current(res_type, id)? {
                Some(row) => patient_may_see(tx, &row)?,
                None => false,
            };
        let mut name_patient = |patient: Option<&str>| {
            if let Some(patient) = patient_entity(patient).filter(|_| patient_sees_it) {
                if !event.patients.contains(&patient) {
                    event.patients.push(patient);
                }
            }
        };
        let Some(decision) = decision else {
            let current = tx.current(res_type, id)?;
            name_patient(current.as_ref().and_then(|r| r.patient_id.as_deref()));
            return Ok((
                current.and_then(|r| r.custodian).into_iter().collect(),
                None,
            ));
        };
        name_patient(decision.patient_id.as_deref());
        let custodians: Vec<String> = decision.custodian.iter().cloned().collect();
        let consent = self.foreign_data_decision(who, decision, (res_type, id), granted)?;
        Ok((custodians, consent))
    }

    /// BALP AuthZ-Consent for a search page: one event per patient whose data held by
    /// another facility the page returns, naming what permitted it (decided inside the SQL;
    /// this looks up which rule it was, once per patient, not per row).
    fn search_consent_decisions(
        &self,
        who: &Requester,
        tx: &mut Tx<'_>,
        page: &SearchPage,
        visibility: &Visibility,
    ) -> Result<Vec<NewAuditEvent>, RepoError> {
        if who.principal.role != renkei_consent::Role::Facility {
            return Ok(Vec::new());
        }
        let rows = page.matches.iter().chain(&page.included);
        foreign_rows_by_patient(who, rows, |row: &SearchRow| {
            (row.patient_id.as_deref(), row.custodian.as_ref())
        })
        .iter()
        .filter_map(|(patient, (rows, holders))| Some((patient, rows.first()?, holders)))
        .map(|(patient, row, holders)| {
            // The page's query names it for its matches; included rows take one
            // lookup per patient.
            let decider = self.decider(who, true, || match row.decided_by() {
                Some(consent) => Ok(Deciders {
                    consent: consent.map(str::to_string),
                    overridden_refusal: None,
                    by_break_glass: false,
                }),
                None => Ok(tx
                    .deciding_consent(DecidedRow::Rid(row.rid), visibility)?
                    .map(Deciders::from)
                    .unwrap_or_default()),
            })?;
            Ok(to_row(
                &self.consent_event(who, patient, None, decider, true),
                holders,
            ))
        })
        .collect()
    }

    /// BALP AuthZ-Consent for rows returned outside a search (history pages, `$match`
    /// candidates), as for a search page: one event per patient whose data held by another
    /// facility they include, naming what permitted it (one lookup per patient, decided on
    /// the record's current row as its read would be).
    fn current_row_decisions(
        &self,
        who: &Requester,
        tx: &mut Tx<'_>,
        rows: &[ReturnedRow<'_>],
        visibility: &Visibility,
    ) -> Result<Vec<NewAuditEvent>, RepoError> {
        if who.principal.role != renkei_consent::Role::Facility {
            return Ok(Vec::new());
        }
        foreign_rows_by_patient(who, rows.iter(), |row: &ReturnedRow<'_>| {
            (row.patient, row.custodian)
        })
        .iter()
        .filter_map(|(patient, (rows, holders))| Some((patient, rows, rows.first()?, holders)))
        .map(|(patient, rows, row, holders)| {
            let decider = self.decider(who, true, || {
                let current = DecidedRow::Current {
                    res_type: row.res_type,
                    id: row.id,
                };
                Ok(tx
                    .deciding_consent(current, visibility)?
                    .map(Deciders::from)
                    .unwrap_or_default())
            })?;
            let mut event = self.consent_event(who, patient, None, decider, true);
            // The records it disclosed (a history page's versions, one record each): a
            // patient's view of the trail judges the decision by them, as it judges the
            // request's own event.
            event.resources = rows
                .iter()
                .map(|row| format!("{}/{}", row.res_type, row.id))
                .collect();
            event.resources.sort();
            event.resources.dedup();
            Ok(to_row(&event, holders))
        })
        .collect()
    }

    /// Every break-glass request leaves an AuthZ-Consent event with its stated reason: this
    /// one, recorded with the request's own AuditEvent. `None` for any other request.
    /// `patient`: whose data it opened, so that the patient's "who viewed my record" shows it.
    /// `record`: the one record the request opened (a read, an instance history), named as
    /// the event's data like the decision of a plain read.
    fn break_glass_event(
        &self,
        who: &Requester,
        what: &str,
        patient: Option<&str>,
        record: Option<String>,
    ) -> Option<NewAuditEvent> {
        if !who.principal.break_glass {
            return None;
        }
        let mut builder = self.event(who, Interaction::ConsentDecision);
        builder.patients.extend(patient_entity(patient));
        builder.resources.extend(record);
        builder.decided_by = Some(BREAK_GLASS.into());
        builder.outcome_desc = Some(format!(
            "break-glass ({what}): {}",
            who.break_glass_reason.as_deref().unwrap_or_default()
        ));
        Some(to_row(&builder, &[]))
    }

    pub fn read(
        &self,
        who: &Requester,
        res_type: &str,
        id: &str,
    ) -> Result<StoredResource, AccessError> {
        let builder = self.event(who, Interaction::Read);
        // A Patient read also gathers the person's records at other facilities.
        let one_statement = res_type != "Patient";
        self.single_read(
            who,
            builder,
            (res_type, id, one_statement),
            format!("{res_type}/{id}"),
            |tx, visibility| {
                let resource = renkei_repository::read_visible(tx, res_type, id, visibility)?;
                if res_type == "Patient" {
                    // The records of the same person at other facilities, as far as
                    // consent lets this requester see them.
                    identity::with_links(tx, resource, visibility)
                } else {
                    Ok(resource)
                }
            },
        )
    }

    pub fn vread(
        &self,
        who: &Requester,
        res_type: &str,
        id: &str,
        version: &str,
    ) -> Result<StoredResource, AccessError> {
        let builder = self.event(who, Interaction::Vread);
        let target = format!("{res_type}/{id}/_history/{version}");
        // The current row decides consent, then the version is read: two statements.
        self.single_read(
            who,
            builder,
            (res_type, id, false),
            target,
            |tx, visibility| {
                renkei_repository::vread_visible(tx, res_type, id, version, visibility)
            },
        )
    }

    /// A single-resource read (read, vread): the read and the consent decision it involved in
    /// one transaction, then one durable append of its AuditEvent with the AuthZ-Consent and
    /// break-glass events. `target` names the resource in the event when the read fails.
    /// `one_statement`: whether `read` can be one statement (see [`Store::read_lone`]).
    ///
    /// [`Store::read_lone`]: renkei_store::Store::read_lone
    fn single_read(
        &self,
        who: &Requester,
        mut builder: EventBuilder,
        (res_type, id, one_statement): (&str, &str, bool),
        target: String,
        read: impl Fn(&mut Tx<'_>, &Visibility) -> Result<StoredResource, RepoError>,
    ) -> Result<StoredResource, AccessError> {
        let mut patient = None;
        let mut visibility = self.visibility(who);
        let outcome = who
            .require_clinical_access()
            .and_then(|()| who.require(res_type, Action::Read))
            .and_then(|()| {
                // A read is about the patient of the record it reads: break-glass opens
                // that patient's data and no one else's (a Patient read gathers only the
                // same person's records).
                patient = self.break_glass_patient_of(who, res_type, id)?;
                visibility = self.visibility_for(who, patient.as_deref());
                Ok(())
            })
            .and_then(|()| {
                let work = |tx: &mut Tx<'_>| {
                    let result = read(tx, &visibility);
                    let decision =
                        self.single_read_decision(who, tx, (res_type, id), &result, &visibility)?;
                    Ok((result, decision))
                };
                // A facility reading its own record, or a record about no patient, is one
                // statement; another facility's record is decided in a transaction (a patient's
                // app is always decided by the consent predicate).
                let lone = one_statement && matches!(visibility, Visibility::Facility { .. });
                Ok(self.repository.read_tx_maybe_lone(lone, work)?)
            });
        let (result, mut extra): (Result<StoredResource, AccessError>, Vec<NewAuditEvent>) =
            match outcome {
                Ok((result, decision)) => (
                    result.map_err(AccessError::from),
                    decision.into_iter().collect(),
                ),
                Err(error) => (Err(error), Vec::new()),
            };
        if result.is_ok() {
            extra.extend(self.break_glass_event(
                who,
                &format!("read {res_type}/{id}"),
                patient.as_deref(),
                Some(format!("{res_type}/{id}")),
            ));
        } else {
            builder.resources.push(target);
        }
        self.audited_with(builder, result, Self::describe_resource, extra)
    }

    /// Runs a write with its AuditEvent in the same transaction; failures are audited too.
    fn write<T>(
        &self,
        who: &Requester,
        interaction: Interaction,
        target: Option<String>,
        work: impl Fn(&mut Tx<'_>, &WriteContext) -> Result<T, RepoError>,
        describe: impl Fn(&T, &mut EventBuilder) -> Vec<String>,
    ) -> Result<T, AccessError> {
        self.write_with(
            who,
            interaction,
            target,
            |tx, context| Ok((work(tx, context)?, Vec::new())),
            describe,
        )
    }

    /// [`Gate::write`] whose work also yields further events (consent decisions), committed
    /// after the write's own AuditEvent in its transaction.
    fn write_with<T>(
        &self,
        who: &Requester,
        interaction: Interaction,
        target: Option<String>,
        work: impl Fn(&mut Tx<'_>, &WriteContext) -> Result<(T, Vec<NewAuditEvent>), RepoError>,
        describe: impl Fn(&T, &mut EventBuilder) -> Vec<String>,
    ) -> Result<T, AccessError> {
        let context = self.context(who);
        let builder = self.event(who, interaction);
        let result = who.require_writer().and_then(|()| {
            Ok(self.repository.write(|tx| {
                let (value, mut rows) = work(tx, &context)?;
                let mut event = builder.clone();
                event.recorded_ms = now_ms();
                let custodians = describe(&value, &mut event);
                rows.insert(0, to_row(&event, &custodians));
                // No audit, no data: a trail that cannot be written fails the write with 503.
                append(tx, &rows).map_err(|e| {
                    renkei_store::StoreError::Unavailable(format!("audit trail: {e}"))
                })?;
                Ok(value)
            })?)
        });
        if let Err(error) = &result {
            let mut failed = builder;
            failed.outcome = AuditOutcome::from_status(status_of(error));
            failed.outcome_desc = Some(error.to_string());
            if let Some(target) = target {
                failed.resources.push(target);
            }
            let custodians = self.name_holders_of_target(&mut failed);
            self.record(&failed, &custodians)?;
        }
        result
    }

    /// Checks a write's scope (and that it is not aimed at the append-only audit trail);
    /// a refusal is audited like any other failed write.
    fn require_audited(
        &self,
        who: &Requester,
        res_type: &str,
        action: Action,
        interaction: Interaction,
        target: &str,
    ) -> Result<(), AccessError> {
        let allowed = if res_type == "AuditEvent" {
            Err(AccessError::Forbidden(
                "the audit trail is append-only and written by the gateway itself".into(),
            ))
        } else {
            who.require(res_type, action)
        };
        if let Err(error) = allowed {
            let mut failed = self.event(who, interaction);
            failed.outcome = AuditOutcome::from_status(status_of(&error));
            failed.outcome_desc = Some(error.to_string());
            failed.resources.push(target.to_string());
            let custodians = self.name_holders_of_target(&mut failed);
            self.record(&failed, &custodians)?;
            return Err(error);
        }
        Ok(())
    }

    /// The criteria of a conditional create, update, patch or delete are a search: what
    /// matches them decides the answer (200 or 201, the existing resource returned, 412), so
    /// a token that may not search the type would learn what it holds through them. Refused
    /// (403) and audited as the interaction attempted, like any other scope refusal.
    fn require_criteria_search(
        &self,
        who: &Requester,
        res_type: &str,
        interaction: Interaction,
    ) -> Result<(), AccessError> {
        self.require_audited(who, res_type, Action::Search, interaction, res_type)
            .map_err(|error| match error {
                AccessError::Forbidden(message) => AccessError::Forbidden(format!(
                    "{message}: the criteria of a conditional interaction are a search"
                )),
                other => other,
            })
    }

    /// Every entry of a Bundle needs the scope its single request would need; AuditEvent is
    /// never written through a Bundle either.
    fn require_bundle_scopes(who: &Requester, bundle: &Value) -> Result<(), AccessError> {
        let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
            return Ok(());
        };
        entries
            .iter()
            .try_for_each(|entry| Self::require_entry_scope(who, entry))
    }

    /// A Bundle entry's request method and URL ("" where absent).
    fn entry_request(entry: &Value) -> (&str, &str) {
        let field = |name: &str| {
            entry
                .get("request")
                .and_then(|r| r.get(name))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        (field("method"), field("url"))
    }

    /// The path segments of a Bundle entry's URL, its query left out.
    fn entry_path(url: &str) -> impl Iterator<Item = &str> {
        url.split('?')
            .next()
            .unwrap_or("")
            .split('/')
            .filter(|p| !p.is_empty())
    }

    /// A Bundle entry that writes the audit trail answers 405 like the same request sent on its
    /// own, which is refused by its method before anyone's rights are looked at.
    fn refuse_audit_trail_write(entry: &Value) -> Result<(), AccessError> {
        let (method, url) = Self::entry_request(entry);
        let res_type = Self::entry_path(url).next().unwrap_or("");
        if res_type == "AuditEvent" && !matches!(method, "GET" | "HEAD") {
            return Err(AccessError::MethodNotAllowed(format!(
                "{method} is not allowed on AuditEvent: the audit trail is append-only and \
                 written by the gateway itself"
            )));
        }
        Ok(())
    }

    /// The token's scopes allow this Bundle entry's request (and it does not write the trail).
    fn require_entry_scope(who: &Requester, entry: &Value) -> Result<(), AccessError> {
        let (method, url) = Self::entry_request(entry);
        let mut parts = Self::entry_path(url);
        let res_type = parts.next().unwrap_or("");
        let has_id = parts.next().is_some();
        let res_type =
            if res_type.is_empty() || res_type.starts_with('$') || res_type.starts_with('_') {
                "*"
            } else {
                res_type
            };
        let action = match method {
            "GET" | "HEAD" if has_id => Action::Read,
            "GET" | "HEAD" => Action::Search,
            "POST" => Action::Create,
            "PUT" | "PATCH" => Action::Update,
            "DELETE" => Action::Delete,
            // Unknown methods are refused by the bundle processor itself.
            _ => return Ok(()),
        };
        Self::refuse_audit_trail_write(entry)?;
        who.require(res_type, action)?;
        // A conditional entry (`ifNoneExist`, criteria in a write's URL) searches the type,
        // as the same request sent on its own does.
        let conditional = entry
            .get("request")
            .and_then(|r| r.get("ifNoneExist"))
            .is_some()
            || (!matches!(method, "GET" | "HEAD") && url.contains('?'));
        if conditional {
            who.require(res_type, Action::Search).map_err(|error| {
                AccessError::Forbidden(format!(
                    "{error}: the criteria of a conditional interaction are a search"
                ))
            })?;
        }
        // A conditional reference in the entry's resource (`Patient?identifier=…`) searches
        // its type too: resolving it or not would otherwise answer that search.
        if let Some(resource) = entry.get("resource") {
            for searched in renkei_repository::conditional_reference_types(resource) {
                who.require(&searched, Action::Search).map_err(|error| {
                    AccessError::Forbidden(format!(
                        "{error}: a conditional reference ({searched}?…) is a search"
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// A delete names the deleted resource and its patient, like an update, so that it shows
    /// in the patient's and the holder's views of the trail.
    fn describe_delete(outcome: &DeleteOutcome, builder: &mut EventBuilder) -> Vec<String> {
        let DeleteOutcome::Deleted {
            target,
            patient_id,
            custodian,
            ..
        } = outcome
        else {
            return Vec::new();
        };
        builder.resources.push(target.clone());
        builder
            .patients
            .extend(patient_entity(patient_id.as_deref()));
        custodian.iter().cloned().collect()
    }

    fn describe_write(outcome: &WriteOutcome, builder: &mut EventBuilder) -> Vec<String> {
        let custodians = Self::describe_resource(&outcome.resource, builder);
        builder
            .patients
            .extend(patient_entity(outcome.previous_patient.as_deref()));
        custodians
    }

    /// For a failed or refused request about one record (`Type/id` among the event's
    /// resources, a version's too): names the record's patient in the event and gives its
    /// holder, so that the patient's "who viewed my record" and the holder's view of the trail
    /// show attempts too, not only what succeeded. Nothing for a record that does not exist;
    /// the requester, who may not see the record, is not shown the event.
    fn name_holders_of_target(&self, failed: &mut EventBuilder) -> Vec<String> {
        let targets: Vec<(String, String)> = failed
            .resources
            .iter()
            .filter_map(|resource| record_named(resource))
            .map(|(res_type, id)| (res_type.to_string(), id.to_string()))
            .take(MAX_FAILED_TARGETS_NAMED)
            .collect();
        if targets.is_empty() {
            return Vec::new();
        }
        // Only where the patient may see the record: an attempt on data withheld from them
        // (`UNDELIVERED`, `UNINFORMED`) would tell them it exists. One transaction for all.
        let found = self
            .repository
            .read_tx(|tx| {
                let mut found = Vec::new();
                for (res_type, id) in &targets {
                    if let Some(row) = tx.current(res_type, id)? {
                        let patient_sees_it = patient_may_see(tx, &row)?;
                        found.push((row, patient_sees_it));
                    }
                }
                Ok(found)
            })
            .unwrap_or_default();
        let mut custodians = Vec::new();
        for (row, patient_sees_it) in found {
            if let Some(patient) =
                patient_entity(row.patient_id.as_deref()).filter(|_| patient_sees_it)
            {
                if !failed.patients.contains(&patient) {
                    failed.patients.push(patient);
                }
            }
            if let Some(custodian) = row.custodian {
                if !custodians.contains(&custodian) {
                    custodians.push(custodian);
                }
            }
        }
        custodians
    }

    pub fn create(
        &self,
        who: &Requester,
        res_type: &str,
        resource: Value,
        if_none_exist: Option<Criteria>,
    ) -> Result<WriteOutcome, AccessError> {
        self.require_audited(who, res_type, Action::Create, Interaction::Create, res_type)?;
        if if_none_exist.is_some() {
            self.require_criteria_search(who, res_type, Interaction::Create)?;
        }
        let visibility = self.visibility(who);
        let criteria = if_none_exist.map(|c| c.visible_to(visibility));
        // Index rows extracted here run beside other writes, not in the writer section.
        let resource = PreparedResource::new(resource);
        self.write_with(
            who,
            Interaction::Create,
            Some(res_type.to_string()),
            |tx, context| {
                let outcome = renkei_repository::create(
                    tx,
                    res_type,
                    resource.clone(),
                    criteria.as_ref(),
                    context,
                )?;
                // A match of If-None-Exist is returned to the client: another facility's
                // record so disclosed leaves the AuthZ-Consent decision a read of it leaves.
                let decision = match outcome.existing {
                    true => {
                        let found = Ok(outcome.resource.clone());
                        let target = (
                            outcome.resource.res_type.as_str(),
                            outcome.resource.id.as_str(),
                        );
                        self.single_read_decision(who, tx, target, &found, &context.visibility)?
                    }
                    false => None,
                };
                Ok((outcome, decision.into_iter().collect()))
            },
            Self::describe_write,
        )
    }

    pub fn update(
        &self,
        who: &Requester,
        res_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<renkei_repository::IfMatch>,
    ) -> Result<WriteOutcome, AccessError> {
        self.require_audited(
            who,
            res_type,
            Action::Update,
            Interaction::Update,
            &format!("{res_type}/{id}"),
        )?;
        let resource = PreparedResource::new(resource);
        self.write(
            who,
            Interaction::Update,
            Some(format!("{res_type}/{id}")),
            |tx, context| {
                renkei_repository::update(tx, res_type, id, resource.clone(), if_match, context)
            },
            Self::describe_write,
        )
    }

    pub fn conditional_update(
        &self,
        who: &Requester,
        criteria: Criteria,
        resource: Value,
        if_match: Option<renkei_repository::IfMatch>,
    ) -> Result<WriteOutcome, AccessError> {
        self.require_audited(
            who,
            &criteria.res_type,
            Action::Update,
            Interaction::Update,
            &criteria.res_type,
        )?;
        self.require_criteria_search(who, &criteria.res_type, Interaction::Update)?;
        let criteria = criteria.visible_to(self.visibility(who));
        let resource = PreparedResource::new(resource);
        self.write(
            who,
            Interaction::Update,
            Some(criteria.res_type.clone()),
            |tx, context| {
                renkei_repository::conditional_update(
                    tx,
                    &criteria,
                    resource.clone(),
                    if_match,
                    context,
                )
            },
            Self::describe_write,
        )
    }

    /// PATCH by id, or by criteria when `id` is `None`.
    pub fn patch(
        &self,
        who: &Requester,
        res_type: &str,
        id: Option<&str>,
        criteria: Option<Criteria>,
        body: &PatchBody,
        if_match: Option<renkei_repository::IfMatch>,
    ) -> Result<WriteOutcome, AccessError> {
        self.require_audited(
            who,
            res_type,
            Action::Update,
            Interaction::Patch,
            &format!("{res_type}/{}", id.unwrap_or("?")),
        )?;
        if criteria.is_some() {
            self.require_criteria_search(who, res_type, Interaction::Patch)?;
        }
        let criteria = criteria.map(|c| c.visible_to(self.visibility(who)));
        self.write(
            who,
            Interaction::Patch,
            Some(format!("{res_type}/{}", id.unwrap_or("?"))),
            |tx, context| {
                let id = match (id, &criteria) {
                    (Some(id), _) => id.to_string(),
                    (None, Some(criteria)) => {
                        renkei_repository::resolve_single(tx, criteria, context)?
                    }
                    (None, None) => {
                        return Err(RepoError::BadRequest(
                            "PATCH needs an id or criteria".into(),
                        ))
                    }
                };
                renkei_repository::patch(tx, res_type, &id, body, if_match, context)
            },
            Self::describe_write,
        )
    }

    pub fn delete(
        &self,
        who: &Requester,
        res_type: &str,
        id: &str,
        if_match: Option<renkei_repository::IfMatch>,
    ) -> Result<DeleteOutcome, AccessError> {
        self.require_audited(
            who,
            res_type,
            Action::Delete,
            Interaction::Delete,
            &format!("{res_type}/{id}"),
        )?;
        let target = format!("{res_type}/{id}");
        self.write(
            who,
            Interaction::Delete,
            Some(target.clone()),
            |tx, context| renkei_repository::delete(tx, res_type, id, if_match, context),
            |outcome, builder| {
                // A delete of nothing still names what was asked for.
                if matches!(outcome, DeleteOutcome::NothingToDelete) {
                    builder.resources.push(target.clone());
                }
                Self::describe_delete(outcome, builder)
            },
        )
    }

    pub fn conditional_delete(
        &self,
        who: &Requester,
        criteria: Criteria,
        if_match: Option<renkei_repository::IfMatch>,
    ) -> Result<DeleteOutcome, AccessError> {
        self.require_audited(
            who,
            &criteria.res_type,
            Action::Delete,
            Interaction::Delete,
            &criteria.res_type,
        )?;
        self.require_criteria_search(who, &criteria.res_type, Interaction::Delete)?;
        let criteria = criteria.visible_to(self.visibility(who));
        // What it asked for (`Observation?identifier=…`), named when it deleted nothing, as a
        // Bundle entry's conditional delete is.
        let asked = criteria.url();
        self.write(
            who,
            Interaction::Delete,
            Some(criteria.res_type.clone()),
            |tx, context| renkei_repository::conditional_delete(tx, &criteria, if_match, context),
            |outcome, builder| {
                let custodians = Self::describe_delete(outcome, builder);
                if builder.resources.is_empty() {
                    builder.resources.push(asked.clone());
                }
                custodians
            },
        )
    }

    pub fn history(
        &self,
        who: &Requester,
        mut request: HistoryRequest,
        res_type: Option<&str>,
    ) -> Result<HistoryPage, AccessError> {
        let mut builder = self.event(who, Interaction::History);
        let mut visibility = self.visibility(who);
        let instance = match &request.scope {
            renkei_store::HistoryScope::Instance { res_type, res_id } => {
                Some((res_type.clone(), res_id.clone()))
            }
            _ => None,
        };
        let mut patient = None;
        let result = who
            .require_clinical_access()
            .and_then(|()| match res_type {
                Some(t) => who.require(t, Action::Read),
                None => who.require("*", Action::Search),
            })
            .and_then(|()| {
                // Break-glass opens one patient's record: an instance's history is about its
                // record's patient; a type's or the system's history about everyone.
                if !who.principal.break_glass {
                    return Ok(());
                }
                let Some((t, id)) = &instance else {
                    return Err(AccessError::Forbidden(BREAK_GLASS_NEEDS_ONE_PATIENT.into()));
                };
                patient = self.break_glass_patient_of(who, t, id)?;
                visibility = self.visibility_for(who, patient.as_deref());
                Ok(())
            })
            .and_then(|()| {
                request.visibility = visibility.clone();
                // The page and the consent decisions that disclosed its rows: one snapshot.
                Ok(self.repository.read_tx(|tx| {
                    let page = renkei_repository::history_in(tx, &request)?;
                    let rows: Vec<ReturnedRow<'_>> = page
                        .rows
                        .iter()
                        .map(|row| ReturnedRow {
                            res_type: &row.res_type,
                            id: &row.res_id,
                            patient: row.patient_id.as_deref(),
                            custodian: row.custodian.as_ref(),
                        })
                        .collect();
                    let decisions = self.current_row_decisions(who, tx, &rows, &visibility)?;
                    Ok((page, decisions))
                })?)
            });
        let (result, decisions) = match result {
            Ok((page, decisions)) => (Ok(page), decisions),
            Err(error) => (Err(error), Vec::new()),
        };
        // A refused instance history is recorded like a refused read: its target, and the
        // AuthZ-Consent decision (which the data's holder sees).
        let mut extra = decisions;
        if result.is_ok() {
            extra.extend(self.break_glass_event(
                who,
                &history_target(&request.scope),
                patient.as_deref(),
                instance.as_ref().map(|(t, id)| format!("{t}/{id}")),
            ));
        }
        if let (Err(_), Some((t, id))) = (&result, &instance) {
            builder.resources.push(format!("{t}/{id}"));
            let refused: Result<StoredResource, RepoError> = Err(RepoError::NotFound {
                res_type: t.clone(),
                id: id.clone(),
            });
            let decision = self
                .repository
                .read_tx(|tx| self.single_read_decision(who, tx, (t, id), &refused, &visibility));
            extra.extend(decision.ok().flatten());
        }
        self.audited_with(
            builder,
            result,
            |page, builder| {
                let mut custodians = Vec::new();
                for row in &page.rows {
                    builder.resources.push(format!(
                        "{}/{}/_history/{}",
                        row.res_type, row.res_id, row.version
                    ));
                    custodians.extend(row.custodian.clone());
                    if let Some(patient) = patient_entity(row.patient_id.as_deref()) {
                        if !builder.patients.contains(&patient) {
                            builder.patients.push(patient);
                        }
                    }
                }
                custodians.sort();
                custodians.dedup();
                custodians
            },
            extra,
        )
    }

    /// A search (type, system or compartment), consent inside the SQL.
    pub fn search(
        &self,
        who: &Requester,
        plan: &SearchPlan,
        raw_query: &str,
    ) -> Result<SearchPage, AccessError> {
        let mut builder = self.event(who, Interaction::Search);
        builder.query = Some(raw_query.to_string());
        // Break-glass opens the one patient the search names; a search naming none (or
        // several) would open every patient's data, so it is refused.
        let patient = break_glass_patient(plan);
        let break_glass_refused = who.principal.break_glass && patient.is_none();
        let visibility = self.visibility_for(who, patient.as_deref());
        // `_include`/`_revinclude` bring in only the types the token may read, in the query
        // itself, so that their caps count (and their warnings tell of) only rows shown.
        let narrowed;
        let plan = match who.readable_types() {
            Some(types) if !plan.includes.is_empty() || !plan.revincludes.is_empty() => {
                let mut narrowing = plan.clone();
                // Within what the search itself limits includes to (`$everything?_type=`).
                narrowing.included_types = Some(match &plan.included_types {
                    Some(asked) => types.into_iter().filter(|t| asked.contains(t)).collect(),
                    None => types,
                });
                narrowed = narrowing;
                &narrowed
            }
            _ => plan,
        };
        let owner = compartment_owner(plan);
        // The compartment's owner, the page and the consents that permitted it are read in
        // one transaction: one snapshot, one connection.
        // A search of the whole system without `_type` (no types listed) may return any type.
        let every_type = ["*".to_string()];
        let types = match plan.types.is_empty() {
            true => &every_type[..],
            false => &plan.types[..],
        };
        let searched = who
            .require_clinical_access()
            .and_then(|()| {
                types
                    .iter()
                    .chain(&searched_through(plan))
                    .try_for_each(|t| who.require(t, Action::Search))
            })
            .and_then(|()| match break_glass_refused {
                true => Err(AccessError::Forbidden(BREAK_GLASS_NEEDS_ONE_PATIENT.into())),
                false => Ok(()),
            })
            .and_then(|()| owner.map_or(Ok(()), |(t, _)| who.require(t, Action::Read)))
            .and_then(|()| {
                let work = |tx: &mut Tx<'_>| {
                    let mut unlinked = None;
                    if let Some(owner) = owner {
                        // The owner must exist and be visible: a compartment search answers
                        // 404, 410 or 403 exactly as reading the owner would.
                        let found =
                            renkei_repository::read_visible(tx, owner.0, owner.1, &visibility);
                        // A facility holding records of the patient searches its own data
                        // in the compartment (the same rows as `?patient=`), even where the
                        // Patient record itself needs a consent it lacks. Hidden or missing
                        // alike: anyone can write a record about any id, so answering them
                        // differently would tell whether a patient exists.
                        let own_records = matches!(
                            &found,
                            Err(RepoError::Forbidden(_) | RepoError::NotFound { .. })
                        ) && owner.0 == "Patient"
                            && match &visibility {
                                Visibility::Facility { organization, .. } => {
                                    tx.holds_record_of(organization, owner.1)?
                                }
                                _ => false,
                            };
                        if found.is_err() && !own_records {
                            let decision =
                                self.single_read_decision(who, tx, owner, &found, &visibility)?;
                            return Ok((
                                found.map(|_| SearchPage::default()),
                                decision.into_iter().collect(),
                            ));
                        }
                        // Its own records of a patient it may not see are all a facility
                        // gets: the person's other records are found through the links of
                        // that Patient record, which are as hidden from it as the record.
                        if own_records {
                            unlinked = without_linked_records(plan);
                        }
                    }
                    let plan = unlinked.as_ref().unwrap_or(plan);
                    let mut page = renkei_repository::search_in(tx, plan, &visibility)?;
                    // The query kept to the types the token may read; this re-checks each
                    // row against the scopes themselves.
                    page.included
                        .retain(|row| who.require(&row.res_type, Action::Read).is_ok());
                    let decisions = self.search_consent_decisions(who, tx, &page, &visibility)?;
                    Ok((Ok(page), decisions))
                };
                // Most searches about a patient are their page statement alone.
                let lone = owner.is_none() && renkei_store::search_may_be_one_statement(plan);
                Ok(self.repository.read_tx_maybe_lone(lone, work)?)
            });
        let (result, mut decisions) = match searched {
            Ok((page, decisions)) => (page.map_err(AccessError::from), decisions),
            Err(e) => (Err(e), Vec::new()),
        };
        if result.is_ok() {
            decisions.extend(self.break_glass_event(
                who,
                &format!("search {raw_query}"),
                patient.as_deref(),
                None,
            ));
        } else if let Some((owner_type, owner_id)) = owner {
            builder.resources.push(format!("{owner_type}/{owner_id}"));
        }
        self.audited_with(
            builder,
            result,
            |page, builder| {
                // Every patient whose data the page shows (not only Patient rows), so the
                // patient's "who viewed my record" includes searches over their data.
                let rows = || page.matches.iter().chain(&page.included);
                builder.patients =
                    distinct(rows().filter_map(|row| patient_entity(row.patient_id.as_deref())));
                // The facilities whose data the page shows see the search in their audit view.
                distinct(rows().filter_map(|row| row.custodian.clone()))
            },
            decisions,
        )
    }

    /// A batch or transaction Bundle: the whole Bundle runs with the requester's visibility
    /// and custodian; one AuditEvent records it with the resources it touched.
    pub fn bundle(
        &self,
        who: &Requester,
        bundle: &Value,
        return_resources: bool,
    ) -> Result<Value, AccessError> {
        let is_transaction = bundle.get("type").and_then(Value::as_str) == Some("transaction");
        let interaction = if is_transaction {
            Interaction::Transaction
        } else {
            Interaction::Batch
        };
        let builder = self.event(who, interaction);
        // Break-glass opens the one patient the Bundle's reads are about; reads about several
        // patients would open them all, so the Bundle is refused.
        let (patient, break_glass_refusal) = match self.bundle_patient(who, bundle) {
            Ok(patient) => (patient, None),
            Err(error) => (None, Some(error)),
        };
        let mut context = self.context(who);
        context.visibility = self.visibility_for(who, patient.as_deref());
        let all_requests: Vec<Value> = bundle
            .get("entry")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // A batch's entries are independent: one outside the token's scopes is refused on
        // its own (403 in its response entry) and the others run. A transaction is all or
        // nothing, so any such entry refuses the whole Bundle.
        let (runnable, refused) = if is_transaction {
            (std::borrow::Cow::Borrowed(bundle), Vec::new())
        } else {
            let mut kept = Vec::new();
            let mut refused = Vec::new();
            for (index, entry) in all_requests.iter().enumerate() {
                let allowed = Self::refuse_audit_trail_write(entry).and_then(|()| {
                    if is_write_entry(entry) {
                        who.require_writer()
                    } else {
                        Ok(())
                    }
                });
                match allowed.and_then(|()| Self::require_entry_scope(who, entry)) {
                    Ok(()) => kept.push(entry.clone()),
                    Err(error) => refused.push((index, error)),
                }
            }
            let mut runnable = bundle.clone();
            runnable["entry"] = Value::Array(kept);
            (std::borrow::Cow::Owned(runnable), refused)
        };
        let requests: Vec<Value> = runnable
            .get("entry")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // What the Bundle changed is audited in the transaction that commits it: every
        // committed entry, and for a transaction the Bundle itself.
        let on_commit = |tx: &mut Tx<'_>, first: usize, responses: &[Value]| {
            let mut rows = self.entry_rows(
                who,
                Some((tx, &context.visibility)),
                requests.get(first..).unwrap_or_default(),
                responses,
            )?;
            if is_transaction {
                let mut event = builder.clone();
                event.recorded_ms = now_ms();
                event.resources = locations(responses);
                rows.push(to_row(&event, &[]));
            }
            append(tx, &rows).map_err(|e| {
                RepoError::Store(renkei_store::StoreError::Unavailable(format!(
                    "audit trail: {e}"
                )))
            })
        };
        // A Bundle that only reads needs no writer (a patient app may batch its reads); in a
        // batch, the writes of a client that may not write were refused one by one above.
        let writes = requests.iter().any(is_write_entry);
        let result = who
            .require_clinical_access()
            .and_then(|()| break_glass_refusal.map_or(Ok(()), Err))
            .and_then(|()| if writes { who.require_writer() } else { Ok(()) })
            .and_then(|()| Self::require_bundle_scopes(who, &runnable))
            .and_then(|()| {
                let mut response = self.repository.process_bundle(
                    &runnable,
                    &context,
                    return_resources,
                    &on_commit,
                )?;
                if !refused.is_empty() {
                    // With every entry refused, the response has no `entry` list of its own
                    // (FHIR JSON leaves empty lists out).
                    if !response.get("entry").is_some_and(Value::is_array) {
                        response["entry"] = Value::Array(Vec::new());
                    }
                    if let Some(entries) = response.get_mut("entry").and_then(Value::as_array_mut) {
                        for (index, error) in &refused {
                            let at = (*index).min(entries.len());
                            entries.insert(at, refused_entry(error));
                        }
                    }
                }
                Ok(response)
            });
        // A Bundle that read data under break-glass leaves its break-glass event like a plain
        // read: a transaction that committed with a read entry, a batch with a read entry that
        // answered with data.
        let read_under_break_glass = |read: bool| match read {
            true if is_transaction => {
                self.break_glass_event(who, "transaction", patient.as_deref(), None)
            }
            true => self.break_glass_event(who, "batch", patient.as_deref(), None),
            false => None,
        };
        match &result {
            Ok(_) if is_transaction => {
                let read = requests.iter().any(|entry| !is_write_entry(entry));
                if let Some(event) = read_under_break_glass(read) {
                    self.audit
                        .record_all(vec![event])
                        .map_err(|e| AccessError::AuditUnavailable(e.0))?;
                }
            }
            Ok(response) => {
                // A batch: the Bundle's own event, and the entries that failed (their
                // transactions rolled back, or they were refused, so they are recorded here,
                // durably).
                let responses: Vec<Value> = response
                    .get("entry")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut event = builder;
                event.resources = locations(&responses);
                let mut rows = vec![to_row(&event, &[])];
                let read = all_requests
                    .iter()
                    .zip(&responses)
                    .any(|(request, answer)| {
                        !is_write_entry(request) && entry_status(answer) < 400
                    });
                rows.extend(read_under_break_glass(read));
                let failed: Vec<(Value, Value)> = all_requests
                    .iter()
                    .zip(&responses)
                    .filter(|(_, answer)| entry_status(answer) >= 400)
                    .map(|(request, answer)| (request.clone(), answer.clone()))
                    .collect();
                let (failed_requests, failed_responses): (Vec<Value>, Vec<Value>) =
                    failed.into_iter().unzip();
                // Refused reads are described like refused plain reads (patient, holder, the
                // AuthZ-Consent decision), looked up after the fact; without a transaction
                // nothing is looked up, so the fallback cannot fail.
                let described = self.repository.read_tx(|tx| {
                    self.entry_rows(
                        who,
                        Some((tx, &context.visibility)),
                        &failed_requests,
                        &failed_responses,
                    )
                });
                rows.extend(described.unwrap_or_else(|_| {
                    self.entry_rows(who, None, &failed_requests, &failed_responses)
                        .unwrap_or_default()
                }));
                if let Err(unavailable) = self.audit.record_all_now(rows) {
                    let committed_writes =
                        all_requests
                            .iter()
                            .zip(&responses)
                            .any(|(request, answer)| {
                                is_write_entry(request) && entry_status(answer) < 400
                            });
                    if !committed_writes {
                        return Err(AccessError::AuditUnavailable(unavailable.0));
                    }
                    // Writes committed with their own events: a 503 for the whole batch would
                    // tell the client to send them again. Each write keeps its answer; what
                    // read data cannot be returned without its record, and each failure that
                    // could not be recorded, answers 503 in its entry.
                    tracing::error!(error = %unavailable.0, "batch audit failed after its writes committed");
                    let entries: Vec<Value> = all_requests
                        .iter()
                        .zip(responses)
                        .map(|(request, answer)| match is_write_entry(request) {
                            true if entry_status(&answer) < 400 => answer,
                            _ => unavailable_entry(),
                        })
                        .collect();
                    let mut degraded = response.clone();
                    degraded["entry"] = Value::Array(entries);
                    return Ok(degraded);
                }
            }
            Err(error) => self.record_bundle_failure(builder, error, &all_requests)?,
        }
        result
    }

    /// The one patient a break-glass Bundle's reads by id are about (none when they are about
    /// no patient); 403 when they are about several. `None` without break-glass.
    fn bundle_patient(
        &self,
        who: &Requester,
        bundle: &Value,
    ) -> Result<Option<String>, AccessError> {
        self.break_glass_bundle_patient(who, bundle, &[])
    }

    /// [`Gate::bundle_patient`] counting also the patients a batch's searches name (the HTTP
    /// layer runs those searches one by one, each opening its own patient under
    /// break-glass): several patients in all → 403.
    fn break_glass_bundle_patient(
        &self,
        who: &Requester,
        bundle: &Value,
        searches: &[&SearchPlan],
    ) -> Result<Option<String>, AccessError> {
        if !who.principal.break_glass {
            return Ok(None);
        }
        let targets = bundle_read_targets(bundle);
        let patients = self.repository.read_tx(|tx| {
            let mut patients = Vec::new();
            for (res_type, id) in &targets {
                patients.extend(tx.current(res_type, id)?.and_then(|row| row.patient_id));
            }
            patients.extend(searches.iter().filter_map(|plan| break_glass_patient(plan)));
            Ok(distinct(patients.into_iter()))
        })?;
        match patients.as_slice() {
            [] => Ok(None),
            [patient] => Ok(Some(patient.clone())),
            _ => Err(AccessError::Forbidden(BREAK_GLASS_NEEDS_ONE_PATIENT.into())),
        }
    }

    /// Refuses (403, audited as the failed batch) a break-glass batch whose reads by id and
    /// searches together name several patients: break-glass opens one patient's data.
    pub fn check_break_glass_batch(
        &self,
        who: &Requester,
        bundle: &Value,
        searches: &[&SearchPlan],
    ) -> Result<(), AccessError> {
        match self.break_glass_bundle_patient(who, bundle, searches) {
            Ok(_) => Ok(()),
            Err(error) => {
                let entries = bundle
                    .get("entry")
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice);
                self.record_bundle_failure(self.event(who, Interaction::Batch), &error, entries)?;
                Err(error)
            }
        }
    }

    fn record_bundle_failure(
        &self,
        mut failed: EventBuilder,
        error: &AccessError,
        requests: &[Value],
    ) -> Result<(), AccessError> {
        failed.outcome = AuditOutcome::from_status(status_of(error));
        failed.outcome_desc = Some(error.to_string());
        // What its entries addressed by id, so that a Bundle refused as a whole (no entry
        // leaves an event of its own) is found by the records it tried to touch.
        failed.resources = requests
            .iter()
            .filter_map(|entry| record_named(Self::entry_request(entry).1.trim_start_matches('/')))
            .map(|(res_type, id)| format!("{res_type}/{id}"))
            .collect();
        failed.resources.dedup();
        let custodians = self.name_holders_of_target(&mut failed);
        self.record(&failed, &custodians)
    }

    /// A batch refused as a whole before any of its entries ran (`check_entries`): recorded
    /// as the failed batch it is; the error to answer (503 when it cannot be recorded).
    pub fn refuse_batch(&self, who: &Requester, error: RepoError) -> AccessError {
        let error = AccessError::Repo(error);
        match self.record_bundle_failure(self.event(who, Interaction::Batch), &error, &[]) {
            Ok(()) => error,
            Err(unavailable) => unavailable,
        }
    }

    /// The AuditEvents of a Bundle's entries, each with its own interaction and outcome. Given
    /// a transaction, successful entries and refused reads are described from the database
    /// like the plain interactions (patient, holder; AuthZ-Consent for reads).
    fn entry_rows(
        &self,
        who: &Requester,
        mut committing: Option<(&mut Tx<'_>, &Visibility)>,
        requests: &[Value],
        responses: &[Value],
    ) -> Result<Vec<NewAuditEvent>, RepoError> {
        let mut rows = Vec::new();
        for (request, answer) in requests.iter().zip(responses) {
            let method = request
                .pointer("/request/method")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let url = request
                .pointer("/request/url")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut event = self.event(who, interaction_of(method, url));
            event.outcome = AuditOutcome::from_status(entry_status(answer));
            // A failed entry says why, as the same request on its own does.
            if entry_status(answer) >= 400 {
                event.outcome_desc = answer
                    .pointer("/response/outcome/issue/0/diagnostics")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            let target = answer
                .pointer("/response/location")
                .and_then(Value::as_str)
                .unwrap_or(url);
            if url.contains('?') && method == "GET" {
                event.query = Some(url.to_string());
            } else {
                event.resources.push(target.to_string());
            }
            if let Some(patient) = request
                .get("resource")
                .and_then(|r| {
                    ["subject", "patient"]
                        .iter()
                        .find_map(|k| r.get(*k)?.get("reference")?.as_str())
                })
                .filter(|r| r.starts_with("Patient/"))
            {
                event.patients.push(patient.to_string());
            }
            let is_read = method == "GET" && !url.contains('?');
            let status = entry_status(answer);
            let granted = status < 400;
            let refused_read = is_read && matches!(status, 403 | 404);
            let mut custodians = Vec::new();
            if let (true, Some((tx, visibility))) = (granted || refused_read, committing.as_mut()) {
                let (held_by, consent) = self.bundle_entry_facts(
                    who,
                    tx,
                    (target, is_read, granted),
                    visibility,
                    &mut event,
                )?;
                custodians = held_by;
                rows.extend(consent);
            }
            rows.push(to_row(&event, &custodians));
        }
        Ok(rows)
    }

    /// One AuditEvent by id, under the same role rules as search (404 when hidden).
    pub fn audit_event(
        &self,
        who: &Requester,
        id: &str,
        mut query: AuditQuery,
    ) -> Result<Vec<TrailEvent>, AccessError> {
        query.event_id = Some(id.to_string());
        query.count_total = false;
        // A read of one event is recorded as the read it is, naming the event; an id the
        // requester's view does not hold is its 404.
        let mut builder = self.event(who, Interaction::Read);
        builder.resources.push(format!("AuditEvent/{id}"));
        let result = self.read_trail(who, query).and_then(|page| {
            if page.events.is_empty() {
                return Err(AccessError::Repo(RepoError::NotFound {
                    res_type: "AuditEvent".into(),
                    id: id.to_string(),
                }));
            }
            Ok(page.events)
        });
        self.audited(builder, result, |_, _| Vec::new())
    }

    /// Records a request that failed before reaching the data (no or bad token, malformed
    /// body, unknown type, bad parameters): denied and failed attempts are audited too.
    #[allow(clippy::too_many_arguments)]
    pub fn audit_failure(
        &self,
        who: Option<&Requester>,
        request_id: &str,
        network_address: Option<String>,
        method: &str,
        target: &str,
        status: u16,
        message: &str,
    ) -> Result<(), AccessError> {
        let interaction = interaction_of(method, target);
        let searched = interaction == Interaction::Search;
        let mut builder = EventBuilder::new(interaction, request_id, now_ms());
        match who {
            Some(who) => builder.agent = who.agent(),
            None => builder.agent.network_address = network_address,
        }
        builder.outcome = AuditOutcome::from_status(status);
        builder.outcome_desc = Some(format!("{status}: {message}"));
        let path = target.split('?').next().unwrap_or(target);
        if searched {
            builder.query = Some(target.to_string());
        } else if !path.is_empty() {
            builder.resources.push(path.to_string());
        }
        self.record(&builder, &[])
    }

    /// A request at the token endpoint, granted or refused, recorded durably before it is
    /// answered (ATNA User Authentication / Login); 503 when the trail cannot be written.
    pub fn audit_login(&self, attempt: LoginAttempt) -> Result<(), AccessError> {
        let mut builder = EventBuilder::new(Interaction::Login, &attempt.request_id, now_ms());
        builder.agent.client_id = attempt.client_id;
        builder.agent.organization = attempt.organization;
        builder.agent.network_address = attempt.network_address;
        builder.outcome = AuditOutcome::from_status(attempt.status);
        builder.outcome_desc = attempt
            .refusal
            .map(|reason| format!("{}: {reason}", attempt.status));
        self.record(&builder, &[])
    }

    /// AuditEvent search: auditors see every event, patients the accesses to their own
    /// record, facilities the accesses to data they hold.
    /// `raw_query` is the search as asked (`AuditEvent?…`): only auditors see the events of
    /// trail searches, and they need to see whose trail was searched.
    pub fn audit_events(
        &self,
        who: &Requester,
        query: AuditQuery,
        raw_query: &str,
    ) -> Result<TrailPage, AccessError> {
        let mut builder = self.event(who, Interaction::Search);
        builder.query = Some(raw_query.to_string());
        let result = self.read_trail(who, query);
        self.audited(builder, result, |_, _| Vec::new())
    }

    /// The requester's view of the trail (search, or read when `query.event_id` is set),
    /// not itself audited: its callers record it as the interaction it was.
    fn read_trail(&self, who: &Requester, mut query: AuditQuery) -> Result<TrailPage, AccessError> {
        use renkei_consent::Role;
        // The trail is a resource type like any other for the token's scopes.
        let action = if query.event_id.is_some() {
            Action::Read
        } else {
            Action::Search
        };
        who.require("AuditEvent", action)?;
        // Patients and facilities see events about their data, but only what they may see of it.
        let mut redacted_view = None;
        // Their views leave the requesting client's id out; `agent` does not find it either.
        query.agent_without_client = !matches!(who.principal.role, Role::Auditor | Role::Admin);
        match who.principal.role {
            Role::Auditor | Role::Admin => {}
            Role::Patient => {
                redacted_view = Some(self.visibility(who));
                let patient =
                    who.principal.patient.clone().ok_or_else(|| {
                        AccessError::Forbidden("the token names no patient".into())
                    })?;
                let id = patient.strip_prefix("Patient/").unwrap_or(&patient);
                // Their own record and every record linked to it as the same person: the
                // accesses to data another facility filed under its record of them are
                // accesses to their data too.
                let mut members: Vec<String> = self
                    .repository
                    .read_tx(|tx| Ok::<_, RepoError>(tx.person_members(id)?))
                    .map_err(AccessError::from)?;
                if members.is_empty() {
                    members.push(id.to_string());
                }
                let own: Vec<String> = members.iter().map(|m| format!("Patient/{m}")).collect();
                if query
                    .refs
                    .iter()
                    .any(|(k, refs)| k == "patient" && refs.iter().any(|r| !own.contains(r)))
                {
                    return Err(AccessError::Forbidden(
                        "patients may only see the accesses to their own record".into(),
                    ));
                }
                // Nor learn, by asking for them as the agent, whether another patient tried to
                // reach their record: such an agent is shown as "another patient".
                if query
                    .agent
                    .iter()
                    .any(|agent| agent.starts_with("Patient/") && !own.contains(agent))
                {
                    return Err(AccessError::Forbidden(
                        "patients may only name themselves as the agent of an access".into(),
                    ));
                }
                // An access to a record withheld from them by a privacy tag would tell them
                // that it exists, even with the record left out of the event: such accesses
                // are left out (as the refusals below).
                query.without_records_withheld_from = members;
                // Naming one of their records names them: the accesses filed under the
                // person's other records count too (a review found `patient=<own id>`
                // missing the clinic's reads of a hospital's document about them).
                let mut named = false;
                for (_, refs) in query.refs.iter_mut().filter(|(k, _)| k == "patient") {
                    refs.clone_from(&own);
                    named = true;
                }
                if !named {
                    query.refs.push(("patient".into(), own));
                }
                // A refusal because of a tag that hides the data from the patient too would
                // tell them that withheld data exists; the access itself shows nothing either.
                query.without_decisions_by = [
                    renkei_consent::TAG_UNDELIVERED,
                    renkei_consent::TAG_UNINFORMED,
                ]
                .iter()
                .map(|tag| format!("{}{tag}", renkei_audit::PRIVACY_TAG_DECIDER))
                .collect();
            }
            Role::Facility => {
                redacted_view = Some(self.visibility(who));
                query.custodian_any_of = Some(vec![who.principal.facility.clone()]);
            }
        }
        // Every access answered before this search is in the trail it reads.
        self.flush_audit().and_then(|()| {
            let (rows, total) = self
                .repository
                .read_tx(|tx| {
                    if let Some(visibility) = &redacted_view {
                        // A resource or patient hidden from the requester is unknown to its
                        // view: searching for its accesses finds nothing, as for a missing
                        // one.
                        for (kind, references) in &mut query.refs {
                            if !matches!(kind.as_str(), "entity" | "patient") {
                                continue;
                            }
                            let mut visible = Vec::with_capacity(references.len());
                            for reference in references.drain(..) {
                                if visible_to(tx, &reference, visibility)? {
                                    visible.push(reference);
                                }
                            }
                            if visible.is_empty() {
                                return Ok((Vec::new(), query.count_total.then_some(0)));
                            }
                            *references = visible;
                        }
                    }
                    // The page and its total from one snapshot.
                    let rows = tx.audit_search(&query)?;
                    let total = match query.count_total {
                        true => Some(tx.audit_count(&query)?),
                        false => None,
                    };
                    Ok::<_, RepoError>((rows, total))
                })
                .map_err(AccessError::from)?;
            let mut events = rows
                .into_iter()
                .map(TrailEvent::render)
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(visibility) = &redacted_view {
                self.repository
                    .read_tx(|tx| redact_hidden(tx, &mut events, visibility))?;
            }
            Ok(TrailPage { events, total })
        })
    }
}

/// A page of the audit trail as its reader may see it.
#[derive(Debug)]
pub struct TrailPage {
    pub events: Vec<TrailEvent>,
    /// Every matching event, on all pages, when the query asked for it.
    pub total: Option<i64>,
}

/// Identity services (issue 6): PIXm, $match and administrators' link decisions. Every answer
/// is limited to the records the requester may see, and every call is audited.
impl Gate {
    /// PIXm (ITI-83) query.
    pub fn pix(
        &self,
        who: &Requester,
        source: (&str, &str),
        target_systems: &[String],
        raw_query: &str,
    ) -> Result<PixAnswer, AccessError> {
        let mut builder = self.event(who, Interaction::Operation("ihe-pix".into()));
        builder.query = Some(raw_query.to_string());
        let result = Self::require_identity_lookup(who).and_then(|()| {
            let visibility = self.visibility(who);
            Ok(self
                .repository
                .read_tx(|tx| identity::pix(tx, source, target_systems, &visibility))?)
        });
        self.audited_with(
            builder,
            result,
            |answer, builder| {
                if let PixAnswer::Found { patients, .. } = answer {
                    builder.patients.extend(patients.iter().cloned());
                }
                let Some((status, _, message)) = answer.failure() else {
                    return Vec::new();
                };
                builder.outcome = AuditOutcome::from_status(status);
                builder.outcome_desc = Some(message.to_string());
                Vec::new()
            },
            Vec::new(),
        )
    }

    /// What an identity lookup (`$ihe-pix`, `$match`) needs: clinical access and Patient's
    /// search scope, without break-glass. Such lookups find patients by what they are
    /// (demographics, identifiers), not one patient by id: break-glass, which opens one
    /// patient's record, does not apply, and a break-glass request is refused rather than
    /// answered as if it did (so these lookups leave no break-glass event).
    fn require_identity_lookup(who: &Requester) -> Result<(), AccessError> {
        who.require_clinical_access()?;
        who.require("Patient", Action::Search)?;
        match who.principal.break_glass {
            true => Err(AccessError::Forbidden(BREAK_GLASS_NEEDS_ONE_PATIENT.into())),
            false => Ok(()),
        }
    }

    /// Patient `$match` (ITI-119).
    pub fn match_patients(
        &self,
        who: &Requester,
        request: &renkei_identity::MatchRequest,
    ) -> Result<Vec<MatchCandidate>, AccessError> {
        let mut builder = self.event(who, Interaction::Operation("match".into()));
        builder.query = Some(match_query(request));
        let result = Self::require_identity_lookup(who).and_then(|()| {
            let visibility = self.visibility(who);
            let rules = self.repository.linking().clone();
            // The candidates and the consent decisions that disclosed them: one snapshot.
            Ok(self.repository.read_tx(|tx| {
                let candidates = identity::match_patients(tx, &rules, request, &visibility)?;
                let rows: Vec<ReturnedRow<'_>> = candidates
                    .iter()
                    .map(|c| ReturnedRow {
                        res_type: "Patient",
                        id: &c.resource.id,
                        patient: c.resource.patient_id.as_deref(),
                        custodian: c.resource.custodian.as_ref(),
                    })
                    .collect();
                let decisions = self.current_row_decisions(who, tx, &rows, &visibility)?;
                Ok((candidates, decisions))
            })?)
        });
        let (result, decisions) = match result {
            Ok((candidates, decisions)) => (Ok(candidates), decisions),
            Err(error) => (Err(error), Vec::new()),
        };
        self.audited_with(
            builder,
            result,
            |candidates, builder| {
                builder.patients.extend(
                    candidates
                        .iter()
                        .map(|c| format!("Patient/{}", c.resource.id)),
                );
                // The holders of the candidates see the match in their views.
                distinct(
                    candidates
                        .iter()
                        .filter_map(|c| c.resource.custodian.clone()),
                )
            },
            decisions,
        )
    }

    /// An administrator links (or unlinks) two Patient records, with the reason kept; the
    /// change and its AuditEvent commit together.
    pub fn set_link(
        &self,
        who: &Requester,
        patient_a: &str,
        patient_b: &str,
        linked: bool,
        reason: &str,
    ) -> Result<identity::LinkOutcome, AccessError> {
        let operation = if linked { "link" } else { "unlink" };
        let interaction = Interaction::Operation(operation.into());
        // Refused or not, the event names the records: what an investigation searches for.
        let records = vec![
            format!("Patient/{patient_a}"),
            format!("Patient/{patient_b}"),
        ];
        if who.principal.role != renkei_consent::Role::Admin && !who.is_system() {
            let error = AccessError::Forbidden(format!(
                "only administrators may {operation} Patient records"
            ));
            let mut failed = self.event(who, interaction);
            failed.patients.clone_from(&records);
            failed.outcome = AuditOutcome::from_status(403);
            failed.outcome_desc = Some(error.to_string());
            self.record(&failed, &[])?;
            return Err(error);
        }
        let decision = renkei_store::LinkOverride {
            patient_a: patient_a.to_string(),
            patient_b: patient_b.to_string(),
            linked,
            reason: reason.to_string(),
            decided_by: who.client_id.clone(),
            decided_at: now_ms(),
        };
        let builder = self.event(who, interaction);
        let result = self.repository.write(|tx| {
            let persons = identity::set_link(tx, &decision)?;
            let mut event = builder.clone();
            event.recorded_ms = now_ms();
            event.patients.clone_from(&records);
            event.outcome_desc = Some(format!("{operation}: {reason}"));
            append(tx, &[to_row(&event, &[])])
                .map_err(|e| renkei_store::StoreError::Unavailable(format!("audit trail: {e}")))?;
            Ok(persons)
        });
        match result {
            Ok(persons) => Ok(persons),
            Err(error) => {
                let error = AccessError::from(error);
                let mut failed = builder;
                failed.patients = records;
                failed.outcome = AuditOutcome::from_status(status_of(&error));
                failed.outcome_desc = Some(error.to_string());
                self.record(&failed, &[])?;
                Err(error)
            }
        }
    }
}

/// The interaction a refused or failed request attempted, from its method and target
/// (`Type/id…?query`, relative to the FHIR base): what the auditor searches the trail by.
/// A request at the token endpoint, as its Login event records it.
#[derive(Debug, Clone, Default)]
pub struct LoginAttempt {
    pub request_id: String,
    /// The client that asked: authenticated when granted, as claimed by its assertion when
    /// refused (a refused claim is still what an investigation looks for).
    pub client_id: Option<String>,
    /// `Organization/…` of a registered client.
    pub organization: Option<String>,
    pub network_address: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// Why the request was refused.
    pub refusal: Option<String>,
}

/// What a history request asked for, as a break-glass event names it.
fn history_target(scope: &renkei_store::HistoryScope) -> String {
    match scope {
        renkei_store::HistoryScope::Instance { res_type, res_id } => {
            format!("history {res_type}/{res_id}/_history")
        }
        renkei_store::HistoryScope::Type(res_type) => format!("history {res_type}/_history"),
        renkei_store::HistoryScope::System => "history _history".into(),
    }
}

fn interaction_of(method: &str, target: &str) -> Interaction {
    // The query does not change the interaction: `Patient/1?_format=xml` is a read.
    let path = target.split('?').next().unwrap_or(target);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let last = segments.last().copied().unwrap_or_default();
    // Any request at the token endpoint is a login attempt, whatever its method.
    if segments == ["auth", "token"] {
        return Interaction::Login;
    }
    if let Some(operation) = last.strip_prefix('$') {
        // `$everything` is recorded as the search of the patient's compartment it runs, when
        // it succeeds and when it fails alike, so one `subtype` finds both.
        if operation == "everything" {
            return Interaction::Search;
        }
        return Interaction::Operation(operation.to_string());
    }
    match method {
        _ if last == "_search" => Interaction::Search,
        // A Bundle posted to the base, refused before its type was known.
        "POST" if segments.is_empty() => Interaction::Batch,
        "POST" => Interaction::Create,
        "PUT" => Interaction::Update,
        "PATCH" => Interaction::Patch,
        "DELETE" => Interaction::Delete,
        _ => match segments.as_slice() {
            [_, _, "_history", _] => Interaction::Vread,
            s if s.contains(&"_history") => Interaction::History,
            ["metadata"] => Interaction::Capabilities,
            // The whole system, a type (`Observation`) or a compartment
            // (`Patient/1/Observation`): searches without parameters.
            [] | [_] | [_, _, _] => Interaction::Search,
            _ => Interaction::Read,
        },
    }
}

/// Whether `reference` (`Type/id`, optionally `/_history/n`) names a resource the requester
/// may see now. Unknown resources are not visible.
fn visible_to(
    tx: &mut Tx<'_>,
    reference: &str,
    visibility: &Visibility,
) -> Result<bool, RepoError> {
    let Some((res_type, id)) = record_named(reference) else {
        return Ok(false);
    };
    if let Some(row) = tx.current(res_type, id)? {
        if tx.is_visible(&row, visibility)? {
            return Ok(true);
        }
    }
    // A facility knows the patients it holds records of, even when another facility holds
    // the Patient record itself.
    match (res_type, visibility) {
        ("Patient", Visibility::Facility { organization, .. }) => {
            Ok(tx.holds_record_of(organization, id)?)
        }
        _ => Ok(false),
    }
}

/// Applies [`renkei_audit::redact_hidden`] to a page of events for a patient or facility
/// reader, deciding each named resource's visibility once per page.
fn redact_hidden(
    tx: &mut Tx<'_>,
    events: &mut [TrailEvent],
    visibility: &Visibility,
) -> Result<(), RepoError> {
    let mut decided: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    for event in events {
        renkei_audit::redact_hidden(&mut event.resource, |reference| {
            if let Some(visible) = decided.get(reference) {
                return Ok::<bool, RepoError>(*visible);
            }
            let visible = visible_to(tx, reference, visibility)?;
            decided.insert(reference.to_string(), visible);
            Ok(visible)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_is_audited_as_the_interaction_it_attempted() {
        let code = |method: &str, target: &str| interaction_of(method, target).code().to_string();
        assert_eq!(code("GET", "Observation"), "search-type");
        assert_eq!(code("GET", "Observation?code=1"), "search-type");
        assert_eq!(code("GET", "Patient/1/Observation"), "search-type");
        assert_eq!(code("POST", "Observation/_search"), "search-type");
        assert_eq!(code("GET", "Observation/_search?code=1"), "search-type");
        assert_eq!(code("GET", "Observation/1"), "read");
        assert_eq!(code("GET", "Observation/1?_format=xml"), "read");
        assert_eq!(code("GET", "Observation/1/_history/2"), "vread");
        assert_eq!(code("GET", "Observation/1/_history"), "history");
        assert_eq!(code("GET", "Patient/1/$everything"), "search-type");
        assert_eq!(code("GET", "Patient/$match"), "operation");
        assert_eq!(code("POST", ""), "batch");
        assert_eq!(code("GET", "metadata"), "capabilities");
        assert_eq!(code("POST", "Observation"), "create");
        assert_eq!(code("DELETE", "AuditEvent/1"), "delete");
        assert_eq!(code("GET", "/auth/token"), "login");
    }
}
