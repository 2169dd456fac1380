//! Single-resource interactions, each as a function over a store transaction.

use crate::criteria::Criteria;
use crate::meta::{is_valid_id, now_ms, stamp};
use crate::precondition::{self, IfMatch};
use crate::{index, RepoError};
use renkei_search::plan::escape;
use renkei_search::IndexRows;
use renkei_store::{
    is_privacy_label, HistoryPage, HistoryQuery, HistoryScope, NewVersion, ResourceRow, SearchRow,
    Store, StoreError, Tx, Visibility,
};
use serde_json::Value;
use std::collections::{HashSet, VecDeque};

/// A resource version as stored: its JSON text is served as is on the fast path.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub res_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub body: String,
    /// The facility holding the resource, where the operation knew it.
    pub custodian: Option<String>,
    /// The patient the resource is about (plain id), where the operation knew it.
    pub patient_id: Option<String>,
}

impl StoredResource {
    pub fn value(&self) -> Result<Value, RepoError> {
        serde_json::from_str(&self.body)
            .map_err(|e| RepoError::Store(StoreError::Unavailable(format!("corrupt row: {e}"))))
    }
}

/// A resource about to be written, with its index rows when they were extracted before the
/// write transaction. Extraction evaluates the FHIRPath expression of every search parameter of
/// the type; done beforehand, it runs beside other writes instead of inside the store's single
/// writer section (on SQLite every write passes through it one at a time).
///
/// The rows do not depend on what the store adds when it stamps the version (`id`,
/// `meta.versionId`, `meta.lastUpdated`, the custodian extension): `_id` and `_lastUpdated` are
/// columns of the resource row, not index rows, and no other parameter reads those elements
/// (checked over the official examples by `prepared_rows_match_the_stored_version`).
#[derive(Debug, Clone)]
pub struct PreparedResource {
    resource: Value,
    /// The rows and the type they were extracted for.
    index_rows: Option<(String, IndexRows)>,
}

impl PreparedResource {
    /// Extracts the index rows of `resource` now (by its own `resourceType`).
    pub fn new(resource: Value) -> PreparedResource {
        let index_rows = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .map(|res_type| (res_type.to_string(), index::rows(res_type, &resource)));
        PreparedResource {
            resource,
            index_rows,
        }
    }

    pub fn resource(&self) -> &Value {
        &self.resource
    }

    /// The body, and its rows if they were extracted for `res_type` (the type it is stored as).
    pub(crate) fn into_parts(self, res_type: &str) -> (Value, Option<IndexRows>) {
        let rows = match self.index_rows {
            Some((prepared_type, rows)) if prepared_type == res_type => Some(rows),
            _ => None,
        };
        (self.resource, rows)
    }

    /// `resource` with the rows of `speculated` when that was prepared from an identical body
    /// (a Bundle entry prepared before its transaction, whose references the transaction then
    /// rewrote to the same values); otherwise its rows are extracted inside the write.
    pub(crate) fn reusing(resource: Value, speculated: Option<&PreparedResource>) -> Self {
        match speculated {
            Some(prepared) if prepared.resource == resource => PreparedResource {
                resource,
                index_rows: prepared.index_rows.clone(),
            },
            _ => resource.into(),
        }
    }
}

/// A body not prepared beforehand: its rows are extracted inside the write.
impl From<Value> for PreparedResource {
    fn from(resource: Value) -> PreparedResource {
        PreparedResource {
            resource,
            index_rows: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub resource: StoredResource,
    /// True when the write created the logical resource (201), false for an update (200).
    pub created: bool,
    /// True when a conditional create found an existing match and stored nothing.
    pub existing: bool,
    /// The patient the record was about before this write, when the write moved it to
    /// another patient or to none: its AuditEvent names both (the patient whose record it
    /// was sees it leave).
    pub previous_patient: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    Deleted {
        version: i64,
        /// The deleted resource as `Type/id` (a conditional delete finds its id itself), so
        /// that the DELETE's AuditEvent names it.
        target: String,
        /// The patient and holder of the deleted record, for the AuditEvent's patient entity
        /// and the holder's audit view.
        patient_id: Option<String>,
        custodian: Option<String>,
    },
    /// Nothing to delete: unknown or already deleted.
    NothingToDelete,
}

/// Who is writing: recorded as the custodian of what they store.
#[derive(Debug, Clone)]
pub struct WriteContext {
    pub custodian: Option<String>,
    /// What the writer may see: conditional matches and conditional references inside
    /// Bundles resolve over visible resources only.
    pub visibility: renkei_store::Visibility,
    /// Trusted loaders (demo data, `renkei import`) name each resource's facility in
    /// `meta.source` as `<anything>/facility/<Organization id>`; clients never can.
    pub custodian_from_source: bool,
    /// Which identifiers make Patient records one person (kept up to date on Patient writes).
    pub linking: std::sync::Arc<renkei_identity::LinkingRules>,
    /// The types the writer may create (`None`: any). An update or conditional update that
    /// would create a resource of another type is refused: it is a create in effect.
    pub creatable_types: Option<Vec<String>>,
}

impl Default for WriteContext {
    fn default() -> Self {
        WriteContext {
            custodian: None,
            visibility: renkei_store::Visibility::Unrestricted,
            custodian_from_source: false,
            linking: std::sync::Arc::default(),
            creatable_types: None,
        }
    }
}

impl WriteContext {
    /// 403 when the writer's scopes do not allow creating a `res_type`.
    fn check_may_create(&self, res_type: &str) -> Result<(), RepoError> {
        match &self.creatable_types {
            Some(types) if !types.iter().any(|t| t == res_type) => Err(RepoError::Forbidden(
                format!(
                    "{res_type} does not exist yet, and the access token's scopes do not allow creating a {res_type} (an update that creates needs the create scope)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A facility may change only what it holds. Data no facility holds (the network's
    /// directory and shared identity records, stored by trusted loaders) is the operator's:
    /// a facility that could change it would take it over as its custodian.
    fn check_may_modify(&self, tx: &mut Tx<'_>, row: &ResourceRow) -> Result<(), RepoError> {
        let Some(writer) = &self.custodian else {
            return Ok(());
        };
        match &row.custodian {
            Some(owner) if owner == writer => Ok(()),
            owner => {
                // A writer who may not even see the resource learns no more than a read
                // would tell it (404, or 403 consent required), never who holds it.
                check_visible(tx, row, &self.visibility)?;
                Err(RepoError::Forbidden(match owner {
                    Some(owner) => format!(
                        "{}/{} is held by another facility; only {owner} may change it",
                        row.res_type, row.res_id
                    ),
                    None => format!(
                        "{}/{} is network directory data that no facility holds; only the \
                         network operator may change it",
                        row.res_type, row.res_id
                    ),
                }))
            }
        }
    }

    /// A patient's consent is recorded by a facility that holds records of that patient (the
    /// patient's facility, CONSENT.md). Any other facility could otherwise grant itself
    /// access, or cut off others'. Checked before the write, so the Consent being written does
    /// not count as a record; the answer is the same whether the patient exists or not.
    fn check_may_record_consent(
        &self,
        tx: &mut Tx<'_>,
        current: Option<&ResourceRow>,
        res_type: &str,
        patient: Option<&str>,
    ) -> Result<(), RepoError> {
        let (Some(writer), "Consent") = (&self.custodian, res_type) else {
            return Ok(());
        };
        // The facility that recorded a consent keeps it up to date (withdrawal above all),
        // also for a patient whose Patient record the network operator holds.
        let own_consent = current.is_some_and(|row| {
            row.custodian.as_deref() == Some(writer.as_str())
                && row.patient_id.as_deref() == patient
        });
        if own_consent {
            return Ok(());
        }
        let Some(patient) = patient else {
            return Err(RepoError::Unprocessable(
                "Consent.patient is required: it names the patient whose consent this is".into(),
            ));
        };
        let holds = tx.holds_patient_record_of(writer, patient)?;
        if holds {
            return Ok(());
        }
        Err(RepoError::Forbidden(format!(
            "{writer} may record consent only for a patient it has registered: Consent.patient \
             must name a Patient record {writer} holds, or one linked to it as the same person"
        )))
    }

    /// A facility merges only its own duplicates (IHE ITI-104): `Patient.link` of type
    /// `replaced-by` joins two records into one person, and consent follows the person, so a
    /// merge into another facility's record would let the writer speak for that patient.
    /// Records of different facilities are linked by shared identifiers or by an administrator.
    fn check_may_merge(
        &self,
        tx: &mut Tx<'_>,
        res_type: &str,
        patient: &Value,
    ) -> Result<(), RepoError> {
        let (Some(writer), "Patient") = (&self.custodian, res_type) else {
            return Ok(());
        };
        let own_id = patient.get("id").and_then(Value::as_str);
        for survivor in crate::identity::replaced_by(patient) {
            if own_id == Some(survivor.as_str()) {
                return Err(RepoError::Unprocessable(format!(
                    "Patient.link replaced-by names Patient/{survivor} itself; a record is merged \
                     into another record, its survivor"
                )));
            }
            let current = tx.current("Patient", &survivor)?;
            let held = current
                .as_ref()
                .is_some_and(|row| !row.deleted && row.custodian.as_deref() == Some(writer));
            // ITI-104: the survivor is an active record, not itself merged into another (a
            // merge of each into the other would leave no survivor).
            let merged_away = current
                .and_then(|row| row.body)
                .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                .is_some_and(|body| crate::identity::replaced_by(&body).next().is_some());
            if held && merged_away {
                return Err(RepoError::Unprocessable(format!(
                    "Patient/{survivor} is itself merged into another record (its link \
                     replaced-by); merge into the record that survived"
                )));
            }
            if !held {
                return Err(RepoError::Unprocessable(format!(
                    "Patient.link replaced-by may name only another Patient record {writer} \
                     holds (a merge of its own duplicates); Patient/{survivor} is not one. \
                     Records of different facilities are linked by shared identifiers or by \
                     an administrator (Patient/$link)"
                )));
            }
        }
        Ok(())
    }

    fn custodian_for(&self, resource: &Value) -> Option<String> {
        if let Some(custodian) = &self.custodian {
            return Some(custodian.clone());
        }
        if !self.custodian_from_source {
            return None;
        }
        let source = resource.pointer("/meta/source").and_then(Value::as_str)?;
        facility_of_source(source).map(|org| format!("Organization/{org}"))
    }
}

#[derive(Debug, Clone)]
pub struct RepositoryOptions {
    /// How often a write is retried when it lost a race it can win on a second try.
    pub write_retries: usize,
    /// Which identifiers make Patient records one person.
    pub linking: std::sync::Arc<renkei_identity::LinkingRules>,
    /// The bytes of resources one batch or transaction response may carry (the setting
    /// `max_bundle_response_bytes`).
    pub max_bundle_response_bytes: usize,
}

/// Default of [`RepositoryOptions::max_bundle_response_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BUNDLE_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            write_retries: 8,
            linking: std::sync::Arc::default(),
            max_bundle_response_bytes: DEFAULT_MAX_BUNDLE_RESPONSE_BYTES,
        }
    }
}

#[derive(Debug, Clone)]
pub enum PatchBody {
    JsonPatch(Value),
    FhirPathPatch(Value),
}

#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub scope: HistoryScope,
    pub since: Option<i64>,
    pub at: Option<(i64, i64)>,
    pub after: Option<(i64, i64, i64)>,
    pub count: usize,
    pub visibility: renkei_store::Visibility,
}

/// The FHIR repository over one store.
#[derive(Clone)]
pub struct Repository {
    store: Store,
    options: RepositoryOptions,
}

impl Repository {
    pub fn new(store: Store, options: RepositoryOptions) -> Self {
        Repository { store, options }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn linking(&self) -> &std::sync::Arc<renkei_identity::LinkingRules> {
        &self.options.linking
    }

    /// See [`RepositoryOptions::max_bundle_response_bytes`].
    pub fn max_bundle_response_bytes(&self) -> usize {
        self.options.max_bundle_response_bytes
    }

    /// Runs a write, retrying when it lost a race to a concurrent writer (two creates of the
    /// same client id, a serialization failure): the loser re-reads and wins next time.
    /// Concurrent writes may share a commit (see `Store::write`).
    pub fn write<T>(
        &self,
        work: impl FnMut(&mut Tx<'_>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        self.write_retrying(false, work)
    }

    /// [`Repository::write`] for a write of many resources (a transaction Bundle, an import
    /// batch, a reindex batch), which commits on its own (see `Store::write_alone`).
    pub fn write_large<T>(
        &self,
        work: impl FnMut(&mut Tx<'_>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        self.write_retrying(true, work)
    }

    fn write_retrying<T>(
        &self,
        alone: bool,
        mut work: impl FnMut(&mut Tx<'_>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let mut attempt = 0;
        loop {
            let result = if alone {
                self.store.write_alone(&mut work)
            } else {
                self.store.write(&mut work)
            };
            // A transaction Bundle's error names its entry (`RepoError::Entry`): what decides
            // is the store's error beneath. `work` prepares everything again from the request,
            // and the failed attempt rolled back with all it wrote, its audit rows included.
            match result {
                Err(e)
                    if attempt < self.options.write_retries
                        && matches!(e.root(), RepoError::Store(s) if s.is_transient() || s.is_write_conflict()) =>
                {
                    attempt += 1;
                    std::thread::sleep(retry_pause(attempt));
                }
                other => return other,
            }
        }
    }

    pub fn read_tx<T>(
        &self,
        work: impl FnOnce(&mut Tx<'_>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        self.store.read(work)
    }

    /// [`Repository::read_tx`], or, when `one_statement` says the work may need no more than
    /// one statement, [`renkei_store::Store::read_lone`] (`work` may then run twice; it must
    /// only read).
    pub fn read_tx_maybe_lone<T>(
        &self,
        one_statement: bool,
        work: impl Fn(&mut Tx<'_>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        if one_statement {
            self.store.read_lone(work)
        } else {
            self.store.read(work)
        }
    }

    pub fn read(&self, res_type: &str, id: &str) -> Result<StoredResource, RepoError> {
        self.store.read(|tx| read(tx, res_type, id))
    }

    pub fn vread(
        &self,
        res_type: &str,
        id: &str,
        version: &str,
    ) -> Result<StoredResource, RepoError> {
        self.store.read(|tx| vread(tx, res_type, id, version))
    }
}

/// How long a write waits before its `attempt`th retry: a few milliseconds growing with the
/// attempt, jittered so that writers that deadlocked with each other do not meet again in step.
fn retry_pause(attempt: usize) -> std::time::Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) % 5_000);
    let attempt = u64::try_from(attempt).unwrap_or(u64::MAX).min(8);
    std::time::Duration::from_micros(attempt * 2_000 + jitter)
}

/// A history page (instance, type or system) read in the caller's transaction.
pub fn history_in(tx: &mut Tx<'_>, request: &HistoryRequest) -> Result<HistoryPage, RepoError> {
    if let HistoryScope::Instance { res_type, res_id } = &request.scope {
        check_type(res_type)?;
        check_id(res_id)?;
        let row = tx
            .current(res_type, res_id)?
            .ok_or_else(|| RepoError::NotFound {
                res_type: res_type.clone(),
                id: res_id.clone(),
            })?;
        // A resource's history answers like a read of it: hidden is missing.
        check_visible(tx, &row, &request.visibility)?;
    }
    Ok(tx.history(&HistoryQuery {
        scope: request.scope.clone(),
        since: request.since,
        at: request.at,
        after: request.after,
        count: request.count,
        visibility: request.visibility.clone(),
    })?)
}

impl Repository {
    /// Runs a parsed search in one read transaction: the page, the total when asked for, and
    /// the included resources, all selected by SQL over the index tables.
    pub fn search(
        &self,
        plan: &renkei_search::plan::SearchPlan,
        visibility: &renkei_store::Visibility,
    ) -> Result<renkei_store::SearchPage, RepoError> {
        self.read_tx_maybe_lone(renkei_store::search_may_be_one_statement(plan), |tx| {
            search_in(tx, plan, visibility)
        })
    }

    /// The database's plan for the first page of `plan` (operators' `renkei explain`).
    pub fn explain_search(
        &self,
        plan: &renkei_search::plan::SearchPlan,
        visibility: &renkei_store::Visibility,
    ) -> Result<renkei_store::SearchExplanation, RepoError> {
        check_types(plan)?;
        self.store
            .read(|tx| Ok(tx.explain_search(plan, visibility)?))
    }

    /// Rebuilds the index rows and the patient of every current resource (after a change of
    /// search definitions or of Renkei), `batch` resources per write transaction, then the
    /// tombstones of deleted ones. `progress` hears the running count of current resources.
    pub fn reindex(
        &self,
        batch: usize,
        mut progress: impl FnMut(u64),
    ) -> Result<Reindexed, RepoError> {
        let resources = self.in_batches(
            batch,
            |tx, after, n| tx.scan_current(after, n),
            &mut progress,
            |tx, row| {
                let record = StoredRecord {
                    res_type: &row.res_type,
                    res_id: &row.res_id,
                    custodian: row.custodian.as_deref(),
                    patient: row.patient_id.as_deref(),
                    body: row.body.as_deref(),
                };
                let Some(Rebuilt {
                    value,
                    rows,
                    patient,
                    period,
                }) = rebuilt_index_rows(tx, record, None)?
                else {
                    return Ok(());
                };
                tx.replace_index(row.rid, &row.res_type, &rows)?;
                // Only a period has an end to fill in (records stored before the column), and a
                // record dated by what it refers to its span; a point in time keeps the clinical
                // date it was written with.
                if period.1.is_some() || period != care_period(&row.res_type, &value) {
                    tx.set_clinical_period(row.rid, period.0, period.1)?;
                }
                if patient != row.patient_id {
                    tx.set_patient_id(row.rid, patient.as_deref())?;
                }
                if row.res_type == "Patient" {
                    crate::identity::patient_written(
                        tx,
                        &self.options.linking,
                        &row.res_id,
                        Some(&value),
                    )?;
                }
                Ok(())
            },
        )?;
        // The tombstones of deleted records, rebuilt from their last version (see
        // [`tombstone`]) for records deleted before tombstones kept what consent reads.
        let tombstones = self.in_batches(
            batch,
            |tx, after, n| tx.scan_deleted(after, n),
            &mut |_| {},
            |tx, row| {
                let before = tx.version(&row.res_type, &row.res_id, row.version - 1)?;
                let last_body = before.as_ref().and_then(|version| version.body.as_deref());
                let (rows, (clinical_date, clinical_end)) = tombstone(
                    tx,
                    row.rid,
                    &row.res_type,
                    last_body,
                    row.patient_id.as_deref(),
                )?;
                tx.replace_index(row.rid, &row.res_type, &rows)?;
                // A record dated by what it referred to kept that date when it was deleted.
                if (clinical_date, clinical_end) != (None, None) {
                    tx.set_clinical_period(row.rid, clinical_date, clinical_end)?;
                }
                Ok(())
            },
        )?;
        Ok(Reindexed {
            resources,
            tombstones,
        })
    }

    /// Runs `work` on every row `scan` lists, in rid order, `batch` rows per write
    /// transaction; `progress` hears the running count, which is returned.
    fn in_batches(
        &self,
        batch: usize,
        scan: impl Fn(&mut Tx<'_>, i64, usize) -> Result<Vec<SearchRow>, StoreError>,
        progress: &mut dyn FnMut(u64),
        mut work: impl FnMut(&mut Tx<'_>, &SearchRow) -> Result<(), RepoError>,
    ) -> Result<u64, RepoError> {
        let mut after = 0i64;
        let mut done = 0u64;
        loop {
            let rows = self
                .store
                .read(|tx| Ok::<_, RepoError>(scan(tx, after, batch.max(1))?))?;
            let Some(last) = rows.last().map(|r| r.rid) else {
                return Ok(done);
            };
            self.write_large(|tx| rows.iter().try_for_each(|row| work(tx, row)))?;
            done += rows.len() as u64;
            after = last;
            progress(done);
        }
    }
}

/// What a reindex rebuilt: current resources, and tombstones of deleted ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reindexed {
    pub resources: u64,
    pub tombstones: u64,
}

/// Whether `res_type` is a resource type with a REST endpoint: every R4 type but
/// `Parameters`, which has none (parameters.html) and so is neither stored nor searched.
pub fn has_rest_endpoint(res_type: &str) -> bool {
    res_type != "Parameters" && renkei_fhir::is_resource_type(res_type)
}

/// Refuses a type that names no REST endpoint: not an R4 type, or `Parameters`.
pub fn check_type(res_type: &str) -> Result<(), RepoError> {
    if has_rest_endpoint(res_type) {
        Ok(())
    } else if renkei_fhir::is_resource_type(res_type) {
        Err(RepoError::NoRestEndpoint(res_type.to_string()))
    } else {
        Err(RepoError::UnknownType(res_type.to_string()))
    }
}

fn stored(row: ResourceRow, body: String) -> StoredResource {
    StoredResource {
        custodian: row.custodian.clone(),
        patient_id: row.patient_id.clone(),
        res_type: row.res_type,
        id: row.res_id,
        version: row.version,
        last_updated: row.last_updated,
        body,
    }
}

/// One page of a search inside the caller's transaction (so what the caller decides about
/// the page, e.g. which consents permitted it, sees the same snapshot).
pub fn search_in(
    tx: &mut Tx<'_>,
    plan: &renkei_search::plan::SearchPlan,
    visibility: &renkei_store::Visibility,
) -> Result<renkei_store::SearchPage, RepoError> {
    check_types(plan)?;
    Ok(tx.search(plan, visibility)?)
}

fn check_types(plan: &renkei_search::plan::SearchPlan) -> Result<(), RepoError> {
    plan.types
        .iter()
        .try_for_each(|res_type| check_type(res_type))
}

pub fn read(tx: &mut Tx<'_>, res_type: &str, id: &str) -> Result<StoredResource, RepoError> {
    check_type(res_type)?;
    check_id(id)?;
    let row = tx
        .current(res_type, id)?
        .ok_or_else(|| RepoError::NotFound {
            res_type: res_type.into(),
            id: id.into(),
        })?;
    current_or_gone(row)
}

/// Read with the consent decision: a resource the requester may not see answers 404 like a
/// missing one, unless the requester's facility holds its own record of the same patient,
/// which is told that consent is required (403).
pub fn read_visible(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    visibility: &Visibility,
) -> Result<StoredResource, RepoError> {
    check_type(res_type)?;
    check_id(id)?;
    let row = tx
        .current(res_type, id)?
        .ok_or_else(|| RepoError::NotFound {
            res_type: res_type.into(),
            id: id.into(),
        })?;
    check_visible(tx, &row, visibility)?;
    current_or_gone(row)
}

/// The current row as a resource, or 410 when its current version is a deletion.
fn current_or_gone(row: ResourceRow) -> Result<StoredResource, RepoError> {
    match row.body.clone() {
        Some(body) if !row.deleted => Ok(stored(row, body)),
        _ => Err(RepoError::Gone {
            res_type: row.res_type,
            id: row.res_id,
            version: row.version,
        }),
    }
}

/// vread with the consent decision of the resource's current row.
pub fn vread_visible(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    version: &str,
    visibility: &Visibility,
) -> Result<StoredResource, RepoError> {
    check_type(res_type)?;
    check_id(id)?;
    let row = tx
        .current(res_type, id)?
        .ok_or_else(|| RepoError::VersionNotFound {
            res_type: res_type.into(),
            id: id.into(),
            version: version.into(),
        })?;
    check_visible(tx, &row, visibility)?;
    // A version that no resource can have (`abc`, `0`, one past the current) is missing,
    // whoever asks.
    let number = version_number(version)
        .filter(|n| (1..=row.version).contains(n))
        .ok_or_else(|| RepoError::VersionNotFound {
            res_type: res_type.into(),
            id: id.into(),
            version: version.into(),
        })?;
    let is_current = number == row.version;
    if !is_current && !visibility.sees_earlier_versions(row.custodian.as_deref()) {
        return Err(RepoError::Forbidden(format!(
            "earlier versions of {res_type}/{id} are shown only to the facility that holds it: \
             consent is decided on the current version (version {}), and an earlier one may \
             have been about another patient or carried other labels",
            row.version
        )));
    }
    // The holder and patient are the record's (the audit names them), whichever version.
    let mut resource = vread(tx, res_type, id, version)?;
    resource.custodian = row.custodian.clone();
    resource.patient_id = row.patient_id.clone();
    Ok(resource)
}

fn check_visible(
    tx: &mut Tx<'_>,
    row: &ResourceRow,
    visibility: &Visibility,
) -> Result<(), RepoError> {
    if tx.is_visible(row, visibility)? {
        return Ok(());
    }
    // Only a facility that registered the patient learns that a hidden record about them
    // exists: any member can write a clinical record about any patient id, so holding one
    // proves nothing. It registered them when it holds the patient's Patient record, or
    // holds a record linked to it as the same person and may see that Patient record (it is
    // inside the patient's consent, where the link is no secret; outside it the answer would
    // reveal the link). The answer is the same whether consent or the holder's release (an
    // UNDELIVERED tag) keeps it back, so it reveals neither.
    if let (
        Visibility::Facility {
            organization,
            break_glass,
            ..
        },
        Some(patient),
    ) = (visibility, row.patient_id.as_deref())
    {
        if tx.holds_the_patient_record(organization, patient)?
            || registered_as_the_same_person(tx, organization, patient, visibility)?
        {
            return Err(RepoError::Forbidden(match break_glass.is_some() {
                true => format!(
                    "{organization} may not see this record, not even under break-glass: the \
                     patient's refusal holds in this network, or the facility that holds the \
                     record has not released it"
                ),
                false => format!(
                    "{organization} may not see this record: the patient's consent does not \
                     extend to it, or the facility that holds it has not released it. Ask the \
                     patient for consent; in an emergency a client allowed to may use \
                     break-glass (X-Purpose-Of-Use: ETREAT), which shows what the consent does \
                     not cover but never a record its holder has not released"
                ),
            }));
        }
    }
    Err(RepoError::NotFound {
        res_type: row.res_type.clone(),
        id: row.res_id.clone(),
    })
}

/// Whether `organization` holds a Patient record linked to `patient` as the same person and
/// may see `patient`'s own Patient record.
fn registered_as_the_same_person(
    tx: &mut Tx<'_>,
    organization: &str,
    patient: &str,
    visibility: &Visibility,
) -> Result<bool, RepoError> {
    if !tx.holds_patient_record_of(organization, patient)? {
        return Ok(false);
    }
    match tx.current("Patient", patient)? {
        Some(row) if !row.deleted => Ok(tx.is_visible(&row, visibility)?),
        _ => Ok(false),
    }
}

pub fn vread(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    version: &str,
) -> Result<StoredResource, RepoError> {
    check_type(res_type)?;
    check_id(id)?;
    let not_found = || RepoError::VersionNotFound {
        res_type: res_type.into(),
        id: id.into(),
        version: version.into(),
    };
    let number = version_number(version).ok_or_else(not_found)?;
    let row = tx.version(res_type, id, number)?.ok_or_else(not_found)?;
    match row.body {
        Some(body) if !row.deleted => Ok(StoredResource {
            custodian: None,
            patient_id: None,
            res_type: row.res_type,
            id: row.res_id,
            version: row.version,
            last_updated: row.last_updated,
            body,
        }),
        _ => Err(RepoError::Gone {
            res_type: res_type.into(),
            id: id.into(),
            version: number,
        }),
    }
}

/// The facility a `meta.source` names: the id after `/facility/` at the end of its path,
/// whatever follows the path (`#request-id`, as HAPI FHIR writes, a query, a final `/`).
fn facility_of_source(source: &str) -> Option<&str> {
    let path = source.split(['#', '?']).next().unwrap_or_default();
    let path = path.strip_suffix('/').unwrap_or(path);
    let (_, org) = path.rsplit_once("/facility/")?;
    is_valid_id(org).then_some(org)
}

/// Which patient a record is about, and the privacy labels it carries for consent beyond its
/// own.
struct Classification {
    patient: Option<String>,
    /// The patient came from the records it refers to, not from the record itself.
    referred: bool,
    /// `_security` labels and national privacy `_tag`s of the patient records it refers to.
    inherited_labels: Vec<renkei_search::extract::TokenIndex>,
    /// The span of the care periods of the patient records it refers to: a refusal of a
    /// period reaches the Binary or Provenance of care in it, as it reaches that care.
    inherited_period: CarePeriod,
    /// The records it follows and what they refer to ([`followed_rows`]).
    followed: Vec<renkei_search::extract::ReferenceIndex>,
}

impl Classification {
    /// The care period consent compares the record with: its own, else the span of the care
    /// it contains and, for a record about the patient of what it refers to (a Binary, a
    /// Provenance), of those records'.
    fn period(&self, res_type: &str, resource: &Value) -> CarePeriod {
        match care_period(res_type, resource) {
            (None, None) => spanning(self.inherited_period, contained_care(resource)),
            own => own,
        }
    }
}

/// The smallest care period holding both: from the earlier start (unknown when either start
/// is, with an end known) to the later end. A record without a date adds nothing.
fn spanning(a: CarePeriod, b: CarePeriod) -> CarePeriod {
    match (a, b) {
        ((None, None), other) | (other, (None, None)) => other,
        _ if a == b => a,
        ((a_start, a_end), (b_start, b_end)) => {
            let start = a_start.zip(b_start).map(|(x, y)| x.min(y));
            let last = |start: Option<i64>, end: Option<i64>| end.or(start).unwrap_or(i64::MIN);
            (start, Some(last(a_start, a_end).max(last(b_start, b_end))))
        }
    }
}

/// The patient a record is about: `index::patient_of`, else the patient of the first record it
/// references that is about one (a Provenance's target, a Binary's `securityContext`, a
/// Task's `focus`, a Communication's `about`). Otherwise such a record would be directory
/// data and show every member what a hidden record holds, or that it exists. Such a record
/// also takes on the labels of the patient records it refers to (`PSY`, `UNDELIVERED`, …):
/// a Binary holding a withheld lab result is withheld like the result.
fn classify_record(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    resource: &Value,
    writer: &Visibility,
    holder: Option<&str>,
) -> Result<Classification, RepoError> {
    // A resource holding others (contained ones, a Bundle's entries) is withheld as they
    // would be on their own.
    let mut entry_labels = index::embedded_privacy_labels(resource);
    if let Some(mut patient) = index::patient_of(res_type, id, resource) {
        if res_type == "Bundle" {
            if patient == index::UNRESOLVED_PATIENT {
                if let Some(matched) = document_patient(tx, resource, holder)? {
                    patient = matched;
                }
            }
            // Its entries may reach patient data through what they refer to (a Binary's
            // securityContext, a Provenance's target, an encounter): another patient's makes
            // it a Bundle of several patients, and their labels are its own.
            let (others, labels) = referred_by_entries(tx, resource, writer, &patient)?;
            if others {
                patient = index::UNRESOLVED_PATIENT.to_string();
            }
            index::add_labels(&mut entry_labels, labels);
        }
        let mut classification = Classification {
            patient: Some(patient),
            referred: false,
            inherited_labels: entry_labels,
            inherited_period: (None, None),
            followed: Vec::new(),
        };
        // Naming its patient, it is still about the records it names as its subject matter
        // (a Provenance's target, a Task's focus): it follows them as a record about their
        // patient does, or a Task for the patient would show a refused diagnosis's id, and a
        // Provenance its psychiatrist.
        for (target_type, target_id) in index::subject_matter_references(res_type, resource)
            .iter()
            .take(MAX_REFERRED_RECORDS_LOOKED_UP)
        {
            if (target_type.as_str(), target_id.as_str()) == (res_type, id)
                || target_type == "Patient"
            {
                continue;
            }
            let Some(row) = tx.current_for_share(target_type, target_id)? else {
                continue;
            };
            let Some(target_patient) = row.patient_id.clone() else {
                continue;
            };
            // About another patient's data, or data its writer may not see: neither patient's
            // consent decides it alone (a Task for one patient about another's diagnosis).
            if !tx.is_visible(&row, writer)?
                || classification.patient.as_deref() != Some(target_patient.as_str())
            {
                classification.patient = Some(index::UNRESOLVED_PATIENT.to_string());
            }
            take_on_from(tx, &mut classification, &row, target_type, target_id)?;
        }
        if index::subject_matter_unresolvable(res_type, resource) {
            classification.patient = Some(index::UNRESOLVED_PATIENT.to_string());
        }
        return Ok(classification);
    }
    let mut classification = Classification {
        patient: None,
        referred: true,
        inherited_labels: entry_labels,
        inherited_period: (None, None),
        followed: Vec::new(),
    };
    let mut references = index::local_references(resource);
    let mut distinct = HashSet::new();
    references.retain(|target| distinct.insert(target.clone()));
    // More than it looks up: what it refers to beyond them could be another patient's, or
    // care in a refused period, so it stays its writer's.
    let mut names_missing_patient_data = references.len() > MAX_REFERRED_RECORDS_LOOKED_UP;
    for (target_type, target_id) in references.iter().take(MAX_REFERRED_RECORDS_LOOKED_UP) {
        if (target_type.as_str(), target_id.as_str()) == (res_type, id) {
            // Itself (a Provenance among its own targets): its stored labels and period came
            // from the others, and would outlive their change.
            continue;
        }
        // Its labels are taken on below: a write relabelling it waits for this one to commit
        // and then finds this record among those referring to it (`relabel_referrers`).
        let Some(row) = tx.current_for_share(target_type, target_id)? else {
            // A directory record named before it exists (an Organization's partOf) decides
            // nothing; any other record may be patient data (a Binary written later in the
            // same transaction), and does, below.
            names_missing_patient_data |= !DIRECTORY_TYPES.contains(&target_type.as_str());
            continue;
        };
        let Some(patient) = row.patient_id.clone() else {
            continue;
        };
        if !tx.is_visible(&row, writer)? {
            // The writer may not see what it refers to: its record stays its own (about a
            // patient nobody else can match), and tells it nothing about the hidden one.
            classification
                .patient
                .get_or_insert_with(|| index::UNRESOLVED_PATIENT.to_string());
            continue;
        }
        match &classification.patient {
            None => classification.patient = Some(patient),
            // Data of several patients (a Provenance of two patients' care): whichever came
            // first must not decide who sees the other's, so it stays its writer's, as a
            // Bundle of several patients does.
            Some(first) if *first != patient => {
                classification.patient = Some(index::UNRESOLVED_PATIENT.to_string());
            }
            Some(_) => {}
        }
        take_on_from(tx, &mut classification, &row, target_type, target_id)?;
    }
    // Referring to patient data not stored (yet), or to more than it looks up: the record
    // stays its writer's, as for a hidden target, rather than becoming directory data every
    // member reads or the data of the patient its first references name. A Binary that
    // refers only to itself is content without context, as one without `securityContext`.
    let binary_without_context = res_type == "Binary"
        && references
            .iter()
            .all(|(t, i)| (t.as_str(), i.as_str()) == (res_type, id));
    if names_missing_patient_data
        || binary_without_context
        || index::subject_matter_unresolvable(res_type, resource)
    {
        classification.patient = Some(index::UNRESOLVED_PATIENT.to_string());
    }
    Ok(classification)
}

/// What a record takes on from `row` (`target_type/target_id`), a record about a patient it
/// refers to: its care period, the rows of what it follows ([`followed_rows`]), and its
/// privacy labels (its own and those it took on in turn: a Provenance of a Binary of a
/// withheld result), read from its index rows without its body.
fn take_on_from(
    tx: &mut Tx<'_>,
    classification: &mut Classification,
    row: &ResourceRow,
    target_type: &str,
    target_id: &str,
) -> Result<(), RepoError> {
    classification.inherited_period =
        spanning(classification.inherited_period, care_referred_to(row));
    classification.followed.extend(followed_rows(
        target_type,
        target_id,
        tx.reference_rows(row.rid)?,
    ));
    index::add_labels(
        &mut classification.inherited_labels,
        tx.privacy_labels(row.rid)?,
    );
    Ok(())
}

/// The care period a record referring to stored record `row` takes from it. A stored Bundle
/// holds care of any date and has no period of its own: what refers to it (the Binary of a
/// document, a Provenance) spans all time, so every refusal of a period reaches it and no
/// permission limited to one opens it, as for the Bundle (`renkei_store` `push_match`).
/// Undated, it would stay visible where a refused period hides its document.
fn care_referred_to(row: &ResourceRow) -> CarePeriod {
    match row.res_type.as_str() {
        "Bundle" => (None, Some(i64::MAX)),
        _ => (row.clinical_date, row.clinical_end),
    }
}

/// The rows a record about the patient of what it refers to takes from `target`, one of the
/// records it refers to (`target_rows` being the target's reference rows): it follows the
/// target and what the target follows ([`renkei_store::FOLLOWED_RECORD`]), and refers through
/// it to what the target refers to ([`renkei_store::FOLLOWED_REFERENCE`]). Consent then
/// decides it as it decides the target: a refusal of a lab result, or of everything of its
/// admission, reaches the result's scan and its Provenance. Not through a stored Bundle's
/// references: a Bundle is related to nothing through them, and what follows it is decided
/// as it is.
fn followed_rows(
    target_type: &str,
    target_id: &str,
    target_rows: Vec<renkei_search::extract::ReferenceIndex>,
) -> impl Iterator<Item = renkei_search::extract::ReferenceIndex> {
    let itself = renkei_search::extract::ReferenceIndex {
        param: renkei_store::FOLLOWED_RECORD.into(),
        target_type: Some(target_type.to_string()),
        target_id: Some(target_id.to_string()),
        url: None,
    };
    let through_bundle = target_type == "Bundle";
    let onwards = target_rows.into_iter().filter_map(move |mut row| {
        if row.param == renkei_store::FOLLOWED_RECORD {
            return Some(row);
        }
        if through_bundle {
            return None;
        }
        row.param = renkei_store::FOLLOWED_REFERENCE.into();
        Some(row)
    });
    std::iter::once(itself).chain(onwards)
}

/// Whether `row` is kept for what a record follows ([`followed_rows`]).
fn is_followed_row(row: &renkei_search::extract::ReferenceIndex) -> bool {
    row.param == renkei_store::FOLLOWED_RECORD || row.param == renkei_store::FOLLOWED_REFERENCE
}

/// The records named by reference rows, with their parameters, in one order.
fn reference_set<'a>(
    rows: impl Iterator<Item = &'a renkei_search::extract::ReferenceIndex>,
) -> std::collections::BTreeSet<(&'a str, &'a str, &'a str)> {
    rows.filter_map(|row| {
        Some((
            row.param.as_str(),
            row.target_type.as_deref()?,
            row.target_id.as_deref()?,
        ))
    })
    .collect()
}

/// The span of the care periods of the resources `resource` contains (a Provenance of a
/// contained Encounter).
fn contained_care(resource: &Value) -> CarePeriod {
    resource
        .get("contained")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|contained| {
            let contained_type = contained.get("resourceType").and_then(Value::as_str)?;
            Some(care_period(contained_type, contained))
        })
        .fold((None, None), spanning)
}

/// A stored record's index rows built anew from its body, as they would be written now, the
/// patient it is about, its care period, and its body (`None` for a tombstone). Which patient a record is
/// about, and which labels it takes on from the records it refers to, can change with the
/// rules or with those records: consent is decided on these. Every record is seen (as by the
/// gateway itself); a record its writer could not classify (it referred to what the writer
/// could not see) stays about nobody.
fn rebuilt_index_rows(
    tx: &mut Tx<'_>,
    record: StoredRecord<'_>,
    network: Option<&Visibility>,
) -> Result<Option<Rebuilt>, RepoError> {
    let Some(body) = record.body else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(body)
        .map_err(|e| RepoError::Store(StoreError::Unavailable(format!("corrupt row: {e}"))))?;
    let classification = classify_record(
        tx,
        record.res_type,
        record.res_id,
        &value,
        &Visibility::Unrestricted,
        record.custodian,
    )?;
    let period = classification.period(record.res_type, &value);
    // Decided by what its writer saw: a record about what it refers to, or about its subject
    // matter beside its patient.
    let seen_by_its_writer =
        classification.referred || index::subject_matter(record.res_type, &value).is_some();
    let writer_could_not_see =
        seen_by_its_writer && record.patient == Some(index::UNRESOLVED_PATIENT);
    // Stored unresolved, it may have referred to several patients' records, or to one its
    // writer could not see: decided again as its holder sees now, where the network's policy
    // is known (a record corrected back to one patient's data takes that patient), kept so
    // otherwise.
    let holder_view = network
        .zip(record.custodian)
        .and_then(|(view, holder)| view.facility_treating(holder));
    let patient = match (writer_could_not_see, holder_view) {
        (true, Some(view)) => {
            classify_record(
                tx,
                record.res_type,
                record.res_id,
                &value,
                &view,
                record.custodian,
            )?
            .patient
        }
        (true, None) => record.patient.map(str::to_string),
        (false, _) => classification.patient,
    };
    let rows = with_consent_rows(
        index::rows(record.res_type, &value),
        record.res_type,
        &value,
        classification.inherited_labels,
        classification.followed,
        patient.as_deref(),
    );
    Ok(Some(Rebuilt {
        value,
        rows,
        patient,
        period,
    }))
}

/// What [`rebuilt_index_rows`] derives from a stored record.
struct Rebuilt {
    value: Value,
    rows: IndexRows,
    patient: Option<String>,
    period: CarePeriod,
}

/// What [`rebuilt_index_rows`] reads of a stored row (a search row or a resource row).
struct StoredRecord<'a> {
    res_type: &'a str,
    res_id: &'a str,
    custodian: Option<&'a str>,
    patient: Option<&'a str>,
    body: Option<&'a str>,
}

/// How many records referring to a relabelled or redated one are read at a time.
const REFERRERS_PER_READ: usize = 256;

/// The privacy labels or the care period of `rid` were changed by a write: the records that
/// took them on from it (a Binary's `securityContext`, a Provenance's target, and on along
/// chains) take on the new ones now, or a `PSY` label added to a document would leave its
/// Binary readable by those the document is now withheld from, and a refused period would
/// not reach the Binary of an encounter moved into it. Records taking on nothing keep theirs.
fn relabel_referrers(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    network: &Visibility,
) -> Result<(), RepoError> {
    let mut queue = VecDeque::from([(res_type.to_string(), id.to_string())]);
    // A record is rebuilt again when another record it refers to changes after it was rebuilt
    // (a Provenance of a Binary and of its Encounter); only a change queues its referrers, so
    // the walk ends, and the bound only stops a cycle of references that never settles.
    let mut rebuilt = 0usize;
    while let Some((target_type, target_id)) = queue.pop_front() {
        let mut after_rid = i64::MIN;
        loop {
            let referrers =
                tx.referring_records(&target_type, &target_id, after_rid, REFERRERS_PER_READ)?;
            let read = referrers.len();
            for referrer in referrers {
                after_rid = referrer.rid;
                rebuilt += 1;
                if rebuilt > MAX_REFERRER_REBUILDS {
                    tracing::warn!(
                        record = %format!("{}/{}", referrer.res_type, referrer.res_id),
                        "references that never settle: labels and care periods left as they are"
                    );
                    return Ok(());
                }
                if rebuild_referrer(tx, &referrer, network)? {
                    queue.push_back((referrer.res_type, referrer.res_id));
                }
            }
            if read < REFERRERS_PER_READ {
                break;
            }
        }
    }
    Ok(())
}

/// How many records one write rebuilds at most while carrying labels and care periods on.
const MAX_REFERRER_REBUILDS: usize = 1_000_000;

/// Rebuilds the labels and care period `referrer` takes on from what it refers to; whether
/// either changed.
fn rebuild_referrer(
    tx: &mut Tx<'_>,
    referrer: &ResourceRow,
    network: &Visibility,
) -> Result<bool, RepoError> {
    let before = tx.privacy_labels(referrer.rid)?;
    let followed_before = tx.reference_rows(referrer.rid)?;
    let record = StoredRecord {
        res_type: &referrer.res_type,
        res_id: &referrer.res_id,
        custodian: referrer.custodian.as_deref(),
        patient: referrer.patient_id.as_deref(),
        body: referrer.body.as_deref(),
    };
    let Some(Rebuilt {
        rows,
        period,
        patient,
        ..
    }) = rebuilt_index_rows(tx, record, Some(network))?
    else {
        return Ok(false);
    };
    let labels_kept = same_labels(&before, rows.tokens.iter().filter(|t| is_privacy_label(t)));
    let followed_kept = reference_set(followed_before.iter().filter(|r| is_followed_row(r)))
        == reference_set(rows.references.iter().filter(|r| is_followed_row(r)));
    let period_kept = period == (referrer.clinical_date, referrer.clinical_end);
    // What it refers to was moved to another patient (a wrong-patient correction), or now
    // refers to several: it follows.
    let patient_kept = patient == referrer.patient_id;
    if !(labels_kept && followed_kept) {
        tx.replace_index(referrer.rid, &referrer.res_type, &rows)?;
    }
    if !period_kept {
        tx.set_clinical_period(referrer.rid, period.0, period.1)?;
    }
    if !patient_kept {
        tx.set_patient_id(referrer.rid, patient.as_deref())?;
    }
    Ok(!(labels_kept && period_kept && patient_kept && followed_kept))
}

/// Whether two lists of privacy labels hold the same labels, in any order.
fn same_labels<'a>(
    before: &[renkei_search::extract::TokenIndex],
    after: impl Iterator<Item = &'a renkei_search::extract::TokenIndex>,
) -> bool {
    let key = |t: &renkei_search::extract::TokenIndex| {
        (t.param.clone(), t.system.clone(), t.code.clone())
    };
    let before: HashSet<_> = before.iter().map(key).collect();
    let after: HashSet<_> = after.map(key).collect();
    before == after
}

/// A record's search-index rows with what consent reads beside them: the labels it takes on
/// ([`classify_record`]) and the references no search parameter indexes
/// ([`index::consent_references`]); for a document, the patient record it was found to be
/// about ([`index::document_patient_rows`]).
fn with_consent_rows(
    mut rows: IndexRows,
    res_type: &str,
    resource: &Value,
    inherited_labels: Vec<renkei_search::extract::TokenIndex>,
    followed: Vec<renkei_search::extract::ReferenceIndex>,
    patient: Option<&str>,
) -> IndexRows {
    rows.tokens.extend(inherited_labels);
    let unsearchable = index::consent_references(res_type, resource, &rows.references);
    rows.references.extend(unsearchable);
    let mut seen = HashSet::new();
    rows.references.extend(followed.into_iter().filter(|row| {
        seen.insert((
            row.param.clone(),
            row.target_type.clone(),
            row.target_id.clone(),
        ))
    }));
    rows.references
        .extend(index::document_patient_rows(res_type, resource, patient));
    rows
}

/// Whether the records a Bundle's entries refer to hold data of another patient than
/// `patient` (or data the writer may not see), and their privacy labels.
fn referred_by_entries(
    tx: &mut Tx<'_>,
    bundle: &Value,
    writer: &Visibility,
    patient: &str,
) -> Result<(bool, Vec<renkei_search::extract::TokenIndex>), RepoError> {
    let mut others = false;
    let mut labels = Vec::new();
    let references = index::local_references(bundle);
    for (target_type, target_id) in references.iter().take(MAX_REFERENCES_LOOKED_UP) {
        // Held as `classify_record` holds what it takes labels from.
        let Some(row) = tx.current_for_share(target_type, target_id)? else {
            continue;
        };
        let Some(target_patient) = row.patient_id.as_deref() else {
            continue;
        };
        if target_patient != patient || !tx.is_visible(&row, writer)? {
            others = true;
            continue;
        }
        index::add_labels(&mut labels, tx.privacy_labels(row.rid)?);
    }
    Ok((others, labels))
}

/// The holder's own Patient record that a Bundle's Patient entry stands for
/// ([`index::BundleSubject::Entry`]): the one record of the holder's that carries one of
/// the entry's identifiers (system and value as written) and, when the entry has a birth
/// date, the same birth date. The document then follows that patient's consent like the rest
/// of the holder's record of them. A record merged into another (`replaced-by`) gives way to
/// its survivor. None when no record or more than one matches (a family sharing an insurance
/// card without a birth date to tell them apart), or for a writer that holds nothing (a
/// trusted loader): the document stays its holder's alone.
fn document_patient(
    tx: &mut Tx<'_>,
    bundle: &Value,
    holder: Option<&str>,
) -> Result<Option<String>, RepoError> {
    let (Some(holder), Some(index::BundleSubject::Entry(patient))) =
        (holder, index::bundle_subject(bundle))
    else {
        return Ok(None);
    };
    let birth_date = patient.get("birthDate").and_then(Value::as_str);
    let identifiers = patient
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|identifier| {
            let system = identifier.get("system").and_then(Value::as_str)?;
            let value = identifier.get("value").and_then(Value::as_str)?;
            (!system.is_empty() && !value.is_empty()).then_some((system, value))
        })
        .take(MAX_DOCUMENT_IDENTIFIERS);
    let mut matched: Vec<String> = Vec::new();
    for (system, value) in identifiers {
        let mut params = vec![(
            "identifier".to_string(),
            format!("{}|{}", escape(system), escape(value)),
        )];
        if let Some(date) = birth_date {
            params.push(("birthdate".to_string(), format!("eq{date}")));
        }
        // An identifier or birth date the search syntax refuses matches nothing.
        let Ok(criteria) = Criteria::from_pairs("Patient", &params) else {
            continue;
        };
        for row in criteria
            .held_by(Some(holder))
            .resolve(tx, MAX_DOCUMENT_CANDIDATES)?
        {
            if !matched.contains(&row.res_id) {
                matched.push(row.res_id);
            }
        }
    }
    if matched.len() > 1 {
        // A duplicate merged into its survivor (ITI-104) still carries the identifier: when
        // the survivor matches too, it is the patient. A record merged into one that does
        // not match stays a candidate (another person may carry the identifier).
        let mut merged_into: Vec<(String, Vec<String>)> = Vec::new();
        for id in &matched {
            let survivors = match tx.current("Patient", id)?.and_then(|row| row.body) {
                Some(body) => serde_json::from_str::<Value>(&body)
                    .map(|patient| crate::identity::replaced_by(&patient).collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            merged_into.push((id.clone(), survivors));
        }
        let candidates = matched.clone();
        matched.retain(|id| {
            !merged_into.iter().any(|(merged, survivors)| {
                merged == id && survivors.iter().any(|s| s != id && candidates.contains(s))
            })
        });
    }
    Ok(match <[String; 1]>::try_from(matched) {
        Ok([id]) => Some(id),
        Err(_) => None,
    })
}

/// How many Patient records one identifier of a document's patient may match for the match
/// to be told apart (a survivor and the duplicates merged into it).
const MAX_DOCUMENT_CANDIDATES: usize = 4;

/// How many identifiers of a document's Patient entry are looked up.
const MAX_DOCUMENT_IDENTIFIERS: usize = 8;

/// How many references of a stored Bundle are looked up for the patients of its entries.
pub(crate) const MAX_REFERENCES_LOOKED_UP: usize = 32;

/// How many records a record that names no patient may refer to and still be about the
/// patient of what it refers to (a Provenance of a whole transaction can name hundreds); one
/// referring to more is its writer's alone.
const MAX_REFERRED_RECORDS_LOOKED_UP: usize = 1024;

/// Types whose records are never about a patient: a reference to one not stored yet leaves a
/// record that refers to it directory data. A reference to any other record not stored yet
/// keeps the record its writer's until it is written again.
const DIRECTORY_TYPES: [&str; 12] = [
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Location",
    "Endpoint",
    "HealthcareService",
    "Medication",
    "Substance",
    "Device",
    "ValueSet",
    "CodeSystem",
    "Questionnaire",
];

/// Checks that `resource` is a `res_type` resource; the body must name the type of the URL.
pub(crate) fn check_body_type(resource: &Value, res_type: &str) -> Result<(), RepoError> {
    check_type(res_type)?;
    let body_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if body_type != res_type {
        return Err(RepoError::BadRequest(format!(
            "the body is a {body_type} resource but the URL names {res_type}"
        )));
    }
    Ok(())
}

/// Stores a new version (first or next) of `res_type/id` and its index rows.
fn store_version(
    tx: &mut Tx<'_>,
    current: Option<&ResourceRow>,
    res_type: &str,
    id: &str,
    prepared: PreparedResource,
    method: &str,
    context: &WriteContext,
) -> Result<StoredResource, RepoError> {
    // A stored Bundle is content, not a request: its entries' conditional references are
    // what its author wrote and are never resolved against this server.
    if res_type != "Bundle" {
        check_no_conditional_references(prepared.resource())?;
    }
    check_not_subsetted(prepared.resource())?;
    let version = current.map_or(1, |row| row.version + 1);
    let last_updated = now_ms().max(current.map_or(0, |row| row.last_updated));
    let (resource, mut prepared_rows) = prepared.into_parts(res_type);
    let mut stamped = stamp(resource, id, version, last_updated);
    if res_type == "Patient" && crate::identity::strip_added_links(&mut stamped) {
        prepared_rows = None;
    }
    // The custodian is the facility that first stored the resource; later writers do not
    // take it over.
    let custodian = current
        .and_then(|row| row.custodian.clone())
        .or_else(|| context.custodian_for(&stamped));
    let classification = classify_record(
        tx,
        res_type,
        id,
        &stamped,
        &context.visibility,
        custodian.as_deref(),
    )?;
    let (clinical_date, clinical_end) = classification.period(res_type, &stamped);
    let Classification {
        patient,
        inherited_labels,
        followed,
        ..
    } = classification;
    context.check_may_record_consent(tx, current, res_type, patient.as_deref())?;
    context.check_may_merge(tx, res_type, &stamped)?;
    crate::meta::mark_custodian(&mut stamped, custodian.as_deref());
    let body = serde_json::to_string(&stamped)
        .map_err(|e| RepoError::BadRequest(format!("cannot serialize resource: {e}")))?;
    let consent_rules = consent_rules(res_type, id, &stamped)?;
    let new = NewVersion {
        res_type,
        res_id: id,
        version,
        last_updated,
        method,
        custodian: custodian.as_deref(),
        patient_id: patient.as_deref(),
        clinical_date,
        clinical_end,
        body: Some(&body),
    };
    let index_rows = with_consent_rows(
        prepared_rows.unwrap_or_else(|| index::rows(res_type, &stamped)),
        res_type,
        &stamped,
        inherited_labels,
        followed,
        patient.as_deref(),
    );
    let rid = match current {
        Some(row) => {
            let labels_before = tx.privacy_labels(row.rid)?;
            let references_before = tx.reference_rows(row.rid)?;
            tx.replace_current(row.rid, &new)?;
            tx.replace_index(row.rid, res_type, &index_rows)?;
            let labels_after = index_rows.tokens.iter().filter(|t| is_privacy_label(t));
            let period_moved =
                (row.clinical_date, row.clinical_end) != (clinical_date, clinical_end);
            let patient_moved = row.patient_id != patient;
            // What follows it refers through it to what it refers to.
            let references_moved = reference_set(references_before.iter())
                != reference_set(index_rows.references.iter());
            if !same_labels(&labels_before, labels_after)
                || period_moved
                || patient_moved
                || references_moved
            {
                relabel_referrers(tx, res_type, id, &context.visibility)?;
            }
            row.rid
        }
        None => {
            let rid = tx.insert_new(&new)?;
            tx.insert_index(rid, res_type, &index_rows)?;
            rid
        }
    };
    if let Some(rules) = consent_rules {
        tx.replace_consent_rules(rid, &format!("Consent/{id}"), &rules)?;
    }
    if res_type == "Patient" {
        let before = crate::identity::patient_written(tx, &context.linking, id, Some(&stamped))?;
        refuse_splitting_a_consented_person(tx, id, &before, context.custodian.as_deref())?;
    }
    Ok(StoredResource {
        custodian: custodian.clone(),
        patient_id: patient.clone(),
        res_type: res_type.into(),
        id: id.into(),
        version,
        last_updated,
        body,
    })
}

/// A resource marked `SUBSETTED` is part of one (a `_summary` or `_elements` answer): stored,
/// it would replace the whole record with that part, which the tag exists to prevent
/// (search.html#summary). Refused rather than stored with the tag.
fn check_not_subsetted(resource: &Value) -> Result<(), RepoError> {
    let subsetted = resource
        .pointer("/meta/tag")
        .and_then(Value::as_array)
        .is_some_and(|tags| {
            tags.iter().any(|tag| {
                tag.get("system").and_then(Value::as_str) == Some(renkei_fhir::SUBSETTED_SYSTEM)
                    && tag.get("code").and_then(Value::as_str) == Some(renkei_fhir::SUBSETTED_CODE)
            })
        });
    match subsetted {
        true => Err(RepoError::Unprocessable(
            "the resource is tagged SUBSETTED: it is part of a resource (a _summary or \
             _elements answer) and would replace the whole record; write the complete resource"
                .into(),
        )),
        false => Ok(()),
    }
}

/// A reference of the form `Type?criteria` left in a resource about to be stored. FHIR R4
/// defines conditional references only inside a transaction (http.html#trules), where the
/// Bundle code resolves them before the write; one that reaches the store was either sent
/// outside a transaction or searches a type no search can run on, and stored verbatim it
/// would be a reference to nothing.
fn check_no_conditional_references(value: &Value) -> Result<(), RepoError> {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match child {
                    Value::String(reference) if key == "reference" => {
                        check_not_conditional(reference)?;
                    }
                    other => check_no_conditional_references(other)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_no_conditional_references),
        _ => Ok(()),
    }
}

fn check_not_conditional(reference: &str) -> Result<(), RepoError> {
    let Some((res_type, _)) = reference.split_once('?') else {
        return Ok(());
    };
    // A query naming no type (`?identifier=…`) searches nothing: a reference to nothing.
    if res_type.is_empty() {
        return Err(RepoError::BadRequest(format!(
            "the conditional reference '{reference}' names no resource type to search; write \
             Type?criteria (in a transaction Bundle) or a literal reference (Type/id)"
        )));
    }
    // Only a relative `Type?…` is conditional: an absolute URL with a query, a `urn:` or a
    // local `#…` reference stays as written.
    if !res_type.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Ok(());
    }
    if renkei_fhir::is_resource_type(res_type) {
        Err(RepoError::BadRequest(format!(
            "the conditional reference '{reference}' can only be resolved in a transaction \
             Bundle (FHIR R4 http.html#trules); send a literal reference (Type/id) instead"
        )))
    } else {
        Err(RepoError::BadRequest(format!(
            "the conditional reference '{reference}' searches '{res_type}', which is not a FHIR \
             R4 resource type"
        )))
    }
}

/// The rules a Consent compiles to (`None` for other types). A Consent that cannot be
/// enforced exactly is refused (422) rather than stored with a meaning it does not have.
fn consent_rules(
    res_type: &str,
    id: &str,
    resource: &Value,
) -> Result<Option<Vec<renkei_store::ConsentRuleRow>>, RepoError> {
    if res_type != "Consent" {
        return Ok(None);
    }
    let rules = renkei_consent::compile(resource)
        .map_err(|e| RepoError::Unprocessable(format!("Consent/{id} cannot be enforced: {e}")))?;
    Ok(Some(
        rules
            .into_iter()
            .map(|rule| renkei_store::ConsentRuleRow {
                patient_id: rule.patient_id,
                permit: rule.effect == renkei_consent::Effect::Permit,
                nested: rule.nested,
                actor_org: rule.actor_org,
                actor_practitioner: rule.actor_practitioner,
                purpose: rule.purpose,
                valid_from: rule.valid_from_ms,
                valid_to: rule.valid_to_ms,
                class_type: rule.class_type,
                // Canonical already (`renkei_consent::compile`), as the index's token rows.
                label: rule.security_label,
                data_from: rule.data_from_ms,
                data_to: rule.data_to_ms,
                data_reference: rule.data_reference,
                data_related: rule.data_related,
                data_custodian: rule.data_custodian,
            })
            .collect(),
    ))
}

/// `POST [type]`, optionally conditional (`If-None-Exist`). The resource must already be
/// validated by the caller.
pub fn create(
    tx: &mut Tx<'_>,
    res_type: &str,
    resource: impl Into<PreparedResource>,
    if_none_exist: Option<&Criteria>,
    context: &WriteContext,
) -> Result<WriteOutcome, RepoError> {
    create_with_id(tx, res_type, resource, if_none_exist, context, None)
}

pub(crate) fn create_with_id(
    tx: &mut Tx<'_>,
    res_type: &str,
    resource: impl Into<PreparedResource>,
    if_none_exist: Option<&Criteria>,
    context: &WriteContext,
    assigned_id: Option<&str>,
) -> Result<WriteOutcome, RepoError> {
    let resource = resource.into();
    check_body_type(resource.resource(), res_type)?;
    if let Some(criteria) = if_none_exist {
        let found = criteria.resolve_for_write(tx, 2)?;
        match found.len() {
            0 => {}
            1 => {
                let row = found.into_iter().next().ok_or_else(|| {
                    RepoError::Conflict("conditional create: match vanished".into())
                })?;
                return Ok(WriteOutcome {
                    resource: StoredResource {
                        // The match is answered like a read of it: its AuditEvent names its
                        // patient and its holder sees it.
                        custodian: row.custodian,
                        patient_id: row.patient_id,
                        res_type: row.res_type,
                        id: row.res_id,
                        version: row.version,
                        last_updated: row.last_updated,
                        body: row.body.unwrap_or_default(),
                    },
                    created: false,
                    existing: true,
                    previous_patient: None,
                });
            }
            _ => {
                return Err(RepoError::PreconditionFailed(format!(
                    "If-None-Exist criteria match more than one {res_type}"
                )))
            }
        }
    }
    context.check_may_create(res_type)?;
    // Time-ordered ids keep the (type, id) unique index growing at its end.
    let id = assigned_id
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let resource = store_version(tx, None, res_type, &id, resource, "POST", context)?;
    Ok(WriteOutcome {
        resource,
        created: true,
        existing: false,
        previous_patient: None,
    })
}

/// `PUT [type]/[id]`: update, or create with the client's id when it does not exist.
pub fn update(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    resource: impl Into<PreparedResource>,
    if_match: Option<IfMatch>,
    context: &WriteContext,
) -> Result<WriteOutcome, RepoError> {
    let resource = resource.into();
    check_body_type(resource.resource(), res_type)?;
    match resource.resource().get("id").and_then(Value::as_str) {
        None => {
            return Err(RepoError::BadRequest(
                "an update must carry the resource id in the body".into(),
            ))
        }
        Some(body_id) if body_id != id => {
            return Err(RepoError::BadRequest(format!(
                "the body id '{body_id}' does not match the URL id '{id}'"
            )))
        }
        Some(_) => {}
    }
    check_id(id)?;
    write_version(tx, res_type, id, resource, if_match, "PUT", context)
}

/// `resource` without what the server writes itself on every version (`meta.versionId`,
/// `meta.lastUpdated`): a patch of those alone changes nothing that is stored.
fn without_server_meta(resource: &Value) -> Value {
    let mut copy = resource.clone();
    if let Some(meta) = copy.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            if let Some(object) = copy.as_object_mut() {
                object.remove("meta");
            }
        }
    }
    copy
}

/// The number of a version id as this server writes it (`1`, `2`, …). A version id is
/// compared as text: `01` or `+1` names no version, though it reads as the number 1.
fn version_number(version: &str) -> Option<i64> {
    version
        .parse::<i64>()
        .ok()
        .filter(|number| number.to_string() == version)
}

/// The patient a record was about before a write that moved it to another or to none.
fn moved_from(before: Option<&ResourceRow>, after: &StoredResource) -> Option<String> {
    before
        .filter(|row| !row.deleted)
        .and_then(|row| row.patient_id.clone())
        .filter(|patient| after.patient_id.as_ref() != Some(patient))
}

/// A logical id from a URL that addresses a resource to change: anything else is a malformed
/// request (400), not an absent resource.
pub fn check_id(id: &str) -> Result<(), RepoError> {
    if is_valid_id(id) {
        return Ok(());
    }
    Err(RepoError::BadRequest(format!(
        "'{id}' is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)"
    )))
}

fn write_version(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    resource: PreparedResource,
    if_match: Option<IfMatch>,
    method: &str,
    context: &WriteContext,
) -> Result<WriteOutcome, RepoError> {
    let current = tx.current_for_update(res_type, id)?;
    if let Some(row) = &current {
        // Hidden under an `If-Match` answers as missing does (412), so it cannot probe.
        context
            .check_may_modify(tx, row)
            .map_err(|e| precondition::absent_under_if_match(if_match, e))?;
    }
    check_if_match(current.as_ref(), if_match, res_type, id)?;
    let created = current.as_ref().is_none_or(|row| row.deleted);
    if created {
        context.check_may_create(res_type)?;
    }
    let resource = store_version(
        tx,
        current.as_ref(),
        res_type,
        id,
        resource,
        method,
        context,
    )?;
    Ok(WriteOutcome {
        previous_patient: moved_from(current.as_ref(), &resource),
        resource,
        created,
        existing: false,
    })
}

fn check_if_match(
    current: Option<&ResourceRow>,
    if_match: Option<IfMatch>,
    res_type: &str,
    id: &str,
) -> Result<(), RepoError> {
    let Some(if_match) = if_match else {
        return Ok(());
    };
    match current {
        Some(row) if !row.deleted && if_match.admits(row.version, row.last_updated) => Ok(()),
        Some(row) if !row.deleted => Err(RepoError::PreconditionFailed(format!(
            "{}: {if_match} does not hold for {res_type}/{id}: the current version is W/\"{}\", last modified {}",
            if_match.header(),
            row.version,
            crate::meta::format_instant(row.last_updated)
        ))),
        _ if !if_match.requires_current() => Ok(()),
        _ => Err(precondition::absent(if_match, res_type, id)),
    }
}

/// `PUT [type]?criteria`.
pub fn conditional_update(
    tx: &mut Tx<'_>,
    criteria: &Criteria,
    resource: impl Into<PreparedResource>,
    if_match: Option<IfMatch>,
    context: &WriteContext,
) -> Result<WriteOutcome, RepoError> {
    conditional_update_with_id(tx, criteria, resource, if_match, context, None)
}

/// `PUT [type]?criteria`; when nothing matches and the body has no id, the new resource gets
/// `assigned_id` (a transaction fixes it beforehand so references to the entry resolve).
/// With an `assigned_id`, a match that appeared meanwhile (another entry of the transaction
/// created it) is a conflict: references were already resolved to the assigned id.
pub(crate) fn conditional_update_with_id(
    tx: &mut Tx<'_>,
    criteria: &Criteria,
    resource: impl Into<PreparedResource>,
    if_match: Option<IfMatch>,
    context: &WriteContext,
    assigned_id: Option<&str>,
) -> Result<WriteOutcome, RepoError> {
    let mut resource = resource.into();
    check_body_type(resource.resource(), &criteria.res_type)?;
    let found = criteria
        .clone()
        .held_by(context.custodian.as_deref())
        .resolve_for_write(tx, 2)?;
    let body_id = resource
        .resource()
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string);
    match found.as_slice() {
        // An `If-Match` asks to change a resource that exists: with none matching, this is
        // no update that may create one.
        [] if if_match.is_some_and(IfMatch::requires_current) => Err(RepoError::PreconditionFailed(format!(
            "If-Match requires a current {} matching the criteria, and none matches",
            criteria.res_type
        ))),
        [] => match body_id {
            Some(id) => {
                // A resource the criteria do not match is not this update's to replace (R5
                // http.html#cond-update makes it explicit: 409); an upsert by identifier
                // must never overwrite an unrelated record.
                if let Some(row) = tx
                    .current(&criteria.res_type, &id)?
                    .filter(|row| !row.deleted)
                {
                    // A writer who may not see it learns no more than a read would tell it
                    // (404), not that it exists (CONSENT.md, Ownership).
                    check_visible(tx, &row, &context.visibility)?;
                    return Err(RepoError::Conflict(format!(
                        "the conditional update matched no {t}, and the body's id names {t}/{id}, which exists and does not match the criteria; update it by id, or leave the id out to create a new {t}",
                        t = criteria.res_type
                    )));
                }
                update(tx, &criteria.res_type, &id, resource, if_match, context)
            }
            None => create_with_id(
                tx,
                &criteria.res_type,
                resource,
                None,
                context,
                assigned_id,
            ),
        },
        [row] if assigned_id.is_some_and(|id| id != row.res_id) => {
            Err(RepoError::Conflict(format!(
                "the conditional update matched no {} when the transaction began, but matches {}/{} now (created by another entry of the transaction)",
                criteria.res_type, criteria.res_type, row.res_id
            )))
        }
        [row] => {
            if let Some(id) = &body_id {
                if id != &row.res_id {
                    return Err(RepoError::BadRequest(format!(
                        "the body id '{id}' differs from the matching resource '{}'",
                        row.res_id
                    )));
                }
            }
            // The id is not an index row: prepared rows stay valid.
            if let Value::Object(map) = &mut resource.resource {
                map.insert("id".into(), Value::String(row.res_id.clone()));
            }
            let id = row.res_id.clone();
            update(tx, &criteria.res_type, &id, resource, if_match, context)
        }
        _ => Err(RepoError::PreconditionFailed(format!(
            "the criteria match more than one {}",
            criteria.res_type
        ))),
    }
}

/// `PATCH [type]/[id]`: applies the patch to the current version, validates, stores.
pub fn patch(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    body: &PatchBody,
    if_match: Option<IfMatch>,
    context: &WriteContext,
) -> Result<WriteOutcome, RepoError> {
    check_type(res_type)?;
    let current = tx.current_for_update(res_type, id)?;
    let row = match &current {
        Some(row) if !row.deleted => row,
        Some(row) => {
            return Err(precondition::absent_under_if_match(
                if_match,
                RepoError::Gone {
                    res_type: res_type.into(),
                    id: id.into(),
                    version: row.version,
                },
            ))
        }
        None => {
            return Err(precondition::absent_under_if_match(
                if_match,
                RepoError::NotFound {
                    res_type: res_type.into(),
                    id: id.into(),
                },
            ))
        }
    };
    // A record hidden from the writer is "not found": under an `If-Match` it answers 412
    // like a missing one, so the header cannot probe for hidden records.
    context
        .check_may_modify(tx, row)
        .map_err(|e| precondition::absent_under_if_match(if_match, e))?;
    check_if_match(Some(row), if_match, res_type, id)?;
    let mut value: Value = serde_json::from_str(row.body.as_deref().unwrap_or("{}"))
        .map_err(|e| RepoError::Store(StoreError::Unavailable(format!("corrupt row: {e}"))))?;
    let before = value.clone();
    match body {
        PatchBody::JsonPatch(ops) => renkei_fhirpath::apply_json_patch(&mut value, ops),
        PatchBody::FhirPathPatch(params) => {
            renkei_fhirpath::apply_fhirpath_patch(&mut value, params)
        }
    }
    .map_err(|e| match e {
        // A malformed patch document (an operation part given twice, an unknown operation
        // type) is a bad request; 422 is for a well-formed patch this resource cannot take.
        renkei_fhirpath::PatchError::Invalid(_) => RepoError::BadRequest(format!("{e}")),
        _ => RepoError::Unprocessable(format!("the patch cannot be applied: {e}")),
    })?;
    // A patch that changes nothing (`[]`, only `test` operations, an empty Parameters)
    // answers the current version rather than storing an identical one: FHIR lets a server
    // skip the version when nothing changed, and a history of copies tells readers nothing.
    if without_server_meta(&value) == without_server_meta(&before) {
        return Ok(WriteOutcome {
            resource: stored(row.clone(), row.body.clone().unwrap_or_default()),
            created: false,
            existing: false,
            previous_patient: None,
        });
    }
    if value.get("resourceType").and_then(Value::as_str) != Some(res_type)
        || value.get("id").and_then(Value::as_str) != Some(id)
    {
        return Err(RepoError::Unprocessable(
            "a patch may not change the resource type or id".into(),
        ));
    }
    renkei_fhir::validate(&value)?;
    let resource = store_version(
        tx,
        current.as_ref(),
        res_type,
        id,
        value.into(),
        "PATCH",
        context,
    )?;
    Ok(WriteOutcome {
        previous_patient: moved_from(current.as_ref(), &resource),
        resource,
        created: false,
        existing: false,
    })
}

/// Resolves `Type?criteria` to exactly one id for conditional patch, among the records the
/// writer holds ([`Criteria::held_by`]).
pub fn resolve_single(
    tx: &mut Tx<'_>,
    criteria: &Criteria,
    context: &WriteContext,
) -> Result<String, RepoError> {
    let found = criteria
        .clone()
        .held_by(context.custodian.as_deref())
        .resolve_for_write(tx, 2)?;
    match found.as_slice() {
        [] => Err(RepoError::NotFound {
            res_type: criteria.res_type.clone(),
            id: "(no match for the criteria)".into(),
        }),
        [row] => Ok(row.res_id.clone()),
        _ => Err(RepoError::PreconditionFailed(format!(
            "the criteria match more than one {}",
            criteria.res_type
        ))),
    }
}

/// `DELETE [type]/[id]`: a logical delete; history keeps every version.
pub fn delete(
    tx: &mut Tx<'_>,
    res_type: &str,
    id: &str,
    if_match: Option<IfMatch>,
    context: &WriteContext,
) -> Result<DeleteOutcome, RepoError> {
    check_type(res_type)?;
    check_id(id)?;
    let current = tx.current_for_update(res_type, id)?;
    // An `If-Match` on nothing to delete fails its precondition (412) instead of answering
    // a delete of nothing.
    let nothing = || match if_match {
        Some(if_match) if if_match.requires_current() => {
            Err(precondition::absent(if_match, res_type, id))
        }
        _ => Ok(DeleteOutcome::NothingToDelete),
    };
    let Some(row) = current.filter(|row| !row.deleted) else {
        return nothing();
    };
    match context.check_may_modify(tx, &row) {
        // Hidden from the writer: answered as a delete of nothing (204), exactly as when no
        // such resource exists, so a DELETE cannot probe for hidden records.
        Err(RepoError::NotFound { .. }) => return nothing(),
        checked => checked?,
    }
    check_if_match(Some(&row), if_match, res_type, id)?;
    if res_type == "Patient" {
        refuse_deleting_a_consented_record(tx, id, context.custodian.as_deref())?;
    }
    let version = row.version + 1;
    let (tombstone_rows, (clinical_date, clinical_end)) = tombstone(
        tx,
        row.rid,
        res_type,
        row.body.as_deref(),
        row.patient_id.as_deref(),
    )?;
    // A record dated by the care it refers to keeps that date (its body gives none).
    let (clinical_date, clinical_end) = match (clinical_date, clinical_end) {
        (None, None) => (row.clinical_date, row.clinical_end),
        own => own,
    };
    let new = NewVersion {
        res_type,
        res_id: id,
        version,
        last_updated: now_ms().max(row.last_updated),
        method: "DELETE",
        custodian: row.custodian.as_deref(),
        patient_id: row.patient_id.as_deref(),
        clinical_date,
        clinical_end,
        body: None,
    };
    tx.replace_current(row.rid, &new)?;
    if res_type == "Consent" {
        tx.replace_consent_rules(row.rid, &format!("Consent/{id}"), &[])?;
    }
    tx.replace_index(row.rid, res_type, &tombstone_rows)?;
    if res_type == "Patient" {
        let before = crate::identity::patient_written(tx, &context.linking, id, None)?;
        // The deleted record's own leaving is refused above; here, any other record a
        // delete takes out of a person (one it bridged to the rest).
        let others: crate::identity::PersonsBefore = before
            .into_iter()
            .filter(|(record, _)| record != id)
            .collect();
        refuse_splitting_a_consented_person(tx, id, &others, context.custodian.as_deref())?;
    }
    Ok(DeleteOutcome::Deleted {
        version,
        target: format!("{res_type}/{id}"),
        patient_id: row.patient_id,
        custodian: row.custodian,
    })
}

/// What consent decides a record on stays with its tombstone, so a deleted record stays
/// exactly as hidden as it was (404, not a 410 that tells who could not see it that it
/// existed): its patient (kept on the row), its care period (a refusal of a period), the
/// records it refers to (a refusal of a record "and everything related"), and its privacy
/// labels (a `PSY` or `UNDELIVERED` record), the ones it took on from others included, read
/// from record `rid`'s index rows. Searches never match a deleted record, so no other index
/// row is kept. `last_body` is the record's last version before the delete.
fn tombstone(
    tx: &mut Tx<'_>,
    rid: i64,
    res_type: &str,
    last_body: Option<&str>,
    patient: Option<&str>,
) -> Result<(IndexRows, CarePeriod), RepoError> {
    let last_version = last_body.and_then(|body| serde_json::from_str::<Value>(body).ok());
    let references = last_version
        .as_ref()
        .map(|value| {
            with_consent_rows(
                index::rows(res_type, value),
                res_type,
                value,
                Vec::new(),
                Vec::new(),
                patient,
            )
            .references
        })
        .unwrap_or_default();
    // What it followed stays followed: its tombstone is decided as the record was.
    let references = references
        .into_iter()
        .chain(tx.reference_rows(rid)?.into_iter().filter(is_followed_row))
        .collect();
    let rows = IndexRows {
        references,
        tokens: tx.privacy_labels(rid)?,
        ..IndexRows::default()
    };
    let period = last_version
        .as_ref()
        .map_or((None, None), |value| care_period(res_type, value));
    Ok((rows, period))
}

/// A record's clinical date and, for a period, its end (see `clinical_end` in the store).
type CarePeriod = (Option<i64>, Option<i64>);

fn care_period(res_type: &str, resource: &Value) -> CarePeriod {
    (
        renkei_consent::clinical_date_ms(res_type, resource),
        renkei_consent::clinical_end_ms(res_type, resource),
    )
}

/// No record leaves a person whose consent is in force by a Patient write: not the written
/// record ([`refuse_leaving_with_a_consent`]), and not another facility's record either,
/// which a new record can pair off (a record given to the year only, `1970`, joins the first
/// record of a date it contains, so a `1970-05-05` record sorting first would take it from a
/// `1970-01-01` one) or a merge can take along. Another holder's records are not named.
fn refuse_splitting_a_consented_person(
    tx: &mut Tx<'_>,
    id: &str,
    before: &crate::identity::PersonsBefore,
    writer: Option<&str>,
) -> Result<(), RepoError> {
    for (record, members) in before {
        if record == id {
            refuse_leaving_with_a_consent(tx, id, members, writer)?;
            continue;
        }
        let left = left_behind(tx, record, members)?;
        if left.is_empty() {
            continue;
        }
        for consented in std::iter::once(record.as_str()).chain(left.iter().copied()) {
            if !tx.consents_in_force_on(consented, 1)?.is_empty() {
                return Err(RepoError::Conflict(
                    "this change would take another Patient record out of a person whose \
                     consent is in force (the consent would stop applying to some of their \
                     records): an administrator reviews the link ($link, $unlink) first"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

/// A Patient record does not leave the person it was linked to by a change of its identifiers
/// or birth date while a Consent in force names it or a record it leaves: the patient's
/// decision recorded there (a refusal, say) would stop applying to the records on one side,
/// as on a delete ([`refuse_deleting_a_consented_record`]). A wrong link is undone by an
/// administrator (`$unlink`), who sees the consents to review.
fn refuse_leaving_with_a_consent(
    tx: &mut Tx<'_>,
    id: &str,
    before: &[String],
    writer: Option<&str>,
) -> Result<(), RepoError> {
    if before.is_empty() {
        return Ok(());
    }
    let left = left_behind(tx, id, before)?;
    if left.is_empty() {
        return Ok(());
    }
    refuse_if_consented(
        tx,
        id,
        &left,
        writer,
        "this change takes it out of the person it is linked to",
        "withdraw the consent first, or have an administrator unlink the records ($unlink)",
    )
}

/// The members of `record`'s person `before` a write that are no longer in its person.
fn left_behind<'b>(
    tx: &mut Tx<'_>,
    record: &str,
    before: &'b [String],
) -> Result<Vec<&'b str>, RepoError> {
    let after = tx.person_members(record)?;
    Ok(before
        .iter()
        .filter(|member| *member != record && !after.contains(member))
        .map(String::as_str)
        .collect())
}

/// A Patient record is not deleted while a Consent in force names it or another record of
/// its person: the deleted record leaves the person, and the patient's decision recorded on
/// one side (a refusal, say) would stop applying to the records on the other (CONSENT.md
/// rule 5). The Consent is the patient's; it is withdrawn, or recorded on another record of
/// theirs, or an administrator unlinks the record ($unlink), first.
fn refuse_deleting_a_consented_record(
    tx: &mut Tx<'_>,
    id: &str,
    writer: Option<&str>,
) -> Result<(), RepoError> {
    let members = tx.person_members(id)?;
    let others: Vec<&str> = members
        .iter()
        .filter(|member| *member != id)
        .map(String::as_str)
        .collect();
    refuse_if_consented(
        tx,
        id,
        &others,
        writer,
        "a Patient record of a person whose consent is in force is not deleted",
        "withdraw the consent, record it on another of their records, or have an administrator \
         unlink this record ($unlink), first",
    )
}

/// 409 when a Consent in force names Patient `id` or one of `others`, the records of its
/// person `change` would separate it from: the patient's decision would stop applying to
/// some of their records; `remedy` says what to do instead.
fn refuse_if_consented(
    tx: &mut Tx<'_>,
    id: &str,
    others: &[&str],
    writer: Option<&str>,
    change: &str,
    remedy: &str,
) -> Result<(), RepoError> {
    // Only the writer's own Consents are named: it may not read another facility's.
    let named = match writer {
        Some(writer) => tx.consents_in_force_on_held_by(id, writer, 3)?,
        None => tx.consents_in_force_on(id, 3)?,
    };
    if !named.is_empty() {
        return Err(RepoError::Conflict(format!(
            "Patient/{id} is named by {} in force, and {change} (the consent would stop \
             applying to the rest of their records): {remedy}",
            named.join(", ")
        )));
    }
    for record in std::iter::once(id).chain(others.iter().copied()) {
        if !tx.consents_in_force_on(record, 1)?.is_empty() {
            return Err(RepoError::Conflict(format!(
                "the patient's consent is in force on Patient/{id} or another record of its \
                 person, and {change} (the consent would stop applying to some of their \
                 records): the patient withdraws it, or an administrator reviews the link \
                 ($unlink), first"
            )));
        }
    }
    Ok(())
}

/// `DELETE [type]?criteria`: deletes the single match (412 when several match).
pub fn conditional_delete(
    tx: &mut Tx<'_>,
    criteria: &Criteria,
    if_match: Option<IfMatch>,
    context: &WriteContext,
) -> Result<DeleteOutcome, RepoError> {
    let found = criteria
        .clone()
        .held_by(context.custodian.as_deref())
        .resolve_for_write(tx, 2)?;
    match found.as_slice() {
        // A precondition that needs a current resource fails on nothing to delete (412), as
        // a delete by id does.
        [] => match if_match.filter(|m| m.requires_current()) {
            Some(if_match) => Err(RepoError::PreconditionFailed(format!(
                "{}: {if_match} requires a current {}, and the criteria match none",
                if_match.header(),
                criteria.res_type
            ))),
            None => Ok(DeleteOutcome::NothingToDelete),
        },
        [row] => {
            let id = row.res_id.clone();
            delete(tx, &criteria.res_type, &id, if_match, context)
        }
        _ => Err(RepoError::PreconditionFailed(format!(
            "the criteria match more than one {}",
            criteria.res_type
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::meta::mark_custodian;

    #[test]
    fn a_span_of_care_periods_holds_each_of_them() {
        let none = (None, None);
        assert_eq!(spanning(none, (Some(5), None)), (Some(5), None));
        assert_eq!(spanning((Some(5), None), none), (Some(5), None));
        assert_eq!(spanning((Some(5), None), (Some(5), None)), (Some(5), None));
        assert_eq!(
            spanning((Some(5), None), (Some(2), None)),
            (Some(2), Some(5))
        );
        assert_eq!(
            spanning((Some(5), Some(9)), (Some(2), Some(3))),
            (Some(2), Some(9))
        );
        assert_eq!(
            spanning((Some(5), Some(i64::MAX)), (Some(7), None)),
            (Some(5), Some(i64::MAX))
        );
        // A period known only by its end reaches back to an unknown start.
        assert_eq!(spanning((None, Some(4)), (Some(2), None)), (None, Some(4)));
    }

    #[test]
    fn a_source_names_its_facility_whatever_follows_its_path() {
        for source in [
            "http://h.example/facility/hosp-a",
            "http://h.example/facility/hosp-a#req-1",
            "http://h.example/facility/hosp-a?x=1",
            "http://h.example/facility/hosp-a/",
        ] {
            assert_eq!(
                super::facility_of_source(source),
                Some("hosp-a"),
                "{source}"
            );
        }
        assert_eq!(
            super::facility_of_source("http://h.example/facility/"),
            None
        );
        assert_eq!(
            super::facility_of_source("http://h.example/other/hosp-a"),
            None
        );
    }

    /// Rows extracted before the write (from the body as received) must equal the rows of the
    /// version as stored (stamped with id, versionId, lastUpdated and the custodian).
    #[test]
    fn prepared_rows_match_the_stored_version() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/r4-examples");
        let mut checked = 0;
        let mut with_rows = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures/r4-examples") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            let Ok(mut received) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let Some(res_type) = received["resourceType"].as_str().map(str::to_string) else {
                continue;
            };
            // What a client sends may carry its own meta; the store replaces parts of it.
            if let Some(meta) = received.get_mut("meta").and_then(Value::as_object_mut) {
                meta.insert("versionId".into(), Value::String("client".into()));
            }
            let (received, prepared_rows) = PreparedResource::new(received).into_parts(&res_type);
            let mut stamped = stamp(received, "stored-id", 7, 1_700_000_000_123);
            mark_custodian(&mut stamped, Some("Organization/holder"));
            let stored_rows = index::rows(&res_type, &stamped);
            let prepared_rows = prepared_rows.expect("rows extracted for the body's own type");
            assert_eq!(
                prepared_rows,
                stored_rows,
                "{}: rows differ once stamped",
                path.display()
            );
            checked += 1;
            with_rows += usize::from(!stored_rows.is_empty());
        }
        assert!(checked > 250, "only {checked} examples read");
        assert!(with_rows > 200, "only {with_rows} examples have index rows");
    }

    #[test]
    fn rows_prepared_for_another_type_are_not_used() {
        let patient = serde_json::json!({"resourceType": "Patient", "gender": "male"});
        let (_, rows) = PreparedResource::new(patient.clone()).into_parts("Observation");
        assert!(rows.is_none());
        let (_, rows) = PreparedResource::new(patient.clone()).into_parts("Patient");
        assert_eq!(rows, Some(index::rows("Patient", &patient)));
        let (_, rows) = PreparedResource::from(patient).into_parts("Patient");
        assert!(rows.is_none(), "a plain body is extracted inside the write");
    }
}
