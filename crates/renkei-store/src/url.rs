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
            check_postgres_database(text)?;
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

/// A PostgreSQL URL must name its database, and not one of the cluster's own: libpq fills
/// in whatever is left out (the operating system's user name as the database), so an empty
/// template variable (`postgres://`) would put patient data and the audit trail into some
/// other database that happens to exist (a black-box review saw it land in `root`).
fn check_postgres_database(text: &str) -> Result<(), StoreError> {
    let (address, query) = text.split_once('?').unwrap_or((text, ""));
    let after_scheme = address.split_once("://").map_or("", |(_, rest)| rest);
    let path_database = after_scheme
        .split_once('/')
        .map_or("", |(_, database)| database);
    let query_database = query.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(name, _)| name.eq_ignore_ascii_case("dbname"))
            .map(|(_, database)| database)
    });
    let database = query_database.unwrap_or(path_database);
    let redacted = redact_password(text);
    match database {
        "" => Err(StoreError::InvalidUrl(format!(
            "{redacted} names no database: write postgres://USER@HOST/DATABASE"
        ))),
        "postgres" | "template0" | "template1" => Err(StoreError::InvalidUrl(format!(
            "{redacted} names PostgreSQL's own '{database}' database: create one for Renkei \
             (createdb renkei) and name it"
        ))),
        _ => Ok(()),
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
        // A URL that names no database, or the cluster's own, would land in whatever libpq
        // reaches by default.
        for incomplete in [
            "postgres://",
            "postgres://@/",
            "postgresql://root@127.0.0.1:5432",
            "postgres://u:secret@h/postgres",
            "postgres://u@h/template1",
            "postgres://u@h/?sslmode=disable",
        ] {
            let refused = match DatabaseUrl::parse(incomplete) {
                Err(refused) => refused.to_string(),
                Ok(accepted) => panic!("{incomplete} was accepted: {accepted:?}"),
            };
            assert!(!refused.contains("secret"), "{refused}");
        }
        assert!(DatabaseUrl::parse("postgres:///renkei?host=/var/run/postgresql").is_ok());
        assert!(DatabaseUrl::parse("postgres://u@h/x?dbname=renkei").is_ok());
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
