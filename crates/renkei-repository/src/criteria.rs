//! Search criteria of conditional interactions (`If-None-Exist`, `PUT/PATCH/DELETE Type?…`,
//! conditional references in transactions).

use crate::RepoError;
use renkei_search::plan::{parse, ParseOptions, SearchError, SearchPlan};
use renkei_store::Visibility;
use renkei_store::{SearchRow, Tx};

/// A parsed conditional query such as `identifier=urn:oid:1.2|123`, run on the search engine
/// (every search parameter of the type works; unknown parameters are refused).
#[derive(Debug, Clone, PartialEq)]
pub struct Criteria {
    pub res_type: String,
    plan: Box<SearchPlan>,
    visibility: Visibility,
}

/// Maps a search parsing error to the repository's error.
pub fn search_error(error: SearchError) -> RepoError {
    match error {
        SearchError::Invalid(message) => RepoError::BadRequest(message),
        SearchError::TooCostly(message) => RepoError::TooCostly(message),
        unknown @ SearchError::Unknown(_) => RepoError::NotSupported(unknown.to_string()),
    }
}

/// The parameters of a query string written inside a request (a conditional URL, a Bundle
/// entry's URL), decoded strictly as a query string is (`%FF` is no character), without
/// `_format` and `_pretty`, which choose no records. `what` names the text in an error.
pub(crate) fn decode_query_strict(
    query: &str,
    what: &str,
) -> Result<Vec<(String, String)>, RepoError> {
    let decode = |text: &str| {
        percent_decode_strict(text)
            .map_err(|reason| RepoError::BadRequest(format!("{what}: {reason}")))
    };
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(k)?;
        if !matches!(name.as_str(), "_format" | "_pretty") {
            params.push((name, decode(v)?));
        }
    }
    Ok(params)
}

impl Criteria {
    /// Parses the query part of `Type?query` (a Bundle entry's conditional URL, `ifNoneExist`
    /// or conditional reference), decoded as strictly as a request's own query: an escape
    /// that is not UTF-8 is refused, not turned into U+FFFD that could match a record.
    pub fn parse(res_type: &str, query: &str) -> Result<Criteria, RepoError> {
        let params = decode_query_strict(query, "conditional criteria")?;
        Criteria::from_pairs(res_type, &params)
    }

    /// Criteria from decoded `(parameter, value)` pairs.
    pub fn from_pairs(res_type: &str, params: &[(String, String)]) -> Result<Criteria, RepoError> {
        if params.is_empty() {
            return Err(RepoError::BadRequest(format!(
                "conditional criteria for {res_type} are empty"
            )));
        }
        if let Some((name, _)) = params.iter().find(|(_, v)| v.is_empty()) {
            return Err(RepoError::BadRequest(format!(
                "conditional criteria parameter '{name}' has no value"
            )));
        }
        for (name, value) in params {
            check_no_nul(name)
                .and_then(|()| check_no_nul(value))
                .map_err(|reason| {
                    RepoError::BadRequest(format!("conditional criteria: {reason}"))
                })?;
        }
        let plan = parse(
            &[res_type.to_string()],
            params,
            &ParseOptions {
                default_count: 2,
                max_count: usize::MAX,
                strict: true,
            },
        )
        .map_err(search_error)?;
        if plan.filters.is_empty() {
            return Err(RepoError::BadRequest(format!(
                "conditional criteria for {res_type} select nothing"
            )));
        }
        Ok(Criteria {
            res_type: res_type.to_string(),
            plan: Box::new(plan),
            visibility: Visibility::Unrestricted,
        })
    }

    /// Parses the criteria of a conditional create (`If-None-Exist`, `ifNoneExist`), which
    /// clients write as `query`, `?query` or `Type?query`.
    pub fn parse_if_none_exist(res_type: &str, text: &str) -> Result<Criteria, RepoError> {
        let (named, query) = Criteria::split_if_none_exist(text);
        if let Some(named) = named.filter(|named| named.rsplit('/').next() != Some(res_type)) {
            return Err(RepoError::BadRequest(format!(
                "the If-None-Exist criteria '{text}' name '{named}', but the {res_type} is created"
            )));
        }
        Criteria::parse(res_type, query)
    }

    /// What makes two `ifNoneExist` texts the same criteria: their parameters, URL-decoded and
    /// in any order (`identifier=a%7C1&_tag=x` and `_tag=x&identifier=a|1` find the same
    /// resources), whether or not they name the type first.
    pub fn if_none_exist_key(text: &str) -> Vec<(String, String)> {
        let (_, query) = Criteria::split_if_none_exist(text);
        let mut pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        pairs.sort();
        pairs
    }

    /// The type named before the criteria of a conditional create, if any, and the criteria.
    /// A `?` inside a value (`identifier=http://h/ids?x|1`) names no type.
    pub fn split_if_none_exist(text: &str) -> (Option<&str>, &str) {
        let text = text.strip_prefix('?').unwrap_or(text);
        match text.split_once('?') {
            Some((named, query)) if !named.contains(['=', '&']) => (Some(named), query),
            _ => (None, text),
        }
    }

    /// Parses `Type?query` (a conditional reference or request URL).
    pub fn parse_url(url: &str) -> Result<Criteria, RepoError> {
        let (res_type, query) = url
            .split_once('?')
            .ok_or_else(|| RepoError::BadRequest(format!("'{url}' has no search criteria")))?;
        let res_type = res_type.trim_start_matches('/');
        crate::interactions::check_type(res_type)?;
        Criteria::parse(res_type, query)
    }

    /// The current resources matching every parameter, at most `limit`, in the database.
    pub(crate) fn resolve(
        &self,
        tx: &mut Tx<'_>,
        limit: usize,
    ) -> Result<Vec<SearchRow>, RepoError> {
        let mut plan = (*self.plan).clone();
        plan.count = limit.max(1);
        plan.sort.clear();
        plan.includes.clear();
        plan.revincludes.clear();
        plan.cursor = None;
        plan.summary = None;
        plan.total = renkei_search::plan::Total::None;
        Ok(tx.search(&plan, &self.visibility)?.matches)
    }

    /// [`Criteria::resolve`] for a write that acts on what it finds (conditional create,
    /// update, patch, delete, references in a transaction): concurrent conditional writes
    /// take turns, so none acts on a search another one is about to make stale.
    pub(crate) fn resolve_for_write(
        &self,
        tx: &mut Tx<'_>,
        limit: usize,
    ) -> Result<Vec<SearchRow>, RepoError> {
        tx.serialize_conditional_writes()?;
        self.resolve(tx, limit)
    }

    /// For Patient records, matches only what `custodian` holds (`None`: a trusted writer,
    /// anything): each facility registers the person with a record of its own (IDENTITY.md),
    /// so another holder's record that happens to match (the network's directory Patient
    /// carrying every facility's local id) is not the writer's match. Other records are
    /// shared: a match held by someone else is still refused (403) rather than duplicated.
    pub fn held_by(mut self, custodian: Option<&str>) -> Self {
        if self.res_type != "Patient" {
            return self;
        }
        if let Some(custodian) = custodian {
            self.plan
                .filters
                .push(renkei_search::plan::Filter::HeldBy(custodian.to_string()));
        }
        self
    }

    /// `Type?query` of the parameters that took effect, percent-encoded (what an audit record
    /// names for a conditional interaction that found nothing).
    pub fn url(&self) -> String {
        let query: Vec<String> = self
            .plan
            .applied
            .iter()
            .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
            .collect();
        format!("{}?{}", self.res_type, query.join("&"))
    }

    /// Matches only what the requester may see: conditional interactions must not reveal
    /// (or act on) resources hidden from them.
    pub fn visible_to(mut self, visibility: Visibility) -> Self {
        self.visibility = visibility;
        self
    }
}

/// Percent-encodes a query name or value: unreserved characters and `:` stay as they are.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query component, leniently: a `%` not
/// followed by two hex digits stays as written, and invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(text: &str) -> String {
    String::from_utf8_lossy(&decode_escapes(text, false, true).unwrap_or_default()).into_owned()
}

/// Decodes a query component from a client's request, refusing what is not valid URL encoding
/// of UTF-8 text (a `%` not followed by two hex digits, bytes that are not UTF-8): such a value
/// cannot be what the client meant to search for.
pub fn percent_decode_strict(text: &str) -> Result<String, String> {
    let bytes = decode_escapes(text, true, true)?;
    let decoded =
        String::from_utf8(bytes).map_err(|_| format!("'{text}' does not decode to UTF-8 text"))?;
    check_no_nul(&decoded).map(|()| decoded)
}

/// A NUL character (`%00`) is no text anything is stored or searched as (PostgreSQL's text
/// cannot even hold one): refused, on both databases alike.
fn check_no_nul(text: &str) -> Result<(), String> {
    match text.contains('\0') {
        true => Err("a NUL character (%00) is not text to search for".into()),
        false => Ok(()),
    }
}

/// Free text (a header such as `X-Break-Glass-Reason`) with its well-formed `%XX` escapes
/// decoded; refused when they do not decode, with the text around them, to UTF-8. A `%` not
/// followed by two hex digits is a literal percent sign (a reason such as "SpO2 80%"), not an
/// error, and a `+` is a plus sign (a header is not a form).
pub fn percent_escapes_decode(text: &str) -> Result<String, String> {
    let bytes = decode_escapes(text, false, false)?;
    String::from_utf8(bytes)
        .map_err(|_| format!("'{text}' has escapes that do not decode to UTF-8 text"))
}

fn decode_escapes(text: &str, strict: bool, plus_is_space: bool) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let escaped = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match escaped {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None if strict => {
                        return Err(format!(
                            "'{text}' has a '%' that is not followed by two hex digits"
                        ))
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

impl Criteria {
    /// The matching current resources, for the interim `GET [type]?_id|identifier` search.
    pub fn find(
        &self,
        tx: &mut Tx<'_>,
        limit: usize,
    ) -> Result<Vec<crate::StoredResource>, RepoError> {
        Ok(self
            .resolve(tx, limit)?
            .into_iter()
            .filter_map(|row| {
                let body = row.body?;
                Some(crate::StoredResource {
                    custodian: None,
                    patient_id: None,
                    res_type: row.res_type,
                    id: row.res_id,
                    version: row.version,
                    last_updated: row.last_updated,
                    body,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn if_none_exist_criteria_compare_by_their_parameters() {
        let key = Criteria::if_none_exist_key;
        assert_eq!(
            key("identifier=a|1&_tag=x"),
            key("Patient?_tag=x&identifier=a%7C1")
        );
        assert_ne!(key("identifier=a|1"), key("identifier=a|2"));
        assert_ne!(key("identifier=a|1"), key("identifier:exact=a|1"));
    }

    #[test]
    fn if_none_exist_names_a_type_only_before_the_criteria() {
        assert_eq!(
            Criteria::split_if_none_exist("identifier=a|b"),
            (None, "identifier=a|b")
        );
        assert_eq!(
            Criteria::split_if_none_exist("?identifier=a|b"),
            (None, "identifier=a|b")
        );
        assert_eq!(
            Criteria::split_if_none_exist("Patient?identifier=a|b"),
            (Some("Patient"), "identifier=a|b")
        );
        assert_eq!(
            Criteria::split_if_none_exist("identifier=http://h/ids?x|1"),
            (None, "identifier=http://h/ids?x|1")
        );
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%7Cb"), "a|b");
        assert_eq!(percent_decode("%E5%B1%B1"), "山");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%"), "end%");
        assert_eq!(percent_decode("end%4"), "end%4");
    }

    #[test]
    fn refuses_unsupported_parameters() {
        assert!(Criteria::parse("Patient", "name=x").is_ok());
        assert!(Criteria::parse("Patient", "nonsense=x").is_err());
        assert!(Criteria::parse("Patient", "birthdate=notadate").is_err());
        assert!(Criteria::parse("Patient", "").is_err());
        assert!(Criteria::parse("Patient", "identifier=a|b&_id=1").is_ok());
    }
}
