//! The window of a query: `tumble(...)`, `hop(...)` or `session(...)` in its `GROUP BY`.

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Spanned, Value,
};
use datafusion::sql::sqlparser::tokenizer::Span;
use forewarn_core::{parse_interval, Millis, WindowSpec};

use crate::error::err;
use crate::SqlError;
use crate::SqlErrorKind;

/// `tumble(...)`/`hop(...)`/`session(...)` as a function call: name, args, span.
pub(crate) fn window_call(e: &Expr) -> Option<(String, Vec<Expr>, Span)> {
    let Expr::Function(f) = e else { return None };
    let name = f.name.to_string().to_ascii_lowercase();
    if !matches!(name.as_str(), "tumble" | "hop" | "session") {
        return None;
    }
    let args = match &f.args {
        FunctionArguments::List(l) => l
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    Some((name, args, e.span()))
}

/// The window `fname(args)` stands for; errors point at the argument at fault.
pub(crate) fn parse_window(
    file: &str,
    text: &str,
    fname: &str,
    args: &[Expr],
    span: Span,
) -> Result<WindowSpec, SqlError> {
    match fname {
        "tumble" => {
            let [arg] = args else {
                return Err(err(
                    file,
                    text,
                    span.start,
                    "tumble takes one argument: tumble(interval '10 seconds')",
                )
                .with_kind(SqlErrorKind::Window));
            };
            let ms = interval_ms(arg).map_err(|m| {
                err(file, text, arg.span().start, m).with_kind(SqlErrorKind::Window)
            })?;
            WindowSpec::tumble(ms).map_err(|e| {
                err(file, text, arg.span().start, e.to_string()).with_kind(SqlErrorKind::Window)
            })
        }
        "hop" => {
            let [slide, width] = args else {
                return Err(err(file, text, span.start, "hop takes two arguments: hop(interval '10 seconds', interval '1 minute') (slide, then width)").with_kind(SqlErrorKind::Window));
            };
            let s = interval_ms(slide).map_err(|m| {
                err(file, text, slide.span().start, m).with_kind(SqlErrorKind::Window)
            })?;
            let w = interval_ms(width).map_err(|m| {
                err(file, text, width.span().start, m).with_kind(SqlErrorKind::Window)
            })?;
            WindowSpec::hop(s, w).map_err(|e| {
                err(file, text, width.span().start, e.to_string()).with_kind(SqlErrorKind::Window)
            })
        }
        "session" => {
            let (gap, max) = match args {
                [gap] => (gap, None),
                [gap, max] => (gap, Some(max)),
                _ => return Err(err(file, text, span.start, "session takes one or two arguments: session(interval '5 minutes') or session(gap, maximum length)").with_kind(SqlErrorKind::Window)),
            };
            let g = interval_ms(gap).map_err(|m| {
                err(file, text, gap.span().start, m).with_kind(SqlErrorKind::Window)
            })?;
            let m = match max {
                Some(m) => Some(interval_ms(m).map_err(|e| {
                    err(file, text, m.span().start, e).with_kind(SqlErrorKind::Window)
                })?),
                None => None,
            };
            WindowSpec::session(g, m).map_err(|e| {
                err(file, text, gap.span().start, e.to_string()).with_kind(SqlErrorKind::Window)
            })
        }
        other => Err(err(
            file,
            text,
            span.start,
            format!("unknown window function '{other}' (use tumble, hop or session)"),
        )
        .with_kind(SqlErrorKind::UnknownFunction)),
    }
}

/// Milliseconds of an `INTERVAL '10 seconds'` / `INTERVAL '5' SECOND` expression.
pub(crate) fn interval_ms(e: &Expr) -> Result<Millis, String> {
    let Expr::Interval(iv) = e else {
        return Err(format!(
            "expected an interval such as interval '10 seconds', got {e}"
        ));
    };
    let text = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    };
    let unit = iv.leading_field.as_ref().map(|f| f.to_string());
    parse_interval(&text, unit.as_deref()).map_err(|e| e.to_string())
}
