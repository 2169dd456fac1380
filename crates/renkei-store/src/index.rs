//! Index rows written with each version of a resource, in the same transaction: one table per
//! search parameter type (see the migrations), read by `search.rs`.

use crate::sql::{Bind, Sql};
use crate::{Backend, StoreError, Tx};
use renkei_search::extract::MAX_COMPONENTS;
use renkei_search::IndexRows;
use serde_json::Value;

/// An index table: the columns after `rid, res_type`, each with its PostgreSQL type.
struct IndexTable {
    name: &'static str,
    columns: &'static [(&'static str, &'static str)],
}

const TOKEN: IndexTable = IndexTable {
    name: "idx_token",
    columns: &[
        ("param", "text"),
        ("system", "text"),
        ("code", "text"),
        ("text", "text"),
    ],
};
const STRING: IndexTable = IndexTable {
    name: "idx_string",
    columns: &[
        ("param", "text"),
        ("value_norm", "text"),
        ("value_exact", "text"),
    ],
};
const DATE: IndexTable = IndexTable {
    name: "idx_date",
    columns: &[("param", "text"), ("low", "bigint"), ("high", "bigint")],
};
const REFERENCE: IndexTable = IndexTable {
    name: "idx_reference",
    columns: &[
        ("param", "text"),
        ("target_type", "text"),
        ("target_id", "text"),
        ("url", "text"),
    ],
};
const QUANTITY: IndexTable = IndexTable {
    name: "idx_quantity",
    columns: &[
        ("param", "text"),
        ("value", "double precision"),
        ("system", "text"),
        ("code", "text"),
    ],
};
const NUMBER: IndexTable = IndexTable {
    name: "idx_number",
    columns: &[("param", "text"), ("value", "double precision")],
};
const URI: IndexTable = IndexTable {
    name: "idx_uri",
    columns: &[("param", "text"), ("value", "text")],
};
/// Three component slots of (system, code, num, low, high).
const COMPOSITE: IndexTable = IndexTable {
    name: "idx_composite",
    columns: &[
        ("param", "text"),
        ("p1_system", "text"),
        ("p1_code", "text"),
        ("p1_num", "double precision"),
        ("p1_low", "bigint"),
        ("p1_high", "bigint"),
        ("p2_system", "text"),
        ("p2_code", "text"),
        ("p2_num", "double precision"),
        ("p2_low", "bigint"),
        ("p2_high", "bigint"),
        ("p3_system", "text"),
        ("p3_code", "text"),
        ("p3_num", "double precision"),
        ("p3_low", "bigint"),
        ("p3_high", "bigint"),
    ],
};
/// Component slots of `idx_composite` (`p1_*` … `p3_*`), as many as a composite row holds.
pub(crate) const COMPOSITE_SLOTS: usize = 3;
const _: () = assert!(COMPOSITE_SLOTS == MAX_COMPONENTS);

const TABLES: [&IndexTable; 8] = [
    &TOKEN, &STRING, &DATE, &REFERENCE, &QUANTITY, &NUMBER, &URI, &COMPOSITE,
];

/// Rows per `INSERT` statement on SQLite (its bound-parameter limit is 32,766).
const SQLITE_ROWS_PER_INSERT: usize = 150;

/// Each table's rows of one resource, as values for the table's columns after `rid, res_type`.
fn table_rows(rows: &IndexRows) -> [(&'static IndexTable, Vec<Vec<Bind>>); 8] {
    let text = |v: &str| Bind::Text(v.to_string());
    let opt = |v: &Option<String>| Bind::OptText(v.clone());
    [
        (
            &TOKEN,
            rows.tokens
                .iter()
                .map(|t| vec![text(&t.param), opt(&t.system), opt(&t.code), opt(&t.text)])
                .collect(),
        ),
        (
            &STRING,
            rows.strings
                .iter()
                .map(|s| vec![text(&s.param), text(&s.norm), text(&s.exact)])
                .collect(),
        ),
        (
            &DATE,
            rows.dates
                .iter()
                .map(|d| vec![text(&d.param), Bind::Int(d.low), Bind::Int(d.high)])
                .collect(),
        ),
        (
            &REFERENCE,
            rows.references
                .iter()
                .map(|r| {
                    vec![
                        text(&r.param),
                        opt(&r.target_type),
                        opt(&r.target_id),
                        opt(&r.url),
                    ]
                })
                .collect(),
        ),
        (
            &QUANTITY,
            rows.quantities
                .iter()
                .map(|q| {
                    vec![
                        text(&q.param),
                        Bind::Float(q.value),
                        opt(&q.system),
                        opt(&q.code),
                    ]
                })
                .collect(),
        ),
        (
            &NUMBER,
            rows.numbers
                .iter()
                .map(|n| vec![text(&n.param), Bind::Float(n.value)])
                .collect(),
        ),
        (
            &URI,
            rows.uris
                .iter()
                .map(|u| vec![text(&u.param), text(&u.value)])
                .collect(),
        ),
        (
            &COMPOSITE,
            rows.composites
                .iter()
                .map(|row| {
                    let mut values = vec![text(&row.param)];
                    for n in 0..COMPOSITE_SLOTS {
                        let part = row.parts.get(n).cloned().unwrap_or_default();
                        values.extend([
                            Bind::OptText(part.system),
                            Bind::OptText(part.code),
                            Bind::OptFloat(part.num),
                            Bind::OptInt(part.low),
                            Bind::OptInt(part.high),
                        ]);
                    }
                    values
                })
                .collect(),
        ),
    ]
}

impl IndexTable {
    fn column_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|(name, _)| *name)
    }

    /// `idx_x (rid, res_type, a, b, …)`
    fn target(&self) -> String {
        let columns: Vec<&str> = self.column_names().collect();
        format!("{} (rid, res_type, {})", self.name, columns.join(", "))
    }

    /// PostgreSQL: `INSERT INTO idx_x (…) SELECT rid, type, x.a, … FROM
    /// json_to_recordset(rows) AS x(a type, …)`, the rows bound as one JSON array.
    fn push_insert_from_json(&self, sql: &mut Sql, rid: i64, res_type: &str, rows: &[Vec<Bind>]) {
        let selected: Vec<String> = self.column_names().map(|c| format!("x.{c}")).collect();
        let record: Vec<String> = self
            .columns
            .iter()
            .map(|(name, ty)| format!("{name} {ty}"))
            .collect();
        sql.push(&format!("INSERT INTO {} SELECT ", self.target()))
            .bind(Bind::Int(rid))
            .push(", ")
            .bind(Bind::Text(res_type.to_string()))
            .push(&format!(
                ", {} FROM json_to_recordset(CAST(",
                selected.join(", ")
            ))
            .bind(Bind::Text(self.rows_json(rows)))
            .push(&format!(" AS json)) AS x({})", record.join(", ")));
    }

    /// The rows as a JSON array of objects keyed by column name.
    fn rows_json(&self, rows: &[Vec<Bind>]) -> String {
        let array: Vec<Value> = rows
            .iter()
            .map(|values| {
                Value::Object(
                    self.column_names()
                        .zip(values)
                        .map(|(column, value)| (column.to_string(), json_value(value)))
                        .collect(),
                )
            })
            .collect();
        Value::Array(array).to_string()
    }
}

fn json_value(bind: &Bind) -> Value {
    match bind {
        Bind::Text(v) => Value::String(v.clone()),
        Bind::OptText(v) => v.clone().map_or(Value::Null, Value::String),
        Bind::Int(v) => Value::from(*v),
        Bind::OptInt(v) => v.map_or(Value::Null, Value::from),
        Bind::Bool(v) => Value::Bool(*v),
        Bind::Float(v) => float_json(*v),
        Bind::OptFloat(v) => v.map_or(Value::Null, float_json),
    }
}

/// A finite number, exactly (serde_json prints the shortest text that reads back as the same
/// double, and PostgreSQL reads it correctly rounded); JSON has no NaN or infinity, which FHIR
/// decimals never are.
fn float_json(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// A token index row that consent reads: a `_security` label or a national privacy `_tag`.
#[derive(Debug, Clone, diesel::QueryableByName)]
struct PrivacyLabel {
    #[diesel(sql_type = diesel::sql_types::Text)]
    param: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    system: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    code: Option<String>,
}

/// A reference index row naming a record here.
#[derive(Debug, Clone, diesel::QueryableByName)]
struct StoredReference {
    #[diesel(sql_type = diesel::sql_types::Text)]
    param: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    target_type: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    target_id: String,
}

/// Whether an index token is a privacy label consent decides on: a `_security` label or a
/// national privacy `_tag` (the rows [`Tx::privacy_labels`] selects).
pub fn is_privacy_label(token: &renkei_search::extract::TokenIndex) -> bool {
    token.param == "_security"
        || (token.param == "_tag" && token.system.as_deref() == Some(crate::PRIVACY_TAG_SYSTEM))
}

impl Tx<'_> {
    /// The `_security` labels and national privacy `_tag`s of `rid` as consent sees them:
    /// its own and those it took on from the records it refers to.
    /// As token rows, ready to be stored under a record that takes them on.
    pub fn privacy_labels(
        &mut self,
        rid: i64,
    ) -> Result<Vec<renkei_search::extract::TokenIndex>, StoreError> {
        let mut sql = Sql::new("SELECT param, system, code FROM idx_token WHERE rid = ");
        sql.bind(Bind::Int(rid))
            .push(" AND (param = '_security' OR (param = '_tag' AND system = ")
            .bind(Bind::Text(crate::PRIVACY_TAG_SYSTEM.into()))
            .push("))");
        Ok(self
            .load::<PrivacyLabel>(&sql)?
            .into_iter()
            .map(|label| renkei_search::extract::TokenIndex {
                param: label.param,
                system: label.system,
                code: label.code,
                text: None,
            })
            .collect())
    }

    /// The rows of `rid` in the reference index that name a record here (`Type/id`), every
    /// parameter's, those kept for consent alone included.
    pub fn reference_rows(
        &mut self,
        rid: i64,
    ) -> Result<Vec<renkei_search::extract::ReferenceIndex>, StoreError> {
        let mut sql = Sql::new(
            "SELECT param, target_type, target_id FROM idx_reference WHERE target_id IS NOT NULL \
             AND target_type IS NOT NULL AND rid = ",
        );
        sql.bind(Bind::Int(rid));
        Ok(self
            .load::<StoredReference>(&sql)?
            .into_iter()
            .map(|row| renkei_search::extract::ReferenceIndex {
                param: row.param,
                target_type: Some(row.target_type),
                target_id: Some(row.target_id),
                url: None,
            })
            .collect())
    }

    /// Replaces every index row of `rid` (pass empty rows for a deleted resource).
    pub fn replace_index(
        &mut self,
        rid: i64,
        res_type: &str,
        rows: &IndexRows,
    ) -> Result<(), StoreError> {
        self.delete_index(rid)?;
        self.insert_index(rid, res_type, rows)
    }

    fn delete_index(&mut self, rid: i64) -> Result<(), StoreError> {
        let deletes: Vec<Sql> = TABLES
            .iter()
            .map(|table| {
                let mut delete = Sql::new(&format!("DELETE FROM {} WHERE rid = ", table.name));
                delete.bind(Bind::Int(rid));
                delete
            })
            .collect();
        self.execute_together(&deletes)
    }

    /// Stores the index rows of a resource that has none yet (its first version): no
    /// deletes to run first.
    pub fn insert_index(
        &mut self,
        rid: i64,
        res_type: &str,
        rows: &IndexRows,
    ) -> Result<(), StoreError> {
        let tables = table_rows(rows);
        match self.backend() {
            Backend::Sqlite => {
                for (table, values) in &tables {
                    self.insert_rows_sqlite(table, rid, res_type, values)?;
                }
                Ok(())
            }
            Backend::Postgres => self.insert_rows_postgres(rid, res_type, &tables),
        }
    }

    /// Multi-row `INSERT OR FAIL`: index rows never conflict, and a failure rolls the whole
    /// write back anyway, so SQLite need not keep a statement journal to undo a half-done
    /// statement (under the default `ABORT` it copies every page the insert touches first).
    fn insert_rows_sqlite(
        &mut self,
        table: &IndexTable,
        rid: i64,
        res_type: &str,
        rows: &[Vec<Bind>],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
            let mut insert = Sql::new(&format!("INSERT OR FAIL INTO {} VALUES ", table.target()));
            for (i, values) in chunk.iter().enumerate() {
                let row = [Bind::Int(rid), Bind::Text(res_type.to_string())];
                insert.push_row(i == 0, row.into_iter().chain(values.iter().cloned()));
            }
            self.execute(&insert)?;
        }
        Ok(())
    }

    /// Every table's rows in one statement (one round trip instead of one per table), each
    /// table's rows travelling as one JSON array: the statement text is the same for every
    /// resource, so it stays prepared on the connection.
    fn insert_rows_postgres(
        &mut self,
        rid: i64,
        res_type: &str,
        tables: &[(&'static IndexTable, Vec<Vec<Bind>>)],
    ) -> Result<(), StoreError> {
        let inserts: Vec<Sql> = tables
            .iter()
            .map(|(table, rows)| {
                let mut insert = Sql::new("");
                table.push_insert_from_json(&mut insert, rid, res_type, rows);
                insert
            })
            .collect();
        self.execute_together(&inserts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_insert_binds_rid_type_and_rows() {
        let mut sql = Sql::new("");
        URI.push_insert_from_json(&mut sql, 7, "Observation", &[]);
        assert_eq!(
            sql.text(),
            "INSERT INTO idx_uri (rid, res_type, param, value) SELECT ?, ?, x.param, x.value \
             FROM json_to_recordset(CAST(? AS json)) AS x(param text, value text)"
        );
        assert_eq!(
            sql.binds(),
            &[
                Bind::Int(7),
                Bind::Text("Observation".into()),
                Bind::Text("[]".into())
            ]
        );
    }

    #[test]
    fn rows_travel_as_json_keyed_by_column() {
        let rows = vec![vec![
            Bind::Text("value-quantity".into()),
            Bind::Float(7.25),
            Bind::OptText(None),
            Bind::OptText(Some("mg".into())),
        ]];
        assert_eq!(
            QUANTITY.rows_json(&rows),
            r#"[{"param":"value-quantity","value":7.25,"system":null,"code":"mg"}]"#
        );
    }

    #[test]
    fn every_table_row_has_a_value_per_column() {
        let mut rows = IndexRows::default();
        rows.composites
            .push(renkei_search::extract::CompositeIndex {
                param: "code-value-quantity".into(),
                parts: vec![Default::default(), Default::default()],
            });
        rows.tokens.push(renkei_search::extract::TokenIndex {
            param: "code".into(),
            system: None,
            code: Some("x".into()),
            text: None,
        });
        for (table, values) in table_rows(&rows) {
            for row in values {
                assert_eq!(row.len(), table.columns.len(), "{}", table.name);
            }
        }
    }
}
