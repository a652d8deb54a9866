//! The known fields of the documents rules see, so that a misspelt field (`profile.computed.ordr_count`)
//! is refused when the rule is saved instead of silently being false for everyone.

use cel::common::ast::{EntryExpr, Expr};
use cel::{IdedExpr, Program};

/// What is known about a document or a part of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Any field may be read below this point (free traits, request context, event properties).
    Open,
    /// A value without fields (a number, a string, a boolean, a list, a timestamp in milliseconds).
    Leaf,
    /// An object with exactly these fields.
    Fields(Vec<(&'static str, Shape)>),
}

impl Shape {
    /// An object with these fields.
    pub fn fields(fields: impl IntoIterator<Item = (&'static str, Shape)>) -> Self {
        Shape::Fields(fields.into_iter().collect())
    }

    /// An object whose fields are all leaves.
    pub fn leaves(names: &[&'static str]) -> Self {
        Shape::Fields(names.iter().map(|n| (*n, Shape::Leaf)).collect())
    }

    fn field(&self, name: &str) -> Option<&Shape> {
        match self {
            Shape::Open => Some(&Shape::Open),
            Shape::Leaf => None,
            Shape::Fields(f) => f.iter().find(|(n, _)| *n == name).map(|(_, s)| s),
        }
    }

    fn known(&self) -> String {
        match self {
            Shape::Fields(f) => f.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            _ => String::new(),
        }
    }
}

/// A field a rule reads that its document does not have, with where it is written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnknownField {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub known: String,
    pub parent: String,
}

/// Line and column (1-based, in characters) of byte `offset` of `source`.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in source.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// The first field read by `program` that `shapes` say does not exist.
pub(crate) fn check(program: &Program, source: &str, shapes: &[(&str, &Shape)]) -> Option<UnknownField> {
    let mut found = None;
    walk(program.expression(), program, source, shapes, &mut Vec::new(), &mut found);
    found
}

/// The chain of plain field selections `a.b.c` below `expr` as (root, [(field, node id)]).
fn chain(expr: &IdedExpr) -> Option<(&str, Vec<(&str, u64)>)> {
    match &expr.expr {
        Expr::Ident(name) => Some((name.as_str(), Vec::new())),
        Expr::Select(s) => {
            let (root, mut fields) = chain(&s.operand)?;
            fields.push((s.field.as_str(), expr.id));
            Some((root, fields))
        }
        _ => None,
    }
}

fn walk(
    expr: &IdedExpr,
    program: &Program,
    source: &str,
    shapes: &[(&str, &Shape)],
    bound: &mut Vec<String>,
    found: &mut Option<UnknownField>,
) {
    if found.is_some() {
        return;
    }
    if let Some((root, fields)) = chain(expr) {
        // A comprehension variable shadows a document of the same name.
        if bound.iter().any(|b| b == root) {
            return;
        }
        if let Some((_, shape)) = shapes.iter().find(|(n, _)| *n == root) {
            let mut at: &Shape = shape;
            let mut path = root.to_string();
            for (field, id) in fields {
                match at.field(field) {
                    Some(next) => {
                        path.push('.');
                        path.push_str(field);
                        at = next;
                    }
                    None => {
                        let offset = program.source_info().offset_for(id).map_or(0, |(start, _)| start as usize);
                        let (line, column) = line_column(source, offset);
                        *found = Some(UnknownField {
                            path: format!("{path}.{field}"),
                            line,
                            column,
                            known: at.known(),
                            parent: path,
                        });
                        return;
                    }
                }
            }
        }
        return;
    }
    match &expr.expr {
        Expr::Select(s) => walk(&s.operand, program, source, shapes, bound, found),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, program, source, shapes, bound, found);
            }
            for a in &c.args {
                walk(a, program, source, shapes, bound, found);
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, program, source, shapes, bound, found);
            walk(&c.accu_init, program, source, shapes, bound, found);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            walk(&c.loop_cond, program, source, shapes, bound, found);
            walk(&c.loop_step, program, source, shapes, bound, found);
            walk(&c.result, program, source, shapes, bound, found);
            bound.truncate(before);
        }
        Expr::List(l) => {
            for e in &l.elements {
                walk(e, program, source, shapes, bound, found);
            }
        }
        Expr::Map(m) => {
            for e in &m.entries {
                if let EntryExpr::MapEntry(me) = &e.expr {
                    walk(&me.key, program, source, shapes, bound, found);
                    walk(&me.value, program, source, shapes, bound, found);
                }
            }
        }
        Expr::Struct(s) => {
            for e in &s.entries {
                match &e.expr {
                    EntryExpr::StructField(f) => walk(&f.value, program, source, shapes, bound, found),
                    EntryExpr::MapEntry(me) => walk(&me.value, program, source, shapes, bound, found),
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// How deeply comprehensions (`all`, `exists`, `map`, `filter`) nest in `expr`.
pub(crate) fn comprehension_depth(expr: &IdedExpr) -> usize {
    let children: Vec<&IdedExpr> = match &expr.expr {
        Expr::Select(s) => vec![&s.operand],
        Expr::Call(c) => c.target.iter().map(|t| t.as_ref()).chain(c.args.iter()).collect(),
        Expr::Comprehension(c) => {
            let inner = [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .map(comprehension_depth)
                .max()
                .unwrap_or(0);
            return inner + 1;
        }
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m
            .entries
            .iter()
            .flat_map(|e| match &e.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .map(|e| match &e.expr {
                EntryExpr::StructField(f) => &f.value,
                EntryExpr::MapEntry(me) => &me.value,
            })
            .collect(),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => vec![],
    };
    children.into_iter().map(comprehension_depth).max().unwrap_or(0)
}

/// The identifiers `expr` reads that no comprehension inside it binds.
pub(crate) fn free_variables(expr: &IdedExpr) -> Vec<String> {
    fn go(expr: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
        match &expr.expr {
            Expr::Ident(name) => {
                if !bound.contains(name) {
                    out.push(name.clone());
                }
            }
            Expr::Select(s) => go(&s.operand, bound, out),
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    go(t, bound, out);
                }
                for a in &c.args {
                    go(a, bound, out);
                }
            }
            Expr::Comprehension(c) => {
                go(&c.iter_range, bound, out);
                go(&c.accu_init, bound, out);
                let before = bound.len();
                bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    bound.push(v.clone());
                }
                bound.push(c.accu_var.clone());
                for e in [&c.loop_cond, &c.loop_step, &c.result] {
                    go(e, bound, out);
                }
                bound.truncate(before);
            }
            Expr::List(l) => l.elements.iter().for_each(|e| go(e, bound, out)),
            Expr::Map(m) => {
                for e in &m.entries {
                    match &e.expr {
                        EntryExpr::MapEntry(me) => {
                            go(&me.key, bound, out);
                            go(&me.value, bound, out);
                        }
                        EntryExpr::StructField(f) => go(&f.value, bound, out),
                    }
                }
            }
            Expr::Struct(s) => {
                for e in &s.entries {
                    match &e.expr {
                        EntryExpr::StructField(f) => go(&f.value, bound, out),
                        EntryExpr::MapEntry(me) => go(&me.value, bound, out),
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    let mut out = Vec::new();
    go(expr, &mut Vec::new(), &mut out);
    out
}
