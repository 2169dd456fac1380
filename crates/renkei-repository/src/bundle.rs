//! `batch` and `transaction` Bundles posted to the base URL.
//!
//! A transaction runs every entry through the same interaction functions as single requests,
//! inside one store transaction, in the order the specification prescribes (DELETE, POST,
//! PUT/PATCH, GET), after assigning ids to new resources and rewriting `urn:uuid:` and
//! conditional references.

use crate::criteria::Criteria;
use crate::index::full_url_base;
use crate::interactions::{
    self, DeleteOutcome, PatchBody, PreparedResource, Repository, StoredResource, WriteContext,
};
use crate::meta::format_instant;
use crate::precondition::{self, IfMatch};
use crate::RepoError;
use renkei_store::Tx;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Transactions with more entries than this commit on their own rather than sharing a group
/// commit with concurrent writes (see `Repository::write_large`).
const MAX_SHARED_COMMIT_ENTRIES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Batch,
    Transaction,
}

/// One parsed `Bundle.entry.request`.
#[derive(Debug, Clone)]
pub struct EntryRequest {
    pub method: String,
    pub url: String,
    pub full_url: Option<String>,
    pub resource: Option<Value>,
    pub if_match: Option<IfMatch>,
    pub if_none_exist: Option<String>,
    /// Why the entry is not valid (its resource is no valid FHIR, its fullUrl names another
    /// resource), as OperationOutcome issues: a batch entry that fails on its own.
    pub invalid: Option<Vec<Value>>,
    /// `request.ifNoneMatch` of a read: the version the client already has.
    pub if_none_match: Option<i64>,
    /// `request.ifModifiedSince` of a read (epoch ms): when the client's copy was current.
    pub if_modified_since: Option<i64>,
}

/// Work done for a Bundle before its write begins, so it does not run in the writer section:
/// the ids new resources will get, and each POST/PUT body rewritten as the transaction is
/// expected to rewrite it, with its index rows. Inside the transaction a body's prepared rows
/// are used only if the body the transaction actually produced is identical
/// ([`PreparedResource::reusing`]); a conditional entry or reference can resolve differently
/// there, and such bodies are simply extracted inside.
struct Prepared {
    new_ids: Vec<String>,
    bodies: Vec<Option<PreparedResource>>,
}

impl Prepared {
    fn speculate(entries: &[EntryRequest], kind: BundleKind) -> Prepared {
        let new_ids: Vec<String> = entries
            .iter()
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        // fullUrl → Type/id for the entries whose identity needs no database lookup. Only a
        // transaction resolves references between its entries; a batch leaves them as written.
        let mut ids = EntryIds::default();
        let linked: &[EntryRequest] = if kind == BundleKind::Transaction {
            entries
        } else {
            &[]
        };
        for (entry, new_id) in linked.iter().zip(&new_ids) {
            let (reference, version) = match (entry.method.as_str(), parse_target(&entry.url)) {
                ("POST", Ok(Target::Type(t))) if entry.if_none_exist.is_none() => {
                    (format!("{t}/{new_id}"), Some(1))
                }
                ("PUT", Ok(Target::Instance(t, id))) => (format!("{t}/{id}"), None),
                _ => continue,
            };
            if let Some(full_url) = &entry.full_url {
                ids.insert(full_url.clone(), reference, version);
            }
        }
        let bodies = entries
            .iter()
            .map(|entry| {
                if !matches!(entry.method.as_str(), "POST" | "PUT") {
                    return None;
                }
                let mut resource = entry.resource.clone()?;
                let base = full_url_base(entry.full_url.as_deref());
                rewrite_references(&mut resource, &ids, &mut |reference| {
                    if is_conditional_reference(reference) {
                        return Err(RepoError::BadRequest("resolved in the transaction".into()));
                    }
                    resolve_in_bundle(reference, &ids, base)
                })
                .ok()?;
                Some(PreparedResource::new(resource))
            })
            .collect();
        Prepared { new_ids, bodies }
    }

    /// The id fixed beforehand for entry `index`, should it create a resource.
    fn new_id(&self, index: usize) -> String {
        self.new_ids
            .get(index)
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
    }

    fn body(&self, index: usize) -> Option<&PreparedResource> {
        self.bodies.get(index).and_then(Option::as_ref)
    }
}

/// The parsed target of an entry URL.
#[derive(Debug, Clone)]
enum Target {
    Type(String),
    Instance(String, String),
    Version(String, String, String),
    Conditional(Criteria),
}

/// What an entry produced, rendered into the response Bundle.
#[derive(Debug, Clone)]
struct EntryResult {
    status: &'static str,
    resource: Option<StoredResource>,
    /// A read (GET): its resource is the answer, whatever `Prefer` says about writes.
    is_read: bool,
    /// The version a DELETE entry made (its response's ETag).
    deleted_version: Option<i64>,
}

/// What is left of the bytes of resources one Bundle's response may carry
/// (`RepositoryOptions::max_bundle_response_bytes`): reads by id of a large resource, repeated,
/// would otherwise build a response of any size in memory.
#[derive(Debug, Clone, Copy)]
struct ResponseBudget {
    left: usize,
    limit: usize,
}

impl ResponseBudget {
    fn new(limit: usize) -> ResponseBudget {
        ResponseBudget { left: limit, limit }
    }

    fn exhausted(&self) -> bool {
        self.left == 0
    }

    /// The bytes `result` adds to the response when rendered with `return_resources`, or
    /// `Err(TooCostly)` for a read whose resource no longer fits (a read answers with its
    /// resource or not at all). A write that no longer fits answers without its resource, as
    /// with `Prefer: return=minimal` (see [`ResponseBudget::fits`]).
    fn cost(&self, result: &EntryResult, return_resources: bool) -> Result<usize, RepoError> {
        let Some(resource) = &result.resource else {
            return Ok(0);
        };
        let included = result.is_read || (return_resources && !result.status.starts_with("304"));
        if !included {
            return Ok(0);
        }
        let size = resource.body.len();
        if size > self.left && result.is_read {
            return Err(self.too_costly());
        }
        Ok(size)
    }

    /// Whether a resource of `size` bytes still fits.
    fn fits(&self, size: usize) -> bool {
        size <= self.left
    }

    fn spend(&mut self, size: usize) {
        self.left = self.left.saturating_sub(size);
    }

    fn too_costly(&self) -> RepoError {
        RepoError::TooCostly(format!(
            "the resources of this Bundle's response would exceed {} bytes \
             (max_bundle_response_bytes): read them in smaller Bundles",
            self.limit
        ))
    }
}

/// Called inside the database transaction that commits the response entries starting at
/// index `first` (all entries of a transaction, one entry of a batch): the audit trail of what
/// a Bundle changed commits with the change, or neither does.
pub type CommitHook<'a> = &'a dyn Fn(&mut Tx<'_>, usize, &[Value]) -> Result<(), RepoError>;

/// A [`CommitHook`] that records nothing (trusted loaders).
pub fn no_commit_hook(_: &mut Tx<'_>, _: usize, _: &[Value]) -> Result<(), RepoError> {
    Ok(())
}

impl Repository {
    /// Processes a `batch` or `transaction` Bundle and returns the response Bundle.
    /// `return_resources` includes each stored resource in its response entry; `on_commit`
    /// runs inside every committing transaction with the entries it commits.
    pub fn process_bundle(
        &self,
        bundle: &Value,
        context: &WriteContext,
        return_resources: bool,
        on_commit: CommitHook<'_>,
    ) -> Result<Value, RepoError> {
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            Some(other) => {
                return Err(RepoError::BadRequest(format!(
                    "a Bundle posted to the base must be a batch or transaction, not '{other}'"
                )))
            }
            None => return Err(RepoError::BadRequest("the Bundle has no type".into())),
        };
        let entries = parse_entries(bundle, kind)?;
        // Before the write: index rows extracted here run beside other writes.
        let prepared = Prepared::speculate(&entries, kind);
        let limit = self.max_bundle_response_bytes();
        let responses = match kind {
            BundleKind::Transaction => {
                let work = |tx: &mut Tx<'_>| {
                    // A transaction answers all or nothing: one that would answer with too
                    // much fails as a whole, as soon as it is known.
                    let mut budget = ResponseBudget::new(limit);
                    let rendered: Vec<Value> = run_transaction(
                        tx,
                        &entries,
                        context,
                        &prepared,
                        &mut |result: &EntryResult| match budget.cost(result, return_resources)? {
                            size if budget.fits(size) => {
                                budget.spend(size);
                                Ok(())
                            }
                            _ => Err(budget.too_costly()),
                        },
                    )?
                    .iter()
                    .map(|r| render_entry(r, return_resources))
                    .collect();
                    on_commit(tx, 0, &rendered)?;
                    Ok(rendered)
                };
                if entries.len() > MAX_SHARED_COMMIT_ENTRIES {
                    self.write_large(work)?
                } else {
                    self.write(work)?
                }
            }
            BundleKind::Batch => {
                // A batch's entries fail one by one: once the budget is spent, each further
                // read fails with too-costly without running, and writes still run but answer
                // without their resource.
                let mut budget = ResponseBudget::new(limit);
                entries
                    .iter()
                    .enumerate()
                    .map(|(index, entry)| {
                        if let Some(issues) = &entry.invalid {
                            return failed_entry("400 Bad Request", issues.clone());
                        }
                        if budget.exhausted() && matches!(entry.method.as_str(), "GET" | "HEAD") {
                            return render_failure(&budget.too_costly());
                        }
                        let result = self.write(|tx| {
                            let mut ids = EntryIds::default();
                            let result = run_entry(
                                tx,
                                entry.clone(),
                                &mut ids,
                                context,
                                prepared.body(index),
                            )?;
                            let size = budget.cost(&result, return_resources)?;
                            let (rendered, size) = if budget.fits(size) {
                                (render_entry(&result, return_resources), size)
                            } else {
                                (render_entry(&result, false), 0)
                            };
                            on_commit(tx, index, std::slice::from_ref(&rendered))?;
                            Ok((rendered, size))
                        });
                        match result {
                            Ok((rendered, size)) => {
                                budget.spend(size);
                                rendered
                            }
                            Err(e) => render_failure(&e),
                        }
                    })
                    .collect::<Vec<_>>()
            }
        };
        let mut response = json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "type": match kind {
                BundleKind::Batch => "batch-response",
                BundleKind::Transaction => "transaction-response",
            },
        });
        // FHIR JSON leaves an empty list out.
        if !responses.is_empty() {
            response["entry"] = Value::Array(responses);
        }
        Ok(response)
    }

    /// Stores every resource of a `collection` (or searchset/document) Bundle in one
    /// transaction: entries with an id are written with that id (update-as-create), the
    /// others get a server id.
    pub fn import_collection(
        &self,
        bundle: &Value,
        context: &WriteContext,
    ) -> Result<Vec<StoredResource>, RepoError> {
        let resources: Vec<Value> = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e.get("resource").cloned())
                    .collect()
            })
            .unwrap_or_default();
        self.import_resources(&resources, context)
    }

    /// Stores one resource as `import_collection` does (NDJSON lines).
    pub fn import_resources(
        &self,
        resources: &[Value],
        context: &WriteContext,
    ) -> Result<Vec<StoredResource>, RepoError> {
        self.import_resources_with(resources, context, &|_, _| Ok(()))
    }

    /// [`Repository::import_resources`] with `on_commit` run inside the transaction with what
    /// it stored (an operator import records its AuditEvent there, so the data and its audit
    /// commit together). A resource that fails is named by its position in `resources`
    /// ([`RepoError::Entry`]), so the caller can say which line or entry it was.
    pub fn import_resources_with(
        &self,
        resources: &[Value],
        context: &WriteContext,
        on_commit: ImportHook<'_>,
    ) -> Result<Vec<StoredResource>, RepoError> {
        let prepared: Vec<PreparedResource> = resources
            .iter()
            .map(|r| PreparedResource::new(r.clone()))
            .collect();
        self.write_large(|tx| {
            let stored = prepared
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    put_or_post(tx, r.clone(), context).map_err(|source| RepoError::Entry {
                        index,
                        request: resource_label(r.resource()),
                        source: Box::new(source),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            on_commit(tx, &stored)?;
            Ok(stored)
        })
    }
}

/// A hook run inside an import's transaction with the resources it stored.
pub type ImportHook<'a> = &'a dyn Fn(&mut Tx<'_>, &[StoredResource]) -> Result<(), RepoError>;

/// `Type/id` (or `Type` without an id) of a resource to import, for error messages.
fn resource_label(resource: &Value) -> String {
    let res_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("(no resourceType)");
    match resource.get("id").and_then(Value::as_str) {
        Some(id) => format!("{res_type}/{id}"),
        None => res_type.to_string(),
    }
}

fn put_or_post(
    tx: &mut Tx<'_>,
    resource: PreparedResource,
    context: &WriteContext,
) -> Result<StoredResource, RepoError> {
    let res_type = resource
        .resource()
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match resource
        .resource()
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
    {
        Some(id) => Ok(interactions::update(tx, &res_type, &id, resource, None, context)?.resource),
        None => Ok(interactions::create(tx, &res_type, resource, None, context)?.resource),
    }
}

/// Checks what would fail a whole batch before any entry runs (an entry without a request, a
/// malformed ETag), with the client's entry numbers.
pub fn check_entries(bundle: &Value) -> Result<(), RepoError> {
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return Ok(());
    };
    for (index, entry) in entries.iter().enumerate() {
        let request = entry_request(index, entry)?;
        entry_preconditions(index, request, &entry_method(request))?;
    }
    Ok(())
}

/// A Bundle entry request's method, upper-cased as entries are processed.
pub fn entry_method(request: &Value) -> String {
    request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// An entry's preconditions: `ifMatch`, and `ifNoneMatch`, which on a write is a precondition
/// of that write (`*`: only if the target does not exist; a version: only if it is not the
/// current one), as the header is, and on a read the version the client already has.
fn entry_preconditions(
    index: usize,
    request: &Value,
    method: &str,
) -> Result<(Option<IfMatch>, Option<i64>), RepoError> {
    let if_match = entry_if_match(index, request)?;
    if !matches!(method, "PUT" | "PATCH" | "DELETE") {
        return Ok((if_match, entry_if_none_match(index, request)?));
    }
    let Some(tag) = request.get("ifNoneMatch").and_then(Value::as_str) else {
        return Ok((if_match, None));
    };
    if if_match.is_some() {
        return Err(RepoError::BadRequest(format!(
            "Bundle.entry[{index}].request: a write takes ifMatch or ifNoneMatch, not both"
        )));
    }
    let if_none_match = precondition::parse_if_none_match(tag).map_err(|reason| {
        RepoError::BadRequest(format!(
            "Bundle.entry[{index}].request.ifNoneMatch: {reason}"
        ))
    })?;
    Ok((Some(if_none_match), None))
}

fn entry_request(index: usize, entry: &Value) -> Result<&Value, RepoError> {
    entry
        .get("request")
        .ok_or_else(|| RepoError::BadRequest(format!("Bundle.entry[{index}] has no request")))
}

/// An entry's `ifMatch`: one version ETag or `*`, as the header may be.
fn entry_if_match(index: usize, request: &Value) -> Result<Option<IfMatch>, RepoError> {
    let Some(tag) = request.get("ifMatch").and_then(Value::as_str) else {
        return Ok(None);
    };
    precondition::parse_if_match(tag)
        .map(Some)
        .map_err(|reason| {
            RepoError::BadRequest(format!("Bundle.entry[{index}].request.ifMatch: {reason}"))
        })
}

/// An entry's `ifModifiedSince` (an instant), as epoch milliseconds; 400 when it is none.
fn entry_if_modified_since(index: usize, request: &Value) -> Result<Option<i64>, RepoError> {
    let Some(text) = request.get("ifModifiedSince").and_then(Value::as_str) else {
        return Ok(None);
    };
    crate::meta::parse_instant_ms(text)
        .map(Some)
        .ok_or_else(|| {
            RepoError::BadRequest(format!(
                "Bundle.entry[{index}].request.ifModifiedSince '{text}' is not a FHIR instant"
            ))
        })
}

/// An entry's `ifNoneMatch` version.
fn entry_if_none_match(index: usize, request: &Value) -> Result<Option<i64>, RepoError> {
    let Some(tag) = request.get("ifNoneMatch").and_then(Value::as_str) else {
        return Ok(None);
    };
    Ok(Some(parse_etag(tag).ok_or_else(|| {
        RepoError::BadRequest(format!(
            "Bundle.entry[{index}].request.ifNoneMatch '{tag}' is not an ETag like W/\"3\""
        ))
    })?))
}

fn parse_entries(bundle: &Value, kind: BundleKind) -> Result<Vec<EntryRequest>, RepoError> {
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    check_full_urls(entries, kind)?;
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let request = entry_request(index, entry)?;
            let method = entry_method(request);
            let url = request
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let (if_match, if_none_match) = entry_preconditions(index, request, &method)?;
            Ok(EntryRequest {
                method,
                url,
                full_url: entry
                    .get("fullUrl")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                resource: entry.get("resource").cloned(),
                if_match,
                if_none_exist: request
                    .get("ifNoneExist")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                if_none_match,
                if_modified_since: entry_if_modified_since(index, request)?,
                invalid: entry
                    .get(renkei_fhir::INVALID_ENTRY)
                    .and_then(Value::as_array)
                    .cloned()
                    .or_else(|| {
                        // Only a batch gets here with one (see check_full_urls).
                        full_url_disagreement(entry).map(|reason| {
                            vec![error_issue("invalid", &format!("Bundle.entry.{reason}"))]
                        })
                    }),
            })
        })
        .collect()
}

/// A fullUrl that disagrees with its resource ([`full_url_disagreement`]) fails a transaction
/// as a whole; in a batch only its own entry. (A repeated fullUrl, bdl-7, was refused with
/// the other Bundle invariants when the Bundle was read: `renkei_fhir_schema::validate`.)
fn check_full_urls(entries: &[Value], kind: BundleKind) -> Result<(), RepoError> {
    if kind != BundleKind::Transaction {
        return Ok(());
    }
    for (index, entry) in entries.iter().enumerate() {
        if let Some(reason) = full_url_disagreement(entry) {
            return Err(RepoError::BadRequest(format!(
                "Bundle.entry[{index}].{reason}"
            )));
        }
    }
    Ok(())
}

/// A RESTful fullUrl "SHALL NOT disagree with the id in the resource" (Bundle.entry.fullUrl):
/// references to it would name another resource than the one stored. The reason, starting at
/// the element (`fullUrl '…' disagrees …`), when the entry's fullUrl does.
fn full_url_disagreement(entry: &Value) -> Option<String> {
    let full_url = entry.get("fullUrl").and_then(Value::as_str)?;
    let (url_type, url_id) =
        full_url_base(Some(full_url)).and_then(|_| renkei_search::split_reference(full_url))?;
    let resource = entry.get("resource")?;
    let res_type = resource.get("resourceType").and_then(Value::as_str);
    let id = resource.get("id").and_then(Value::as_str);
    (res_type.is_some_and(|t| t != url_type) || id.is_some_and(|id| id != url_id)).then(|| {
        format!(
            "fullUrl '{full_url}' disagrees with its resource ({}/{}); a fullUrl names the resource it holds",
            res_type.unwrap_or("?"),
            id.unwrap_or("(no id)")
        )
    })
}

/// Parses `W/"3"` or `"3"` into version 3. Only digits count: a sign is no version of ours,
/// and no ETag names a negative version.
pub fn parse_etag(tag: &str) -> Option<i64> {
    let digits = tag.trim().trim_start_matches("W/").trim_matches('"');
    // Entity tags compare as strings (RFC 9110 §8.8.3.2): `W/"001"` is not the `W/"1"` this
    // server issues, so it names no version.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// A Bundle entry's URL relative to the base. Entry URLs are relative; an absolute base
/// prefix is tolerated. Only the path may hold it: the criteria of a conditional entry may name
/// URLs of their own (`Observation?subject=http://host/fhir/Patient/1` changes Observations,
/// not Patient/1).
pub fn relative_entry_url(url: &str) -> &str {
    let path_end = url.find('?').unwrap_or(url.len());
    url[..path_end]
        .find("/fhir/")
        .map(|i| &url[i + "/fhir/".len()..])
        .unwrap_or(url)
        .trim_start_matches('/')
}

/// A read entry's resource as its URL's parameters ask, as a read outside a Bundle answers
/// ([`crate::ReadShape`]); `_format` and `_pretty` are the Bundle's own. Any other parameter
/// is refused (400) rather than ignored.
fn shaped_read(mut resource: StoredResource, url: &str) -> Result<StoredResource, RepoError> {
    let Some((_, query)) = url.split('#').next().unwrap_or(url).split_once('?') else {
        return Ok(resource);
    };
    let params = crate::criteria::decode_query_strict(query, &format!("the entry URL '{url}'"))?;
    if let Some((other, _)) = params
        .iter()
        .find(|(name, _)| !matches!(name.as_str(), "_summary" | "_elements"))
    {
        return Err(RepoError::BadRequest(format!(
            "the entry URL '{url}' reads one resource, which takes _summary and _elements, \
             not '{other}'"
        )));
    }
    let shape = crate::ReadShape::parse(&params)?;
    if shape.is_whole() {
        return Ok(resource);
    }
    let value = shape.apply(resource.value()?);
    resource.body = serde_json::to_string(&value)
        .map_err(|e| RepoError::BadRequest(format!("cannot serialize the resource: {e}")))?;
    Ok(resource)
}

fn parse_target(url: &str) -> Result<Target, RepoError> {
    // An entry's URL is relative to the server the Bundle is sent to (bundle.html); one on
    // another server's base names nothing here, and must not act on the record with its id.
    let path = url.split('?').next().unwrap_or(url);
    if path.contains("://") && renkei_search::local_path(path).is_none() {
        return Err(RepoError::BadRequest(format!(
            "the entry URL '{url}' names another server: request.url is relative to this server's base (or absolute under it)"
        )));
    }
    let relative = relative_entry_url(url);
    let path: Vec<&str> = relative
        .split('?')
        .next()
        .unwrap_or(relative)
        .split('/')
        .collect();
    if path.contains(&"_history") && !matches!(path.as_slice(), [_, _, "_history", _]) {
        return Err(RepoError::BadRequest(format!(
            "the entry URL '{url}' asks for a history, which a Bundle entry does not run; send GET [base]/{relative} on its own"
        )));
    }
    if path.first() == Some(&"metadata") {
        return Err(RepoError::BadRequest(format!(
            "the entry URL '{url}' asks for the CapabilityStatement, which a Bundle entry does not run; send GET [base]/metadata on its own"
        )));
    }
    if relative.contains('?') {
        let (path, _) = relative.split_once('?').unwrap_or((relative, ""));
        if !path.contains('/') {
            return Ok(Target::Conditional(Criteria::parse_url(relative)?));
        }
    }
    // A read's parameters (`Patient/1?_summary=true`) shape its answer ([`shaped_read`]).
    let segments: Vec<&str> = relative
        .split(['?', '#'])
        .next()
        .unwrap_or(relative)
        .split('/')
        .collect();
    let checked = |t: &str| -> Result<String, RepoError> {
        interactions::check_type(t)?;
        Ok(t.to_string())
    };
    match segments.as_slice() {
        [t] if !t.is_empty() => Ok(Target::Type(checked(t)?)),
        [t, id] => Ok(Target::Instance(checked(t)?, id.to_string())),
        [t, id, "_history", v] => Ok(Target::Version(checked(t)?, id.to_string(), v.to_string())),
        _ => Err(RepoError::BadRequest(format!(
            "the entry URL '{url}' is not supported in a Bundle"
        ))),
    }
}

/// When a transaction entry runs: DELETE, POST, PUT/PATCH, then GET (FHIR's processing
/// order), with Consent writes after every other write. A consent may be recorded only by a
/// facility holding a record of the patient, so a Consent must not depend on coming after
/// its Patient in the Bundle: the outcome of a transaction does not depend on its order.
fn step_rank(entry: &EntryRequest) -> u8 {
    let written_type = relative_entry_url(&entry.url)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    // A record that takes its patient from the record it refers to (a Binary's
    // securityContext, a Provenance's target, a document's Patient entry matched to a stored
    // Patient record) is written after the other writes, so that what it refers to is stored
    // by then, whatever the Bundle's order (transactions are not ordered: http.html#trules).
    let may_take_patient_from_target = matches!(
        written_type,
        "Binary" | "Provenance" | "Task" | "Communication" | "Bundle"
    );
    match entry.method.as_str() {
        // A Consent is deleted before the records it names (a Patient record named by a
        // Consent in force is not deleted), whatever the Bundle's order.
        "DELETE" if written_type == "Consent" => 0,
        "DELETE" => 1,
        "POST" | "PUT" | "PATCH" if written_type == "Consent" => 5,
        "POST" | "PUT" | "PATCH" if may_take_patient_from_target => 4,
        "POST" => 2,
        "PUT" | "PATCH" => 3,
        _ => 6,
    }
}

/// `admit` sees each entry's result as it is made and may fail the transaction (the response
/// budget).
fn run_transaction(
    tx: &mut Tx<'_>,
    entries: &[EntryRequest],
    context: &WriteContext,
    prepared: &Prepared,
    admit: &mut dyn FnMut(&EntryResult) -> Result<(), RepoError>,
) -> Result<Vec<EntryResult>, RepoError> {
    // A transaction with conditional parts takes its turn before it locks any row: waiting
    // for the turn while holding rows another conditional write waits for would deadlock.
    if entries.iter().any(has_conditional_part) {
        tx.serialize_conditional_writes()?;
    }
    let wrap = |index: usize, entry: &EntryRequest, e: RepoError| RepoError::Entry {
        index,
        request: format!("{} {}", entry.method, entry.url),
        source: Box::new(e),
    };
    // Ids of new resources are fixed before anything runs, so references between entries
    // resolve whatever the processing order. At the same time every entry's target is
    // resolved: http.html#trules, "If any resource identities (including resolved identities
    // from conditional update/delete) overlap in steps 1-3, then the transaction SHALL fail."
    let mut ids = EntryIds::default();
    let mut assigned: Vec<Option<String>> = vec![None; entries.len()];
    let mut targets: HashMap<String, usize> = HashMap::new();
    let mut identities: Vec<Option<String>> = vec![None; entries.len()];
    // The resource each conditional create's criteria (type and parameters) will stand for:
    // a second POST with the same `ifNoneExist` finds the first one's resource when it runs
    // (200), so references to either entry name that one resource.
    type CriteriaKey = (String, Vec<(String, String)>);
    let mut conditional_creates: HashMap<CriteriaKey, String> = HashMap::new();
    // Only a version-specific reference needs an entry's coming version (a lookup per PUT).
    let names_versions = entries
        .iter()
        .any(|entry| entry.resource.as_ref().is_some_and(names_a_version));
    for (index, entry) in entries.iter().enumerate() {
        let target = parse_target(&entry.url).map_err(|e| wrap(index, entry, e))?;
        // Conditional changes match among the writer's own records, as they will when run.
        let resolve_one = |tx: &mut Tx<'_>, criteria: &Criteria| -> Result<_, RepoError> {
            let criteria = criteria
                .clone()
                .visible_to(context.visibility.clone())
                .held_by(context.custodian.as_deref());
            let found = criteria.resolve_for_write(tx, 2)?;
            Ok(match found.as_slice() {
                [row] => Some(format!("{}/{}", criteria.res_type, row.res_id)),
                _ => None,
            })
        };
        // `reference`: what the entry's fullUrl stands for; `identity`: the resource the
        // entry changes (steps 1-3: DELETE, POST, PUT, PATCH).
        let (reference, identity) = match (&entry.method[..], &target) {
            ("POST", Target::Type(t)) => {
                let existing = match &entry.if_none_exist {
                    Some(query) => {
                        let criteria = Criteria::parse_if_none_exist(t, query)
                            .map_err(|e| wrap(index, entry, e))?
                            .visible_to(context.visibility.clone());
                        let found = criteria.resolve_for_write(tx, 2)?;
                        if found.len() > 1 {
                            return Err(wrap(
                                index,
                                entry,
                                RepoError::PreconditionFailed(format!(
                                    "ifNoneExist criteria match more than one {t}"
                                )),
                            ));
                        }
                        found.into_iter().next().map(|row| row.res_id)
                    }
                    None => None,
                };
                // A matched ifNoneExist changes nothing, so it is no identity of steps 1-3
                // (several entries may name one shared Practitioner that way).
                let same_criteria = entry
                    .if_none_exist
                    .as_ref()
                    .map(|query| (t.clone(), Criteria::if_none_exist_key(query)));
                let earlier = same_criteria
                    .as_ref()
                    .and_then(|key| conditional_creates.get(key));
                match (existing, earlier) {
                    (Some(id), _) => (Some(format!("{t}/{id}")), None),
                    (None, Some(reference)) => (Some(reference.clone()), None),
                    (None, None) => {
                        let id = prepared.new_id(index);
                        assigned[index] = Some(id.clone());
                        let reference = format!("{t}/{id}");
                        if let Some(key) = same_criteria {
                            conditional_creates.insert(key, reference.clone());
                        }
                        (Some(reference), None)
                    }
                }
            }
            ("PUT", Target::Instance(t, id)) => {
                (Some(format!("{t}/{id}")), Some(format!("{t}/{id}")))
            }
            ("PUT", Target::Conditional(criteria)) => {
                let criteria = criteria
                    .clone()
                    .visible_to(context.visibility.clone())
                    .held_by(context.custodian.as_deref());
                let found = criteria.resolve_for_write(tx, 2)?;
                let t = &criteria.res_type;
                let body_id = entry
                    .resource
                    .as_ref()
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str);
                let resolved = match (found.as_slice(), body_id) {
                    ([row], _) => Some(format!("{t}/{}", row.res_id)),
                    // No match: a create, with the body's id or one fixed now, like a POST.
                    ([], Some(id)) => Some(format!("{t}/{id}")),
                    ([], None) => {
                        let id = prepared.new_id(index);
                        let reference = format!("{t}/{id}");
                        assigned[index] = Some(id);
                        Some(reference)
                    }
                    // Several matches: the entry fails with 412 when it runs.
                    _ => None,
                };
                (resolved.clone(), resolved)
            }
            ("PATCH" | "DELETE", Target::Instance(t, id)) => (None, Some(format!("{t}/{id}"))),
            ("PATCH" | "DELETE", Target::Conditional(criteria)) => {
                (None, resolve_one(tx, criteria)?)
            }
            _ => (None, None),
        };
        identities[index].clone_from(&identity);
        if let Some(identity) = identity {
            if let Some(first) = targets.insert(identity.clone(), index) {
                return Err(wrap(
                    index,
                    entry,
                    RepoError::BadRequest(format!(
                        "entries {first} and {index} both change {identity}; a transaction may change a resource only once"
                    )),
                ));
            }
        }
        if let (Some(full_url), Some(reference)) = (&entry.full_url, reference) {
            // The version the entry's resource will have: 1 for one created with a new id; a
            // PUT by id makes the next version of what is stored (1 when nothing is).
            let version = match (&entry.method[..], assigned[index].is_some()) {
                (_, true) => Some(1),
                ("PUT", false) if names_versions => match reference.split_once('/') {
                    Some((t, id)) if !reference.contains('?') => {
                        Some(tx.current(t, id)?.map_or(1, |row| row.version + 1))
                    }
                    _ => None,
                },
                _ => None,
            };
            ids.insert(full_url.clone(), reference, version);
        }
    }
    // Within each step ([`step_rank`]), entries run in the Bundle's order: a facility
    // registers a Patient and records its Consent in one transaction, and the Consent's check
    // needs the Patient first (sorting the entries by resource broke that; Consent writes run
    // in a step of their own, after every other write). So the order of running is not the order
    // of locking: every existing resource the transaction changes is locked here, before any
    // entry runs, in one order for all transactions. Two transactions changing the same
    // resources in opposite Bundle orders then queue; locked as each entry ran, each held one
    // row and waited for the other's, and PostgreSQL failed one of them with a deadlock, again
    // on every rerun under load (409 for ~40 % of such requests). A conditional target was
    // resolved above and is locked as well. A single row needs no order: its entry locks it.
    let changed: Vec<(&str, &str)> = identities
        .iter()
        .flatten()
        .filter_map(|identity| identity.split_once('/'))
        .collect();
    if changed.len() > 1 {
        tx.lock_current_rows(&changed)?;
    }
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| step_rank(&entries[i]));
    let mut results: Vec<Option<EntryResult>> = vec![None; entries.len()];
    for index in order {
        let entry = &entries[index];
        let mut entry = entry.clone();
        let base = full_url_base(entry.full_url.as_deref()).map(str::to_string);
        if let Some(resource) = entry.resource.as_mut() {
            rewrite_references(resource, &ids, &mut |reference| {
                resolve_reference(tx, reference, &ids, base.as_deref(), &context.visibility)
            })
            .map_err(|e| wrap(index, &entry, e))?;
        }
        let result = match (&entry.method[..], assigned[index].clone()) {
            ("POST", Some(id)) => {
                let target = parse_target(&entry.url).map_err(|e| wrap(index, &entry, e))?;
                let Target::Type(t) = target else {
                    return Err(wrap(
                        index,
                        &entry,
                        RepoError::BadRequest("POST needs a type URL".into()),
                    ));
                };
                let resource = entry.resource.take().ok_or_else(|| {
                    wrap(
                        index,
                        &entry,
                        RepoError::BadRequest("POST entry has no resource".into()),
                    )
                })?;
                if let Some(query) = &entry.if_none_exist {
                    // Other criteria may match what an earlier entry created: the create
                    // would then duplicate it, which ifNoneExist is there to prevent.
                    let criteria = Criteria::parse_if_none_exist(&t, query)
                        .map_err(|e| wrap(index, &entry, e))?
                        .visible_to(context.visibility.clone());
                    if let Some(row) = criteria
                        .resolve_for_write(tx, 1)
                        .map_err(|e| wrap(index, &entry, e))?
                        .first()
                    {
                        return Err(wrap(
                            index,
                            &entry,
                            RepoError::Conflict(format!(
                                "the ifNoneExist criteria matched no {t} when the transaction began, but match {t}/{} now (created by another entry of the transaction)",
                                row.res_id
                            )),
                        ));
                    }
                }
                let resource = PreparedResource::reusing(resource, prepared.body(index));
                interactions::create_with_id(tx, &t, resource, None, context, Some(&id)).map(|o| {
                    EntryResult {
                        deleted_version: None,
                        is_read: false,
                        status: "201 Created",
                        resource: Some(o.resource),
                    }
                })
            }
            ("PUT", Some(id)) => match parse_target(&entry.url) {
                Ok(Target::Conditional(criteria)) => {
                    let criteria = criteria.visible_to(context.visibility.clone());
                    let body = entry.resource.take().ok_or_else(|| {
                        wrap(
                            index,
                            &entry,
                            RepoError::BadRequest("PUT entry has no resource".into()),
                        )
                    })?;
                    interactions::conditional_update_with_id(
                        tx,
                        &criteria,
                        PreparedResource::reusing(body, prepared.body(index)),
                        entry.if_match,
                        context,
                        Some(&id),
                    )
                    .map(|o| EntryResult {
                        deleted_version: None,
                        is_read: false,
                        status: if o.created { "201 Created" } else { "200 OK" },
                        resource: Some(o.resource),
                    })
                }
                _ => run_entry(tx, entry, &mut ids, context, prepared.body(index)),
            },
            _ => run_entry(tx, entry, &mut ids, context, prepared.body(index)),
        }
        .and_then(|result| admit(&result).map(|()| result))
        .map_err(|e| wrap(index, &entries[index], e))?;
        results[index] = Some(result);
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| RepoError::BadRequest("entry was not processed".into())))
        .collect()
}

fn run_entry(
    tx: &mut Tx<'_>,
    mut entry: EntryRequest,
    ids: &mut EntryIds,
    context: &WriteContext,
    speculated: Option<&PreparedResource>,
) -> Result<EntryResult, RepoError> {
    let target = match parse_target(&entry.url)? {
        Target::Conditional(criteria) => {
            Target::Conditional(criteria.visible_to(context.visibility.clone()))
        }
        other => other,
    };
    let mut rewritten = entry.resource.take();
    let base = full_url_base(entry.full_url.as_deref());
    if let Some(r) = rewritten.as_mut() {
        rewrite_references(r, ids, &mut |reference| {
            resolve_reference(tx, reference, ids, base, &context.visibility)
        })?;
    }
    // Each interaction takes the body once.
    let mut body = || {
        rewritten
            .take()
            .ok_or_else(|| RepoError::BadRequest(format!("{} entry has no resource", entry.method)))
    };
    let mut prepared_body = || Ok::<_, RepoError>(PreparedResource::reusing(body()?, speculated));
    match (entry.method.as_str(), target) {
        ("GET" | "HEAD", Target::Instance(t, id)) => {
            let resource = interactions::read_visible(tx, &t, &id, &context.visibility)?;
            // The client's copy is current: no body (http.html#cread, per entry). As with
            // the headers, `ifModifiedSince` counts only without `ifNoneMatch` (RFC 9110
            // §13.2.2).
            let unchanged = match (entry.if_none_match, entry.if_modified_since) {
                (Some(version), _) => version == resource.version,
                (None, Some(since)) => resource.last_updated <= since,
                (None, None) => false,
            };
            Ok(EntryResult {
                deleted_version: None,
                status: if unchanged {
                    "304 Not Modified"
                } else {
                    "200 OK"
                },
                is_read: entry.method == "GET" && !unchanged,
                resource: Some(shaped_read(resource, &entry.url)?),
            })
        }
        ("GET" | "HEAD", Target::Version(t, id, v)) => Ok(EntryResult {
            deleted_version: None,
            status: "200 OK",
            is_read: entry.method == "GET",
            resource: Some(shaped_read(
                interactions::vread_visible(tx, &t, &id, &v, &context.visibility)?,
                &entry.url,
            )?),
        }),
        ("POST", Target::Type(t)) => {
            let criteria = match &entry.if_none_exist {
                Some(q) => Some(
                    Criteria::parse_if_none_exist(&t, q)?.visible_to(context.visibility.clone()),
                ),
                None => None,
            };
            let outcome =
                interactions::create(tx, &t, prepared_body()?, criteria.as_ref(), context)?;
            Ok(EntryResult {
                deleted_version: None,
                is_read: false,
                status: if outcome.existing {
                    "200 OK"
                } else {
                    "201 Created"
                },
                resource: Some(outcome.resource),
            })
        }
        ("PUT", Target::Instance(t, id)) => {
            let outcome =
                interactions::update(tx, &t, &id, prepared_body()?, entry.if_match, context)?;
            Ok(EntryResult {
                deleted_version: None,
                is_read: false,
                status: if outcome.created {
                    "201 Created"
                } else {
                    "200 OK"
                },
                resource: Some(outcome.resource),
            })
        }
        ("PUT", Target::Conditional(criteria)) => {
            let outcome = interactions::conditional_update(
                tx,
                &criteria,
                prepared_body()?,
                entry.if_match,
                context,
            )?;
            Ok(EntryResult {
                deleted_version: None,
                is_read: false,
                status: if outcome.created {
                    "201 Created"
                } else {
                    "200 OK"
                },
                resource: Some(outcome.resource),
            })
        }
        ("PATCH", target) => {
            let (t, id) = match target {
                Target::Instance(t, id) => (t, id),
                Target::Conditional(criteria) => {
                    let id = interactions::resolve_single(tx, &criteria, context).map_err(|e| {
                        precondition::absent_under_if_match(entry.if_match, e)
                    })?;
                    (criteria.res_type, id)
                }
                _ => return Err(RepoError::BadRequest("PATCH needs an instance URL".into())),
            };
            let patch = match body()? {
                p @ Value::Object(_) if p.get("resourceType") == Some(&json!("Parameters")) => {
                    PatchBody::FhirPathPatch(p)
                }
                Value::Object(binary) if binary.get("resourceType") == Some(&json!("Binary")) => {
                    let data = binary
                        .get("data")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let decoded = renkei_fhir::decode_base64(data).ok_or_else(|| {
                        RepoError::BadRequest("the Binary patch is not valid base64".into())
                    })?;
                    PatchBody::JsonPatch(serde_json::from_slice(&decoded).map_err(|e| {
                        RepoError::BadRequest(format!("the Binary patch is not JSON Patch: {e}"))
                    })?)
                }
                _ => {
                    return Err(RepoError::BadRequest(
                        "a PATCH entry carries Parameters (FHIRPath Patch) or Binary (JSON Patch)"
                            .into(),
                    ))
                }
            };
            let outcome = interactions::patch(tx, &t, &id, &patch, entry.if_match, context)?;
            Ok(EntryResult {
                deleted_version: None,
                is_read: false,
                status: "200 OK",
                resource: Some(outcome.resource),
            })
        }
        ("DELETE", Target::Instance(t, id)) => Ok(deleted(interactions::delete(
            tx,
            &t,
            &id,
            entry.if_match,
            context,
        )?)),
        ("DELETE", Target::Conditional(criteria)) => Ok(deleted(
            interactions::conditional_delete(tx, &criteria, entry.if_match, context)?,
        )),
        // A batch's searches are run by the HTTP layer, like searches sent on their own.
        ("GET" | "HEAD", Target::Conditional(_) | Target::Type(_)) => {
            Err(RepoError::BadRequest(format!(
                "{} {} is a search: searches are answered as GET entries of a batch Bundle, not in transactions",
                entry.method, entry.url
            )))
        }
        (method, _) => Err(RepoError::BadRequest(format!(
            "{method} {} is not a supported Bundle entry request",
            entry.url
        ))),
    }
}

/// Whether `value` holds a version-specific reference (`…/_history/n`).
fn names_a_version(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(key, child)| match child {
            Value::String(reference) if key == "reference" => reference.contains("/_history/"),
            other => names_a_version(other),
        }),
        Value::Array(items) => items.iter().any(names_a_version),
        _ => false,
    }
}

/// What each entry's `fullUrl` stands for once the transaction runs: the `Type/id` it names or
/// gets, and, where known, the version its resource will then have (1 for one created with a
/// new id, the next one for a PUT by id), which version-specific references to it take.
#[derive(Debug, Default)]
struct EntryIds {
    targets: HashMap<String, String>,
    versions: HashMap<String, i64>,
}

impl EntryIds {
    fn insert(&mut self, full_url: String, reference: String, version: Option<i64>) {
        if let Some(version) = version {
            self.versions.insert(full_url.clone(), version);
        }
        self.targets.insert(full_url, reference);
    }

    fn get(&self, full_url: &str) -> Option<&String> {
        self.targets.get(full_url)
    }

    fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// A version-specific reference (`…/Patient/p-1/_history/2`) to an entry: the entry's
    /// `Type/id` with the version it will have, where known, else the version as written
    /// (bundle.html#references: the version is removed to match the fullUrl, then replaced).
    fn get_versioned(&self, full_url: &str, written: &str) -> Option<String> {
        let target = self.targets.get(full_url)?;
        Some(match self.versions.get(full_url) {
            Some(version) => format!("{target}/_history/{version}"),
            None => format!("{target}/_history/{written}"),
        })
    }
}

/// Replaces `reference` values that name another entry's `fullUrl`, or a conditional
/// reference (`Patient?identifier=…`), with the literal `Type/id`; and every other link to an
/// entry's `urn:` fullUrl (`uri` and `url` elements such as `Attachment.url`, `href` and `src`
/// in narratives), as http.html#trules asks of a transaction.
fn rewrite_references(
    value: &mut Value,
    ids: &EntryIds,
    resolve: &mut dyn FnMut(&str) -> Result<Option<String>, RepoError>,
) -> Result<(), RepoError> {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference") {
                if let Some(replacement) = resolve(reference)? {
                    map.insert("reference".into(), Value::String(replacement));
                }
            }
            // A Bundle inside (a document stored by the transaction) is content: its entries'
            // references name its own entries (bundle.html#references), not the transaction's.
            let nested_bundle = map.get("resourceType").and_then(Value::as_str) == Some("Bundle");
            for (key, child) in map.iter_mut() {
                match child {
                    _ if nested_bundle && key == "entry" => {}
                    Value::String(_) if key == "reference" => {}
                    Value::String(div) if key == "div" => rewrite_narrative_links(div, ids),
                    Value::String(link) if is_link_element(key) => rewrite_link(link, ids),
                    Value::String(_) => {}
                    Value::Array(items) if is_link_element(key) => {
                        for item in items {
                            if let Value::String(link) = item {
                                rewrite_link(link, ids);
                            }
                        }
                    }
                    _ => rewrite_references(child, ids, resolve)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for item in items {
                rewrite_references(item, ids, resolve)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether an element named `key` holds a link (uri, url, canonical, oid, uuid): `url`
/// (Attachment.url), `valueUri`, `instantiatesCanonical`, … Other strings that happen to
/// spell an entry's fullUrl (an identifier's value, a display text) stay as written.
fn is_link_element(key: &str) -> bool {
    key == "url"
        || ["Uri", "Url", "Canonical", "Oid", "Uuid"]
            .iter()
            .any(|suffix| key.ends_with(suffix))
}

fn rewrite_link(link: &mut String, ids: &EntryIds) {
    if link.starts_with("urn:") {
        if let Some(target) = ids.get(link.as_str()) {
            *link = target.clone();
        }
    }
}

/// `href="urn:uuid:…"` and `src="urn:uuid:…"` naming an entry's fullUrl, in a narrative.
fn rewrite_narrative_links(div: &mut String, ids: &EntryIds) {
    if !div.contains("=\"urn:") && !div.contains("='urn:") {
        return;
    }
    let mut rewritten = String::with_capacity(div.len());
    let mut rest = div.as_str();
    while let Some(start) = rest.find("urn:") {
        let (before, from) = rest.split_at(start);
        rewritten.push_str(before);
        let quoted = before.ends_with("=\"") || before.ends_with("='");
        let end = from.find(['"', '\'']).unwrap_or(from.len());
        let (link, after) = from.split_at(end);
        // The attribute the value belongs to: the last word before `="` (`data-href` is none).
        let attribute = before
            .trim_end_matches(['"', '\''])
            .trim_end_matches('=')
            .rsplit(|c: char| c.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        let is_link_attribute = matches!(attribute, "href" | "src");
        match ids.get(link).filter(|_| quoted && is_link_attribute) {
            Some(target) => rewritten.push_str(target),
            None => rewritten.push_str(link),
        }
        rest = after;
    }
    rewritten.push_str(rest);
    *div = rewritten;
}

/// Whether an entry resolves criteria in the database: a conditional URL or `ifNoneExist`, or
/// a conditional reference in its resource.
fn has_conditional_part(entry: &EntryRequest) -> bool {
    entry.if_none_exist.is_some()
        || entry.url.contains('?')
        || entry
            .resource
            .as_ref()
            .is_some_and(|resource| !conditional_reference_types(resource).is_empty())
}

/// The types the conditional references in `value` search (`Patient?identifier=…` searches
/// Patient), each once.
pub fn conditional_reference_types(value: &Value) -> Vec<String> {
    fn collect(value: &Value, types: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match child {
                        Value::String(reference) if key == "reference" => {
                            if let Some(res_type) = conditional_reference_type(reference) {
                                if !types.iter().any(|t| t == res_type) {
                                    types.push(res_type.to_string());
                                }
                            }
                        }
                        other => collect(other, types),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, types)),
            _ => {}
        }
    }
    let mut types = Vec::new();
    collect(value, &mut types);
    types
}

/// A reference that only the database can resolve (`Patient?identifier=…`).
///
/// `Type?criteria`: the criteria may hold URLs of their own (`Patient?identifier=http://…`),
/// so only what comes before the `?` decides (an absolute URL with a query is no such
/// reference and stays as written).
fn is_conditional_reference(reference: &str) -> bool {
    conditional_reference_type(reference).is_some()
}

/// The type a conditional reference searches, if `reference` is one.
fn conditional_reference_type(reference: &str) -> Option<&str> {
    reference
        .split_once('?')
        .map(|(res_type, _)| res_type)
        .filter(|res_type| renkei_fhir::is_resource_type(res_type))
}

/// What a reference becomes from the Bundle alone: another entry's `Type/id` when it names that
/// entry's `fullUrl`, an error for a `urn:` naming no entry, `None` otherwise (left as written,
/// or conditional: see [`resolve_reference`]).
///
/// A relative reference (`Patient/p-1`) is first made absolute (bundle.html#references):
/// against the base of the entry's own fullUrl when that is a RESTful URL
/// (`http://ehr.example/fhir/Observation/o-1` → `http://ehr.example/fhir/Patient/p-1`), else
/// against this server's base. EHR exports write exactly that: their own base in every
/// fullUrl and relative references inside, to POSTed entries that get new ids here.
fn resolve_in_bundle(
    reference: &str,
    ids: &EntryIds,
    entry_base: Option<&str>,
) -> Result<Option<String>, RepoError> {
    if let Some(mapped) = ids.get(reference) {
        return Ok(Some(mapped.clone()));
    }
    let (unversioned, version) = match reference.split_once("/_history/") {
        Some((resource, version)) => (resource, Some(version)),
        None => (reference, None),
    };
    let find = |full_url: &str| match version {
        Some(version) => ids.get_versioned(full_url, version),
        None => ids.get(full_url).cloned(),
    };
    if version.is_some() {
        if let Some(mapped) = find(unversioned) {
            return Ok(Some(mapped));
        }
    }
    if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
        return Err(RepoError::BadRequest(format!(
            "the reference '{reference}' names no entry of this Bundle (in a batch the entries are independent: references between entries are resolved in a transaction only)"
        )));
    }
    let relative =
        !unversioned.contains("://") && renkei_search::split_reference(unversioned).is_some();
    if relative && !ids.is_empty() {
        let lookup = |base: &str| find(&format!("{base}{unversioned}"));
        let found = match entry_base {
            Some(base) => lookup(base),
            None => renkei_search::local_bases()
                .iter()
                .find_map(|base| lookup(base)),
        };
        if let Some(mapped) = found {
            return Ok(Some(mapped));
        }
    }
    Ok(None)
}

fn resolve_reference(
    tx: &mut Tx<'_>,
    reference: &str,
    ids: &EntryIds,
    entry_base: Option<&str>,
    visibility: &renkei_store::Visibility,
) -> Result<Option<String>, RepoError> {
    if let Some(mapped) = resolve_in_bundle(reference, ids, entry_base)? {
        return Ok(Some(mapped));
    }
    if is_conditional_reference(reference) {
        let criteria = Criteria::parse_url(reference)?.visible_to(visibility.clone());
        let found = criteria.resolve_for_write(tx, 2)?;
        return match found.as_slice() {
            [row] => Ok(Some(format!("{}/{}", criteria.res_type, row.res_id))),
            [] => Err(RepoError::PreconditionFailed(format!(
                "the conditional reference '{reference}' matches no resource"
            ))),
            _ => Err(RepoError::PreconditionFailed(format!(
                "the conditional reference '{reference}' matches more than one resource"
            ))),
        };
    }
    Ok(None)
}

/// A DELETE entry's result: the version the delete made is its ETag, as when sent alone.
fn deleted(outcome: DeleteOutcome) -> EntryResult {
    EntryResult {
        is_read: false,
        status: "204 No Content",
        resource: None,
        deleted_version: match outcome {
            DeleteOutcome::Deleted { version, .. } => Some(version),
            DeleteOutcome::NothingToDelete => None,
        },
    }
}

fn render_entry(result: &EntryResult, return_resources: bool) -> Value {
    let mut response = Map::new();
    response.insert("status".into(), json!(result.status));
    if let Some(version) = result.deleted_version {
        response.insert("etag".into(), json!(format!("W/\"{version}\"")));
    }
    let mut entry = Map::new();
    if let Some(resource) = &result.resource {
        response.insert(
            "location".into(),
            json!(format!(
                "{}/{}/_history/{}",
                resource.res_type, resource.id, resource.version
            )),
        );
        response.insert("etag".into(), json!(format!("W/\"{}\"", resource.version)));
        response.insert(
            "lastModified".into(),
            json!(format_instant(resource.last_updated)),
        );
        entry.insert(
            "fullUrl".into(),
            json!(format!("{}/{}", resource.res_type, resource.id)),
        );
        if result.is_read || (return_resources && !result.status.starts_with("304")) {
            if let Ok(value) = resource.value() {
                entry.insert("resource".into(), value);
            }
        }
    }
    entry.insert("response".into(), Value::Object(response));
    Value::Object(entry)
}

fn render_failure(error: &RepoError) -> Value {
    let (status, code) = crate::error::status_of(error.root());
    failed_entry(status, vec![error_issue(code, &error.to_string())])
}

/// A batch or transaction response entry that failed: its status line (`403 Forbidden`) and
/// the OperationOutcome of its issues.
pub fn failed_entry(status: &str, issues: Vec<Value>) -> Value {
    json!({
        "response": {
            "status": status,
            "outcome": {"resourceType": "OperationOutcome", "issue": issues},
        }
    })
}

/// An OperationOutcome issue of severity `error`.
pub fn error_issue(code: &str, diagnostics: &str) -> Value {
    json!({"severity": "error", "code": code, "diagnostics": diagnostics})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bundle_bodies_are_prepared_unless_the_database_must_resolve_them() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "gender": "male"},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": "x"}, "subject": {"reference": "urn:uuid:p"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Observation", "id": "o2", "status": "final",
                "code": {"text": "y"}, "subject": {"reference": "Patient?identifier=s|1"}},
             "request": {"method": "PUT", "url": "Observation/o2"}},
            {"fullUrl": "urn:uuid:q", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=s|2"}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": "z"}, "subject": {"reference": "urn:uuid:q"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "DELETE", "url": "Observation/o3"}}
        ]});
        let entries = parse_entries(&bundle, BundleKind::Transaction).unwrap();
        let prepared = Prepared::speculate(&entries, BundleKind::Transaction);
        let patient_id = prepared.new_id(0);
        // The reference to another entry is rewritten to the id that entry will get.
        let observation = prepared.body(1).unwrap().resource();
        assert_eq!(
            observation["subject"]["reference"],
            json!(format!("Patient/{patient_id}"))
        );
        assert!(prepared.body(0).is_some());
        // A conditional reference, and a reference to a conditional create, need the database.
        assert!(prepared.body(2).is_none());
        assert!(prepared.body(3).is_some(), "its own body has no references");
        assert!(prepared.body(4).is_none());
        assert!(prepared.body(5).is_none());
        // The transaction reuses prepared rows only for a body identical to the prepared one.
        let (_, rows) = PreparedResource::reusing(observation.clone(), prepared.body(1))
            .into_parts("Observation");
        assert!(rows.is_some());
        let mut other = observation.clone();
        other["subject"]["reference"] = json!("Patient/someone-else");
        let (_, rows) =
            PreparedResource::reusing(other, prepared.body(1)).into_parts("Observation");
        assert!(rows.is_none());
        // A batch does not resolve references between entries, so neither does its preparation.
        let batch = Prepared::speculate(&entries, BundleKind::Batch);
        assert!(batch.body(1).is_none());
        assert!(batch.body(0).is_some());
    }

    #[test]
    fn parses_entry_targets() {
        assert!(matches!(parse_target("Patient").unwrap(), Target::Type(_)));
        assert!(matches!(
            parse_target("Patient/1").unwrap(),
            Target::Instance(..)
        ));
        assert!(renkei_search::set_local_bases(&[
            "http://127.0.0.1:8412/fhir".to_string()
        ]));
        assert!(matches!(
            parse_target("http://127.0.0.1:8412/fhir/Patient/1/_history/2").unwrap(),
            Target::Version(..)
        ));
        // Another server's URL names nothing here.
        assert!(parse_target("http://x/fhir/Patient/1").is_err());
        assert!(matches!(
            parse_target("Patient?identifier=a|b").unwrap(),
            Target::Conditional(_)
        ));
        assert!(parse_target("Nope/1").is_err());
        // Histories of every level are refused alike, naming what was asked.
        for history in [
            "_history",
            "Observation/_history",
            "Observation/_history?_count=3",
            "Observation/1/_history",
        ] {
            match parse_target(history) {
                Err(RepoError::BadRequest(why)) => assert!(why.contains("history"), "{why}"),
                other => panic!("{history}: {other:?}"),
            }
        }
        // A URL in the criteria is no base: the entry changes Observations.
        match parse_target("Observation?subject=http://x/fhir/Patient/1").unwrap() {
            Target::Conditional(criteria) => assert_eq!(criteria.res_type, "Observation"),
            _ => panic!("not conditional"),
        }
        assert!(is_conditional_reference(
            "Patient?identifier=http://x/fhir/mrn|1"
        ));
        assert!(!is_conditional_reference(
            "http://x/fhir/Patient?identifier=1"
        ));
        assert!(!is_conditional_reference("#contained?x"));
    }

    #[test]
    fn rewrites_entry_links_in_narratives_only_in_link_attributes() {
        let mut ids = EntryIds::default();
        ids.insert("urn:uuid:b".to_string(), "Binary/1".to_string(), Some(1));
        let mut div = r#"<div><a href="urn:uuid:b">x</a><img src='urn:uuid:b'/> urn:uuid:b <a title="urn:uuid:b" href="urn:uuid:other">y</a></div>"#.to_string();
        rewrite_narrative_links(&mut div, &ids);
        assert_eq!(
            div,
            r#"<div><a href="Binary/1">x</a><img src='Binary/1'/> urn:uuid:b <a title="urn:uuid:b" href="urn:uuid:other">y</a></div>"#
        );
    }

    #[test]
    fn parses_etags() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"4\""), Some(4));
        assert_eq!(parse_etag("x"), None);
    }
}
