//! Loading FHIR content without the HTTP server: the demo network and `renkei import`.

use indicatif::{ProgressBar, ProgressStyle};
use renkei_audit::{AuditAgent, EventBuilder, Interaction};
use renkei_repository::{RepoError, Repository, StoredResource, WriteContext};
use renkei_store::Tx;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The demo network of `fixtures/demo/`, compiled into the binary so `--demo` works from any
/// directory.
const DEMO_BUNDLES: &[(&str, &str)] = &[
    (
        "01-organizations.json",
        include_str!("../../../fixtures/demo/01-organizations.json"),
    ),
    (
        "02-practitioners.json",
        include_str!("../../../fixtures/demo/02-practitioners.json"),
    ),
    (
        "03-patients.json",
        include_str!("../../../fixtures/demo/03-patients.json"),
    ),
    (
        "04-clinical-okayama-central.json",
        include_str!("../../../fixtures/demo/04-clinical-okayama-central.json"),
    ),
    (
        "05-clinical-kurashiki-general.json",
        include_str!("../../../fixtures/demo/05-clinical-kurashiki-general.json"),
    ),
    (
        "06-clinical-hareyaka-clinic.json",
        include_str!("../../../fixtures/demo/06-clinical-hareyaka-clinic.json"),
    ),
    (
        "07-consents.json",
        include_str!("../../../fixtures/demo/07-consents.json"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Content { path: String, message: String },
    #[error("{path}: {source}")]
    Repository {
        path: String,
        source: renkei_repository::RepoError,
    },
}

/// Resources stored, per type.
#[derive(Debug, Default)]
pub struct LoadCounts(pub BTreeMap<String, usize>);

impl LoadCounts {
    fn add_type(&mut self, res_type: &str) {
        *self.0.entry(res_type.to_string()).or_default() += 1;
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    pub fn report(&self) -> String {
        self.0
            .iter()
            .map(|(t, n)| format!("  {t:<24} {n:>8}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The operator tool an import runs as: what its AuditEvents name as the agent. Imports write
/// outside the HTTP gate, so without these the trail would not say who put the data there.
pub struct Operator {
    tool: &'static str,
    user: Option<String>,
    /// One id for every event of this run, so an auditor finds the whole import at once.
    request_id: String,
}

impl Operator {
    /// `tool` as run by the current OS user (`USER`, else `LOGNAME`, when set).
    pub fn new(tool: &'static str) -> Operator {
        let user = ["USER", "LOGNAME"]
            .into_iter()
            .filter_map(|name| std::env::var(name).ok())
            .find(|name| !name.trim().is_empty());
        Operator {
            tool,
            user,
            request_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The client the events name (searchable with `AuditEvent?agent=`).
    pub fn agent_name(&self) -> String {
        match &self.user {
            Some(user) => format!("{} (OS user {user})", self.tool),
            None => self.tool.to_string(),
        }
    }

    /// Appends, inside the write's own transaction, the AuditEvent of one committed write
    /// of `path`: the resources it wrote (`Type/id/_history/n`), their patients and holders.
    fn record(&self, tx: &mut Tx<'_>, path: &str, written: &[Written]) -> Result<(), RepoError> {
        if written.is_empty() {
            return Ok(());
        }
        let mut event = EventBuilder::new(
            Interaction::Operation("import".into()),
            &self.request_id,
            chrono::Utc::now().timestamp_millis(),
        );
        event.agent = AuditAgent {
            client_id: Some(self.agent_name()),
            ..AuditAgent::default()
        };
        event.outcome_desc = Some(format!("{} of {path}", self.tool));
        let mut custodians: Vec<String> = Vec::new();
        for w in written {
            event.resources.push(w.location.clone());
            // Plain patient ids only: a reference to another server is no patient here.
            if let Some(patient) = w.patient_id.as_deref().filter(|id| !id.contains(':')) {
                let patient = format!("Patient/{patient}");
                if !event.patients.contains(&patient) {
                    event.patients.push(patient);
                }
            }
            if let Some(custodian) = &w.custodian {
                if !custodians.contains(custodian) {
                    custodians.push(custodian.clone());
                }
            }
        }
        let row = renkei_access::audit_log::to_row(&event, &custodians);
        renkei_access::audit_log::append(tx, &[row]).map_err(|e| {
            RepoError::Store(renkei_store::StoreError::Unavailable(format!(
                "audit trail: {e}"
            )))
        })
    }
}

/// One resource a write stored, as its AuditEvent names it.
struct Written {
    location: String,
    patient_id: Option<String>,
    custodian: Option<String>,
}

impl Written {
    fn of(stored: &StoredResource) -> Written {
        Written {
            location: format!(
                "{}/{}/_history/{}",
                stored.res_type, stored.id, stored.version
            ),
            patient_id: stored.patient_id.clone(),
            custodian: stored.custodian.clone(),
        }
    }
}

fn trusted_context(repository: &Repository) -> WriteContext {
    WriteContext {
        custodian_from_source: true,
        linking: repository.linking().clone(),
        ..WriteContext::default()
    }
}

/// Loads the demo network if the database holds no resources; returns what it loaded.
pub fn load_demo_if_empty(
    repository: &Repository,
    operator: &Operator,
) -> Result<Option<LoadCounts>, LoadError> {
    // Registered clients count as data: on a database prepared for production, the demo's
    // clients (two may break the glass) would be real credentials next to real ones.
    let empty = repository
        .read_tx(|tx| Ok(tx.is_empty()? && tx.clients()?.is_empty()))
        .map_err(|source| LoadError::Repository {
            path: "database".into(),
            source,
        })?;
    if !empty {
        return Ok(None);
    }
    let mut inputs = Vec::new();
    for (name, text) in DEMO_BUNDLES {
        inputs.push(parse_json_input(name, text.as_bytes())?);
    }
    let report = import_inputs(repository, operator, inputs, false);
    match report.failures.first() {
        // The demo bundles are compiled in and load on an empty database: a failure is a
        // defect or a database problem, and a half-loaded demo must not look loaded.
        Some(failure) => Err(LoadError::Content {
            path: "demo network".into(),
            message: failure.clone(),
        }),
        None => Ok(Some(report.counts)),
    }
}

/// One checked input: a parsed JSON document, or the parsed lines of an NDJSON file.
enum Input {
    Json {
        path: String,
        value: Value,
    },
    Ndjson {
        path: String,
        lines: Vec<(usize, Value)>,
    },
}

impl Input {
    /// Whether it would write AuditEvents: a resource, or a Bundle entry's resource or
    /// request URL (stored in the clinical tables they would be read by facilities through
    /// history and `_revinclude`, and by no auditor).
    fn holds_audit_events(&self) -> bool {
        fn is_audit_event(value: &Value) -> bool {
            let entries = value.get("entry").and_then(Value::as_array);
            value.get("resourceType").and_then(Value::as_str) == Some("AuditEvent")
                || entries.into_iter().flatten().any(|entry| {
                    entry.get("resource").is_some_and(is_audit_event)
                        || entry
                            .pointer("/request/url")
                            .and_then(Value::as_str)
                            .is_some_and(|url| {
                                renkei_repository::relative_entry_url(url).starts_with("AuditEvent")
                            })
                })
        }
        match self {
            Input::Json { value, .. } => is_audit_event(value),
            Input::Ndjson { lines, .. } => lines.iter().any(|(_, value)| is_audit_event(value)),
        }
    }

    fn path(&self) -> &str {
        match self {
            Input::Json { path, .. } | Input::Ndjson { path, .. } => path,
        }
    }
}

/// What an import stored, and what it did not.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub counts: LoadCounts,
    /// Each entry, line or file that was not stored, and why (with file and entry or line).
    pub failures: Vec<String>,
    /// Files or parts of files not attempted after an import stopped.
    pub not_attempted: Vec<String>,
}

/// `renkei import FILE…`: Bundles (transaction, batch, collection) and NDJSON. Every file is
/// read and parsed first (a missing file or a line that is not JSON fails before anything is
/// written); the writes then report each failed entry or line rather than dropping it.
pub fn import_files(
    repository: &Repository,
    files: &[String],
    operator: &Operator,
) -> Result<ImportReport, LoadError> {
    let mut inputs = Vec::with_capacity(files.len());
    for file in files {
        let bytes = std::fs::read(Path::new(file)).map_err(|source| LoadError::Read {
            path: file.clone(),
            source,
        })?;
        let is_ndjson = file.ends_with(".ndjson") || file.ends_with(".jsonl");
        let input = if is_ndjson {
            parse_ndjson_input(file, &bytes)?
        } else {
            parse_json_input(file, &bytes)?
        };
        if input.holds_audit_events() {
            return Err(LoadError::Content {
                path: file.clone(),
                message: "AuditEvent resources are not imported: the audit trail is \
                          append-only and written by the gateway itself (over HTTP too: 405)"
                    .into(),
            });
        }
        inputs.push(input);
    }
    Ok(import_inputs(repository, operator, inputs, true))
}

fn parse_json_input(path: &str, bytes: &[u8]) -> Result<Input, LoadError> {
    let value = renkei_fhir::parse_json(bytes).map_err(|e| LoadError::Content {
        path: path.into(),
        message: e.to_string(),
    })?;
    // Other Bundles are another server's answers or messages (a searchset's OperationOutcome
    // entry, a history's deleted versions), not data to store entry by entry.
    if value.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("untyped");
        if !matches!(kind, "transaction" | "batch" | "collection") {
            return Err(LoadError::Content {
                path: path.into(),
                message: format!(
                    "a {kind} Bundle is not imported: renkei import takes transaction, batch \
                     and collection Bundles; put the resources to store in a collection"
                ),
            });
        }
        // An import stores; a read or search entry would be counted and audited as an
        // import of what it read.
        let entries = value.get("entry").and_then(Value::as_array);
        if let Some((index, method)) =
            entries
                .into_iter()
                .flatten()
                .enumerate()
                .find_map(|(i, e)| {
                    let method = e.pointer("/request/method").and_then(Value::as_str)?;
                    matches!(method, "GET" | "HEAD").then_some((i, method))
                })
        {
            return Err(LoadError::Content {
                path: path.into(),
                message: format!(
                    "entry {index} is a {method}: renkei import only writes; send reads and \
                     searches to the server"
                ),
            });
        }
    }
    Ok(Input::Json {
        path: path.into(),
        value,
    })
}

fn parse_ndjson_input(path: &str, bytes: &[u8]) -> Result<Input, LoadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LoadError::Content {
        path: path.into(),
        message: "NDJSON must be UTF-8".into(),
    })?;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value = renkei_fhir::parse_json(line.as_bytes()).map_err(|e| LoadError::Content {
            path: format!("{path}:{}", n + 1),
            message: e.to_string(),
        })?;
        // A type that cannot be stored fails here, before anything is written, rather than
        // after the chunks before it committed.
        let res_type = value
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        renkei_repository::check_type(res_type).map_err(|e| LoadError::Content {
            path: format!("{path}:{}", n + 1),
            message: e.to_string(),
        })?;
        lines.push((n + 1, value));
    }
    Ok(Input::Ndjson {
        path: path.into(),
        lines,
    })
}

/// How one input went: failures to report, and whether the import must stop (a rejected
/// transaction, collection or NDJSON chunk: later files may depend on what it held).
struct Step {
    failures: Vec<String>,
    stopped: Option<String>,
}

fn import_inputs(
    repository: &Repository,
    operator: &Operator,
    inputs: Vec<Input>,
    show_progress: bool,
) -> ImportReport {
    let progress = if show_progress {
        ProgressBar::new(inputs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = ImportReport::default();
    let mut inputs = inputs.into_iter();
    while let Some(input) = inputs.next() {
        let step = match &input {
            Input::Json { path, value } => {
                import_value(repository, operator, path, value, &mut report.counts)
            }
            Input::Ndjson { path, lines } => {
                import_ndjson(repository, operator, path, lines, &mut report.counts)
            }
        };
        report.failures.extend(step.failures);
        progress.set_message(format!("{} resources", report.counts.total()));
        progress.inc(1);
        if let Some(rest_of_file) = step.stopped {
            report.not_attempted.push(rest_of_file);
            report.not_attempted.extend(
                inputs
                    .by_ref()
                    .map(|i| format!("{} (not attempted)", i.path())),
            );
            break;
        }
    }
    progress.finish_and_clear();
    report
}

fn import_value(
    repository: &Repository,
    operator: &Operator,
    path: &str,
    value: &Value,
    counts: &mut LoadCounts,
) -> Step {
    let context = trusted_context(repository);
    let is_bundle = value.get("resourceType").and_then(Value::as_str) == Some("Bundle");
    let kind = value.get("type").and_then(Value::as_str);
    match (is_bundle, kind) {
        (true, Some(kind @ ("transaction" | "batch"))) => {
            // The batch hook runs once per committed entry, the transaction's once.
            let on_commit = |tx: &mut Tx<'_>, _first: usize, responses: &[Value]| {
                let written = written_of_responses(tx, responses)?;
                operator.record(tx, path, &written)
            };
            match repository.process_bundle(value, &context, false, &on_commit) {
                Ok(response) => {
                    let failures = tally_response(path, &response, counts);
                    Step {
                        failures,
                        stopped: None,
                    }
                }
                Err(e) => Step {
                    failures: vec![format!(
                        "{path}: {kind} rejected, nothing of it was stored: {e}"
                    )],
                    stopped: Some(format!("{path} (the whole {kind})")),
                },
            }
        }
        (true, _) => {
            // Entry numbers of the resources, for messages in the Bundle's own numbering.
            let (entry_numbers, resources): (Vec<usize>, Vec<Value>) = value
                .get("entry")
                .and_then(Value::as_array)
                .map(|entries| {
                    entries
                        .iter()
                        .enumerate()
                        .filter_map(|(i, e)| e.get("resource").map(|r| (i, r.clone())))
                        .unzip()
                })
                .unwrap_or_default();
            store_all(repository, operator, path, &resources, counts).map_or_else(
                |(index, e)| {
                    let at = index
                        .and_then(|i| entry_numbers.get(i))
                        .map(|n| format!(" entry {n}"))
                        .unwrap_or_default();
                    Step {
                        failures: vec![format!(
                            "{path}:{at} {e}; the Bundle is stored in one transaction, so \
                             nothing of it was stored"
                        )],
                        stopped: Some(format!("{path} (the whole Bundle)")),
                    }
                },
                |()| Step {
                    failures: Vec::new(),
                    stopped: None,
                },
            )
        }
        (false, _) => store_all(
            repository,
            operator,
            path,
            std::slice::from_ref(value),
            counts,
        )
        .map_or_else(
            |(_, e)| Step {
                failures: vec![format!("{path}: {e}")],
                stopped: Some(path.to_string()),
            },
            |()| Step {
                failures: Vec::new(),
                stopped: None,
            },
        ),
    }
}

/// Stores `resources` in one transaction with their AuditEvent; on failure, the position of
/// the resource that failed (when one did) and the error without that position.
fn store_all(
    repository: &Repository,
    operator: &Operator,
    path: &str,
    resources: &[Value],
    counts: &mut LoadCounts,
) -> Result<(), (Option<usize>, String)> {
    let on_commit = |tx: &mut Tx<'_>, stored: &[StoredResource]| {
        let written: Vec<Written> = stored.iter().map(Written::of).collect();
        operator.record(tx, path, &written)
    };
    match repository.import_resources_with(resources, &trusted_context(repository), &on_commit) {
        Ok(stored) => {
            for resource in &stored {
                counts.add_type(&resource.res_type);
            }
            Ok(())
        }
        Err(RepoError::Entry {
            index,
            request,
            source,
        }) => Err((Some(index), format!("{request}: {source}"))),
        Err(e) => Err((None, e.to_string())),
    }
}

/// One transaction per 1,000 lines keeps memory flat and commits steady; a rejected line
/// rolls back its chunk, and the report says which lines are stored and which are not.
const NDJSON_CHUNK: usize = 1000;

fn import_ndjson(
    repository: &Repository,
    operator: &Operator,
    path: &str,
    lines: &[(usize, Value)],
    counts: &mut LoadCounts,
) -> Step {
    for (n, chunk) in lines.chunks(NDJSON_CHUNK).enumerate() {
        let resources: Vec<Value> = chunk.iter().map(|(_, v)| v.clone()).collect();
        let Err((index, e)) = store_all(repository, operator, path, &resources, counts) else {
            continue;
        };
        let first_line = chunk.first().map_or(0, |(line, _)| *line);
        let location = match index.and_then(|i| chunk.get(i)) {
            Some((line, _)) => format!("{path}:{line}"),
            None => format!("{path}:{first_line}-"),
        };
        let stored_before = n * NDJSON_CHUNK;
        let committed = match lines.get(stored_before.wrapping_sub(1)) {
            Some((last_line, _)) if stored_before > 0 => {
                format!("lines up to {last_line} of {path} ({stored_before} resources) are stored")
            }
            _ => format!("nothing of {path} is stored"),
        };
        return Step {
            failures: vec![format!("{location}: {e}; {committed}")],
            stopped: Some(format!("{path} from line {first_line} on (not stored)")),
        };
    }
    Step {
        failures: Vec::new(),
        stopped: None,
    }
}

/// The resources a Bundle write committed (its 2xx entries with a location), with their
/// patients and holders as stored.
fn written_of_responses(tx: &mut Tx<'_>, responses: &[Value]) -> Result<Vec<Written>, RepoError> {
    let mut written = Vec::new();
    for response in responses {
        let status = response
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(location) = response
            .pointer("/response/location")
            .and_then(Value::as_str)
            .filter(|_| status.starts_with('2'))
        else {
            continue;
        };
        let mut parts = location.split('/');
        let (Some(res_type), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        let row = tx.current(res_type, id)?;
        written.push(Written {
            location: location.to_string(),
            patient_id: row.as_ref().and_then(|r| r.patient_id.clone()),
            custodian: row.and_then(|r| r.custodian),
        });
    }
    Ok(written)
}

/// Counts the stored entries of a batch/transaction response and describes each failed one:
/// file, entry index, status and the OperationOutcome's diagnostics.
fn tally_response(path: &str, response: &Value, counts: &mut LoadCounts) -> Vec<String> {
    let mut failures = Vec::new();
    let entries = response
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (index, entry) in entries.iter().enumerate() {
        let status = entry
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or("(no status)");
        if status.starts_with('2') {
            if let Some(res_type) = entry
                .pointer("/response/location")
                .and_then(Value::as_str)
                .and_then(|l| l.split('/').next())
            {
                counts.add_type(res_type);
            }
            continue;
        }
        let diagnostics: Vec<&str> = entry
            .pointer("/response/outcome/issue")
            .and_then(Value::as_array)
            .map(|issues| {
                issues
                    .iter()
                    .filter_map(|i| i.get("diagnostics").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        failures.push(format!(
            "{path}: entry {index}: {status}: {}",
            if diagnostics.is_empty() {
                "(no diagnostics)".to_string()
            } else {
                diagnostics.join("; ")
            }
        ));
    }
    failures
}
