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

impl Tx<'_> {
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
