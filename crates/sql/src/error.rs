//! Errors that point at the analyst's file, line and column.

use std::fmt;

use datafusion::sql::sqlparser::tokenizer::Location;

/// What kind of problem a [`SqlError`] is, for programs that react to it (an editor
/// marking an unknown column, a gateway refusing a model it lacks) without reading
/// the message. New kinds may be added: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SqlErrorKind {
    /// The text is not SQL the parser reads, or a `WITH (...)` list is malformed.
    Syntax,
    /// A table the query names is not declared (or is the wrong kind of table).
    UnknownTable,
    /// A column the query, a topic or an option names does not exist.
    UnknownColumn,
    /// A function (or window function) that does not exist.
    UnknownFunction,
    /// A model the query scores with is not loaded.
    UnknownModel,
    /// `connector = '...'` names a connector this build does not know.
    UnknownConnector,
    /// A `WITH` option no connector takes in that role, or another connector's option.
    UnknownOption,
    /// A `WITH` option is missing, or its value is wrong or contradicts another.
    Option,
    /// A column or an expression has a type that does not fit (a device id that is a
    /// number, a score that is text, a function called with the wrong arguments).
    Type,
    /// Something declared twice (a table, an option, an output column).
    Duplicate,
    /// A window or watermark that is missing or malformed.
    Window,
    /// Valid SQL that Forewarn does not run (stream-stream joins, subqueries, UNION, ...).
    Unsupported,
    /// A file table's data does not match its declaration.
    Data,
    /// Any other semantic problem (the message says which).
    Invalid,
}

impl SqlErrorKind {
    /// A stable snake_case name (`unknown_column`), for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SqlErrorKind::Syntax => "syntax",
            SqlErrorKind::UnknownTable => "unknown_table",
            SqlErrorKind::UnknownColumn => "unknown_column",
            SqlErrorKind::UnknownFunction => "unknown_function",
            SqlErrorKind::UnknownModel => "unknown_model",
            SqlErrorKind::UnknownConnector => "unknown_connector",
            SqlErrorKind::UnknownOption => "unknown_option",
            SqlErrorKind::Option => "option",
            SqlErrorKind::Type => "type",
            SqlErrorKind::Duplicate => "duplicate",
            SqlErrorKind::Window => "window",
            SqlErrorKind::Unsupported => "unsupported",
            SqlErrorKind::Data => "data",
            SqlErrorKind::Invalid => "invalid",
        }
    }
}

impl fmt::Display for SqlErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem in a query file, with its kind, its position and the offending line
/// underlined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// What kind of problem it is.
    pub kind: SqlErrorKind,
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
            kind: SqlErrorKind::Data,
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
            kind: SqlErrorKind::Invalid,
            file: file.to_string(),
            line,
            column,
            message: message.into(),
            snippet,
        }
    }

    /// The same error, of kind `kind`.
    pub fn with_kind(mut self, kind: SqlErrorKind) -> Self {
        self.kind = kind;
        self
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
        SqlError::at(file, text, line, col, 1, clean).with_kind(SqlErrorKind::Syntax)
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
