//! `INSERT INTO sink SELECT ...`: the tables it reads, its columns, and its window
//! lifted out of the `GROUP BY`.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast::{
    self, Expr, GroupByExpr, Ident, SelectItem, SetExpr, Spanned, TableFactor, TableObject,
};
use datafusion::sql::sqlparser::tokenizer::Location;
use forewarn_core::WindowSpec;
use forewarn_formats::TopicTemplate;

use crate::error::err;
use crate::window::{parse_window, window_call};
use crate::SqlErrorKind;
use crate::{QueryDecl, QuerySet, SqlError, WINDOW_END, WINDOW_START};

/// A table a query reads: its name, its alias if any, and where it is named.
type TableRead = (String, Option<String>, Location);

impl QuerySet {
    /// One `INSERT INTO sink SELECT ...` as a [`QueryDecl`] named `name`; its sink,
    /// source and joined tables must be declared already.
    pub(crate) fn parse_insert(
        &self,
        file: &str,
        text: &str,
        name: String,
        ins: ast::Insert,
    ) -> Result<QueryDecl, SqlError> {
        let line = ins.insert_token.0.span.start.line;
        let at = ins.insert_token.0.span.start;
        let sink = match &ins.table {
            TableObject::TableName(n) => n.to_string(),
            _ => return Err(err(file, text, at, "INSERT INTO must name a sink table")),
        };
        if !self.sinks.contains_key(&sink) {
            let hint = if self.sources.contains_key(&sink) {
                " (it is a source: sinks are declared without columns)"
            } else {
                " (declare it first with CREATE TABLE ... WITH (connector = 'mqtt', topic = '...'))"
            };
            return Err(
                err(file, text, at, format!("unknown sink table '{sink}'{hint}"))
                    .with_kind(SqlErrorKind::UnknownTable),
            );
        }
        let mut query = ins
            .source
            .ok_or_else(|| err(file, text, at, "INSERT needs a SELECT"))?;
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(err(
                file,
                text,
                at,
                "the query must be a single SELECT (UNION and VALUES are not supported)",
            )
            .with_kind(SqlErrorKind::Unsupported));
        };
        let (tables, references) = self.tables_read(file, text, select)?;
        let source = tables[0].0.clone();
        let scope: Vec<(&str, Option<&str>, &SchemaRef)> = tables
            .iter()
            .map(|(t, a, _)| {
                let schema = match self.sources.get(t) {
                    Some(s) => &s.schema,
                    None => &self.references[t].schema,
                };
                (t.as_str(), a.as_deref(), schema)
            })
            .collect();
        check_columns(file, text, &scope, select)?;
        let (window, keys) = lift_window(file, text, at, select)?;
        let session_keys = self.session_keys(file, text, &source, &window, &keys)?;
        let (key_columns, topic_keys) = self.key_columns(&source, select, &keys);
        for item in &select.projection {
            let e = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => continue,
            };
            if let Some((_, _, span)) = window_call(e) {
                return Err(err(file, text, span.start, "select window bounds as window_start and window_end, not with the window function").with_kind(SqlErrorKind::Window));
            }
        }
        Ok(QueryDecl {
            name,
            sink,
            source,
            references,
            window,
            session_keys,
            key_columns,
            topic_keys,
            select_sql: query.to_string(),
            file: file.to_string(),
            line,
        })
    }

    /// The tables the query reads, with their aliases and positions: the stream in
    /// `FROM`, then the reference tables joined to it (also returned by name).
    fn tables_read(
        &self,
        file: &str,
        text: &str,
        select: &ast::Select,
    ) -> Result<(Vec<TableRead>, Vec<String>), SqlError> {
        if select.from.len() != 1 {
            return Err(err(
                file,
                text,
                select.select_token.0.span.start,
                "a windowed query reads exactly one source table; join reference tables with JOIN ... ON",
            ).with_kind(SqlErrorKind::Unsupported));
        }
        // The stream is the FROM table; everything joined to it must be a file table.
        let mut tables: Vec<TableRead> = Vec::new();
        let from = &select.from[0];
        for rel in std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation)) {
            match rel {
                TableFactor::Table { name, alias, .. } => tables.push((
                    name.to_string(),
                    alias.as_ref().map(|a| a.name.value.clone()),
                    rel.span().start,
                )),
                other => {
                    return Err(err(
                        file,
                        text,
                        other.span().start,
                        "FROM and JOIN must name tables (subqueries are not supported)",
                    )
                    .with_kind(SqlErrorKind::Unsupported))
                }
            }
        }
        let (source, _, src_loc) = tables[0].clone();
        if !self.sources.contains_key(&source) {
            let hint = if self.references.contains_key(&source) {
                " (it is a file table: read the stream first and JOIN the file table to it)"
            } else {
                ""
            };
            return Err(err(
                file,
                text,
                src_loc,
                format!("unknown source table '{source}'{hint}"),
            )
            .with_kind(SqlErrorKind::UnknownTable));
        }
        let mut references = Vec::new();
        for (t, _, loc) in &tables[1..] {
            if self.sources.contains_key(t) {
                return Err(err(file, text, *loc, format!("'{t}' is a stream: joining two streams is not supported, only file tables (connector = 'file')")).with_kind(SqlErrorKind::Unsupported));
            }
            if !self.references.contains_key(t) {
                return Err(err(
                    file,
                    text,
                    *loc,
                    format!("unknown table '{t}' (declare it with CREATE TABLE ... WITH (connector = 'file', path = '...csv'))"),
                ).with_kind(SqlErrorKind::UnknownTable));
            }
            references.push(t.clone());
        }
        Ok((tables, references))
    }

    /// For a session window, the source columns its `GROUP BY` keys name.
    fn session_keys(
        &self,
        file: &str,
        text: &str,
        source: &str,
        window: &WindowSpec,
        keys: &[Expr],
    ) -> Result<Vec<String>, SqlError> {
        let mut session_keys = Vec::new();
        if window.is_session() {
            // Sessions are tracked per key by the runtime, which reads the key columns
            // from the source rows.
            for k in keys {
                let col = match k {
                    Expr::Identifier(i) => Some(i),
                    Expr::CompoundIdentifier(p) if p.len() == 2 => p.last(),
                    _ => None,
                };
                let schema = &self.sources[source].schema;
                match col.and_then(|c| {
                    schema
                        .fields()
                        .iter()
                        .find(|f| f.name().eq_ignore_ascii_case(&c.value))
                }) {
                    Some(f) => session_keys.push(f.name().clone()),
                    None => {
                        return Err(err(
                            file,
                            text,
                            k.span().start,
                            format!("session windows are keyed by columns of the source '{source}'; '{k}' is not one"),
                        ).with_kind(SqlErrorKind::UnknownColumn))
                    }
                }
            }
        }
        Ok(session_keys)
    }

    /// The output columns that are `GROUP BY` keys, and those of them the source's topic
    /// captures.
    fn key_columns(
        &self,
        source: &str,
        select: &ast::Select,
        keys: &[Expr],
    ) -> (Vec<String>, Vec<String>) {
        // Output columns that are GROUP BY keys, with the key's column name (`r.device`
        // and `device` are the same key).
        let name_of = |e: &Expr| match e {
            Expr::Identifier(i) => i.value.to_lowercase(),
            Expr::CompoundIdentifier(p) => {
                p.last().map_or(String::new(), |i| i.value.to_lowercase())
            }
            other => other.to_string(),
        };
        let key_names: Vec<String> = keys.iter().map(name_of).collect();
        let mut key_columns: Vec<(String, String)> = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(e) if key_names.contains(&name_of(e)) => {
                    key_columns.push((name_of(e), name_of(e)))
                }
                SelectItem::ExprWithAlias { expr, alias } if key_names.contains(&name_of(expr)) => {
                    key_columns.push((alias.value.clone(), name_of(expr)))
                }
                _ => {}
            }
        }
        // The keys the source's topic captures, from the coarsest level to the finest.
        let mut topic_keys = Vec::new();
        if let Some(t) = self.sources[source]
            .topic_template
            .as_deref()
            .and_then(|t| TopicTemplate::parse(t).ok())
        {
            for c in t.captures() {
                if let Some((out, _)) = key_columns.iter().find(|(_, k)| k.eq_ignore_ascii_case(c))
                {
                    topic_keys.push(out.clone());
                }
            }
        }
        let key_columns: Vec<String> = key_columns.into_iter().map(|(o, _)| o).collect();
        (key_columns, topic_keys)
    }
}

/// Lifts `tumble(...)` out of the GROUP BY: the runtime assigns rows to windows and
/// stamps them with `window_start`/`window_end`, which stay as ordinary group keys.
/// Returns the window and the other keys.
fn lift_window(
    file: &str,
    text: &str,
    at: Location,
    select: &mut ast::Select,
) -> Result<(WindowSpec, Vec<Expr>), SqlError> {
    let GroupByExpr::Expressions(group, _) = &mut select.group_by else {
        return Err(err(
            file,
            text,
            at,
            "GROUP BY ALL is not supported; name a window and keys",
        )
        .with_kind(SqlErrorKind::Unsupported));
    };
    let mut window = None;
    let mut rewritten = Vec::new();
    let mut keys = Vec::new();
    for g in group.drain(..) {
        match window_call(&g) {
            Some((fname, args, span)) => {
                if window.is_some() {
                    return Err(err(
                        file,
                        text,
                        span.start,
                        "only one window function is allowed in GROUP BY",
                    )
                    .with_kind(SqlErrorKind::Window));
                }
                window = Some(parse_window(file, text, &fname, &args, span)?);
                rewritten.push(Expr::Identifier(Ident::new(WINDOW_START)));
                rewritten.push(Expr::Identifier(Ident::new(WINDOW_END)));
            }
            None => {
                keys.push(g.clone());
                rewritten.push(g)
            }
        }
    }
    *group = rewritten;
    let window = window.ok_or_else(|| {
        err(
            file,
            text,
            select.select_token.0.span.start,
            "a streaming query needs a window: GROUP BY tumble(interval '10 seconds'), <keys>",
        )
        .with_kind(SqlErrorKind::Window)
    })?;
    Ok((window, keys))
}

/// Every bare column name in the query must exist in the source (or be a window
/// column or a SELECT alias); otherwise point at it and suggest the nearest name.
fn check_columns(
    file: &str,
    text: &str,
    tables: &[(&str, Option<&str>, &SchemaRef)],
    select: &ast::Select,
) -> Result<(), SqlError> {
    use std::ops::ControlFlow;
    let names = |schema: &SchemaRef| -> Vec<String> {
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    let mut known: Vec<String> = tables.iter().flat_map(|t| names(t.2)).collect();
    known.push(WINDOW_START.into());
    known.push(WINDOW_END.into());
    for item in &select.projection {
        if let SelectItem::ExprWithAlias { alias, .. } = item {
            known.push(alias.value.clone());
        }
    }
    let table_of = |q: &Ident| {
        tables.iter().find(|(t, a, _)| {
            t.eq_ignore_ascii_case(&q.value) || a.is_some_and(|a| a.eq_ignore_ascii_case(&q.value))
        })
    };
    let src_name = tables[0].0;
    let mut unknown: Option<(Ident, String, Vec<String>)> = None;
    let mut visit = |e: &Expr| {
        let (id, table, candidates) = match e {
            Expr::Identifier(i) => (i, src_name.to_string(), known.clone()),
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => match table_of(&parts[0]) {
                Some((t, _, schema)) => {
                    let mut c = names(schema);
                    if *t == src_name {
                        c.extend([WINDOW_START.to_string(), WINDOW_END.to_string()]);
                    }
                    (&parts[1], t.to_string(), c)
                }
                None => return ControlFlow::Continue(()),
            },
            _ => return ControlFlow::Continue(()),
        };
        let found = candidates.iter().any(|k| {
            if id.quote_style.is_some() {
                *k == id.value
            } else {
                k.eq_ignore_ascii_case(&id.value)
            }
        });
        if found {
            ControlFlow::Continue(())
        } else {
            unknown = Some((id.clone(), table, candidates));
            ControlFlow::Break(())
        }
    };
    let mut exprs: Vec<&Expr> = select
        .projection
        .iter()
        .filter_map(|it| match it {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
            _ => None,
        })
        .collect();
    exprs.extend(select.selection.iter());
    exprs.extend(select.having.iter());
    if let GroupByExpr::Expressions(g, _) = &select.group_by {
        exprs.extend(g.iter().filter(|e| window_call(e).is_none()));
    }
    for e in exprs {
        if ast::visit_expressions(e, &mut visit).is_break() {
            break;
        }
    }
    let Some((id, table, candidates)) = unknown else {
        return Ok(());
    };
    let nearest = crate::error::did_you_mean(&id.value, &candidates);
    let what = if tables.len() > 1 && table == src_name {
        format!(
            "in '{}'",
            tables.iter().map(|t| t.0).collect::<Vec<_>>().join("', '")
        )
    } else if tables.iter().skip(1).any(|t| t.0 == table) {
        format!("in table '{table}'")
    } else {
        format!("in source '{table}'")
    };
    Err(SqlError::at(
        file,
        text,
        id.span.start.line,
        id.span.start.column,
        id.value.chars().count(),
        format!("unknown column '{}' {what}{nearest}", id.value),
    )
    .with_kind(SqlErrorKind::UnknownColumn))
}

#[cfg(test)]
mod column_tests {
    use crate::QuerySet;

    /// The parser tests' file with a topic template that matches its columns.
    fn file_ok() -> String {
        crate::decl::tests::FILE.replace(
            "'plant/{site}/{line}/{device}/telemetry'",
            "'plant/+/+/{device}/telemetry'",
        )
    }

    #[test]
    fn unknown_columns_are_underlined_with_a_suggestion() {
        let typo = file_ok().replace("avg(vibration) AS v", "avg(vibraton) AS v");
        let e = QuerySet::default().add_file("q.sql", &typo).unwrap_err();
        assert_eq!(
            e.message,
            "unknown column 'vibraton' in source 'pumps'; did you mean 'vibration'?"
        );
        assert_eq!((e.line, e.column), (9, 46));
        assert!(
            e.to_string()
                .ends_with(&format!("      | {}^^^^^^^^", " ".repeat(45))),
            "{e}"
        );
        // Aliases, window columns and qualified names resolve; a wholly unknown name gets no suggestion.
        let ok = file_ok().replace(
            "HAVING avg(vibration) > 1",
            "HAVING v > 1 AND max(pumps.vibration) > 0 AND window_end > window_start",
        );
        QuerySet::default().add_file("q.sql", &ok).unwrap();
        let e = QuerySet::default()
            .add_file(
                "q.sql",
                &file_ok().replace("HAVING avg(vibration)", "HAVING avg(zzz)"),
            )
            .unwrap_err();
        assert_eq!(e.message, "unknown column 'zzz' in source 'pumps'");
    }
}
