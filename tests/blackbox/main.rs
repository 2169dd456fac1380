//! Black-box tests: start the real `renkei` binary and talk FHIR to it over HTTP, on every
//! backend (SQLite and PostgreSQL; `RENKEI_TEST_BACKENDS=sqlite` restricts explicitly).
//! Each test owns its server and database, so the tests run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

mod audit;
mod bench_smoke;
mod browser;
mod bundles;
mod capability;
mod conditional;
mod conformance;
mod consent;
mod crud;
mod durability;
mod errors;
mod examples;
mod formats;
mod history;
mod identity;
mod operator;
mod patch;
mod search_limits;
mod search_paths;
mod search_values;
mod smart;
mod smart_auth;
mod testscripts;
mod tls;
mod untrusted_input;
mod versioning;
