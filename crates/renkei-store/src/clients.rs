//! Client registrations, the server signing key and used client-assertion ids.

use crate::sql::{Bind, Sql};
use crate::{StoreError, Tx};
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;

#[derive(Debug, Clone, QueryableByName)]
pub struct ClientRow {
    #[diesel(sql_type = Text)]
    pub client_id: String,
    #[diesel(sql_type = Text)]
    pub registration: String,
    #[diesel(sql_type = BigInt)]
    pub created: i64,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct ServerKeyRow {
    #[diesel(sql_type = Text)]
    pub kid: String,
    #[diesel(sql_type = Text)]
    pub private: String,
}

impl Tx<'_> {
    /// Inserts or replaces a registration.
    pub fn put_client(
        &mut self,
        client_id: &str,
        registration: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut delete = Sql::new("DELETE FROM clients WHERE client_id = ");
        delete.bind(Bind::Text(client_id.into()));
        self.execute(&delete)?;
        let mut insert =
            Sql::new("INSERT INTO clients (client_id, registration, created) VALUES (");
        insert
            .bind(Bind::Text(client_id.into()))
            .push(", ")
            .bind(Bind::Text(registration.into()))
            .push(", ")
            .bind(Bind::Int(now_ms))
            .push(")");
        self.execute(&insert)?;
        Ok(())
    }

    pub fn client(&mut self, client_id: &str) -> Result<Option<ClientRow>, StoreError> {
        let mut sql =
            Sql::new("SELECT client_id, registration, created FROM clients WHERE client_id = ");
        sql.bind(Bind::Text(client_id.into()));
        Ok(self.load::<ClientRow>(&sql)?.into_iter().next())
    }

    pub fn clients(&mut self) -> Result<Vec<ClientRow>, StoreError> {
        self.load::<ClientRow>(&Sql::new(
            "SELECT client_id, registration, created FROM clients ORDER BY client_id",
        ))
    }

    /// Removes a registration; returns whether it existed.
    pub fn remove_client(&mut self, client_id: &str) -> Result<bool, StoreError> {
        let mut sql = Sql::new("DELETE FROM clients WHERE client_id = ");
        sql.bind(Bind::Text(client_id.into()));
        Ok(self.execute(&sql)? > 0)
    }

    /// The signing key, if one was stored.
    pub fn server_key(&mut self) -> Result<Option<ServerKeyRow>, StoreError> {
        Ok(self
            .load::<ServerKeyRow>(&Sql::new(
                "SELECT kid, private FROM server_keys ORDER BY created DESC LIMIT 1",
            ))?
            .into_iter()
            .next())
    }

    /// Stores the signing key unless one exists (first start wins under concurrency).
    pub fn insert_server_key(
        &mut self,
        kid: &str,
        private: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut sql = Sql::new("INSERT INTO server_keys (kid, private, created) VALUES (");
        sql.bind(Bind::Text(kid.into()))
            .push(", ")
            .bind(Bind::Text(private.into()))
            .push(", ")
            .bind(Bind::Int(now_ms))
            .push(") ON CONFLICT (kid) DO NOTHING");
        self.execute(&sql)?;
        Ok(())
    }

    /// Records a client-assertion id; false when it was already used (a replay).
    pub fn use_assertion(
        &mut self,
        jti: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut purge = Sql::new("DELETE FROM used_assertions WHERE expires < ");
        purge.bind(Bind::Int(now_ms));
        self.execute(&purge)?;
        let mut sql = Sql::new("INSERT INTO used_assertions (jti, expires) VALUES (");
        sql.bind(Bind::Text(jti.into()))
            .push(", ")
            .bind(Bind::Int(expires_ms))
            .push(") ON CONFLICT (jti) DO NOTHING");
        Ok(self.execute(&sql)? == 1)
    }
}
