//! Loading a generated data set through the API: phase by phase (organizations, patients and
//! consents, clinical data), `concurrency` Bundles in flight, each posted with the token of the
//! facility that holds its content (the server records the writer as custodian).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Target, Tokens};
use crate::generate::{BundleFile, Manifest};
use crate::Error;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LoadResult {
    pub bundles: usize,
    pub resources: usize,
    pub failed_bundles: usize,
    pub seconds: f64,
    pub resources_per_s: f64,
    /// The clinical phase alone (the bulk of the data).
    pub clinical_resources_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error: Option<String>,
}

pub async fn load(
    target: &Target,
    dir: &Path,
    tokens: &Tokens,
    concurrency: usize,
    progress: bool,
) -> Result<LoadResult, Error> {
    let manifest = Manifest::read(dir)?;
    let mut result = LoadResult::default();
    let start = Instant::now();
    for phase in 0..=2u8 {
        let files: Vec<BundleFile> = manifest
            .bundles
            .iter()
            .filter(|b| b.phase == phase)
            .cloned()
            .collect();
        let phase_start = Instant::now();
        let (ok, failed, resources, first) =
            post_all(target, dir, tokens, files, concurrency, progress).await?;
        let secs = phase_start.elapsed().as_secs_f64();
        if phase == 2 && secs > 0.0 {
            result.clinical_resources_per_s = resources as f64 / secs;
        }
        result.bundles += ok;
        result.failed_bundles += failed;
        result.resources += resources;
        if result.first_error.is_none() {
            result.first_error = first;
        }
    }
    result.seconds = start.elapsed().as_secs_f64();
    if result.seconds > 0.0 {
        result.resources_per_s = result.resources as f64 / result.seconds;
    }
    Ok(result)
}

type PhaseOutcome = (usize, usize, usize, Option<String>);

async fn post_all(
    target: &Target,
    dir: &Path,
    tokens: &Tokens,
    files: Vec<BundleFile>,
    concurrency: usize,
    progress: bool,
) -> Result<PhaseOutcome, Error> {
    // Resolve every token first: a missing one is a usage error, not a failed bundle.
    let mut jobs = Vec::with_capacity(files.len());
    for f in files {
        let token = tokens.for_facility(&f.facility)?;
        jobs.push((f, token));
    }
    let total = jobs.len();
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut handles = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (jobs, next, target, first_error) = (
            jobs.clone(),
            next.clone(),
            target.clone(),
            first_error.clone(),
        );
        let dir = dir.to_path_buf();
        handles.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut resources) = (0usize, 0usize, 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((file, token)) = jobs.get(i) else {
                    break;
                };
                let path = dir.join(&file.path);
                let outcome = match std::fs::read(&path) {
                    Ok(bytes) => target
                        .send(&Method::POST, "", token.as_deref(), Some(&bytes), true)
                        .await
                        .and_then(|a| {
                            if (200..300).contains(&a.status) {
                                Ok(())
                            } else {
                                let text: String =
                                    String::from_utf8_lossy(&a.body).chars().take(400).collect();
                                Err(Error::Server(format!("{} {}: {text}", a.status, file.path)))
                            }
                        }),
                    Err(e) => Err(Error::io(&path, e)),
                };
                match outcome {
                    Ok(()) => {
                        ok += 1;
                        resources += file.entries;
                    }
                    Err(e) => {
                        failed += 1;
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                if progress && (i + 1) % 100 == 0 {
                    eprintln!("  {}/{total} bundles", i + 1);
                }
            }
            (ok, failed, resources)
        }));
    }
    let (mut ok, mut failed, mut resources) = (0, 0, 0);
    for h in handles {
        let (o, f, r) = h
            .await
            .map_err(|e| Error::Http(format!("load worker: {e}")))?;
        ok += o;
        failed += f;
        resources += r;
    }
    let first = first_error.lock().ok().and_then(|f| f.clone());
    Ok((ok, failed, resources, first))
}
