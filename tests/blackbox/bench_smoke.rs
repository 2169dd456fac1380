//! The benchmark harness's smoke mode against the real server, on every backend, so
//! `renkei-bench` never rots: a tiny generated network (three facilities, each writing its own
//! data with its own token), every workload at concurrency 1 and 2, owner and consented access.

use std::collections::BTreeMap;

use renkei_bench::client::Tokens;
use renkei_bench::smoke::smoke_facilities;

use crate::support::{for_each_backend, Server};

fn facility_tokens(server: &Server) -> Tokens {
    let mut tokens = BTreeMap::new();
    for facility in smoke_facilities() {
        let client = format!("bench-{facility}");
        let token = server.token_for(
            &client,
            &format!("Organization/{facility}"),
            "facility",
            &["--scope", "system/*.cruds"],
        );
        tokens.insert(facility, token);
    }
    Tokens::PerFacility(tokens)
}

#[test]
fn every_workload_answers_on_a_tiny_network() {
    for_each_backend(|server| {
        let tokens = facility_tokens(server);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let report = runtime
            .block_on(renkei_bench::smoke(&server.base, &tokens))
            .unwrap_or_else(|e| panic!("{e}"));
        // Every workload ran for the owner, the searches also for a consented facility.
        let workloads: std::collections::BTreeSet<&str> =
            report.rows.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(workloads.len(), renkei_bench::workload::Workload::ALL.len());
        assert!(report.rows.iter().any(|r| r.access == "consented"));
        assert!(report
            .rows
            .iter()
            .all(|r| r.summary.errors == 0 && r.summary.requests > 0));
    });
}
