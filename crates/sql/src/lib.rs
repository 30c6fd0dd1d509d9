//! Forewarn's SQL front end: query files → DataFusion plans split for streaming.
//!
//! A query file declares sources and sinks with `CREATE TABLE ... WITH (...)` and
//! queries with `INSERT INTO sink SELECT ... GROUP BY tumble(interval '10 seconds'), key`.
//! [`QuerySet`] parses files; [`compile`] plans each query once and cuts it into the
//! partial half (fed per pane) and the final half (run when a window closes).

// Reading query files: what they declare, and each statement's parser.
mod decl;
mod insert;
mod lifecycle;
mod reference_table;
mod sink_table;
mod source_table;
mod table;
mod watermark;
mod window;

mod detector;
mod dsp_udf;
mod error;
mod features;
mod locate;
mod moments;
mod plan;
mod reference;
mod sink;
mod udf;

pub use decl::{
    QueryDecl, QuerySet, ReferenceDecl, SinkDecl, SourceDecl, ARRIVAL_TIME, DEFAULT_MAX_SKEW,
    WINDOW_END, WINDOW_START,
};
pub use detector::{OnlineBinding, OnlineDecl, OnlineKind, Span};
pub use dsp_udf::dsp_udfs;
pub use error::{SqlError, SqlErrorKind};
pub use features::{feature_query, scored_models, FEATURE_SINK};
pub use moments::{moment_udafs, Moment, Stats};
pub use plan::{compile, replace_leaf, streaming_context, time_type, CompiledQuery, MemoryRuns};
pub use reference::register_reference;
pub use sink::{bind_sink, SinkBinding};
pub use udf::AnomalyScore;
