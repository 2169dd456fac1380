//! FHIR search executed in the database: search plans ([`renkei_search::plan::SearchPlan`])
//! translated to SQL over the index tables that `index.rs` writes with each version. The
//! database returns exactly the page; nothing is filtered in memory.

use crate::index::COMPOSITE_SLOTS;
use crate::sql::{Bind, Sql};
use crate::{Backend, StoreError, Tx, Visibility};
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use renkei_search::plan::{
    approximate_date, expand_value_set, sort_fingerprint, CompositePart, Cursor, DateValue, Filter,
    Include, NumberValue, Prefix, RefMatch, SearchPlan, Sort, SortBy, SortKeyKind, SortValue,
    StringMode, Table, TokenMatch, UriMode,
};
use std::borrow::Cow;
use std::collections::HashMap;

/// The highest code point: `prefix || MAX` bounds a starts-with range from above.
const TEXT_MAX: char = '\u{10FFFF}';
/// Sort keys beyond this many are refused by the HTTP layer.
pub const MAX_SORT_KEYS: usize = 4;
/// Included resources per `_include`/`_revinclude` step.
pub const MAX_INCLUDED: usize = 1000;
/// ValueSets imported (`compose.include.valueSet`) while expanding one `:in` value.
const MAX_VALUE_SETS: usize = 20;

/// A current resource found by a search.
#[derive(Debug, Clone, QueryableByName)]
pub struct SearchRow {
    #[diesel(sql_type = BigInt)]
    pub rid: i64,
    #[diesel(sql_type = Text)]
    pub res_type: String,
    #[diesel(sql_type = Text)]
    pub res_id: String,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
    #[diesel(sql_type = BigInt)]
    pub last_updated: i64,
    /// The facility holding the resource.
    #[diesel(sql_type = Nullable<Text>)]
    pub custodian: Option<String>,
    /// The patient the resource is about (consent is decided per patient).
    #[diesel(sql_type = Nullable<Text>)]
    pub patient_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub body: Option<String>,
    /// See [`SearchRow::decided_by`]: `''` stands for the implicit policy.
    #[diesel(sql_type = Nullable<Text>)]
    decider: Option<String>,
}

impl SearchRow {
    /// For a facility's matching row held by another facility, what decided its consent,
    /// found by the page's own query ([`Visibility::push_decider`]), as
    /// [`crate::Decision::consent_ref`] would say it: `Some(Some(consent))`, or `Some(None)`
    /// for the implicit policy. `None` when the page did not decide it (an included row,
    /// break-glass, or rules about the focus patient that depend on the resource); ask
    /// [`Tx::deciding_consent`] then.
    pub fn decided_by(&self) -> Option<Option<&str>> {
        self.decider
            .as_deref()
            .map(|consent| Some(consent).filter(|c| !c.is_empty()))
    }
}

/// One page of matches plus what `_include`/`_revinclude` added.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub matches: Vec<SearchRow>,
    pub included: Vec<SearchRow>,
    /// Cursor of the next page, if there is one.
    pub next: Option<Cursor>,
    /// Cursor of the previous page, if there is one.
    pub previous: Option<Cursor>,
    /// Number of matches, when asked for or known for free.
    pub total: Option<i64>,
    /// Why some resources the includes reach are not on the page, if any are not.
    pub includes_cut: Option<IncludesCut>,
}

/// Why a page's includes stop short (each one said in an outcome entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludesCut {
    /// `:iterate` stopped at [`MAX_INCLUDE_ROUNDS`] with more left to include.
    Rounds,
    /// A step found more than [`MAX_INCLUDED`] resources; the first ones by storage order
    /// are included.
    StepRows,
}

/// Rounds of `_include`/`_revinclude` a page runs: the first, then `:iterate` ones. A cap,
/// because a graph of references (Observation ↔ Observation via `has-member`) may not end;
/// a page it cuts short says so in an outcome entry (`SearchPage::includes_cut`).
pub const MAX_INCLUDE_ROUNDS: usize = 4;

#[derive(QueryableByName)]
struct PatientId {
    #[diesel(sql_type = Text)]
    res_id: String,
}

const ROW_COLUMNS: &str =
    "r.rid, r.res_type, r.res_id, r.version, r.last_updated, r.custodian, r.patient_id, r.body";
/// The decider of a row that is not a page's match (an include, history).
const NO_DECIDER: &str = ", CAST(NULL AS TEXT) AS decider";

/// The text of a row's sort keys (`k{i}`, NULL past the plan's keys).
#[derive(QueryableByName)]
struct SortKeyTexts {
    #[diesel(sql_type = BigInt)]
    rid: i64,
    #[diesel(sql_type = Nullable<Text>)]
    k0: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    k1: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    k2: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    k3: Option<String>,
}

impl SortKeyTexts {
    /// The values of `sorts` these texts hold.
    fn values(self, sorts: &[&Sort]) -> Vec<SortValue> {
        let texts = [self.k0, self.k1, self.k2, self.k3];
        sorts
            .iter()
            .zip(texts)
            .map(|(sort, text)| sort_value(sort, text.unwrap_or_default()))
            .collect()
    }
}

/// A page query's row: the match and, on PostgreSQL, the text of its sort keys, which a link
/// continuing from it takes as its cursor (NULL on SQLite: see [`page_sql`]).
struct PageRow {
    row: SearchRow,
    keys: SortKeyTexts,
}

impl<DB: diesel::backend::Backend> QueryableByName<DB> for PageRow
where
    SearchRow: QueryableByName<DB>,
    SortKeyTexts: QueryableByName<DB>,
{
    fn build<'a>(row: &impl diesel::row::NamedRow<'a, DB>) -> diesel::deserialize::Result<Self> {
        Ok(PageRow {
            row: SearchRow::build(row)?,
            keys: SortKeyTexts::build(row)?,
        })
    }
}

/// Whether the filter names a ValueSet (`:in`, `:not-in`), here or down a chain.
fn has_in(filter: &Filter) -> bool {
    match filter {
        Filter::TokenIn { .. } => true,
        Filter::Chain { targets, .. } => targets.iter().any(|(_, f)| has_in(f)),
        Filter::Has { filter, .. } => has_in(filter),
        _ => false,
    }
}

/// The inner filter of a chain through one Patient (`subject:Patient.identifier=…`).
fn patient_chain(filter: &Filter) -> Option<&Filter> {
    match filter {
        Filter::Chain { targets, .. } => match targets.as_slice() {
            [(target_type, inner)] if target_type == "Patient" => Some(inner),
            _ => None,
        },
        _ => None,
    }
}

/// Whether [`Tx::search`] may need no statement but its page (or count): no ValueSet to
/// expand first, no accurate total, nothing to include. A Patient chain's lookup of its one
/// Patient does not count ([`Tx::outside_snapshot`]), and on PostgreSQL a link's cursor comes
/// with its row. The caller may still ask what decided consent for rows the page did not
/// decide: see [`crate::Store::read_lone`].
pub fn search_may_be_one_statement(plan: &SearchPlan) -> bool {
    let resolves_first = plan.filters.iter().any(has_in);
    !resolves_first
        && (plan.count_only()
            || (plan.total != renkei_search::plan::Total::Accurate
                && plan.includes.is_empty()
                && plan.revincludes.is_empty()))
}

impl Tx<'_> {
    /// The plan with every `:in`/`:not-in` filter replaced by a token filter over the
    /// expansion of the stored ValueSet it names (by `ValueSet/id` or canonical URL). An
    /// unknown ValueSet is an error (400), an unknown imported one contributes nothing; see
    /// [`expand_value_set`] for what is expanded.
    pub(crate) fn resolve_value_sets<'p>(
        &mut self,
        plan: &'p SearchPlan,
        visibility: &Visibility,
    ) -> Result<Cow<'p, SearchPlan>, StoreError> {
        if !plan.filters.iter().any(has_in) {
            return Ok(Cow::Borrowed(plan));
        }
        let mut resolved = plan.clone();
        for filter in &mut resolved.filters {
            self.resolve_filter(filter, visibility)?;
        }
        Ok(Cow::Owned(resolved))
    }

    /// The plan as it runs: ValueSets expanded, single-patient chains resolved.
    fn resolved_plan<'p>(
        &mut self,
        plan: &'p SearchPlan,
        visibility: &Visibility,
    ) -> Result<Cow<'p, SearchPlan>, StoreError> {
        let plan = self.resolve_value_sets(plan, visibility)?;
        self.outside_snapshot(|tx| tx.resolve_patient_chains(plan, visibility))
    }

    /// The plan with each chain that leads to exactly one Patient the requester may see
    /// (`subject:Patient.identifier=…`, `patient.name=…`) replaced by a reference to that
    /// Patient. Same rows, in the same transaction: the chain matches the references to the
    /// visible Patients its inner filter finds, here exactly one. The search then names its
    /// patient, so the consent decision for that patient's rows is made once per query
    /// instead of once per row (see [`focus_patient`]). One indexed lookup of at most two
    /// Patients per such chain. Outside a transaction ([`crate::Store::read_lone`]) the lookup
    /// and the page see two snapshots, microseconds apart: the page still decides consent on
    /// every row it returns, so at worst it shows a Patient's data as the chain named them
    /// at the lookup.
    fn resolve_patient_chains<'p>(
        &mut self,
        plan: Cow<'p, SearchPlan>,
        visibility: &Visibility,
    ) -> Result<Cow<'p, SearchPlan>, StoreError> {
        if !plan.filters.iter().any(|f| patient_chain(f).is_some()) {
            return Ok(plan);
        }
        let mut resolved = plan.into_owned();
        for filter in &mut resolved.filters {
            let Some(inner) = patient_chain(filter) else {
                continue;
            };
            // The aliases of the chain's own subquery: the consent predicate names its rules
            // `c`, so the Patient row must not be `c`.
            let mut aliases = Aliases::new(visibility, self.backend());
            let p = aliases.next("c");
            let mut sql = Sql::new(&format!(
                "SELECT {p}.res_id AS res_id FROM resources {p} WHERE {p}.res_type = "
            ));
            sql.bind(Bind::Text("Patient".into()))
                .push(&format!(" AND {p}.deleted = "))
                .bind(Bind::Bool(false));
            visibility.push_predicate_for(&mut sql, &p);
            sql.push(" AND ");
            push_filter(&mut sql, inner, &p, &["Patient".to_string()], &mut aliases);
            sql.push(&format!(" ORDER BY {p}.rid")).push_limit(2);
            let found = self.load::<PatientId>(&sql)?;
            if let ([patient], Filter::Chain { param, .. }) = (found.as_slice(), &*filter) {
                *filter = Filter::Reference {
                    param: param.clone(),
                    values: vec![RefMatch::Id {
                        types: vec!["Patient".into()],
                        id: patient.res_id.clone(),
                    }],
                };
            }
        }
        Ok(Cow::Owned(resolved))
    }

    fn resolve_filter(
        &mut self,
        filter: &mut Filter,
        visibility: &Visibility,
    ) -> Result<(), StoreError> {
        match filter {
            Filter::TokenIn {
                param,
                value_set,
                not,
            } => {
                let values = self.expand(value_set, visibility)?;
                *filter = Filter::Token {
                    param: std::mem::take(param),
                    values,
                    not: *not,
                };
                // The expansion's codes meet the index as a search's own values do.
                filter.cap_keys();
            }
            Filter::Chain { targets, .. } => {
                for (_, inner) in targets {
                    self.resolve_filter(inner, visibility)?;
                }
            }
            Filter::Has { filter, .. } => self.resolve_filter(filter, visibility)?,
            _ => {}
        }
        Ok(())
    }

    /// The codes of a stored ValueSet and of the ValueSets it imports.
    fn expand(
        &mut self,
        value_set: &str,
        visibility: &Visibility,
    ) -> Result<Vec<TokenMatch>, StoreError> {
        let mut pending = vec![value_set.to_string()];
        let mut done: Vec<String> = Vec::new();
        let mut out: Vec<TokenMatch> = Vec::new();
        // Drug lists run to tens of thousands of codes: no quadratic duplicate check.
        let mut seen: std::collections::HashSet<TokenMatch> = std::collections::HashSet::new();
        while let Some(name) = pending.pop() {
            if done.contains(&name) || done.len() >= MAX_VALUE_SETS {
                continue;
            }
            done.push(name.clone());
            let mut sql = Sql::new(&format!(
                "SELECT {ROW_COLUMNS}{NO_DECIDER} FROM resources r WHERE r.res_type = "
            ));
            sql.bind(Bind::Text("ValueSet".into()))
                .push(" AND r.deleted = ")
                .bind(Bind::Bool(false))
                .push(" AND ");
            let local = name
                .strip_prefix("ValueSet/")
                .filter(|id| !id.contains('/'));
            match local {
                Some(id) => {
                    sql.push("r.res_id = ").bind(Bind::Text(id.to_string()));
                }
                None => {
                    // A canonical, optionally `|version` (references.html#canonical).
                    let (url, version) = match name.split_once('|') {
                        Some((url, version)) => (url, Some(version)),
                        None => (name.as_str(), None),
                    };
                    sql.push(
                        "r.rid IN (SELECT u.rid FROM idx_uri u WHERE u.res_type = 'ValueSet' \
                         AND u.param = 'url' AND u.value = ",
                    )
                    .bind(Bind::Text(url.to_string()))
                    .push(")");
                    if let Some(version) = version {
                        sql.push(
                            " AND r.rid IN (SELECT t.rid FROM idx_token t WHERE \
                             t.res_type = 'ValueSet' AND t.param = 'version' AND t.code = ",
                        )
                        .bind(Bind::Text(version.to_string()))
                        .push(")");
                    }
                }
            }
            visibility.push_predicate_for(&mut sql, "r");
            // Without a version, the latest: the version of the canonical written last.
            // Version strings have no order FHIR defines (`1.10`, `2024-03`, `draft`).
            sql.push(" ORDER BY r.last_updated DESC, r.rid DESC LIMIT 1");
            let rows = self.load::<SearchRow>(&sql)?;
            // The named ValueSet must exist; an import that does not contributes nothing.
            if rows.is_empty() && name == value_set {
                return Err(StoreError::UnknownValueSet(name));
            }
            for row in rows {
                let Some(body) = row.body.as_deref() else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
                    continue;
                };
                let expansion = expand_value_set(&value);
                for m in expansion.matches {
                    if seen.insert(m.clone()) {
                        out.push(m);
                    }
                }
                pending.extend(expansion.imports);
            }
        }
        Ok(out)
    }

    /// Multi-row inserts, chunked to stay under every backend's bind limit.
    /// The insert verb for index rows. On SQLite a multi-row `INSERT` that could abort midway
    /// (the default `ABORT` conflict policy) copies every page it touches into a statement
    /// journal first, 4.5 % of a bulk load's CPU inside the writer lock. Index rows never
    /// conflict, and any failure rolls back the whole transaction, so `OR FAIL` (no
    /// statement journal) loses nothing.
    /// Current, non-deleted resources after `after_rid`, in rid order (reindexing).
    pub fn scan_current(
        &mut self,
        after_rid: i64,
        limit: usize,
    ) -> Result<Vec<SearchRow>, StoreError> {
        self.scan(false, after_rid, limit)
    }

    /// Deleted resources (their tombstones) after `after_rid`, in rid order (reindexing).
    pub fn scan_deleted(
        &mut self,
        after_rid: i64,
        limit: usize,
    ) -> Result<Vec<SearchRow>, StoreError> {
        self.scan(true, after_rid, limit)
    }

    fn scan(
        &mut self,
        deleted: bool,
        after_rid: i64,
        limit: usize,
    ) -> Result<Vec<SearchRow>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {ROW_COLUMNS}{NO_DECIDER} FROM resources r WHERE r.deleted = "
        ));
        sql.bind(Bind::Bool(deleted))
            .push(" AND r.rid > ")
            .bind(Bind::Int(after_rid))
            .push(" ORDER BY r.rid")
            .push_limit(limit);
        self.load::<SearchRow>(&sql)
    }

    /// The number of current resources matching the plan's filters.
    pub fn search_count(
        &mut self,
        plan: &SearchPlan,
        visibility: &Visibility,
    ) -> Result<i64, StoreError> {
        let plan = self.resolved_plan(plan, visibility)?;
        self.count_resolved(&plan, visibility)
    }

    /// The count of an already resolved plan (see `resolved_plan`; not resolved again).
    fn count_resolved(
        &mut self,
        plan: &SearchPlan,
        visibility: &Visibility,
    ) -> Result<i64, StoreError> {
        self.load_count(&count_sql(plan, visibility, self.backend()))
    }

    /// The statement a search runs first: the count for `_summary=count`, else the page
    /// (what `renkei explain` asks the database to plan).
    pub(crate) fn search_statement(
        &mut self,
        plan: &SearchPlan,
        visibility: &Visibility,
    ) -> Result<Sql, StoreError> {
        let plan = self.resolved_plan(plan, visibility)?;
        Ok(if plan.count_only() {
            count_sql(&plan, visibility, self.backend())
        } else {
            page_sql(&plan, visibility, self.backend())
        })
    }

    /// One page of matches (keyset paging on the plan's sort keys and rid), the total when
    /// asked for, and the included resources.
    pub fn search(
        &mut self,
        plan: &SearchPlan,
        visibility: &Visibility,
    ) -> Result<SearchPage, StoreError> {
        let resolved = self.resolved_plan(plan, visibility)?;
        let plan = &*resolved;
        if plan.count_only() {
            return Ok(SearchPage {
                total: Some(self.count_resolved(plan, visibility)?),
                ..SearchPage::default()
            });
        }
        let sql = page_sql(plan, visibility, self.backend());
        let mut rows = Vec::new();
        let mut page_keys = HashMap::new();
        for PageRow { row, keys } in self.load::<PageRow>(&sql)? {
            page_keys.insert(row.rid, keys);
            rows.push(row);
        }
        let backward = plan.cursor.as_ref().is_some_and(|c| c.backward);
        let more = rows.len() > plan.count;
        rows.truncate(plan.count);
        if backward {
            rows.reverse();
        }
        let at_end = plan.cursor.as_ref().is_some_and(Cursor::is_last);
        let (next_row, previous_row) = if backward {
            (
                rows.last().filter(|_| !at_end),
                rows.first().filter(|_| more),
            )
        } else {
            (
                rows.last().filter(|_| more),
                rows.first().filter(|_| plan.cursor.is_some()),
            )
        };
        let linked: Vec<i64> = next_row
            .iter()
            .chain(&previous_row)
            .map(|r| r.rid)
            .collect();
        let keys = self.sort_keys(plan, &linked, page_keys)?;
        let sort = sort_fingerprint(&plan.sort);
        // A one-row page continues from the same row both ways.
        let cursor_of = |row: &SearchRow, backward: bool| -> Result<Cursor, StoreError> {
            Ok(Cursor {
                keys: keys
                    .get(&row.rid)
                    .cloned()
                    .ok_or(StoreError::Query(diesel::result::Error::NotFound))?,
                rid: row.rid,
                backward,
                sort,
            })
        };
        let next = next_row.map(|row| cursor_of(row, false)).transpose()?;
        let previous = previous_row.map(|row| cursor_of(row, true)).transpose()?;
        let total = if plan.total == renkei_search::plan::Total::Accurate {
            Some(self.count_resolved(plan, visibility)?)
        } else if plan.cursor.is_none() && !more {
            i64::try_from(rows.len()).ok()
        } else {
            None
        };
        let (included, includes_cut) = self.included(plan, &rows, visibility)?;
        Ok(SearchPage {
            matches: rows,
            included,
            next,
            previous,
            total,
            includes_cut,
        })
    }

    /// The values of the plan's sort keys for the rows a page's links continue from, as the
    /// page query sorted by them, by rid. On PostgreSQL the page query selected their text
    /// (`from_page`). On SQLite one statement reads them (the same expressions, in the same
    /// transaction), for both rows of a middle page. None without sort keys (every rid maps
    /// to no keys then).
    fn sort_keys(
        &mut self,
        plan: &SearchPlan,
        rids: &[i64],
        mut from_page: HashMap<i64, SortKeyTexts>,
    ) -> Result<HashMap<i64, Vec<SortValue>>, StoreError> {
        let sorts: Vec<&Sort> = plan.sort.iter().take(MAX_SORT_KEYS).collect();
        if sorts.is_empty() || rids.is_empty() {
            // Ordered by rid alone: the cursor is the rid, no keys to read.
            return Ok(rids.iter().map(|rid| (*rid, Vec::new())).collect());
        }
        if self.backend() == Backend::Postgres {
            return Ok(rids
                .iter()
                .filter_map(|rid| Some((*rid, from_page.remove(rid)?.values(&sorts))))
                .collect());
        }
        let mut sql = Sql::new("SELECT r.rid");
        for i in 0..MAX_SORT_KEYS {
            match sorts.get(i) {
                Some(sort) => {
                    sql.push(", CAST(");
                    push_sort_expr(&mut sql, sort, &plan.types);
                    sql.push(&format!(" AS TEXT) AS k{i}"));
                }
                None => {
                    sql.push(&format!(", CAST(NULL AS TEXT) AS k{i}"));
                }
            }
        }
        sql.push(" FROM resources r WHERE r.rid IN (");
        push_int_list(&mut sql, rids);
        sql.push(")");
        Ok(self
            .load::<SortKeyTexts>(&sql)?
            .into_iter()
            .map(|row| (row.rid, row.values(&sorts)))
            .collect())
    }

    /// The page's includes, and why they stop short if they do (a cap on rounds or rows).
    /// Only rows the requester may see count towards the caps: consent and the types the
    /// token may read (`plan.included_types`) are part of every include query.
    fn included(
        &mut self,
        plan: &SearchPlan,
        matches: &[SearchRow],
        visibility: &Visibility,
    ) -> Result<(Vec<SearchRow>, Option<IncludesCut>), StoreError> {
        let mut cut = None;
        let mut seen: std::collections::HashSet<i64> = matches.iter().map(|r| r.rid).collect();
        let mut included: Vec<SearchRow> = Vec::new();
        let mut frontier: Vec<(i64, String, String)> = matches
            .iter()
            .map(|r| (r.rid, r.res_type.clone(), r.res_id.clone()))
            .collect();
        // One round past the cap is run only to learn whether the cap cut anything off: its
        // rows are not returned, and only rows the requester may see count.
        for round in 0..=MAX_INCLUDE_ROUNDS {
            if frontier.is_empty() {
                break;
            }
            let mut found = Vec::new();
            for include in plan.includes.iter().filter(|i| round == 0 || i.iterate) {
                let sql = Self::include_step(include, &frontier);
                found.extend(self.capped_step(sql, plan, visibility, &mut cut)?);
            }
            for include in plan.revincludes.iter().filter(|i| round == 0 || i.iterate) {
                let sql = Self::revinclude_step(include, &frontier);
                found.extend(self.capped_step(sql, plan, visibility, &mut cut)?);
            }
            if round == MAX_INCLUDE_ROUNDS {
                if found.iter().any(|row| !seen.contains(&row.rid)) {
                    cut = Some(IncludesCut::Rounds);
                }
                return Ok((included, cut));
            }
            frontier.clear();
            for row in found {
                if seen.insert(row.rid) {
                    frontier.push((row.rid, row.res_type.clone(), row.res_id.clone()));
                    included.push(row);
                }
            }
        }
        Ok((included, cut))
    }

    /// Runs one include step's query (`None`: nothing to include) under the requester's
    /// consent and readable types, keeping at most [`MAX_INCLUDED`] rows; a step that found
    /// more marks the page's includes as cut.
    fn capped_step(
        &mut self,
        sql: Option<Sql>,
        plan: &SearchPlan,
        visibility: &Visibility,
        cut: &mut Option<IncludesCut>,
    ) -> Result<Vec<SearchRow>, StoreError> {
        let Some(mut sql) = sql else {
            return Ok(Vec::new());
        };
        visibility.push_predicate_for(&mut sql, "r");
        if let Some(types) = &plan.included_types {
            if types.is_empty() {
                return Ok(Vec::new());
            }
            sql.push(" AND r.res_type IN (");
            push_text_list(&mut sql, types);
            sql.push(")");
        }
        // One row past the cap tells whether the cap cut anything off.
        sql.push(" ORDER BY r.rid").push_limit(MAX_INCLUDED + 1);
        let mut rows = self.load::<SearchRow>(&sql)?;
        if rows.len() > MAX_INCLUDED {
            rows.truncate(MAX_INCLUDED);
            cut.get_or_insert(IncludesCut::StepRows);
        }
        Ok(rows)
    }

    /// The query of one `_include` step from the rows of `from`, without the requester's
    /// predicates (see [`Tx::capped_step`]).
    fn include_step(include: &Include, from: &[(i64, String, String)]) -> Option<Sql> {
        let rids: Vec<i64> = from
            .iter()
            .filter(|(_, t, _)| include.source_type.is_empty() || *t == include.source_type)
            .map(|(rid, _, _)| *rid)
            .collect();
        if rids.is_empty() {
            return None;
        }
        let mut sql = Sql::new(&format!(
            "SELECT {ROW_COLUMNS}{NO_DECIDER} FROM resources r WHERE r.deleted = "
        ));
        sql.bind(Bind::Bool(false)).push(
            " AND r.rid IN (SELECT t.rid FROM idx_reference x JOIN resources t \
             ON t.res_type = x.target_type AND t.res_id = x.target_id WHERE x.rid IN (",
        );
        push_int_list(&mut sql, &rids);
        sql.push(")");
        if !include.source_type.is_empty() {
            sql.push(" AND x.res_type = ")
                .bind(Bind::Text(include.source_type.clone()));
        }
        push_include_param(&mut sql, include);
        if let Some(target) = &include.target_type {
            sql.push(" AND x.target_type = ")
                .bind(Bind::Text(target.clone()));
        }
        sql.push(")");
        Some(sql)
    }

    /// The query of one `_revinclude` step towards the rows of `from`, without the
    /// requester's predicates (see [`Tx::capped_step`]).
    fn revinclude_step(include: &Include, from: &[(i64, String, String)]) -> Option<Sql> {
        let mut sql = Sql::new(&format!(
            "SELECT {ROW_COLUMNS}{NO_DECIDER} FROM resources r WHERE r.deleted = "
        ));
        sql.bind(Bind::Bool(false))
            .push(" AND r.rid IN (SELECT x.rid FROM idx_reference x WHERE (");
        let mut types: Vec<&str> = from.iter().map(|(_, t, _)| t.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        let mut any = false;
        for target_type in types {
            if include
                .target_type
                .as_deref()
                .is_some_and(|t| t != target_type)
            {
                continue;
            }
            if any {
                sql.push(" OR ");
            }
            any = true;
            sql.push("(x.target_type = ")
                .bind(Bind::Text(target_type.to_string()))
                .push(" AND x.target_id IN (");
            let ids: Vec<&str> = from
                .iter()
                .filter(|(_, t, _)| t == target_type)
                .map(|(_, _, id)| id.as_str())
                .collect();
            push_text_list(&mut sql, &ids);
            sql.push("))");
        }
        if !any {
            return None;
        }
        sql.push(")");
        if !include.source_type.is_empty() {
            sql.push(" AND x.res_type = ")
                .bind(Bind::Text(include.source_type.clone()));
        }
        push_include_param(&mut sql, include);
        sql.push(")");
        Some(sql)
    }
}

/// The parameter an include follows; every reference parameter for `*`, but not the rows kept
/// for consent alone ([`crate::BUNDLE_ENTRY_REFERENCE`], [`crate::UNSEARCHABLE_REFERENCE`],
/// [`crate::FOLLOWED_RECORD`], [`crate::FOLLOWED_REFERENCE`]).
fn push_include_param(sql: &mut Sql, include: &Include) {
    match &include.param {
        Some(param) => {
            sql.push(" AND x.param = ").bind(Bind::Text(param.clone()));
        }
        None => {
            sql.push(" AND x.param NOT IN (");
            for (i, consent_only) in [
                crate::BUNDLE_ENTRY_REFERENCE,
                crate::UNSEARCHABLE_REFERENCE,
                crate::FOLLOWED_RECORD,
                crate::FOLLOWED_REFERENCE,
            ]
            .into_iter()
            .enumerate()
            {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Bind::Text(consent_only.into()));
            }
            sql.push(")");
        }
    }
}

fn push_int_list(sql: &mut Sql, values: &[i64]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(Bind::Int(*v));
    }
}

fn push_text_list<S: AsRef<str>>(sql: &mut Sql, values: &[S]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(Bind::Text(v.as_ref().to_string()));
    }
}

/// Unique table aliases for nested subqueries, and the requester's visibility, which every
/// `resources` row a query touches (matches, chain targets, `_has` sources) must pass.
struct Aliases<'v> {
    n: usize,
    visibility: &'v Visibility,
    /// Large value lists are spelled per backend (see [`push_token_set`]).
    backend: Backend,
    /// The next index subquery checks the row at hand (`EXISTS … WHERE x.rid = r.rid`)
    /// instead of listing candidate rows (`r.rid IN (SELECT x.rid …)`). Taken by that
    /// subquery, so filters nested inside it list their candidates again.
    correlate: bool,
}

impl<'v> Aliases<'v> {
    fn new(visibility: &'v Visibility, backend: Backend) -> Self {
        Aliases {
            n: 0,
            visibility,
            backend,
            correlate: false,
        }
    }

    fn next(&mut self, stem: &str) -> String {
        self.n += 1;
        format!("{stem}{}", self.n)
    }
}

/// `r.res_type IN (…) AND r.deleted = false AND <filters>` over alias `r`.
fn push_where(sql: &mut Sql, plan: &SearchPlan, aliases: &mut Aliases<'_>) {
    if drives_from_index(plan) {
        // Let the index subqueries drive: an indexable `res_type = ?` tempts planners (SQLite
        // above all) into walking every resource of the type and probing each one. `|| ''`
        // keeps the condition but hides it from index selection, on both backends.
        push_type_column(sql, "(r.res_type || '')", &plan.types);
    } else {
        push_type_condition(sql, "r", &plan.types);
    }
    sql.push(" AND r.deleted = ").bind(Bind::Bool(false));
    // The most selective filter lists the candidate rows; the others check each candidate
    // through the `(rid, …)` indexes. Listing every filter's rows made SQLite build the whole
    // posting list of a common code (`code=HbA1c`: every patient's values) for each search.
    let mut filters: Vec<&Filter> = plan.filters.iter().collect();
    filters.sort_by_key(|f| selectivity_rank(f));
    if let [first, others @ ..] = filters.as_slice() {
        let driving = driving_filter(first, others, &plan.types, aliases);
        sql.push(" AND ").push_sql(&driving.sql);
        for filter in others
            .iter()
            .filter(|f| !(driving.nested && lists_through_index(f)))
        {
            sql.push(" AND ");
            aliases.correlate = lists_through_index(filter);
            push_filter(sql, filter, "r", &plan.types, aliases);
            aliases.correlate = false;
        }
    }
    // Last: the consent predicate is the costliest check per row, so it runs only on rows
    // every filter kept (before the filters, a common family name meant 300 consent
    // evaluations for one matching birth date).
    aliases
        .visibility
        .push_predicate_focused(sql, "r", focus_patient(plan));
}

/// The one patient a search is about, if its filters name one: a Patient compartment
/// (`$everything` included) or a reference filter with a single Patient (or untyped) id.
fn focus_patient(plan: &SearchPlan) -> Option<&str> {
    plan.filters.iter().find_map(|filter| match filter {
        Filter::Compartment {
            target_type,
            target_id,
            ..
        } if target_type == "Patient" => Some(target_id.as_str()),
        Filter::Reference { values, .. } => match values.as_slice() {
            [RefMatch::Id { types, id }]
                if types.is_empty() || types.iter().any(|t| t == "Patient") =>
            {
                Some(id.as_str())
            }
            _ => None,
        },
        _ => None,
    })
}

/// The SQL of the driving filter, and whether the other index filters went inside it.
struct Driving {
    sql: Sql,
    nested: bool,
}

/// The first (most selective) filter lists the candidate rows. When it is one index subquery
/// (`r.rid IN (SELECT x.rid …)`), the other index filters check each candidate inside it, on
/// the candidate's rid, so only rows that pass them all reach `resources`: a table lookup per
/// candidate (a random page of a large table) was most of a search at 1M resources.
fn driving_filter(
    first: &Filter,
    others: &[&Filter],
    types: &[String],
    aliases: &mut Aliases<'_>,
) -> Driving {
    let mut sql = Sql::new("");
    let candidate = format!("x{}", aliases.n + 1);
    push_filter(&mut sql, first, "r", types, aliases);
    let checks: Vec<&Filter> = others
        .iter()
        .copied()
        .filter(|f| lists_through_index(f))
        .collect();
    // A compartment that includes its Patient lists candidates from two tables (`UNION ALL`):
    // a check appended to it would land in the second arm, where the candidate has another
    // alias.
    let two_armed = matches!(
        first,
        Filter::Compartment {
            include_self: true,
            ..
        }
    );
    if checks.is_empty()
        || two_armed
        || !is_one_in_subquery(sql.text(), &candidate)
        || !sql.reopen()
    {
        return Driving { sql, nested: false };
    }
    for filter in checks {
        sql.push(" AND ");
        aliases.correlate = true;
        push_filter(&mut sql, filter, &candidate, types, aliases);
        aliases.correlate = false;
    }
    sql.push(")");
    Driving { sql, nested: true }
}

/// Whether `text` is exactly `r.rid IN (SELECT {alias}.rid FROM … )`: the parenthesis opened
/// after `IN` closes at the very end (values are bound, so no literal holds a parenthesis).
fn is_one_in_subquery(text: &str, alias: &str) -> bool {
    let head = format!("r.rid IN (SELECT {alias}.rid FROM ");
    if !text.starts_with(&head) {
        return false;
    }
    let mut depth = 0usize;
    for (i, ch) in text.char_indices().skip("r.rid IN ".len()) {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1 == text.len();
                }
            }
            _ => {}
        }
    }
    false
}

/// Expected selectivity of a filter, most selective first (ties keep the query's order).
fn selectivity_rank(filter: &Filter) -> u8 {
    match filter {
        Filter::Id { not: false, .. } => 0,
        Filter::Reference { .. } | Filter::Compartment { .. } => 1,
        Filter::Token { param, not, .. } if !*not && param.ends_with("identifier") => 1,
        Filter::Date { values, .. } if is_within_a_day(values) => 2,
        Filter::String { .. } => 3,
        Filter::Chain { .. } | Filter::Has { .. } => 4,
        Filter::Token { not: false, .. }
        | Filter::TokenText { .. }
        | Filter::TokenIn { .. }
        | Filter::Composite { .. }
        | Filter::Uri { .. } => 5,
        Filter::Date { .. }
        | Filter::Quantity { .. }
        | Filter::Number { .. }
        | Filter::LastUpdated(_) => 6,
        Filter::Token { not: true, .. }
        | Filter::Id { not: true, .. }
        | Filter::Missing { .. }
        | Filter::CareDate { .. }
        | Filter::HeldBy(_) => 7,
    }
}

/// Whether every value of a date filter asks for a period of a day or less (`birthdate=
/// 1947-11-21`): its index range holds a day's rows, fewer than a common family name's (at
/// 10,000 patients, `family=山崎` listed 294 candidates for one matching birth date).
fn is_within_a_day(values: &[DateValue]) -> bool {
    const DAY_MS: i64 = 86_400_000;
    !values.is_empty()
        && values
            .iter()
            .all(|v| v.prefix == Prefix::Eq && v.high - v.low < DAY_MS)
}

/// Whether the filter's SQL is one index-table subquery (`open_index_subquery`).
fn lists_through_index(filter: &Filter) -> bool {
    matches!(
        filter,
        Filter::Token { .. }
            | Filter::TokenText { .. }
            | Filter::String { .. }
            | Filter::Date { .. }
            | Filter::Reference { .. }
            | Filter::Quantity { .. }
            | Filter::Number { .. }
            | Filter::Uri { .. }
            | Filter::Composite { .. }
    )
}

/// Whether some positive parameter filter selects rows through an index table, so the query
/// should start from it rather than from all resources of the type. `_id` and
/// `_lastUpdated` are served by indexes on `resources` that include the type.
fn drives_from_index(plan: &SearchPlan) -> bool {
    let by_resources_index = plan
        .filters
        .iter()
        .any(|f| matches!(f, Filter::Id { not: false, .. } | Filter::LastUpdated(_)));
    !by_resources_index
        && plan.filters.iter().any(|f| match f {
            Filter::Token { not, .. } => !*not,
            Filter::Missing { .. }
            | Filter::Id { .. }
            | Filter::LastUpdated(_)
            | Filter::CareDate { .. }
            | Filter::HeldBy(_) => false,
            _ => true,
        })
}

fn push_type_condition(sql: &mut Sql, alias: &str, types: &[String]) {
    push_type_column(sql, &format!("{alias}.res_type"), types);
}

/// No types listed: every type.
fn push_type_column(sql: &mut Sql, column: &str, types: &[String]) {
    if types.is_empty() {
        sql.push("1 = 1");
    } else {
        push_in(sql, column, types);
    }
}

/// `{column} = ?`, or `{column} IN (?, …)` for several values; for none, a condition no row
/// meets.
pub(crate) fn push_in(sql: &mut Sql, column: &str, values: &[String]) {
    match values {
        [] => {
            sql.push("1 = 0");
        }
        [value] => {
            sql.push(&format!("{column} = "))
                .bind(Bind::Text(value.clone()));
        }
        _ => {
            sql.push(&format!("{column} IN ("));
            push_text_list(sql, values);
            sql.push(")");
        }
    }
}

/// The sort expression of a key over alias `r`, never NULL (missing values sort last).
fn push_sort_expr(sql: &mut Sql, sort: &Sort, types: &[String]) {
    match &sort.by {
        SortBy::LastUpdated => {
            sql.push("r.last_updated");
        }
        SortBy::Id => {
            sql.push("r.res_id");
        }
        SortBy::Param { table, param } => {
            let (column, int, float) = match (table, sort.desc) {
                (Table::Date, false) => ("low", true, false),
                (Table::Date, true) => ("high", true, false),
                (Table::String, _) => ("value_norm", false, false),
                (Table::Token, _) => ("code", false, false),
                (Table::Quantity | Table::Number, _) => ("value", false, true),
                (Table::Uri, _) => ("value", false, false),
                (Table::Reference, _) => ("target_id", false, false),
                (Table::Composite, _) => ("p1_code", false, false),
            };
            let agg = if sort.desc { "MAX" } else { "MIN" };
            sql.push(&format!(
                "COALESCE((SELECT {agg}(s.{column}) FROM {} s WHERE s.rid = r.rid",
                table.name()
            ));
            push_param_condition(sql, "s", types, param);
            sql.push("), ");
            match (int, float, sort.desc) {
                (true, _, false) => sql.bind(Bind::Int(i64::MAX)),
                (true, _, true) => sql.bind(Bind::Int(i64::MIN)),
                (_, true, false) => sql.bind(Bind::Float(f64::MAX)),
                (_, true, true) => sql.bind(Bind::Float(f64::MIN)),
                (_, _, false) => sql.bind(Bind::Text(TEXT_MAX.to_string())),
                (_, _, true) => sql.bind(Bind::Text(String::new())),
            };
            sql.push(")");
        }
    }
}

/// A sort key's value, read back from its text (both databases write a double as text that
/// reads back as the same double; `float_keys_page_exactly` checks it).
fn sort_value(sort: &Sort, text: String) -> SortValue {
    match sort.key_kind() {
        SortKeyKind::Int => SortValue::Int(text.parse().unwrap_or_default()),
        SortKeyKind::Float => SortValue::Float(text.parse().unwrap_or_default()),
        SortKeyKind::Text => SortValue::Text(text),
    }
}

fn bind_sort_value(sql: &mut Sql, value: &SortValue) {
    match value {
        SortValue::Int(i) => sql.bind(Bind::Int(*i)),
        SortValue::Float(f) => sql.bind(Bind::Float(*f)),
        SortValue::Text(t) => sql.bind(Bind::Text(t.clone())),
    };
}

fn count_sql(plan: &SearchPlan, visibility: &Visibility, backend: Backend) -> Sql {
    let mut sql = Sql::new("SELECT COUNT(*) AS n FROM resources r WHERE ");
    push_where(&mut sql, plan, &mut Aliases::new(visibility, backend));
    sql
}

/// The page query: matches with their sort keys, after the cursor, in order, one extra row
/// to learn whether another page follows.
pub fn page_sql(plan: &SearchPlan, visibility: &Visibility, backend: Backend) -> Sql {
    let sorts: Vec<&Sort> = plan.sort.iter().take(MAX_SORT_KEYS).collect();
    // The text of each key for the cursor of a link: on PostgreSQL from the typed value of
    // each returned row; SQLite would compute it for every match, before its sort, and reads
    // it afterwards for the link rows alone (`Tx::sort_keys`).
    let mut sql = Sql::new("SELECT v.*");
    for i in 0..MAX_SORT_KEYS {
        if i < sorts.len() && backend == Backend::Postgres {
            sql.push(&format!(", CAST(v.s{i} AS TEXT) AS k{i}"));
        } else {
            sql.push(&format!(", CAST(NULL AS TEXT) AS k{i}"));
        }
    }
    sql.push(&format!(" FROM (SELECT {ROW_COLUMNS}"));
    for (i, sort) in sorts.iter().enumerate() {
        sql.push(", ");
        push_sort_expr(&mut sql, sort, &plan.types);
        sql.push(&format!(" AS s{i}"));
    }
    // No text of the keys here: SQLite computes select-list columns before it sorts, so a
    // text column here ran every key's subquery twice for every match.
    // PostgreSQL evaluates the column past the sort and limit; SQLite before its sort.
    let decided_per_row = sorts.is_empty() || backend == Backend::Postgres;
    visibility.push_decider(&mut sql, "r", focus_patient(plan), decided_per_row);
    sql.push(" AS decider FROM resources r WHERE ");
    push_where(&mut sql, plan, &mut Aliases::new(visibility, backend));
    sql.push(") v");
    let backward = plan.cursor.as_ref().is_some_and(|c| c.backward);
    // Direction of each key in this query (a backward page walks the order in reverse).
    let descending = |desc: bool| desc != backward;
    if let Some(cursor) = &plan.cursor {
        sql.push(" WHERE ");
        let mut open = 0;
        for (i, (sort, value)) in sorts.iter().zip(&cursor.keys).enumerate() {
            let op = if descending(sort.desc) { "<" } else { ">" };
            sql.push(&format!("(v.s{i} {op} "));
            bind_sort_value(&mut sql, value);
            sql.push(&format!(" OR (v.s{i} = "));
            bind_sort_value(&mut sql, value);
            sql.push(" AND ");
            open += 2;
        }
        let op = if descending(false) { "<" } else { ">" };
        sql.push(&format!("v.rid {op} "))
            .bind(Bind::Int(cursor.rid));
        sql.push(&")".repeat(open));
    }
    sql.push(" ORDER BY ");
    for (i, sort) in sorts.iter().enumerate() {
        let dir = if descending(sort.desc) { "DESC" } else { "ASC" };
        sql.push(&format!("v.s{i} {dir}, "));
    }
    let dir = if descending(false) { "DESC" } else { "ASC" };
    // When an index lists the candidates they are few, and sorting them is cheap. Ordering by
    // the bare primary key instead let PostgreSQL walk `resources` in key order hoping to meet
    // 51 candidates early: `$everything` read 873,468 rows (2.2 s) at 1M resources. SQLite
    // reads an `IN` list in key order anyway and stops at the limit, so it keeps the key.
    let rid_key = if backend == Backend::Postgres && drives_from_index(plan) {
        "v.rid + 0"
    } else {
        "v.rid"
    };
    sql.push(&format!("{rid_key} {dir}"))
        .push_limit(plan.count.saturating_add(1));
    sql
}

/// `{alias}.rid IN (SELECT rid FROM {table} x WHERE x.res_type … AND x.param = ? AND (`
fn open_index_subquery(
    sql: &mut Sql,
    alias: &str,
    negate: bool,
    table: Table,
    types: &[String],
    param: &str,
    aliases: &mut Aliases,
) -> String {
    let x = aliases.next("x");
    let not = if negate { "NOT " } else { "" };
    if std::mem::take(&mut aliases.correlate) {
        // The row's own index rows: `rid` implies the type, and leaving the type out keeps
        // the planner on the `(rid, …)` index instead of a `(res_type, param, …)` one.
        sql.push(&format!(
            "{not}EXISTS (SELECT 1 FROM {} {x} WHERE {x}.rid = {alias}.rid",
            table.name()
        ));
    } else {
        sql.push(&format!(
            "{alias}.rid {not}IN (SELECT {x}.rid FROM {} {x} WHERE ",
            table.name()
        ));
        push_type_condition(sql, &x, types);
    }
    push_param_condition(sql, &x, types, param);
    sql.push(" AND (");
    x
}

/// ` AND {alias}.param = ?`, or, when the parameter extends others for some of `types` (its
/// rows hold only the values beyond theirs, see `SearchParam::extends`), the rows of all.
fn push_param_condition(sql: &mut Sql, alias: &str, types: &[String], param: &str) {
    let registry = renkei_search::registry();
    let extended: Vec<(&String, &[String])> = types
        .iter()
        .filter_map(|t| {
            let bases = &registry.param(t, param)?.extends;
            (!bases.is_empty()).then_some((t, bases.as_slice()))
        })
        .collect();
    let Some((_, bases)) = extended.first() else {
        sql.push(&format!(" AND {alias}.param = "))
            .bind(Bind::Text(param.to_string()));
        return;
    };
    let push_list = |sql: &mut Sql, bases: &[String]| {
        sql.push(&format!("{alias}.param IN ("))
            .bind(Bind::Text(param.to_string()));
        for base in bases {
            sql.push(", ").bind(Bind::Text(base.clone()));
        }
        sql.push(")");
    };
    if extended.len() == types.len() && extended.iter().all(|(_, b)| b == bases) {
        // One list the lookup index can probe.
        sql.push(" AND ");
        push_list(sql, bases);
        return;
    }
    sql.push(&format!(" AND ({alias}.param = "))
        .bind(Bind::Text(param.to_string()));
    for (res_type, bases) in extended {
        sql.push(&format!(" OR ({alias}.res_type = "))
            .bind(Bind::Text(res_type.clone()))
            .push(" AND ");
        push_list(sql, bases);
        sql.push(")");
    }
    sql.push(")");
}

/// `(a) OR (b) OR …`, grouped as a balanced tree: `((a) OR (b)) OR ((c) OR (d))`. Written
/// flat, n alternatives nest n deep (each `OR` holds the ones before it), and SQLite refuses an
/// expression nested deeper than 1000: a parameter with 500 alternatives answered 500.
/// Balanced, they nest ⌈log2 n⌉ deep. Both databases flatten nested `OR`s into one list
/// before planning (SQLite's `sqlite3WhereSplit`, PostgreSQL's `simplify_or_arguments`), so
/// the plan is the flat list's.
fn push_alternatives<T>(sql: &mut Sql, values: &[T], mut each: impl FnMut(&mut Sql, &T)) {
    if values.is_empty() {
        sql.push("1 = 0");
    } else {
        push_or_tree(sql, values, &mut each);
    }
}

fn push_or_tree<T>(sql: &mut Sql, values: &[T], each: &mut impl FnMut(&mut Sql, &T)) {
    let half = values.len().div_ceil(2);
    for (i, part) in values.chunks(half.max(1)).enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        match part {
            [one] => {
                sql.push("(");
                each(sql, one);
                sql.push(")");
            }
            many => {
                sql.push("(");
                push_or_tree(sql, many, each);
                sql.push(")");
            }
        }
    }
}

/// `text` as a LIKE pattern matches it literally (with `ESCAPE '\'`).
pub(crate) fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn push_prefix_range(sql: &mut Sql, column: &str, prefix: &str) {
    sql.push(&format!("{column} >= "))
        .bind(Bind::Text(prefix.to_string()))
        .push(&format!(" AND {column} < "))
        .bind(Bind::Text(format!("{prefix}{TEXT_MAX}")));
}

/// A date comparison between a stored range [low, high] and a search value.
fn push_date_condition(sql: &mut Sql, low: &str, high: &str, value: &DateValue) {
    let (pl, ph) = (value.low, value.high);
    match value.prefix {
        // `low <= ph` follows from `low <= high <= ph`; stated, it bounds the index range on
        // `low` from both sides (without it a birth date scanned every later date).
        Prefix::Eq => {
            sql.push(&format!("{low} >= "))
                .bind(Bind::Int(pl))
                .push(&format!(" AND {low} <= "))
                .bind(Bind::Int(ph))
                .push(&format!(" AND {high} <= "))
                .bind(Bind::Int(ph));
        }
        Prefix::Ne => {
            sql.push(&format!("({low} < "))
                .bind(Bind::Int(pl))
                .push(&format!(" OR {high} > "))
                .bind(Bind::Int(ph))
                .push(")");
        }
        Prefix::Gt => {
            sql.push(&format!("{high} > ")).bind(Bind::Int(ph));
        }
        Prefix::Lt => {
            sql.push(&format!("{low} < ")).bind(Bind::Int(pl));
        }
        // R4: `ge` is `gt` (the target reaches above the search range) or `eq` (the search
        // range contains the target); a period that only reaches into the search range from
        // below is neither. `le` mirrors it.
        Prefix::Ge => {
            sql.push(&format!("({high} > "))
                .bind(Bind::Int(ph))
                .push(&format!(" OR ({low} >= "))
                .bind(Bind::Int(pl))
                .push(&format!(" AND {high} <= "))
                .bind(Bind::Int(ph))
                .push("))");
        }
        Prefix::Le => {
            sql.push(&format!("({low} < "))
                .bind(Bind::Int(pl))
                .push(&format!(" OR ({low} >= "))
                .bind(Bind::Int(pl))
                .push(&format!(" AND {high} <= "))
                .bind(Bind::Int(ph))
                .push("))");
        }
        Prefix::Sa => {
            sql.push(&format!("{low} > ")).bind(Bind::Int(ph));
        }
        Prefix::Eb => {
            sql.push(&format!("{high} < ")).bind(Bind::Int(pl));
        }
        Prefix::Ap => {
            let (al, ah) = approximate_date(value);
            sql.push(&format!("{low} <= "))
                .bind(Bind::Int(ah))
                .push(&format!(" AND {high} >= "))
                .bind(Bind::Int(al));
        }
    }
}

fn push_number_condition(sql: &mut Sql, column: &str, value: &NumberValue) {
    let v = value.value;
    let (op, bound) = match value.prefix {
        Prefix::Eq => {
            sql.push(&format!("{column} >= "))
                .bind(Bind::Float(value.low))
                .push(&format!(" AND {column} < "))
                .bind(Bind::Float(value.high));
            return;
        }
        Prefix::Ne => {
            sql.push(&format!("({column} < "))
                .bind(Bind::Float(value.low))
                .push(&format!(" OR {column} >= "))
                .bind(Bind::Float(value.high))
                .push(")");
            return;
        }
        Prefix::Ap => {
            // 10 % of the value, or its implicit precision where that is wider (`ap1e2` is
            // 50 to 150): half the implicit range, which is centred on the value. The whole
            // range made `ap1e308` reach down to 0 and match every value.
            // Near the largest f64 a bound of the implicit range is infinite: 10 % then.
            let half_range = Some((value.high - value.low) / 2.0).filter(|h| h.is_finite());
            let tolerance = (v * 0.1).abs().max(half_range.unwrap_or(0.0));
            sql.push(&format!("{column} >= "))
                .bind(Bind::Float(v - tolerance))
                .push(&format!(" AND {column} <= "))
                .bind(Bind::Float(v + tolerance));
            return;
        }
        // Starts after / ends before the search value's range, its implicit precision
        // included (`sa0.5` is from 0.55 up, `eb0.5` below 0.45).
        Prefix::Sa => (">=", value.high),
        Prefix::Eb => ("<", value.low),
        Prefix::Gt => (">", v),
        Prefix::Lt => ("<", v),
        Prefix::Ge => (">=", v),
        Prefix::Le => ("<=", v),
    };
    sql.push(&format!("{column} {op} "))
        .bind(Bind::Float(bound));
}

fn push_token_match(sql: &mut Sql, system: &str, code: &str, value: &TokenMatch, backend: Backend) {
    match value {
        TokenMatch::Code(c) => {
            sql.push(&format!("{code} = ")).bind(Bind::Text(c.clone()));
        }
        TokenMatch::SystemCode(s, c) => {
            sql.push(&format!("{code} = "))
                .bind(Bind::Text(c.clone()))
                .push(&format!(" AND {system} = "))
                .bind(Bind::Text(s.clone()));
        }
        TokenMatch::NoSystem(c) => {
            sql.push(&format!("{code} = "))
                .bind(Bind::Text(c.clone()))
                .push(&format!(" AND {system} IS NULL"));
        }
        TokenMatch::System(s) => {
            sql.push(&format!("{system} = "))
                .bind(Bind::Text(s.clone()));
        }
        TokenMatch::SystemExcept(s, excluded) => {
            sql.push(&format!("{system} = "))
                .bind(Bind::Text(s.clone()))
                .push(&format!(" AND {code} NOT IN ("));
            // A ValueSet may exclude many codes of a system: as one bound array beyond a few,
            // like an expansion's codes (`push_token_set`).
            if excluded.len() > SET_MIN {
                let rows: Vec<serde_json::Value> =
                    excluded.iter().map(|c| serde_json::json!([c])).collect();
                push_json_rows(sql, &rows, 1, backend);
            } else {
                push_text_list(sql, excluded);
            }
            sql.push(")");
        }
    }
}

/// Token and reference alternatives beyond this many are matched as sets
/// ([`push_token_set`], [`push_reference_set`]) rather than one condition each. Searches name
/// one code or patient or a few, and keep their plans; ValueSet expansions (`:in`) run to
/// thousands of codes.
const SET_MIN: usize = 32;

/// Token alternatives as sets of bound JSON arrays, one per kind of match:
/// `({x}.code, {x}.system) IN (SELECT j.value ->> 0, j.value ->> 1 FROM json_each(?) j)` and
/// likewise for codes of any system, codes without one and whole systems. One value is bound
/// per set, however many codes it holds, so a ValueSet of any size stays within the bound-value
/// limits and the statement's text (which each connection keeps prepared) is the same for
/// every expansion. Each set is an `IN` list the lookup index is probed with, on both
/// backends, as it is for `x.code = ? OR x.code = ?`.
/// A whole system less some codes (`TokenMatch::SystemExcept`) stays a condition of its own
/// beside the sets: an expansion has one per whole-system include, a handful.
fn push_token_set(sql: &mut Sql, x: &str, values: &[TokenMatch], backend: Backend) {
    let (mut pairs, mut codes, mut no_system, mut systems, mut partial_systems) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for value in values {
        match value {
            TokenMatch::SystemCode(s, c) => pairs.push(serde_json::json!([c, s])),
            TokenMatch::Code(c) => codes.push(serde_json::json!([c])),
            TokenMatch::NoSystem(c) => no_system.push(serde_json::json!([c])),
            TokenMatch::System(s) => systems.push(serde_json::json!([s])),
            TokenMatch::SystemExcept(..) => partial_systems.push(value),
        }
    }
    let code = format!("{x}.code");
    let system = format!("{x}.system");
    let sets = [
        (format!("({code}, {system}) IN ("), pairs, 2),
        (format!("{code} IN ("), codes, 1),
        (format!("{system} IS NULL AND {code} IN ("), no_system, 1),
        (format!("{system} IN ("), systems, 1),
    ];
    let mut alternatives = value_set_conditions(sets, backend);
    alternatives.extend(partial_systems.into_iter().map(|value| {
        let mut condition = Sql::new("");
        push_token_match(&mut condition, &system, &code, value, backend);
        condition
    }));
    push_alternatives(sql, &alternatives, |sql, condition| {
        sql.push_sql(condition);
    });
}

/// Reference alternatives as sets, like [`push_token_set`]: `(target_id, target_type)` pairs
/// (one per type an alternative names), ids of any type and URLs. Listed one condition each,
/// 600 patients made PostgreSQL scan `resources`; as pairs it probes `idx_reference_lookup`
/// once per pair. Not for `:linked`, whose values are subqueries each.
fn push_reference_set(sql: &mut Sql, x: &str, values: &[RefMatch], backend: Backend) {
    let (mut pairs, mut ids, mut urls, mut unversioned) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for value in values {
        match value {
            RefMatch::Id { types, id } if types.is_empty() => ids.push(serde_json::json!([id])),
            RefMatch::Id { types, id } => {
                pairs.extend(types.iter().map(|t| serde_json::json!([id, t])));
            }
            RefMatch::Url(url) => {
                urls.push(serde_json::json!([url]));
                if !url.contains('|') {
                    unversioned.push(serde_json::json!([url]));
                }
            }
            RefMatch::LinkedPatient(_) => {}
        }
    }
    // A stored `url|version` without its version, as in `push_url_match`.
    let column = format!("{x}.url");
    let unversioned_column = match backend {
        Backend::Sqlite => format!(
            "CASE WHEN instr({column}, '|') > 0 THEN substr({column}, 1, instr({column}, '|') - 1) \
             END"
        ),
        Backend::Postgres => {
            format!("CASE WHEN strpos({column}, '|') > 0 THEN split_part({column}, '|', 1) END")
        }
    };
    let sets = [
        (format!("({x}.target_id, {x}.target_type) IN ("), pairs, 2),
        (format!("{x}.target_id IN ("), ids, 1),
        (format!("{column} IN ("), urls, 1),
        (format!("{unversioned_column} IN ("), unversioned, 1),
    ];
    push_value_sets(sql, sets, backend);
}

/// A reference by URL: `{column} = url`, and for a canonical without a version every version
/// of it too (`url|1.0`, `url|2.0`): R4 references.html#canonical, a versionless canonical
/// matches any version; `url|version` matches that version alone. The versioned values are a
/// range on the text after `url|`, in code-point order (on PostgreSQL under the "C" collation,
/// since the column's own collation need not sort by code point).
fn push_url_match(sql: &mut Sql, column: &str, url: &str, backend: Backend) {
    sql.push(&format!("{column} = "))
        .bind(Bind::Text(url.to_string()));
    if !url.contains('|') {
        let ordered = match backend {
            Backend::Sqlite => column.to_string(),
            Backend::Postgres => format!("{column} COLLATE \"C\""),
        };
        sql.push(" OR (");
        push_prefix_range(sql, &ordered, &format!("{url}|"));
        sql.push(")");
    }
}

/// `<head>SELECT … FROM <bound rows>)` for each set that has rows, as alternatives.
fn push_value_sets<const N: usize>(
    sql: &mut Sql,
    sets: [(String, Vec<serde_json::Value>, usize); N],
    backend: Backend,
) {
    let conditions = value_set_conditions(sets, backend);
    push_alternatives(sql, &conditions, |sql, condition| {
        sql.push_sql(condition);
    });
}

/// `<head>SELECT … FROM <bound rows>)` for each set that has rows.
fn value_set_conditions<const N: usize>(
    sets: [(String, Vec<serde_json::Value>, usize); N],
    backend: Backend,
) -> Vec<Sql> {
    sets.into_iter()
        .filter(|(_, rows, _)| !rows.is_empty())
        .map(|(head, rows, columns)| {
            let mut condition = Sql::new(&head);
            push_json_rows(&mut condition, &rows, columns, backend);
            condition.push(")");
            condition
        })
        .collect()
}

/// `SELECT j.value ->> 0, … FROM <rows of the bound JSON array> j`: the first `columns`
/// elements of each row (an array of strings), as text. `->>` means the same on both backends;
/// only the function that lists an array's elements is spelled differently.
fn push_json_rows(sql: &mut Sql, rows: &[serde_json::Value], columns: usize, backend: Backend) {
    let picks: Vec<String> = (0..columns).map(|i| format!("j.value ->> {i}")).collect();
    sql.push(&format!("SELECT {} FROM ", picks.join(", ")));
    let array = serde_json::Value::Array(rows.to_vec()).to_string();
    match backend {
        Backend::Sqlite => {
            sql.push("json_each(").bind(Bind::Text(array)).push(") j");
        }
        Backend::Postgres => {
            sql.push("jsonb_array_elements(CAST(")
                .bind(Bind::Text(array))
                .push(" AS jsonb)) j");
        }
    }
}

/// One component of a composite value against slot columns `{slot}system`, `{slot}code`, …
fn push_composite_part(sql: &mut Sql, slot: &str, part: &CompositePart, backend: Backend) {
    let (system, code, num) = (
        format!("{slot}system"),
        format!("{slot}code"),
        format!("{slot}num"),
    );
    match part {
        CompositePart::Token(t) => push_token_match(sql, &system, &code, t, backend),
        CompositePart::Quantity(q) => {
            push_number_condition(sql, &num, &q.number);
            if let Some(c) = &q.code {
                sql.push(&format!(" AND {code} = "))
                    .bind(Bind::Text(c.clone()));
            }
            if let Some(s) = &q.system {
                sql.push(&format!(" AND {system} = "))
                    .bind(Bind::Text(s.clone()));
            }
        }
        CompositePart::Number(n) => push_number_condition(sql, &num, n),
        CompositePart::Date(d) => {
            push_date_condition(sql, &format!("{slot}low"), &format!("{slot}high"), d)
        }
        CompositePart::String(s) => push_prefix_range(sql, &code, s),
        CompositePart::Reference(RefMatch::Id { types, id }) => {
            sql.push(&format!("{code} = ")).bind(Bind::Text(id.clone()));
            if !types.is_empty() {
                sql.push(&format!(" AND {system} IN ("));
                push_text_list(sql, types);
                sql.push(")");
            }
        }
        CompositePart::Reference(RefMatch::Url(url)) => {
            sql.push(&format!("{code} = "))
                .bind(Bind::Text(url.clone()));
        }
        // Composite values never carry `:linked` (modifiers apply to whole parameters).
        CompositePart::Reference(RefMatch::LinkedPatient(id)) => {
            sql.push(&format!("{code} = "))
                .bind(Bind::Text(id.clone()))
                .push(&format!(" AND {system} = 'Patient'"));
        }
    }
}

fn push_filter(
    sql: &mut Sql,
    filter: &Filter,
    alias: &str,
    types: &[String],
    aliases: &mut Aliases,
) {
    match filter {
        Filter::Id { ids, not } => {
            if ids.is_empty() {
                sql.push(if *not { "1 = 1" } else { "1 = 0" });
            } else {
                let not = if *not { "NOT " } else { "" };
                sql.push(&format!("{alias}.res_id {not}IN ("));
                push_text_list(sql, ids);
                sql.push(")");
            }
        }
        Filter::HeldBy(custodian) => {
            sql.push(&format!("{alias}.custodian = "))
                .bind(Bind::Text(custodian.clone()));
        }
        Filter::CareDate { from, to } => {
            // Columns of `resources` itself: no index table to look into. A record's care
            // overlaps the range: it starts by the range's end (a period known only by its
            // end started whenever) and ends (its end, else its one point in time) at or
            // after the range's start. A record with no care date at all is always in.
            let start = format!("{alias}.clinical_date");
            let end = format!("{alias}.clinical_end");
            sql.push(&format!("(({start} IS NULL AND {end} IS NULL) OR (1 = 1"));
            if let Some(from) = from {
                sql.push(&format!(" AND COALESCE({end}, {start}) >= "))
                    .bind(Bind::Int(*from));
            }
            if let Some(to) = to {
                sql.push(&format!(" AND ({start} IS NULL OR {start} <= "))
                    .bind(Bind::Int(*to))
                    .push(")");
            }
            sql.push("))");
        }
        Filter::LastUpdated(values) => {
            sql.push("(");
            let column = format!("{alias}.last_updated");
            push_alternatives(sql, values, |sql, v| {
                push_date_condition(sql, &column, &column, v)
            });
            sql.push(")");
        }
        Filter::Token { param, values, not } => {
            let x = open_index_subquery(sql, alias, *not, Table::Token, types, param, aliases);
            if values.len() > SET_MIN {
                push_token_set(sql, &x, values, aliases.backend);
            } else {
                let backend = aliases.backend;
                push_alternatives(sql, values, |sql, v| {
                    push_token_match(
                        sql,
                        &format!("{x}.system"),
                        &format!("{x}.code"),
                        v,
                        backend,
                    )
                });
            }
            sql.push("))");
        }
        Filter::TokenIn { .. } => {
            // Replaced by its expansion before SQL is built (`resolve_value_sets`).
            sql.push("1 = 0");
        }
        Filter::Composite { param, values } => {
            let x = open_index_subquery(sql, alias, false, Table::Composite, types, param, aliases);
            push_alternatives(sql, values, |sql, parts| {
                for (n, part) in parts.iter().enumerate().take(COMPOSITE_SLOTS) {
                    if n > 0 {
                        sql.push(" AND ");
                    }
                    push_composite_part(sql, &format!("{x}.p{}_", n + 1), part, aliases.backend);
                }
            });
            sql.push("))");
        }
        Filter::TokenText { param, values } => {
            let x = open_index_subquery(sql, alias, false, Table::Token, types, param, aliases);
            push_alternatives(sql, values, |sql, v| {
                sql.push(&format!("{x}.text LIKE "))
                    .bind(Bind::Text(format!("{}%", like_escape(v))))
                    .push(" ESCAPE '\\'");
            });
            sql.push("))");
        }
        Filter::String {
            param,
            values,
            mode,
        } => {
            let x = open_index_subquery(sql, alias, false, Table::String, types, param, aliases);
            push_alternatives(sql, values, |sql, v| match mode {
                StringMode::StartsWith => push_prefix_range(sql, &format!("{x}.value_norm"), v),
                StringMode::Exact => {
                    sql.push(&format!("{x}.value_exact = "))
                        .bind(Bind::Text(v.clone()));
                }
                StringMode::Contains => {
                    sql.push(&format!("{x}.value_norm LIKE "))
                        .bind(Bind::Text(format!("%{}%", like_escape(v))))
                        .push(" ESCAPE '\\'");
                }
            });
            sql.push("))");
        }
        Filter::Date { param, values } => {
            let x = open_index_subquery(sql, alias, false, Table::Date, types, param, aliases);
            push_alternatives(sql, values, |sql, v| {
                push_date_condition(sql, &format!("{x}.low"), &format!("{x}.high"), v)
            });
            sql.push("))");
        }
        Filter::Reference { param, values } => {
            let x = open_index_subquery(sql, alias, false, Table::Reference, types, param, aliases);
            let linked = values
                .iter()
                .any(|v| matches!(v, RefMatch::LinkedPatient(_)));
            let backend = aliases.backend;
            if values.len() > SET_MIN && !linked {
                push_reference_set(sql, &x, values, backend);
                sql.push("))");
                return;
            }
            push_alternatives(sql, values, |sql, v| match v {
                RefMatch::Id { types, id } => {
                    sql.push(&format!("{x}.target_id = "))
                        .bind(Bind::Text(id.clone()));
                    if !types.is_empty() {
                        sql.push(&format!(" AND {x}.target_type IN ("));
                        push_text_list(sql, types);
                        sql.push(")");
                    }
                }
                RefMatch::Url(url) => push_url_match(sql, &format!("{x}.url"), url, backend),
                RefMatch::LinkedPatient(id) => {
                    // The named record's links are followed only when the requester may see
                    // that record: otherwise the linked records it holds would tell it that
                    // they are the same person as one it may not see.
                    let named = aliases.next("lv");
                    sql.push(&format!("{x}.target_type = 'Patient' AND ({x}.target_id = "))
                        .bind(Bind::Text(id.clone()))
                        .push(&format!(
                            " OR (EXISTS (SELECT 1 FROM resources {named} WHERE {named}.res_type = 'Patient' AND {named}.res_id = "
                        ))
                        .bind(Bind::Text(id.clone()))
                        .push(&format!(" AND {named}.deleted = "))
                        .bind(Bind::Bool(false));
                    aliases.visibility.push_predicate_for(sql, &named);
                    sql.push(") AND ");
                    crate::identity::push_in_person_of(
                        sql,
                        &format!("{x}.target_id"),
                        id,
                        &format!("{x}lp"),
                    );
                    sql.push("))");
                }
            });
            sql.push("))");
        }
        Filter::Quantity { param, values } => {
            let x = open_index_subquery(sql, alias, false, Table::Quantity, types, param, aliases);
            push_alternatives(sql, values, |sql, v| {
                push_number_condition(sql, &format!("{x}.value"), &v.number);
                if let Some(code) = &v.code {
                    sql.push(&format!(" AND {x}.code = "))
                        .bind(Bind::Text(code.clone()));
                }
                if let Some(system) = &v.system {
                    sql.push(&format!(" AND {x}.system = "))
                        .bind(Bind::Text(system.clone()));
                }
            });
            sql.push("))");
        }
        Filter::Number { param, values } => {
            let x = open_index_subquery(sql, alias, false, Table::Number, types, param, aliases);
            push_alternatives(sql, values, |sql, v| {
                push_number_condition(sql, &format!("{x}.value"), v)
            });
            sql.push("))");
        }
        Filter::Uri {
            param,
            values,
            mode,
        } => {
            let x = open_index_subquery(sql, alias, false, Table::Uri, types, param, aliases);
            push_alternatives(sql, values, |sql, v| match mode {
                UriMode::Exact => {
                    sql.push(&format!("{x}.value = "))
                        .bind(Bind::Text(v.clone()));
                }
                UriMode::Canonical => {
                    sql.push("(");
                    push_url_match(sql, &format!("{x}.value"), v, aliases.backend);
                    sql.push(")");
                }
                // The URL itself or one below it by whole path segments: `…/ValueSet/a` is
                // not below `…/ValueSet/ab`'s parent `…/ValueSet/a`.
                UriMode::Below => {
                    let column = format!("{x}.value");
                    let parent = v.trim_end_matches('/');
                    sql.push(&format!("({column} = "))
                        .bind(Bind::Text(parent.to_string()))
                        .push(" OR (");
                    push_prefix_range(sql, &column, &format!("{parent}/"));
                    sql.push("))");
                }
                UriMode::Above => {
                    // Every stored value that is the URL itself or one of its parents.
                    let mut prefixes = vec![v.clone()];
                    let mut rest = v.as_str();
                    while let Some(pos) = rest.rfind('/') {
                        rest = &rest[..pos];
                        if rest.ends_with('/') || rest.is_empty() {
                            break;
                        }
                        prefixes.push(rest.to_string());
                    }
                    sql.push(&format!("{x}.value IN ("));
                    push_text_list(sql, &prefixes);
                    sql.push(")");
                }
            });
            sql.push("))");
        }
        Filter::Missing {
            param,
            table,
            missing,
        } => {
            let x = aliases.next("x");
            let not = if *missing { "NOT " } else { "" };
            sql.push(&format!(
                "{alias}.rid {not}IN (SELECT {x}.rid FROM {} {x} WHERE ",
                table.name()
            ));
            push_type_condition(sql, &x, types);
            push_param_condition(sql, &x, types, param);
            sql.push(")");
        }
        Filter::Chain { param, targets } => {
            let x = open_index_subquery(sql, alias, false, Table::Reference, types, param, aliases);
            push_alternatives(sql, targets, |sql, (target_type, inner)| {
                let c = aliases.next("c");
                sql.push(&format!("{x}.target_type = "))
                    .bind(Bind::Text(target_type.clone()))
                    .push(&format!(
                        " AND {x}.target_id IN (SELECT {c}.res_id FROM resources {c} WHERE {c}.res_type = "
                    ))
                    .bind(Bind::Text(target_type.clone()))
                    .push(&format!(" AND {c}.deleted = "))
                    .bind(Bind::Bool(false));
                aliases.visibility.push_predicate_for(sql, &c);
                sql.push(" AND ");
                push_filter(sql, inner, &c, std::slice::from_ref(target_type), aliases);
                sql.push(")");
            });
            sql.push("))");
        }
        Filter::Has {
            source_type,
            param,
            filter,
        } => {
            let h = aliases.next("h");
            let s = aliases.next("s");
            sql.push(&format!(
                "{alias}.res_id IN (SELECT {h}.target_id FROM idx_reference {h} WHERE {h}.res_type = "
            ))
            .bind(Bind::Text(source_type.clone()))
            .push(&format!(" AND {h}.param = "))
            .bind(Bind::Text(param.clone()));
            if !types.is_empty() {
                sql.push(&format!(" AND {h}.target_type IN ("));
                push_text_list(sql, types);
                sql.push(")");
            }
            sql.push(&format!(
                " AND {h}.rid IN (SELECT {s}.rid FROM resources {s} WHERE {s}.res_type = "
            ))
            .bind(Bind::Text(source_type.clone()))
            .push(&format!(" AND {s}.deleted = "))
            .bind(Bind::Bool(false));
            aliases.visibility.push_predicate_for(sql, &s);
            sql.push(" AND ");
            push_filter(sql, filter, &s, std::slice::from_ref(source_type), aliases);
            sql.push("))");
        }
        Filter::Compartment {
            target_type,
            target_id,
            members,
            include_self,
            linked,
        } => {
            let x = aliases.next("x");
            let push_target = |sql: &mut Sql, column: &str| {
                if *linked {
                    crate::identity::push_in_person_of(sql, column, target_id, &format!("{x}lp"));
                } else {
                    sql.push(&format!("{column} = "))
                        .bind(Bind::Text(target_id.clone()));
                }
            };
            // One candidate list (the members' references, then the target itself): an `OR`
            // beside the `IN` kept PostgreSQL from joining it and made it scan `resources`.
            sql.push(&format!(
                "{alias}.rid IN (SELECT {x}.rid FROM idx_reference {x} WHERE "
            ));
            push_target(sql, &format!("{x}.target_id"));
            sql.push(&format!(" AND {x}.target_type = "))
                .bind(Bind::Text(target_type.clone()))
                .push(" AND (");
            push_alternatives(sql, members, |sql, (res_type, params)| {
                sql.push(&format!("{x}.res_type = "))
                    .bind(Bind::Text(res_type.clone()))
                    .push(&format!(" AND {x}.param IN ("));
                push_text_list(sql, params);
                sql.push(")");
            });
            sql.push(")");
            if *include_self {
                let own = format!("{x}s");
                sql.push(&format!(
                    " UNION ALL SELECT {own}.rid FROM resources {own} WHERE {own}.res_type = "
                ))
                .bind(Bind::Text(target_type.clone()))
                .push(" AND ");
                push_target(sql, &format!("{own}.res_id"));
            }
            sql.push(")");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use renkei_search::plan::{parse, ParseOptions};

    fn plan(res_type: &str, pairs: &[(&str, &str)]) -> SearchPlan {
        let params: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&[res_type.to_string()], &params, &ParseOptions::default()).unwrap()
    }

    #[test]
    fn generates_index_subqueries_per_parameter() {
        let sql = page_sql(
            &plan(
                "Observation",
                &[("code", "http://loinc.org|1,2"), ("patient", "p1")],
            ),
            &Visibility::Unrestricted,
            Backend::Sqlite,
        );
        let text = sql.render(false);
        // The patient reference lists the candidates although the query names it second; the
        // code checks each candidate inside that list, before any `resources` row is read.
        assert!(text.contains("r.rid IN (SELECT x1.rid FROM idx_reference x1 WHERE x1.res_type = ? AND x1.param = ? AND ((x1.target_id = ?)) AND EXISTS (SELECT 1 FROM idx_token x2 WHERE x2.rid = x1.rid AND x2.param = ? AND ((x2.code = ? AND x2.system = ?) OR (x2.code = ?)))))"), "{text}");
        assert!(text.ends_with("ORDER BY v.rid ASC LIMIT 51"), "{text}");
        assert!(!text.contains("OFFSET"));
        // PostgreSQL sorts the few candidates rather than walking the primary key.
        let pg = page_sql(
            &plan("Observation", &[("patient", "p1")]),
            &Visibility::Unrestricted,
            Backend::Postgres,
        )
        .render(true);
        assert!(pg.ends_with("ORDER BY v.rid + 0 ASC LIMIT 51"), "{pg}");
        assert_eq!(sql.render(true).matches('$').count(), sql.binds().len());
    }

    #[test]
    fn a_birth_date_lists_the_candidates_before_a_family_name() {
        let driver = |query: &[(&str, &str)]| {
            let text = page_sql(
                &plan("Patient", query),
                &Visibility::Unrestricted,
                Backend::Sqlite,
            )
            .render(false);
            let start = text.find("r.rid IN (SELECT x1.rid FROM ").unwrap_or(0);
            text[start..]
                .split_whitespace()
                .nth(5)
                .unwrap_or_default()
                .to_string()
        };
        // A day's births are fewer than the bearers of a common family name.
        assert_eq!(
            driver(&[("family", "山崎"), ("birthdate", "1947-11-21")]),
            "idx_date"
        );
        // A wider or open period is not: the name stays first.
        assert_eq!(
            driver(&[("family", "山崎"), ("birthdate", "1947-11")]),
            "idx_string"
        );
        assert_eq!(
            driver(&[("family", "山崎"), ("birthdate", "ge1947-11-21")]),
            "idx_string"
        );
    }

    #[test]
    fn only_a_plain_candidate_list_takes_nested_checks() {
        assert!(is_one_in_subquery(
            "r.rid IN (SELECT x1.rid FROM idx_token x1 WHERE x1.param = ? AND (x1.code = ?))",
            "x1"
        ));
        // Two alternatives side by side, a negated list, another alias: left as they are.
        assert!(!is_one_in_subquery(
            "r.rid IN (SELECT x1.rid FROM t x1 WHERE (a)) OR r.rid IN (SELECT x2.rid FROM t x2)",
            "x1"
        ));
        assert!(!is_one_in_subquery(
            "r.rid NOT IN (SELECT x1.rid FROM t x1 WHERE (a))",
            "x1"
        ));
        assert!(!is_one_in_subquery(
            "r.rid IN (SELECT x2.rid FROM t x2 WHERE (a))",
            "x1"
        ));
    }

    /// The deepest parenthesis nesting of a statement: a bound on its expression depth.
    fn nesting(text: &str) -> usize {
        let (mut depth, mut deepest) = (0usize, 0usize);
        for ch in text.chars() {
            match ch {
                '(' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ')' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    fn alternatives(n: usize, each: impl Fn(usize) -> String) -> String {
        (0..n).map(each).collect::<Vec<_>>().join(",")
    }

    #[test]
    fn alternatives_nest_as_a_balanced_tree() {
        let sql = |query: &str| {
            page_sql(
                &plan("Patient", &[("name", query)]),
                &Visibility::Unrestricted,
                Backend::Sqlite,
            )
            .render(false)
        };
        // Two alternatives as before; more grouped in halves.
        assert!(sql("a,b").contains("AND ((x1.value_norm >= ? AND x1.value_norm < ?) OR (x1.value_norm >= ? AND x1.value_norm < ?)))"));
        let five = sql("a,b,c,d,e");
        let range = "(x1.value_norm >= ? AND x1.value_norm < ?)";
        assert!(
            five.contains(&format!(
                "((({range} OR {range}) OR {range}) OR ({range} OR {range}))"
            )),
            "{five}"
        );
        // 1000 alternatives (the most a search takes) nest 10 levels deeper than one, not 1000.
        let one = nesting(&sql("a"));
        let many = sql(&alternatives(1000, |i| format!("n{i}")));
        assert!(nesting(&many) <= one + 11, "{}", nesting(&many));
        assert_eq!(many.matches(" OR ").count(), 999);
    }

    #[test]
    fn many_token_alternatives_are_one_bound_set_per_kind() {
        let codes = alternatives(600, |i| match i % 4 {
            0 => format!("http://loinc.org|c{i}"),
            1 => format!("c{i}"),
            2 => format!("|c{i}"),
            _ => format!("urn:s{i}|"),
        });
        let p = plan(
            "Observation",
            &[("code", codes.as_str()), ("patient", "p1")],
        );
        let sqlite = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite);
        let text = sqlite.render(false);
        // Checked on the candidate's own index rows, as a short list of sets.
        assert!(text.contains("EXISTS (SELECT 1 FROM idx_token x2 WHERE x2.rid = x1.rid AND x2.param = ? AND ((((x2.code, x2.system) IN (SELECT j.value ->> 0, j.value ->> 1 FROM json_each(?) j)) OR (x2.code IN (SELECT j.value ->> 0 FROM json_each(?) j))) OR ((x2.system IS NULL AND x2.code IN (SELECT j.value ->> 0 FROM json_each(?) j)) OR (x2.system IN (SELECT j.value ->> 0 FROM json_each(?) j)))))"), "{text}");
        let arrays: Vec<serde_json::Value> = sqlite
            .binds()
            .iter()
            .filter_map(|b| match b {
                Bind::Text(t) if t.starts_with('[') => serde_json::from_str(t).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(arrays.len(), 4);
        assert_eq!(arrays[0][0], serde_json::json!(["c0", "http://loinc.org"]));
        assert_eq!(arrays[1][0], serde_json::json!(["c1"]));
        assert_eq!(arrays[2][0], serde_json::json!(["c2"]));
        assert_eq!(arrays[3][0], serde_json::json!(["urn:s3"]));
        assert_eq!(
            arrays
                .iter()
                .map(|a| a.as_array().map_or(0, Vec::len))
                .sum::<usize>(),
            600
        );
        let pg = page_sql(&p, &Visibility::Unrestricted, Backend::Postgres).render(true);
        assert!(
            pg.contains("(x2.code, x2.system) IN (SELECT j.value ->> 0, j.value ->> 1 FROM jsonb_array_elements(CAST($"),
            "{pg}"
        );
        // A few codes keep one condition each (and the plans of the benchmark queries).
        let few = plan("Observation", &[("code", "http://loinc.org|1,2")]);
        let text = page_sql(&few, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(!text.contains("json_each"), "{text}");
    }

    #[test]
    fn many_references_are_bound_sets_of_pairs_ids_and_urls() {
        let refs = alternatives(600, |i| match i % 3 {
            0 => format!("Patient/p{i}"),
            1 => format!("p{i}"),
            _ => format!("https://other.example/fhir/Patient/p{i}"),
        });
        let p = plan("Observation", &[("subject", refs.as_str())]);
        let sql = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite);
        let text = sql.render(false);
        assert!(text.contains("AND ((((x1.target_id, x1.target_type) IN (SELECT j.value ->> 0, j.value ->> 1 FROM json_each(?) j)) OR (x1.target_id IN (SELECT j.value ->> 0 FROM json_each(?) j))) OR ((x1.url IN (SELECT j.value ->> 0 FROM json_each(?) j)) OR (CASE WHEN instr(x1.url, '|') > 0 THEN substr(x1.url, 1, instr(x1.url, '|') - 1) END IN (SELECT j.value ->> 0 FROM json_each(?) j)))))"), "{text}");
        let bound = |start: &str| {
            sql.binds()
                .iter()
                .any(|b| matches!(b, Bind::Text(t) if t.starts_with(start)))
        };
        assert!(bound(r#"[["p0","Patient"],["p3","Patient"],"#));
        assert!(bound(r#"[["p1"],["p4"],"#));
        assert!(bound(r#"[["https://other.example/fhir/Patient/p2"],"#));
        // `:linked` values stay one subquery each.
        let linked = alternatives(40, |i| format!("Patient/p{i}"));
        let p = plan("Observation", &[("subject:linked", linked.as_str())]);
        let text = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(!text.contains("json_each"), "{text}");
    }

    /// An Observation search by `code` over `values`, as `resolve_value_sets` makes of an
    /// expansion.
    fn code_plan(values: Vec<TokenMatch>, not: bool) -> SearchPlan {
        let mut p = plan("Observation", &[("code", "x")]);
        p.filters = vec![Filter::Token {
            param: "code".into(),
            values,
            not,
        }];
        p
    }

    #[test]
    fn a_value_set_of_any_size_binds_one_value() {
        let values: Vec<TokenMatch> = (0..50_000)
            .map(|i| TokenMatch::SystemCode("urn:yj".into(), format!("{i:012}")))
            .collect();
        let p = code_plan(values, true);
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let sql = page_sql(&p, &Visibility::Unrestricted, backend);
            assert!(sql.binds().len() < 10, "{}", sql.binds().len());
            assert!(sql
                .text()
                .contains("r.rid NOT IN (SELECT x1.rid FROM idx_token x1"));
        }
    }

    #[test]
    fn a_whole_system_less_excluded_codes_is_one_condition() {
        let mut values = vec![TokenMatch::SystemExcept(
            "http://loinc.org".into(),
            vec!["2339-0".into()],
        )];
        let p = code_plan(values.clone(), false);
        let text = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(
            text.contains("((x1.system = ? AND x1.code NOT IN (?)))"),
            "{text}"
        );
        // Beside a large expansion's sets, and with many excluded codes, as bound arrays.
        let many: Vec<String> = (0..40).map(|i| format!("{i}")).collect();
        values[0] = TokenMatch::SystemExcept("http://loinc.org".into(), many);
        values.extend((0..40).map(|i| TokenMatch::SystemCode("urn:s".into(), format!("c{i}"))));
        let p = code_plan(values, true);
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let sql = page_sql(&p, &Visibility::Unrestricted, backend);
            assert!(sql.binds().len() < 12, "{}", sql.binds().len());
            let text = sql.render(false);
            assert!(
                text.contains("(x1.code, x1.system) IN (SELECT j.value ->> 0, j.value ->> 1")
                    && text.contains("x1.system = ? AND x1.code NOT IN (SELECT j.value ->> 0 FROM"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_profile_without_a_version_matches_its_versions() {
        let p = plan("Patient", &[("_profile", "http://x/StructureDefinition/p")]);
        let text = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(
            text.contains("(x1.value = ? OR (x1.value >= ? AND x1.value < ?))"),
            "{text}"
        );
        let versioned = plan(
            "Patient",
            &[("_profile", "http://x/StructureDefinition/p|1.0")],
        );
        let text = page_sql(&versioned, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(text.contains("((x1.value = ?))"), "{text}");
        let url = plan("ValueSet", &[("url", "http://x/ValueSet/v")]);
        let text = page_sql(&url, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(!text.contains("x1.value >= ?"), "{text}");
    }

    #[test]
    fn a_canonical_without_a_version_matches_its_versions() {
        let p = plan(
            "QuestionnaireResponse",
            &[("questionnaire", "http://x/Questionnaire/q1")],
        );
        let sqlite = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite);
        assert!(
            sqlite
                .render(false)
                .contains("(x1.url = ? OR (x1.url >= ? AND x1.url < ?))"),
            "{}",
            sqlite.render(false)
        );
        assert!(sqlite
            .binds()
            .iter()
            .any(|b| matches!(b, Bind::Text(t) if t == "http://x/Questionnaire/q1|")));
        let postgres = page_sql(&p, &Visibility::Unrestricted, Backend::Postgres).render(false);
        assert!(postgres.contains(r#"x1.url COLLATE "C" >= "#), "{postgres}");
        let versioned = plan(
            "QuestionnaireResponse",
            &[("questionnaire", "http://x/Questionnaire/q1|2.0")],
        );
        let text = page_sql(&versioned, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(text.contains("((x1.url = ?))"), "{text}");
    }

    #[test]
    fn id_not_excludes_the_ids() {
        let p = plan("Patient", &[("_id:not", "a,b"), ("family", "x")]);
        let text = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(text.contains("r.res_id NOT IN (?, ?)"), "{text}");
        // Not an index on `resources` to start from: the family name drives.
        assert!(text.contains("(r.res_type || '') = ?"), "{text}");
    }

    #[test]
    fn keyset_cursor_and_sort_keys() {
        let mut p = plan("Observation", &[("_sort", "-date,_id")]);
        p.cursor = Some(Cursor {
            keys: vec![SortValue::Int(5), SortValue::Text("a".into())],
            rid: 9,
            backward: false,
            sort: renkei_search::plan::sort_fingerprint(&p.sort),
        });
        let text = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(text.contains("COALESCE((SELECT MAX(s.high) FROM idx_date s WHERE s.rid = r.rid AND s.param = ?), ?) AS s0"), "{text}");
        assert!(
            text.contains(
                "WHERE (v.s0 < ? OR (v.s0 = ? AND (v.s1 > ? OR (v.s1 = ? AND v.rid > ?))))"
            ),
            "{text}"
        );
        assert!(
            text.contains("ORDER BY v.s0 DESC, v.s1 ASC, v.rid ASC"),
            "{text}"
        );
        p.cursor.as_mut().unwrap().backward = true;
        let text = page_sql(&p, &Visibility::Unrestricted, Backend::Sqlite).render(false);
        assert!(
            text.contains("ORDER BY v.s0 ASC, v.s1 DESC, v.rid DESC"),
            "{text}"
        );
    }

    #[test]
    fn chains_and_has_nest_with_fresh_aliases() {
        let text = page_sql(
            &plan("Observation", &[("subject:Patient.identifier", "s|1")]),
            &Visibility::Unrestricted,
            Backend::Sqlite,
        )
        .render(false);
        assert!(
            text.contains(
                "x1.target_id IN (SELECT c2.res_id FROM resources c2 WHERE c2.res_type = ?"
            ),
            "{text}"
        );
        assert!(
            text.contains("c2.rid IN (SELECT x3.rid FROM idx_token x3"),
            "{text}"
        );
        let text = page_sql(
            &plan("Patient", &[("_has:Observation:patient:code", "1234")]),
            &Visibility::Unrestricted,
            Backend::Sqlite,
        )
        .render(false);
        assert!(
            text.contains("r.res_id IN (SELECT h1.target_id FROM idx_reference h1"),
            "{text}"
        );
    }
}
