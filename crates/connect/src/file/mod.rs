//! `connector = 'file'`: a static reference table (an asset registry) read from a CSV
//! file beside the query file, which queries may join. The SQL front end loads it
//! (`forewarn_sql::register_reference`).

use std::path::{Component, Path, PathBuf};

use crate::{Connector, ConnectorConfig, OptionError, Options, Role, TableContext};

/// The reference-file connector.
#[derive(Debug, Clone, Copy)]
pub struct File;

/// Where a file table's rows are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTable {
    /// The CSV file, resolved against the query file's directory.
    pub path: PathBuf,
}

impl Connector for File {
    fn name(&self) -> &'static str {
        "file"
    }

    fn options(&self, role: Role) -> Result<&'static [&'static str], String> {
        match role {
            Role::Table => Ok(&["path", "format"]),
            _ => Err("a file table is static reference data".into()),
        }
    }

    fn configure(&self, t: &TableContext<'_>, o: &Options) -> Result<ConnectorConfig, OptionError> {
        if let Some(f) = o.get("format") {
            if f != "csv" {
                return Err(OptionError::at(
                    "format",
                    format!("unknown format '{f}' for a file table (supported: 'csv')"),
                ));
            }
        }
        let name = t.name;
        let rel = o.required("path", || {
            format!("file table '{name}' needs a path = '...csv' option")
        })?;
        Ok(ConnectorConfig::new(
            "file",
            FileTable {
                path: beside_query(t, "path", rel)?,
            },
        ))
    }
}

/// `rel` resolved against the query file's directory, if it stays inside it: a query
/// file can read only files beside (or below) it, never `..` or an absolute path.
pub(crate) fn beside_query(
    t: &TableContext<'_>,
    key: &str,
    rel: &str,
) -> Result<PathBuf, OptionError> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(OptionError::at(
            key,
            format!("{key} '{rel}' must be relative to the query file's directory and stay inside it (no '..', no absolute paths)"),
        ));
    }
    Ok(t.dir.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pos;

    fn table(path: &str) -> Result<ConnectorConfig, OptionError> {
        let mut o = Options::default();
        o.insert("path", path.into(), Pos::default()).unwrap();
        let t = TableContext {
            name: "assets",
            role: Role::Table,
            event_time: false,
            dir: Path::new("queries"),
            columns: &[],
        };
        File.configure(&t, &o)
    }

    #[test]
    fn paths_stay_beside_the_query_file() {
        let c = table("ref/assets.csv").unwrap();
        assert_eq!(
            c.get::<FileTable>().unwrap().path,
            Path::new("queries/ref/assets.csv")
        );
        for bad in ["../secret.csv", "/etc/passwd", "a/../../b.csv"] {
            let e = table(bad).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("path"), "{bad}");
        }
    }
}
