//! The feature query behind a model: the live query with its SELECT list replaced by
//! the arguments of its `anomaly_score('model', ...)` call. Training replays this
//! query, so a model is trained on exactly the features it is scored on.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_expressions, BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, SelectItem, SetExpr, Statement,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::SqlErrorKind;
use crate::{QueryDecl, QuerySet, SinkDecl, SqlError, WINDOW_END, WINDOW_START};

/// Name of the sink the feature query writes to.
pub const FEATURE_SINK: &str = "__features";

/// Builds the feature query for `model`. Returns a query set with that one query,
/// and the feature names in argument order (the select alias of an identical
/// expression when there is one, else the expression's text).
pub fn feature_query(set: &QuerySet, model: &str) -> Result<(QuerySet, Vec<String>), SqlError> {
    for q in &set.queries {
        let stmts = Parser::parse_sql(&GenericDialect {}, &q.select_sql)
            .map_err(|e| SqlError::from_parser(&q.file, &q.select_sql, &e))?;
        let Some(Statement::Query(mut query)) = stmts.into_iter().next() else {
            continue;
        };
        let mut args: Option<Vec<Expr>> = None;
        let _ = visit_expressions(&query, |e| {
            if let Some(a) = score_args(e, model) {
                args = Some(a);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        let Some(args) = args else { continue };
        let SetExpr::Select(select) = query.body.as_mut() else {
            continue;
        };
        let aliases: Vec<(String, Expr)> = select
            .projection
            .iter()
            .filter_map(|it| match it {
                SelectItem::ExprWithAlias { expr, alias } => {
                    Some((alias.value.clone(), expr.clone()))
                }
                _ => None,
            })
            .collect();
        let mut names = Vec::new();
        let mut projection = Vec::new();
        if let GroupByExpr::Expressions(keys, _) = &select.group_by {
            // A key that is also an argument (a keyed model's `device`) is projected once,
            // as the argument.
            for k in keys.iter().filter(|k| !args.contains(k)) {
                projection.push(SelectItem::UnnamedExpr(k.clone()));
            }
        }
        for (i, a) in args.iter().enumerate() {
            let name = aliases
                .iter()
                .find(|(_, e)| e == a)
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| a.to_string());
            if names.contains(&name) {
                return Err(SqlError::at(
                    &q.file,
                    "",
                    q.line,
                    0,
                    1,
                    format!("feature {} of model '{model}' repeats '{name}'", i + 1),
                )
                .with_kind(SqlErrorKind::Duplicate));
            }
            projection.push(SelectItem::ExprWithAlias {
                expr: a.clone(),
                alias: Ident::with_quote('"', name.clone()),
            });
            names.push(name);
        }
        select.projection = projection;
        // Keep the HAVING conditions that select which windows are scored (row counts and
        // the like); drop those on the score itself (a call, or an alias of one), which
        // does not exist yet at training time.
        let score_aliases: Vec<String> = aliases
            .iter()
            .filter(|(_, e)| calls_score(e))
            .map(|(n, _)| n.clone())
            .collect();
        select.having = select.having.take().and_then(|h| {
            conjuncts(h)
                .into_iter()
                .filter(|c| {
                    let mut scored = calls_score(c);
                    let _ = visit_expressions(c, |e| {
                        if matches!(e, Expr::Identifier(i) if score_aliases.contains(&i.value)) {
                            scored = true;
                        }
                        ControlFlow::<()>::Continue(())
                    });
                    !scored
                })
                .reduce(|a, b| Expr::BinaryOp {
                    left: Box::new(a),
                    op: BinaryOperator::And,
                    right: Box::new(b),
                })
        });
        let mut out = QuerySet::default();
        out.sources
            .insert(q.source.clone(), set.sources[&q.source].clone());
        // The rows' device: the first GROUP BY key that is a column, named as the
        // feature query projects it. The sink's topic is never published.
        let key = match &select.group_by {
            GroupByExpr::Expressions(keys, _) => keys.iter().find_map(|k| {
                // A key that is also an argument is projected under the argument's name.
                if let Some(i) = args.iter().position(|a| a == k) {
                    return Some(names[i].clone());
                }
                let id = match k {
                    Expr::Identifier(i) => i,
                    Expr::CompoundIdentifier(p) => p.last()?,
                    _ => return None,
                };
                let name = match id.quote_style {
                    Some(_) => id.value.clone(),
                    None => id.value.to_ascii_lowercase(),
                };
                (name != WINDOW_START && name != WINDOW_END).then_some(name)
            }),
            _ => None,
        };
        out.sinks.insert(
            FEATURE_SINK.into(),
            SinkDecl {
                name: FEATURE_SINK.into(),
                topic: "features".into(),
                format: "json".into(),
                lifecycle: None,
                online: None,
                false_alerts: None,
                device_column: key,
                connector: forewarn_connect::ConnectorConfig::new(
                    "mqtt",
                    forewarn_connect::mqtt::MqttSettings::default(),
                ),
                file: q.file.clone(),
                option_at: Default::default(),
            },
        );
        out.references = set.references.clone();
        out.queries.push(QueryDecl {
            name: format!("{}_features", q.name),
            sink: FEATURE_SINK.into(),
            select_sql: query.to_string(),
            ..q.clone()
        });
        return Ok((out, names));
    }
    let file = set
        .queries
        .first()
        .map(|q| q.file.clone())
        .unwrap_or_default();
    Err(SqlError {
        kind: crate::SqlErrorKind::UnknownModel,
        file,
        line: 0,
        column: 0,
        message: format!("no query calls anomaly_score('{model}', ...) or anomaly_surprise('{model}', ...) (name the model with --model, or name the output file after it)"),
        snippet: None,
    })
}

/// The models the queries score with (`anomaly_score('name', ...)`), in order of
/// first appearance.
pub fn scored_models(set: &QuerySet) -> Result<Vec<String>, SqlError> {
    let mut names: Vec<String> = Vec::new();
    for q in &set.queries {
        let stmts = Parser::parse_sql(&GenericDialect {}, &q.select_sql)
            .map_err(|e| SqlError::from_parser(&q.file, &q.select_sql, &e))?;
        let _ = visit_expressions(&stmts, |e| {
            if let Some((name, _)) = score_call(e) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    Ok(names)
}

fn calls_score(e: &Expr) -> bool {
    visit_expressions(e, |x| match x {
        Expr::Function(f) if is_score_function(&f.name.to_string()) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn conjuncts(e: Expr) -> Vec<Expr> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut v = conjuncts(*left);
            v.extend(conjuncts(*right));
            v
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*inner)
        }
        other => vec![other],
    }
}

/// `anomaly_score` or `anomaly_surprise`: the calls whose arguments are a model's features.
pub(crate) fn is_score_function(name: &str) -> bool {
    name.eq_ignore_ascii_case("anomaly_score") || name.eq_ignore_ascii_case("anomaly_surprise")
}

/// An `anomaly_score('model', args...)` (or `anomaly_surprise`) call: the model name and
/// the arguments after it.
fn score_call(e: &Expr) -> Option<(String, Vec<Expr>)> {
    let Expr::Function(f) = e else { return None };
    if !is_score_function(&f.name.to_string()) {
        return None;
    }
    let FunctionArguments::List(l) = &f.args else {
        return None;
    };
    let mut args: Vec<Expr> = l
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_string().trim_matches('\'').to_string();
    args.remove(0);
    Some((name, args))
}

fn score_args(e: &Expr, model: &str) -> Option<Vec<Expr>> {
    score_call(e).and_then(|(name, args)| (name == model).then_some(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_scoring_call() {
        let sql = "CREATE TABLE s (device TEXT, ts TIMESTAMP, v DOUBLE, t DOUBLE, WATERMARK FOR ts AS ts) WITH (connector = 'mqtt', topic = 'x/+');
CREATE TABLE a WITH (connector = 'mqtt', topic = 'alerts/{device}');
INSERT INTO a SELECT device, window_start, avg(v) AS avg_v, anomaly_score('m', avg(v), max(t) - min(t)) AS score
FROM s WHERE v > 0 GROUP BY tumble(interval '1 minute'), device HAVING count(*) >= 6 AND anomaly_score('m', avg(v), max(t) - min(t)) > 1 AND score < 100;";
        let mut set = QuerySet::default();
        set.add_file("f.sql", sql).unwrap();
        let (fq, names) = feature_query(&set, "m").unwrap();
        assert_eq!(
            names,
            vec!["avg_v".to_string(), "max(t) - min(t)".to_string()]
        );
        let q = &fq.queries[0].select_sql;
        assert!(
            q.contains("WHERE v > 0")
                && q.contains("HAVING count(*) >= 6")
                && !q.contains("anomaly_score"),
            "{q}"
        );
        assert!(feature_query(&set, "other").is_err());
    }
}
