//! Facts about how the database's contents were built (the `settings` table), such as the
//! time zone its search index reads zone-less dates in.

use crate::sql::{Bind, Sql};
use crate::{StoreError, Tx};
use diesel::sql_types::Text;
use diesel::QueryableByName;

#[derive(Debug, Clone, QueryableByName)]
struct SettingRow {
    #[diesel(sql_type = Text)]
    value: String,
}

impl Tx<'_> {
    /// The value recorded under `key`, if any.
    pub fn setting(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        let mut sql = Sql::new("SELECT value FROM settings WHERE key = ");
        sql.bind(Bind::Text(key.into()));
        Ok(self
            .load::<SettingRow>(&sql)?
            .into_iter()
            .next()
            .map(|row| row.value))
    }

    /// Records `value` under `key` unless a value is recorded already (the first of two
    /// concurrent writers wins; read it back to learn which).
    pub fn insert_setting(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut sql = Sql::new("INSERT INTO settings (key, value) VALUES (");
        sql.bind(Bind::Text(key.into()))
            .push(", ")
            .bind(Bind::Text(value.into()))
            .push(") ON CONFLICT (key) DO NOTHING");
        self.execute(&sql)?;
        Ok(())
    }

    /// Records `value` under `key`, replacing any value recorded before.
    pub fn put_setting(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut delete = Sql::new("DELETE FROM settings WHERE key = ");
        delete.bind(Bind::Text(key.into()));
        self.execute(&delete)?;
        self.insert_setting(key, value)
    }
}
