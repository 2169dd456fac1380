//! Evaluation of a parsed expression over FHIR JSON.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use crate::error::FhirPathError;
use crate::node::{resource_type, Loc, Node};
use crate::parser::{parse, BinOp, Expr, ExprKind, Literal, TypeOp};
use crate::types::{choice_suffix_type, json_kind_matches, type_is};

/// Upper bound on items produced by `repeat()` / `descendants()`; stops
/// pathological inputs from consuming unbounded memory.
const MAX_EXPANSION: usize = 100_000;

/// A compiled FHIRPath expression, reusable across resources.
#[derive(Debug, Clone)]
pub struct Expression {
    source: String,
    ast: Expr,
}

/// Parses a FHIRPath expression.
pub fn compile(source: &str) -> Result<Expression, FhirPathError> {
    Ok(Expression {
        source: source.to_string(),
        ast: parse(source)?,
    })
}

impl Expression {
    /// The expression text this was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression with `resource` as `%resource`/`%context` and
    /// as the initial focus.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Result<Vec<Node<'a>>, FhirPathError> {
        let root = Node::root(resource);
        let ctx = Ctx {
            root: resource,
            root_node: root.clone(),
            this: None,
            index: None,
        };
        eval(&self.ast, &[root], &ctx)
    }
}

impl std::str::FromStr for Expression {
    type Err = FhirPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        compile(s)
    }
}

/// Compiles and evaluates in one go (convenience for one-off expressions).
pub fn evaluate<'a>(expression: &str, resource: &'a Value) -> Result<Vec<Node<'a>>, FhirPathError> {
    compile(expression)?.evaluate(resource)
}

#[derive(Clone)]
struct Ctx<'a> {
    root: &'a Value,
    root_node: Node<'a>,
    this: Option<Node<'a>>,
    index: Option<usize>,
}

impl<'a> Ctx<'a> {
    fn with_this(&self, item: &Node<'a>, index: usize) -> Ctx<'a> {
        Ctx {
            this: Some(item.clone()),
            index: Some(index),
            ..self.clone()
        }
    }

    /// Focus for non-iterating function arguments and indexers: `$this` inside
    /// an iteration, otherwise the resource (as fhirpath.js and HAPI do).
    fn arg_focus(&self) -> Node<'a> {
        self.this.clone().unwrap_or_else(|| self.root_node.clone())
    }
}

type Coll<'a> = Vec<Node<'a>>;
type EvalResult<'a> = Result<Coll<'a>, FhirPathError>;

fn err(msg: impl Into<String>) -> FhirPathError {
    FhirPathError::Evaluation(msg.into())
}

fn eval<'a>(expr: &Expr, focus: &[Node<'a>], ctx: &Ctx<'a>) -> EvalResult<'a> {
    match &expr.kind {
        ExprKind::Literal(lit) => Ok(literal(lit)),
        ExprKind::Special(name) => match name.as_str() {
            "this" => Ok(ctx.this.clone().map_or_else(|| focus.to_vec(), |t| vec![t])),
            "index" => Ok(ctx
                .index
                .map(|i| vec![Node::computed(Value::from(i), Some("integer"))])
                .unwrap_or_default()),
            _ => Err(FhirPathError::Unsupported(format!("${name}"))),
        },
        ExprKind::Variable(name) => variable(name, ctx),
        ExprKind::Member { base, name } => {
            let input = match base {
                Some(b) => eval(b, focus, ctx)?,
                None => {
                    if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                        // A leading type name (`Patient.name`, `Resource.id`)
                        // selects the focus if it is of that type.
                        return Ok(focus
                            .iter()
                            .filter(|n| node_is_type(n, name))
                            .cloned()
                            .collect());
                    }
                    focus.to_vec()
                }
            };
            let mut out = Vec::new();
            for node in &input {
                member(node, name, &mut out);
            }
            Ok(out)
        }
        ExprKind::Type {
            base,
            op,
            type_name,
        } => {
            let input = match base {
                Some(b) => eval(b, focus, ctx)?,
                None => focus.to_vec(),
            };
            match op {
                TypeOp::Is => match input.as_slice() {
                    [] => Ok(vec![]),
                    [n] => Ok(vec![Node::boolean(node_is_type(n, type_name))]),
                    _ => Err(err(format!(
                        "'is {type_name}' requires a single item, got {}",
                        input.len()
                    ))),
                },
                // `as` is treated as a filter like `ofType` instead of erroring
                // on multiple items: the R4 search parameters apply it to
                // repeating elements (e.g. `Observation.component.value as Quantity`).
                TypeOp::As | TypeOp::OfType => Ok(input
                    .into_iter()
                    .filter(|n| node_is_type(n, type_name))
                    .collect()),
            }
        }
        ExprKind::Indexer { base, index } => {
            let input = eval(base, focus, ctx)?;
            let idx = eval(index, &[ctx.arg_focus()], ctx)?;
            let Some(i) = singleton_integer(&idx, "indexer")? else {
                return Ok(vec![]);
            };
            Ok(usize::try_from(i)
                .ok()
                .and_then(|i| input.into_iter().nth(i))
                .into_iter()
                .collect())
        }
        ExprKind::Negate(inner) => {
            let v = eval(inner, focus, ctx)?;
            match v.as_slice() {
                [] => Ok(vec![]),
                [n] => match n.value() {
                    Value::Number(num) => Ok(negate(num).into_iter().collect()),
                    _ => Err(err("unary '-' requires a number")),
                },
                _ => Err(err("unary '-' requires a single item")),
            }
        }
        ExprKind::Binary { op, lhs, rhs } => {
            let l = eval(lhs, focus, ctx)?;
            let r = eval(rhs, focus, ctx)?;
            binary(*op, l, r)
        }
        ExprKind::Function { base, name, args } => {
            let input = match base {
                Some(b) => eval(b, focus, ctx)?,
                None => focus.to_vec(),
            };
            function(name, args, input, ctx)
        }
    }
}

fn literal<'a>(lit: &Literal) -> Coll<'a> {
    match lit {
        Literal::Empty => vec![],
        Literal::Bool(b) => vec![Node::boolean(*b)],
        Literal::Str(s) => vec![Node::computed(Value::String(s.clone()), Some("string"))],
        Literal::Num(text) => {
            let ty = if text.contains('.') {
                "decimal"
            } else {
                "integer"
            };
            // The lexer only produces digit strings, which always parse.
            serde_json::from_str::<Value>(text)
                .map(|v| vec![Node::computed(v, Some(ty))])
                .unwrap_or_default()
        }
        Literal::DateTime(text) => {
            let (text, ty) = if let Some(t) = text.strip_prefix('T') {
                (t, "time")
            } else if text.contains('T') {
                (text.as_str(), "dateTime")
            } else {
                (text.as_str(), "date")
            };
            vec![Node::computed(Value::String(text.to_string()), Some(ty))]
        }
    }
}

fn variable<'a>(name: &str, ctx: &Ctx<'a>) -> EvalResult<'a> {
    let s = |v: &str| {
        Ok(vec![Node::computed(
            Value::String(v.to_string()),
            Some("string"),
        )])
    };
    match name {
        "resource" | "rootResource" | "context" => Ok(vec![ctx.root_node.clone()]),
        "ucum" => s("http://unitsofmeasure.org"),
        "sct" => s("http://snomed.info/sct"),
        "loinc" => s("http://loinc.org"),
        _ => Err(err(format!("unknown variable %{name}"))),
    }
}

/// True when the node is (a subtype of) the named type.
pub(crate) fn node_is_type(node: &Node<'_>, wanted: &str) -> bool {
    match node.type_name() {
        Some(t) => type_is(t, wanted),
        None => json_kind_matches(node.value(), wanted),
    }
}

/// Appends the children named `name` of `node` to `out`, flattening arrays and
/// resolving choice elements (`value` → `valueQuantity`).
fn member<'a>(node: &Node<'a>, name: &str, out: &mut Coll<'a>) {
    match &node.value {
        Cow::Borrowed(v) => {
            let v: &'a Value = v;
            if v.is_object() {
                member_of(v, node.loc.clone(), name, out);
            } else if let Some(ext) = node.primitive_ext {
                // `birthDate.extension` lives in the `_birthDate` companion.
                member_of(ext, None, name, out);
            }
        }
        Cow::Owned(v) => {
            // Computed objects (e.g. resolve() placeholders): navigate a
            // temporary borrow and detach the results from it.
            let mut tmp = Vec::new();
            member_of(v, None, name, &mut tmp);
            out.extend(tmp.into_iter().map(detach));
        }
    }
}

fn detach<'a>(n: Node<'_>) -> Node<'a> {
    Node {
        value: Cow::Owned(n.value.into_owned()),
        type_name: n.type_name.map(|t| Cow::Owned(t.into_owned())),
        loc: None,
        primitive_ext: None,
        choice: n.choice,
    }
}

fn member_of<'b>(value: &'b Value, loc: Option<Arc<Loc<'b>>>, name: &str, out: &mut Coll<'b>) {
    let Value::Object(map) = value else { return };
    if let Some((key, child)) = map.get_key_value(name) {
        push_children(map, loc, key, child, None, false, out);
        return;
    }
    // Choice element: exactly one `name<Type>` key may be present.
    for (key, child) in map {
        if let Some(suffix) = key.strip_prefix(name) {
            if let Some(ty) = choice_suffix_type(suffix) {
                push_children(map, loc, key, child, Some(ty), true, out);
                return;
            }
        }
    }
}

fn push_children<'b>(
    map: &'b Map<String, Value>,
    loc: Option<Arc<Loc<'b>>>,
    key: &'b str,
    child: &'b Value,
    ty: Option<&'static str>,
    choice: bool,
    out: &mut Coll<'b>,
) {
    let companion = map.get(&format!("_{key}"));
    let key_loc = loc.map(|l| Arc::new(Loc::Key(l, key)));
    let make = |v: &'b Value, loc: Option<Arc<Loc<'b>>>, ext: Option<&'b Value>| Node {
        type_name: ty
            .map(Cow::Borrowed)
            .or_else(|| resource_type(v).map(Cow::Borrowed)),
        value: Cow::Borrowed(v),
        loc,
        primitive_ext: ext.filter(|e| e.is_object()),
        choice,
    };
    match child {
        Value::Null => {}
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if item.is_null() {
                    continue;
                }
                let loc = key_loc.as_ref().map(|l| Arc::new(Loc::Index(l.clone(), i)));
                let ext = companion.and_then(|c| c.get(i));
                out.push(make(item, loc, ext));
            }
        }
        _ => out.push(make(child, key_loc, companion)),
    }
}

// ---------------------------------------------------------------- values

fn as_f64(n: &Number) -> Option<f64> {
    n.as_f64().or_else(|| n.to_string().parse().ok())
}

/// FHIRPath equality on JSON values: numbers compare numerically (so `1`
/// equals `1.0`), everything else structurally.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.to_string() == y.to_string()
                || matches!((as_f64(x), as_f64(y)), (Some(x), Some(y)) if x == y)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// FHIRPath equivalence (`~`): case- and whitespace-insensitive for strings.
fn json_equiv(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(x) == norm(y)
        }
        _ => json_eq(a, b),
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => as_f64(x)?.partial_cmp(&as_f64(y)?),
        // Dates/times of equal precision order correctly as strings; mixed
        // precision comparison is not implemented.
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn number_node<'a>(v: Option<Value>, ty: &'static str) -> Coll<'a> {
    v.map(|v| vec![Node::computed(v, Some(ty))])
        .unwrap_or_default()
}

fn f64_value(f: f64) -> Option<Value> {
    Number::from_f64(f).map(Value::Number)
}

fn negate<'a>(n: &Number) -> Option<Node<'a>> {
    if let Some(i) = n.as_i64() {
        return i
            .checked_neg()
            .map(|v| Node::computed(Value::from(v), Some("integer")));
    }
    as_f64(n)
        .and_then(|f| f64_value(-f))
        .map(|v| Node::computed(v, Some("decimal")))
}

/// Boolean value of a collection in a boolean context (FHIRPath "singleton
/// evaluation of collections"): empty → unknown, one boolean → itself, any
/// other single item → true.
fn to_bool(c: &[Node<'_>], what: &str) -> Result<Option<bool>, FhirPathError> {
    match c {
        [] => Ok(None),
        [n] => Ok(Some(n.value().as_bool().unwrap_or(true))),
        _ => Err(err(format!(
            "{what} expects a single boolean, got {} items",
            c.len()
        ))),
    }
}

fn bool_coll<'a>(b: Option<bool>) -> Coll<'a> {
    b.map(|b| vec![Node::boolean(b)]).unwrap_or_default()
}

fn singleton_integer(c: &[Node<'_>], what: &str) -> Result<Option<i64>, FhirPathError> {
    match c {
        [] => Ok(None),
        [n] => n
            .value()
            .as_i64()
            .map(Some)
            .ok_or_else(|| err(format!("{what} requires an integer"))),
        _ => Err(err(format!("{what} requires a single integer"))),
    }
}

fn singleton_string<'c>(c: &'c [Node<'_>], what: &str) -> Result<Option<&'c str>, FhirPathError> {
    match c {
        [] => Ok(None),
        [n] => n
            .value()
            .as_str()
            .map(Some)
            .ok_or_else(|| err(format!("{what} requires a string"))),
        _ => Err(err(format!("{what} requires a single string"))),
    }
}

fn contains_value(c: &[Node<'_>], v: &Value) -> bool {
    c.iter().any(|n| json_eq(n.value(), v))
}

fn distinct(c: Coll<'_>) -> Coll<'_> {
    let mut out: Coll<'_> = Vec::with_capacity(c.len());
    for n in c {
        if !contains_value(&out, n.value()) {
            out.push(n);
        }
    }
    out
}

// ---------------------------------------------------------------- operators

fn binary<'a>(op: BinOp, l: Coll<'a>, r: Coll<'a>) -> EvalResult<'a> {
    use BinOp::*;
    match op {
        Union => {
            let mut all = l;
            all.extend(r);
            Ok(distinct(all))
        }
        Eq | Ne => {
            if l.is_empty() || r.is_empty() {
                return Ok(vec![]);
            }
            let eq =
                l.len() == r.len() && l.iter().zip(&r).all(|(a, b)| json_eq(a.value(), b.value()));
            Ok(vec![Node::boolean(if op == Eq { eq } else { !eq })])
        }
        Equiv | NotEquiv => {
            let eq = l.len() == r.len()
                && l.iter()
                    .all(|a| r.iter().any(|b| json_equiv(a.value(), b.value())));
            Ok(vec![Node::boolean(if op == Equiv { eq } else { !eq })])
        }
        Lt | Gt | Le | Ge => match (l.as_slice(), r.as_slice()) {
            ([], _) | (_, []) => Ok(vec![]),
            ([a], [b]) => Ok(compare(a.value(), b.value())
                .map(|o| {
                    Node::boolean(match op {
                        Lt => o == Ordering::Less,
                        Gt => o == Ordering::Greater,
                        Le => o != Ordering::Greater,
                        _ => o != Ordering::Less,
                    })
                })
                .into_iter()
                .collect()),
            _ => Err(err("comparison requires single items")),
        },
        And => {
            let (a, b) = (to_bool(&l, "and")?, to_bool(&r, "and")?);
            Ok(bool_coll(match (a, b) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }))
        }
        Or => {
            let (a, b) = (to_bool(&l, "or")?, to_bool(&r, "or")?);
            Ok(bool_coll(match (a, b) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }))
        }
        Xor => {
            let (a, b) = (to_bool(&l, "xor")?, to_bool(&r, "xor")?);
            Ok(bool_coll(a.zip(b).map(|(a, b)| a != b)))
        }
        Implies => {
            let (a, b) = (to_bool(&l, "implies")?, to_bool(&r, "implies")?);
            Ok(bool_coll(match (a, b) {
                (Some(false), _) | (_, Some(true)) => Some(true),
                (Some(true), Some(false)) => Some(false),
                _ => None,
            }))
        }
        In | Contains => {
            let (item, coll) = if op == In { (l, r) } else { (r, l) };
            match item.as_slice() {
                [] => Ok(vec![]),
                [n] => Ok(vec![Node::boolean(contains_value(&coll, n.value()))]),
                _ => Err(err("membership test requires a single item")),
            }
        }
        Concat => {
            let s = |c: &Coll<'a>| -> Result<String, FhirPathError> {
                Ok(singleton_string(c, "&")?.unwrap_or_default().to_string())
            };
            let joined = s(&l)? + &s(&r)?;
            Ok(vec![Node::computed(Value::String(joined), Some("string"))])
        }
        Add | Sub | Mul | Div | IntDiv | Mod => arithmetic(op, &l, &r),
    }
}

fn arithmetic<'a>(op: BinOp, l: &[Node<'a>], r: &[Node<'a>]) -> EvalResult<'a> {
    let (a, b) = match (l, r) {
        ([], _) | (_, []) => return Ok(vec![]),
        ([a], [b]) => (a.value(), b.value()),
        _ => return Err(err("arithmetic requires single items")),
    };
    if let (BinOp::Add, Value::String(x), Value::String(y)) = (op, a, b) {
        return Ok(vec![Node::computed(
            Value::String(format!("{x}{y}")),
            Some("string"),
        )]);
    }
    let (Value::Number(x), Value::Number(y)) = (a, b) else {
        return Err(FhirPathError::Unsupported(
            "arithmetic on non-numeric values (dates, quantities)".into(),
        ));
    };
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        let v = match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::IntDiv => x.checked_div(y),
            BinOp::Mod => x.checked_rem(y),
            _ => None,
        };
        if op != BinOp::Div {
            return Ok(number_node(v.map(Value::from), "integer"));
        }
    }
    let (Some(x), Some(y)) = (as_f64(x), as_f64(y)) else {
        return Ok(vec![]);
    };
    Ok(match op {
        BinOp::Add => number_node(f64_value(x + y), "decimal"),
        BinOp::Sub => number_node(f64_value(x - y), "decimal"),
        BinOp::Mul => number_node(f64_value(x * y), "decimal"),
        _ if y == 0.0 => vec![],
        BinOp::Div => number_node(f64_value(x / y), "decimal"),
        // Saturating float→int cast is fine: results are only meaningful in range.
        BinOp::IntDiv => number_node(Some(Value::from((x / y).trunc() as i64)), "integer"),
        _ => number_node(f64_value(x % y), "decimal"),
    })
}

// ---------------------------------------------------------------- functions

fn check_arity(name: &str, args: &[Expr], min: usize, max: usize) -> Result<(), FhirPathError> {
    if args.len() < min || args.len() > max {
        let expected = if min == max {
            min.to_string()
        } else {
            format!("{min}..{max}")
        };
        return Err(FhirPathError::Arity {
            name: name.to_string(),
            expected,
            got: args.len(),
        });
    }
    Ok(())
}

/// Evaluates `expr` once per item with `$this` bound to it.
fn for_each_item<'a>(
    input: &[Node<'a>],
    expr: &Expr,
    ctx: &Ctx<'a>,
    mut f: impl FnMut(&Node<'a>, Coll<'a>) -> Result<(), FhirPathError>,
) -> Result<(), FhirPathError> {
    for (i, item) in input.iter().enumerate() {
        let c = ctx.with_this(item, i);
        let r = eval(expr, std::slice::from_ref(item), &c)?;
        f(item, r)?;
    }
    Ok(())
}

fn function<'a>(name: &str, args: &[Expr], input: Coll<'a>, ctx: &Ctx<'a>) -> EvalResult<'a> {
    // Non-iterating arguments are evaluated against `$this`/the resource.
    let arg = |i: usize| -> EvalResult<'a> {
        match args.get(i) {
            Some(a) => eval(a, &[ctx.arg_focus()], ctx),
            None => Ok(vec![]),
        }
    };
    let arity = |min, max| check_arity(name, args, min, max);
    let string_input = || singleton_string(&input, name);
    let string_result = |s: String| Ok(vec![Node::computed(Value::String(s), Some("string"))]);
    match name {
        "empty" => {
            arity(0, 0)?;
            Ok(vec![Node::boolean(input.is_empty())])
        }
        "exists" => {
            arity(0, 1)?;
            match args.first() {
                None => Ok(vec![Node::boolean(!input.is_empty())]),
                Some(crit) => {
                    let mut any = false;
                    for_each_item(&input, crit, ctx, |_, r| {
                        any |= to_bool(&r, "exists()")? == Some(true);
                        Ok(())
                    })?;
                    Ok(vec![Node::boolean(any)])
                }
            }
        }
        "all" => {
            arity(1, 1)?;
            let mut all = true;
            if let Some(crit) = args.first() {
                for_each_item(&input, crit, ctx, |_, r| {
                    all &= to_bool(&r, "all()")? == Some(true);
                    Ok(())
                })?;
            }
            Ok(vec![Node::boolean(all)])
        }
        "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
            arity(0, 0)?;
            let want = name.ends_with("True");
            let hits = input
                .iter()
                .filter(|n| n.value().as_bool() == Some(want))
                .count();
            Ok(vec![Node::boolean(if name.starts_with("all") {
                hits == input.len()
            } else {
                hits > 0
            })])
        }
        "where" => {
            arity(1, 1)?;
            let mut out = Vec::new();
            if let Some(crit) = args.first() {
                for_each_item(&input, crit, ctx, |item, r| {
                    if to_bool(&r, "where()")? == Some(true) {
                        out.push(item.clone());
                    }
                    Ok(())
                })?;
            }
            Ok(out)
        }
        "select" => {
            arity(1, 1)?;
            let mut out = Vec::new();
            if let Some(proj) = args.first() {
                for_each_item(&input, proj, ctx, |_, r| {
                    out.extend(r);
                    Ok(())
                })?;
            }
            Ok(out)
        }
        "repeat" => {
            arity(1, 1)?;
            let mut out: Coll<'a> = Vec::new();
            let mut frontier = input;
            while !frontier.is_empty() {
                let mut next = Vec::new();
                if let Some(proj) = args.first() {
                    for_each_item(&frontier, proj, ctx, |_, r| {
                        next.extend(r);
                        Ok(())
                    })?;
                }
                frontier = next
                    .into_iter()
                    .filter(|n| !contains_value(&out, n.value()))
                    .collect();
                out.extend(frontier.iter().cloned());
                if out.len() > MAX_EXPANSION {
                    return Err(err("repeat() produced too many items"));
                }
            }
            Ok(out)
        }
        "count" => {
            arity(0, 0)?;
            Ok(vec![Node::computed(
                Value::from(input.len()),
                Some("integer"),
            )])
        }
        "distinct" => {
            arity(0, 0)?;
            Ok(distinct(input))
        }
        "isDistinct" => {
            arity(0, 0)?;
            let n = input.len();
            Ok(vec![Node::boolean(distinct(input).len() == n)])
        }
        "first" => {
            arity(0, 0)?;
            Ok(input.into_iter().take(1).collect())
        }
        "last" => {
            arity(0, 0)?;
            Ok(input.into_iter().last().into_iter().collect())
        }
        "tail" => {
            arity(0, 0)?;
            Ok(input.into_iter().skip(1).collect())
        }
        "skip" | "take" => {
            arity(1, 1)?;
            let n = singleton_integer(&arg(0)?, name)?.unwrap_or(0).max(0);
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            Ok(if name == "skip" {
                input.into_iter().skip(n).collect()
            } else {
                input.into_iter().take(n).collect()
            })
        }
        "single" => {
            arity(0, 0)?;
            if input.len() > 1 {
                return Err(err("single() called on a collection with several items"));
            }
            Ok(input)
        }
        "not" => {
            arity(0, 0)?;
            Ok(bool_coll(to_bool(&input, "not()")?.map(|b| !b)))
        }
        "iif" => {
            arity(2, 3)?;
            let cond = match args.first() {
                Some(c) => eval(c, &input, ctx)?,
                None => vec![],
            };
            if to_bool(&cond, "iif()")? == Some(true) {
                arg(1)
            } else {
                arg(2)
            }
        }
        "union" | "combine" | "intersect" | "exclude" => {
            arity(1, 1)?;
            let other = arg(0)?;
            Ok(match name {
                "union" => distinct(input.into_iter().chain(other).collect()),
                "combine" => input.into_iter().chain(other).collect(),
                "intersect" => distinct(
                    input
                        .into_iter()
                        .filter(|n| contains_value(&other, n.value()))
                        .collect(),
                ),
                _ => input
                    .into_iter()
                    .filter(|n| !contains_value(&other, n.value()))
                    .collect(),
            })
        }
        "extension" => {
            arity(1, 1)?;
            let url_arg = arg(0)?;
            let Some(url) = singleton_string(&url_arg, "extension()")? else {
                return Ok(vec![]);
            };
            let mut exts = Vec::new();
            for n in &input {
                member(n, "extension", &mut exts);
            }
            Ok(exts
                .into_iter()
                .filter(|e| e.value().get("url").and_then(Value::as_str) == Some(url))
                .collect())
        }
        "resolve" => {
            arity(0, 0)?;
            Ok(input.iter().filter_map(|n| resolve(n, ctx)).collect())
        }
        "hasValue" => {
            arity(0, 0)?;
            Ok(vec![Node::boolean(matches!(
                input.as_slice(),
                [n] if !n.value().is_object() && !n.value().is_array()
            ))])
        }
        "getValue" => {
            arity(0, 0)?;
            Ok(input
                .into_iter()
                .filter(|n| !n.value().is_object())
                .take(1)
                .collect())
        }
        "children" | "descendants" => {
            arity(0, 0)?;
            let mut out = Vec::new();
            let mut frontier = input;
            loop {
                let mut next = Vec::new();
                for n in &frontier {
                    children(n, &mut next);
                }
                if next.is_empty() {
                    break;
                }
                out.extend(next.iter().cloned());
                if name == "children" {
                    break;
                }
                if out.len() > MAX_EXPANSION {
                    return Err(err("descendants() produced too many items"));
                }
                frontier = next;
            }
            Ok(out)
        }
        "trace" => {
            arity(1, 2)?;
            Ok(input)
        }
        "toString" => {
            arity(0, 0)?;
            Ok(match input.as_slice() {
                [n] => match n.value() {
                    Value::String(s) => {
                        vec![Node::computed(Value::String(s.clone()), Some("string"))]
                    }
                    Value::Number(x) => {
                        vec![Node::computed(Value::String(x.to_string()), Some("string"))]
                    }
                    Value::Bool(b) => {
                        vec![Node::computed(Value::String(b.to_string()), Some("string"))]
                    }
                    _ => vec![],
                },
                _ => vec![],
            })
        }
        "toInteger" => {
            arity(0, 0)?;
            Ok(match input.as_slice() {
                [n] => match n.value() {
                    Value::Number(x) => number_node(x.as_i64().map(Value::from), "integer"),
                    Value::String(s) => {
                        number_node(s.parse::<i64>().ok().map(Value::from), "integer")
                    }
                    Value::Bool(b) => number_node(Some(Value::from(i64::from(*b))), "integer"),
                    _ => vec![],
                },
                _ => vec![],
            })
        }
        "toDecimal" => {
            arity(0, 0)?;
            Ok(match input.as_slice() {
                [n] => match n.value() {
                    Value::Number(x) => number_node(Some(Value::Number(x.clone())), "decimal"),
                    Value::String(s) => {
                        number_node(s.parse::<f64>().ok().and_then(f64_value), "decimal")
                    }
                    _ => vec![],
                },
                _ => vec![],
            })
        }
        "startsWith" | "endsWith" | "contains" => {
            arity(1, 1)?;
            let needle_c = arg(0)?;
            let (Some(s), Some(needle)) = (string_input()?, singleton_string(&needle_c, name)?)
            else {
                return Ok(vec![]);
            };
            Ok(vec![Node::boolean(match name {
                "startsWith" => s.starts_with(needle),
                "endsWith" => s.ends_with(needle),
                _ => s.contains(needle),
            })])
        }
        "indexOf" => {
            arity(1, 1)?;
            let needle_c = arg(0)?;
            let (Some(s), Some(needle)) = (string_input()?, singleton_string(&needle_c, name)?)
            else {
                return Ok(vec![]);
            };
            let idx = s.find(needle).map_or(-1, |b| s[..b].chars().count() as i64);
            Ok(vec![Node::computed(Value::from(idx), Some("integer"))])
        }
        "substring" => {
            arity(1, 2)?;
            let Some(s) = string_input()? else {
                return Ok(vec![]);
            };
            let start = singleton_integer(&arg(0)?, name)?;
            let len = singleton_integer(&arg(1)?, name)?;
            let Some(start) = start.and_then(|s| usize::try_from(s).ok()) else {
                return Ok(vec![]);
            };
            if start >= s.chars().count() {
                return Ok(vec![]);
            }
            let take = len.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(0));
            string_result(s.chars().skip(start).take(take).collect())
        }
        "upper" | "lower" | "trim" => {
            arity(0, 0)?;
            let Some(s) = string_input()? else {
                return Ok(vec![]);
            };
            string_result(match name {
                "upper" => s.to_uppercase(),
                "lower" => s.to_lowercase(),
                _ => s.trim().to_string(),
            })
        }
        "length" => {
            arity(0, 0)?;
            let Some(s) = string_input()? else {
                return Ok(vec![]);
            };
            Ok(vec![Node::computed(
                Value::from(s.chars().count()),
                Some("integer"),
            )])
        }
        "replace" => {
            arity(2, 2)?;
            let (pat, sub) = (arg(0)?, arg(1)?);
            let (Some(s), Some(pat), Some(sub)) = (
                string_input()?,
                singleton_string(&pat, name)?,
                singleton_string(&sub, name)?,
            ) else {
                return Ok(vec![]);
            };
            string_result(s.replace(pat, sub))
        }
        "toChars" => {
            arity(0, 0)?;
            let Some(s) = string_input()? else {
                return Ok(vec![]);
            };
            Ok(s.chars()
                .map(|c| Node::computed(Value::String(c.to_string()), Some("string")))
                .collect())
        }
        "matches" | "replaceMatches" => Err(FhirPathError::Unsupported(format!(
            "{name}() (regular expressions)"
        ))),
        "memberOf" | "subsumes" | "subsumedBy" | "conformsTo" | "htmlChecks" | "now" | "today"
        | "timeOfDay" | "aggregate" | "type" | "encode" | "decode" | "elementDefinition"
        | "slice" | "checkModifiers" => Err(FhirPathError::Unsupported(format!("{name}()"))),
        _ => Err(err(format!("unknown function {name}()"))),
    }
}

fn children<'a>(node: &Node<'a>, out: &mut Coll<'a>) {
    match &node.value {
        Cow::Borrowed(v) => {
            let v: &'a Value = v;
            let Value::Object(map) = v else { return };
            for (key, child) in map {
                if key.starts_with('_') || key == "resourceType" {
                    continue;
                }
                let ty = choice_type_of_key(key);
                push_children(map, node.loc.clone(), key, child, ty, ty.is_some(), out);
            }
        }
        Cow::Owned(Value::Object(map)) => {
            let mut tmp = Vec::new();
            for (key, child) in map {
                if key.starts_with('_') || key == "resourceType" {
                    continue;
                }
                push_children(map, None, key, child, None, false, &mut tmp);
            }
            out.extend(tmp.into_iter().map(detach));
        }
        _ => {}
    }
}

/// Best-effort type of a key seen without its element name (`children()`).
fn choice_type_of_key(key: &str) -> Option<&'static str> {
    key.char_indices()
        .filter(|(_, c)| c.is_ascii_uppercase())
        .find_map(|(i, _)| choice_suffix_type(&key[i..]).filter(|_| i > 0))
}

/// `resolve()` without a server: contained (`#id`) and Bundle-internal
/// references resolve to the real resource; anything else yields a
/// placeholder `{"resourceType": T, "id": id}` so that type tests such as
/// `resolve() is Patient` work.
fn resolve<'a>(node: &Node<'a>, ctx: &Ctx<'a>) -> Option<Node<'a>> {
    let value = node.value();
    let reference = match value {
        Value::String(s) => Some(s.as_str()),
        Value::Object(m) => m.get("reference").and_then(Value::as_str),
        _ => None,
    };
    let declared_type = value.get("type").and_then(Value::as_str);
    let root = ctx.root;
    let Some(reference) = reference else {
        return declared_type.map(|t| placeholder(t, None));
    };
    if let Some(id) = reference.strip_prefix('#') {
        if id.is_empty() {
            return Some(ctx.root_node.clone());
        }
        let contained = root.get("contained")?.as_array()?;
        let (i, res) = contained
            .iter()
            .enumerate()
            .find(|(_, r)| r.get("id").and_then(Value::as_str) == Some(id))?;
        return Some(nested_resource(ctx, &["contained"], i, res));
    }
    let parsed = parse_reference(reference);
    if resource_type(root) == Some("Bundle") {
        if let Some(entries) = root.get("entry").and_then(Value::as_array) {
            for (i, entry) in entries.iter().enumerate() {
                let Some(res) = entry.get("resource") else {
                    continue;
                };
                let full_url_match =
                    entry.get("fullUrl").and_then(Value::as_str) == Some(reference);
                let id_match = parsed.is_some_and(|(t, id)| {
                    resource_type(res) == Some(t)
                        && res.get("id").and_then(Value::as_str) == Some(id)
                });
                if full_url_match || id_match {
                    let loc = ctx.root_node.loc.clone().map(|l| {
                        let l = Arc::new(Loc::Index(Arc::new(Loc::Key(l, "entry")), i));
                        Arc::new(Loc::Key(l, "resource"))
                    });
                    return Some(Node {
                        type_name: resource_type(res).map(Cow::Borrowed),
                        value: Cow::Borrowed(res),
                        loc,
                        primitive_ext: None,
                        choice: false,
                    });
                }
            }
        }
    }
    match parsed {
        Some((t, id)) => Some(placeholder(t, Some(id))),
        None => declared_type.map(|t| placeholder(t, None)),
    }
}

fn nested_resource<'a>(ctx: &Ctx<'a>, key: &[&'static str], i: usize, res: &'a Value) -> Node<'a> {
    let mut loc = ctx.root_node.loc.clone();
    for k in key {
        loc = loc.map(|l| Arc::new(Loc::Key(l, k)));
    }
    Node {
        type_name: resource_type(res).map(Cow::Borrowed),
        value: Cow::Borrowed(res),
        loc: loc.map(|l| Arc::new(Loc::Index(l, i))),
        primitive_ext: None,
        choice: false,
    }
}

fn placeholder<'a>(resource_type: &str, id: Option<&str>) -> Node<'a> {
    let mut m = Map::new();
    m.insert("resourceType".into(), Value::String(resource_type.into()));
    if let Some(id) = id {
        m.insert("id".into(), Value::String(id.into()));
    }
    Node {
        value: Cow::Owned(Value::Object(m)),
        type_name: Some(Cow::Owned(resource_type.to_string())),
        loc: None,
        primitive_ext: None,
        choice: false,
    }
}

/// Splits `Patient/1`, `http://x/fhir/Patient/1/_history/2` into (type, id).
fn parse_reference(reference: &str) -> Option<(&str, &str)> {
    let reference = reference.split(['?', '#']).next().unwrap_or(reference);
    let mut segs: Vec<&str> = reference.split('/').collect();
    if segs.len() >= 4 && segs[segs.len() - 2] == "_history" {
        segs.truncate(segs.len() - 2);
    }
    let [.., t, id] = segs.as_slice() else {
        return None;
    };
    let valid_type = t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric());
    (valid_type && !id.is_empty()).then_some((*t, *id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_parsing() {
        assert_eq!(parse_reference("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            parse_reference("http://x.org/fhir/Patient/1/_history/3"),
            Some(("Patient", "1"))
        );
        assert_eq!(parse_reference("urn:uuid:1234"), None);
        assert_eq!(parse_reference("patient/1"), None);
        assert_eq!(parse_reference("Patient/"), None);
    }
}
