//! Smoke mode: a tiny generated data set, loaded and run through every workload for a fraction
//! of a second at concurrency 1 and 2, with checks that each answered 2xx and that searches
//! returned data. The black-box suite runs it against Renkei on both backends.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;

use crate::client::{Target, Tokens};
use crate::generate::{facilities, generate, GenerateOptions, Manifest};
use crate::load::load;
use crate::report::{Report, Row};
use crate::run::{measure, Phase};
use crate::workload::{pool, Access, Workload};
use crate::Error;

pub const SMOKE_PATIENTS: usize = 16;
pub const SMOKE_FACILITY_COUNT: usize = 3;
pub const SMOKE_SEED: u64 = 20_251_201;

/// The Organization ids of the smoke data set (register one client per facility).
pub fn smoke_facilities() -> Vec<String> {
    facilities(SMOKE_FACILITY_COUNT)
        .into_iter()
        .map(|f| f.id)
        .collect()
}

pub fn smoke_options(out: impl Into<std::path::PathBuf>) -> GenerateOptions {
    let mut o = GenerateOptions::new(SMOKE_PATIENTS, SMOKE_FACILITY_COUNT, SMOKE_SEED, out);
    o.patients_per_bundle = 4;
    o.patients_per_patient_bundle = 8;
    o
}

/// Generates, loads and runs everything against `base_url`; fails on any non-2xx answer, an
/// empty search, or owner and consented facility seeing different results.
pub async fn smoke(base_url: &str, tokens: &Tokens) -> Result<Report, Error> {
    smoke_with(base_url, tokens, Duration::from_millis(300)).await
}

pub async fn smoke_with(base_url: &str, tokens: &Tokens, each: Duration) -> Result<Report, Error> {
    let target = Target::new(base_url, false, 4)?;
    let dir = std::env::temp_dir().join(format!(
        "renkei-bench-smoke-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    let result = smoke_in(&target, tokens, each, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn smoke_in(
    target: &Target,
    tokens: &Tokens,
    each: Duration,
    dir: &std::path::Path,
) -> Result<Report, Error> {
    let manifest = generate(&smoke_options(dir))?;
    let loaded = load(target, dir, tokens, 2, false).await?;
    if loaded.failed_bundles > 0 || loaded.resources != manifest.resources {
        return Err(Error::Smoke(format!(
            "load: {} of {} resources, {} bundles failed; first error: {}",
            loaded.resources,
            manifest.resources,
            loaded.failed_bundles,
            loaded.first_error.unwrap_or_default()
        )));
    }
    let mut report = Report::new(format!("smoke against {}", target.base));
    let mut accesses = vec![Access::Owner];
    if tokens.per_facility() {
        accesses.push(Access::Consented);
        same_results_for_owner_and_consented(target, tokens, &manifest).await?;
    }
    for access in &accesses {
        for w in Workload::ALL {
            if *access == Access::Consented && !w.expects_entries() {
                continue;
            }
            let p = pool(w, &manifest, tokens, access, 200)?;
            for c in [1usize, 2] {
                let phase = Phase {
                    concurrency: c,
                    duration: each,
                    warmup: Duration::ZERO,
                    rate: None,
                    seed: 1,
                };
                let s = measure(target, &p, &phase).await;
                let label = format!("{w} ({access}, c={c})");
                if s.requests == 0 {
                    return Err(Error::Smoke(format!("{label}: no request completed")));
                }
                if s.errors > 0 {
                    return Err(Error::Smoke(format!(
                        "{label}: {} of {} requests failed; first: {}",
                        s.errors,
                        s.requests,
                        s.first_error.unwrap_or_default()
                    )));
                }
                if s.empty > 0 {
                    return Err(Error::Smoke(format!(
                        "{label}: {} of {} searches returned no entry",
                        s.empty, s.requests
                    )));
                }
                report.rows.push(Row {
                    server: target.base.clone(),
                    workload: w.name().into(),
                    access: access.to_string(),
                    concurrency: c,
                    mode: "closed".into(),
                    summary: s,
                });
            }
        }
    }
    // An open-loop run, to keep that path exercised too.
    let p = pool(Workload::Read, &manifest, tokens, &Access::Owner, 50)?;
    let phase = Phase {
        concurrency: 2,
        duration: each,
        warmup: Duration::ZERO,
        rate: Some(50.0),
        seed: 2,
    };
    let s = measure(target, &p, &phase).await;
    if s.requests == 0 || s.errors > 0 {
        return Err(Error::Smoke(format!(
            "open-loop read: {} requests, {} errors",
            s.requests, s.errors
        )));
    }
    report.rows.push(Row {
        server: target.base.clone(),
        workload: "read".into(),
        access: "owner".into(),
        concurrency: 2,
        mode: "open@50/s".into(),
        summary: s,
    });
    Ok(report)
}

async fn entry_ids(
    target: &Target,
    path: &str,
    token: Option<&str>,
) -> Result<BTreeSet<String>, Error> {
    let a = target.send(&Method::GET, path, token, None, false).await?;
    if a.status != 200 {
        return Err(Error::Smoke(format!("GET {path}: status {}", a.status)));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&a.body).map_err(|e| Error::Smoke(format!("GET {path}: {e}")))?;
    Ok(v["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| {
                    let r = &e["resource"];
                    Some(format!(
                        "{}/{}",
                        r["resourceType"].as_str()?,
                        r["id"].as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The premise of the consent-overhead comparison: for a pair from the manifest, the owning
/// and the consented facility get the same result set.
async fn same_results_for_owner_and_consented(
    target: &Target,
    tokens: &Tokens,
    manifest: &Manifest,
) -> Result<(), Error> {
    let pair = manifest
        .consented_pairs
        .first()
        .ok_or_else(|| Error::Smoke("the smoke data set has no consented pair".into()))?;
    let sample = manifest
        .samples
        .iter()
        .find(|s| s.id == pair.patient)
        .ok_or_else(|| Error::Smoke("consented pair without sample".into()))?;
    let mut paths = vec![format!("Patient/{}/$everything", sample.id)];
    if let Some(l) = sample.labs.first() {
        paths.push(format!(
            "Observation?patient={}&code={}&_sort=-date",
            sample.id,
            crate::client::encode(&format!("{}|{}", l.system, l.code))
        ));
    }
    let owner = tokens.for_facility(&pair.owner)?;
    let other = tokens.for_facility(&pair.consented)?;
    for path in paths {
        let a = entry_ids(target, &path, owner.as_deref()).await?;
        let b = entry_ids(target, &path, other.as_deref()).await?;
        if a.is_empty() || a != b {
            return Err(Error::Smoke(format!(
                "{path}: owner {} sees {} entries, consented {} sees {}",
                pair.owner,
                a.len(),
                pair.consented,
                b.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn smoke_data_set_covers_every_workload_and_access() {
        let dir =
            std::env::temp_dir().join(format!("renkei-bench-smokedata-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = generate(&smoke_options(&dir)).unwrap();
        assert_eq!(smoke_facilities(), vec!["fac-001", "fac-002", "fac-003"]);
        assert!(!m.consented_pairs.is_empty());
        let mut map = std::collections::BTreeMap::new();
        for f in smoke_facilities() {
            map.insert(f.clone(), f);
        }
        let tokens = Tokens::PerFacility(map);
        for w in Workload::ALL {
            pool(w, &m, &tokens, &Access::Owner, 10).unwrap();
            if w.expects_entries() {
                pool(w, &m, &tokens, &Access::Consented, 10).unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
