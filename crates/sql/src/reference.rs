//! File tables: a CSV with a header, loaded once and joined to the stream.
//!
//! Arrow reads the file. Its errors count lines from 0 or 1 depending on the error, skip
//! the header and blank lines, and number columns from 0, so a problem is located again
//! here: the file is split into cells with their line and column, and the cell Arrow
//! cannot read is found by reading cells one at a time.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::csv::ReaderBuilder;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::execution::context::SessionContext;

use crate::table::sql_type;
use crate::SqlErrorKind;
use crate::{ReferenceDecl, SqlError};

/// Loads a file table (CSV with a header) and registers it in `ctx`.
///
/// The header must name the declared columns in order (columns are read by position, so
/// a reordered file would silently fill the wrong columns). A cell that cannot be read as
/// its column's type is reported at its line and column in the CSV file.
pub fn register_reference(ctx: &SessionContext, r: &ReferenceDecl) -> Result<(), SqlError> {
    let fail = |m: String| SqlError::reference(&r.origin, &r.name, m);
    let mut bytes = std::fs::read(&r.path)
        .map_err(|e| fail(format!("cannot read {}: {e}", r.path.display())))?;
    // Spreadsheets save "CSV UTF-8" with a byte-order mark, which would otherwise be
    // part of the first header name.
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    let text = String::from_utf8_lossy(&bytes);
    let records = cells(&text);
    let at = |cell: &Cell, message: String| {
        SqlError::at(
            &r.path.display().to_string(),
            &text,
            cell.line,
            cell.column,
            cell.width,
            format!("file table '{}' ({}): {message}", r.name, r.origin),
        )
        .with_kind(SqlErrorKind::Data)
    };
    let declared: Vec<&str> = r
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let Some(header) = records.first() else {
        return Err(fail(format!(
            "{} is empty: it needs a header line ({})",
            r.path.display(),
            declared.join(",")
        )));
    };
    for (i, want) in declared.iter().enumerate() {
        match header.get(i) {
            Some(c) if c.value.trim().eq_ignore_ascii_case(want) => {}
            Some(c) => {
                return Err(at(
                    c,
                    format!(
                        "header column {} is '{}', but the table declares '{want}' there (columns are read by position; declared: {})",
                        i + 1,
                        c.value,
                        declared.join(", ")
                    ),
                ))
            }
            None => {
                let last = header.last().expect("a record has a cell");
                return Err(at(
                    last,
                    format!(
                        "the header has {} columns, but the table declares {} ({})",
                        header.len(),
                        declared.len(),
                        declared.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(extra) = header.get(declared.len()) {
        return Err(at(
            extra,
            format!(
                "the header has {} columns, but the table declares {} ({})",
                header.len(),
                declared.len(),
                declared.join(", ")
            ),
        ));
    }
    for record in &records[1..] {
        if record.len() != declared.len() {
            let cell = record.get(declared.len()).unwrap_or(&record[0]);
            return Err(at(
                cell,
                format!(
                    "this line has {} values, but the table declares {} columns ({})",
                    record.len(),
                    declared.len(),
                    declared.join(", ")
                ),
            ));
        }
    }
    let batches = read(&r.schema, &bytes).map_err(|e| {
        // Which cell? Read each on its own as its column's type.
        let utf8 = std::str::from_utf8(&bytes).is_ok();
        for record in &records[1..] {
            for (cell, field) in record.iter().zip(r.schema.fields()) {
                if !utf8 && cell.value.contains(char::REPLACEMENT_CHARACTER) {
                    return at(
                        cell,
                        format!("the value for column '{}' is not valid UTF-8", field.name()),
                    );
                }
                if read_cell(field, &cell.value).is_err() {
                    return at(
                        cell,
                        format!(
                            "cannot read '{}' as {} for column '{}'",
                            cell.value,
                            sql_type(field.data_type()),
                            field.name()
                        ),
                    );
                }
            }
        }
        fail(format!("{}: {e}", r.path.display()))
    })?;
    let table =
        MemTable::try_new(r.schema.clone(), vec![batches]).map_err(|e| fail(e.to_string()))?;
    let _ = ctx.deregister_table(r.name.as_str());
    ctx.register_table(r.name.as_str(), Arc::new(table))
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn read(schema: &SchemaRef, bytes: &[u8]) -> Result<Vec<RecordBatch>, String> {
    ReaderBuilder::new(schema.clone())
        .with_header(true)
        .build(Cursor::new(bytes))
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())
}

/// Reads one cell as Arrow reads it in the file.
fn read_cell(field: &Field, value: &str) -> Result<(), String> {
    let schema = Arc::new(Schema::new(vec![field.clone().with_nullable(true)]));
    let quoted = format!("{}\n\"{}\"\n", field.name(), value.replace('"', "\"\""));
    read(&schema, quoted.as_bytes()).map(drop)
}

/// One CSV cell: its value and where it starts in the file (1-based line and column,
/// in characters), and how many characters it spans on that line.
#[derive(Debug, Clone, PartialEq)]
struct Cell {
    value: String,
    line: u64,
    column: u64,
    width: usize,
}

/// The file's records as Arrow's reader splits them: `,` between cells, `"` quoting
/// (`""` inside quotes is a quote), a line break ends a record, blank lines are skipped.
fn cells(text: &str) -> Vec<Vec<Cell>> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut column) = (1u64, 1u64);
    loop {
        // Blank lines (and the `\n` of `\r\n`) between records.
        while let Some(&c) = chars.peek() {
            if c != '\n' && c != '\r' {
                break;
            }
            chars.next();
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        if chars.peek().is_none() {
            return records;
        }
        let mut record = Vec::new();
        loop {
            let mut cell = Cell {
                value: String::new(),
                line,
                column,
                width: 0,
            };
            let mut quoted = false;
            let end = loop {
                let Some(c) = chars.next() else { break None };
                if c == '\n' {
                    line += 1;
                    column = 1;
                } else {
                    column += 1;
                }
                if cell.line == line {
                    cell.width += 1;
                }
                match c {
                    '"' if quoted && chars.peek() == Some(&'"') => {
                        chars.next();
                        column += 1;
                        cell.width += 1;
                        cell.value.push('"');
                    }
                    '"' if quoted => quoted = false,
                    '"' if cell.width == 1 => quoted = true,
                    ',' | '\n' | '\r' if !quoted => {
                        if cell.line == line {
                            cell.width -= 1;
                        }
                        break Some(c);
                    }
                    c => cell.value.push(c),
                }
            };
            record.push(cell);
            if end != Some(',') {
                break;
            }
        }
        records.push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_have_their_file_positions() {
        let text = "a,b\r\n\r\nx,\"q \"\"1\"\"\"\n\"two\nlines\",é,\n";
        let records = cells(text);
        let got: Vec<Vec<(&str, u64, u64, usize)>> = records
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| (c.value.as_str(), c.line, c.column, c.width))
                    .collect()
            })
            .collect();
        assert_eq!(
            got,
            vec![
                vec![("a", 1, 1, 1), ("b", 1, 3, 1)],
                vec![("x", 3, 1, 1), ("q \"1\"", 3, 3, 9)],
                vec![("two\nlines", 4, 1, 4), ("é", 5, 8, 1), ("", 5, 10, 0)],
            ]
        );
    }
}
