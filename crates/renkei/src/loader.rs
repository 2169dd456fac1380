//! Loading FHIR content without the HTTP server: the demo network and `renkei import`.

use indicatif::{ProgressBar, ProgressStyle};
use renkei_repository::{Repository, StoredResource, WriteContext};
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
    fn add(&mut self, stored: &[StoredResource]) {
        for resource in stored {
            *self.0.entry(resource.res_type.clone()).or_default() += 1;
        }
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

fn trusted_context(repository: &Repository) -> WriteContext {
    WriteContext {
        custodian_from_source: true,
        linking: repository.linking().clone(),
        ..WriteContext::default()
    }
}

/// Loads the demo network if the database holds no resources; returns what it loaded.
pub fn load_demo_if_empty(repository: &Repository) -> Result<Option<LoadCounts>, LoadError> {
    let empty = repository
        .read_tx(|tx| Ok(tx.is_empty()?))
        .map_err(|source| LoadError::Repository {
            path: "database".into(),
            source,
        })?;
    if !empty {
        return Ok(None);
    }
    let mut counts = LoadCounts::default();
    for (name, text) in DEMO_BUNDLES {
        let stored = load_json_bytes(repository, name, text.as_bytes())?;
        counts.add(&stored);
    }
    Ok(Some(counts))
}

fn load_json_bytes(
    repository: &Repository,
    path: &str,
    bytes: &[u8],
) -> Result<Vec<StoredResource>, LoadError> {
    let value = renkei_fhir::parse_json(bytes).map_err(|e| LoadError::Content {
        path: path.into(),
        message: e.to_string(),
    })?;
    load_value(repository, path, &value)
}

fn load_value(
    repository: &Repository,
    path: &str,
    value: &Value,
) -> Result<Vec<StoredResource>, LoadError> {
    let context = trusted_context(repository);
    let repo_err = |source| LoadError::Repository {
        path: path.into(),
        source,
    };
    let is_bundle = value.get("resourceType").and_then(Value::as_str) == Some("Bundle");
    let kind = value.get("type").and_then(Value::as_str);
    match (is_bundle, kind) {
        (true, Some("transaction" | "batch")) => {
            let response = repository
                .process_bundle(value, &context, false, &renkei_repository::no_commit_hook)
                .map_err(repo_err)?;
            Ok(stored_from_response(&response))
        }
        (true, _) => repository
            .import_collection(value, &context)
            .map_err(repo_err),
        (false, _) => repository
            .import_resources(std::slice::from_ref(value), &context)
            .map_err(repo_err),
    }
}

/// Successful entries of a batch/transaction response, as (type, id, version) records.
fn stored_from_response(response: &Value) -> Vec<StoredResource> {
    response
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let location = e.pointer("/response/location")?.as_str()?;
                    let status = e.pointer("/response/status")?.as_str()?;
                    if !status.starts_with('2') {
                        return None;
                    }
                    let mut parts = location.split('/');
                    Some(StoredResource {
                        custodian: None,
                        patient_id: None,
                        res_type: parts.next()?.to_string(),
                        id: parts.next()?.to_string(),
                        version: 0,
                        last_updated: 0,
                        body: String::new(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `renkei import FILE…`: Bundles (transaction, batch, collection) and NDJSON.
pub fn import_files(repository: &Repository, files: &[String]) -> Result<LoadCounts, LoadError> {
    let progress = ProgressBar::new(files.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut counts = LoadCounts::default();
    for file in files {
        let path = Path::new(file);
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: file.clone(),
            source,
        })?;
        let is_ndjson = file.ends_with(".ndjson") || file.ends_with(".jsonl");
        let stored = if is_ndjson {
            load_ndjson(repository, file, &bytes)?
        } else {
            load_json_bytes(repository, file, &bytes)?
        };
        counts.add(&stored);
        progress.set_message(format!("{} resources", counts.total()));
        progress.inc(1);
    }
    progress.finish();
    Ok(counts)
}

fn load_ndjson(
    repository: &Repository,
    path: &str,
    bytes: &[u8],
) -> Result<Vec<StoredResource>, LoadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LoadError::Content {
        path: path.into(),
        message: "NDJSON must be UTF-8".into(),
    })?;
    let mut resources = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value = renkei_fhir::parse_json(line.as_bytes()).map_err(|e| LoadError::Content {
            path: format!("{path}:{}", n + 1),
            message: e.to_string(),
        })?;
        resources.push(value);
    }
    // One transaction per 1,000 lines keeps memory flat and commits steady.
    let mut stored = Vec::with_capacity(resources.len());
    for chunk in resources.chunks(1000) {
        stored.extend(
            repository
                .import_resources(chunk, &trusted_context(repository))
                .map_err(|source| LoadError::Repository {
                    path: path.into(),
                    source,
                })?,
        );
    }
    Ok(stored)
}
