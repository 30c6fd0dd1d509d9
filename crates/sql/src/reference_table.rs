//! A reference table (`CREATE TABLE ... WITH (connector = 'file', path = '...csv')`):
//! static data that queries may join. `reference.rs` loads it.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use forewarn_connect::{Connector, Options, TableContext};

use crate::error::err;
use crate::table::{map_type, Table};
use crate::SqlErrorKind;
use crate::{QuerySet, ReferenceDecl, SqlError};

impl QuerySet {
    /// Adds `t` as a reference table, configured by `connector`.
    pub(crate) fn add_reference(
        &mut self,
        t: &Table,
        connector: &dyn Connector,
        context: &TableContext<'_>,
        options: &Options,
    ) -> Result<(), SqlError> {
        let &Table {
            file,
            text,
            loc,
            name,
            columns,
            wm,
            ..
        } = t;
        if let Some(w) = wm {
            return Err(err(
                file,
                text,
                w.loc,
                "a file table is static reference data: it has no WATERMARK",
            ));
        }
        if columns.is_empty() {
            return Err(err(
                file,
                text,
                loc,
                format!("file table '{name}' must declare its columns"),
            ));
        }
        let config = t.configure(connector, context, options)?;
        let Some(table) = config.get::<forewarn_connect::file::FileTable>() else {
            return Err(err(
                file,
                text,
                loc,
                format!(
                    "connector '{}' declares a reference table the SQL front end cannot load",
                    config.connector()
                ),
            ));
        };
        let mut fields = Vec::new();
        for c in columns {
            // Waveforms come from sources; a reference file holds scalars.
            let dt = map_type(&c.data_type).filter(|t| !matches!(t, DataType::List(_))).ok_or_else(|| {
                err(file, text, c.name.span.start, format!("column '{}' has type {}, which is not supported (use TEXT, DOUBLE, BIGINT, BOOLEAN or TIMESTAMP)", c.name.value, c.data_type)).with_kind(SqlErrorKind::Type)
            })?;
            fields.push(Field::new(&c.name.value, dt, true));
        }
        self.references.insert(
            name.to_string(),
            ReferenceDecl {
                name: name.to_string(),
                schema: Arc::new(Schema::new(fields)),
                path: table.path.clone(),
                origin: format!("{file}:{}", loc.line),
            },
        );
        Ok(())
    }
}
