//! The runtime's error type.

use datafusion::error::DataFusionError;

/// Errors from the streaming runtime.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// DataFusion failed while aggregating or finishing a window.
    #[error("query '{query}': {source}")]
    Exec {
        /// The query.
        query: String,
        /// The error.
        source: DataFusionError,
    },
    /// A batch pushed in does not have the source's columns.
    #[error("query '{query}': input batch does not match the source schema: {reason}")]
    Schema {
        /// The query.
        query: String,
        /// What did not match.
        reason: String,
    },
}

impl StreamError {
    /// [`StreamError::Exec`] for query `query`.
    pub(crate) fn exec(query: &str, source: DataFusionError) -> Self {
        StreamError::Exec {
            query: query.to_string(),
            source,
        }
    }
}
