//! The database's own query plan for a search page, exactly as `Tx::search` would run it
//! (same SQL, same binds, same consent predicate). For operators checking that a search is
//! index-driven, and for the plans quoted in `docs/SEARCH.md`. Also the plan of an audit search.

use crate::audit::{audit_search_statement, AuditQuery, Listing};
use crate::{Backend, StoreError, Tx, Visibility};
use diesel::backend::Backend as DieselBackend;
use diesel::deserialize::{self, FromSql};
use diesel::row::NamedRow;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use renkei_search::plan::SearchPlan;

/// One node of SQLite's `EXPLAIN QUERY PLAN`.
#[derive(QueryableByName)]
struct SqlitePlanNode {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    parent: i64,
    #[diesel(sql_type = Text)]
    detail: String,
}

/// One line of PostgreSQL's `EXPLAIN`, whose only column is named `QUERY PLAN` (a name with a
/// space, which the derive cannot spell).
struct PostgresPlanLine(String);

impl<DB: DieselBackend> QueryableByName<DB> for PostgresPlanLine
where
    String: FromSql<Text, DB>,
{
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> deserialize::Result<Self> {
        Ok(PostgresPlanLine(NamedRow::get::<Text, String>(
            row,
            "QUERY PLAN",
        )?))
    }
}

/// What `explain_search` found: the statement and the plan the database chose for it.
#[derive(Debug, Clone)]
pub struct SearchExplanation {
    /// The page statement with placeholders in the backend's syntax.
    pub sql: String,
    /// The bound values, in placeholder order.
    pub binds: Vec<String>,
    /// The plan, one line per node (SQLite: `EXPLAIN QUERY PLAN` as a tree; PostgreSQL:
    /// `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)`, which runs the statement).
    pub plan: Vec<String>,
}

impl Tx<'_> {
    /// The plan of the statement a search runs first (its first page, or its count) for
    /// `visibility`.
    pub fn explain_search(
        &mut self,
        plan: &SearchPlan,
        visibility: &Visibility,
    ) -> Result<SearchExplanation, StoreError> {
        let page = self.search_statement(plan, visibility)?;
        self.explain_statement(&page)
    }

    /// The plan of the statement [`Tx::audit_search`] runs for `query`.
    pub fn explain_audit_search(
        &mut self,
        query: &AuditQuery,
    ) -> Result<SearchExplanation, StoreError> {
        let statement = audit_search_statement(query, Listing::Page);
        self.explain_statement(&statement)
    }

    fn explain_statement(&mut self, page: &crate::Sql) -> Result<SearchExplanation, StoreError> {
        let backend = self.backend();
        let mut statement = crate::Sql::new(match backend {
            Backend::Sqlite => "EXPLAIN QUERY PLAN ",
            Backend::Postgres => "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) ",
        });
        statement.push_sql(page);
        let plan = match backend {
            Backend::Sqlite => sqlite_tree(self.load::<SqlitePlanNode>(&statement)?),
            Backend::Postgres => self
                .load::<PostgresPlanLine>(&statement)?
                .into_iter()
                .map(|line| line.0)
                .collect(),
        };
        Ok(SearchExplanation {
            sql: page.render(backend == Backend::Postgres),
            binds: page.binds().iter().map(|b| format!("{b:?}")).collect(),
            plan,
        })
    }
}

/// Indents SQLite's plan nodes under their parents, as the `sqlite3` shell prints them.
fn sqlite_tree(nodes: Vec<SqlitePlanNode>) -> Vec<String> {
    let mut depth_of: Vec<(i64, usize)> = Vec::new();
    nodes
        .into_iter()
        .map(|node| {
            let depth = depth_of
                .iter()
                .find(|(id, _)| *id == node.parent)
                .map_or(0, |(_, d)| d + 1);
            depth_of.push((node.id, depth));
            format!("{}{}", "  ".repeat(depth), node.detail)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_nodes_indent_under_their_parents() {
        let node = |id, parent, detail: &str| SqlitePlanNode {
            id,
            parent,
            detail: detail.into(),
        };
        let lines = sqlite_tree(vec![
            node(2, 0, "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)"),
            node(5, 0, "LIST SUBQUERY 1"),
            node(7, 5, "SEARCH x1 USING INDEX idx_reference_lookup"),
        ]);
        assert_eq!(
            lines,
            vec![
                "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)",
                "LIST SUBQUERY 1",
                "  SEARCH x1 USING INDEX idx_reference_lookup",
            ]
        );
    }
}
