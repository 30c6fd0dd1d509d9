//! `WATERMARK FOR col AS col - INTERVAL '...'` in a source's column list.

use datafusion::sql::sqlparser::ast::{self, Expr};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};
use forewarn_core::Millis;

use crate::error::err;
use crate::window::interval_ms;
use crate::SqlError;
use crate::SqlErrorKind;

/// A `WATERMARK FOR col AS expr` clause cut out of a column list before parsing.
#[derive(Debug)]
pub(crate) struct WatermarkClause {
    pub(crate) column: String,
    pub(crate) delay: Millis,
    pub(crate) loc: Location,
    /// Line of the `CREATE` that precedes it, and the clause's own line: it belongs to
    /// the CREATE TABLE whose name is on a line in between.
    pub(crate) table_line: u64,
    pub(crate) before_line: u64,
}

/// sqlparser has no `WATERMARK FOR`; blank it out (keeping every position) and parse
/// it separately, so errors elsewhere still point at the right line and column.
pub(crate) fn extract_watermarks(
    file: &str,
    text: &str,
) -> Result<(String, Vec<WatermarkClause>), SqlError> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| SqlError::from_parser(file, text, &e))?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |l: Location| -> usize {
        let ls = line_starts[(l.line as usize)
            .saturating_sub(1)
            .min(line_starts.len() - 1)];
        text[ls..]
            .char_indices()
            .nth(l.column.saturating_sub(1) as usize)
            .map(|(i, _)| ls + i)
            .unwrap_or(text.len())
    };
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let word = |k: usize, w: &str| matches!(&tokens[significant[k]].token, Token::Word(x) if x.value.eq_ignore_ascii_case(w) && x.quote_style.is_none());
    let mut out = Vec::new();
    let mut bytes = text.as_bytes().to_vec();
    let mut last_create_line = 0;
    for k in 0..significant.len() {
        if word(k, "CREATE") {
            last_create_line = tokens[significant[k]].span.start.line;
        }
        if !(word(k, "WATERMARK") && k + 1 < significant.len() && word(k + 1, "FOR")) {
            continue;
        }
        let wm_loc = tokens[significant[k]].span.start;
        let bad = |m: &str| err(file, text, wm_loc, m.to_string()).with_kind(SqlErrorKind::Window);
        let col = match significant.get(k + 2).map(|&i| &tokens[i].token) {
            Some(Token::Word(w)) => w.value.clone(),
            _ => return Err(bad("expected a column name after WATERMARK FOR")),
        };
        if !(k + 3 < significant.len() && word(k + 3, "AS")) {
            return Err(bad(
                "expected WATERMARK FOR <column> AS <column> - INTERVAL '...'",
            ));
        }
        // The expression runs to the comma or closing parenthesis at depth zero.
        let mut depth = 0i32;
        let mut end = k + 4;
        while end < significant.len() {
            match tokens[significant[end]].token {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::Comma if depth == 0 => break,
                _ => {}
            }
            end += 1;
        }
        if end == k + 4 || end >= significant.len() {
            return Err(bad(
                "WATERMARK FOR ... AS needs an expression inside the column list",
            ));
        }
        let expr_start = offset(tokens[significant[k + 4]].span.start);
        let expr_end = offset(tokens[significant[end]].span.start);
        let expr_text = &text[expr_start..expr_end];
        let expr = Parser::new(&dialect)
            .try_with_sql(expr_text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| {
                bad(&format!(
                    "cannot read the watermark expression '{}': {e}",
                    expr_text.trim()
                ))
            })?;
        let delay = match &expr {
            Expr::Identifier(i) if i.value == col => 0,
            Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::Minus,
                right,
            } if matches!(left.as_ref(), Expr::Identifier(i) if i.value == col) => {
                interval_ms(right).map_err(|m| bad(&m))?
            }
            _ => {
                return Err(bad(&format!(
                    "the watermark must be '{col}' or '{col} - INTERVAL ...', got '{}'",
                    expr_text.trim()
                )))
            }
        };
        if delay < 0 {
            return Err(bad("the watermark delay cannot be negative"));
        }
        // Blank from the preceding comma (or the clause itself) to the end of the expression.
        let mut start = offset(wm_loc);
        if k > 0 && matches!(tokens[significant[k - 1]].token, Token::Comma) {
            start = offset(tokens[significant[k - 1]].span.start);
        }
        for b in &mut bytes[start..expr_end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        out.push(WatermarkClause {
            column: col,
            delay,
            loc: wm_loc,
            table_line: last_create_line,
            before_line: wm_loc.line,
        });
    }
    // Only ASCII bytes were replaced by spaces on whole-token boundaries... except
    // multi-byte characters inside the blanked range, which become several spaces.
    let cleaned = String::from_utf8_lossy(&bytes).into_owned();
    Ok((cleaned, out))
}
