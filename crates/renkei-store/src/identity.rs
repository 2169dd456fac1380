//! Patient identity across facilities: the link keys of each Patient record, administrators'
//! link decisions, and the resulting persons (`patient_person`). The rules that produce keys
//! and persons live in `renkei-identity`; this module only stores and queries them.

use crate::sql::{Bind, Sql};
use crate::{StoreError, Tx};
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::QueryableByName;

/// An administrator's decision about a pair of Patient records.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct LinkOverride {
    #[diesel(sql_type = Text)]
    pub patient_a: String,
    #[diesel(sql_type = Text)]
    pub patient_b: String,
    /// `true`: linked by hand; `false`: kept apart although their keys agree.
    #[diesel(sql_type = Bool)]
    pub linked: bool,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub decided_by: String,
    #[diesel(sql_type = BigInt)]
    pub decided_at: i64,
}

impl LinkOverride {
    /// The other record of the pair, seen from `patient_id`.
    pub fn other(&self, patient_id: &str) -> &str {
        if self.patient_a == patient_id {
            &self.patient_b
        } else {
            &self.patient_a
        }
    }
}

#[derive(QueryableByName)]
struct PatientIdRow {
    #[diesel(sql_type = Text)]
    patient_id: String,
}

/// Appends a query of the Patient ids of the person a record belongs to (itself included;
/// empty for unlinked records), ending in `WHERE …patient_id = ` for the caller to complete
/// with a bound value or a column of the outer query.
pub(crate) fn push_linked_records(sql: &mut Sql, alias: &str) {
    sql.push(&format!(
        "SELECT {alias}2.patient_id FROM patient_person {alias}1 JOIN patient_person {alias}2 \
         ON {alias}2.person_id = {alias}1.person_id WHERE {alias}1.patient_id = "
    ));
}

/// Appends `{column} IN (<patient_id> and the ids of every record linked to it)`.
pub(crate) fn push_in_person_of(sql: &mut Sql, column: &str, patient_id: &str, alias: &str) {
    sql.push(&format!("({column} = "))
        .bind(Bind::Text(patient_id.into()))
        .push(&format!(" OR {column} IN ("));
    push_linked_records(sql, alias);
    sql.bind(Bind::Text(patient_id.into())).push("))");
}

impl Tx<'_> {
    /// Replaces the link keys of a Patient record (empty for a deleted record).
    pub fn replace_link_keys(
        &mut self,
        patient_id: &str,
        keys: &[String],
    ) -> Result<(), StoreError> {
        let mut delete = Sql::new("DELETE FROM patient_link_keys WHERE patient_id = ");
        delete.bind(Bind::Text(patient_id.into()));
        self.execute(&delete)?;
        if keys.is_empty() {
            return Ok(());
        }
        let mut insert = Sql::new("INSERT INTO patient_link_keys (patient_id, link_key) VALUES ");
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                insert.push(", ");
            }
            insert
                .push("(")
                .bind(Bind::Text(patient_id.into()))
                .push(", ")
                .bind(Bind::Text(key.clone()))
                .push(")");
        }
        self.execute(&insert)?;
        Ok(())
    }

    /// Other Patient records sharing at least one link key with `patient_id`.
    pub fn records_sharing_keys(&mut self, patient_id: &str) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::new(
            "SELECT DISTINCT b.patient_id AS patient_id FROM patient_link_keys a \
             JOIN patient_link_keys b ON b.link_key = a.link_key WHERE a.patient_id = ",
        );
        sql.bind(Bind::Text(patient_id.into()))
            .push(" AND b.patient_id <> ")
            .bind(Bind::Text(patient_id.into()))
            .push(" ORDER BY b.patient_id");
        Ok(self
            .load::<PatientIdRow>(&sql)?
            .into_iter()
            .map(|r| r.patient_id)
            .collect())
    }

    /// Administrators' decisions involving `patient_id`.
    pub fn link_overrides_of(&mut self, patient_id: &str) -> Result<Vec<LinkOverride>, StoreError> {
        let mut sql = Sql::new(
            "SELECT patient_a, patient_b, linked, reason, decided_by, decided_at \
             FROM patient_link_overrides WHERE patient_a = ",
        );
        sql.bind(Bind::Text(patient_id.into()))
            .push(" OR patient_b = ")
            .bind(Bind::Text(patient_id.into()))
            .push(" ORDER BY patient_a, patient_b");
        self.load(&sql)
    }

    /// Records (or replaces) an administrator's decision about the pair `a`, `b`.
    pub fn set_link_override(&mut self, decision: &LinkOverride) -> Result<(), StoreError> {
        let (a, b) = if decision.patient_a <= decision.patient_b {
            (&decision.patient_a, &decision.patient_b)
        } else {
            (&decision.patient_b, &decision.patient_a)
        };
        let mut delete = Sql::new("DELETE FROM patient_link_overrides WHERE patient_a = ");
        delete
            .bind(Bind::Text(a.clone()))
            .push(" AND patient_b = ")
            .bind(Bind::Text(b.clone()));
        self.execute(&delete)?;
        let mut insert = Sql::new(
            "INSERT INTO patient_link_overrides (patient_a, patient_b, linked, reason, decided_by, decided_at) VALUES (",
        );
        insert
            .bind(Bind::Text(a.clone()))
            .push(", ")
            .bind(Bind::Text(b.clone()))
            .push(", ")
            .bind(Bind::Bool(decision.linked))
            .push(", ")
            .bind(Bind::Text(decision.reason.clone()))
            .push(", ")
            .bind(Bind::Text(decision.decided_by.clone()))
            .push(", ")
            .bind(Bind::Int(decision.decided_at))
            .push(")");
        self.execute(&insert)?;
        Ok(())
    }

    /// Every record of the person `patient_id` belongs to, itself included; empty when the
    /// record is linked to nothing.
    pub fn person_members(&mut self, patient_id: &str) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::new("SELECT m2.patient_id AS patient_id FROM patient_person m1 JOIN patient_person m2 ON m2.person_id = m1.person_id WHERE m1.patient_id = ");
        sql.bind(Bind::Text(patient_id.into()))
            .push(" ORDER BY m2.patient_id");
        Ok(self
            .load::<PatientIdRow>(&sql)?
            .into_iter()
            .map(|r| r.patient_id)
            .collect())
    }

    /// Makes `members` one person (at least two records) or, for a single record, unlinked.
    pub fn assign_person(&mut self, members: &[String]) -> Result<(), StoreError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut delete = Sql::new("DELETE FROM patient_person WHERE patient_id IN (");
        for (i, member) in members.iter().enumerate() {
            if i > 0 {
                delete.push(", ");
            }
            delete.bind(Bind::Text(member.clone()));
        }
        delete.push(")");
        self.execute(&delete)?;
        let [first, _, ..] = members else {
            return Ok(());
        };
        let person = members.iter().min().unwrap_or(first);
        let mut insert = Sql::new("INSERT INTO patient_person (patient_id, person_id) VALUES ");
        for (i, member) in members.iter().enumerate() {
            if i > 0 {
                insert.push(", ");
            }
            insert
                .push("(")
                .bind(Bind::Text(member.clone()))
                .push(", ")
                .bind(Bind::Text(person.clone()))
                .push(")");
        }
        self.execute(&insert)?;
        Ok(())
    }
}
