//! Where a DataFusion planning error points in the query file.
//!
//! DataFusion plans the query as Forewarn rewrote it (the window call lifted out of the
//! `GROUP BY`), so its messages carry no usable position. They name what is wrong — a
//! function, a column, a SELECT item — and that is found again among the tokens of the
//! query as written, which keep their line and column.

use std::collections::HashSet;
use std::ops::Range;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use crate::error::did_you_mean;
use crate::SqlErrorKind;

/// Functions whose first argument names a model.
const MODEL_FUNCTIONS: [&str; 4] = [
    "anomaly_score",
    "anomaly_surprise",
    "is_anomaly",
    "top_contributors",
];

/// What the planner knows about functions, for suggestions and for telling aggregate
/// calls from scalar ones.
pub(crate) struct Functions {
    /// Every function name (scalar, aggregate and window), aliases included.
    pub all: Vec<String>,
    /// Aggregate function names.
    pub aggregates: HashSet<String>,
}

/// A planning error in the file: 1-based line, column, the width to underline and the
/// message (DataFusion's, reworded where it misleads).
pub(crate) struct Located {
    pub line: u64,
    pub column: u64,
    pub width: usize,
    pub message: String,
}

/// The kind of a planning error, from DataFusion's (or a model function's) `message`:
/// the same message shapes [`locate`] rewords.
pub(crate) fn planning_kind(message: &str) -> SqlErrorKind {
    if message.contains("Invalid function '") {
        SqlErrorKind::UnknownFunction
    } else if message.contains("No field named") {
        SqlErrorKind::UnknownColumn
    } else if message.contains("unknown model '") {
        SqlErrorKind::UnknownModel
    } else if message.contains("failed to match any signature") || message.contains("model '") {
        SqlErrorKind::Type
    } else if message.starts_with("Projections require unique expression names") {
        SqlErrorKind::Duplicate
    } else if message.contains("table '") && message.contains("not found") {
        SqlErrorKind::UnknownTable
    } else {
        SqlErrorKind::Invalid
    }
}

/// Locates the planning error `message` in the query that starts at `line` of `text`.
/// `Err` holds the message (perhaps reworded) when it names nothing that can be found.
pub(crate) fn locate(
    text: &str,
    line: u64,
    message: &str,
    functions: &Functions,
) -> Result<Located, String> {
    let Some(q) = QueryTokens::new(text, line) else {
        return Err(message.to_string());
    };
    if let Some(name) = quoted_after(message, "Invalid function '") {
        let message = format!(
            "unknown function '{name}'{}",
            did_you_mean(&name, &functions.all)
        );
        return match q.calls(&name).first() {
            Some(&i) => Ok(q.located(i..i + 1, message)),
            None => Err(message),
        };
    }
    if let Some(rest) = message.split_once(": While expanding wildcard, column \"") {
        return q.ungrouped_column(rest.0, rest.1, functions);
    }
    // A function's own argument check (the DSP functions'): its words, at the call,
    // without DataFusion's wrapping and list of candidate signatures.
    if let Some((_, own)) = message.split_once("coercion failed with: Error during planning: ") {
        let name = quoted_after(message, "Function '").unwrap_or_default();
        let own = own.split(". No function matches").next().unwrap_or(own);
        return match q.calls(&name).as_slice() {
            [i] => Ok(q.located(*i..*i + 1, own.to_string())),
            _ => Err(own.to_string()),
        };
    }
    if message.contains("failed to match any signature") {
        return q.bad_signature(message);
    }
    // A function's own check of a literal argument ("iso_zone: unknown machine class"):
    // at its call.
    if let Some((name, _)) = message.split_once(": ") {
        if functions.all.iter().any(|f| f == name) {
            if let [i] = q.calls(name).as_slice() {
                return Ok(q.located(*i..*i + 1, message.to_string()));
            }
        }
    }
    if message.starts_with("Projections require unique expression names") {
        return q.duplicate_name(message);
    }
    if message.contains("model '") {
        return q.model_call(message);
    }
    Err(message.to_string())
}

/// The text between `prefix` and the next `'`.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let len = message[start..].find('\'')?;
    Some(message[start..start + len].to_string())
}

/// The significant tokens of one query (from its `INSERT` to its `;`), with positions.
struct QueryTokens<'a> {
    text: &'a str,
    toks: Vec<TokenWithSpan>,
    /// Parenthesis depth of each token (a parenthesis counts as outside itself).
    depth: Vec<u32>,
    /// For each `(`, the index of its `)`.
    close: Vec<Option<usize>>,
}

impl<'a> QueryTokens<'a> {
    fn new(text: &'a str, line: u64) -> Option<Self> {
        let all = Tokenizer::new(&GenericDialect {}, text)
            .tokenize_with_location()
            .ok()?;
        let mut toks: Vec<TokenWithSpan> = all
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .skip_while(|t| {
                t.span.start.line < line
                    || !matches!(&t.token, Token::Word(w) if w.keyword == Keyword::INSERT)
            })
            .collect();
        let (mut depth, mut close, mut open) = (Vec::new(), Vec::new(), Vec::new());
        let mut end = toks.len();
        for (i, t) in toks.iter().enumerate() {
            match t.token {
                Token::LParen => {
                    depth.push(open.len() as u32);
                    open.push(i);
                }
                Token::RParen => {
                    if let Some(o) = open.pop() {
                        close[o] = Some(i);
                    }
                    depth.push(open.len() as u32);
                }
                Token::SemiColon if open.is_empty() => {
                    end = i;
                    break;
                }
                _ => depth.push(open.len() as u32),
            }
            close.push(None);
        }
        toks.truncate(end);
        close.truncate(end);
        depth.truncate(end);
        (!toks.is_empty()).then_some(QueryTokens {
            text,
            toks,
            depth,
            close,
        })
    }

    fn word(&self, i: usize) -> Option<&Word> {
        match self.toks.get(i).map(|t| &t.token) {
            Some(Token::Word(w)) => Some(w),
            _ => None,
        }
    }

    /// Whether token `i` is the identifier `name` (as DataFusion normalises it).
    fn is_name(&self, i: usize, name: &str) -> bool {
        self.word(i).is_some_and(|w| match w.quote_style {
            Some(_) => w.value == name,
            None => w.value.eq_ignore_ascii_case(name),
        })
    }

    fn is_keyword(&self, i: usize, k: Keyword) -> bool {
        self.word(i)
            .is_some_and(|w| w.keyword == k && w.quote_style.is_none())
    }

    fn is(&self, i: usize, t: &Token) -> bool {
        self.toks.get(i).is_some_and(|x| x.token == *t)
    }

    /// Indices of the calls `name(...)`: the name tokens.
    fn calls(&self, name: &str) -> Vec<usize> {
        (0..self.toks.len())
            .filter(|&i| self.is_name(i, name) && self.is(i + 1, &Token::LParen))
            .collect()
    }

    /// Token range of a clause at depth 0: after `start` up to the next of `ends`.
    fn clause(&self, start: Keyword, ends: &[Keyword]) -> Option<Range<usize>> {
        let at_top = |i: usize| self.depth[i] == 0;
        let from = (0..self.toks.len()).find(|&i| at_top(i) && self.is_keyword(i, start))? + 1;
        let to = (from..self.toks.len())
            .find(|&i| at_top(i) && ends.iter().any(|k| self.is_keyword(i, *k)))
            .unwrap_or(self.toks.len());
        Some(from..to)
    }

    /// The SELECT list's items, as token ranges.
    fn select_items(&self) -> Vec<Range<usize>> {
        let Some(list) = self.clause(Keyword::SELECT, &[Keyword::FROM]) else {
            return vec![];
        };
        let mut items = Vec::new();
        let mut start = list.start;
        for i in list.clone() {
            if self.depth[i] == 0 && self.is(i, &Token::Comma) {
                items.push(start..i);
                start = i + 1;
            }
        }
        items.push(start..list.end);
        items
    }

    /// Whether token `i` is inside the arguments (or `FILTER (...)`) of an aggregate
    /// call, which may use any column; a call followed by `OVER` is a window function,
    /// evaluated after grouping.
    fn in_aggregate(&self, i: usize, aggregates: &HashSet<String>) -> bool {
        (0..i).any(|o| {
            let Some(c) = self.close[o].filter(|&c| c > i) else {
                return false;
            };
            let Some(f) = o.checked_sub(1).and_then(|f| self.word(f)) else {
                return false;
            };
            let aggregate = f.quote_style.is_none()
                && aggregates.contains(&f.value.to_ascii_lowercase())
                && !self.is_keyword(c + 1, Keyword::OVER);
            aggregate || (f.keyword == Keyword::FILTER && f.quote_style.is_none())
        })
    }

    /// A column used outside aggregates that is no `GROUP BY` key (DataFusion's "While
    /// expanding wildcard" message, which it gives with or without a wildcard).
    fn ungrouped_column(
        &self,
        prefix: &str,
        rest: &str,
        functions: &Functions,
    ) -> Result<Located, String> {
        let qualified = rest.split_once("\" must appear").map_or(rest, |r| r.0);
        let name = qualified.rsplit('.').next().unwrap_or(qualified);
        let having = prefix.contains("HAVING");
        let (clause, range) = if having {
            let ends = [Keyword::ORDER, Keyword::LIMIT, Keyword::QUALIFY];
            ("HAVING", self.clause(Keyword::HAVING, &ends))
        } else {
            ("SELECT", self.clause(Keyword::SELECT, &[Keyword::FROM]))
        };
        let message = |written: &str| {
            format!("column '{written}' in {clause} is neither a GROUP BY key nor inside an aggregate function: aggregate it (avg({name}), max({name}), last_value({name}), ...) or add it to GROUP BY")
        };
        let Some(range) = range else {
            return Err(message(name));
        };
        for i in range.clone() {
            let qualifier = self.is(i.wrapping_sub(1), &Token::Period);
            let column = self.is_name(i, name)
                && !self.is(i + 1, &Token::LParen)
                && !self.is(i + 1, &Token::Period)
                && !self.is_keyword(i.wrapping_sub(1), Keyword::AS);
            if column && !self.in_aggregate(i, &functions.aggregates) {
                let first = if qualifier { i - 2 } else { i };
                let written = self.source(first..i + 1);
                return Ok(self.located(first..i + 1, message(&written)));
            }
        }
        // No column by that name: it came from a `*` (or `t.*`).
        let star = range
            .clone()
            .find(|&i| self.depth[i] == 0 && self.is(i, &Token::Mul));
        match star {
            Some(i) => {
                let first = if self.is(i.wrapping_sub(1), &Token::Period) {
                    i - 2
                } else {
                    i
                };
                let star = self.source(first..i + 1);
                Ok(self.located(
                    first..i + 1,
                    format!("{star} brings in column '{name}', which is neither a GROUP BY key nor aggregated: list the columns to select instead of {star}"),
                ))
            }
            None => Err(message(name)),
        }
    }

    /// "Function 'avg' failed to match any signature": at the call when the query makes
    /// only one call of that function, with DataFusion's bug-report boilerplate removed.
    fn bad_signature(&self, message: &str) -> Result<Located, String> {
        let name = quoted_after(message, "Function '").unwrap_or_default();
        let called = quoted_after(message, "argument types '");
        let candidates: Vec<&str> = message
            .split_once("Candidate functions:")
            .map(|(_, c)| c.split_whitespace().collect())
            .unwrap_or_default();
        let message = match called {
            Some(called) => format!(
                "no signature of {name} takes ({}); its signatures: {}",
                called
                    .strip_prefix(&format!("{name}("))
                    .and_then(|c| c.strip_suffix(')'))
                    .unwrap_or(&called),
                candidates.join(", ")
            ),
            None => message.to_string(),
        };
        match self.calls(&name).as_slice() {
            [i] => Ok(self.located(*i..*i + 1, message)),
            _ => Err(message),
        }
    }

    /// "Projections require unique expression names ... at position 0 and ... at position
    /// 3": at the second SELECT item.
    fn duplicate_name(&self, message: &str) -> Result<Located, String> {
        let positions: Vec<usize> = message
            .split("at position ")
            .skip(1)
            .filter_map(|p| {
                p.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        let items = self.select_items();
        // Items after a `*` no longer match positions: the wildcard expands to several.
        let wildcard = items.iter().position(|r| {
            r.clone()
                .any(|i| self.depth[i] == 0 && self.is(i, &Token::Mul))
        });
        // The second expression's output name: its alias, else its unqualified column.
        let name = message
            .split_once(" and \"")
            .and_then(|(_, r)| r.split_once("\" at position"))
            .map(|(e, _)| match e.rsplit_once(" AS ") {
                Some((_, alias)) => alias.to_string(),
                None => e.rsplit('.').next().unwrap_or(e).to_string(),
            });
        match (positions.as_slice(), wildcard, name) {
            ([a, b], Some(w), Some(name)) if *b >= w => {
                let star = self.source(items[w].clone());
                let also = if *a < w {
                    format!(" (SELECT item {} already selects it)", a + 1)
                } else {
                    String::new()
                };
                Ok(self.located(
                    items[w].clone(),
                    format!("{star} brings in a second column '{name}'{also}: list the columns to select instead of {star}"),
                ))
            }
            ([a, b], None, _) if *b < items.len() => {
                let item = items[*b].clone();
                let message = format!(
                    "SELECT item {} ('{}') has the same output name as item {}: give one of them another name with AS",
                    b + 1,
                    self.source(item.clone()),
                    a + 1
                );
                Ok(self.located(item, message))
            }
            _ => Err(message.to_string()),
        }
    }

    /// A model function error: at the call naming the model the message names
    /// (`model 'x'`), preferring the function the message names.
    fn model_call(&self, message: &str) -> Result<Located, String> {
        let Some(model) = quoted_after(message, "model '") else {
            return Err(message.to_string());
        };
        let named: Vec<&str> = MODEL_FUNCTIONS
            .into_iter()
            .filter(|f| message.contains(&format!(" {f} ")) || message.contains(&format!(" {f}(")))
            .collect();
        let funcs = if named.is_empty() {
            MODEL_FUNCTIONS.to_vec()
        } else {
            named
        };
        let names_model = |i: usize| matches!(&self.toks.get(i + 2).map(|t| &t.token), Some(Token::SingleQuotedString(s)) if *s == model);
        let call = funcs
            .iter()
            .flat_map(|f| self.calls(f))
            .filter(|&i| names_model(i))
            .min();
        match call {
            Some(i) => Ok(self.located(i..i + 1, message.to_string())),
            None => Err(message.to_string()),
        }
    }

    /// Byte offset of a position in the text.
    fn offset(&self, line: u64, column: u64) -> usize {
        let start: usize = self
            .text
            .split_inclusive('\n')
            .take(line.saturating_sub(1) as usize)
            .map(str::len)
            .sum();
        self.text[start..]
            .char_indices()
            .nth(column.saturating_sub(1) as usize)
            .map_or(self.text.len(), |(i, _)| start + i)
    }

    /// The text of tokens `r` as written.
    fn source(&self, r: Range<usize>) -> String {
        let (a, b) = (&self.toks[r.start].span, &self.toks[r.end - 1].span);
        let from = self.offset(a.start.line, a.start.column);
        let to = self.offset(b.end.line, b.end.column);
        self.text[from..to.max(from)].to_string()
    }

    /// Tokens `r` as an error position: their start, and their width on its line.
    fn located(&self, r: Range<usize>, message: String) -> Located {
        let (a, b) = (&self.toks[r.start].span, &self.toks[r.end - 1].span);
        let width = if b.end.line == a.start.line {
            (b.end.column.saturating_sub(a.start.column)) as usize
        } else {
            self.source(r.start..r.start + 1).chars().count()
        };
        Located {
            line: a.start.line,
            column: a.start.column,
            width: width.max(1),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "CREATE TABLE pump (\"Flow Rate\" DOUBLE) WITH (connector = 'mqtt');
INSERT INTO out
SELECT window_start, max(\"Flow Rate\") FILTER (WHERE \"Flow Rate\" > 0) AS m,
       sum(\"Flow Rate\") OVER () AS s
FROM pump GROUP BY tumble(interval '1 second');";

    fn functions() -> Functions {
        Functions {
            all: vec!["max".into(), "sum".into()],
            aggregates: ["max".to_string(), "sum".to_string()].into(),
        }
    }

    #[test]
    fn an_ungrouped_column_is_found_outside_aggregates() {
        // DataFusion's message for the window function's argument.
        let m = "Column in SELECT must be in GROUP BY or an aggregate function: While expanding wildcard, column \"pump.Flow Rate\" must appear in the GROUP BY clause or must be part of an aggregate function, currently only \"pump.window_start\" appears in the SELECT clause satisfies this requirement";
        let l = locate(TEXT, 2, m, &functions()).unwrap_or_else(|m| panic!("{m}"));
        // Not the max(...) argument nor the FILTER condition: the one under OVER.
        assert_eq!((l.line, l.column, l.width), (4, 12, 11));
        assert!(
            l.message
                .starts_with("column '\"Flow Rate\"' in SELECT is neither"),
            "{}",
            l.message
        );
    }

    #[test]
    fn an_unknown_function_is_found_with_a_suggestion() {
        let text = TEXT.replace("sum(", "summ(");
        let l = locate(
            &text,
            2,
            "Invalid function 'summ'.\nDid you mean 'sum'?",
            &functions(),
        )
        .unwrap_or_else(|m| panic!("{m}"));
        assert_eq!((l.line, l.column, l.width), (4, 8, 4));
        assert_eq!(l.message, "unknown function 'summ'; did you mean 'sum'?");
        // Not in the query: reworded, without a position.
        let e = locate(TEXT, 2, "Invalid function 'nope'", &functions()).err();
        assert_eq!(e.as_deref(), Some("unknown function 'nope'"));
    }
}
