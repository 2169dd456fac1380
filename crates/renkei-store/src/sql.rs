//! A tiny SQL text builder with positional binds, rendered per backend (`?` or `$n`).
//! Queries built here are the only SQL the store runs besides migrations.

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
    Float(f64),
    OptFloat(Option<f64>),
}

#[derive(Debug, Clone, Default)]
pub struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    pub fn new(text: &str) -> Self {
        Sql {
            text: text.to_string(),
            binds: Vec::new(),
        }
    }

    /// Appends raw SQL text. Never pass input-derived text here: use [`Sql::bind`].
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a `?` placeholder bound to `value`.
    /// Appends `LIMIT <rows>` with the number written into the statement. A bound `LIMIT ?`
    /// makes SQLite (3.53) mark that parameter as plan-relevant, so every execution that binds
    /// it re-prepares the whole statement; a literal keeps one prepared statement per limit.
    pub fn push_limit(&mut self, rows: usize) -> &mut Self {
        let rows = i64::try_from(rows).unwrap_or(i64::MAX);
        self.text.push_str(&format!(" LIMIT {rows}"));
        self
    }

    pub fn bind(&mut self, value: Bind) -> &mut Self {
        self.text.push('?');
        self.binds.push(value);
        self
    }

    /// Appends one row of a multi-row `VALUES` list, `(?, ?, …)` bound to `values`, preceded
    /// by `, ` unless it is the list's first row.
    pub fn push_row(&mut self, first: bool, values: impl IntoIterator<Item = Bind>) -> &mut Self {
        if !first {
            self.push(", ");
        }
        self.push("(");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(value);
        }
        self.push(")")
    }

    /// Appends another statement's text and binds (e.g. a query under an `EXPLAIN` prefix).
    pub fn push_sql(&mut self, other: &Sql) -> &mut Self {
        self.text.push_str(&other.text);
        self.binds.extend(other.binds.iter().cloned());
        self
    }

    /// Removes a closing parenthesis at the end, to add more inside it; false when the text
    /// does not end with one.
    pub(crate) fn reopen(&mut self) -> bool {
        if self.text.ends_with(')') {
            self.text.pop();
            true
        } else {
            false
        }
    }

    /// The text with `?` placeholders (the only `?` in it: values are never inlined).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn binds(&self) -> &[Bind] {
        &self.binds
    }

    /// The text with placeholders in the given backend's syntax.
    pub fn render(&self, numbered: bool) -> String {
        if !numbered {
            return self.text.clone();
        }
        let mut out = String::with_capacity(self.text.len() + 8);
        let mut n = 0;
        for ch in self.text.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_numbered_placeholders() {
        let mut sql = Sql::new("SELECT 1 WHERE a = ");
        sql.bind(Bind::Int(1))
            .push(" AND b = ")
            .bind(Bind::Text("x".into()));
        assert_eq!(sql.render(false), "SELECT 1 WHERE a = ? AND b = ?");
        assert_eq!(sql.render(true), "SELECT 1 WHERE a = $1 AND b = $2");
        assert_eq!(sql.binds().len(), 2);
    }

    #[test]
    fn rows_of_a_values_list() {
        let mut sql = Sql::new("INSERT INTO t (a, b) VALUES ");
        sql.push_row(true, [Bind::Int(1), Bind::Text("x".into())])
            .push_row(false, [Bind::Int(2), Bind::OptText(None)]);
        assert_eq!(
            sql.render(true),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(sql.binds()[3], Bind::OptText(None));
    }
}
