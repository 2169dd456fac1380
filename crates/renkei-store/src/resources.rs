//! Resource rows: current versions in `resources`, superseded versions in `resource_history`,
//! and the token index rows written alongside them.

use crate::sql::{Bind, Sql};
use crate::{Backend, StoreError, Tx};
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::QueryableByName;

/// The current row of a logical resource.
#[derive(Debug, Clone, QueryableByName)]
pub struct ResourceRow {
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
    #[diesel(sql_type = Text)]
    pub method: String,
    #[diesel(sql_type = Bool)]
    pub deleted: bool,
    #[diesel(sql_type = Nullable<Text>)]
    pub custodian: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub patient_id: Option<String>,
    /// The care period consent's data periods are compared with (see
    /// [`NewVersion::clinical_date`]).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub clinical_date: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub clinical_end: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub body: Option<String>,
}

/// One version as history reports it.
#[derive(Debug, Clone, QueryableByName)]
pub struct HistoryRow {
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
    #[diesel(sql_type = Text)]
    pub method: String,
    #[diesel(sql_type = Bool)]
    pub deleted: bool,
    #[diesel(sql_type = Nullable<Text>)]
    pub body: Option<String>,
    /// The record's holder (the same for every version).
    #[diesel(sql_type = Nullable<Text>)]
    pub custodian: Option<String>,
    /// The patient the record is about (its current version's, as consent decides).
    #[diesel(sql_type = Nullable<Text>)]
    pub patient_id: Option<String>,
    /// This version brought the resource into existence: its first, or the first after a
    /// delete.
    #[diesel(sql_type = Bool)]
    pub created: bool,
}

/// `, (<version> = 1 OR <the version before it was a delete>) AS created` for a version of
/// resource `rid`.
fn push_created(sql: &mut Sql, rid: &str, version: &str) {
    sql.push(&format!(
        ", ({version} = 1 OR EXISTS (SELECT 1 FROM resource_history p WHERE p.rid = {rid} \
         AND p.version = {version} - 1 AND p.deleted = "
    ))
    .bind(Bind::Bool(true))
    .push(")) AS created");
}

/// What a write stores as the new current version.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub res_type: &'a str,
    pub res_id: &'a str,
    pub version: i64,
    pub last_updated: i64,
    /// `POST`, `PUT`, `PATCH` or `DELETE`: how the version came to be, for history entries.
    pub method: &'a str,
    pub custodian: Option<&'a str>,
    pub patient_id: Option<&'a str>,
    /// The clinical date consent `dataPeriod`s are compared with (ms).
    pub clinical_date: Option<i64>,
    /// The end of the care period (`i64::MAX` while open); None for a point in time.
    pub clinical_end: Option<i64>,
    /// `None` for a deletion.
    pub body: Option<&'a str>,
}

/// One token index value of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub param: String,
    pub system: Option<String>,
    pub code: Option<String>,
    pub text: Option<String>,
}

#[derive(Debug, Clone)]
pub enum HistoryScope {
    Instance { res_type: String, res_id: String },
    Type(String),
    System,
}

#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions updated at or after this instant (ms since epoch).
    pub since: Option<i64>,
    /// Only versions current at some instant of this period (ms since epoch, both ends
    /// inclusive): updated by its end, and not yet replaced at its start.
    pub at: Option<(i64, i64)>,
    /// Resume after this (last_updated, rid, version) position, newest first.
    pub after: Option<(i64, i64, i64)>,
    pub count: usize,
    /// Only versions of resources the requester may see (decided on the current row).
    pub visibility: crate::Visibility,
}

#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub rows: Vec<HistoryRow>,
    /// Where the next page starts, if there is one.
    pub next: Option<(i64, i64, i64)>,
}

const RESOURCE_COLUMNS: &str =
    "rid, res_type, res_id, version, last_updated, method, deleted, custodian, patient_id, \
     clinical_date, clinical_end, body";

#[derive(QueryableByName)]
struct Rid {
    #[diesel(sql_type = BigInt)]
    rid: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The key of the PostgreSQL advisory lock that conditional writes take ("RENK").
const CONDITIONAL_WRITE_LOCK: i64 = 0x5245_4E4B;

impl Tx<'_> {
    /// Makes conditional writes (search, then create or update what the search decided)
    /// take turns until this transaction ends, so two of them cannot both find nothing and
    /// both create. SQLite's write transactions already take turns (`BEGIN IMMEDIATE`);
    /// PostgreSQL's run side by side under READ COMMITTED, so they queue on one advisory
    /// lock. One lock for every type, so resolving several types' criteria takes no second
    /// lock; a caller that also locks rows takes its turn first (a transaction Bundle does,
    /// before any of its writes).
    pub fn serialize_conditional_writes(&mut self) -> Result<(), StoreError> {
        match self.backend() {
            Backend::Sqlite => Ok(()),
            Backend::Postgres => {
                let mut lock = Sql::new("SELECT pg_advisory_xact_lock(");
                lock.bind(Bind::Int(CONDITIONAL_WRITE_LOCK)).push(")");
                self.execute(&lock).map(|_| ())
            }
        }
    }

    /// Locks the current rows of `targets` (type, id) until the transaction ends, one after
    /// the other in (type, id) order, and returns how many exist (a missing one locks
    /// nothing). A write that will change several resources takes their locks here, before it
    /// changes any: two such writes over the same resources then queue on the first row of
    /// that order. Locking them as each change comes, in an order the request chose, lets two
    /// writes hold one row each and wait for the other's, a deadlock PostgreSQL ends by failing
    /// one of them. SQLite's IMMEDIATE transaction already excludes other writers.
    ///
    /// Row locks, not advisory locks on the ids: a row lock is kept in the row itself, while
    /// advisory locks fill PostgreSQL's shared lock table (`max_locks_per_transaction`), which
    /// a transaction of a thousand entries could exhaust. The pairs travel as one JSON array
    /// (`json_to_recordset`): one prepared statement for any number of them.
    pub fn lock_current_rows(&mut self, targets: &[(&str, &str)]) -> Result<usize, StoreError> {
        if targets.is_empty() || self.backend() == Backend::Sqlite {
            return Ok(0);
        }
        let pairs: Vec<serde_json::Value> = targets
            .iter()
            .map(|(res_type, res_id)| serde_json::json!({"t": res_type, "i": res_id}))
            .collect();
        // PostgreSQL locks the rows as the sort hands them up (LockRows above Sort), so in
        // this order whatever the order of `targets`.
        let mut sql = Sql::new(
            "SELECT rid FROM resources WHERE (res_type, res_id) IN (SELECT t, i FROM \
             json_to_recordset(CAST(",
        );
        sql.bind(Bind::Text(serde_json::Value::Array(pairs).to_string()))
            .push(
                " AS json)) AS x(t text, i text)) ORDER BY res_type, res_id FOR UPDATE OF resources",
            );
        Ok(self.load::<Rid>(&sql)?.len())
    }

    /// The current row of `res_type/res_id`, deleted or not.
    pub fn current(
        &mut self,
        res_type: &str,
        res_id: &str,
    ) -> Result<Option<ResourceRow>, StoreError> {
        self.current_inner(res_type, res_id, "")
    }

    /// Like [`Tx::current`] but locks the row until the transaction ends, so concurrent
    /// writers of the same resource queue up and versions never collide.
    pub fn current_for_update(
        &mut self,
        res_type: &str,
        res_id: &str,
    ) -> Result<Option<ResourceRow>, StoreError> {
        let lock = self.for_update();
        self.current_inner(res_type, res_id, lock)
    }

    /// Like [`Tx::current`] but keeps the row from changing until the transaction ends (others
    /// may read it so too): what a write derives from another record (its labels) cannot be
    /// changed meanwhile by a writer that does not yet see this write.
    pub fn current_for_share(
        &mut self,
        res_type: &str,
        res_id: &str,
    ) -> Result<Option<ResourceRow>, StoreError> {
        let lock = self.for_share();
        self.current_inner(res_type, res_id, lock)
    }

    fn current_inner(
        &mut self,
        res_type: &str,
        res_id: &str,
        lock: &str,
    ) -> Result<Option<ResourceRow>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {RESOURCE_COLUMNS} FROM resources WHERE res_type = "
        ));
        sql.bind(Bind::Text(res_type.into()))
            .push(" AND res_id = ")
            .bind(Bind::Text(res_id.into()))
            .push(lock);
        Ok(self.load::<ResourceRow>(&sql)?.into_iter().next())
    }

    /// The current, not deleted records that refer to `target_type/target_id` (by any row of
    /// the reference index, `_reference`, a Bundle's `_entry` and what a record follows
    /// included) and, but for a Bundle or a record that follows the target, to no Patient
    /// record (the records that name a patient themselves take on no labels from what they
    /// merely refer to; a stored Bundle takes on its entries'; a row of what a record follows
    /// names no patient of its own), at most
    /// `limit` after row `after_rid` in rid order, locked as by [`Tx::current_for_update`]:
    /// the caller rewrites their index rows, which a concurrent update of theirs would
    /// otherwise rewrite at the same time.
    pub fn referring_records(
        &mut self,
        target_type: &str,
        target_id: &str,
        after_rid: i64,
        limit: usize,
    ) -> Result<Vec<ResourceRow>, StoreError> {
        let mut sql = Sql::new(&format!(
            "SELECT {RESOURCE_COLUMNS} FROM resources WHERE deleted = "
        ));
        sql.bind(Bind::Bool(false))
            .push(" AND rid IN (SELECT x.rid FROM idx_reference x WHERE x.target_id = ")
            .bind(Bind::Text(target_id.into()))
            .push(" AND x.target_type = ")
            .bind(Bind::Text(target_type.into()))
            .push(
                ") AND (res_type = 'Bundle' OR NOT EXISTS (SELECT 1 FROM idx_reference p \
                 WHERE p.rid = resources.rid AND p.target_type = 'Patient' AND p.param NOT IN (",
            )
            .bind(Bind::Text(crate::FOLLOWED_RECORD.into()))
            .push(", ")
            .bind(Bind::Text(crate::FOLLOWED_REFERENCE.into()))
            // A record naming its patient that follows the target all the same.
            .push(")) OR EXISTS (SELECT 1 FROM idx_reference f WHERE f.rid = resources.rid AND f.param = ")
            .bind(Bind::Text(crate::FOLLOWED_RECORD.into()))
            .push(" AND f.target_id = ")
            .bind(Bind::Text(target_id.into()))
            .push(" AND f.target_type = ")
            .bind(Bind::Text(target_type.into()))
            .push(")) AND rid > ")
            .bind(Bind::Int(after_rid))
            .push(&format!(" ORDER BY rid LIMIT {limit}"));
        let suffix = self.for_update();
        sql.push(suffix);
        self.load::<ResourceRow>(&sql)
    }

    /// A specific version, current or superseded.
    pub fn version(
        &mut self,
        res_type: &str,
        res_id: &str,
        version: i64,
    ) -> Result<Option<HistoryRow>, StoreError> {
        let mut sql = Sql::new(
            "SELECT r.rid, r.res_type, r.res_id, h.version, h.last_updated, h.method, h.deleted, h.body, r.custodian, r.patient_id",
        );
        push_created(&mut sql, "r.rid", "h.version");
        sql.push(" FROM resources r JOIN resource_history h ON h.rid = r.rid WHERE r.res_type = ")
            .bind(Bind::Text(res_type.into()))
            .push(" AND r.res_id = ")
            .bind(Bind::Text(res_id.into()))
            .push(" AND h.version = ")
            .bind(Bind::Int(version))
            .push(
                " UNION ALL SELECT r.rid, r.res_type, r.res_id, r.version, r.last_updated, r.method, r.deleted, r.body, r.custodian, r.patient_id",
            );
        push_created(&mut sql, "r.rid", "r.version");
        sql.push(" FROM resources r WHERE r.res_type = ")
            .bind(Bind::Text(res_type.into()))
            .push(" AND r.res_id = ")
            .bind(Bind::Text(res_id.into()))
            .push(" AND r.version = ")
            .bind(Bind::Int(version));
        Ok(self.load::<HistoryRow>(&sql)?.into_iter().next())
    }

    /// Inserts the first version of a new logical resource. Fails with
    /// [`StoreError::UniqueViolation`] if the id is taken (a concurrent create won).
    pub fn insert_new(&mut self, new: &NewVersion<'_>) -> Result<i64, StoreError> {
        let mut sql = Sql::new(
            "INSERT INTO resources (res_type, res_id, version, last_updated, method, deleted, custodian, patient_id, clinical_date, clinical_end, body) VALUES (",
        );
        push_version_values(&mut sql, new);
        sql.push(") RETURNING rid");
        self.load::<Rid>(&sql)?
            .into_iter()
            .next()
            .map(|r| r.rid)
            .ok_or(StoreError::UniqueViolation)
    }

    /// Moves the current version of `rid` to history and stores `new` as current.
    /// The caller must hold the row lock ([`Tx::current_for_update`]).
    pub fn replace_current(&mut self, rid: i64, new: &NewVersion<'_>) -> Result<(), StoreError> {
        let mut archive = Sql::new(
            "INSERT INTO resource_history (rid, version, last_updated, method, deleted, body) \
             SELECT rid, version, last_updated, method, deleted, body FROM resources WHERE rid = ",
        );
        archive.bind(Bind::Int(rid));
        self.execute(&archive)?;
        let mut update = Sql::new("UPDATE resources SET version = ");
        update
            .bind(Bind::Int(new.version))
            .push(", last_updated = ")
            .bind(Bind::Int(new.last_updated))
            .push(", method = ")
            .bind(Bind::Text(new.method.into()))
            .push(", deleted = ")
            .bind(Bind::Bool(new.body.is_none()))
            .push(", custodian = ")
            .bind(Bind::OptText(new.custodian.map(str::to_string)))
            .push(", patient_id = ")
            .bind(Bind::OptText(new.patient_id.map(str::to_string)))
            .push(", clinical_date = ")
            .bind(Bind::OptInt(new.clinical_date))
            .push(", clinical_end = ")
            .bind(Bind::OptInt(new.clinical_end))
            .push(", body = ")
            .bind(Bind::OptText(new.body.map(str::to_string)))
            .push(" WHERE rid = ")
            .bind(Bind::Int(rid));
        self.execute(&update)?;
        Ok(())
    }

    /// Sets which patient the current version of `rid` is about (reindexing).
    pub fn set_patient_id(&mut self, rid: i64, patient_id: Option<&str>) -> Result<(), StoreError> {
        let mut update = Sql::new("UPDATE resources SET patient_id = ");
        update
            .bind(Bind::OptText(patient_id.map(str::to_string)))
            .push(" WHERE rid = ")
            .bind(Bind::Int(rid));
        self.execute(&update).map(|_| ())
    }

    /// Sets the care period of the current version of `rid` (reindexing): its clinical date
    /// and, for a period, its end.
    pub fn set_clinical_period(
        &mut self,
        rid: i64,
        clinical_date: Option<i64>,
        clinical_end: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut update = Sql::new("UPDATE resources SET clinical_date = ");
        update
            .bind(Bind::OptInt(clinical_date))
            .push(", clinical_end = ")
            .bind(Bind::OptInt(clinical_end))
            .push(" WHERE rid = ")
            .bind(Bind::Int(rid));
        self.execute(&update).map(|_| ())
    }

    /// Whether the database holds no resources at all (demo loading uses it).
    pub fn is_empty(&mut self) -> Result<bool, StoreError> {
        let sql = Sql::new("SELECT COUNT(*) AS n FROM (SELECT rid FROM resources LIMIT 1) t");
        Ok(self
            .load::<Count>(&sql)?
            .into_iter()
            .next()
            .is_none_or(|c| c.n == 0))
    }

    /// One page of history, newest first, over current and superseded versions.
    pub fn history(&mut self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let mut sql = Sql::new("SELECT * FROM (");
        for (i, table) in ["current", "history"].iter().enumerate() {
            if i > 0 {
                sql.push(" UNION ALL ");
            }
            if *table == "current" {
                sql.push("SELECT r.rid, r.res_type, r.res_id, r.version, r.last_updated, r.method, r.deleted, r.body, r.custodian, r.patient_id");
                push_created(&mut sql, "r.rid", "r.version");
                sql.push(" FROM resources r WHERE 1 = 1");
            } else {
                sql.push("SELECT r.rid, r.res_type, r.res_id, h.version, h.last_updated, h.method, h.deleted, h.body, r.custodian, r.patient_id");
                push_created(&mut sql, "r.rid", "h.version");
                sql.push(" FROM resource_history h JOIN resources r ON r.rid = h.rid WHERE 1 = 1");
            }
            let updated = if *table == "current" {
                "r.last_updated"
            } else {
                "h.last_updated"
            };
            match &query.scope {
                HistoryScope::Instance { res_type, res_id } => {
                    sql.push(" AND r.res_type = ")
                        .bind(Bind::Text(res_type.clone()))
                        .push(" AND r.res_id = ")
                        .bind(Bind::Text(res_id.clone()));
                }
                HistoryScope::Type(res_type) => {
                    sql.push(" AND r.res_type = ")
                        .bind(Bind::Text(res_type.clone()));
                }
                HistoryScope::System => {}
            }
            if let Some(since) = query.since {
                sql.push(&format!(" AND {updated} >= "))
                    .bind(Bind::Int(since));
            }
            if let Some((start, end)) = query.at {
                sql.push(&format!(" AND {updated} <= "))
                    .bind(Bind::Int(end));
                if *table == "history" {
                    // Replaced by the next version, kept in history or current.
                    sql.push(" AND COALESCE((SELECT n.last_updated FROM resource_history n WHERE n.rid = h.rid AND n.version = h.version + 1), r.last_updated) > ")
                        .bind(Bind::Int(start));
                }
            }
            query.visibility.push_predicate_for(&mut sql, "r");
            if *table == "history" {
                query
                    .visibility
                    .push_earlier_versions_predicate(&mut sql, "r");
            }
        }
        sql.push(") v");
        if let Some((updated, rid, version)) = query.after {
            sql.push(" WHERE (v.last_updated < ")
                .bind(Bind::Int(updated))
                .push(" OR (v.last_updated = ")
                .bind(Bind::Int(updated))
                .push(" AND (v.rid < ")
                .bind(Bind::Int(rid))
                .push(" OR (v.rid = ")
                .bind(Bind::Int(rid))
                .push(" AND v.version < ")
                .bind(Bind::Int(version))
                .push("))))");
        }
        sql.push(" ORDER BY v.last_updated DESC, v.rid DESC, v.version DESC")
            .push_limit(query.count.saturating_add(1));
        let mut rows = self.load::<HistoryRow>(&sql)?;
        let next = if rows.len() > query.count {
            rows.truncate(query.count);
            rows.last().map(|r| (r.last_updated, r.rid, r.version))
        } else {
            None
        };
        Ok(HistoryPage { rows, next })
    }
}

fn push_version_values(sql: &mut Sql, new: &NewVersion<'_>) {
    sql.bind(Bind::Text(new.res_type.into()))
        .push(", ")
        .bind(Bind::Text(new.res_id.into()))
        .push(", ")
        .bind(Bind::Int(new.version))
        .push(", ")
        .bind(Bind::Int(new.last_updated))
        .push(", ")
        .bind(Bind::Text(new.method.into()))
        .push(", ")
        .bind(Bind::Bool(new.body.is_none()))
        .push(", ")
        .bind(Bind::OptText(new.custodian.map(str::to_string)))
        .push(", ")
        .bind(Bind::OptText(new.patient_id.map(str::to_string)))
        .push(", ")
        .bind(Bind::OptInt(new.clinical_date))
        .push(", ")
        .bind(Bind::OptInt(new.clinical_end))
        .push(", ")
        .bind(Bind::OptText(new.body.map(str::to_string)));
}
