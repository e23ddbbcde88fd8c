//! What the ClickHouse server supports, from its version, so the schema can use
//! LowCardinality, DateTime64 and TTL where they exist and plain types where not.

/// Schema features of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub version: (u32, u32),
    /// `LowCardinality(String)` without experimental settings (19.x).
    pub low_cardinality: bool,
    /// `DateTime64(3)` (20.1).
    pub datetime64: bool,
    /// Table `TTL` clauses (19.6).
    pub ttl: bool,
    /// Insert deduplication tokens on plain MergeTree tables (22.2).
    pub dedup_token: bool,
}

impl Features {
    /// Features of a server reporting `version` (as `SELECT version()` prints it).
    pub fn from_version(version: &str) -> Self {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        Self {
            version: v,
            low_cardinality: v >= (19, 0),
            datetime64: v >= (20, 1),
            ttl: v >= (19, 6),
            dedup_token: v >= (22, 2),
        }
    }

    /// A string column, low-cardinality where supported.
    pub fn label(self) -> &'static str {
        if self.low_cardinality {
            "LowCardinality(String)"
        } else {
            "String"
        }
    }

    /// The event time column: milliseconds since the epoch, as `DateTime64(3)` where
    /// supported and `Int64` elsewhere. Both are 8 bytes of milliseconds on the wire, so
    /// one row type fits both.
    pub fn time_type(self) -> &'static str {
        if self.datetime64 {
            "DateTime64(3)"
        } else {
            "Int64"
        }
    }

    /// An expression giving the event time as `DateTime` (seconds) in queries.
    pub fn time_seconds(self, column: &str) -> String {
        if self.datetime64 {
            format!("toDateTime({column})")
        } else {
            format!("toDateTime(intDiv({column}, 1000))")
        }
    }
}

/// Asks the server its version.
pub async fn detect(client: &clickhouse::Client) -> Result<Features, clickhouse::error::Error> {
    let version: String = client.query("SELECT version()").fetch_one().await?;
    Ok(Features::from_version(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_server_gets_plain_types() {
        let f = Features::from_version("18.16.1");
        assert_eq!(
            (f.low_cardinality, f.datetime64, f.ttl, f.dedup_token),
            (false, false, false, false)
        );
        assert_eq!(f.label(), "String");
        assert_eq!(f.time_type(), "Int64");
        assert_eq!(f.time_seconds("t"), "toDateTime(intDiv(t, 1000))");
    }

    #[test]
    fn modern_server_gets_everything() {
        let f = Features::from_version("25.8.2.29");
        assert!(f.low_cardinality && f.datetime64 && f.ttl && f.dedup_token);
        assert_eq!(f.time_type(), "DateTime64(3)");
    }
}
