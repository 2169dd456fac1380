//! Recursive-descent / precedence-climbing parser producing the AST.

use crate::error::FhirPathError;
use crate::lexer::{tokenize, Tok, Token};

/// Maximum AST depth. Evaluation and `Drop` recurse over the tree, so the
/// bound keeps arbitrary input from exhausting the stack. Real-world
/// expressions (the R4 search parameters) stay far below 64.
pub const MAX_DEPTH: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Empty,
    Bool(bool),
    Str(String),
    /// Number text as written (`1`, `2.50`).
    Num(String),
    /// `@…` date/time literal, text without the `@`.
    DateTime(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Implies,
    Or,
    Xor,
    And,
    In,
    Contains,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    Lt,
    Gt,
    Le,
    Ge,
    Union,
    Add,
    Sub,
    Concat,
    Mul,
    Div,
    IntDiv,
    Mod,
}

impl BinOp {
    fn precedence(self) -> u8 {
        match self {
            BinOp::Implies => 1,
            BinOp::Or | BinOp::Xor => 2,
            BinOp::And => 3,
            BinOp::In | BinOp::Contains => 4,
            BinOp::Eq | BinOp::Ne | BinOp::Equiv | BinOp::NotEquiv => 5,
            BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => 6,
            BinOp::Union => 7,
            BinOp::Add | BinOp::Sub | BinOp::Concat => 9,
            BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod => 10,
        }
    }
}

/// Precedence of the `is` / `as` type operators (between `|` and `+`).
const TYPE_OP_PRECEDENCE: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeOp {
    Is,
    As,
    OfType,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Literal(Literal),
    /// `$this`, `$index`, `$total`
    Special(String),
    /// `%resource`, `%ucum`, …
    Variable(String),
    /// Member access; `base == None` means "on the current focus".
    Member {
        base: Option<Box<Expr>>,
        name: String,
    },
    Function {
        base: Option<Box<Expr>>,
        name: String,
        args: Vec<Expr>,
    },
    /// `x is T`, `x as T`, `x.is(T)`, `x.as(T)`, `x.ofType(T)`; `base == None`
    /// for the function form without an explicit base.
    Type {
        base: Option<Box<Expr>>,
        op: TypeOp,
        type_name: String,
    },
    Indexer {
        base: Box<Expr>,
        index: Box<Expr>,
    },
    Negate(Box<Expr>),
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    depth: usize,
}

impl Expr {
    fn new(kind: ExprKind) -> Result<Expr, FhirPathError> {
        let child = |e: &Option<Box<Expr>>| e.as_ref().map_or(0, |e| e.depth);
        let depth = 1 + match &kind {
            ExprKind::Literal(_) | ExprKind::Special(_) | ExprKind::Variable(_) => 0,
            ExprKind::Member { base, .. } | ExprKind::Type { base, .. } => child(base),
            ExprKind::Function { base, args, .. } => args
                .iter()
                .map(|a| a.depth)
                .max()
                .unwrap_or(0)
                .max(child(base)),
            ExprKind::Indexer { base, index } => base.depth.max(index.depth),
            ExprKind::Negate(e) => e.depth,
            ExprKind::Binary { lhs, rhs, .. } => lhs.depth.max(rhs.depth),
        };
        if depth > MAX_DEPTH {
            return Err(FhirPathError::TooDeep { limit: MAX_DEPTH });
        }
        Ok(Expr { kind, depth })
    }
}

pub fn parse(src: &str) -> Result<Expr, FhirPathError> {
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        nesting: 0,
    };
    let expr = p.expression(0)?;
    match p.peek() {
        Tok::Eof => Ok(expr),
        other => Err(p.error(format!("unexpected {}", describe(other)))),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Current recursion depth of the parser itself (parentheses, unary ops).
    nesting: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident { name, .. } => format!("identifier '{name}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Num(n) => format!("number {n}"),
        Tok::DateTime(d) => format!("date/time @{d}"),
        Tok::Var(v) => format!("variable %{v}"),
        Tok::Special(s) => format!("${s}"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::Eof => "end of expression".to_string(),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.tokens.get(self.pos).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn peek_at(&self, n: usize) -> &Tok {
        self.tokens.get(self.pos + n).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.pos)
            .or(self.tokens.last())
            .map_or(0, |t| t.offset)
    }

    fn error(&self, message: impl Into<String>) -> FhirPathError {
        FhirPathError::Syntax {
            offset: self.offset(),
            message: message.into(),
        }
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Tok::Sym(s) if *s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), FhirPathError> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.error(format!("expected '{sym}', found {}", describe(self.peek()))))
        }
    }

    fn enter(&mut self) -> Result<(), FhirPathError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            Err(FhirPathError::TooDeep { limit: MAX_DEPTH })
        } else {
            Ok(())
        }
    }

    /// Binary operator at the current position, if any.
    fn peek_binop(&self) -> Option<BinOp> {
        Some(match self.peek() {
            Tok::Sym(s) => match *s {
                "=" => BinOp::Eq,
                "!=" => BinOp::Ne,
                "~" => BinOp::Equiv,
                "!~" => BinOp::NotEquiv,
                "<" => BinOp::Lt,
                ">" => BinOp::Gt,
                "<=" => BinOp::Le,
                ">=" => BinOp::Ge,
                "|" => BinOp::Union,
                "+" => BinOp::Add,
                "-" => BinOp::Sub,
                "&" => BinOp::Concat,
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                _ => return None,
            },
            Tok::Ident {
                name,
                delimited: false,
            } => match name.as_str() {
                "implies" => BinOp::Implies,
                "or" => BinOp::Or,
                "xor" => BinOp::Xor,
                "and" => BinOp::And,
                "in" => BinOp::In,
                "contains" => BinOp::Contains,
                "div" => BinOp::IntDiv,
                "mod" => BinOp::Mod,
                _ => return None,
            },
            _ => return None,
        })
    }

    fn peek_type_op(&self) -> Option<TypeOp> {
        match self.peek() {
            Tok::Ident {
                name,
                delimited: false,
            } => match name.as_str() {
                "is" => Some(TypeOp::Is),
                "as" => Some(TypeOp::As),
                _ => None,
            },
            _ => None,
        }
    }

    fn expression(&mut self, min_prec: u8) -> Result<Expr, FhirPathError> {
        self.enter()?;
        let mut lhs = self.unary()?;
        loop {
            if let Some(op) = self.peek_type_op() {
                if TYPE_OP_PRECEDENCE < min_prec {
                    break;
                }
                self.bump();
                let type_name = self.type_specifier()?;
                lhs = Expr::new(ExprKind::Type {
                    base: Some(Box::new(lhs)),
                    op,
                    type_name,
                })?;
                continue;
            }
            let Some(op) = self.peek_binop() else { break };
            let prec = op.precedence();
            if prec < min_prec {
                break;
            }
            self.bump();
            // Left associative: the right operand binds strictly tighter.
            let rhs = self.expression(prec + 1)?;
            lhs = Expr::new(ExprKind::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            })?;
        }
        self.nesting -= 1;
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, FhirPathError> {
        if self.eat_sym("-") {
            self.enter()?;
            let inner = self.unary()?;
            self.nesting -= 1;
            return Expr::new(ExprKind::Negate(Box::new(inner)));
        }
        if self.eat_sym("+") {
            self.enter()?;
            let inner = self.unary();
            self.nesting -= 1;
            return inner;
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut expr = self.term()?;
        loop {
            if self.eat_sym(".") {
                let name = self.identifier()?;
                expr = self.invocation(Some(expr), name)?;
            } else if self.eat_sym("[") {
                let index = self.expression(0)?;
                self.expect_sym("]")?;
                expr = Expr::new(ExprKind::Indexer {
                    base: Box::new(expr),
                    index: Box::new(index),
                })?;
            } else {
                return Ok(expr);
            }
        }
    }

    fn identifier(&mut self) -> Result<String, FhirPathError> {
        match self.bump() {
            Tok::Ident { name, .. } => Ok(name),
            other => {
                self.pos = self.pos.saturating_sub(1);
                Err(self.error(format!("expected identifier, found {}", describe(&other))))
            }
        }
    }

    /// Member access or function call on `base` (None = the focus).
    fn invocation(&mut self, base: Option<Expr>, name: String) -> Result<Expr, FhirPathError> {
        let base = base.map(Box::new);
        if !self.eat_sym("(") {
            return Expr::new(ExprKind::Member { base, name });
        }
        let type_op = match name.as_str() {
            "is" => Some(TypeOp::Is),
            "as" => Some(TypeOp::As),
            "ofType" => Some(TypeOp::OfType),
            _ => None,
        };
        if let Some(op) = type_op {
            // Type functions take a type specifier, not an expression.
            let type_name = self.type_specifier()?;
            self.expect_sym(")")?;
            return Expr::new(ExprKind::Type {
                base,
                op,
                type_name,
            });
        }
        let mut args = Vec::new();
        if !self.eat_sym(")") {
            loop {
                args.push(self.expression(0)?);
                if self.eat_sym(")") {
                    break;
                }
                self.expect_sym(",")?;
            }
        }
        Expr::new(ExprKind::Function { base, name, args })
    }

    /// `Patient`, `FHIR.Patient`, `System.String`
    fn type_specifier(&mut self) -> Result<String, FhirPathError> {
        let mut name = self.identifier()?;
        while matches!(self.peek(), Tok::Sym(".")) && matches!(self.peek_at(1), Tok::Ident { .. }) {
            self.bump();
            name.push('.');
            name.push_str(&self.identifier()?);
        }
        Ok(name)
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        let offset = self.offset();
        let kind = match self.bump() {
            Tok::Str(s) => ExprKind::Literal(Literal::Str(s)),
            Tok::Num(n) => ExprKind::Literal(Literal::Num(n)),
            Tok::DateTime(d) => ExprKind::Literal(Literal::DateTime(d)),
            Tok::Var(v) => ExprKind::Variable(v),
            Tok::Special(s) => match s.as_str() {
                "this" | "index" | "total" => ExprKind::Special(s),
                _ => {
                    return Err(FhirPathError::Syntax {
                        offset,
                        message: format!("unknown special variable ${s}"),
                    })
                }
            },
            Tok::Sym("{") => {
                self.expect_sym("}")?;
                ExprKind::Literal(Literal::Empty)
            }
            Tok::Sym("(") => {
                let inner = self.expression(0)?;
                self.expect_sym(")")?;
                return Ok(inner);
            }
            Tok::Ident {
                name,
                delimited: false,
            } if name == "true" || name == "false" => {
                ExprKind::Literal(Literal::Bool(name == "true"))
            }
            Tok::Ident { name, .. } => return self.invocation(None, name),
            other => {
                return Err(FhirPathError::Syntax {
                    offset,
                    message: format!("unexpected {}", describe(&other)),
                })
            }
        };
        Expr::new(kind)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn precedence_of_union_and_type_ops() {
        let e = parse("a | b as X").unwrap();
        let ExprKind::Binary { op, rhs, .. } = e.kind else {
            panic!("expected union")
        };
        assert_eq!(op, BinOp::Union);
        assert!(matches!(rhs.kind, ExprKind::Type { op: TypeOp::As, .. }));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let e = parse("a or b and c").unwrap();
        assert!(matches!(e.kind, ExprKind::Binary { op: BinOp::Or, .. }));
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowing() {
        let src = "(".repeat(10_000) + "a" + &")".repeat(10_000);
        assert_eq!(
            parse(&src),
            Err(FhirPathError::TooDeep { limit: MAX_DEPTH })
        );
        let src = "a".to_string() + &".a".repeat(10_000);
        assert_eq!(
            parse(&src),
            Err(FhirPathError::TooDeep { limit: MAX_DEPTH })
        );
        let src = "-".repeat(10_000) + "1";
        assert_eq!(
            parse(&src),
            Err(FhirPathError::TooDeep { limit: MAX_DEPTH })
        );
    }

    #[test]
    fn syntax_errors() {
        for src in [
            "", "a.", "a..b", "a(", "where(", "a b", "1 +", "[1]", "a.is()", "$foo",
        ] {
            assert!(parse(src).is_err(), "{src}");
        }
    }
}
