//! Workloads: each turns the manifest's samples into a pool of concrete requests (path, body,
//! the token of the facility that sends it), so the measuring loop only picks and sends.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use reqwest::Method;
use serde_json::json;

use crate::client::{encode, Tokens};
use crate::generate::{Manifest, Sample, JLAC10, UCUM};
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Read,
    Vread,
    SearchLabTrend,
    SearchActiveMeds,
    SearchPatientKanji,
    SearchPatientKana,
    SearchImaging,
    SearchChained,
    Everything,
    Create,
    Transaction,
}

impl Workload {
    pub const ALL: [Workload; 11] = [
        Workload::Read,
        Workload::Vread,
        Workload::SearchLabTrend,
        Workload::SearchActiveMeds,
        Workload::SearchPatientKanji,
        Workload::SearchPatientKana,
        Workload::SearchImaging,
        Workload::SearchChained,
        Workload::Everything,
        Workload::Create,
        Workload::Transaction,
    ];

    /// The five searches issue 3 asks for at 1M resources, plus the kana variant.
    pub const SEARCHES: [Workload; 6] = [
        Workload::SearchLabTrend,
        Workload::SearchActiveMeds,
        Workload::SearchPatientKanji,
        Workload::SearchPatientKana,
        Workload::SearchImaging,
        Workload::SearchChained,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Vread => "vread",
            Workload::SearchLabTrend => "search-lab-trend",
            Workload::SearchActiveMeds => "search-active-meds",
            Workload::SearchPatientKanji => "search-patient-kanji",
            Workload::SearchPatientKana => "search-patient-kana",
            Workload::SearchImaging => "search-imaging",
            Workload::SearchChained => "search-chained",
            Workload::Everything => "everything",
            Workload::Create => "create",
            Workload::Transaction => "transaction",
        }
    }

    /// What one request looks like (for `--help` and the report).
    pub fn describe(self) -> &'static str {
        match self {
            Workload::Read => "GET [type]/[id] of a sample patient's resources",
            Workload::Vread => "GET [type]/[id]/_history/1",
            Workload::SearchLabTrend => "Observation?patient=X&code=JLAC10|Y&_sort=-date",
            Workload::SearchActiveMeds => "MedicationRequest?patient=X&status=active",
            Workload::SearchPatientKanji => "Patient?family=<kanji>&birthdate=D",
            Workload::SearchPatientKana => "Patient?family=<kana>&birthdate=D",
            Workload::SearchImaging => "ImagingStudy?patient=X&modality=CT",
            Workload::SearchChained => "Observation?subject:Patient.identifier=sys|val",
            Workload::Everything => "Patient/X/$everything",
            Workload::Create => "POST Observation (one lab result)",
            Workload::Transaction => {
                "POST transaction Bundle (Encounter + 3 Observations, urn:uuid)"
            }
        }
    }

    /// Whether a 2xx answer must be a Bundle with entries.
    pub fn expects_entries(self) -> bool {
        Workload::SEARCHES.contains(&self) || self == Workload::Everything
    }

    pub fn is_write(self) -> bool {
        matches!(self, Workload::Create | Workload::Transaction)
    }

    pub fn parse_list(text: &str) -> Result<Vec<Workload>, Error> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => out.extend(Workload::ALL),
                "searches" => out.extend(Workload::SEARCHES),
                _ => out.push(part.parse()?),
            }
        }
        out.dedup();
        if out.is_empty() {
            return Err(Error::Usage("no workload given".into()));
        }
        Ok(out)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
                Error::Usage(format!(
                    "unknown workload {s}; known: {}, all, searches",
                    names.join(", ")
                ))
            })
    }
}

/// Whose token the requests carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The facility that holds the sample patient's data (its home facility).
    Owner,
    /// Another facility that the patient's consent permits, for patients registered at one
    /// facility only: both see exactly the same data.
    Consented,
    /// The owning facility, asking about the same patients as `Consented` (the baseline of
    /// the consent-overhead comparison).
    PairOwner,
    /// Every request with this facility's token.
    Facility(String),
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Owner => f.write_str("owner"),
            Access::Consented => f.write_str("consented"),
            Access::PairOwner => f.write_str("pair-owner"),
            Access::Facility(id) => write!(f, "as {id}"),
        }
    }
}

impl FromStr for Access {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Access::Owner),
            "consented" => Ok(Access::Consented),
            "pair-owner" => Ok(Access::PairOwner),
            _ => Err(Error::Usage(format!(
                "--access is owner, consented or pair-owner (or use --as-facility), not {s}"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Arc<Vec<u8>>>,
}

/// The pool of requests of one workload.
#[derive(Debug, Clone)]
pub struct Pool {
    pub workload: Workload,
    pub requests: Arc<Vec<Request>>,
}

/// Sample patients with the facility whose token asks about them.
fn subjects<'a>(
    manifest: &'a Manifest,
    access: &Access,
) -> Result<Vec<(&'a Sample, String)>, Error> {
    let out: Vec<(&Sample, String)> = match access {
        Access::Owner => manifest
            .samples
            .iter()
            .map(|s| (s, s.home.clone()))
            .collect(),
        Access::Facility(f) => manifest.samples.iter().map(|s| (s, f.clone())).collect(),
        Access::Consented | Access::PairOwner => manifest
            .consented_pairs
            .iter()
            .filter_map(|p| {
                let s = manifest.samples.iter().find(|s| s.id == p.patient)?;
                let who = if *access == Access::Consented {
                    &p.consented
                } else {
                    &p.owner
                };
                Some((s, who.clone()))
            })
            .collect(),
    };
    if out.is_empty() {
        return Err(Error::Usage(format!(
            "the manifest has no sample patients for {access} access"
        )));
    }
    Ok(out)
}

fn observation_body(patient: &str, n: usize) -> serde_json::Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }],
        "code": { "coding": [{ "system": JLAC10, "code": "3D046000001906202", "display": "HbA1c" }], "text": "HbA1c" },
        "subject": { "reference": format!("Patient/{patient}") },
        "effectiveDateTime": format!("2025-12-{:02}T09:{:02}:00+09:00", 1 + n % 28, n % 60),
        "valueQuantity": { "value": 6 + n % 3, "unit": "%", "system": UCUM, "code": "%" },
    })
}

fn transaction_body(patient: &str, n: usize) -> serde_json::Value {
    let enc = format!("urn:uuid:00000000-0000-4000-8000-{:012}", n * 4 + 1);
    let mut entries = vec![json!({
        "fullUrl": enc,
        "resource": {
            "resourceType": "Encounter",
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
            "subject": { "reference": format!("Patient/{patient}") },
            "period": { "start": "2025-12-02T09:00:00+09:00", "end": "2025-12-02T09:30:00+09:00" },
        },
        "request": { "method": "POST", "url": "Encounter" },
    })];
    for k in 0..3 {
        let mut obs = observation_body(patient, n + k);
        if let Some(map) = obs.as_object_mut() {
            map.insert("encounter".into(), json!({ "reference": enc }));
        }
        entries.push(json!({
            "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{:012}", n * 4 + 2 + k),
            "resource": obs,
            "request": { "method": "POST", "url": "Observation" },
        }));
    }
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

/// Builds the request pool of `workload` (at most `limit` requests).
pub fn pool(
    workload: Workload,
    manifest: &Manifest,
    tokens: &Tokens,
    access: &Access,
    limit: usize,
) -> Result<Pool, Error> {
    let mut requests = Vec::new();
    let get = |path: String, facility: &str| -> Result<Request, Error> {
        Ok(Request {
            method: Method::GET,
            path,
            token: tokens.for_facility(facility)?,
            body: None,
        })
    };
    for (n, (s, facility)) in subjects(manifest, access)?.into_iter().enumerate() {
        if requests.len() >= limit {
            break;
        }
        let pid = &s.id;
        match workload {
            Workload::Read | Workload::Vread => {
                for r in &s.reads {
                    let path = if workload == Workload::Vread {
                        format!("{r}/_history/1")
                    } else {
                        r.clone()
                    };
                    requests.push(get(path, &facility)?);
                }
            }
            Workload::SearchLabTrend => {
                for l in &s.labs {
                    requests.push(get(
                        format!(
                            "Observation?patient={pid}&code={}&_sort=-date",
                            encode(&format!("{}|{}", l.system, l.code))
                        ),
                        &facility,
                    )?);
                }
            }
            Workload::SearchActiveMeds if s.active_meds > 0 => {
                requests.push(get(
                    format!("MedicationRequest?patient={pid}&status=active"),
                    &facility,
                )?);
            }
            Workload::SearchPatientKanji | Workload::SearchPatientKana => {
                let family = if workload == Workload::SearchPatientKanji {
                    &s.family_kanji
                } else {
                    &s.family_kana
                };
                requests.push(get(
                    format!(
                        "Patient?family={}&birthdate={}",
                        encode(family),
                        s.birthdate
                    ),
                    &facility,
                )?);
            }
            Workload::SearchImaging if s.ct_studies > 0 => {
                requests.push(get(
                    format!("ImagingStudy?patient={pid}&modality=CT"),
                    &facility,
                )?);
            }
            Workload::SearchChained => {
                requests.push(get(
                    format!(
                        "Observation?subject:Patient.identifier={}",
                        encode(&format!("{}|{}", s.identifier_system, s.identifier_value))
                    ),
                    &facility,
                )?);
            }
            Workload::Everything => {
                requests.push(get(format!("Patient/{pid}/$everything"), &facility)?);
            }
            Workload::Create | Workload::Transaction => {
                let (path, body) = if workload == Workload::Create {
                    ("Observation".to_string(), observation_body(pid, n))
                } else {
                    (String::new(), transaction_body(pid, n))
                };
                let bytes = serde_json::to_vec(&body)
                    .map_err(|e| Error::Usage(format!("request body: {e}")))?;
                requests.push(Request {
                    method: Method::POST,
                    path,
                    token: tokens.for_facility(&facility)?,
                    body: Some(Arc::new(bytes)),
                });
            }
            Workload::SearchActiveMeds | Workload::SearchImaging => {}
        }
    }
    requests.truncate(limit);
    if requests.is_empty() {
        return Err(Error::Usage(format!(
            "no sample in the manifest fits workload {workload} with {access} access"
        )));
    }
    Ok(Pool {
        workload,
        requests: Arc::new(requests),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::generate::{generate, GenerateOptions};

    #[test]
    fn names_round_trip_and_lists_parse() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>().unwrap(), w);
        }
        assert_eq!(Workload::parse_list("read,vread").unwrap().len(), 2);
        assert_eq!(
            Workload::parse_list("all").unwrap().len(),
            Workload::ALL.len()
        );
        assert!(Workload::parse_list("nope").is_err());
    }

    #[test]
    fn every_workload_has_requests_for_owner_and_consented_access() {
        let dir = std::env::temp_dir().join(format!("renkei-bench-wl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = generate(&GenerateOptions::new(60, 3, 5, &dir)).unwrap();
        let mut map = std::collections::BTreeMap::new();
        for f in &m.facilities {
            map.insert(f.id.clone(), format!("token-{}", f.id));
        }
        let tokens = Tokens::PerFacility(map);
        for w in Workload::ALL {
            let p = pool(w, &m, &tokens, &Access::Owner, 1000).unwrap();
            assert!(!p.requests.is_empty());
            // Consented access: requests carry the token of a consented, non-owning facility.
            if let Ok(p) = pool(w, &m, &tokens, &Access::Consented, 1000) {
                for r in p.requests.iter() {
                    let token = r.token.as_deref().unwrap();
                    assert!(m
                        .consented_pairs
                        .iter()
                        .any(|c| token == format!("token-{}", c.consented)));
                }
            } else {
                assert!(
                    matches!(w, Workload::SearchActiveMeds | Workload::SearchImaging),
                    "{w}"
                );
            }
        }
        assert!(m.consented_pairs.iter().all(|c| c.owner != c.consented));
        let lab = pool(Workload::SearchLabTrend, &m, &tokens, &Access::Owner, 5).unwrap();
        assert_eq!(lab.requests.len(), 5);
        assert!(lab.requests[0]
            .path
            .contains("code=urn%3Aoid%3A1.2.392.200119.4.504%7C"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
