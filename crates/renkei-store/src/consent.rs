//! Rows of `consent_rules`: a Consent compiled into flat rules, replaced with every write of
//! the Consent in the same transaction.

use crate::sql::{Bind, Sql};
use crate::{StoreError, Tx};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRuleRow {
    pub patient_id: String,
    pub permit: bool,
    /// From a nested provision: a nested permit cancels root denies of the same consent.
    pub nested: bool,
    pub actor_org: Option<String>,
    pub actor_practitioner: Option<String>,
    pub purpose: Option<String>,
    pub valid_from: Option<i64>,
    pub valid_to: Option<i64>,
    pub class_type: Option<String>,
    pub label: Option<(String, String)>,
    pub data_from: Option<i64>,
    pub data_to: Option<i64>,
    pub data_reference: Option<String>,
    pub data_related: Option<String>,
    pub data_custodian: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct ConsentRefRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    consent_ref: String,
}

impl Tx<'_> {
    /// The Consents in force on Patient record `patient_id` (`Consent/x`, at most `limit`):
    /// the ones with compiled rules (a Consent that is not active has none).
    pub fn consents_in_force_on(
        &mut self,
        patient_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.consents_in_force(patient_id, None, limit)
    }

    /// [`Tx::consents_in_force_on`] held by `custodian` (the facility that stored them).
    pub fn consents_in_force_on_held_by(
        &mut self,
        patient_id: &str,
        custodian: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.consents_in_force(patient_id, Some(custodian), limit)
    }

    fn consents_in_force(
        &mut self,
        patient_id: &str,
        custodian: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::new(
            "SELECT DISTINCT c.consent_ref AS consent_ref FROM consent_rules c \
             JOIN resources r ON r.rid = c.consent_rid WHERE c.patient_id = ",
        );
        sql.bind(Bind::Text(patient_id.into()));
        if let Some(custodian) = custodian {
            sql.push(" AND r.custodian = ")
                .bind(Bind::Text(custodian.into()));
        }
        sql.push(" ORDER BY c.consent_ref");
        sql.push_limit(limit);
        Ok(self
            .load::<ConsentRefRow>(&sql)?
            .into_iter()
            .map(|row| row.consent_ref)
            .collect())
    }

    /// Replaces the rules compiled from the Consent stored as `consent_rid`.
    pub fn replace_consent_rules(
        &mut self,
        consent_rid: i64,
        consent_ref: &str,
        rules: &[ConsentRuleRow],
    ) -> Result<(), StoreError> {
        let mut delete = Sql::new("DELETE FROM consent_rules WHERE consent_rid = ");
        delete.bind(Bind::Int(consent_rid));
        self.execute(&delete)?;
        for rule in rules {
            let mut insert = Sql::new(
                "INSERT INTO consent_rules (consent_rid, consent_ref, patient_id, permit, nested, actor_org, actor_practitioner, purpose, valid_from, valid_to, class_type, label_system, label_code, data_from, data_to, data_reference, data_related, data_custodian) VALUES (",
            );
            insert
                .bind(Bind::Int(consent_rid))
                .push(", ")
                .bind(Bind::Text(consent_ref.into()))
                .push(", ")
                .bind(Bind::Text(rule.patient_id.clone()))
                .push(", ")
                .bind(Bind::Bool(rule.permit))
                .push(", ")
                .bind(Bind::Bool(rule.nested))
                .push(", ")
                .bind(Bind::OptText(rule.actor_org.clone()))
                .push(", ")
                .bind(Bind::OptText(rule.actor_practitioner.clone()))
                .push(", ")
                .bind(Bind::OptText(rule.purpose.clone()))
                .push(", ")
                .bind(Bind::OptInt(rule.valid_from))
                .push(", ")
                .bind(Bind::OptInt(rule.valid_to))
                .push(", ")
                .bind(Bind::OptText(rule.class_type.clone()))
                .push(", ")
                .bind(Bind::OptText(rule.label.as_ref().map(|l| l.0.clone())))
                .push(", ")
                .bind(Bind::OptText(rule.label.as_ref().map(|l| l.1.clone())))
                .push(", ")
                .bind(Bind::OptInt(rule.data_from))
                .push(", ")
                .bind(Bind::OptInt(rule.data_to))
                .push(", ")
                .bind(Bind::OptText(rule.data_reference.clone()))
                .push(", ")
                .bind(Bind::OptText(rule.data_related.clone()))
                .push(", ")
                .bind(Bind::OptText(rule.data_custodian.clone()))
                .push(")");
            self.execute(&insert)?;
        }
        Ok(())
    }
}
