//! Search criteria of conditional interactions (`If-None-Exist`, `PUT/PATCH/DELETE Type?…`,
//! conditional references in transactions).

use crate::RepoError;
use renkei_store::{ResourceRow, Tx};

/// A parsed conditional query such as `identifier=urn:oid:1.2|123`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criteria {
    pub res_type: String,
    params: Vec<(String, String)>,
}

impl Criteria {
    /// Parses the query part of `Type?query`.
    pub fn parse(res_type: &str, query: &str) -> Result<Criteria, RepoError> {
        let params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        if params.is_empty() {
            return Err(RepoError::BadRequest(format!(
                "conditional criteria for {res_type} are empty"
            )));
        }
        for (name, value) in &params {
            if !matches!(name.as_str(), "_id" | "identifier") {
                return Err(RepoError::NotSupported(format!(
                    "conditional criteria support '_id' and 'identifier'; '{name}' is not supported"
                )));
            }
            if value.is_empty() {
                return Err(RepoError::BadRequest(format!(
                    "conditional criteria parameter '{name}' has no value"
                )));
            }
        }
        Ok(Criteria {
            res_type: res_type.to_string(),
            params,
        })
    }

    /// Parses `Type?query` (a conditional reference or request URL).
    pub fn parse_url(url: &str) -> Result<Criteria, RepoError> {
        let (res_type, query) = url
            .split_once('?')
            .ok_or_else(|| RepoError::BadRequest(format!("'{url}' has no search criteria")))?;
        let res_type = res_type.trim_start_matches('/');
        if !renkei_fhir::is_resource_type(res_type) {
            return Err(RepoError::UnknownType(res_type.to_string()));
        }
        Criteria::parse(res_type, query)
    }

    /// The current resources matching every parameter (AND), at most `limit`.
    pub(crate) fn resolve(
        &self,
        tx: &mut Tx<'_>,
        limit: usize,
    ) -> Result<Vec<ResourceRow>, RepoError> {
        let mut matches: Option<Vec<ResourceRow>> = None;
        for (name, value) in &self.params {
            // Comma means OR within one parameter.
            let mut rows = Vec::new();
            for alternative in value.split(',') {
                let found = match name.as_str() {
                    "_id" => tx.find_by_ids(&self.res_type, &[alternative.to_string()], limit)?,
                    _ => {
                        let (system, code) = match alternative.split_once('|') {
                            Some((system, code)) => (Some(system), code),
                            None => (None, alternative),
                        };
                        tx.find_by_token(&self.res_type, "identifier", system, code, limit)?
                    }
                };
                rows.extend(found);
            }
            matches = Some(match matches {
                None => rows,
                Some(previous) => previous
                    .into_iter()
                    .filter(|p| rows.iter().any(|r| r.rid == p.rid))
                    .collect(),
            });
        }
        let mut rows = matches.unwrap_or_default();
        rows.sort_by_key(|r| r.rid);
        rows.dedup_by_key(|r| r.rid);
        rows.truncate(limit);
        Ok(rows)
    }
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query component.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
        assert!(Criteria::parse("Patient", "name=x").is_err());
        assert!(Criteria::parse("Patient", "").is_err());
        assert!(Criteria::parse("Patient", "identifier=a|b&_id=1").is_ok());
    }
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
