//! The consent decision as a SQL predicate over a `resources` row (alias `r`), so reads,
//! searches, includes, history and counts only ever see permitted rows. The semantics mirror
//! `renkei_consent::decide`; the repository's tests check both agree.

use crate::sql::{Bind, Sql};

/// The reference-index rows of a stored Bundle naming the records its entries refer to. They
/// are for consent's label propagation (`relabel_referrers`) only: a refusal or permission of
/// a record "and everything related" does not reach a Bundle through them (Bundles are
/// decided as a whole, see `push_match`), nor do `_include=*`/`_revinclude=*`.
pub const BUNDLE_ENTRY_REFERENCE: &str = "_entry";

/// The reference-index rows of a record naming what it refers to where no search parameter
/// does (an AllergyIntolerance's `encounter`, a Binary's `securityContext`, a contained
/// resource's references). They are for consent only: a refusal or permission of a record "and
/// everything related" reaches the record through them, and label propagation finds it; no
/// search, chain, `_has` or `_include=*`/`_revinclude=*` follows them.
pub const UNSEARCHABLE_REFERENCE: &str = "_reference";

/// The reference-index rows of a record about the patient of what it refers to (a Binary's
/// `securityContext`, a Provenance's `target`) naming the records it follows: those it refers
/// to and, in turn, those they follow. Consent decides such a record as it decides them: a
/// refusal or permission of one of them by `data` (`instance`) or by `class` reaches it, and one
/// following a stored Bundle is decided as the Bundle is. For consent only, like
/// [`UNSEARCHABLE_REFERENCE`].
pub const FOLLOWED_RECORD: &str = "_follows";

/// The reference-index rows of such a record naming what the records it follows refer to, so
/// that a refusal of "this admission and everything related" reaches the scan of a lab result
/// of that admission as it reaches the result. For consent only.
pub const FOLLOWED_REFERENCE: &str = "_followed";

/// The patient of a record whose patient cannot be told (it names its patient only by
/// identifier, refers to several patients' data or to data its writer may not see): no Patient
/// record has this id (ids hold no colon), and only its holder sees it, whatever the implicit
/// policy says of patients without consent.
pub const UNRESOLVED_PATIENT: &str = "urn:renkei:unresolved-patient";

/// System of the national privacy tags (`UNDELIVERED`, `UNINFORMED`).
pub const PRIVACY_TAG_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication";

/// The privacy tag of data its holder has not released (`UNDELIVERED`): never shown to another
/// facility or to the patient.
pub const WITHHELD_TAG: &str = "UNDELIVERED";

/// Who is looking, reduced to what the predicate needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Internal work (loaders, reindex, the gateway's own bookkeeping).
    Unrestricted,
    /// A member facility's system or practitioner.
    Facility {
        organization: String,
        practitioner: Option<String>,
        purpose: String,
        now_ms: i64,
        /// Break-glass granted for this request, for the data of this patient (a `Patient`
        /// id) and of the records linked to it as the same person: break-glass opens one
        /// patient's record, never the network (every other row is decided by consent).
        break_glass: Option<String>,
        /// Whether a patient's explicit deny still holds under break-glass.
        deny_holds_on_break_glass: bool,
        /// Implicit policy for patients without any consent: true = opt-out network.
        implicit_permit: bool,
    },
    /// A patient looking at their own record: their data filed under it and under every
    /// record linked to it as the same person.
    Patient { patient_id: String },
    /// Roles without access to clinical data (auditor, administrator).
    Nothing,
}

impl Visibility {
    /// Whether this requester sees the superseded versions of a record held by `custodian`.
    /// Consent is decided on a record's current version (its patient, labels and tags); an
    /// earlier version may have been about another patient or carried a label that hid it,
    /// so only the facility holding the record (and internal work) sees earlier versions.
    pub fn sees_earlier_versions(&self, custodian: Option<&str>) -> bool {
        match self {
            Visibility::Unrestricted => true,
            Visibility::Facility { organization, .. } => custodian == Some(organization.as_str()),
            Visibility::Patient { .. } | Visibility::Nothing => false,
        }
    }

    /// ` AND …`: the SQL form of [`Visibility::sees_earlier_versions`] for resource row `r`.
    pub fn push_earlier_versions_predicate(&self, sql: &mut Sql, r: &str) {
        match self {
            Visibility::Unrestricted => {}
            Visibility::Facility { organization, .. } => {
                sql.push(&format!(" AND {r}.custodian = "))
                    .bind(Bind::Text(organization.clone()));
            }
            Visibility::Patient { .. } | Visibility::Nothing => {
                sql.push(" AND 1 = 0");
            }
        }
    }
}

fn tag_exists(sql: &mut Sql, r: &str, code: &str) {
    sql.push(&format!("EXISTS (SELECT 1 FROM idx_token tg WHERE tg.rid = {r}.rid AND tg.param = '_tag' AND tg.system = "))
        .bind(Bind::Text(PRIVACY_TAG_SYSTEM.into()))
        .push(" AND tg.code = ")
        .bind(Bind::Text(code.into()))
        .push(")");
}

/// `(<row r carries a privacy tag withholding it from its patient>)`: `UNINFORMED` (not yet
/// told to them) or `UNDELIVERED` (its holder's alone).
pub(crate) fn push_withheld_from_patient(sql: &mut Sql, r: &str) {
    sql.push("(");
    tag_exists(sql, r, "UNINFORMED");
    sql.push(" OR ");
    tag_exists(sql, r, WITHHELD_TAG);
    sql.push(")");
}

/// Whose rules: the patient of resource row `r`, or one bound patient id.
#[derive(Clone, Copy)]
enum PersonOf<'a> {
    Row(&'a str),
    Patient(&'a str),
}

impl PersonOf<'_> {
    fn push(self, sql: &mut Sql) {
        match self {
            PersonOf::Row(r) => {
                sql.push(&format!("{r}.patient_id"));
            }
            PersonOf::Patient(id) => {
                sql.push("CAST(")
                    .bind(Bind::Text(id.to_string()))
                    .push(" AS TEXT)");
            }
        }
    }
}

/// `(<row r's patient is the break-glass patient or a record linked to it as the same
/// person>)`: the rows break-glass opens. The person, not the record, because consent follows
/// the person too (CONSENT.md, rule 5): the emergency is about the person in front of the
/// doctor, whichever facility's record names them.
fn push_in_break_glass_person(sql: &mut Sql, r: &str, patient: &str) {
    crate::identity::push_in_person_of(sql, &format!("{r}.patient_id"), patient, "bgp");
}

/// `<the records of the person> {alias}r JOIN consent_rules {alias}`: a consent on any record
/// of a person applies to all of that person's records. Driving from the person's records (one,
/// or a few when linked) lets the `(patient_id, permit)` index find their rules; a condition
/// `patient_id = r.patient_id OR patient_id IN (…)` instead made PostgreSQL scan every rule.
fn push_person_rules(sql: &mut Sql, alias: &str, person: PersonOf<'_>) {
    sql.push("(SELECT ");
    person.push(sql);
    sql.push(" AS pid UNION ALL ");
    crate::identity::push_linked_records(sql, &format!("{alias}m"));
    person.push(sql);
    sql.push(&format!(" AND {alias}m2.patient_id <> "));
    person.push(sql);
    sql.push(&format!(
        ") {alias}r JOIN consent_rules {alias} ON {alias}.patient_id = {alias}r.pid"
    ));
}

/// `MATCH(alias, r)` but the patient: rule row `alias` applies to resource row `r` for this
/// requester (the caller joins the rules of `r`'s person).
fn push_match(sql: &mut Sql, alias: &str, r: &str, v: &FacilityArgs<'_>) {
    push_requester_match(sql, alias, v);
    // A stored Bundle holds records of any type, date and reference: a refusal limited by
    // them applies to it, and a permission so limited does not open it: it is related to
    // nothing through its own reference rows (its patient's, its entries')
    // (renkei_consent::Rule::matches). A permission's data period holds the records dated
    // within it; a refusal's, every record whose care overlaps it (Rule::data_period_holds).
    // A NULL date compares to nothing, so an undated record is under neither. A record that
    // follows others (FOLLOWED_RECORD) is decided as they are: of their type, within what they
    // are, and as a Bundle when it follows one.
    let follows = |alias: &str, condition: &str| {
        format!(
            "EXISTS (SELECT 1 FROM idx_reference {alias} WHERE {alias}.rid = {r}.rid \
             AND {alias}.param = '{FOLLOWED_RECORD}' AND {condition})"
        )
    };
    let refused_content = format!(
        "(NOT {alias}.permit AND ({r}.res_type = 'Bundle' OR {}))",
        follows("fb", "fb.target_type = 'Bundle'")
    );
    // A permission of a type opens a record of that type that follows nothing; one that
    // follows others is content of theirs (the scan of a result), opened when all it follows
    // is of the type. A refusal of its own type, or of any type it follows, reaches it.
    let own_type_counts = format!("(NOT {alias}.permit OR NOT {})", follows("fo", "1 = 1"));
    let follows_class = format!(
        "({} AND (NOT {alias}.permit OR NOT {}))",
        follows("fc", &format!("fc.target_type = {alias}.class_type")),
        follows("fx", &format!("fx.target_type <> {alias}.class_type"))
    );
    let follows_data = follows(
        "fd",
        &format!("fd.target_type || '/' || fd.target_id = {alias}.data_reference"),
    );
    sql.push(&format!(
        " AND ({a}.class_type IS NULL OR ({a}.class_type = {r}.res_type AND {own_type_counts}) OR {b} OR {follows_class}) \
         AND ({a}.label_system IS NULL OR EXISTS (SELECT 1 FROM idx_token sl WHERE sl.rid = {r}.rid \
              AND sl.param = '_security' AND sl.system = {a}.label_system AND sl.code = {a}.label_code)) \
         AND ({a}.data_from IS NULL OR {b} \
              OR ({a}.permit AND {r}.clinical_date >= {a}.data_from) \
              OR (NOT {a}.permit AND COALESCE({r}.clinical_end, {r}.clinical_date) >= {a}.data_from)) \
         AND ({a}.data_to IS NULL OR {b} \
              OR ({a}.permit AND {r}.clinical_date <= {a}.data_to) \
              OR (NOT {a}.permit AND COALESCE({r}.clinical_end, {r}.clinical_date) IS NOT NULL \
                  AND ({r}.clinical_date IS NULL OR {r}.clinical_date <= {a}.data_to))) \
         AND ({a}.data_reference IS NULL OR {b} OR {a}.data_reference = {r}.res_type || '/' || {r}.res_id OR {follows_data}) \
         AND ({a}.data_related IS NULL OR {b} OR {a}.data_related = {r}.res_type || '/' || {r}.res_id \
              OR ({r}.res_type <> 'Bundle' AND EXISTS (SELECT 1 FROM idx_reference rl WHERE rl.rid = {r}.rid AND rl.target_type || '/' || rl.target_id = {a}.data_related))) \
         AND ({a}.data_custodian IS NULL OR {a}.data_custodian = {r}.custodian)",
        a = alias,
        r = r,
        b = refused_content
    ));
}

/// The part of a rule's match that depends on who asks and when, not on the resource.
fn push_requester_match(sql: &mut Sql, alias: &str, v: &FacilityArgs<'_>) {
    sql.push(&format!(
        "({alias}.actor_org IS NULL OR {alias}.actor_org = "
    ))
    .bind(Bind::Text(v.organization.into()))
    .push(&format!(
        ") AND ({alias}.actor_practitioner IS NULL OR {alias}.actor_practitioner = "
    ))
    .bind(Bind::OptText(v.practitioner.map(str::to_string)))
    .push(&format!(
        ") AND ({alias}.purpose IS NULL OR {alias}.purpose = "
    ))
    .bind(Bind::Text(v.purpose.into()));
    // Emergency treatment is treatment (renkei_consent::Purpose::is_covered_by).
    if v.purpose == "ETREAT" {
        sql.push(&format!(" OR {alias}.purpose = "))
            .bind(Bind::Text("TREAT".into()));
    }
    sql.push(&format!(
        ") AND ({alias}.valid_from IS NULL OR {alias}.valid_from <= "
    ))
    .bind(Bind::Int(v.now_ms))
    .push(&format!(
        ") AND ({alias}.valid_to IS NULL OR {alias}.valid_to >= "
    ))
    .bind(Bind::Int(v.now_ms))
    .push(")");
}

/// Rule `alias` decides differently for different resources of its person: it is an exception
/// nested in another provision, or it limits types, labels, dates, data or custodians.
fn push_depends_on_resource(sql: &mut Sql, alias: &str) {
    sql.push(&format!("{alias}.nested = "))
        .bind(Bind::Bool(true))
        .push(&format!(
            " OR {a}.class_type IS NOT NULL OR {a}.label_system IS NOT NULL \
             OR {a}.data_from IS NOT NULL OR {a}.data_to IS NOT NULL \
             OR {a}.data_reference IS NOT NULL OR {a}.data_related IS NOT NULL \
             OR {a}.data_custodian IS NOT NULL",
            a = alias
        ));
}

/// An effective matching deny exists among the person's rules.
fn push_effective_deny_exists(sql: &mut Sql, r: &str, v: &FacilityArgs<'_>) {
    sql.push("EXISTS (");
    push_effective_denies(sql, "1", r, v);
    sql.push(")");
}

/// `SELECT <columns> FROM <row r's person's rules> d WHERE <d is an effective deny for r>`.
fn push_effective_denies(sql: &mut Sql, columns: &str, r: &str, v: &FacilityArgs<'_>) {
    sql.push(&format!("SELECT {columns} FROM "));
    push_person_rules(sql, "d", PersonOf::Row(r));
    sql.push(" WHERE ");
    push_effective_deny(sql, "d", r, v);
}

/// `(SELECT …)`: the Consent of the first effective deny among row `r`'s person's rules, the
/// refusal a break-glass request overrides; NULL when none applies.
fn push_overridden_refusal(sql: &mut Sql, r: &str, v: &FacilityArgs<'_>) {
    sql.push("(");
    push_effective_denies(sql, "d.consent_ref", r, v);
    sql.push(" ORDER BY d.consent_ref LIMIT 1)");
}

/// Rule `d` is an effective deny for row `r`: a matching deny that no matching nested permit
/// of the same Consent cancels (the exception of a "deny, except ..." consent).
fn push_effective_deny(sql: &mut Sql, d: &str, r: &str, v: &FacilityArgs<'_>) {
    sql.push(&format!("{d}.permit = "))
        .bind(Bind::Bool(false))
        .push(" AND ");
    push_match(sql, d, r, v);
    sql.push(" AND ");
    push_not_cancelled(sql, d, r, v);
}

/// Deny rule `d` is not cancelled by a matching nested permit of its own Consent.
fn push_not_cancelled(sql: &mut Sql, d: &str, r: &str, v: &FacilityArgs<'_>) {
    sql.push(&format!("NOT ({d}.nested = "))
        .bind(Bind::Bool(false))
        .push(&format!(
            " AND EXISTS (SELECT 1 FROM consent_rules e WHERE e.consent_rid = {d}.consent_rid AND e.permit = "
        ))
        .bind(Bind::Bool(true))
        .push(" AND e.nested = ")
        .bind(Bind::Bool(true))
        .push(" AND ");
    // `e` belongs to the same Consent as `d`, hence to the same patient.
    push_match(sql, "e", r, v);
    sql.push("))");
}

/// The consent decision for row `r` in one pass over its person's rules: an effective
/// matching deny refuses, else a matching permit grants, else (with an implicit permit) a
/// person without any rule is visible. One correlated subquery instead of one per rule kind,
/// because it runs for every foreign row a search returns.
///
/// With a `focus` patient (the search names one), rows of that patient first try the same
/// decision made once for the whole query: an uncorrelated subquery over the focus patient's
/// rules, which the database evaluates once. It answers NULL when a rule that applies to this
/// requester depends on the resource ([`push_depends_on_resource`]); those rows, and rows of
/// other patients, take the per-row decision.
fn push_consent_permits(
    sql: &mut Sql,
    r: &str,
    v: &FacilityArgs<'_>,
    implicit_permit: bool,
    focus: Option<&str>,
) {
    let Some(patient) = focus else {
        push_row_decision(sql, r, v, implicit_permit);
        sql.push(" = 1");
        return;
    };
    sql.push(&format!("COALESCE(CASE WHEN {r}.patient_id = "))
        .bind(Bind::Text(patient.to_string()))
        .push(" THEN (SELECT CASE WHEN MAX(CASE WHEN (");
    push_requester_match(sql, "f", v);
    sql.push(") AND (");
    push_depends_on_resource(sql, "f");
    sql.push(") THEN 1 ELSE 0 END) = 1 THEN NULL WHEN MAX(CASE WHEN f.permit = ")
        .bind(Bind::Bool(false))
        .push(" AND ");
    push_requester_match(sql, "f", v);
    sql.push(" THEN 1 ELSE 0 END) = 1 THEN 0 WHEN MAX(CASE WHEN f.permit = ")
        .bind(Bind::Bool(true))
        .push(" AND ");
    push_requester_match(sql, "f", v);
    sql.push(" THEN 1 ELSE 0 END) = 1 THEN 1");
    push_implicit(sql, implicit_permit);
    push_person_rules(sql, "f", PersonOf::Patient(patient));
    sql.push(") END, ");
    push_row_decision(sql, r, v, implicit_permit);
    sql.push(") = 1");
}

/// ` [WHEN COUNT(*) = 0 THEN 1] ELSE 0 END FROM `: the implicit policy for a person without
/// any rule, closing the decision's `CASE`.
fn push_implicit(sql: &mut Sql, implicit_permit: bool) {
    if implicit_permit {
        sql.push(" WHEN COUNT(*) = 0 THEN 1");
    }
    sql.push(" ELSE 0 END FROM ");
}

/// `(SELECT <1 or 0> FROM <r's person's rules>)`: the decision for row `r` alone. Each rule's
/// match is written once and scores 2 (an effective deny), 1 (a permit) or 0; the highest score
/// decides, and a person without any rule (no score at all, -1) takes the implicit policy. With
/// the match written twice, once for denies and once for permits, PostgreSQL built the
/// executor state of its subplans twice on every facility search, whether or not a row needed
/// them, and a foreign row was matched against each rule twice.
fn push_row_decision(sql: &mut Sql, r: &str, v: &FacilityArgs<'_>, implicit_permit: bool) {
    sql.push("(SELECT CASE COALESCE(MAX(CASE WHEN ");
    push_match(sql, "c", r, v);
    sql.push(" THEN CASE WHEN c.permit = ")
        .bind(Bind::Bool(true))
        .push(" THEN 1 WHEN ");
    push_not_cancelled(sql, "c", r, v);
    sql.push(&format!(
        " THEN 2 ELSE 0 END ELSE 0 END), -1) WHEN 2 THEN 0 WHEN 1 THEN 1 WHEN -1 THEN {} ELSE 0 END FROM ",
        i32::from(implicit_permit)
    ));
    push_person_rules(sql, "c", PersonOf::Row(r));
    sql.push(")");
}

/// `COALESCE(…)`: the Consent that decides whether this facility requester may see row `r`,
/// NULL when no rule applies (the implicit policy). The rules of the row's person (its patient
/// record and every record linked to it), deny first, then by Consent so that every query names
/// the same one. When no rule matches but the person has a consent in force, that consent
/// decided (it does not permit this requester: step 8 of CONSENT.md), not the implicit policy:
/// one that permits someone, since a deny naming another facility refused nothing here.
fn push_row_decider(sql: &mut Sql, r: &str, v: &FacilityArgs<'_>) {
    sql.push("COALESCE((SELECT p.consent_ref FROM ");
    push_person_rules(sql, "p", PersonOf::Row(r));
    sql.push(" WHERE ");
    push_match(sql, "p", r, v);
    sql.push(" ORDER BY p.permit ASC, p.consent_ref LIMIT 1), (SELECT q.consent_ref FROM ");
    push_person_rules(sql, "q", PersonOf::Row(r));
    sql.push(" ORDER BY q.permit DESC, q.consent_ref LIMIT 1))");
}

struct FacilityArgs<'a> {
    organization: &'a str,
    practitioner: Option<&'a str>,
    purpose: &'a str,
    now_ms: i64,
}

impl Visibility {
    /// Who asks and when, for a facility requester's rule matching.
    fn facility_args(&self) -> Option<FacilityArgs<'_>> {
        match self {
            Visibility::Facility {
                organization,
                practitioner,
                purpose,
                now_ms,
                ..
            } => Some(FacilityArgs {
                organization,
                practitioner: practitioner.as_deref(),
                purpose,
                now_ms: *now_ms,
            }),
            _ => None,
        }
    }

    /// How `organization` sees the network for treatment, under this facility view's policy
    /// and clock (no practitioner, no break-glass); `None` for other views, whose policy is
    /// not known here.
    pub fn facility_treating(&self, organization: &str) -> Option<Visibility> {
        match self {
            Visibility::Facility {
                deny_holds_on_break_glass,
                implicit_permit,
                now_ms,
                ..
            } => Some(Visibility::Facility {
                organization: organization.to_string(),
                practitioner: None,
                purpose: "TREAT".into(),
                now_ms: *now_ms,
                break_glass: None,
                deny_holds_on_break_glass: *deny_holds_on_break_glass,
                implicit_permit: *implicit_permit,
            }),
            _ => None,
        }
    }

    /// What the predicate answers for a row whose custodian and patient are known, when those
    /// two columns alone settle it: every row for internal work, none for roles without
    /// clinical access, and for a facility its own rows and rows about no patient (the first
    /// two alternatives of [`Visibility::push_predicate_focused`]). `None` when the answer
    /// depends on consent or privacy tags and only the query can give it.
    pub fn settled_by_row(
        &self,
        custodian: Option<&str>,
        patient_id: Option<&str>,
    ) -> Option<bool> {
        match self {
            Visibility::Unrestricted => Some(true),
            Visibility::Nothing => Some(false),
            Visibility::Patient { .. } => None,
            Visibility::Facility { organization, .. } => {
                (custodian == Some(organization.as_str()) || patient_id.is_none()).then_some(true)
            }
        }
    }

    /// Appends ` AND (<predicate>)` for rows aliased `r`.
    pub fn push_predicate(&self, sql: &mut Sql) {
        self.push_predicate_for(sql, "r");
    }

    /// Appends ` AND (<predicate>)` for `resources` rows aliased `r`.
    pub fn push_predicate_for(&self, sql: &mut Sql, r: &str) {
        self.push_predicate_focused(sql, r, None);
    }

    /// [`Visibility::push_predicate_for`] for a query about one patient's data (`patient=X`,
    /// a compartment, `$everything`): a facility's consent decision for that patient's rows is
    /// then made once per query instead of once per row where the rules allow it. Rows of any
    /// other patient are still decided one by one, so a wrong guess costs time, not results.
    pub fn push_predicate_focused(&self, sql: &mut Sql, r: &str, focus: Option<&str>) {
        match self {
            Visibility::Unrestricted => {}
            Visibility::Nothing => {
                sql.push(" AND 1 = 0");
            }
            Visibility::Patient { patient_id } => {
                // The person's data, whichever facility's record of them it is filed under
                // (IDENTITY.md): consent follows the person, and so does the patient's view.
                sql.push(" AND ");
                crate::identity::push_in_person_of(
                    sql,
                    &format!("{r}.patient_id"),
                    patient_id,
                    &format!("{r}self"),
                );
                sql.push(" AND NOT ");
                push_withheld_from_patient(sql, r);
            }
            Visibility::Facility {
                break_glass,
                deny_holds_on_break_glass,
                implicit_permit,
                ..
            } => {
                let Some(args) = self.facility_args() else {
                    return;
                };
                sql.push(&format!(" AND ({r}.custodian = "))
                    .bind(Bind::Text(args.organization.to_string()))
                    .push(&format!(" OR {r}.patient_id IS NULL OR (NOT "));
                tag_exists(sql, r, WITHHELD_TAG);
                sql.push(&format!(" AND {r}.patient_id <> "))
                    .bind(Bind::Text(UNRESOLVED_PATIENT.into()))
                    .push(" AND ");
                if let Some(patient) = break_glass {
                    // Break-glass stands in for a permit on its patient's rows only; an
                    // explicit deny may still hold. Rows of anyone else take the consent
                    // decision they would take without it.
                    sql.push("((");
                    push_in_break_glass_person(sql, r, patient);
                    sql.push(" AND ");
                    if *deny_holds_on_break_glass {
                        sql.push("NOT ");
                        push_effective_deny_exists(sql, r, &args);
                    } else {
                        sql.push("1 = 1");
                    }
                    sql.push(") OR ");
                    push_consent_permits(sql, r, &args, *implicit_permit, focus);
                    sql.push(")");
                } else {
                    push_consent_permits(sql, r, &args, *implicit_permit, focus);
                }
                sql.push("))");
            }
        }
    }

    /// `, <what decides>`: for a facility's search, a column naming what decides consent for
    /// each returned row held by another facility, so the AuthZ-Consent event of a page needs
    /// no statement of its own: the first matching deny rule's Consent, else the first
    /// matching permit's, else `''` (no rule applies: the implicit policy). About one patient
    /// (`focus`), it is uncorrelated like the once-per-query decision
    /// ([`push_consent_permits`]) and evaluated once; it is NULL there when a rule that applies
    /// to this requester depends on the resource. Without a focus it is the row's own
    /// [`crate::Tx::deciding_consent`], written only when `per_row` says the query evaluates
    /// it for the rows it returns alone: SQLite computes a select-list column before it sorts,
    /// so on a page ordered by `_sort` it would decide every match, not just the page. NULL on
    /// the facility's own rows, for break-glass, for other requesters and where not written;
    /// the caller then asks [`crate::Tx::deciding_consent`] for the row.
    pub fn push_decider(&self, sql: &mut Sql, r: &str, focus: Option<&str>, per_row: bool) {
        let break_glass = matches!(
            self,
            Visibility::Facility {
                break_glass: Some(_),
                ..
            }
        );
        let left_out = break_glass || (focus.is_none() && !per_row);
        let (Some(args), false) = (self.facility_args(), left_out) else {
            sql.push(", CAST(NULL AS TEXT)");
            return;
        };
        let Some(patient) = focus else {
            // Correlated, and evaluated only for a returned row about a patient held by
            // another facility: a statement of its own per patient on the page cost a
            // consented search about a round trip more than the owner's.
            sql.push(&format!(
                ", CASE WHEN {r}.patient_id IS NOT NULL AND {r}.custodian <> "
            ))
            .bind(Bind::Text(args.organization.to_string()))
            .push(" THEN COALESCE(");
            push_row_decider(sql, r, &args);
            sql.push(", '') END");
            return;
        };
        sql.push(&format!(", CASE WHEN {r}.patient_id = "))
            .bind(Bind::Text(patient.to_string()))
            .push(&format!(" AND {r}.custodian <> "))
            .bind(Bind::Text(args.organization.to_string()))
            .push(" THEN (SELECT CASE WHEN MAX(CASE WHEN (");
        push_requester_match(sql, "g", &args);
        sql.push(") AND (");
        push_depends_on_resource(sql, "g");
        sql.push(") THEN 1 ELSE 0 END) = 1 THEN NULL ELSE COALESCE((SELECT f.consent_ref FROM ");
        push_person_rules(sql, "f", PersonOf::Patient(patient));
        sql.push(" WHERE ");
        push_requester_match(sql, "f", &args);
        sql.push(" ORDER BY f.permit ASC, f.consent_ref LIMIT 1), '') END FROM ");
        push_person_rules(sql, "g", PersonOf::Patient(patient));
        sql.push(") END");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facility(organization: &str) -> Visibility {
        Visibility::Facility {
            organization: organization.into(),
            practitioner: None,
            purpose: "TREAT".into(),
            now_ms: 5,
            break_glass: None,
            deny_holds_on_break_glass: true,
            implicit_permit: false,
        }
    }

    #[test]
    fn only_a_rows_own_columns_settle_it_without_a_statement() {
        let clinic = facility("Organization/a");
        let own = clinic.settled_by_row(Some("Organization/a"), Some("p1"));
        let no_patient = clinic.settled_by_row(Some("Organization/b"), None);
        let foreign = clinic.settled_by_row(Some("Organization/b"), Some("p1"));
        let unowned = clinic.settled_by_row(None, Some("p1"));
        assert_eq!(
            (own, no_patient, foreign, unowned),
            (Some(true), Some(true), None, None)
        );
        let patient = Visibility::Patient {
            patient_id: "p1".into(),
        };
        // A patient's own records may still carry a privacy tag the query must check.
        assert_eq!(
            patient.settled_by_row(Some("Organization/a"), Some("p1")),
            None
        );
        assert_eq!(
            Visibility::Nothing.settled_by_row(Some("Organization/a"), None),
            Some(false)
        );
        assert_eq!(
            Visibility::Unrestricted.settled_by_row(None, Some("p1")),
            Some(true)
        );
    }

    #[test]
    fn unrestricted_adds_nothing_and_nothing_adds_false() {
        let mut sql = Sql::new("SELECT 1 FROM resources r WHERE 1 = 1");
        Visibility::Unrestricted.push_predicate(&mut sql);
        assert_eq!(sql.render(false), "SELECT 1 FROM resources r WHERE 1 = 1");
        Visibility::Nothing.push_predicate(&mut sql);
        assert!(sql.render(false).ends_with("AND 1 = 0"));
    }

    #[test]
    fn facility_predicate_binds_its_values() {
        let mut sql = Sql::new("");
        facility("Organization/a").push_predicate(&mut sql);
        let text = sql.render(false);
        assert!(text.contains("r.custodian = ?"));
        assert!(text.contains("c.permit = ?"));
        assert!(
            !text.contains("Organization/a"),
            "values must be bound, not inlined"
        );
        let open = text.matches('(').count();
        let close = text.matches(')').count();
        assert_eq!(open, close);
    }
}

#[derive(diesel::QueryableByName)]
struct Found {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    #[allow(dead_code)]
    one: i64,
}

impl crate::Tx<'_> {
    /// Whether the requester may see `row`, read in this transaction (the same predicate
    /// searches use). A facility's own rows need no statement: reading one's own data by id
    /// is the most common request, and on PostgreSQL the predicate's statement alone took
    /// about 150 µs of server time, mostly setting up its plan.
    pub fn is_visible(
        &mut self,
        row: &crate::ResourceRow,
        visibility: &Visibility,
    ) -> Result<bool, crate::StoreError> {
        if let Some(settled) =
            visibility.settled_by_row(row.custodian.as_deref(), row.patient_id.as_deref())
        {
            return Ok(settled);
        }
        let mut sql = Sql::new("SELECT CAST(1 AS BIGINT) AS one FROM resources r WHERE r.rid = ");
        sql.bind(Bind::Int(row.rid));
        visibility.push_predicate(&mut sql);
        Ok(!self.load::<Found>(&sql)?.is_empty())
    }

    /// Whether `organization` holds a Patient record of the person `patient_id` belongs to:
    /// that record itself or one linked to it (IDENTITY.md). A clinical record written about
    /// a patient does not count: anyone can write one.
    pub fn holds_patient_record_of(
        &mut self,
        organization: &str,
        patient_id: &str,
    ) -> Result<bool, crate::StoreError> {
        let mut sql = Sql::new(
            "SELECT CAST(1 AS BIGINT) AS one FROM resources r WHERE r.res_type = 'Patient' AND r.custodian = ",
        );
        sql.bind(Bind::Text(organization.into()))
            .push(" AND r.deleted = ")
            .bind(Bind::Bool(false))
            .push(" AND ");
        crate::identity::push_in_person_of(&mut sql, "r.patient_id", patient_id, "hp");
        sql.push(" LIMIT 1");
        Ok(!self.load::<Found>(&sql)?.is_empty())
    }

    /// Whether `organization` holds the Patient record `patient_id` itself: it knows that
    /// patient exists, so it is told when a record about them is withheld (403) rather than
    /// missing (404). Neither a clinical record about the patient (anyone can write one) nor a
    /// Patient record linked to it as the same person (the link is not the requester's to
    /// learn) counts.
    pub fn holds_the_patient_record(
        &mut self,
        organization: &str,
        patient_id: &str,
    ) -> Result<bool, crate::StoreError> {
        let mut sql = Sql::new(
            "SELECT CAST(1 AS BIGINT) AS one FROM resources r WHERE r.res_type = 'Patient' AND r.res_id = ",
        );
        sql.bind(Bind::Text(patient_id.into()))
            .push(" AND r.custodian = ")
            .bind(Bind::Text(organization.into()))
            .push(" AND r.deleted = ")
            .bind(Bind::Bool(false));
        Ok(!self.load::<Found>(&sql)?.is_empty())
    }

    /// Whether `organization` holds any current record about the patient: such a facility
    /// searches its own records in the patient's compartment.
    pub fn holds_record_of(
        &mut self,
        organization: &str,
        patient_id: &str,
    ) -> Result<bool, crate::StoreError> {
        // Not a Patient id (ids hold no colon): the mark of a patient named only by
        // identifier or display, who is nobody's "same patient".
        if patient_id.contains(':') {
            return Ok(false);
        }
        let mut sql =
            Sql::new("SELECT CAST(1 AS BIGINT) AS one FROM resources r WHERE r.patient_id = ");
        sql.bind(Bind::Text(patient_id.into()))
            .push(" AND r.custodian = ")
            .bind(Bind::Text(organization.into()))
            .push(" AND r.deleted = ")
            .bind(Bind::Bool(false))
            .push(" LIMIT 1");
        Ok(!self.load::<Found>(&sql)?.is_empty())
    }
}

/// The resource row a consent decision is about.
#[derive(Debug, Clone, Copy)]
pub enum DecidedRow<'a> {
    /// A row by its key (a search or history row).
    Rid(i64),
    /// The current row of a resource (a single read, whichever version it asked for).
    Current { res_type: &'a str, id: &'a str },
}

/// A resource row's patient and custodian, and the Consent that decides whether a facility
/// requester may see it: a matching deny rule first (it wins), else a matching permit rule.
/// `consent_ref` is `None` when no rule applies (the implicit policy or ownership decided).
#[derive(Debug, diesel::QueryableByName)]
pub struct Decision {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub patient_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub custodian: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub consent_ref: Option<String>,
    /// The row carries the `UNDELIVERED` privacy tag: its holder has not released it, so no
    /// other facility sees it, whatever consent or break-glass say.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub withheld: bool,
    /// For a break-glass requester, the Consent whose refusal break-glass overrode to show the
    /// row (CONSENT.md, step 5); `None` otherwise.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub overridden_refusal: Option<String>,
    /// The row is about the patient a break-glass request was granted for: break-glass, not
    /// a Consent, is what shows it.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub by_break_glass: bool,
}

impl crate::Tx<'_> {
    /// What decides whether this facility requester may see `row`, for the AuthZ-Consent
    /// audit, found with the row in one statement. `None` when the row does not exist or the
    /// requester is not a facility.
    pub fn deciding_consent(
        &mut self,
        row: DecidedRow<'_>,
        visibility: &Visibility,
    ) -> Result<Option<Decision>, crate::StoreError> {
        let Some(args) = visibility.facility_args() else {
            return Ok(None);
        };
        let mut sql = Sql::new("SELECT r.patient_id, r.custodian, ");
        push_row_decider(&mut sql, "r", &args);
        sql.push(" AS consent_ref, ");
        tag_exists(&mut sql, "r", WITHHELD_TAG);
        sql.push(" AS withheld, ");
        match visibility {
            Visibility::Facility {
                break_glass: Some(patient),
                ..
            } => {
                // Only a row of the break-glass patient is shown by break-glass; any other
                // row is decided by consent alone, and overrides nothing.
                sql.push("CASE WHEN ");
                push_in_break_glass_person(&mut sql, "r", patient);
                sql.push(" THEN ");
                push_overridden_refusal(&mut sql, "r", &args);
                sql.push(" END AS overridden_refusal, CASE WHEN ");
                push_in_break_glass_person(&mut sql, "r", patient);
                sql.push(" THEN 1 = 1 ELSE 1 = 0 END AS by_break_glass");
            }
            _ => {
                sql.push("CAST(NULL AS TEXT) AS overridden_refusal, 1 = 0 AS by_break_glass");
            }
        }
        sql.push(" FROM resources r WHERE ");
        match row {
            DecidedRow::Rid(rid) => {
                sql.push("r.rid = ").bind(Bind::Int(rid));
            }
            DecidedRow::Current { res_type, id } => {
                sql.push("r.res_type = ")
                    .bind(Bind::Text(res_type.to_string()))
                    .push(" AND r.res_id = ")
                    .bind(Bind::Text(id.to_string()));
            }
        }
        Ok(self.load::<Decision>(&sql)?.into_iter().next())
    }
}
