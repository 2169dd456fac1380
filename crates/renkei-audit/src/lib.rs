//! The audit trail's pure core: BALP-shaped `AuditEvent`s for every interaction, and the hash
//! chain that makes the trail tamper-evident.
//!
//! Each record's hash covers its sequence number, timestamp, canonical event text and the
//! previous record's hash. Changing, deleting, inserting or reordering any record therefore
//! breaks the chain at that record, which [`verify_chain`] reports.

mod event;

pub use event::{
    code_system, parse_stored, redact_hidden, render_stored, AuditAgent, AuditOutcome,
    EventBuilder, Interaction, PatientEntity, StoredFacts, UnreadableEvent, GATEWAY_NAME,
    PRIVACY_TAG_DECIDER,
};

use sha2::{Digest, Sha256};

/// The hash before the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored record of the chain, as the verifier reads it back.
#[derive(Debug, Clone)]
pub struct ChainRecord {
    pub seq: i64,
    pub recorded_ms: i64,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of a record: SHA-256 over `seq`, `recorded`, the previous hash and the body,
/// each length-prefixed so no two different records can produce the same input.
pub fn record_hash(seq: i64, recorded_ms: i64, prev_hash: &str, body: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [
        seq.to_string().as_bytes(),
        recorded_ms.to_string().as_bytes(),
        prev_hash.as_bytes(),
        body.as_bytes(),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize())
}

/// SHA-256 of a journal frame's payload: a torn or altered frame never passes as a record.
pub fn frame_digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a chain walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    /// Every record links to the one before it and matches its hash.
    Intact { records: u64, head_hash: String },
    /// The first record at which the chain breaks, and why.
    Broken {
        seq: i64,
        problem: ChainProblem,
        records_checked: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainProblem {
    /// The record's content no longer matches its hash (modified).
    Modified,
    /// The record does not link to its predecessor's hash (a record before it was deleted,
    /// inserted or moved).
    LinkBroken { expected_prev: String },
    /// Sequence numbers jump or repeat (a record was deleted or inserted).
    SequenceGap { expected: i64 },
    /// The head stored beside the chain is not the last record's hash (records removed at the
    /// end, or the head rewritten).
    HeadMismatch { head_hash: String },
}

impl std::fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainProblem::Modified => write!(f, "its content does not match its hash (modified)"),
            ChainProblem::LinkBroken { .. } => write!(
                f,
                "it does not link to the previous record (a record was deleted, inserted or reordered)"
            ),
            ChainProblem::SequenceGap { expected } => write!(
                f,
                "sequence number jumps from the expected {expected} (a record was deleted or inserted)"
            ),
            ChainProblem::HeadMismatch { .. } => write!(
                f,
                "the recorded chain head does not match the last record (records removed at the end)"
            ),
        }
    }
}

/// Walks records in `seq` order and checks every link; `head` is the (seq, hash) the store
/// keeps beside the chain, if any.
pub fn verify_chain(
    records: impl IntoIterator<Item = ChainRecord>,
    head: Option<(i64, String)>,
) -> ChainVerdict {
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut expected_seq: Option<i64> = None;
    let mut count = 0u64;
    let mut last_seq = 0;
    for record in records {
        if let Some(expected) = expected_seq {
            if record.seq != expected {
                return ChainVerdict::Broken {
                    seq: record.seq,
                    problem: ChainProblem::SequenceGap { expected },
                    records_checked: count,
                };
            }
        }
        if record.prev_hash != prev_hash {
            return ChainVerdict::Broken {
                seq: record.seq,
                problem: ChainProblem::LinkBroken {
                    expected_prev: prev_hash,
                },
                records_checked: count,
            };
        }
        if record_hash(
            record.seq,
            record.recorded_ms,
            &record.prev_hash,
            &record.body,
        ) != record.hash
        {
            return ChainVerdict::Broken {
                seq: record.seq,
                problem: ChainProblem::Modified,
                records_checked: count,
            };
        }
        prev_hash = record.hash;
        expected_seq = Some(record.seq + 1);
        last_seq = record.seq;
        count += 1;
    }
    if let Some((head_seq, head_hash)) = head {
        if head_hash != prev_hash || (count > 0 && head_seq != last_seq) {
            return ChainVerdict::Broken {
                seq: head_seq,
                problem: ChainProblem::HeadMismatch { head_hash },
                records_checked: count,
            };
        }
    }
    ChainVerdict::Intact {
        records: count,
        head_hash: prev_hash,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chain(n: i64) -> Vec<ChainRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let body = format!("{{\"n\":{seq}}}");
                let hash = record_hash(seq, 1000 + seq, &prev, &body);
                let record = ChainRecord {
                    seq,
                    recorded_ms: 1000 + seq,
                    body,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                record
            })
            .collect()
    }

    fn head(records: &[ChainRecord]) -> Option<(i64, String)> {
        records.last().map(|r| (r.seq, r.hash.clone()))
    }

    #[test]
    fn intact_chain_verifies_and_reports_head() {
        let records = chain(5);
        let h = head(&records);
        match verify_chain(records.clone(), h) {
            ChainVerdict::Intact {
                records: n,
                head_hash,
            } => {
                assert_eq!(n, 5);
                assert_eq!(head_hash, records[4].hash);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn detects_modification() {
        let mut records = chain(5);
        let h = head(&records);
        records[2].body = "{\"n\":99}".into();
        assert!(matches!(
            verify_chain(records, h),
            ChainVerdict::Broken {
                seq: 3,
                problem: ChainProblem::Modified,
                ..
            }
        ));
    }

    #[test]
    fn detects_deletion() {
        let mut records = chain(5);
        let h = head(&records);
        records.remove(1);
        assert!(matches!(
            verify_chain(records, h),
            ChainVerdict::Broken {
                seq: 3,
                problem: ChainProblem::SequenceGap { expected: 2 },
                ..
            }
        ));
    }

    #[test]
    fn detects_deletion_at_the_end() {
        let mut records = chain(5);
        let h = head(&records);
        records.pop();
        assert!(matches!(
            verify_chain(records, h),
            ChainVerdict::Broken {
                problem: ChainProblem::HeadMismatch { .. },
                ..
            }
        ));
    }

    #[test]
    fn detects_insertion_and_reordering() {
        let records = chain(5);
        let h = head(&records);
        let mut inserted = records.clone();
        let mut fake = records[1].clone();
        fake.body = "{\"forged\":true}".into();
        fake.hash = record_hash(fake.seq, fake.recorded_ms, &fake.prev_hash, &fake.body);
        inserted.insert(2, fake);
        for r in inserted.iter_mut().skip(3) {
            r.seq += 1;
        }
        assert!(matches!(
            verify_chain(inserted, h.clone()),
            ChainVerdict::Broken { .. }
        ));

        let mut reordered = records;
        reordered.swap(1, 2);
        let (a, b) = (reordered[1].seq, reordered[2].seq);
        reordered[1].seq = b;
        reordered[2].seq = a;
        assert!(matches!(
            verify_chain(reordered, h),
            ChainVerdict::Broken {
                seq: 2,
                problem: ChainProblem::LinkBroken { .. },
                ..
            }
        ));
    }
}
