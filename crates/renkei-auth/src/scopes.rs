//! SMART on FHIR scopes (v2 `cruds`, with v1 `read`/`write`/`*` accepted and
//! normalised to v2).
//!
//! Grammar accepted: `(system|user|patient) "/" (ResourceType|"*") "." perms`
//! where `perms` is a non-empty subsequence of `c r u d s` in that order, or
//! one of the v1 spellings `read` (= `rs`), `write` (= `cud`), `*` (= `cruds`).
//! Granular scopes with query parameters (`patient/Observation.rs?category=…`)
//! and non-FHIR scopes (`openid`, `launch`, …) are rejected as invalid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::AuthError;

/// Which kind of access a scope grants (the part before `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeContext {
    /// `system/` — backend system acting for itself (SMART Backend Services).
    System,
    /// `user/` — on behalf of the user (`fhirUser`, a practitioner here).
    User,
    /// `patient/` — limited to the token's patient compartment.
    Patient,
}

impl ScopeContext {
    /// `"system"`, `"user"` or `"patient"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeContext::System => "system",
            ScopeContext::User => "user",
            ScopeContext::Patient => "patient",
        }
    }
}

/// A FHIR interaction class, as SMART v2 permissions name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `c` — create.
    Create,
    /// `r` — read / vread / history of a known instance.
    Read,
    /// `u` — update / patch.
    Update,
    /// `d` — delete.
    Delete,
    /// `s` — search (and type/system history).
    Search,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Create => Permissions::C,
            Action::Read => Permissions::R,
            Action::Update => Permissions::U,
            Action::Delete => Permissions::D,
            Action::Search => Permissions::S,
        }
    }
}

/// A set of `c r u d s` permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    const C: u8 = 1;
    const R: u8 = 2;
    const U: u8 = 4;
    const D: u8 = 8;
    const S: u8 = 16;
    const LETTERS: [(u8, char); 5] = [
        (Self::C, 'c'),
        (Self::R, 'r'),
        (Self::U, 'u'),
        (Self::D, 'd'),
        (Self::S, 's'),
    ];

    /// All five permissions (`cruds`).
    pub const ALL: Permissions = Permissions(31);

    /// True when `action` is included.
    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    /// True when no permission is included.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Permissions present in both.
    pub fn intersect(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    /// Permissions present in either.
    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// True when every permission of `self` is in `other`.
    pub fn is_subset_of(self, other: Permissions) -> bool {
        self.0 & !other.0 == 0
    }

    fn parse(s: &str) -> Option<Permissions> {
        match s {
            "read" => return Some(Permissions(Self::R | Self::S)),
            "write" => return Some(Permissions(Self::C | Self::U | Self::D)),
            "*" => return Some(Self::ALL),
            _ => {}
        }
        if s.is_empty() {
            return None;
        }
        let mut bits = 0u8;
        let mut next = 0usize; // index into LETTERS: letters must appear in order, once
        for ch in s.chars() {
            let pos = Self::LETTERS
                .iter()
                .skip(next)
                .position(|(_, l)| *l == ch)?;
            let idx = next + pos;
            let (bit, _) = Self::LETTERS.get(idx)?;
            bits |= bit;
            next = idx + 1;
        }
        Some(Permissions(bits))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, letter) in Self::LETTERS {
            if self.0 & bit != 0 {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// One parsed SMART scope, e.g. `system/Observation.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// `system`, `user` or `patient`.
    pub context: ScopeContext,
    /// The resource type, or `None` for `*` (all types).
    pub resource_type: Option<String>,
    /// Granted interactions.
    pub permissions: Permissions,
}

impl Scope {
    /// True when this scope allows `action` on `resource_type` (any context).
    pub fn allows(&self, resource_type: &str, action: Action) -> bool {
        self.permissions.contains(action)
            && self
                .resource_type
                .as_deref()
                .is_none_or(|t| t == resource_type)
    }

    /// The part of `self` also allowed by `other`, if any (same context,
    /// overlapping resource types, common permissions).
    pub fn intersect(&self, other: &Scope) -> Option<Scope> {
        if self.context != other.context {
            return None;
        }
        let resource_type = match (&self.resource_type, &other.resource_type) {
            (None, None) => None,
            (Some(t), None) | (None, Some(t)) => Some(t.clone()),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            _ => return None,
        };
        let permissions = self.permissions.intersect(other.permissions);
        if permissions.is_empty() {
            return None;
        }
        Some(Scope {
            context: self.context,
            resource_type,
            permissions,
        })
    }
}

fn valid_resource_type(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphanumeric())
        && t.len() <= 64
}

/// The resource type a scope names when it is well-formed but no R4 resource type
/// (`system/Obsrvation.rs`: a typo that would be granted and match nothing).
fn unknown_resource_type(scope: &str) -> Option<&str> {
    let (_, rest) = scope.split_once('/')?;
    let (rtype, _) = rest.split_once('.')?;
    (valid_resource_type(rtype) && !renkei_fhir_schema::is_resource_type(rtype)).then_some(rtype)
}

fn describe_unknown_type(scope: &str, rtype: &str) -> String {
    format!(
        "'{}' (no FHIR R4 resource type '{}')",
        printable(scope),
        printable(rtype)
    )
}

impl FromStr for Scope {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AuthError::invalid_scope(format!("invalid scope '{}'", printable(s)));
        let (ctx, rest) = s.split_once('/').ok_or_else(bad)?;
        let context = match ctx {
            "system" => ScopeContext::System,
            "user" => ScopeContext::User,
            "patient" => ScopeContext::Patient,
            _ => return Err(bad()),
        };
        if rest.contains('?') {
            return Err(AuthError::invalid_scope(format!(
                "granular scope '{}' (with query parameters) is not supported",
                printable(s)
            )));
        }
        let (rtype, perms) = rest.split_once('.').ok_or_else(bad)?;
        let resource_type = match rtype {
            "*" => None,
            // A type R4 does not define would be granted and never match anything.
            t if unknown_resource_type(s).is_some() => {
                return Err(AuthError::invalid_scope(describe_unknown_type(s, t)))
            }
            t if valid_resource_type(t) => Some(t.to_string()),
            _ => return Err(bad()),
        };
        let permissions = Permissions::parse(perms).ok_or_else(bad)?;
        Ok(Scope {
            context,
            resource_type,
            permissions,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}.{}",
            self.context.as_str(),
            self.resource_type.as_deref().unwrap_or("*"),
            self.permissions
        )
    }
}

/// Truncates and sanitises attacker-supplied text before it goes into an error message.
pub(crate) fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A set of SMART scopes, in canonical v2 form, with duplicates merged
/// (same context and resource type → permissions united).
///
/// Serialises as the space-separated OAuth `scope` string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(Vec<Scope>);

/// The scopes granted in an access token (same type as [`Scopes`]).
pub type GrantedScopes = Scopes;

impl Scopes {
    /// Parses a space-separated scope string. Every invalid scope is named in
    /// the `invalid_scope` error.
    pub fn parse(s: &str) -> Result<Scopes, AuthError> {
        Self::parse_iter(s.split_ascii_whitespace())
    }

    /// Parses a list of scope strings (each may itself hold several, space-separated).
    pub fn parse_list<S: AsRef<str>>(list: &[S]) -> Result<Scopes, AuthError> {
        Self::parse_iter(
            list.iter()
                .flat_map(|s| s.as_ref().split_ascii_whitespace()),
        )
    }

    fn parse_iter<'a>(items: impl Iterator<Item = &'a str>) -> Result<Scopes, AuthError> {
        let mut scopes = Scopes::default();
        let mut bad = Vec::new();
        for (n, item) in items.enumerate() {
            if n >= 256 {
                return Err(AuthError::invalid_scope("too many scopes (max 256)"));
            }
            match item.parse::<Scope>() {
                Ok(scope) => scopes.push(scope),
                Err(_) => bad.push(match unknown_resource_type(item) {
                    Some(t) => describe_unknown_type(item, t),
                    None => format!("'{}'", printable(item)),
                }),
            }
        }
        if bad.is_empty() {
            Ok(scopes)
        } else {
            Err(AuthError::invalid_scope(format!(
                "invalid scope{}: {}",
                if bad.len() > 1 { "s" } else { "" },
                bad.join(", ")
            )))
        }
    }

    /// Adds a scope, merging with an existing one for the same context and type.
    pub fn push(&mut self, scope: Scope) {
        if let Some(existing) = self
            .0
            .iter_mut()
            .find(|s| s.context == scope.context && s.resource_type == scope.resource_type)
        {
            existing.permissions = existing.permissions.union(scope.permissions);
        } else {
            self.0.push(scope);
        }
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// True when there are no scopes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of (merged) scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when some scope (any context) allows `action` on `resource_type`.
    pub fn allows(&self, resource_type: &str, action: Action) -> bool {
        self.0.iter().any(|s| s.allows(resource_type, action))
    }

    /// True when some scope of the given context allows `action` on `resource_type`.
    pub fn allows_in(&self, context: ScopeContext, resource_type: &str, action: Action) -> bool {
        self.0
            .iter()
            .any(|s| s.context == context && s.allows(resource_type, action))
    }

    /// True when any scope has the given context.
    pub fn has_context(&self, context: ScopeContext) -> bool {
        self.0.iter().any(|s| s.context == context)
    }

    /// What `requested` may have out of `self` (the registered scopes): for each
    /// requested scope, its overlap with the registered ones. A requested scope
    /// with no overlap at all is an `invalid_scope` error naming it; a partial
    /// overlap is narrowed (e.g. `system/Observation.rsd` against registered
    /// `system/*.rs` grants `system/Observation.rs`), as RFC 6749 §3.3 allows —
    /// the granted `scope` in the token response tells the client.
    pub fn grant(&self, requested: &Scopes) -> Result<Scopes, AuthError> {
        let mut granted = Scopes::default();
        let mut refused = Vec::new();
        for want in &requested.0 {
            let mut any = false;
            for have in &self.0 {
                if let Some(overlap) = want.intersect(have) {
                    granted.push(overlap);
                    any = true;
                }
            }
            if !any {
                refused.push(format!("'{want}'"));
            }
        }
        if !refused.is_empty() {
            return Err(AuthError::invalid_scope(format!(
                "scope not registered for this client: {}",
                refused.join(", ")
            )));
        }
        Ok(granted)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl FromStr for Scopes {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scopes::parse(s)
    }
}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Scopes::parse(&s).map_err(serde::de::Error::custom)
    }
}
