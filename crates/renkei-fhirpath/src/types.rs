//! Minimal FHIR R4 type knowledge needed by the evaluator.
//!
//! We deliberately do not load StructureDefinitions: the evaluator works on raw
//! JSON, so type information comes from three places only — the `resourceType`
//! of resources, the suffix of choice-type keys (`valueQuantity` → `Quantity`),
//! and the JSON kind of a value as a last resort (see [`json_kind_matches`]).

use serde_json::Value;

/// FHIR R4 primitive type names (as they appear in StructureDefinitions).
const PRIMITIVES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
];

/// FHIR R4 complex data types that can appear as the type of a choice element.
const COMPLEX: &[&str] = &[
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Identifier",
    "Meta",
    "Money",
    "ParameterDefinition",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "Timing",
    "TriggerDefinition",
    "UsageContext",
];

/// Maps the suffix of a choice key (`DateTime` in `effectiveDateTime`) to the
/// FHIR type name (`dateTime`). Returns `None` when the suffix is not a FHIR
/// data type, which is how we tell `valueQuantity` (choice) from e.g.
/// `codeFilter` (an unrelated element that merely starts with `code`).
pub fn choice_suffix_type(suffix: &str) -> Option<&'static str> {
    let mut chars = suffix.chars();
    let first = chars.next()?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    if let Some(c) = COMPLEX.iter().find(|c| **c == suffix) {
        return Some(c);
    }
    let rest = chars.as_str();
    PRIMITIVES.iter().copied().find(|p| {
        let mut pc = p.chars();
        pc.next()
            .is_some_and(|f| f.eq_ignore_ascii_case(&first) && pc.as_str() == rest)
    })
}

/// The key suffix used in JSON for a FHIR type name (`dateTime` → `DateTime`).
pub fn type_to_suffix(type_name: &str) -> String {
    let mut chars = type_name.chars();
    match chars.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// Resources that are not DomainResources (they have no text/contained/extension).
const NON_DOMAIN_RESOURCES: &[&str] = &["Binary", "Bundle", "Parameters"];

/// Direct supertype of a FHIR type, following R4 StructureDefinition
/// `baseDefinition` for the types where it matters to `is`/`as`.
fn parent_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "code" | "id" | "markdown" => "string",
        "url" | "canonical" | "oid" | "uuid" => "uri",
        "positiveInt" | "unsignedInt" => "integer",
        "Age" | "Count" | "Distance" | "Duration" | "MoneyQuantity" | "SimpleQuantity" => {
            "Quantity"
        }
        "DomainResource" => "Resource",
        "Resource" => return None,
        _ if is_resource_type_name(t) => {
            if NON_DOMAIN_RESOURCES.contains(&t) {
                "Resource"
            } else {
                "DomainResource"
            }
        }
        _ => return None,
    })
}

/// Resource type names are capitalised identifiers that are not data types.
fn is_resource_type_name(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
        && !COMPLEX.contains(&t)
        && !matches!(
            t,
            "MoneyQuantity" | "SimpleQuantity" | "Element" | "BackboneElement"
        )
}

/// Normalises a type specifier as written in an expression: strips the `FHIR.`
/// namespace and maps `System.*` types onto their FHIR counterparts.
pub fn normalize_type_specifier(spec: &str) -> &str {
    if let Some(rest) = spec.strip_prefix("FHIR.") {
        return rest;
    }
    match spec {
        "System.String" => "string",
        "System.Boolean" => "boolean",
        "System.Integer" => "integer",
        "System.Decimal" => "decimal",
        "System.Date" => "date",
        "System.DateTime" => "dateTime",
        "System.Time" => "time",
        "System.Quantity" => "Quantity",
        // Unqualified, a name no FHIR type has is a System type: the R4 search parameters
        // write `value.as(DateTime)` for FHIR's `dateTime`.
        "String" => "string",
        "Boolean" => "boolean",
        "Integer" => "integer",
        "Decimal" => "decimal",
        "Date" => "date",
        "DateTime" => "dateTime",
        "Time" => "time",
        other => other,
    }
}

/// True when `actual` is `wanted` or one of its subtypes.
pub fn type_is(actual: &str, wanted: &str) -> bool {
    let wanted = normalize_type_specifier(wanted);
    let mut current = actual;
    // The hierarchy is at most three levels deep; the bound is belt and braces.
    for _ in 0..8 {
        if current == wanted {
            return true;
        }
        match parent_type(current) {
            Some(p) => current = p,
            None => return false,
        }
    }
    false
}

/// Fallback type test for values whose FHIR type is unknown (plain elements,
/// because we have no StructureDefinitions). We only look at the JSON kind:
/// a JSON string may be any string-represented primitive, so `birthDate as date`
/// and `status as code` both succeed. This is lenient by design — the search
/// parameter expressions only use `as`/`is` to pick between choice types,
/// which are always typed precisely.
pub fn json_kind_matches(value: &Value, wanted: &str) -> bool {
    let wanted = normalize_type_specifier(wanted);
    match value {
        Value::Bool(_) => wanted == "boolean",
        Value::Number(n) => {
            let integral = n.is_i64() || n.is_u64();
            match wanted {
                "decimal" => true,
                "integer" | "positiveInt" | "unsignedInt" => integral,
                _ => false,
            }
        }
        Value::String(_) => matches!(
            wanted,
            "string"
                | "code"
                | "id"
                | "markdown"
                | "uri"
                | "url"
                | "canonical"
                | "oid"
                | "uuid"
                | "date"
                | "dateTime"
                | "instant"
                | "time"
                | "base64Binary"
                | "xhtml"
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_suffixes() {
        assert_eq!(choice_suffix_type("Quantity"), Some("Quantity"));
        assert_eq!(choice_suffix_type("DateTime"), Some("dateTime"));
        assert_eq!(choice_suffix_type("Base64Binary"), Some("base64Binary"));
        assert_eq!(choice_suffix_type("Filter"), None);
        assert_eq!(choice_suffix_type("string"), None);
        assert_eq!(choice_suffix_type(""), None);
    }

    #[test]
    fn subtyping() {
        assert!(type_is("code", "string"));
        assert!(type_is("Age", "Quantity"));
        assert!(type_is("Patient", "Resource"));
        assert!(type_is("Patient", "DomainResource"));
        assert!(!type_is("Bundle", "DomainResource"));
        assert!(type_is("Patient", "FHIR.Patient"));
        assert!(!type_is("Quantity", "Age"));
        assert!(type_is("string", "System.String"));
    }
}
