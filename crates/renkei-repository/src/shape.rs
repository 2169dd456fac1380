//! What a read of one resource asks its answer to hold (`_summary`, `_elements`): parsed once
//! for a read on its own (the HTTP layer), a Bundle's read entry and the CapabilityStatement.

use serde_json::Value;

use crate::RepoError;

/// A read's `_summary` and `_elements`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadShape {
    pub summary: Option<renkei_fhir::SummaryMode>,
    /// Every `_elements` item, repeated parameters together; `None` when none was given.
    pub elements: Option<Vec<String>>,
}

impl ReadShape {
    /// From a read's decoded parameters: the first `_summary` (`true`, `text`, `data`,
    /// `false`), and every `_elements` read as a search reads it (an empty item is a 400).
    /// Other parameters are the caller's.
    pub fn parse(params: &[(String, String)]) -> Result<ReadShape, RepoError> {
        let summary = match params.iter().find(|(name, _)| name == "_summary") {
            None => None,
            Some((_, value)) => match value.as_str() {
                "false" => None,
                "true" => Some(renkei_fhir::SummaryMode::True),
                "text" => Some(renkei_fhir::SummaryMode::Text),
                "data" => Some(renkei_fhir::SummaryMode::Data),
                other => {
                    return Err(RepoError::BadRequest(format!(
                        "_summary '{other}' is not valid on a read; use true, text, data or false"
                    )))
                }
            },
        };
        let mut elements: Option<Vec<String>> = None;
        for (_, list) in params.iter().filter(|(name, _)| name == "_elements") {
            let items = renkei_search::plan::list_items("_elements", list)
                .map_err(crate::criteria::search_error)?;
            elements
                .get_or_insert_with(Vec::new)
                .extend(items.into_iter().map(str::to_string));
        }
        Ok(ReadShape { summary, elements })
    }

    /// Whether the resource is answered as stored.
    pub fn is_whole(&self) -> bool {
        self.summary.is_none() && self.elements.is_none()
    }

    /// `value` reduced to its summary, then to the elements asked for.
    pub fn apply(&self, mut value: Value) -> Value {
        if let Some(mode) = self.summary {
            value = renkei_fhir::summarize(&value, mode);
        }
        if let Some(elements) = &self.elements {
            let names: Vec<&str> = elements.iter().map(String::as_str).collect();
            value = renkei_fhir::select_elements(&value, &names);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn params(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_parse_elements_as_searches_do() {
        let shape = ReadShape::parse(&params(&[
            ("_elements", "id, name"),
            ("_elements", "birthDate"),
        ]))
        .unwrap();
        assert!(shape.summary.is_none());
        assert_eq!(shape.elements.unwrap(), ["id", "name", "birthDate"]);
        assert!(ReadShape::parse(&[]).unwrap().is_whole());
        for bad in ["id,", ",id", "id,,name", "", " "] {
            let error = ReadShape::parse(&params(&[("_elements", bad)])).unwrap_err();
            // The same words as a search's refusal.
            let searched = renkei_search::plan::list_items("_elements", bad).unwrap_err();
            assert_eq!(error.to_string(), searched.to_string(), "{bad:?}");
        }
        assert!(ReadShape::parse(&params(&[("_summary", "count")])).is_err());
    }
}
