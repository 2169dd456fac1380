//! How long index extraction takes per resource, over the transaction Bundles of a data set
//! written by `renkei-bench generate`:
//! `cargo run --release -p renkei-search --example extract_speed -- DATA_DIR`.

use std::time::Instant;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: extract_speed DATA_DIR");
        std::process::exit(2);
    };
    let mut resources = Vec::new();
    collect(std::path::Path::new(&dir), &mut resources);
    let started = Instant::now();
    let mut rows = 0;
    let mut per_type: std::collections::BTreeMap<String, (usize, std::time::Duration)> =
        Default::default();
    for (res_type, resource) in &resources {
        let one = Instant::now();
        rows += renkei_search::extract(res_type, resource).len();
        let entry = per_type.entry(res_type.clone()).or_default();
        entry.0 += 1;
        entry.1 += one.elapsed();
    }
    let elapsed = started.elapsed();
    println!(
        "{} resources, {rows} index rows, {:.1} µs per resource",
        resources.len(),
        elapsed.as_secs_f64() * 1e6 / resources.len().max(1) as f64
    );
    for (res_type, (count, time)) in per_type {
        println!(
            "  {res_type}: {count}, {:.1} µs each",
            time.as_secs_f64() * 1e6 / count as f64
        );
    }
}

fn collect(dir: &std::path::Path, out: &mut Vec<(String, serde_json::Value)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(bundle) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let resource = &entry["resource"];
            if let Some(res_type) = resource["resourceType"].as_str() {
                out.push((res_type.to_string(), resource.clone()));
            }
        }
    }
}
