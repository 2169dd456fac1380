//! What a database's derived rows (search index, patients, persons) were built with, recorded
//! in its `settings` rows and compared at start-up. Rows built under other rules are silently
//! wrong under the current ones: a search would miss or wrongly match records, two records
//! would be one person or not by rules no longer in force. So `serve` and `import` refuse such
//! a database, naming what changed, until `renkei reindex` has rebuilt it.

use crate::config::Config;
use renkei_store::Store;

/// Prefix of a recorded value while `renkei reindex` moves the rows to it.
const REINDEXING: &str = "reindexing to ";

/// One recorded fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    /// The zone zone-less dates are read in (`time_zone`).
    TimeZone,
    /// [`renkei_repository::INDEX_FORMAT`]: how this version derives rows from a resource.
    Format,
    /// The identifier systems that make Patient records one person (`link_identifier_systems`,
    /// `link_with_birth_date_systems`).
    Linking,
    /// `base_url`: absolute references under it are indexed as references to this server.
    BaseUrl,
}

const FACTS: [Fact; 4] = [Fact::TimeZone, Fact::Format, Fact::Linking, Fact::BaseUrl];

impl Fact {
    /// The `settings` key.
    fn key(self) -> &'static str {
        match self {
            Fact::TimeZone => "index_time_zone",
            Fact::Format => "index_format",
            Fact::Linking => "index_linking",
            Fact::BaseUrl => "index_base_url",
        }
    }

    /// What this process builds rows with.
    fn current(self, config: &Config) -> String {
        match self {
            Fact::TimeZone => config.time_zone.to_string(),
            Fact::Format => renkei_repository::INDEX_FORMAT.to_string(),
            Fact::Linking => {
                let rules = &config.linking;
                format!(
                    "{}; with birth date: {}",
                    sorted_list(&rules.person_identifier_systems),
                    sorted_list(&rules.with_birth_date_systems)
                )
            }
            Fact::BaseUrl => config.base_url.clone().unwrap_or_default(),
        }
    }

    /// What a database holding resources but no record of the fact was built with: its rows
    /// predate the record. Dates were read in UTC and the format is the unnumbered one; the
    /// configuration of the others was not recorded, so the current one is assumed (a database
    /// that old is refused for its format anyway, and its reindex rebuilds everything).
    fn before_record(self, config: &Config) -> String {
        match self {
            Fact::TimeZone => renkei_repository::LocalZone::UTC.to_string(),
            Fact::Format => "0".to_string(),
            Fact::Linking | Fact::BaseUrl => self.current(config),
        }
    }

    /// Why rows built with `recorded` cannot serve under `current`, and what to do.
    fn refusal(self, recorded: &str, current: &str) -> String {
        if let Some(target) = recorded.strip_prefix(REINDEXING) {
            let with = match self {
                Fact::Format => self.setting().to_string(),
                _ => format!("{} {target}", self.setting()),
            };
            return format!(
                "a `renkei reindex` (to {} {}) did not finish, so the search index is partly \
                 rebuilt: run `renkei reindex` again (with {with})",
                self.name(),
                shown(target),
            );
        }
        match self {
            Fact::TimeZone => format!(
                "the search index was built with time zone {recorded}, but time_zone is \
                 {current}: dates without a zone would be searched hours away from where they \
                 were indexed. Run `renkei reindex` with time_zone {current} to rebuild it, or \
                 set time_zone (RENKEI_TIME_ZONE) back to {recorded}"
            ),
            Fact::Format => {
                let newer = recorded
                    .parse::<u32>()
                    .is_ok_and(|n| current.parse::<u32>().is_ok_and(|c| n > c));
                if !newer {
                    format!(
                        "the search index was built by an earlier version of Renkei (index \
                         format {recorded}; this version builds format {current}): searches \
                         could miss or wrongly match the records stored before. Run `renkei \
                         reindex` once to rebuild it"
                    )
                } else {
                    format!(
                        "the search index was built by a newer version of Renkei (index format \
                         {recorded}; this version builds format {current}): run that version, \
                         or `renkei reindex` with this one"
                    )
                }
            }
            Fact::Linking => format!(
                "patients were linked into persons with the identifier systems {recorded}, but \
                 link_identifier_systems and link_with_birth_date_systems now say {current}: \
                 records would be one person or not by rules no longer in force. Run `renkei \
                 reindex` to link them again under the new rules, or set those settings back"
            ),
            Fact::BaseUrl => format!(
                "references were indexed with base_url {}, but base_url is now {}: absolute \
                 references under one base or the other would name the wrong server. Run \
                 `renkei reindex` with the new base_url, or set base_url (RENKEI_BASE_URL) back",
                shown(recorded),
                shown(current)
            ),
        }
    }

    /// The fact's name in a message.
    fn name(self) -> &'static str {
        match self {
            Fact::TimeZone => "time zone",
            Fact::Format => "index format",
            Fact::Linking => "identifier systems",
            Fact::BaseUrl => "base_url",
        }
    }

    /// The setting that chooses it.
    fn setting(self) -> &'static str {
        match self {
            Fact::TimeZone => "time_zone",
            Fact::Format => "this version of Renkei",
            Fact::Linking => "link_identifier_systems and link_with_birth_date_systems",
            Fact::BaseUrl => "base_url",
        }
    }
}

/// A recorded value as a message shows it: an empty `base_url` is an unset one.
fn shown(value: &str) -> &str {
    if value.is_empty() {
        "(not set)"
    } else {
        value
    }
}

/// `systems` in one order, without repeats, so that reordering a list changes nothing.
fn sorted_list(systems: &[String]) -> String {
    let mut systems: Vec<&str> = systems.iter().map(String::as_str).collect();
    systems.sort_unstable();
    systems.dedup();
    format!("[{}]", systems.join(", "))
}

/// What each fact was recorded as (`None` where it was not).
fn recorded(store: &Store) -> Result<(Vec<Option<String>>, bool), String> {
    store
        .read(|tx| {
            let values = FACTS
                .iter()
                .map(|fact| tx.setting(fact.key()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, renkei_store::StoreError>((values, tx.is_empty()?))
        })
        .map_err(|e| e.to_string())
}

/// For `serve` and `import`: refuses a database whose rows were built with anything other
/// than what this process builds with, naming every difference. A database without a record
/// of a fact gets it recorded: what it was built with if it holds resources
/// ([`Fact::before_record`]), else the current configuration.
pub fn check(config: &Config, store: &Store) -> Result<(), String> {
    let (before, empty) = recorded(store)?;
    // First writer wins (two processes may open an empty database at once): compare with
    // what is recorded after the insert, not with what this process meant to record.
    store
        .write(|tx| {
            for (fact, value) in FACTS.iter().zip(&before) {
                if value.is_none() {
                    let built = if empty {
                        fact.current(config)
                    } else {
                        fact.before_record(config)
                    };
                    tx.insert_setting(fact.key(), &built)?;
                }
            }
            Ok::<_, renkei_store::StoreError>(())
        })
        .map_err(|e| e.to_string())?;
    let (after, _) = recorded(store)?;
    let refusals: Vec<String> = FACTS
        .iter()
        .zip(after)
        .filter_map(|(fact, value)| {
            let current = fact.current(config);
            let value = value.unwrap_or_else(|| current.clone());
            (value != current).then(|| fact.refusal(&value, &current))
        })
        .collect();
    match refusals.as_slice() {
        [] => Ok(()),
        [one] => Err(one.clone()),
        several => Err(format!(
            "this database's rows were built under other rules than this configuration's:\n  - {}",
            several.join("\n  - ")
        )),
    }
}

/// For `renkei reindex`: runs `rebuild`, recording the current facts once it has finished.
/// Until then each fact that changes is recorded as being moved to, so a server refuses the
/// half-rebuilt database (an interrupted reindex must be run again).
/// Whether a rebuild under `config` would change the rules the database was built under (a
/// fact recorded otherwise, or not recorded): servers running meanwhile would keep writing
/// under the old ones.
pub fn changes_rules(config: &Config, store: &Store) -> Result<bool, String> {
    let (recorded, _) = recorded(store)?;
    Ok(FACTS
        .iter()
        .zip(recorded)
        .any(|(fact, value)| value.as_deref() != Some(fact.current(config).as_str())))
}

pub fn rebuilding<T>(
    config: &Config,
    store: &Store,
    rebuild: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let (before, _) = recorded(store)?;
    store
        .write(|tx| {
            for (fact, value) in FACTS.iter().zip(&before) {
                let current = fact.current(config);
                if value.as_deref() != Some(current.as_str()) {
                    tx.put_setting(fact.key(), &format!("{REINDEXING}{current}"))?;
                }
            }
            Ok::<_, renkei_store::StoreError>(())
        })
        .map_err(|e| e.to_string())?;
    let result = rebuild()?;
    store
        .write(|tx| {
            for fact in FACTS {
                tx.put_setting(fact.key(), &fact.current(config))?;
            }
            Ok::<_, renkei_store::StoreError>(())
        })
        .map_err(|e| e.to_string())?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn list_order_and_repeats_do_not_change_the_linking_record() {
        let list =
            |items: &[&str]| sorted_list(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(list(&["b", "a", "b"]), list(&["a", "b"]));
        assert_ne!(list(&["a"]), list(&["a", "b"]));
    }

    #[test]
    fn refusals_name_what_changed_and_the_way_out() {
        let format = Fact::Format.refusal("0", "1");
        assert!(format.contains("earlier version") && format.contains("renkei reindex"));
        assert!(Fact::Format.refusal("7", "1").contains("newer version"));
        let base = Fact::BaseUrl.refusal("", "https://gw.example/fhir");
        assert!(base.contains("(not set)") && base.contains("https://gw.example/fhir"));
        let unfinished = Fact::Linking.refusal("reindexing to [x]; with birth date: []", "[y]");
        assert!(unfinished.contains("did not finish") && unfinished.contains("[x]"));
    }
}
