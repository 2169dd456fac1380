//! The measuring loops. Closed loop: N workers, each sends its next request when the previous
//! one answered. Open loop (`rate`): request i is due at `start + i / rate`; a worker sleeps
//! until it is due and the latency is measured from that *intended* time, so a server that
//! stalls is charged for the requests that queued behind the stall (no coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Target;
use crate::rng::Rng;
use crate::stats::{Samples, Summary};
use crate::workload::Pool;

/// No single measurement runs longer than this, whatever was asked.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Phase {
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Requests per second for the open loop; `None` for the closed loop.
    pub rate: Option<f64>,
    pub seed: u64,
}

/// Runs the warm-up (results discarded) and then the measurement.
pub async fn measure(target: &Target, pool: &Pool, phase: &Phase) -> Summary {
    if !phase.warmup.is_zero() {
        let _ = drive(
            target,
            pool,
            phase,
            phase.warmup.min(MAX_DURATION),
            phase.seed ^ 0x5a5a,
        )
        .await;
    }
    let duration = phase.duration.min(MAX_DURATION);
    let (samples, elapsed) = drive(target, pool, phase, duration, phase.seed).await;
    samples.summary(elapsed)
}

async fn drive(
    target: &Target,
    pool: &Pool,
    phase: &Phase,
    duration: Duration,
    seed: u64,
) -> (Samples, f64) {
    let workers = phase.concurrency.max(1);
    let start = Instant::now();
    let deadline = start + duration;
    let next = Arc::new(AtomicU64::new(0));
    let interval = phase
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let target = target.clone();
        let pool = pool.clone();
        let next = next.clone();
        let mut rng = Rng::derive(seed, 7, w as u64);
        handles.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let expects_entries = pool.workload.expects_entries();
            loop {
                let intended = match interval {
                    Some(step) => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let due = start + step.mul_f64(i as f64);
                        if due >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        now
                    }
                };
                let req = &pool.requests[rng.index(pool.requests.len())];
                let answer = target
                    .send(
                        &req.method,
                        &req.path,
                        req.token.as_deref(),
                        req.body.as_ref().map(|b| b.as_slice()),
                        pool.workload.is_write(),
                    )
                    .await;
                samples.record(intended.elapsed().as_micros() as u64);
                match answer {
                    Ok(a) if (200..300).contains(&a.status) => {
                        if expects_entries && !has_entries(&a.body) {
                            samples.empty += 1;
                        }
                    }
                    Ok(a) => {
                        samples.errors += 1;
                        if samples.first_error.is_none() {
                            let text = String::from_utf8_lossy(&a.body);
                            let cut: String = text.chars().take(300).collect();
                            samples.first_error =
                                Some(format!("{} {}: {}", a.status, req.path, cut));
                        }
                    }
                    Err(e) => {
                        samples.errors += 1;
                        if samples.first_error.is_none() {
                            samples.first_error = Some(format!("{}: {e}", req.path));
                        }
                    }
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for h in handles {
        if let Ok(s) = h.await {
            all.merge(s);
        }
    }
    let elapsed = match interval {
        Some(_) => duration.as_secs_f64(),
        None => start.elapsed().as_secs_f64(),
    };
    (all, elapsed)
}

/// Whether a searchset/everything Bundle holds at least one resource entry (an
/// OperationOutcome entry with `search.mode = outcome` does not count). Everything but the
/// entries' search modes is skipped, not built: the check runs on the cores it measures, and
/// building a page of resources as a JSON tree cost more CPU than some searches it checked.
pub fn has_entries(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Page {
        #[serde(default)]
        entry: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        search: Option<EntrySearch>,
    }
    #[derive(serde::Deserialize)]
    struct EntrySearch {
        mode: Option<String>,
    }
    serde_json::from_slice::<Page>(body).is_ok_and(|page| {
        page.entry
            .iter()
            .any(|e| e.search.as_ref().and_then(|s| s.mode.as_deref()) != Some("outcome"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_detection() {
        assert!(has_entries(
            br#"{"resourceType":"Bundle","entry":[{"resource":{}}]}"#
        ));
        assert!(!has_entries(br#"{"resourceType":"Bundle","total":0}"#));
        assert!(!has_entries(
            br#"{"resourceType":"Bundle","entry":[{"search":{"mode":"outcome"}}]}"#
        ));
        assert!(!has_entries(b"not json"));
    }

    #[test]
    fn open_loop_schedule_is_fixed_by_rate() {
        // Request i is due at i / rate, independent of when earlier ones answered.
        let step = Duration::from_secs_f64(1.0 / 200.0);
        assert_eq!(step.mul_f64(200.0), Duration::from_secs(1));
        assert_eq!(step.mul_f64(0.0), Duration::ZERO);
    }
}
