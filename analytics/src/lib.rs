//! webaccel-analytics: everything ClickHouse. The schema and its versioned migrations
//! (adapted to what the server supports), the row types, and a batching writer that
//! never blocks its caller and loses nothing across ClickHouse outages (disk spool,
//! replayed in order, deduplicated by row id). From those rows: typed queries, and with
//! the `reports` feature Markdown/HTML reports and PNG/SVG charts (only the `webaccel`
//! command needs them, so the agent, gateway and operator do not link plotters).

#[cfg(feature = "reports")]
pub mod charts;
pub mod history;
pub mod journal;
pub mod local;
pub mod overview;
pub mod queries;
#[cfg(feature = "reports")]
pub mod report;
pub mod rows;
pub mod schema;
pub mod server;
pub mod settings;
pub mod spool;
pub mod writer;

pub use settings::{ClickHouseSettings, SettingsError};
pub use writer::{Writer, WriterConfig, WriterHandle, WriterStats};
