//! Search query strings parsed into a typed plan the store executes as SQL.

use crate::date::{now_ms, parse_range};
use crate::normalize::{canonical_system, fold};
use crate::registry::{registry, ParamType, SearchParam};
use std::collections::{BTreeSet, HashMap};

/// Why a query cannot be run (answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchError {
    /// A malformed value, modifier or control parameter.
    Invalid(String),
    /// Parameters this server does not know (400 under `handling=strict`).
    Unknown(Vec<String>),
    /// A search larger than this server runs (one of the `MAX_SEARCH_*` / [`MAX_CHAIN_DEPTH`]
    /// limits, which the message names): 400 with issue code `too-costly`.
    TooCostly(String),
}

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchError::Invalid(message) | SearchError::TooCostly(message) => f.write_str(message),
            SearchError::Unknown(names) => write!(
                f,
                "unknown or unsupported search parameter(s): {}",
                names.join(", ")
            ),
        }
    }
}

impl std::error::Error for SearchError {}

fn invalid<T>(message: impl Into<String>) -> Result<T, SearchError> {
    Err(SearchError::Invalid(message.into()))
}

// Limits on the size of one search, checked while parsing, so that an oversized search answers
// 400 (`too-costly`) naming the limit before any SQL is built. Each is far above what a client
// needs. Past them a statement nears what the databases accept (SQLite nests an expression at
// most 1000 deep and binds at most 32,766 values) and takes long to plan.

/// Search parameters one search ANDs together (`name=a&name=b`: two). Searches use a handful,
/// conditional criteria one or two. Each is a subquery PostgreSQL joins, and it plans the
/// joins of all together: on the 98k-resource benchmark set planning took 0.12 s for 16
/// repeated `name=a`, 0.6 s for 32, 1.8 s for 50 and 28 s for 100 (execution: 1 ms). On
/// SQLite each also adds a level to the statement's expression (500 exceeded its depth of
/// 1000).
pub const MAX_SEARCH_PARAMS: usize = 32;
/// Levels of chaining and `_has` nested in one parameter (`subject:Patient.link:Patient.name`:
/// two). Each level nests a `resources` subquery with its own consent predicate (about 80
/// levels of expression on SQLite), and an untyped level is searched once for each type its
/// reference may point at. The specification's examples chain one or two levels.
pub const MAX_CHAIN_DEPTH: usize = 4;
/// Values in all the parameters of one search: comma-separated alternatives, those of a chain
/// counted once for each type it may point at (the SQL repeats them per type). Most
/// alternatives are bound one by one (a stored ValueSet named by `:in` counts as one value,
/// however large: its codes travel as one bound array), so this keeps a search well under the
/// bound-value limits (32,766 on SQLite, 65,535 on PostgreSQL) and its planning bounded (1000
/// dates, one range each: 1.6 s on PostgreSQL); a list of more is a job for a ValueSet, a
/// Group or a List.
pub const MAX_SEARCH_VALUES: usize = 1000;
/// Resource types that the chains and `_has` of one search look through, in all: each level of
/// a chain once for each type it may point at, each `_has` once. Typed chains
/// (`subject:Patient.name`) look through one, `subject.name` on Observation two. Each is a
/// `resources` subquery with its own consent predicate (several kilobytes of SQL) that
/// PostgreSQL joins: 32 took 0.4 s to plan, 100 5.5 s. An untyped chain through a reference to
/// any type (`Basic?subject._id=x`) looks through 145 types; two such levels made a 3.6 MB
/// statement.
pub const MAX_CHAIN_TARGETS: usize = 32;

fn too_costly<T>(message: impl Into<String>) -> Result<T, SearchError> {
    Err(SearchError::TooCostly(message.into()))
}

/// What a search has used of [`MAX_SEARCH_VALUES`] and [`MAX_CHAIN_TARGETS`] so far.
#[derive(Debug, Default)]
struct Budget {
    values: usize,
    targets: usize,
}

impl Budget {
    fn spend(&mut self, values: usize) -> Result<(), SearchError> {
        self.values = self.values.saturating_add(values);
        if self.values > MAX_SEARCH_VALUES {
            return too_costly(format!(
                "a search takes at most {MAX_SEARCH_VALUES} values in all its parameters \
                 (comma-separated alternatives; those of a chain once for each type it may point \
                 at); store a ValueSet and search with :in, or split the search"
            ));
        }
        Ok(())
    }

    fn spend_target(&mut self) -> Result<(), SearchError> {
        self.targets += 1;
        if self.targets > MAX_CHAIN_TARGETS {
            return too_costly(format!(
                "the chains and _has of a search look through at most {MAX_CHAIN_TARGETS} \
                 resource types in all (an untyped chain once for each type its reference may \
                 point at); name the type, as in subject:Patient.name"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a leading two-letter prefix off a date/number/quantity value.
    fn split(text: &str) -> (Prefix, &str) {
        let prefixes = [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
            ("ap", Prefix::Ap),
        ];
        for (code, prefix) in prefixes {
            if let Some(rest) = text.strip_prefix(code) {
                return (prefix, rest);
            }
        }
        (Prefix::Eq, text)
    }
}

/// The index table a parameter type lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Token,
    String,
    Date,
    Reference,
    Quantity,
    Number,
    Uri,
    Composite,
}

impl Table {
    pub fn of(kind: ParamType) -> Option<Table> {
        Some(match kind {
            ParamType::Token => Table::Token,
            ParamType::String => Table::String,
            ParamType::Date => Table::Date,
            ParamType::Reference => Table::Reference,
            ParamType::Quantity => Table::Quantity,
            ParamType::Number => Table::Number,
            ParamType::Uri => Table::Uri,
            ParamType::Composite => Table::Composite,
            ParamType::Special => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Token => "idx_token",
            Table::String => "idx_string",
            Table::Date => "idx_date",
            Table::Reference => "idx_reference",
            Table::Quantity => "idx_quantity",
            Table::Number => "idx_number",
            Table::Uri => "idx_uri",
            Table::Composite => "idx_composite",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenMatch {
    /// `code`: any system.
    Code(String),
    /// `system|code` (system canonicalized).
    SystemCode(String, String),
    /// `|code`: no system.
    NoSystem(String),
    /// `system|`: any code of the system.
    System(String),
    /// Any code of the system but these (sorted): a ValueSet's include of a whole code system
    /// less the concepts its `compose.exclude` names ([`expand_value_set`]). A coding without
    /// a code is no concept of the system and does not match.
    SystemExcept(String, Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    StartsWith,
    Exact,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMode {
    Exact,
    /// A canonical: exact, and without `|version` also every `value|version` stored.
    Canonical,
    Below,
    Above,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateValue {
    pub prefix: Prefix,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumberValue {
    pub prefix: Prefix,
    pub value: f64,
    /// The implicit range of the value's precision (`100` is [99.5, 100.5)).
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantityValue {
    pub number: NumberValue,
    pub system: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefMatch {
    /// `id` or `Type/id`; `types` empty means any type.
    Id { types: Vec<String>, id: String },
    /// An absolute URL or canonical, matched as written.
    Url(String),
    /// `param:linked=Patient/id` (alias `:mdm`): the Patient record `id` or any record linked
    /// to it as the same person.
    LinkedPatient(String),
}

/// The search value of one component of a composite parameter, typed by the component.
#[derive(Debug, Clone, PartialEq)]
pub enum CompositePart {
    Token(TokenMatch),
    Quantity(QuantityValue),
    Number(NumberValue),
    Date(DateValue),
    /// Folded; matches as starts-with.
    String(String),
    Reference(RefMatch),
}

/// One condition on the searched resources; the plan ANDs them, values inside one are ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `_id` (`:not`: every resource but these).
    Id {
        ids: Vec<String>,
        not: bool,
    },
    LastUpdated(Vec<DateValue>),
    /// `$everything`'s `start`/`end` (Patient-everything: a care date range): resources whose
    /// clinical date (epoch ms, the store's `resources.clinical_date`) lies in `[from, to]`;
    /// a resource with no clinical date always passes. Set by the operation, not parsed.
    CareDate {
        from: Option<i64>,
        to: Option<i64>,
    },
    /// Resources held by this facility (`Organization/x`, the store's `resources.custodian`):
    /// what a conditional update, patch or delete may match, since a facility changes only its
    /// own records. Set by those interactions, not parsed.
    HeldBy(String),
    Token {
        param: String,
        values: Vec<TokenMatch>,
        not: bool,
    },
    TokenText {
        param: String,
        values: Vec<String>,
    },
    /// `param:in=ValueSet/x|url` (or `:not-in`): the store looks the ValueSet up and turns
    /// this into a [`Filter::Token`] over its expansion ([`expand_value_set`]).
    TokenIn {
        param: String,
        value_set: String,
        not: bool,
    },
    /// A composite parameter (`code-value-quantity=sys|code$gt5`) or `identifier:of-type`:
    /// every part of one alternative must match in the same index row (the same element).
    Composite {
        param: String,
        values: Vec<Vec<CompositePart>>,
    },
    String {
        param: String,
        values: Vec<String>,
        mode: StringMode,
    },
    Date {
        param: String,
        values: Vec<DateValue>,
    },
    Reference {
        param: String,
        values: Vec<RefMatch>,
    },
    Quantity {
        param: String,
        values: Vec<QuantityValue>,
    },
    Number {
        param: String,
        values: Vec<NumberValue>,
    },
    Uri {
        param: String,
        values: Vec<String>,
        mode: UriMode,
    },
    Missing {
        param: String,
        table: Table,
        missing: bool,
    },
    /// `param:Type.rest=…`: resources whose `param` points at a target matching the inner
    /// filter, for each candidate target type.
    Chain {
        param: String,
        targets: Vec<(String, Filter)>,
    },
    /// `_has:Type:param:rest=…`: resources pointed at by `param` of a `source_type` resource
    /// matching the inner filter.
    Has {
        source_type: String,
        param: String,
        filter: Box<Filter>,
    },
    /// Members of `Patient/{id}`'s compartment: (type, linking params) pairs, and optionally
    /// the Patient itself.
    Compartment {
        target_type: String,
        target_id: String,
        members: Vec<(String, Vec<String>)>,
        include_self: bool,
        /// Also the compartments of every record linked to `target_id` as the same person.
        linked: bool,
    },
}

impl TokenMatch {
    fn cap_keys(&mut self) {
        use crate::key::cap;
        match self {
            TokenMatch::Code(code) | TokenMatch::NoSystem(code) => cap(code),
            TokenMatch::SystemCode(system, code) => {
                cap(system);
                cap(code);
            }
            TokenMatch::System(system) => cap(system),
            TokenMatch::SystemExcept(system, codes) => {
                cap(system);
                codes.iter_mut().for_each(cap);
            }
        }
    }
}

impl RefMatch {
    fn cap_keys(&mut self) {
        use crate::key::cap;
        match self {
            RefMatch::Id { types, id } => {
                types.iter_mut().for_each(cap);
                cap(id);
            }
            RefMatch::Url(url) => cap(url),
            RefMatch::LinkedPatient(id) => cap(id),
        }
    }
}

impl Filter {
    /// Cuts the values this filter compares with index keys as the index cut them
    /// ([`crate::key`]), so that a value longer than the cap still finds its rows. Values
    /// compared with whole texts (`:exact`, `:text`, `_id`) are left as they are.
    pub fn cap_keys(&mut self) {
        use crate::key::{cap, cap_opt};
        match self {
            Filter::Token { values, .. } => values.iter_mut().for_each(TokenMatch::cap_keys),
            Filter::Composite { values, .. } => {
                for part in values.iter_mut().flatten() {
                    match part {
                        CompositePart::Token(token) => token.cap_keys(),
                        CompositePart::Quantity(quantity) => {
                            cap_opt(&mut quantity.system);
                            cap_opt(&mut quantity.code);
                        }
                        CompositePart::String(text) => cap(text),
                        CompositePart::Reference(reference) => reference.cap_keys(),
                        CompositePart::Number(_) | CompositePart::Date(_) => {}
                    }
                }
            }
            Filter::String { values, mode, .. } if *mode != StringMode::Exact => {
                values.iter_mut().for_each(cap);
            }
            Filter::Reference { values, .. } => values.iter_mut().for_each(RefMatch::cap_keys),
            Filter::Quantity { values, .. } => {
                for quantity in values {
                    cap_opt(&mut quantity.system);
                    cap_opt(&mut quantity.code);
                }
            }
            Filter::Uri { values, .. } => values.iter_mut().for_each(cap),
            Filter::Chain { targets, .. } => {
                targets.iter_mut().for_each(|(_, inner)| inner.cap_keys());
            }
            Filter::Has { filter, .. } => filter.cap_keys(),
            Filter::Compartment { target_id, .. } => cap(target_id),
            Filter::Id { .. }
            | Filter::LastUpdated(_)
            | Filter::CareDate { .. }
            | Filter::HeldBy(_)
            | Filter::TokenText { .. }
            | Filter::TokenIn { .. }
            | Filter::String { .. }
            | Filter::Date { .. }
            | Filter::Number { .. }
            | Filter::Missing { .. } => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    LastUpdated,
    Id,
    Param { table: Table, param: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    pub by: SortBy,
    pub desc: bool,
}

/// What kind of value a sort key is: dates and `_lastUpdated` in epoch milliseconds,
/// numbers and quantities as doubles, everything else as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKeyKind {
    Int,
    Float,
    Text,
}

impl Sort {
    pub fn key_kind(&self) -> SortKeyKind {
        match &self.by {
            SortBy::LastUpdated
            | SortBy::Param {
                table: Table::Date, ..
            } => SortKeyKind::Int,
            SortBy::Param {
                table: Table::Quantity | Table::Number,
                ..
            } => SortKeyKind::Float,
            _ => SortKeyKind::Text,
        }
    }
}

impl SortValue {
    fn kind(&self) -> SortKeyKind {
        match self {
            SortValue::Int(_) => SortKeyKind::Int,
            SortValue::Float(_) => SortKeyKind::Float,
            SortValue::Text(_) => SortKeyKind::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Accurate,
}

/// `_total`'s value: `none`, or a count (`estimate` is answered with the accurate count).
pub fn parse_total(value: &str) -> Result<Total, SearchError> {
    match value {
        "none" => Ok(Total::None),
        "estimate" | "accurate" => Ok(Total::Accurate),
        other => invalid(format!(
            "_total '{other}' is not none, estimate or accurate"
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    /// `None` for `*` (every reference parameter).
    pub param: Option<String>,
    pub target_type: Option<String>,
    pub iterate: bool,
}

/// A sort key value of a row, carried in paging cursors.
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    Int(i64),
    Float(f64),
    Text(String),
}

/// Where a page starts: after (or, backwards, before) the row with these sort keys and rid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub keys: Vec<SortValue>,
    pub rid: i64,
    pub backward: bool,
    /// [`sort_fingerprint`] of the sort the page was cut by. Keys mean something only under
    /// that sort: resumed under another one they would start a page at an arbitrary row.
    pub sort: u64,
}

/// A short, stable digest of a search's sort keys and directions, carried in its page tokens
/// so that [`parse`] refuses a token with any other sort. FNV-1a (64 bits) over the keys as
/// `_sort` spells them: stable across builds and restarts, unlike `std`'s hasher, and fixed
/// in size whatever the sort.
pub fn sort_fingerprint(sort: &[Sort]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    // The bytes of `-date,code` fed as they come, without building the text.
    let fold = |hash: u64, bytes: &[u8]| {
        bytes.iter().fold(hash, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
        })
    };
    sort.iter().enumerate().fold(FNV_OFFSET, |hash, (i, key)| {
        let name = match &key.by {
            SortBy::LastUpdated => "_lastUpdated",
            SortBy::Id => "_id",
            SortBy::Param { param, .. } => param.as_str(),
        };
        let hash = if i > 0 { fold(hash, b",") } else { hash };
        let hash = if key.desc { fold(hash, b"-") } else { hash };
        fold(hash, name.as_bytes())
    })
}

impl Cursor {
    /// The cursor of the last page of a search sorted by `sort`: walk backwards from the end.
    pub fn last(sort: &[Sort]) -> Cursor {
        Cursor {
            keys: Vec::new(),
            rid: i64::MAX,
            backward: true,
            sort: sort_fingerprint(sort),
        }
    }

    /// Whether this is [`Cursor::last`].
    pub fn is_last(&self) -> bool {
        self.backward && self.rid == i64::MAX && self.keys.is_empty()
    }

    /// An opaque token for `_page_token`.
    pub fn encode(&self) -> String {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|k| match k {
                SortValue::Int(i) => serde_json::json!(i),
                SortValue::Float(f) => serde_json::json!({ "f": f.to_string() }),
                SortValue::Text(t) => serde_json::json!(t),
            })
            .collect();
        let value = serde_json::json!([
            if self.backward { "b" } else { "f" },
            self.rid,
            keys,
            format!("{:016x}", self.sort)
        ]);
        value
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn decode(token: &str) -> Option<Cursor> {
        if !token.len().is_multiple_of(2) {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect();
        let value: serde_json::Value = serde_json::from_slice(&bytes?).ok()?;
        let backward = match value.get(0)?.as_str()? {
            "b" => true,
            "f" => false,
            _ => return None,
        };
        let rid = value.get(1)?.as_i64()?;
        let keys = value
            .get(2)?
            .as_array()?
            .iter()
            .map(|k| match k {
                serde_json::Value::String(s) => Some(SortValue::Text(s.clone())),
                serde_json::Value::Object(o) => {
                    o.get("f")?.as_str()?.parse().ok().map(SortValue::Float)
                }
                other => other.as_i64().map(SortValue::Int),
            })
            .collect::<Option<Vec<_>>>()?;
        let sort = u64::from_str_radix(value.get(3)?.as_str()?, 16).ok()?;
        Some(Cursor {
            keys,
            rid,
            backward,
            sort,
        })
    }
}

/// A parsed search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    /// Resource types searched (one for a type search).
    pub types: Vec<String>,
    pub filters: Vec<Filter>,
    pub sort: Vec<Sort>,
    pub count: usize,
    pub total: Total,
    /// `_summary` (`true`, `text`, `data`, `count`, `false`).
    pub summary: Option<String>,
    pub elements: Vec<String>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub cursor: Option<Cursor>,
    /// Parameters ignored under lenient handling.
    pub ignored: Vec<String>,
    /// The parameters that took effect, for the `self` link (no paging token).
    pub applied: Vec<(String, String)>,
    /// The types `_include`/`_revinclude` may bring in (`$everything`'s `_type`, narrowed by
    /// access control to the token's readable types); `None` for any type.
    pub included_types: Option<Vec<String>>,
}

impl SearchPlan {
    /// Whether only the number of matches is wanted.
    pub fn count_only(&self) -> bool {
        self.summary.as_deref() == Some("count") || self.count == 0
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    pub default_count: usize,
    pub max_count: usize,
    /// `Prefer: handling=strict`: unknown parameters are an error.
    pub strict: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            default_count: 50,
            max_count: 1000,
            strict: true,
        }
    }
}

/// Parameters that control the result rather than select resources.
const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_page_token",
    "_format",
    "_pretty",
    "_contained",
    "_containedType",
    "_type",
];

/// Whether `name` (without modifier) controls the result rather than selecting resources.
/// The items of a comma-separated list parameter (`_type`, `_sort`, `_elements`), trimmed.
/// An empty item (`_sort=,,`, `_type=Patient,`) is refused as an empty value is: it names
/// nothing, and dropping it would answer a request other than the one written (`_type=,`
/// would otherwise search no type at all and answer an empty page).
pub fn list_items<'v>(name: &str, value: &'v str) -> Result<Vec<&'v str>, SearchError> {
    if value.trim().is_empty() {
        return invalid(format!("parameter '{name}' has no value"));
    }
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.iter().any(|item| item.is_empty()) {
        return invalid(format!(
            "parameter '{name}' has an empty item in its list '{value}'"
        ));
    }
    Ok(items)
}

pub fn is_result_param(name: &str) -> bool {
    RESULT_PARAMS.contains(&name)
}

/// Parses the decoded `(name, value)` pairs of a search on `types`.
pub fn parse(
    types: &[String],
    params: &[(String, String)],
    options: &ParseOptions,
) -> Result<SearchPlan, SearchError> {
    let mut plan = SearchPlan {
        types: types.to_vec(),
        filters: Vec::new(),
        sort: Vec::new(),
        count: options.default_count.min(options.max_count),
        total: Total::None,
        summary: None,
        elements: Vec::new(),
        includes: Vec::new(),
        revincludes: Vec::new(),
        cursor: None,
        ignored: Vec::new(),
        applied: Vec::new(),
        included_types: None,
    };
    let mut unknown = Vec::new();
    let mut budget = Budget::default();
    for (name, value) in params {
        let base = name.split(':').next().unwrap_or(name);
        if RESULT_PARAMS.contains(&base) {
            // An empty value is refused here as it is for a search parameter (`code=`): it
            // names no sort, count, include or element set, and taking it as "not given"
            // would answer a search other than the one written (and echo `_sort=` in its
            // links). `_format` and `_pretty` are the HTTP layer's.
            if value.is_empty() && !matches!(base, "_format" | "_pretty") {
                return invalid(format!("parameter '{name}' has no value"));
            }
            // One value each: which of two `_count`s (or `_summary`s, `_total`s, `_sort`s)
            // was meant cannot be guessed, and taking either answers another search.
            if matches!(
                base,
                "_count" | "_summary" | "_total" | "_sort" | "_contained" | "_containedType"
            ) {
                refuse_repeated(params, name)?;
            }
            parse_result_param(&mut plan, name, value, options)?;
            continue;
        }
        match parse_filter_within(types, name, value, 0, &mut budget)?.map(capped_filter) {
            Some(_) if plan.filters.len() == MAX_SEARCH_PARAMS => {
                return too_costly(format!(
                    "a search takes at most {MAX_SEARCH_PARAMS} search parameters"
                ));
            }
            Some(filter) => {
                plan.filters.push(filter);
                plan.applied.push((name.clone(), value.clone()));
            }
            None => {
                if let Some(message) = not_common(types, name) {
                    return invalid(message);
                }
                unknown.push(name.clone());
            }
        }
    }
    if !unknown.is_empty() {
        if options.strict {
            return Err(SearchError::Unknown(unknown));
        }
        plan.ignored = unknown;
    }
    // A token's keys say where a page starts only under the sort that issued it (the same
    // keys in the same directions), and it carries one key per sort key; a hand-made token
    // could name the right sort with the wrong number of keys.
    if let Some(cursor) = &plan.cursor {
        // One key per sort key, each of the kind that sort key is (a hand-made token could
        // put a text where a date goes).
        let keys_fit = cursor.is_last()
            || (cursor.keys.len() == plan.sort.len()
                && cursor
                    .keys
                    .iter()
                    .zip(&plan.sort)
                    .all(|(key, sort)| key.kind() == sort.key_kind()));
        if cursor.sort != sort_fingerprint(&plan.sort) || !keys_fit {
            return invalid(
                "the page token does not belong to this search: _page_token was issued for a \
                 different _sort",
            );
        }
    }
    Ok(plan)
}

fn parse_result_param(
    plan: &mut SearchPlan,
    name: &str,
    value: &str,
    options: &ParseOptions,
) -> Result<(), SearchError> {
    let mut keep = true;
    match name {
        "_count" => {
            let n: usize = value
                .parse()
                .or_else(|_| invalid(format!("_count '{value}' is not a non-negative integer")))?;
            plan.count = n.min(options.max_count);
            plan.applied.push((name.into(), plan.count.to_string()));
            keep = false;
        }
        "_sort" => {
            for key in list_items(name, value)? {
                let (desc, code) = match key.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, key),
                };
                let by = match code {
                    "_lastUpdated" => SortBy::LastUpdated,
                    "_id" => SortBy::Id,
                    _ => {
                        let param = single_type_param(&plan.types, code).ok_or_else(|| {
                            SearchError::Invalid(format!(
                                "cannot sort by unknown parameter '{code}'"
                            ))
                        })?;
                        let table = Table::of(param.kind)
                            .filter(|t| !matches!(t, Table::Reference | Table::Composite))
                            .ok_or_else(|| {
                                SearchError::Invalid(format!(
                                    "cannot sort by '{code}' (a {} parameter)",
                                    param.kind.code()
                                ))
                            })?;
                        SortBy::Param {
                            table,
                            param: code.to_string(),
                        }
                    }
                };
                plan.sort.push(Sort { by, desc });
            }
        }
        "_total" => plan.total = parse_total(value)?,
        "_summary" => match value {
            "true" | "text" | "data" | "count" | "false" => plan.summary = Some(value.to_string()),
            other => {
                return invalid(format!(
                    "_summary '{other}' is not true, text, data, count or false"
                ))
            }
        },
        "_elements" => plan
            .elements
            .extend(list_items(name, value)?.into_iter().map(str::to_string)),
        "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
            let include = parse_include(&plan.types, name, value)?;
            if name.starts_with("_include") {
                plan.includes.push(include);
            } else {
                plan.revincludes.push(include);
            }
        }
        "_page_token" => {
            plan.cursor = Some(Cursor::decode(value).ok_or_else(|| {
                SearchError::Invalid("_page_token is not a token this server issued".into())
            })?);
            keep = false;
        }
        "_format" | "_pretty" | "_type" => keep = false,
        "_contained" => match value {
            "false" => {}
            "true" | "both" => {
                return invalid(format!(
                    "_contained={value} is not supported: this server does not search \
                     contained resources (only _contained=false, the default)"
                ))
            }
            other => return invalid(format!("_contained '{other}' is not false, true or both")),
        },
        "_containedType" => match value {
            "container" => {}
            "contained" => {
                return invalid(
                    "_containedType=contained is not supported: contained resources are not \
                     searched",
                )
            }
            other => {
                return invalid(format!(
                    "_containedType '{other}' is not container or contained"
                ))
            }
        },
        other => return invalid(format!("'{other}' is not a valid result parameter")),
    }
    if keep {
        plan.applied.push((name.to_string(), value.to_string()));
    }
    Ok(())
}

/// AuditEvents are the audit trail, read at `[base]/AuditEvent` under its own role rules and
/// kept in its own tables: a search of stored resources cannot join them, and would otherwise
/// answer as if no access had ever been recorded.
fn refuse_audit_trail(res_type: &str, how: &str) -> Result<(), SearchError> {
    if res_type == "AuditEvent" {
        return invalid(format!(
            "{how} cannot reach AuditEvent: the audit trail is searched at [base]/AuditEvent on its own"
        ));
    }
    Ok(())
}

fn parse_include(types: &[String], name: &str, value: &str) -> Result<Include, SearchError> {
    let iterate = name.ends_with(":iterate");
    if value == "*" {
        return Ok(Include {
            source_type: String::new(),
            param: None,
            target_type: None,
            iterate,
        });
    }
    let mut parts = value.split(':');
    let source_type = parts.next().unwrap_or_default().to_string();
    let param = parts.next().unwrap_or_default();
    let target_type = parts.next().map(str::to_string);
    let well_formed_target = target_type.as_deref().is_none_or(|t| {
        t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && t.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if source_type.is_empty() || param.is_empty() || !well_formed_target || parts.next().is_some() {
        return invalid(format!("{name} '{value}' is not Type:param[:target]"));
    }
    refuse_audit_trail(&source_type, name)?;
    if let Some(target) = &target_type {
        refuse_audit_trail(target, name)?;
    }
    if name.starts_with("_include")
        && !iterate
        && !types.is_empty()
        && !types.contains(&source_type)
    {
        return invalid(format!(
            "{name} '{value}' names {source_type}, which is not searched here"
        ));
    }
    if param == "*" {
        return Ok(Include {
            source_type,
            param: None,
            target_type,
            iterate,
        });
    }
    match registry().param(&source_type, param) {
        Some(p)
            if p.kind == ParamType::Reference
                && target_type
                    .as_ref()
                    .is_some_and(|t| !p.targets.is_empty() && !p.targets.contains(t)) =>
        {
            invalid(format!(
                "{name} '{value}': {source_type}.{param} refers to {}, not {}",
                p.targets.join(", "),
                target_type.as_deref().unwrap_or_default()
            ))
        }
        Some(p) if p.kind == ParamType::Reference => Ok(Include {
            source_type,
            param: Some(param.to_string()),
            target_type,
            iterate,
        }),
        _ => invalid(format!(
            "{name} '{value}': {source_type} has no reference parameter '{param}'"
        )),
    }
}

/// The parameter `code`, which must mean the same on every searched type. A search of every
/// type (no `_type`) has the parameters defined for all resources (`_tag`, `_profile`, …).
fn single_type_param(types: &[String], code: &str) -> Option<&'static SearchParam> {
    let reg = registry();
    let first = reg.param(types.first().map_or("Resource", String::as_str), code)?;
    types
        .iter()
        .all(|t| reg.param(t, code).is_some_and(|p| p.kind == first.kind))
        .then_some(first)
}

/// Why a parameter that some of several searched types define cannot be applied, or `None`
/// when no type defines it (an unknown parameter). R4 search.html: the parameters of a search
/// over several types must be common to them. Dropping it for every type, as an unknown
/// parameter is, would widen the search to everything those types hold, so it is refused
/// under lenient handling too.
fn not_common(types: &[String], name: &str) -> Option<String> {
    if types.len() < 2 || name.starts_with("_has:") {
        return None;
    }
    let code = name.split(['.', ':']).next().filter(|c| !c.is_empty())?;
    let reg = registry();
    let first_kind = types.iter().find_map(|t| reg.param(t, code))?.kind;
    let lacking: Vec<&str> = types
        .iter()
        .filter(|t| reg.param(t, code).is_none_or(|p| p.kind != first_kind))
        .map(String::as_str)
        .collect();
    // Every type has it with one kind, so something else made the filter unknown.
    if lacking.is_empty() {
        return None;
    }
    const NAMED: usize = 8;
    let mut named = lacking[..lacking.len().min(NAMED)].join(", ");
    if lacking.len() > NAMED {
        named.push_str(&format!(" and {} more", lacking.len() - NAMED));
    }
    Some(format!(
        "search parameter '{code}' is not common to the types searched ({named} do not \
         define it as the others do): name types that share it with _type"
    ))
}

/// Splits at unescaped `sep`, unescaping `\,`, `\|`, `\$`, `\\`.
/// 400 for a value, or an item of a list, of white space only (`code=%20`, `_id=x,%20`): no
/// code, id or reference is blank, so it would silently find nothing.
fn refuse_blank(name: &str, alternatives: &[String]) -> Result<(), SearchError> {
    if alternatives.iter().any(|item| item.trim().is_empty()) {
        return invalid(format!(
            "search parameter '{name}' has a value of white space only"
        ));
    }
    Ok(())
}

fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next) if next == sep => current.push(next),
                Some(next) => {
                    current.push('\\');
                    current.push(next);
                }
                None => current.push('\\'),
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// Escapes the search special characters (`\\`, `|`, `,`, `$`) of a value that is written into
/// a query as one token part or one string: the inverse of what parsing unescapes.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(next @ ('|' | '$' | ',' | '\\'))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// Parses one filter parameter; `Ok(None)` when the parameter is unknown.
/// `<entry chain parameter>[:Type].<rest>` (`composition.subject.name`) split after the
/// registered parameter: `None` for any other name.
fn split_entry_chain<'n>(types: &[String], name: &'n str) -> Option<(&'n str, &'n str)> {
    let first_dot = name.find('.')?;
    let second_dot = first_dot + 1 + name.get(first_dot + 1..)?.find('.')?;
    let head = name.get(..second_dot)?;
    let code = head.split_once(':').map_or(head, |(code, _)| code);
    (code.contains('.') && single_type_param(types, code).is_some())
        .then(|| (head, name.get(second_dot + 1..).unwrap_or_default()))
}

pub fn parse_filter(
    types: &[String],
    name: &str,
    value: &str,
) -> Result<Option<Filter>, SearchError> {
    Ok(parse_filter_within(types, name, value, 0, &mut Budget::default())?.map(capped_filter))
}

/// `filter` with its values cut as the index keys are ([`Filter::cap_keys`]).
fn capped_filter(mut filter: Filter) -> Filter {
    filter.cap_keys();
    filter
}

/// [`parse_filter`] at chain level `depth` (0 for the parameter itself), spending its values
/// and the types its chains look through from `budget`.
fn parse_filter_within(
    types: &[String],
    name: &str,
    value: &str,
    depth: usize,
    budget: &mut Budget,
) -> Result<Option<Filter>, SearchError> {
    // A Bundle's `composition.type` is a parameter of its own (registry::ENTRY_CHAINS): the
    // first entry is no stored resource to chain to. A chain may start at one
    // (`composition.subject:Patient.name`).
    let from_entry_chain = split_entry_chain(types, name);
    let code_of_name = name.split_once(':').map_or(name, |(code, _)| code);
    let entry_chain = from_entry_chain.is_none()
        && code_of_name.contains('.')
        && single_type_param(types, code_of_name).is_some();
    let chained = !entry_chain && (name.starts_with("_has:") || name.contains('.'));
    if chained && depth == MAX_CHAIN_DEPTH {
        return too_costly(format!(
            "a search parameter chains at most {MAX_CHAIN_DEPTH} levels (chained parameters and \
             _has counted together)"
        ));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_has(types, rest, value, depth, budget);
    }
    // A known parameter written wrong, not an unknown one to pass over: ignoring it would
    // answer more than was asked.
    if name == "_has" {
        return invalid("_has is written _has:Type:param:search=value".to_string());
    }
    // Chaining: `param[:Type].rest`.
    if let Some((head, rest)) =
        from_entry_chain.or_else(|| name.split_once('.').filter(|_| chained))
    {
        let (code, type_modifier) = match head.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (head, None),
        };
        let Some(param) = single_type_param(types, code) else {
            return Ok(None);
        };
        if param.kind != ParamType::Reference {
            return invalid(format!(
                "'{code}' is not a reference parameter and cannot be chained"
            ));
        }
        let candidates: Vec<String> = match type_modifier {
            Some(t) => vec![t.to_string()],
            None => param.targets.clone(),
        };
        let mut targets = Vec::new();
        for target in candidates {
            let inner = parse_filter_within(
                std::slice::from_ref(&target),
                rest,
                value,
                depth + 1,
                budget,
            )?;
            if let Some(inner) = inner {
                budget.spend_target()?;
                targets.push((target, inner));
            }
        }
        if targets.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Filter::Chain {
            param: code.to_string(),
            targets,
        }));
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if value.is_empty() {
        return invalid(format!("search parameter '{name}' has no value"));
    }
    let alternatives = split_escaped(value, ',');
    // Every type alike: an empty item of a list (`code=a,`) names nothing, and dropping it
    // would answer another search than the one written.
    if alternatives.iter().any(|item| item.is_empty()) {
        return invalid(format!(
            "search parameter '{name}' has an empty item in its list '{value}'"
        ));
    }
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            other => return invalid(format!("{name} '{other}' is not true or false")),
        };
        return match code {
            // Every resource has both: `:missing=true` finds none, `:missing=false` all.
            "_id" | "_lastUpdated" => Ok(Some(Filter::Id {
                ids: Vec::new(),
                not: !missing,
            })),
            _ => {
                let Some(param) = single_type_param(types, code) else {
                    return Ok(None);
                };
                budget.spend(1)?;
                let table = Table::of(param.kind)
                    .ok_or_else(|| SearchError::Invalid(format!("'{code}' is not searchable")))?;
                Ok(Some(Filter::Missing {
                    param: code.to_string(),
                    table,
                    missing,
                }))
            }
        };
    }
    if matches!(code, "_id" | "_lastUpdated") {
        budget.spend(alternatives.len())?;
    }
    match code {
        "_id" => {
            let not = match modifier {
                None => false,
                Some("not") => true,
                Some(other) => {
                    return invalid(format!("modifier ':{other}' is not supported on _id"))
                }
            };
            refuse_blank(name, &alternatives)?;
            let ids = alternatives.iter().map(|id| unescape(id)).collect();
            return Ok(Some(Filter::Id { ids, not }));
        }
        "_lastUpdated" => {
            no_modifier(name, modifier)?;
            let values = alternatives
                .iter()
                .map(|v| parse_date_value(name, v))
                .collect::<Result<_, _>>()?;
            return Ok(Some(Filter::LastUpdated(values)));
        }
        _ => {}
    }
    let Some(param) = single_type_param(types, code) else {
        return Ok(None);
    };
    // A string's white space is refused by its own rule (`:exact` compares it as written).
    if param.kind != ParamType::String {
        refuse_blank(name, &alternatives)?;
    }
    budget.spend(alternatives.len())?;
    let param_name = code.to_string();
    let filter = match param.kind {
        ParamType::Token => match modifier {
            None | Some("not") => Filter::Token {
                param: param_name,
                values: alternatives.iter().map(|v| parse_token(v)).collect(),
                not: modifier == Some("not"),
            },
            Some("text") => Filter::TokenText {
                param: param_name,
                values: alternatives.iter().map(|v| fold(&unescape(v))).collect(),
            },
            Some(m @ ("in" | "not-in")) => {
                if alternatives.len() != 1 {
                    return invalid(format!("{name} takes one ValueSet, not a list"));
                }
                Filter::TokenIn {
                    param: param_name,
                    value_set: alternatives[0].clone(),
                    not: m == "not-in",
                }
            }
            Some("of-type") => {
                // R4 defines `:of-type` for Identifier only; elsewhere it would find nothing
                // and say nothing, so it is refused like any other unsupported modifier.
                if !param.selects_identifiers() {
                    return invalid(format!(
                        "modifier ':of-type' applies to Identifier parameters; '{param_name}' \
                         is not one ({name})"
                    ));
                }
                let values = alternatives
                    .iter()
                    .map(|v| match split_escaped(v, '|').as_slice() {
                        [system, code, value]
                            if !system.is_empty() && !code.is_empty() && !value.is_empty() =>
                        {
                            Ok(vec![
                                CompositePart::Token(TokenMatch::SystemCode(
                                    canonical_system(&unescape(system)).to_string(),
                                    unescape(code),
                                )),
                                CompositePart::Token(TokenMatch::Code(unescape(value))),
                            ])
                        }
                        _ => invalid(format!(
                            "{name} '{v}' is not type-system|type-code|identifier-value"
                        )),
                    })
                    .collect::<Result<_, _>>()?;
                Filter::Composite {
                    param: format!("{param_name}:of-type"),
                    values,
                }
            }
            Some(other) => {
                return invalid(format!(
                    "token modifier ':{other}' is not supported ({name})"
                ))
            }
        },
        ParamType::String => {
            let mode = match modifier {
                None => StringMode::StartsWith,
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                Some(other) => {
                    return invalid(format!(
                        "string modifier ':{other}' is not supported ({name})"
                    ))
                }
            };
            let values = alternatives
                .iter()
                .map(|v| {
                    let v = unescape(v);
                    if mode == StringMode::Exact {
                        return Ok(v);
                    }
                    // Only spaces fold to nothing, which every value starts with: a
                    // search for it would answer everything rather than what was asked.
                    let folded = fold(&v);
                    if folded.is_empty() {
                        return invalid(format!(
                            "search parameter '{name}' has no value to search by ('{v}' is only white space)"
                        ));
                    }
                    Ok(folded)
                })
                .collect::<Result<_, _>>()?;
            Filter::String {
                param: param_name,
                values,
                mode,
            }
        }
        ParamType::Date => {
            no_modifier(name, modifier)?;
            Filter::Date {
                param: param_name,
                values: alternatives
                    .iter()
                    .map(|v| parse_date_value(name, v))
                    .collect::<Result<_, _>>()?,
            }
        }
        ParamType::Reference => {
            if modifier == Some("identifier") {
                return Ok(Some(Filter::Token {
                    param: format!("{param_name}:identifier"),
                    values: alternatives.iter().map(|v| parse_token(v)).collect(),
                    not: false,
                }));
            }
            if matches!(modifier, Some("linked" | "mdm")) {
                if !param.targets.iter().any(|t| t == "Patient") {
                    return invalid(format!(
                        "':{}' applies to references to Patient; '{param_name}' cannot point at one",
                        modifier.unwrap_or_default()
                    ));
                }
                let values = alternatives
                    .iter()
                    .map(|v| parse_linked_patient(name, v))
                    .collect::<Result<_, _>>()?;
                return Ok(Some(Filter::Reference {
                    param: param_name,
                    values,
                }));
            }
            let types_modifier = match modifier {
                None => None,
                // `:Type` names one of the parameter's target types (any, when it lists
                // `Resource` or none).
                Some(t) if t.starts_with(|c: char| c.is_ascii_uppercase()) => {
                    let targets = &param.targets;
                    let open = targets.is_empty() || targets.iter().any(|x| x == "Resource");
                    if !open && !targets.iter().any(|x| x == t) {
                        return invalid(format!(
                            "'{param_name}' refers to {}, not to '{t}' ({name})",
                            targets.join(", ")
                        ));
                    }
                    Some(t.to_string())
                }
                Some(other) => {
                    return invalid(format!(
                        "reference modifier ':{other}' is not supported ({name})"
                    ))
                }
            };
            let values = alternatives
                .iter()
                .map(|v| parse_reference(&unescape(v), types_modifier.as_deref(), &param.targets))
                .collect();
            Filter::Reference {
                param: param_name,
                values,
            }
        }
        ParamType::Quantity => {
            no_modifier(name, modifier)?;
            Filter::Quantity {
                param: param_name,
                values: alternatives
                    .iter()
                    .map(|v| parse_quantity(name, v))
                    .collect::<Result<_, _>>()?,
            }
        }
        ParamType::Number => {
            no_modifier(name, modifier)?;
            Filter::Number {
                param: param_name,
                values: alternatives
                    .iter()
                    .map(|v| parse_number(name, v))
                    .collect::<Result<_, _>>()?,
            }
        }
        ParamType::Uri => {
            let mode = match modifier {
                None if param.matches_canonical_versions() => UriMode::Canonical,
                None => UriMode::Exact,
                Some("below") => UriMode::Below,
                Some("above") => UriMode::Above,
                Some(other) => {
                    return invalid(format!("uri modifier ':{other}' is not supported ({name})"))
                }
            };
            Filter::Uri {
                param: param_name,
                values: alternatives.iter().map(|v| unescape(v)).collect(),
                mode,
            }
        }
        ParamType::Composite => {
            no_modifier(name, modifier)?;
            let values = alternatives
                .iter()
                .map(|v| parse_composite(name, param, v))
                .collect::<Result<_, _>>()?;
            Filter::Composite {
                param: param_name,
                values,
            }
        }
        ParamType::Special => return Ok(None),
    };
    Ok(Some(filter))
}

/// `a$b[$c]`, each part parsed by its component's type.
fn parse_composite(
    name: &str,
    param: &SearchParam,
    value: &str,
) -> Result<Vec<CompositePart>, SearchError> {
    let parts = split_escaped(value, '$');
    if parts.len() != param.components.len() {
        return invalid(format!(
            "{name} '{value}' needs {} values separated by '$'",
            param.components.len()
        ));
    }
    parts
        .iter()
        .zip(&param.components)
        .map(|(part, component)| {
            if part.is_empty() {
                return invalid(format!("{name} '{value}' has an empty component"));
            }
            Ok(match component.kind {
                ParamType::Token | ParamType::Uri => CompositePart::Token(parse_token(part)),
                ParamType::Quantity => CompositePart::Quantity(parse_quantity(name, part)?),
                ParamType::Number => CompositePart::Number(parse_number(name, part)?),
                ParamType::Date => CompositePart::Date(parse_date_value(name, part)?),
                ParamType::String => CompositePart::String(fold(&unescape(part))),
                ParamType::Reference => {
                    CompositePart::Reference(parse_reference(&unescape(part), None, &[]))
                }
                ParamType::Composite | ParamType::Special => {
                    return invalid(format!("{name}: unsupported component type"))
                }
            })
        })
        .collect()
}

/// What a stored ValueSet contributes to `:in`: its codes (`system|code`) and whole systems
/// (`system|`), plus the canonicals of the ValueSets it imports, which the caller expands in
/// turn. Parts that need a terminology server (`filter`) are reported in `unexpandable`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expansion {
    pub matches: Vec<TokenMatch>,
    pub imports: Vec<String>,
    pub unexpandable: Vec<String>,
}

/// Expands a ValueSet without a terminology server: `expansion.contains` when present,
/// otherwise `compose.include` concept lists and whole-system includes, minus
/// `compose.exclude` concepts (a whole-system include less its excluded codes is one
/// [`TokenMatch::SystemExcept`], which the store matches in SQL) and excluded whole systems.
/// Exclusions apply to the ValueSet's own includes, not to the ValueSets it imports.
pub fn expand_value_set(value_set: &serde_json::Value) -> Expansion {
    use serde_json::Value;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let list = |v: &Value, key: &str| -> Vec<Value> {
        v.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut out = Expansion::default();
    if let Some(expansion) = value_set.get("expansion") {
        fn walk(items: &[Value], out: &mut Vec<TokenMatch>) {
            for item in items {
                if let (Some(system), Some(code)) = (
                    item.get("system").and_then(Value::as_str),
                    item.get("code").and_then(Value::as_str),
                ) {
                    out.push(TokenMatch::SystemCode(
                        canonical_system(system).to_string(),
                        code.to_string(),
                    ));
                }
                if let Some(children) = item.get("contains").and_then(Value::as_array) {
                    walk(children, out);
                }
            }
        }
        walk(&list(expansion, "contains"), &mut out.matches);
        return out;
    }
    let Some(compose) = value_set.get("compose") else {
        return out;
    };
    // Excluded codes by system; a system mapped to `None` is excluded whole.
    let mut excluded: HashMap<String, Option<BTreeSet<String>>> = HashMap::new();
    for exclude in list(compose, "exclude") {
        if !list(&exclude, "valueSet").is_empty() || !list(&exclude, "filter").is_empty() {
            out.unexpandable.push(format!(
                "exclude of {} by ValueSet or filter",
                text(&exclude, "system").as_deref().unwrap_or("?")
            ));
        }
        let Some(system) = text(&exclude, "system") else {
            continue;
        };
        let system = canonical_system(&system).to_string();
        let concepts = list(&exclude, "concept");
        if concepts.is_empty() {
            if list(&exclude, "filter").is_empty() {
                excluded.insert(system, None);
            }
            continue;
        }
        if let Some(codes) = excluded
            .entry(system)
            .or_insert_with(|| Some(BTreeSet::new()))
        {
            codes.extend(concepts.iter().filter_map(|c| text(c, "code")));
        }
    }
    let is_excluded = |system: &str, code: &str| match excluded.get(system) {
        Some(None) => true,
        Some(Some(codes)) => codes.contains(code),
        None => false,
    };
    for include in list(compose, "include") {
        out.imports.extend(
            list(&include, "valueSet")
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string),
        );
        let system = text(&include, "system").map(|s| canonical_system(&s).to_string());
        if !list(&include, "filter").is_empty() {
            out.unexpandable.push(format!(
                "include of {} with a filter",
                system.as_deref().unwrap_or("?")
            ));
            continue;
        }
        let Some(system) = system else { continue };
        let concepts = list(&include, "concept");
        if concepts.is_empty() {
            match excluded.get(&system) {
                Some(None) => {}
                Some(Some(codes)) if !codes.is_empty() => out.matches.push(
                    TokenMatch::SystemExcept(system, codes.iter().cloned().collect()),
                ),
                _ => out.matches.push(TokenMatch::System(system)),
            }
            continue;
        }
        for concept in concepts {
            if let Some(code) = text(&concept, "code") {
                if !is_excluded(&system, &code) {
                    out.matches
                        .push(TokenMatch::SystemCode(system.clone(), code));
                }
            }
        }
    }
    out
}

fn no_modifier(name: &str, modifier: Option<&str>) -> Result<(), SearchError> {
    match modifier {
        None => Ok(()),
        Some(m) => invalid(format!("modifier ':{m}' is not supported on '{name}'")),
    }
}

fn parse_has(
    types: &[String],
    rest: &str,
    value: &str,
    depth: usize,
    budget: &mut Budget,
) -> Result<Option<Filter>, SearchError> {
    let mut parts = rest.splitn(3, ':');
    let (Some(source_type), Some(param), Some(inner_name)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return invalid(format!("_has:{rest} is not _has:Type:param:search"));
    };
    refuse_audit_trail(source_type, "_has")?;
    let Some(link) = registry().param(source_type, param) else {
        return Ok(None);
    };
    if link.kind != ParamType::Reference {
        return invalid(format!(
            "_has: {source_type}.{param} is not a reference parameter"
        ));
    }
    if !link.targets.is_empty() && !types.iter().all(|t| link.targets.contains(t)) {
        return invalid(format!(
            "_has: {source_type}.{param} does not point at {}",
            types.join(",")
        ));
    }
    let inner = parse_filter_within(
        &[source_type.to_string()],
        inner_name,
        value,
        depth + 1,
        budget,
    )?;
    if inner.is_some() {
        budget.spend_target()?;
    }
    Ok(inner.map(|filter| Filter::Has {
        source_type: source_type.to_string(),
        param: param.to_string(),
        filter: Box::new(filter),
    }))
}

pub fn parse_token(value: &str) -> TokenMatch {
    let parts: Vec<String> = split_escaped(value, '|')
        .iter()
        .map(|part| unescape(part))
        .collect();
    match parts.as_slice() {
        [code] => TokenMatch::Code(code.clone()),
        [system, code] if system.is_empty() => TokenMatch::NoSystem(code.clone()),
        [system, code] if code.is_empty() => {
            TokenMatch::System(canonical_system(system).to_string())
        }
        [system, code] => {
            TokenMatch::SystemCode(canonical_system(system).to_string(), code.clone())
        }
        _ => TokenMatch::Code(unescape(value)),
    }
}

/// 400 when the one-valued parameter `name` is given more than once (`_count=5&_count=9`).
pub fn refuse_repeated(params: &[(String, String)], name: &str) -> Result<(), SearchError> {
    if params.iter().filter(|(other, _)| other == name).count() > 1 {
        return invalid(format!(
            "parameter '{name}' is given more than once; it takes one value"
        ));
    }
    Ok(())
}

/// A date search value: its prefix and the period it names (both ends inclusive).
pub fn parse_date_value(name: &str, value: &str) -> Result<DateValue, SearchError> {
    let (prefix, rest) = Prefix::split(value);
    let range = parse_range(rest).ok_or_else(|| {
        // A `+` sent unencoded in a query string arrives as a space (`T10:00 09:00`).
        let inner_space = rest.trim() == rest && rest.contains(' ');
        let hint = if rest.contains('T') && inner_space {
            "; a time zone's + must be sent as %2B (10:00%2B09:00)"
        } else {
            ""
        };
        SearchError::Invalid(format!(
            "{name}: '{value}' is not a valid date search value{hint}"
        ))
    })?;
    Ok(DateValue {
        prefix,
        low: range.low,
        high: range.high,
    })
}

/// Tolerance of `ap` on a date: 10 % of the distance to now, at least a day.
pub fn approximate_date(value: &DateValue) -> (i64, i64) {
    let gap = (now_ms() - value.low).abs() / 10;
    let tolerance = gap.max(86_400_000);
    (
        value.low.saturating_sub(tolerance),
        value.high.saturating_add(tolerance),
    )
}

fn parse_number(name: &str, value: &str) -> Result<NumberValue, SearchError> {
    let (prefix, rest) = Prefix::split(value);
    let not_a_number = || SearchError::Invalid(format!("{name}: '{value}' is not a number"));
    let number: f64 = Some(rest)
        .filter(|text| crate::number::is_fhir_decimal(text))
        .and_then(|text| text.parse().ok())
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(not_a_number)?;
    // A value too small for the stored f64s (`1e-400`) would read as 0 and match zeros.
    let mantissa = rest.split(['e', 'E']).next().unwrap_or(rest);
    if number == 0.0 && mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        return invalid(format!(
            "{name}: '{value}' is too close to zero for this server to compare"
        ));
    }
    let (low, high) = crate::number::implied_range(rest).ok_or_else(not_a_number)?;
    Ok(NumberValue {
        prefix,
        value: number,
        low,
        high,
    })
}

fn parse_quantity(name: &str, value: &str) -> Result<QuantityValue, SearchError> {
    let parts = split_escaped(value, '|');
    let number = parse_number(name, &parts[0])?;
    let (system, code) = match parts.as_slice() {
        [_] => (None, None),
        [_, system, code] => (
            Some(system.clone())
                .filter(|s| !s.is_empty())
                .map(|s| canonical_system(&s).to_string()),
            Some(code.clone()).filter(|c| !c.is_empty()),
        ),
        _ => return invalid(format!("{name}: '{value}' is not number|system|code")),
    };
    Ok(QuantityValue {
        number,
        system,
        code,
    })
}

/// The Patient id of a `:linked` value (`id` or `Patient/id`).
fn parse_linked_patient(name: &str, value: &str) -> Result<RefMatch, SearchError> {
    let id = value.strip_prefix("Patient/").unwrap_or(value);
    if id.is_empty() || id.contains('/') || id.contains(':') {
        return invalid(format!(
            "'{name}' takes a Patient id or Patient/id, not '{value}'"
        ));
    }
    Ok(RefMatch::LinkedPatient(id.to_string()))
}

fn parse_reference(value: &str, type_modifier: Option<&str>, targets: &[String]) -> RefMatch {
    if value.contains("://") || value.starts_with("urn:") {
        return RefMatch::Url(value.to_string());
    }
    if let Some((t, id)) = crate::extract::split_reference(value) {
        return RefMatch::Id { types: vec![t], id };
    }
    let types = match type_modifier {
        Some(t) => vec![t.to_string()],
        None if targets.len() == 1 => targets.to_vec(),
        None => Vec::new(),
    };
    RefMatch::Id {
        types,
        id: value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_unencoded_plus_in_a_date_is_explained() {
        match parse_date_value("date", "2025-11-04T10:00 09:00") {
            Err(SearchError::Invalid(message)) => assert!(message.contains("%2B"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_number_below_the_range_of_f64_is_refused_not_read_as_zero() {
        assert!(matches!(
            parse_number("value-quantity", "1e-400"),
            Err(SearchError::Invalid(_))
        ));
        assert!(parse_number("value-quantity", "0e-400").is_ok());
        assert!(parse_number("value-quantity", "0.000").is_ok());
        assert!(parse_number("value-quantity", "1e-300").is_ok());
    }

    #[test]
    fn numbers_are_written_as_fhir_decimals() {
        for text in [
            ".5", "1.", "+1", "007", "1e", "1e+", "-", "1.5.5", "0x10", "inf", "NaN",
        ] {
            assert!(parse_number("value-quantity", text).is_err(), "{text}");
        }
        for text in [
            "0", "-0", "0.5", "100", "-1.25", "1e2", "1E-3", "1.5e+10", "0.000",
        ] {
            assert!(parse_number("value-quantity", text).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_date_with_surrounding_space_is_refused() {
        for value in [" 2020", "2020 ", "ge 2020-01-01", "2020-01-01\t"] {
            assert!(
                matches!(
                    parse_date_value("date", value),
                    Err(SearchError::Invalid(_))
                ),
                "{value:?}"
            );
        }
        assert!(parse_date_value("date", "ge2020-01-01").is_ok());
        // A space at an end is no lost `+`: no hint about one.
        match parse_date_value("date", "2025-11-04T10:00:00+09:00 ") {
            Err(SearchError::Invalid(message)) => assert!(!message.contains("%2B"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn obs() -> Vec<String> {
        vec!["Observation".to_string()]
    }

    #[test]
    fn empty_control_parameters_are_refused_like_empty_search_parameters() {
        for name in [
            "_sort",
            "_count",
            "_include",
            "_revinclude",
            "_include:iterate",
            "_elements",
            "_summary",
            "_total",
            "code",
        ] {
            let err = parse(&obs(), &p(&[(name, "")]), &ParseOptions::default()).unwrap_err();
            let SearchError::Invalid(message) = err else {
                panic!("{name}: {err:?}");
            };
            assert!(
                message.contains(&format!("'{name}' has no value")),
                "{message}"
            );
        }
    }

    #[test]
    fn a_string_value_of_white_space_only_is_refused() {
        let patient = vec!["Patient".to_string()];
        for value in [" ", "%20", "\u{3000}", "a, "] {
            let value = value.replace("%20", " ");
            let err = parse(
                &patient,
                &p(&[("family", &value)]),
                &ParseOptions::default(),
            )
            .unwrap_err();
            let SearchError::Invalid(message) = err else {
                panic!("{value:?}: {err:?}");
            };
            assert!(message.contains("only white space"), "{message}");
        }
        // `:exact` compares the value as written.
        assert!(parse(
            &patient,
            &p(&[("family:exact", " ")]),
            &ParseOptions::default()
        )
        .is_ok());
    }

    #[test]
    fn a_single_valued_result_parameter_given_twice_is_refused() {
        let patient = vec!["Patient".to_string()];
        for name in ["_count", "_summary", "_total", "_sort"] {
            let value = match name {
                "_count" => "5",
                "_summary" => "true",
                "_total" => "none",
                _ => "birthdate",
            };
            let err = parse(
                &patient,
                &p(&[(name, value), (name, value)]),
                &ParseOptions::default(),
            )
            .unwrap_err();
            assert!(matches!(err, SearchError::Invalid(_)), "{name}: {err:?}");
        }
    }

    #[test]
    fn an_empty_or_blank_item_is_refused_for_every_type() {
        let observation = vec!["Observation".to_string()];
        for (name, value) in [
            ("code", "3D046,"),
            ("code", "3D046, "),
            ("code", " "),
            ("patient", "p1,"),
            ("_id", "o1,"),
            ("_id", " "),
            ("_profile", "http://x/y,"),
            ("date", "2025,"),
        ] {
            let err =
                parse(&observation, &p(&[(name, value)]), &ParseOptions::default()).unwrap_err();
            assert!(
                matches!(err, SearchError::Invalid(_)),
                "{name}={value:?}: {err:?}"
            );
        }
    }

    #[test]
    fn a_parameter_some_searched_types_lack_is_refused() {
        let types = vec!["Patient".to_string(), "Observation".to_string()];
        let lenient = ParseOptions {
            strict: false,
            ..ParseOptions::default()
        };
        for name in ["code", "code:text", "subject.name", "gender"] {
            let err = parse(&types, &p(&[(name, "x")]), &lenient).unwrap_err();
            let SearchError::Invalid(message) = err else {
                panic!("{name}: {err:?}");
            };
            assert!(
                message.contains("not common to the types searched"),
                "{message}"
            );
        }
        let err = parse(&types, &p(&[("code", "x")]), &ParseOptions::default()).unwrap_err();
        assert!(format!("{err:?}").contains("Patient"), "{err:?}");
        // Common parameters apply; parameters no type defines stay ignored.
        let plan = parse(
            &types,
            &p(&[("_tag", "a|b"), ("nothing-defines-this", "x")]),
            &lenient,
        )
        .unwrap();
        assert_eq!(plan.filters.len(), 1);
        assert_eq!(plan.ignored, ["nothing-defines-this"]);
    }

    #[test]
    fn string_and_uri_values_unescape_every_search_escape() {
        let plan = parse(
            &["Patient".to_string()],
            &p(&[("family:exact", r"Comma\,Esc\$Pipe\|X\\")]),
            &ParseOptions::default(),
        )
        .unwrap();
        match &plan.filters[0] {
            Filter::String { values, .. } => assert_eq!(values, &[r"Comma,Esc$Pipe|X\"]),
            other => panic!("{other:?}"),
        }
        let plan = parse(
            &["ValueSet".to_string()],
            &p(&[("url", r"http://x/v\|1")]),
            &ParseOptions::default(),
        )
        .unwrap();
        match &plan.filters[0] {
            Filter::Uri { values, .. } => assert_eq!(values, &["http://x/v|1"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn composite_and_of_type_parts_unescape_every_search_escape() {
        let plan = parse(
            &obs(),
            &p(&[
                ("code-value-string", r"LOCAL1$Hello\, World \$ \| ok \ end"),
                (
                    "identifier:of-type",
                    r"http://terminology.hl7.org/CodeSystem/v2-0203|MR|A\$1\|2\,3\4",
                ),
            ]),
            &ParseOptions::default(),
        )
        .unwrap();
        match &plan.filters[0] {
            Filter::Composite { values, .. } => assert_eq!(
                values[0][1],
                CompositePart::String(fold(r"Hello, World $ | ok \ end"))
            ),
            other => panic!("{other:?}"),
        }
        match &plan.filters[1] {
            Filter::Composite { values, .. } => assert_eq!(
                values[0][1],
                CompositePart::Token(TokenMatch::Code(r"A$1|2,3\4".into()))
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn of_type_applies_to_identifier_parameters_only() {
        let strict = ParseOptions::default();
        for (types, name) in [
            (obs(), "status:of-type"),
            (obs(), "code:of-type"),
            (vec!["Patient".to_string()], "telecom:of-type"),
        ] {
            match parse(&types, &p(&[(name, "a|b|c")]), &strict) {
                Err(SearchError::Invalid(message)) => {
                    let param = name.split(':').next().unwrap_or_default();
                    assert!(
                        message.contains(":of-type") && message.contains(&format!("'{param}'")),
                        "{message}"
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(parse(&obs(), &p(&[("identifier:of-type", "a|b|c")]), &strict).is_ok());
        assert!(parse(
            &["Specimen".to_string()],
            &p(&[("accession:of-type", "a|b|c")]),
            &strict
        )
        .is_ok());
    }

    #[test]
    fn id_takes_not_and_no_other_modifier() {
        let strict = ParseOptions::default();
        let plan = parse(&obs(), &p(&[("_id:not", "a,b"), ("_id", "c")]), &strict).unwrap();
        assert_eq!(
            plan.filters,
            [
                Filter::Id {
                    ids: vec!["a".into(), "b".into()],
                    not: true
                },
                Filter::Id {
                    ids: vec!["c".into()],
                    not: false
                }
            ]
        );
        assert!(matches!(
            parse(&obs(), &p(&[("_id:exact", "a")]), &strict),
            Err(SearchError::Invalid(message)) if message.contains(":exact")
        ));
    }

    #[test]
    fn token_values_unescape_every_search_escape() {
        assert_eq!(parse_token("c\\$d"), TokenMatch::Code("c$d".into()));
        assert_eq!(parse_token("e\\\\f"), TokenMatch::Code("e\\f".into()));
        assert_eq!(
            parse_token("s\\|x|a\\$b"),
            TokenMatch::SystemCode("s|x".into(), "a$b".into())
        );
    }

    #[test]
    fn include_target_types_are_checked() {
        let types = ["Observation".to_string()];
        let ok = |value: &str| parse_include(&types, "_include", value).is_ok();
        assert!(ok("Observation:subject"));
        assert!(ok("Observation:subject:Patient"));
        assert!(ok("Observation:*:Practitioner"));
        // Observation.subject refers to Patient, Group, Device and Location only.
        assert!(!ok("Observation:subject:Practitioner"));
        assert!(!ok("Observation:subject:Foo"));
        assert!(!ok("Observation:subject:"));
        assert!(!ok("Observation:subject:patient"));
        assert!(!ok("Observation:subject:Patient:extra"));
    }

    #[test]
    fn parses_tokens_with_system_spellings() {
        let plan = parse(
            &obs(),
            &p(&[
                ("code", "urn:oid:1.2.392.200119.4.504|3A010,|x,sys|,plain"),
                ("status:not", "final"),
            ]),
            &ParseOptions::default(),
        )
        .unwrap();
        assert_eq!(
            plan.filters[0],
            Filter::Token {
                param: "code".into(),
                values: vec![
                    TokenMatch::SystemCode(
                        "http://medis.or.jp/CodeSystem/master-JLAC10-17digits".into(),
                        "3A010".into()
                    ),
                    TokenMatch::NoSystem("x".into()),
                    TokenMatch::System("sys".into()),
                    TokenMatch::Code("plain".into()),
                ],
                not: false
            }
        );
        assert!(matches!(&plan.filters[1], Filter::Token { not: true, .. }));
    }

    #[test]
    fn parses_strings_dates_numbers_and_references() {
        let patient = vec!["Patient".to_string()];
        let plan = parse(
            &patient,
            &p(&[
                ("family", "ﾔﾏﾀﾞ"),
                ("name:exact", "山田"),
                ("birthdate", "ge1970-01"),
                ("general-practitioner", "Practitioner/1"),
                ("organization", "o1"),
            ]),
            &ParseOptions::default(),
        )
        .unwrap();
        assert_eq!(
            plan.filters[0],
            Filter::String {
                param: "family".into(),
                values: vec!["ヤマダ".into()],
                mode: StringMode::StartsWith
            }
        );
        assert!(matches!(
            &plan.filters[1],
            Filter::String {
                mode: StringMode::Exact,
                ..
            }
        ));
        match &plan.filters[2] {
            Filter::Date { values, .. } => {
                assert_eq!(values[0].prefix, Prefix::Ge);
                assert_eq!(values[0].high - values[0].low, 31 * 86_400_000 - 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan.filters[3],
            Filter::Reference {
                param: "general-practitioner".into(),
                values: vec![RefMatch::Id {
                    types: vec!["Practitioner".into()],
                    id: "1".into()
                }]
            }
        );
        assert_eq!(
            plan.filters[4],
            Filter::Reference {
                param: "organization".into(),
                values: vec![RefMatch::Id {
                    types: vec!["Organization".into()],
                    id: "o1".into()
                }]
            }
        );
        let q = parse(
            &obs(),
            &p(&[("value-quantity", "gt5.40|http://unitsofmeasure.org|mg")]),
            &ParseOptions::default(),
        )
        .unwrap();
        match &q.filters[0] {
            Filter::Quantity { values, .. } => {
                assert_eq!(values[0].number.prefix, Prefix::Gt);
                assert!((values[0].number.low - 5.395).abs() < 1e-9);
                assert_eq!(values[0].code.as_deref(), Some("mg"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_has_without_its_path_is_refused_even_when_lenient() {
        let refused = parse(
            &["Patient".to_string()],
            &p(&[("_has", "x")]),
            &ParseOptions::default(),
        );
        assert!(
            matches!(&refused, Err(SearchError::Invalid(m)) if m.contains("_has:Type:param")),
            "{refused:?}"
        );
    }

    #[test]
    fn parses_chains_has_and_result_parameters() {
        let plan = parse(
            &obs(),
            &p(&[
                ("subject:Patient.name", "yamada"),
                ("patient.identifier", "s|1"),
                ("_sort", "-date,_id"),
                ("_count", "5000"),
                ("_include", "Observation:patient"),
                ("_revinclude:iterate", "Provenance:target"),
            ]),
            &ParseOptions {
                default_count: 20,
                max_count: 100,
                strict: true,
            },
        )
        .unwrap();
        assert!(
            matches!(&plan.filters[0], Filter::Chain { targets, .. } if targets.len() == 1 && targets[0].0 == "Patient")
        );
        assert!(
            matches!(&plan.filters[1], Filter::Chain { targets, .. } if targets[0].0 == "Patient")
        );
        assert_eq!(plan.sort.len(), 2);
        assert!(plan.sort[0].desc);
        assert_eq!(plan.count, 100);
        assert_eq!(plan.includes[0].param.as_deref(), Some("patient"));
        assert!(plan.revincludes[0].iterate);
        let has = parse(
            &["Patient".to_string()],
            &p(&[("_has:Observation:patient:code", "1234")]),
            &ParseOptions::default(),
        )
        .unwrap();
        assert!(
            matches!(&has.filters[0], Filter::Has { source_type, .. } if source_type == "Observation")
        );
    }

    #[test]
    fn searches_beyond_the_limits_are_too_costly() {
        let strict = ParseOptions::default();
        let too_costly = |result: Result<SearchPlan, SearchError>| match result {
            Err(SearchError::TooCostly(message)) => message,
            other => panic!("expected too-costly, got {other:?}"),
        };
        // Parameters: 32 ANDed, not 33.
        let names = |n: usize| vec![("name".to_string(), "a".to_string()); n];
        let patient = ["Patient".to_string()];
        assert_eq!(
            parse(&patient, &names(MAX_SEARCH_PARAMS), &strict)
                .unwrap()
                .filters
                .len(),
            MAX_SEARCH_PARAMS
        );
        let message = too_costly(parse(&patient, &names(MAX_SEARCH_PARAMS + 1), &strict));
        assert!(
            message.contains("at most 32 search parameters"),
            "{message}"
        );
        // Values: 1000 in all, over every parameter.
        let values = |n: usize, from: usize| {
            (from..from + n)
                .map(|i| format!("v{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let split = p(&[("name", &values(600, 0)), ("family", &values(400, 600))]);
        assert!(parse(&patient, &split, &strict).is_ok());
        let over = p(&[("name", &values(600, 0)), ("family", &values(401, 600))]);
        let message = too_costly(parse(&patient, &over, &strict));
        assert!(message.contains("at most 1000 values"), "{message}");
        // A ValueSet is one value however many codes it has.
        assert!(parse(&obs(), &p(&[("code:in", "ValueSet/yj")]), &strict).is_ok());
        // Chains and _has: four levels, not five.
        let chain =
            |levels: usize| format!("subject:Patient{}.name", ".link:Patient".repeat(levels - 1));
        assert!(parse(&obs(), &p(&[(&chain(MAX_CHAIN_DEPTH), "x")]), &strict).is_ok());
        let message = too_costly(parse(
            &obs(),
            &p(&[(&chain(MAX_CHAIN_DEPTH + 1), "x")]),
            &strict,
        ));
        assert!(message.contains("at most 4 levels"), "{message}");
        let has = |partof: usize| {
            format!(
                "_has:Observation:patient:_has:Provenance:target:agent:Organization{}.name",
                ".partof:Organization".repeat(partof)
            )
        };
        assert!(parse(&patient, &p(&[(&has(1), "x")]), &strict).is_ok());
        too_costly(parse(&patient, &p(&[(&has(2), "x")]), &strict));
        // An untyped chain through a reference to any type looks through every type.
        let message = too_costly(parse(
            &["Basic".to_string()],
            &p(&[("subject._id", "x")]),
            &strict,
        ));
        assert!(message.contains("at most 32 resource types"), "{message}");
        assert!(parse(
            &["Basic".to_string()],
            &p(&[("subject:Patient._id", "x")]),
            &strict
        )
        .is_ok());
    }

    #[test]
    fn unknown_and_malformed_parameters() {
        let strict = ParseOptions::default();
        assert_eq!(
            parse(&obs(), &p(&[("bogus", "1")]), &strict),
            Err(SearchError::Unknown(vec!["bogus".into()]))
        );
        let lenient = ParseOptions {
            strict: false,
            ..strict
        };
        let plan = parse(&obs(), &p(&[("bogus", "1"), ("status", "final")]), &lenient).unwrap();
        assert_eq!(plan.ignored, vec!["bogus".to_string()]);
        assert_eq!(plan.applied, p(&[("status", "final")]));
        assert!(matches!(
            parse(&obs(), &p(&[("date", "2024-13")]), &strict),
            Err(SearchError::Invalid(_))
        ));
        assert!(matches!(
            parse(&obs(), &p(&[("date", "xx2024")]), &strict),
            Err(SearchError::Invalid(_))
        ));
        assert!(matches!(
            parse(&obs(), &p(&[("_count", "-1")]), &strict),
            Err(SearchError::Invalid(_))
        ));
        assert!(matches!(
            parse(&obs(), &p(&[("code:below", "x")]), &strict),
            Err(SearchError::Invalid(_))
        ));
    }

    #[test]
    fn parses_composites_and_token_modifiers() {
        let plan = parse(
            &obs(),
            &p(&[
                (
                    "code-value-quantity",
                    "http://loinc.org|8480-6$gt100,8462-4$lt90",
                ),
                ("code:in", "ValueSet/vs1"),
                (
                    "identifier:of-type",
                    "http://terminology.hl7.org/CodeSystem/v2-0203|MR|42",
                ),
                ("subject:identifier", "urn:mrn|M1"),
            ]),
            &ParseOptions::default(),
        )
        .unwrap();
        match &plan.filters[0] {
            Filter::Composite { param, values } => {
                assert_eq!(param, "code-value-quantity");
                assert_eq!(values.len(), 2);
                assert_eq!(
                    values[0][0],
                    CompositePart::Token(TokenMatch::SystemCode(
                        "http://loinc.org".into(),
                        "8480-6".into()
                    ))
                );
                assert!(
                    matches!(&values[1][1], CompositePart::Quantity(q) if q.number.prefix == Prefix::Lt)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan.filters[1],
            Filter::TokenIn {
                param: "code".into(),
                value_set: "ValueSet/vs1".into(),
                not: false
            }
        );
        assert!(
            matches!(&plan.filters[2], Filter::Composite { param, .. } if param == "identifier:of-type")
        );
        assert!(
            matches!(&plan.filters[3], Filter::Token { param, .. } if param == "subject:identifier")
        );
        let strict = ParseOptions::default();
        for bad in [
            ("code-value-quantity", "8480-6"),
            ("code-value-quantity", "8480-6$xx"),
            ("identifier:of-type", "MR|42"),
            ("_contained", "true"),
            ("_contained", "both"),
        ] {
            assert!(
                matches!(
                    parse(&obs(), &p(&[bad]), &strict),
                    Err(SearchError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        assert!(parse(&obs(), &p(&[("_contained", "false")]), &strict).is_ok());
        assert!(matches!(
            parse(&obs(), &p(&[("_sort", "code-value-quantity")]), &strict),
            Err(SearchError::Invalid(_))
        ));
    }

    #[test]
    fn a_whole_system_include_keeps_its_exclusions() {
        let vs = serde_json::json!({"resourceType": "ValueSet", "compose": {
            "include": [
                {"system": "http://loinc.org"},
                {"system": "http://snomed.info/sct"},
                {"system": "urn:oid:1.2.392.200119.4.504"},
                {"system": "urn:gone", "concept": [{"code": "a"}]}
            ],
            "exclude": [
                {"system": "http://loinc.org", "concept": [{"code": "2339-0"}, {"code": "1111-1"}]},
                {"system": "http://medis.or.jp/CodeSystem/master-JLAC10-17digits",
                 "concept": [{"code": "3A010"}]},
                {"system": "http://snomed.info/sct"},
                {"system": "urn:gone"}
            ]
        }});
        assert_eq!(
            expand_value_set(&vs).matches,
            [
                TokenMatch::SystemExcept(
                    "http://loinc.org".into(),
                    vec!["1111-1".into(), "2339-0".into()]
                ),
                TokenMatch::SystemExcept(
                    "http://medis.or.jp/CodeSystem/master-JLAC10-17digits".into(),
                    vec!["3A010".into()]
                ),
            ]
        );
    }

    #[test]
    fn expands_value_sets_without_a_terminology_server() {
        let vs = serde_json::json!({"resourceType": "ValueSet", "compose": {
            "include": [
                {"system": "http://loinc.org", "concept": [{"code": "8480-6"}, {"code": "8462-4"}]},
                {"system": "http://snomed.info/sct"},
                {"system": "http://x", "filter": [{"property": "a", "op": "=", "value": "b"}]},
                {"valueSet": ["http://example.org/vs/other"]}
            ],
            "exclude": [{"system": "http://loinc.org", "concept": [{"code": "8462-4"}]}]
        }});
        let e = expand_value_set(&vs);
        assert_eq!(
            e.matches,
            [
                TokenMatch::SystemCode("http://loinc.org".into(), "8480-6".into()),
                TokenMatch::System("http://snomed.info/sct".into())
            ]
        );
        assert_eq!(e.imports, ["http://example.org/vs/other"]);
        assert_eq!(e.unexpandable.len(), 1);
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor {
            keys: vec![
                SortValue::Int(-5),
                SortValue::Text("a\"b".into()),
                SortValue::Float(1.25),
            ],
            rid: 42,
            backward: true,
            sort: u64::MAX,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        let last = Cursor::decode(&Cursor::last(&[]).encode()).unwrap();
        assert!(last.is_last());
        assert_eq!(Cursor::decode("zz"), None);
        // A token of an earlier version, without the sort's fingerprint.
        let old: String = r#"["f",42,[]]"#.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Cursor::decode(&old), None);
    }

    #[test]
    fn a_sort_fingerprint_is_the_fnv_hash_of_its_spelling() {
        let spelled = |text: &str| {
            text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            })
        };
        let sort = |pairs: &[(&str, &str)]| {
            parse(
                &["Observation".to_string()],
                &p(pairs),
                &ParseOptions::default(),
            )
            .unwrap()
            .sort
        };
        assert_eq!(
            sort_fingerprint(&sort(&[("_sort", "-date,code")])),
            spelled("-date,code")
        );
        assert_eq!(sort_fingerprint(&sort(&[("_sort", "_id")])), spelled("_id"));
        assert_eq!(sort_fingerprint(&[]), spelled(""));
    }

    #[test]
    fn page_tokens_must_match_the_sort_they_were_issued_for() {
        let sort_of = |sort: &str| {
            let pairs = if sort.is_empty() {
                Vec::new()
            } else {
                p(&[("_sort", sort)])
            };
            parse(&obs(), &pairs, &ParseOptions::default())
                .unwrap()
                .sort
        };
        let token = |sort: &str, keys: Vec<SortValue>| Cursor {
            keys,
            rid: 7,
            backward: false,
            sort: sort_fingerprint(&sort_of(sort)),
        };
        let search = |sort: &str, cursor: &Cursor| {
            let mut pairs = vec![("_page_token", cursor.encode())];
            if !sort.is_empty() {
                pairs.push(("_sort", sort.to_string()));
            }
            let pairs: Vec<(String, String)> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            parse(&obs(), &pairs, &ParseOptions::default())
        };
        let by_date_desc = token("-date", vec![SortValue::Int(1)]);
        assert!(search("-date", &by_date_desc).is_ok());
        assert!(search("", &token("", Vec::new())).is_ok());
        assert!(search("", &Cursor::last(&[])).is_ok());
        assert!(search("-date", &Cursor::last(&sort_of("-date"))).is_ok());
        let mismatched = [
            ("", &by_date_desc),
            ("-date,_lastUpdated", &by_date_desc),
            // One key each, as the token: only the sort's fingerprint tells them apart.
            ("date", &by_date_desc),
            ("code", &by_date_desc),
            ("-code", &by_date_desc),
            ("_id", &by_date_desc),
            ("-_lastUpdated", &by_date_desc),
            // The right sort named, the wrong number of keys.
            ("-date", &token("-date", Vec::new())),
        ];
        // The right sort and count, a key of the wrong kind (text where a date goes).
        let text_for_date = token("-date", vec![SortValue::Text("abc".into())]);
        let mismatched: Vec<(&str, &Cursor)> = mismatched
            .into_iter()
            .chain([("-date", &text_for_date)])
            .collect();
        for (sort, cursor) in mismatched {
            match search(sort, cursor) {
                Err(SearchError::Invalid(message)) => assert!(
                    message.contains("the page token does not belong to this search"),
                    "{message}"
                ),
                other => panic!("_sort={sort}: {other:?}"),
            }
        }
        let last_by_date = Cursor::last(&sort_of("-date"));
        assert!(search("date", &last_by_date).is_err());
    }
}
