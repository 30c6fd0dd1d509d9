//! Errors that point at the analyst's file, line and column.

use std::fmt;

use datafusion::sql::sqlparser::tokenizer::Location;

/// A problem in a query file, with its position and the offending line underlined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// What is wrong.
    pub message: String,
    /// The source line and a caret under the column, when known.
    pub snippet: Option<String>,
}

impl std::error::Error for SqlError {}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, _) => write!(f, "error: {}", self.message)?,
            (false, 0) => write!(f, "{}: error: {}", self.file, self.message)?,
            (false, _) => write!(
                f,
                "{}:{}:{}: error: {}",
                self.file, self.line, self.column, self.message
            )?,
        }
        if let Some(s) = &self.snippet {
            write!(f, "\n{s}")?;
        }
        Ok(())
    }
}

impl SqlError {
    /// A problem with a file table's data, reported at its declaration (`file:line`).
    pub fn reference(origin: &str, table: &str, message: impl Into<String>) -> Self {
        let (file, line) = origin
            .rsplit_once(':')
            .map(|(f, l)| (f.to_string(), l.parse().unwrap_or(0)))
            .unwrap_or((origin.to_string(), 0));
        SqlError {
            file,
            line,
            column: if line > 0 { 1 } else { 0 },
            message: format!("file table '{table}': {}", message.into()),
            snippet: None,
        }
    }

    /// An error at `line:column` of `text`, underlining `width` characters.
    pub fn at(
        file: &str,
        text: &str,
        line: u64,
        column: u64,
        width: usize,
        message: impl Into<String>,
    ) -> Self {
        let snippet = (line > 0)
            .then(|| text.lines().nth(line as usize - 1))
            .flatten()
            .map(|src| {
                let pad: String = src
                    .chars()
                    .take(column.saturating_sub(1) as usize)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                format!(
                    "{line:>5} | {src}\n      | {pad}{}",
                    "^".repeat(width.max(1))
                )
            });
        SqlError {
            file: file.to_string(),
            line,
            column,
            message: message.into(),
            snippet,
        }
    }

    /// An error from sqlparser, whose message ends in "at Line: L, Column: C".
    pub fn from_parser(file: &str, text: &str, e: &dyn fmt::Display) -> Self {
        let msg = e.to_string();
        let msg = msg
            .strip_prefix("sql parser error: ")
            .unwrap_or(&msg)
            .to_string();
        let (line, col) = parse_position(&msg).unwrap_or((0, 0));
        let clean = match msg.find(" at Line: ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        SqlError::at(file, text, line, col, 1, clean)
    }
}

fn parse_position(msg: &str) -> Option<(u64, u64)> {
    let i = msg.find("Line: ")?;
    let rest = &msg[i + 6..];
    let (l, rest) = rest.split_once(", Column: ")?;
    let c: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((l.trim().parse().ok()?, c.parse().ok()?))
}

/// `"; did you mean 'x'?"` for the candidate closest to `name`, or `""` when none is close.
pub(crate) use forewarn_connect::did_you_mean;

/// An error at the parser's `loc` in `text`, underlining one character.
pub(crate) fn err(file: &str, text: &str, loc: Location, msg: impl Into<String>) -> SqlError {
    SqlError::at(file, text, loc.line, loc.column, 1, msg)
}
