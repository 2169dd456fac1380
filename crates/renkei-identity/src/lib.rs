//! # Renkei patient identity
//!
//! Pure identity logic for the Renkei gateway: which `Patient` records of different
//! facilities are one person, and how well a stored Patient matches a `$match` query. No IO,
//! no database, no HTTP: the store keeps the cross-reference, this crate says what it holds.
//!
//! ## Deterministic linking: [`link_keys`], [`components`]
//!
//! Each facility registers the patient under its own local identifier. Two records are one
//! person when they share a **link key**; [`LinkingRules`] say which identifiers make keys:
//!
//! - `person_identifier_systems` (default: [`REGIONAL_PATIENT_ID_SYSTEM`]): the value alone
//!   identifies one person network-wide. Key `id|<system>|<folded value>`.
//! - `with_birth_date_systems` (default: [`INSURANCE_MEMBER_ID_SYSTEM`]): the value identifies
//!   a person together with the birth date (an insurance card number without its branch
//!   number is shared by a family; the birth date tells its members apart). Key
//!   `idbd|<system>|<folded value>|<YYYY-MM-DD>`, only when `birthDate` is a full, valid date.
//!
//! Values are trimmed and folded with [`renkei_search::fold`] (NFKC, lowercase, accents):
//! `06330015:岡北:１２３:00` and `06330015:岡北:123:00` give the same key. Systems are
//! compared as written (trimmed). A `|` or `%` inside a system or value is percent-escaped
//! in the key, so keys never collide by shifting a separator.
//!
//! **Inactive records and expired identifiers still link.** `active: false`, an
//! identifier's `period.end` in the past and `use: old` do not remove keys, on purpose:
//! - Identity does not expire. A record that is inactive (the patient moved away) or an
//!   old insurance card still belongs to the same person; hiding the link would split that
//!   person's history, and a linked view exists precisely to show such history.
//! - Keys are a function of the record alone. Honouring `period.end` would need a clock, so
//!   the stored cross-reference would silently change with time while no record changed —
//!   neither explainable nor auditable. Links change only when a record or an explicit
//!   link/unlink changes.
//! - Reuse of a number by another person is guarded by the birth date for insurance IDs;
//!   a wrong link is undone by an administrator's explicit unlink ([`components`] takes
//!   suppressed pairs).
//!
//! [`components`] turns records (nodes) and links (edges: shared keys, explicit links) into
//! persons, ignoring suppressed pairs (explicit unlinks). [`describe_key`] explains a key to
//! an operator.
//!
//! ## `$match` scoring: [`score`]
//!
//! Scoring is integer points (0–100) summed in a fixed order, so it is deterministic;
//! `score = points / 100`.
//!
//! | evidence | points |
//! |---|---|
//! | an identifier shared (same system, folded value), of any system except a birth-date-bound one alone | certain: **100** |
//! | a link key shared (e.g. insurance member ID **and** birth date) | certain: **100** |
//! | full name (family + given, folded, spaces removed; kanji `IDE`, kana `SYL` or unmarked, any against any) | 50 |
//! | otherwise family name only | 20 |
//! | birth date equal (both full dates) | 30 |
//! | gender equal (`male`/`female`/`other`) | 10 |
//! | phone equal (digits only; `+81` read as a leading `0`; ≥ 6 digits) | 15 |
//! | address equal (postal code digits, or lines (+ city) folded, or text folded) | 10 |
//! | insurance (birth-date-bound) ID shared while a birth date is missing | 30 |
//!
//! Then:
//! - Without a full-name **and** birth-date match the score is capped at 79 (possible at
//!   most: twins share family, birth date, phone and address but not the given name);
//!   without an identifier it is capped at 94 (never certain).
//! - A **conflicting birth date** (both known and incompatible) or a **conflicting
//!   person identifier** (both have a value of the same `person_identifier_systems` system and
//!   no value in common), with no shared identifier: `certainly-not`, score 0 — returned only
//!   when the other evidence alone would have made a candidate (≥ 50), otherwise `None`.
//! - A **conflicting gender** halves the points.
//! - With a shared identifier, a conflicting birth date or gender downgrades `certain` to
//!   `probable` (90): the records claim the same identifier but disagree on who it is.
//! - Grades: certain ≥ 95, probable ≥ 80, possible ≥ 50, below 50 → `None` (not a candidate).
//!
//! Reasons name the kind of evidence and identifier systems only, never values: they may be
//! logged or returned.
//!
//! ## Requests: [`parse_match_request`], [`candidate_queries`], [`parse_pix_identifier`]
//!
//! `$match` (ITI-119) `Parameters`, the selective searches that gather candidates, and the
//! PIXm (ITI-83) `sourceIdentifier`.

mod error;
mod link;
mod matching;
mod norm;
mod request;

pub use error::IdentityError;
pub use link::{
    birth_date, components, describe_key, describe_key_redacted, full_birth_date, link_keys,
    persons, LinkingRules, INSURANCE_MEMBER_ID_SYSTEM, REGIONAL_PATIENT_ID_SYSTEM,
};
pub use matching::{score, MatchGrade, MatchScore, MATCH_GRADE_EXTENSION_URL};
pub use request::{candidate_queries, parse_match_request, parse_pix_identifier, MatchRequest};
