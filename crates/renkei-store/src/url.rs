use crate::StoreError;
use std::path::PathBuf;

/// A database location, parsed once from the operator's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    /// Accepts `sqlite:PATH`, `sqlite://PATH` and `postgres://…`/`postgresql://…`; every other
    /// scheme is refused so a typo never silently creates a new SQLite file.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(StoreError::UnsupportedUrl(text.to_string()));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(text.to_string()));
        }
        Err(StoreError::UnsupportedUrl(text.to_string()))
    }

    /// The URL with any password removed, for logs and start-up messages.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite:{}", path.display()),
            DatabaseUrl::Postgres(url) => redact_password(url),
        }
    }
}

/// The URL with the password of its user information (`user:secret@`) and of its query
/// (`?password=secret`, a libpq connection parameter) replaced by `***`.
fn redact_password(url: &str) -> String {
    let (address, query) = match url.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (url, None),
    };
    let address = match address.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => address.to_string(),
            },
            None => address.to_string(),
        },
        None => address.to_string(),
    };
    let Some(query) = query else {
        return address;
    };
    let parameters: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{address}?{}", parameters.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_schemes_and_refuses_others() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:./x.db").ok(),
            Some(DatabaseUrl::Sqlite(PathBuf::from("./x.db")))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db").ok(),
            Some(DatabaseUrl::Sqlite(PathBuf::from("/tmp/x.db")))
        );
        assert!(matches!(
            DatabaseUrl::parse("postgres://root@127.0.0.1/test"),
            Ok(DatabaseUrl::Postgres(_))
        ));
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        assert!(DatabaseUrl::parse("sqlite:").is_err());
    }

    #[test]
    fn redacts_passwords() {
        let url = DatabaseUrl::Postgres("postgres://u:secret@h/db".into());
        assert_eq!(url.redacted(), "postgres://u:***@h/db");
        let in_query =
            DatabaseUrl::Postgres("postgres://u@h/db?sslmode=disable&password=secret".into());
        assert_eq!(
            in_query.redacted(),
            "postgres://u@h/db?sslmode=disable&password=***"
        );
    }
}
