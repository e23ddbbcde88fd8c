//! The tables and their versioned, idempotent migrations. DDL is built for the
//! server's [`Features`]: the same tables on ClickHouse 18.16 and on current releases,
//! with LowCardinality, DateTime64, TTL and insert deduplication where they exist.

use crate::server::Features;

/// Days of history kept where the server supports TTL.
pub const RETENTION_DAYS: u32 = 90;

/// Column kinds; the DDL type depends on the server.
#[derive(Debug, Clone, Copy)]
enum Col {
    Time,
    Id,
    Label,
    Text,
    F64,
    U32,
    U64,
}

struct TableDef {
    /// Its creation's migration number.
    version: u32,
    name: &'static str,
    columns: &'static [(&'static str, Col)],
    /// Sorting key after `event_time`-independent leading columns.
    order_by: &'static [&'static str],
}

const TABLES: &[TableDef] = &[
    TableDef {
        version: 1,
        name: "inference_performance",
        columns: &[
            ("event_time", Col::Time),
            ("row_id", Col::Id),
            ("pool", Col::Label),
            ("pod", Col::Label),
            ("browser", Col::Label),
            ("browser_version", Col::Label),
            ("model", Col::Label),
            ("task", Col::Label),
            ("backend", Col::Label),
            ("adapter", Col::Label),
            ("adapter_kind", Col::Label),
            ("init_ms", Col::F64),
            ("inference_ms", Col::F64),
            ("latency_ms", Col::F64),
            ("batch_size", Col::U32),
            ("precision", Col::Label),
            ("bytes_in", Col::U64),
            ("bytes_out", Col::U64),
            ("outcome", Col::Label),
            ("error_category", Col::Label),
        ],
        order_by: &["model", "browser", "backend", "event_time", "row_id"],
    },
    TableDef {
        version: 2,
        name: "browser_connections",
        columns: &[
            ("event_time", Col::Time),
            ("row_id", Col::Id),
            ("pool", Col::Label),
            ("pod", Col::Label),
            ("browser", Col::Label),
            ("browser_version", Col::Label),
            ("event", Col::Label),
            ("reason", Col::Text),
            ("adapter", Col::Label),
            ("adapter_kind", Col::Label),
            ("webnn", Col::Text),
            ("start_ms", Col::F64),
        ],
        order_by: &["pool", "pod", "event_time", "row_id"],
    },
    TableDef {
        version: 3,
        name: "pool_events",
        columns: &[
            ("event_time", Col::Time),
            ("row_id", Col::Id),
            ("namespace", Col::Label),
            ("pool", Col::Label),
            ("event", Col::Label),
            ("pod", Col::Label),
            ("from_replicas", Col::U32),
            ("to_replicas", Col::U32),
            ("reason", Col::Text),
        ],
        order_by: &["namespace", "pool", "event_time", "row_id"],
    },
    TableDef {
        version: 4,
        name: "regressions",
        columns: &[
            ("event_time", Col::Time),
            ("row_id", Col::Id),
            ("model", Col::Label),
            ("browser", Col::Label),
            ("backend", Col::Label),
            ("metric", Col::Label),
            ("baseline_p50", Col::F64),
            ("recent_p50", Col::F64),
            ("change_pct", Col::F64),
            ("p_value", Col::F64),
            ("severity", Col::Label),
            ("baseline_samples", Col::U64),
            ("recent_samples", Col::U64),
        ],
        order_by: &["model", "browser", "backend", "event_time", "row_id"],
    },
    // Migration 5: one row per request the gateway answered.
    TableDef {
        version: 5,
        name: "gateway_requests",
        columns: &[
            ("event_time", Col::Time),
            ("row_id", Col::Id),
            ("request_id", Col::Text),
            ("model", Col::Label),
            ("pool", Col::Label),
            ("browser", Col::Label),
            ("backend", Col::Label),
            ("attempts", Col::U32),
            ("latency_ms", Col::F64),
            ("compute_ms", Col::F64),
            ("bytes_in", Col::U64),
            ("outcome", Col::Label),
            ("error_category", Col::Label),
        ],
        order_by: &["model", "event_time", "row_id"],
    },
    // Migration 7: one row per text generation an agent ran.
    TableDef {
        version: 7,
        name: "generation_performance",
        columns: &[
            ("event_time", Col::Time),
            ("row_id", Col::Id),
            ("pool", Col::Label),
            ("pod", Col::Label),
            ("browser", Col::Label),
            ("browser_version", Col::Label),
            ("model", Col::Label),
            ("backend", Col::Label),
            ("adapter", Col::Label),
            ("adapter_kind", Col::Label),
            ("kv_cache", Col::Label),
            ("prompt_tokens", Col::U32),
            ("completion_tokens", Col::U32),
            ("queue_ms", Col::F64),
            ("prefill_ms", Col::F64),
            ("ttft_ms", Col::F64),
            ("inter_token_p50_ms", Col::F64),
            ("inter_token_p99_ms", Col::F64),
            ("tokens_per_s", Col::F64),
            ("max_batch", Col::U32),
            ("kv_bytes", Col::U64),
            ("finish_reason", Col::Label),
            ("outcome", Col::Label),
            ("error_category", Col::Label),
        ],
        order_by: &["model", "browser", "backend", "event_time", "row_id"],
    },
];

/// A column added to a table that exists already.
struct AddColumn {
    version: u32,
    table: &'static str,
    column: &'static str,
    /// Type and default, as `ADD COLUMN` takes them.
    declaration: &'static str,
}

/// Columns added after the table creations above, each with its migration number.
/// Released entries never change: a new change is a new entry.
const ADDED_COLUMNS: &[AddColumn] = &[
    // The rows of the run that answered each request (the agent's dynamic batching);
    // rows written before it read as their own batch size.
    AddColumn {
        version: 6,
        table: "inference_performance",
        column: "dynamic_batch_size",
        declaration: "UInt32 DEFAULT batch_size",
    },
    // The ModelDeployment a `model_scale` event is about (empty for the pool's own).
    AddColumn {
        version: 8,
        table: "pool_events",
        column: "model",
        declaration: "String DEFAULT ''",
    },
    // The request an agent row answered, to join it to the gateway's row.
    AddColumn {
        version: 9,
        table: "inference_performance",
        column: "request_id",
        declaration: "String DEFAULT ''",
    },
    // Where each request's time went, stage by stage (`webaccel_api::timing::Stage`):
    // the agent's stages on its rows, the whole path on the gateway's; so the slowest 1%
    // can be taken apart in SQL.
    AddColumn {
        version: 10,
        table: "inference_performance",
        column: "receive_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 11,
        table: "inference_performance",
        column: "agent_queue_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 12,
        table: "inference_performance",
        column: "page_link_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 13,
        table: "inference_performance",
        column: "page_queue_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 14,
        table: "inference_performance",
        column: "decode_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 15,
        table: "inference_performance",
        column: "encode_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 16,
        table: "inference_performance",
        column: "agent_reply_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 17,
        table: "gateway_requests",
        column: "receive_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 18,
        table: "gateway_requests",
        column: "route_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 19,
        table: "gateway_requests",
        column: "bridge_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 20,
        table: "gateway_requests",
        column: "agent_queue_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 21,
        table: "gateway_requests",
        column: "page_link_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 22,
        table: "gateway_requests",
        column: "page_queue_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 23,
        table: "gateway_requests",
        column: "decode_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 24,
        table: "gateway_requests",
        column: "encode_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 25,
        table: "gateway_requests",
        column: "agent_reply_ms",
        declaration: "Float64 DEFAULT 0",
    },
    AddColumn {
        version: 26,
        table: "gateway_requests",
        column: "gateway_reply_ms",
        declaration: "Float64 DEFAULT 0",
    },
];

/// One schema change, applied once and recorded in `schema_migrations`.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub version: u32,
    pub name: String,
    pub sql: String,
    /// What it leaves behind, looked for in ClickHouse's system tables: before it runs
    /// (a column there already is not added again: `ADD COLUMN IF NOT EXISTS` is newer
    /// than the oldest server supported) and after a failure (another migrator may have
    /// made it between our look and our statement).
    pub outcome: Outcome,
}

/// A schema object a statement makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Database(String),
    /// A table of the migrated database.
    Table(String),
    Column {
        table: String,
        column: String,
    },
}

/// `s` as a ClickHouse string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Outcome {
    /// A query answering 1 when the outcome exists, 0 when not (run in the migrated
    /// database: tables and columns are looked for in `currentDatabase()`).
    pub fn exists_sql(&self) -> String {
        match self {
            Self::Database(name) => format!(
                "SELECT count() FROM system.databases WHERE name = {}",
                literal(name)
            ),
            Self::Table(name) => format!(
                "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {}",
                literal(name)
            ),
            Self::Column { table, column } => format!(
                "SELECT count() FROM system.columns WHERE database = currentDatabase() \
                 AND table = {} AND name = {}",
                literal(table),
                literal(column)
            ),
        }
    }
}

fn column_type(f: Features, c: Col) -> &'static str {
    match c {
        Col::Time => f.time_type(),
        Col::Id | Col::U64 => "UInt64",
        Col::Label => f.label(),
        Col::Text => "String",
        Col::F64 => "Float64",
        Col::U32 => "UInt32",
    }
}

fn create_table(f: Features, t: &TableDef) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|(n, c)| format!("    {n} {}", column_type(f, *c)))
        .collect();
    let seconds = f.time_seconds("event_time");
    // ReplacingMergeTree collapses rows with the same sorting key, which ends in
    // row_id: a batch replayed after an ambiguous failure does not count twice.
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n) ENGINE = ReplacingMergeTree()\nPARTITION BY toYYYYMM({seconds})\nORDER BY ({})",
        t.name,
        cols.join(",\n"),
        t.order_by.join(", ")
    );
    if f.ttl {
        sql.push_str(&format!("\nTTL {seconds} + INTERVAL {RETENTION_DAYS} DAY"));
    }
    if f.dedup_token {
        // Exact deduplication of retried batches at insert time, not only at merge.
        sql.push_str("\nSETTINGS non_replicated_deduplication_window = 1000");
    }
    sql
}

/// Every migration, in order, as DDL for servers with `f`.
pub fn migrations(f: Features) -> Vec<Migration> {
    let mut all: Vec<Migration> = TABLES
        .iter()
        .map(|t| Migration {
            version: t.version,
            name: format!("create {}", t.name),
            sql: create_table(f, t),
            outcome: Outcome::Table(t.name.to_owned()),
        })
        .chain(ADDED_COLUMNS.iter().map(|a| Migration {
            version: a.version,
            name: format!("add {}.{}", a.table, a.column),
            sql: format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                a.table, a.column, a.declaration
            ),
            outcome: Outcome::Column {
                table: a.table.to_owned(),
                column: a.column.to_owned(),
            },
        }))
        .collect();
    all.sort_by_key(|m| m.version);
    all
}

mod migrate;
pub use migrate::{MigrationError, MigrationReport, migrate};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_queries_quote_their_names() {
        assert_eq!(literal(r"a'b\c"), r"'a\'b\\c'");
        let column = Outcome::Column {
            table: "pool_events".into(),
            column: "model".into(),
        };
        let sql = column.exists_sql();
        assert!(
            sql.contains("table = 'pool_events' AND name = 'model'"),
            "{sql}"
        );
        assert!(
            Outcome::Database("x'; DROP".into())
                .exists_sql()
                .ends_with(r"name = 'x\'; DROP'")
        );
    }

    #[test]
    fn old_server_ddl_uses_plain_types_and_no_ttl() {
        let sql = &migrations(Features::from_version("18.16.1"))[0].sql;
        assert!(sql.contains("event_time Int64"), "{sql}");
        assert!(sql.contains("model String"), "{sql}");
        assert!(
            sql.contains("PARTITION BY toYYYYMM(toDateTime(intDiv(event_time, 1000)))"),
            "{sql}"
        );
        assert!(
            !sql.contains("TTL") && !sql.contains("LowCardinality") && !sql.contains("SETTINGS"),
            "{sql}"
        );
    }

    #[test]
    fn modern_server_ddl_uses_everything() {
        let sql = &migrations(Features::from_version("25.8.1"))[0].sql;
        assert!(sql.contains("event_time DateTime64(3)"), "{sql}");
        assert!(sql.contains("model LowCardinality(String)"), "{sql}");
        assert!(
            sql.contains("TTL toDateTime(event_time) + INTERVAL 90 DAY"),
            "{sql}"
        );
        assert!(sql.contains("non_replicated_deduplication_window"), "{sql}");
    }

    #[test]
    fn every_table_has_a_numbered_migration() {
        let m = migrations(Features::from_version("18.16.1"));
        let names: Vec<_> = m.iter().map(|m| (m.version, m.name.as_str())).collect();
        assert_eq!(
            names,
            [
                (1, "create inference_performance"),
                (2, "create browser_connections"),
                (3, "create pool_events"),
                (4, "create regressions"),
                (5, "create gateway_requests"),
                (6, "add inference_performance.dynamic_batch_size"),
                (7, "create generation_performance"),
                (8, "add pool_events.model"),
                (9, "add inference_performance.request_id"),
                (10, "add inference_performance.receive_ms"),
                (11, "add inference_performance.agent_queue_ms"),
                (12, "add inference_performance.page_link_ms"),
                (13, "add inference_performance.page_queue_ms"),
                (14, "add inference_performance.decode_ms"),
                (15, "add inference_performance.encode_ms"),
                (16, "add inference_performance.agent_reply_ms"),
                (17, "add gateway_requests.receive_ms"),
                (18, "add gateway_requests.route_ms"),
                (19, "add gateway_requests.bridge_ms"),
                (20, "add gateway_requests.agent_queue_ms"),
                (21, "add gateway_requests.page_link_ms"),
                (22, "add gateway_requests.page_queue_ms"),
                (23, "add gateway_requests.decode_ms"),
                (24, "add gateway_requests.encode_ms"),
                (25, "add gateway_requests.agent_reply_ms"),
                (26, "add gateway_requests.gateway_reply_ms"),
            ]
        );
        // The creations keep their DDL: the new column comes only from migration 6.
        assert!(!m[0].sql.contains("dynamic_batch_size"), "{}", m[0].sql);
        assert_eq!(
            m[5].sql,
            "ALTER TABLE inference_performance ADD COLUMN dynamic_batch_size UInt32 DEFAULT batch_size"
        );
        // Versions only grow.
        assert!(m.windows(2).all(|w| w[0].version < w[1].version));
    }
}
