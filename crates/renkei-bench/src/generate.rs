//! Deterministic data of a regional network: facilities, patients registered at 1–3 of them,
//! and the clinical record each facility holds, written as FHIR R4 transaction Bundles plus a
//! manifest of sample query parameters for the workloads.
//!
//! Every entry is `PUT <Type>/<id>` with a readable, client-assigned id, so that reads, vreads
//! and cross-facility references (facility B's Observation → facility A's Patient) need no
//! id mapping, and every resource carries `meta.source = <network>/facility/<organization id>`
//! (the custodian marker `renkei import` honours; through the API the writer's token decides).
//! Load order: `organizations.json`, then every `patients-*.json` (Patient + Consent, written by
//! the patient's home facility), then every `bundle-*.json` (clinical data, per facility).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::rng::{uuid_for, Rng};
use crate::tables::{
    Lab, ALLERGIES, CITIES, CONDITIONS, DRUGS, FACILITY_PLACES, FAMILY, GIVEN_FEMALE, GIVEN_MALE,
    LABS, MODALITIES,
};
use crate::Error;

pub const NETWORK: &str = "http://renkei.example.jp";
pub const LOCAL_ID_PREFIX: &str = "urn:oid:1.2.392.100495.20.3.51.1";
pub const INSURANCE_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";
pub const MIC_SYSTEM: &str = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";
pub const JLAC10: &str = "urn:oid:1.2.392.200119.4.504";
pub const YJ: &str = "urn:oid:1.2.392.100495.20.2.73";
pub const HOT9: &str = "urn:oid:1.2.392.200119.4.403.1";
pub const RP_NUMBER: &str = "urn:oid:1.2.392.100495.20.3.81";
pub const RP_ORDER: &str = "urn:oid:1.2.392.100495.20.3.82";
pub const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
pub const UCUM: &str = "http://unitsofmeasure.org";
const EN_REP: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
const JP_PROFILE: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/";

/// Average resources per patient by type (before the long-tail factor), close to the mix of
/// `fixtures/synthea` (≈ 100–150 per patient, mostly Observations).
const ENCOUNTERS: f64 = 12.0;
const OBSERVATIONS: f64 = 66.0;
const MED_REQUESTS: f64 = 12.0;
const CONDITION_COUNT: f64 = 5.0;
const IMAGING: f64 = 1.5;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub patients: usize,
    pub facilities: usize,
    pub seed: u64,
    pub out: PathBuf,
    /// Patients' worth of clinical data per facility Bundle.
    pub patients_per_bundle: usize,
    /// Patients (with their Consent) per `patients-*.json` Bundle.
    pub patients_per_patient_bundle: usize,
    /// At most this many sample patients in the manifest.
    pub max_samples: usize,
}

impl GenerateOptions {
    pub fn new(patients: usize, facilities: usize, seed: u64, out: impl Into<PathBuf>) -> Self {
        GenerateOptions {
            patients,
            facilities,
            seed,
            out: out.into(),
            patients_per_bundle: 10,
            patients_per_patient_bundle: 100,
            max_samples: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Facility {
    pub id: String,
    pub name: String,
    pub code: String,
    pub patient_id_system: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BundleFile {
    /// Relative to the data directory.
    pub path: String,
    /// The Organization id whose token must post it (custodian of its content).
    pub facility: String,
    /// 0 organizations, 1 patients and consents, 2 clinical data.
    pub phase: u8,
    pub entries: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LabSample {
    pub system: String,
    pub code: String,
    /// Observations of this code held by the home facility.
    pub count: usize,
}

/// A patient picked for the workloads, with what its home facility holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Sample {
    pub id: String,
    pub home: String,
    pub registered: Vec<String>,
    /// Facilities the patient's Consent permits (empty: no consent).
    pub consented: Vec<String>,
    pub family_kanji: String,
    pub family_kana: String,
    pub birthdate: String,
    pub identifier_system: String,
    pub identifier_value: String,
    pub labs: Vec<LabSample>,
    pub active_meds: usize,
    pub ct_studies: usize,
    /// `Type/id` of resources held by the home facility (for read and vread).
    pub reads: Vec<String>,
    pub total_resources: usize,
}

/// A patient registered at `owner` only whose consent also permits `consented`: both
/// facilities see exactly the same data of this patient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsentedPair {
    pub patient: String,
    pub owner: String,
    pub consented: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub generator: String,
    pub seed: u64,
    pub patients: usize,
    pub resources: usize,
    pub by_type: BTreeMap<String, usize>,
    pub facilities: Vec<Facility>,
    pub bundles: Vec<BundleFile>,
    pub samples: Vec<Sample>,
    pub consented_pairs: Vec<ConsentedPair>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest, Error> {
        let path = dir.join("manifest.json");
        let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|e| Error::json(&path, e))
    }

    pub fn facility(&self, id: &str) -> Option<&Facility> {
        self.facilities.iter().find(|f| f.id == id)
    }
}

/// The 10-digit medical-institution code: prefecture 33 + point table 1 + six digits + a
/// check digit (modulus 10, weights 2-1 from the right over the six digits), as in the demo.
pub fn institution_code(six: u32) -> String {
    let six = format!("{:06}", six % 1_000_000);
    let mut total = 0u32;
    for (i, ch) in six.bytes().rev().enumerate() {
        let d = u32::from(ch - b'0') * if i % 2 == 0 { 2 } else { 1 };
        total += d / 10 + d % 10;
    }
    format!("331{six}{}", (10 - total % 10) % 10)
}

pub fn facilities(count: usize) -> Vec<Facility> {
    (0..count)
        .map(|i| {
            let place = FACILITY_PLACES[i % FACILITY_PLACES.len()];
            let kind = match i % 3 {
                0 => "病院",
                1 => "クリニック",
                _ => "医院",
            };
            let round = i / FACILITY_PLACES.len();
            let name = if round == 0 {
                format!("{place}{kind}")
            } else {
                format!("{place}第{}{kind}", round + 1)
            };
            let code = institution_code(10_000 * (1 + (i as u32 % 40)) + i as u32 + 1);
            Facility {
                id: format!("fac-{:03}", i + 1),
                name,
                patient_id_system: format!("{LOCAL_ID_PREFIX}{code}"),
                code,
            }
        })
        .collect()
}

/// The end of the generated period: data spans the three years before it (fixed, so output
/// does not depend on the day it is generated).
fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 12, 1).unwrap_or_default()
}

fn day(offset_back: u64) -> NaiveDate {
    epoch()
        .checked_sub_days(Days::new(offset_back))
        .unwrap_or_default()
}

fn date_time(d: NaiveDate, minutes: u64) -> String {
    format!(
        "{}T{:02}:{:02}:00+09:00",
        d.format("%Y-%m-%d"),
        8 + (minutes / 60) % 10,
        minutes % 60
    )
}

fn decimal(v: f64, places: usize) -> Value {
    let text = format!("{v:.places$}");
    serde_json::from_str::<Value>(&text).unwrap_or(Value::from(0))
}

fn reference(target: &str) -> Value {
    json!({ "reference": target })
}

fn meta(profile: &str, facility: &str) -> Value {
    json!({
        "profile": [format!("{JP_PROFILE}{profile}")],
        "source": format!("{NETWORK}/facility/{facility}"),
    })
}

struct Counter {
    resources: usize,
    by_type: BTreeMap<String, usize>,
}

/// One entry under construction: the resource and who holds it.
struct Item {
    facility: usize,
    resource: Value,
}

/// An item serialized as a Bundle entry.
struct Encoded {
    facility: usize,
    bytes: Vec<u8>,
}

/// One Bundle entry, serialized: `PUT <Type>/<id>` with a `urn:uuid:` fullUrl derived from the
/// id (written by hand around the resource so the resource is never copied).
fn entry_bytes(seed: u64, resource: &Value) -> Vec<u8> {
    let rtype = resource["resourceType"].as_str().unwrap_or_default();
    let id = resource["id"].as_str().unwrap_or_default();
    let url = format!("{rtype}/{id}");
    let mut out = Vec::with_capacity(1536);
    out.extend_from_slice(
        format!(
            "{{\"fullUrl\":\"urn:uuid:{}\",\"resource\":",
            uuid_for(seed, &url)
        )
        .as_bytes(),
    );
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, resource);
    out.extend_from_slice(
        format!(",\"request\":{{\"method\":\"PUT\",\"url\":\"{url}\"}}}}").as_bytes(),
    );
    out
}

fn write_transaction(path: &Path, entries: &[Vec<u8>]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    w.write_all(br#"{"resourceType":"Bundle","type":"transaction","entry":["#)
        .map_err(io)?;
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            w.write_all(b",").map_err(io)?;
        }
        w.write_all(e).map_err(io)?;
    }
    w.write_all(b"]}\n").map_err(io)?;
    w.flush().map_err(io)
}

/// Per-facility buffers of entries, flushed every `per_bundle` patients.
struct Shelf {
    kind: &'static str,
    phase: u8,
    per_bundle: usize,
    items: Vec<Vec<Vec<u8>>>,
    patients: Vec<usize>,
    numbers: Vec<usize>,
}

impl Shelf {
    fn new(kind: &'static str, phase: u8, facilities: usize, per_bundle: usize) -> Shelf {
        Shelf {
            kind,
            phase,
            per_bundle: per_bundle.max(1),
            items: vec![Vec::new(); facilities],
            patients: vec![0; facilities],
            numbers: vec![0; facilities],
        }
    }

    fn flush(
        &mut self,
        f: usize,
        opts: &GenerateOptions,
        facs: &[Facility],
        out: &mut Vec<BundleFile>,
    ) -> Result<(), Error> {
        if self.items[f].is_empty() {
            return Ok(());
        }
        self.numbers[f] += 1;
        let rel = format!("{}/{}-{:05}.json", facs[f].id, self.kind, self.numbers[f]);
        let resources = std::mem::take(&mut self.items[f]);
        let entries = resources.len();
        write_transaction(&opts.out.join(&rel), &resources)?;
        out.push(BundleFile {
            path: rel,
            facility: facs[f].id.clone(),
            phase: self.phase,
            entries,
        });
        self.patients[f] = 0;
        Ok(())
    }

    /// Adds one patient's worth of items; flushes full facility buffers.
    fn add(
        &mut self,
        items: Vec<Encoded>,
        opts: &GenerateOptions,
        facs: &[Facility],
        out: &mut Vec<BundleFile>,
    ) -> Result<(), Error> {
        let mut touched = vec![false; facs.len()];
        for item in items {
            touched[item.facility] = true;
            self.items[item.facility].push(item.bytes);
        }
        for (f, t) in touched.iter().enumerate() {
            if *t {
                self.patients[f] += 1;
                if self.patients[f] >= self.per_bundle {
                    self.flush(f, opts, facs, out)?;
                }
            }
        }
        Ok(())
    }

    fn finish(
        &mut self,
        opts: &GenerateOptions,
        facs: &[Facility],
        out: &mut Vec<BundleFile>,
    ) -> Result<(), Error> {
        for f in 0..facs.len() {
            self.flush(f, opts, facs, out)?;
        }
        Ok(())
    }
}

/// Generates the data set into `opts.out` and returns its manifest (also written as
/// `manifest.json`). Same options ⇒ byte-identical files.
pub fn generate(opts: &GenerateOptions) -> Result<Manifest, Error> {
    if opts.facilities == 0 || opts.patients == 0 {
        return Err(Error::Usage(
            "--patients and --facilities must be at least 1".into(),
        ));
    }
    if opts.out.join("manifest.json").exists() {
        return Err(Error::Usage(format!(
            "{} already holds a data set (manifest.json); choose an empty directory",
            opts.out.display()
        )));
    }
    fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let facs = facilities(opts.facilities);
    let mut counter = Counter {
        resources: 0,
        by_type: BTreeMap::new(),
    };
    let mut bundles = Vec::new();

    let orgs: Vec<Value> = facs.iter().map(organization).collect();
    count(&mut counter, &orgs);
    let org_entries: Vec<Vec<u8>> = orgs.iter().map(|o| entry_bytes(opts.seed, o)).collect();
    write_transaction(&opts.out.join("organizations.json"), &org_entries)?;
    bundles.push(BundleFile {
        path: "organizations.json".into(),
        facility: facs[0].id.clone(),
        phase: 0,
        entries: facs.len(),
    });

    let mut people = Shelf::new("patients", 1, facs.len(), opts.patients_per_patient_bundle);
    let mut clinical = Shelf::new("bundle", 2, facs.len(), opts.patients_per_bundle);
    let mut samples = Vec::new();
    let stride = opts.patients.div_ceil(opts.max_samples.max(1)).max(1);
    let mut people_bundles = Vec::new();
    let mut clinical_bundles = Vec::new();
    // Patients are generated (and serialized) in parallel blocks; each has its own random
    // stream, and the blocks are written in patient order, so output stays byte-identical.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let block = 256 * threads;
    let mut first = 0usize;
    while first < opts.patients {
        let last = (first + block).min(opts.patients);
        let per_thread = (last - first).div_ceil(threads);
        let encoded: Vec<EncodedPatient> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let lo = (first + t * per_thread).min(last);
                    let hi = (lo + per_thread).min(last);
                    let facs = &facs;
                    let seed = opts.seed;
                    scope.spawn(move || {
                        (lo..hi)
                            .map(|index| encode_patient(seed, index, facs))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        if encoded.len() != last - first {
            return Err(Error::Usage("a generator thread failed".into()));
        }
        for (offset, p) in encoded.into_iter().enumerate() {
            for t in &p.types {
                *counter.by_type.entry((*t).to_string()).or_default() += 1;
                counter.resources += 1;
            }
            if (first + offset).is_multiple_of(stride) {
                samples.push(p.sample);
            }
            people.add(p.identity, opts, &facs, &mut people_bundles)?;
            clinical.add(p.clinical, opts, &facs, &mut clinical_bundles)?;
        }
        first = last;
    }
    people.finish(opts, &facs, &mut people_bundles)?;
    clinical.finish(opts, &facs, &mut clinical_bundles)?;
    people_bundles.sort_by(|a, b| a.path.cmp(&b.path));
    clinical_bundles.sort_by(|a, b| a.path.cmp(&b.path));
    bundles.extend(people_bundles);
    bundles.extend(clinical_bundles);

    let consented_pairs = samples
        .iter()
        .filter(|s| s.registered.len() == 1)
        .filter_map(|s| {
            let other = s.consented.iter().find(|f| **f != s.home)?;
            Some(ConsentedPair {
                patient: s.id.clone(),
                owner: s.home.clone(),
                consented: other.clone(),
            })
        })
        .collect();
    let manifest = Manifest {
        generator: format!("renkei-bench {}", env!("CARGO_PKG_VERSION")),
        seed: opts.seed,
        patients: opts.patients,
        resources: counter.resources,
        by_type: counter.by_type,
        facilities: facs,
        bundles,
        samples,
        consented_pairs,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::json(&opts.out, e))?;
    let path = opts.out.join("manifest.json");
    fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(manifest)
}

fn count(counter: &mut Counter, resources: &[Value]) {
    for r in resources {
        let t = r["resourceType"].as_str().unwrap_or_default();
        *counter.by_type.entry(t.to_string()).or_default() += 1;
        counter.resources += 1;
    }
}

fn organization(f: &Facility) -> Value {
    json!({
        "resourceType": "Organization",
        "id": f.id,
        "meta": { "profile": [format!("{JP_PROFILE}JP_Organization")] },
        "identifier": [{ "system": MIC_SYSTEM, "value": f.code }],
        "active": true,
        "type": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/organization-type",
            "code": "prov", "display": "Healthcare Provider" }] }],
        "name": f.name,
        "address": [{ "state": "岡山県", "country": "JP" }],
    })
}

struct EncodedPatient {
    identity: Vec<Encoded>,
    clinical: Vec<Encoded>,
    types: Vec<&'static str>,
    sample: Sample,
}

const TYPES: [&str; 9] = [
    "AllergyIntolerance",
    "Condition",
    "Consent",
    "Encounter",
    "ImagingStudy",
    "MedicationRequest",
    "Observation",
    "Patient",
    "Organization",
];

fn encode_patient(seed: u64, index: usize, facs: &[Facility]) -> EncodedPatient {
    let g = patient(seed, index, facs);
    let mut types = Vec::with_capacity(g.identity.len() + g.clinical.len());
    let mut encode = |items: Vec<Item>| -> Vec<Encoded> {
        items
            .into_iter()
            .map(|item| {
                let t = item.resource["resourceType"].as_str().unwrap_or_default();
                types.push(TYPES.iter().copied().find(|k| *k == t).unwrap_or("Other"));
                Encoded {
                    facility: item.facility,
                    bytes: entry_bytes(seed, &item.resource),
                }
            })
            .collect()
    };
    let identity = encode(g.identity);
    let clinical = encode(g.clinical);
    EncodedPatient {
        identity,
        clinical,
        types,
        sample: g.sample,
    }
}

struct Generated {
    identity: Vec<Item>,
    clinical: Vec<Item>,
    sample: Sample,
}

fn human_name(rep: &str, family: &str, given: &str) -> Value {
    json!({
        "extension": [{ "url": EN_REP, "valueCode": rep }],
        "use": "official",
        "text": format!("{family} {given}"),
        "family": family,
        "given": [given],
    })
}

#[allow(clippy::too_many_lines)]
fn patient(seed: u64, index: usize, facs: &[Facility]) -> Generated {
    let mut rng = Rng::derive(seed, 1, index as u64);
    let pid = format!("pt-{:06}", index + 1);
    let subject = format!("Patient/{pid}");
    let female = rng.chance(0.52);
    let (family_kanji, family_kana) = *rng.pick(FAMILY);
    let (given_kanji, given_kana) = *rng.pick(if female { GIVEN_FEMALE } else { GIVEN_MALE });
    let birth = NaiveDate::from_ymd_opt(1930, 1, 1)
        .unwrap_or_default()
        .checked_add_days(Days::new(rng.below(365 * 90)))
        .unwrap_or_default();
    let birthdate = birth.format("%Y-%m-%d").to_string();

    // Registration: 1 facility (50 %), 2 (35 %), 3 (15 %); the first is the home facility.
    let wanted = match rng.below(100) {
        0..50 => 1,
        50..85 => 2,
        _ => 3,
    }
    .min(facs.len());
    let mut registered: Vec<usize> = Vec::with_capacity(wanted);
    while registered.len() < wanted {
        let f = rng.index(facs.len());
        if !registered.contains(&f) {
            registered.push(f);
        }
    }
    let home = registered[0];
    let local_ids: Vec<(String, String)> = registered
        .iter()
        .map(|f| {
            let value = format!(
                "{:08}",
                (index as u64 * 7919 + *f as u64 * 104_729) % 100_000_000
            );
            (facs[*f].patient_id_system.clone(), value)
        })
        .collect();
    let (city, postal) = *rng.pick(CITIES);
    let mut identifiers: Vec<Value> = local_ids
        .iter()
        .map(|(s, v)| json!({ "system": s, "value": v }))
        .collect();
    identifiers.push(json!({
        "system": INSURANCE_SYSTEM,
        "value": format!("{:08}:{}:{}:00", 6_330_000 + rng.below(9999), family_kanji, 100 + index % 900),
    }));
    let patient_resource = json!({
        "resourceType": "Patient",
        "id": pid,
        "meta": meta("JP_Patient", &facs[home].id),
        "identifier": identifiers,
        "active": true,
        "name": [
            human_name("IDE", family_kanji, given_kanji),
            human_name("SYL", family_kana, given_kana),
        ],
        "telecom": [{ "system": "phone", "value": format!("086{:07}", rng.below(10_000_000)), "use": "home" }],
        "gender": if female { "female" } else { "male" },
        "birthDate": birthdate,
        "address": [{
            "use": "home", "city": city, "state": "岡山県", "postalCode": postal, "country": "JP",
            "text": format!("岡山県{city}"),
        }],
    });
    let mut identity = vec![Item {
        facility: home,
        resource: patient_resource,
    }];

    // Consent (90 %): permits every facility of registration, and half the time one more.
    let mut consented: Vec<usize> = Vec::new();
    if rng.chance(0.9) {
        consented = registered.clone();
        if facs.len() > registered.len() && rng.chance(0.5) {
            loop {
                let f = rng.index(facs.len());
                if !consented.contains(&f) {
                    consented.push(f);
                    break;
                }
            }
        }
        let signed = day(1000 + rng.below(400));
        identity.push(Item {
            facility: home,
            resource: consent(&pid, &subject, signed, home, &consented, facs),
        });
    }

    // Clinical data: a long-tail volume factor (mean 1), split over the facilities of
    // registration, the home facility holding the larger share.
    let scale = 0.3 + 0.7 * rng.exp1();
    let pick_facility = |rng: &mut Rng| -> usize {
        if registered.len() == 1 || rng.chance(0.6) {
            home
        } else {
            registered[1 + rng.index(registered.len() - 1)]
        }
    };
    let mut clinical: Vec<Item> = Vec::new();
    let mut sample = Sample {
        id: pid.clone(),
        home: facs[home].id.clone(),
        registered: registered.iter().map(|f| facs[*f].id.clone()).collect(),
        consented: consented.iter().map(|f| facs[*f].id.clone()).collect(),
        family_kanji: family_kanji.into(),
        family_kana: family_kana.into(),
        birthdate,
        identifier_system: local_ids[0].0.clone(),
        identifier_value: local_ids[0].1.clone(),
        ..Sample::default()
    };

    let n_enc = ((ENCOUNTERS * scale).round() as usize).max(1);
    let mut encounters: Vec<(usize, String, NaiveDate)> = Vec::with_capacity(n_enc);
    for e in 0..n_enc {
        let f = pick_facility(&mut rng);
        let date = day(rng.below(3 * 365));
        let id = format!("enc-{:06}-{:03}", index + 1, e + 1);
        let inpatient = rng.chance(0.08);
        let end = if inpatient {
            date.checked_add_days(Days::new(3 + rng.below(20)))
                .unwrap_or(date)
        } else {
            date
        };
        let (code, display) = if inpatient {
            ("IMP", "inpatient encounter")
        } else {
            ("AMB", "ambulatory")
        };
        clinical.push(Item {
            facility: f,
            resource: json!({
                "resourceType": "Encounter",
                "id": id,
                "meta": meta("JP_Encounter", &facs[f].id),
                "status": "finished",
                "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display },
                "subject": reference(&subject),
                "serviceProvider": reference(&format!("Organization/{}", facs[f].id)),
                "period": {
                    "start": date_time(date, 30 + rng.below(300)),
                    "end": date_time(end, 400 + rng.below(100)),
                },
            }),
        });
        encounters.push((f, id, date));
    }

    // Labs: 3–6 monitored analytes, measured together at each lab visit, so a patient has a
    // trend of each code (≈ 5–30 values).
    let n_codes = 3 + rng.index(4);
    let mut codes: Vec<&Lab> = Vec::with_capacity(n_codes);
    while codes.len() < n_codes {
        let lab = rng.pick(LABS);
        if !codes.iter().any(|c| c.jlac10 == lab.jlac10) {
            codes.push(lab);
        }
    }
    let visits = ((OBSERVATIONS * scale / n_codes as f64).round() as usize).max(1);
    let mut obs_n = 0usize;
    let mut lab_counts: Vec<usize> = vec![0; codes.len()];
    for v in 0..visits {
        let (f, enc, date) = if v < encounters.len() && rng.chance(0.7) {
            let (f, id, d) = &encounters[v];
            (*f, Some(id.clone()), *d)
        } else {
            (pick_facility(&mut rng), None, day(rng.below(3 * 365)))
        };
        let minutes = 30 + rng.below(200);
        for (ci, lab) in codes.iter().enumerate() {
            obs_n += 1;
            let id = format!("obs-{:06}-{:04}", index + 1, obs_n);
            if f == home {
                lab_counts[ci] += 1;
                if sample.reads.len() < 4 && rng.chance(0.3) {
                    sample.reads.push(format!("Observation/{id}"));
                }
            }
            clinical.push(Item {
                facility: f,
                resource: observation(
                    &mut rng,
                    &id,
                    &subject,
                    enc.as_deref(),
                    date,
                    minutes,
                    lab,
                    &facs[f],
                ),
            });
        }
    }
    sample.labs = codes
        .iter()
        .zip(&lab_counts)
        .filter(|(_, n)| **n > 0)
        .map(|(lab, n)| LabSample {
            system: JLAC10.into(),
            code: lab.jlac10.into(),
            count: *n,
        })
        .collect();

    let n_med = (MED_REQUESTS * scale).round() as usize;
    let mut rp = 0u32;
    let mut med_n = 0usize;
    while med_n < n_med {
        // One Rp group: 1–2 drug lines written together.
        rp += 1;
        let f = pick_facility(&mut rng);
        let back = rng.below(3 * 365);
        let authored = day(back);
        let days = [7u64, 14, 28, 56, 90][rng.index(5)];
        let active = back < days + 30;
        let lines = 1 + rng.index(2);
        for line in 0..lines {
            if med_n >= n_med {
                break;
            }
            med_n += 1;
            let drug = rng.pick(DRUGS);
            let id = format!("medreq-{:06}-{:03}", index + 1, med_n);
            if f == home && active {
                sample.active_meds += 1;
            }
            clinical.push(Item {
                facility: f,
                resource: medication_request(
                    &id,
                    &subject,
                    authored,
                    days,
                    active,
                    rp,
                    line + 1,
                    drug,
                    &facs[f],
                ),
            });
        }
    }

    let n_cond = ((CONDITION_COUNT * scale).round() as usize).max(1);
    for c in 0..n_cond {
        let f = pick_facility(&mut rng);
        let (code, display) = *rng.pick(CONDITIONS);
        let onset = day(rng.below(5 * 365));
        let active = rng.chance(0.6);
        let id = format!("cond-{:06}-{:03}", index + 1, c + 1);
        if f == home && sample.reads.len() < 6 && c == 0 {
            sample.reads.push(format!("Condition/{id}"));
        }
        clinical.push(Item {
            facility: f,
            resource: json!({
                "resourceType": "Condition",
                "id": id,
                "meta": meta("JP_Condition", &facs[f].id),
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": if active { "active" } else { "resolved" } }] },
                "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed" }] },
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis" }] }],
                "code": { "coding": [{ "system": "http://hl7.org/fhir/sid/icd-10", "code": code, "display": display }], "text": display },
                "subject": reference(&subject),
                "onsetDateTime": date_time(onset, rng.below(600)),
                "recordedDate": date_time(onset, 600),
            }),
        });
    }

    let n_allergy = usize::from(rng.chance(0.6)) + usize::from(scale > 2.0 && rng.chance(0.5));
    for a in 0..n_allergy {
        let f = pick_facility(&mut rng);
        let (category, snomed, text, criticality) = *rng.pick(ALLERGIES);
        let code = if snomed.is_empty() {
            json!({ "text": text })
        } else {
            json!({ "coding": [{ "system": "http://snomed.info/sct", "code": snomed, "display": text }], "text": text })
        };
        clinical.push(Item {
            facility: f,
            resource: json!({
                "resourceType": "AllergyIntolerance",
                "id": format!("allergy-{:06}-{}", index + 1, a + 1),
                "meta": meta("JP_AllergyIntolerance", &facs[f].id),
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
                "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed" }] },
                "type": "allergy",
                "category": [category],
                "criticality": criticality,
                "code": code,
                "patient": reference(&subject),
                "recordedDate": date_time(day(rng.below(5 * 365)), 60),
            }),
        });
    }

    let n_img = (IMAGING * scale * rng.unit() * 2.0).round() as usize;
    for m in 0..n_img {
        let f = pick_facility(&mut rng);
        let mut w = rng.below(20) as u32;
        let mut modality = MODALITIES[0];
        for candidate in MODALITIES {
            if w < candidate.1 {
                modality = *candidate;
                break;
            }
            w -= candidate.1;
        }
        let id = format!("img-{:06}-{:02}", index + 1, m + 1);
        if f == home && modality.0 == "CT" {
            sample.ct_studies += 1;
        }
        let uid = format!(
            "2.25.{}{:06}{:02}",
            rng.next_u64() % 1_000_000_000_000,
            index + 1,
            m + 1
        );
        let instances = 1 + rng.below(300);
        let started = day(rng.below(3 * 365));
        clinical.push(Item {
            facility: f,
            resource: json!({
                "resourceType": "ImagingStudy",
                "id": id,
                "meta": meta("JP_ImagingStudy_Radiology", &facs[f].id),
                "identifier": [{ "system": "urn:dicom:uid", "value": format!("urn:oid:{uid}") }],
                "status": "available",
                "modality": [{ "system": DCM, "code": modality.0 }],
                "subject": reference(&subject),
                "started": date_time(started, 120),
                "numberOfSeries": 1,
                "numberOfInstances": instances,
                "series": [{
                    "uid": format!("{uid}.1"),
                    "number": 1,
                    "modality": { "system": DCM, "code": modality.0 },
                    "numberOfInstances": instances,
                    "bodySite": { "system": "http://snomed.info/sct", "code": modality.2, "display": modality.3 },
                }],
            }),
        });
    }

    if let Some((f, id, _)) = encounters.first() {
        if *f == home {
            sample.reads.push(format!("Encounter/{id}"));
        }
    }
    sample.reads.push(subject.clone());
    sample.total_resources = identity.len() + clinical.len();
    Generated {
        identity,
        clinical,
        sample,
    }
}

#[allow(clippy::too_many_arguments)]
fn observation(
    rng: &mut Rng,
    id: &str,
    subject: &str,
    encounter: Option<&str>,
    date: NaiveDate,
    minutes: u64,
    lab: &Lab,
    facility: &Facility,
) -> Value {
    let value = (lab.mean + lab.sd * rng.normal()).max(lab.mean / 10.0);
    let quantity = |v: f64| json!({ "value": decimal(v, lab.decimals), "unit": lab.unit, "system": UCUM, "code": lab.unit });
    let mut range = Map::new();
    if let Some(low) = lab.low {
        range.insert("low".into(), quantity(low));
    }
    if let Some(high) = lab.high {
        range.insert("high".into(), quantity(high));
    }
    let flag = match (lab.low, lab.high) {
        (Some(low), _) if value < low => "L",
        (_, Some(high)) if value > high => "H",
        _ => "N",
    };
    let when = date_time(date, minutes);
    let mut obs = json!({
        "resourceType": "Observation",
        "id": id,
        "meta": meta("JP_Observation_LabResult", &facility.id),
        "status": "final",
        "category": [{ "coding": [
            { "system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_SimpleObservationCategory_CS", "code": "laboratory" },
            { "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" },
        ] }],
        "code": { "coding": [{ "system": JLAC10, "code": lab.jlac10, "display": lab.name }], "text": lab.name },
        "subject": reference(subject),
        "effectiveDateTime": when,
        "issued": format!("{}.000+09:00", &when[..19]),
        "valueQuantity": quantity(value),
        "interpretation": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag }] }],
        "referenceRange": [Value::Object(range)],
    });
    if let (Some(enc), Some(map)) = (encounter, obs.as_object_mut()) {
        map.insert("encounter".into(), reference(&format!("Encounter/{enc}")));
    }
    obs
}

#[allow(clippy::too_many_arguments)]
fn medication_request(
    id: &str,
    subject: &str,
    authored: NaiveDate,
    days: u64,
    active: bool,
    rp: u32,
    order_in_rp: usize,
    drug: &crate::tables::Drug,
    facility: &Facility,
) -> Value {
    let mut coding = vec![json!({ "system": YJ, "code": drug.yj, "display": drug.name })];
    if let Some(hot) = drug.hot9 {
        coding.push(json!({ "system": HOT9, "code": hot, "display": drug.name }));
    }
    let start = authored.format("%Y-%m-%d").to_string();
    let end = authored
        .checked_add_days(Days::new(days.saturating_sub(1)))
        .unwrap_or(authored)
        .format("%Y-%m-%d")
        .to_string();
    json!({
        "resourceType": "MedicationRequest",
        "id": id,
        "meta": meta("JP_MedicationRequest", &facility.id),
        "identifier": [
            { "system": RP_NUMBER, "value": rp.to_string() },
            { "system": RP_ORDER, "value": order_in_rp.to_string() },
            { "system": "http://jpfhir.jp/fhir/core/IdSystem/resourceInstance-identifier", "value": format!("{}-{id}", facility.code) },
        ],
        "status": if active { "active" } else { "completed" },
        "intent": "order",
        "medicationCodeableConcept": { "coding": coding, "text": drug.name },
        "subject": reference(subject),
        "authoredOn": format!("{start}T10:00:00+09:00"),
        "dosageInstruction": [{
            "extension": [{
                "url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_MedicationDosage_PeriodOfUse",
                "valuePeriod": { "start": start, "end": end },
            }],
            "text": drug.usage_text,
            "timing": {
                "repeat": { "boundsDuration": { "value": days, "unit": "日", "system": UCUM, "code": "d" } },
                "code": { "coding": [{ "system": "urn:oid:1.2.392.200250.2.2.20", "code": drug.usage_code, "display": drug.usage_text }] },
            },
            "route": { "coding": [{ "system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationRouteHL7V2_CS", "code": "PO", "display": "口" }] },
            "doseAndRate": [{ "doseQuantity": { "value": 1, "unit": "錠", "system": "urn:oid:1.2.392.100495.20.2.101", "code": "TAB" } }],
        }],
        "dispenseRequest": {
            "quantity": { "value": days * u64::from(drug.per_day), "unit": "錠", "system": "urn:oid:1.2.392.100495.20.2.101", "code": "TAB" },
            "expectedSupplyDuration": { "value": days, "unit": "日", "system": UCUM, "code": "d" },
        },
    })
}

/// The Consent shape the demo network uses (`fixtures/demo/07-consents.json`), which Renkei's
/// consent compiler accepts: opt-in permit, IRCP actors, purpose TREAT, a validity period.
fn consent(
    pid: &str,
    subject: &str,
    signed: NaiveDate,
    home: usize,
    permitted: &[usize],
    facs: &[Facility],
) -> Value {
    let actors: Vec<Value> = permitted
        .iter()
        .map(|f| {
            json!({
                "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient" }] },
                "reference": { "reference": format!("Organization/{}", facs[*f].id), "display": facs[*f].name },
            })
        })
        .collect();
    json!({
        "resourceType": "Consent",
        "id": format!("consent-{pid}"),
        "meta": meta("JP_Consent", &facs[home].id),
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy", "display": "Privacy Consent" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent" }] }],
        "patient": reference(subject),
        "dateTime": format!("{}T10:00:00+09:00", signed.format("%Y-%m-%d")),
        "organization": [{ "reference": format!("Organization/{}", facs[home].id), "display": facs[home].name }],
        "sourceAttachment": {
            "contentType": "application/pdf",
            "language": "ja",
            "url": format!("{NETWORK}/consent-forms/consent-{pid}.pdf"),
            "title": "地域医療連携ネットワーク参加同意書",
        },
        "policy": [{ "authority": NETWORK, "uri": format!("{NETWORK}/policy/opt-in") }],
        "provision": {
            "type": "permit",
            "period": { "start": signed.format("%Y-%m-%d").to_string(), "end": "2035-12-31" },
            "actor": actors,
            "purpose": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT", "display": "treatment" }],
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("renkei-bench-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn all_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().display().to_string();
                    out.insert(rel, fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn institution_codes_match_the_demo_network() {
        // fixtures/demo: 岡山中央病院 3310190017, 倉敷総合病院 3310290023, clinic 3310190033.
        assert_eq!(institution_code(19_001), "3310190017");
        assert_eq!(institution_code(29_002), "3310290023");
        assert_eq!(institution_code(19_003), "3310190033");
    }

    #[test]
    fn same_seed_gives_byte_identical_output_and_other_seeds_differ() {
        let (a, b, c) = (tmp("det-a"), tmp("det-b"), tmp("det-c"));
        generate(&GenerateOptions::new(30, 3, 7, &a)).unwrap();
        generate(&GenerateOptions::new(30, 3, 7, &b)).unwrap();
        generate(&GenerateOptions::new(30, 3, 8, &c)).unwrap();
        let (fa, fb, fc) = (all_files(&a), all_files(&b), all_files(&c));
        assert!(fa.len() > 3);
        assert_eq!(fa, fb);
        assert_ne!(fa, fc);
        for d in [a, b, c] {
            let _ = fs::remove_dir_all(d);
        }
    }

    #[test]
    fn refuses_to_overwrite_a_data_set() {
        let dir = tmp("twice");
        generate(&GenerateOptions::new(2, 2, 1, &dir)).unwrap();
        assert!(matches!(
            generate(&GenerateOptions::new(2, 2, 1, &dir)),
            Err(Error::Usage(_))
        ));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn counts_mix_and_shape() {
        let dir = tmp("shape");
        let m = generate(&GenerateOptions::new(200, 4, 3, &dir)).unwrap();
        // Counts in the manifest match the files.
        let mut entries = 0usize;
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        let mut ids = std::collections::HashSet::new();
        let mut referenced = Vec::new();
        for b in &m.bundles {
            let v: Value = serde_json::from_slice(&fs::read(dir.join(&b.path)).unwrap()).unwrap();
            assert_eq!(v["resourceType"], "Bundle");
            assert_eq!(v["type"], "transaction");
            let list = v["entry"].as_array().unwrap();
            assert_eq!(list.len(), b.entries);
            for e in list {
                entries += 1;
                let r = &e["resource"];
                let t = r["resourceType"].as_str().unwrap();
                let id = r["id"].as_str().unwrap();
                assert_eq!(e["request"]["method"], "PUT");
                assert_eq!(e["request"]["url"], format!("{t}/{id}"));
                assert!(e["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
                assert!(ids.insert(format!("{t}/{id}")), "duplicate {t}/{id}");
                *types.entry(t.to_string()).or_default() += 1;
                if t != "Organization" {
                    let source = r["meta"]["source"].as_str().unwrap();
                    assert_eq!(source, format!("{NETWORK}/facility/{}", b.facility));
                }
                for key in ["subject", "patient"] {
                    if let Some(s) = r[key]["reference"].as_str() {
                        referenced.push(s.to_string());
                    }
                }
                match t {
                    "Observation" => {
                        let code = r["code"]["coding"][0]["code"].as_str().unwrap();
                        assert_eq!(code.len(), 17);
                        assert_eq!(r["code"]["coding"][0]["system"], JLAC10);
                        assert_eq!(r["valueQuantity"]["system"], UCUM);
                        assert!(r["referenceRange"][0].is_object());
                    }
                    "MedicationRequest" => {
                        assert_eq!(r["identifier"][0]["system"], RP_NUMBER);
                        assert_eq!(r["medicationCodeableConcept"]["coding"][0]["system"], YJ);
                    }
                    "Patient" => {
                        let names = r["name"].as_array().unwrap();
                        assert_eq!(names.len(), 2);
                        assert_eq!(names[0]["extension"][0]["valueCode"], "IDE");
                        assert_eq!(names[1]["extension"][0]["valueCode"], "SYL");
                        let ids = r["identifier"].as_array().unwrap();
                        assert!(ids.iter().any(|i| i["system"] == INSURANCE_SYSTEM));
                        assert!(ids
                            .iter()
                            .any(|i| i["system"].as_str().unwrap().starts_with(LOCAL_ID_PREFIX)));
                    }
                    "ImagingStudy" => {
                        assert_eq!(r["identifier"][0]["system"], "urn:dicom:uid");
                        assert_eq!(r["modality"][0]["system"], DCM);
                    }
                    "Consent" => {
                        assert_eq!(r["provision"]["type"], "permit");
                        assert_eq!(r["scope"]["coding"][0]["code"], "patient-privacy");
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(entries, m.resources);
        assert_eq!(types, m.by_type);
        for r in referenced {
            assert!(ids.contains(&r), "dangling reference {r}");
        }
        // Volume: about 100 resources per patient, mostly Observations, and a long tail.
        let per_patient = m.resources as f64 / 200.0;
        assert!((70.0..150.0).contains(&per_patient), "{per_patient}");
        assert!(m.by_type["Observation"] * 2 > m.resources);
        for t in [
            "Encounter",
            "MedicationRequest",
            "Condition",
            "AllergyIntolerance",
            "ImagingStudy",
            "Consent",
            "Patient",
        ] {
            assert!(m.by_type.get(t).copied().unwrap_or(0) > 0, "no {t}");
        }
        let max = m.samples.iter().map(|s| s.total_resources).max().unwrap();
        assert!(max as f64 > 3.0 * per_patient, "no long tail: max {max}");
        // Samples carry what the workloads need; trends have several values per code.
        assert_eq!(m.samples.len(), 200);
        assert!(m.samples.iter().any(|s| s.active_meds > 0));
        assert!(m.samples.iter().any(|s| s.ct_studies > 0));
        assert!(!m.consented_pairs.is_empty());
        let trend: Vec<usize> = m
            .samples
            .iter()
            .flat_map(|s| s.labs.iter().map(|l| l.count))
            .collect();
        let median = {
            let mut t = trend.clone();
            t.sort_unstable();
            t[t.len() / 2]
        };
        assert!((5..=30).contains(&median), "median trend length {median}");
        let _ = fs::remove_dir_all(dir);
    }
}
