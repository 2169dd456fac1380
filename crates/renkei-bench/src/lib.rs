//! `renkei-bench`: a benchmark harness for FHIR R4 servers, Renkei or any other, by base URL.
//!
//! - [`generate`] — deterministic data of a regional network (transaction Bundles + manifest);
//! - [`load`] — posts the Bundles concurrently, each with its facility's token;
//! - [`run`] — workloads (read, vread, the clinical searches, `$everything`, create, transaction)
//!   closed loop or open loop at a fixed rate (latency from the intended send time);
//! - [`compare`] — starts Renkei (SQLite, PostgreSQL, optionally an unaudited-reads build) and
//!   Helios (SQLite, PostgreSQL) on fresh databases and nginx on one static Patient, loads the
//!   same data, alternates runs and rewrites the generated section of `docs/BENCHMARKS.md`;
//! - [`smoke`] — seconds-long run of every workload, used by the black-box test suite.
//!
//! It depends on no other Renkei crate on purpose.

pub mod client;
pub mod compare;
pub mod generate;
pub mod load;
pub mod report;
pub mod rng;
pub mod run;
pub mod smoke;
pub mod stats;
pub mod tables;
pub mod workload;

use std::path::Path;

pub use generate::{generate, GenerateOptions, Manifest};
pub use report::Report;
pub use smoke::smoke;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("{0}")]
    Server(String),
    #[error("smoke check failed: {0}")]
    Smoke(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn json(path: &Path, source: serde_json::Error) -> Error {
        Error::Json {
            path: path.display().to_string(),
            source,
        }
    }
}
