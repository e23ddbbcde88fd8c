//! `webaccel sql`: one read-only statement, checked here and enforced by the server.

use anyhow::{Context, bail};
use webaccel_analytics::ClickHouseSettings;

/// Statement kinds that only read.
const READ_ONLY: &[&str] = &[
    "SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS",
];

/// Refuses anything but one read-only statement, with a message saying why.
pub fn check_read_only(query: &str) -> anyhow::Result<()> {
    let trimmed = query.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        bail!("the query is empty");
    }
    if trimmed.contains(';') {
        bail!("one statement at a time: the query contains ';'");
    }
    let first = trimmed
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let first = first.trim_start_matches('(');
    if !READ_ONLY.contains(&first) {
        bail!(
            "'{first}' statements are refused: `webaccel sql` only reads (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS)"
        );
    }
    Ok(())
}

/// Runs `query` with `readonly=1`, so the server refuses writes too.
pub async fn run(
    settings: &ClickHouseSettings,
    query: &str,
    format: &str,
) -> anyhow::Result<String> {
    let mut req = reqwest::Client::new()
        .post(&settings.url)
        .query(&[
            ("database", settings.database.as_str()),
            ("readonly", "1"),
            ("default_format", format),
        ])
        .body(query.to_owned());
    if let Some(user) = &settings.user {
        req = req.basic_auth(user, settings.password.as_ref());
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("reaching ClickHouse at {}", settings.url))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("ClickHouse refused the query ({status}): {}", text.trim());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass_and_writes_are_refused() {
        for q in [
            "SELECT 1",
            " with x as (select 1) select * from x;",
            "show tables",
            "(SELECT 1)",
            "EXPLAIN SELECT 1",
        ] {
            assert!(check_read_only(q).is_ok(), "{q}");
        }
        for (q, why) in [
            (
                "INSERT INTO t VALUES (1)",
                "'INSERT' statements are refused",
            ),
            ("drop table t", "'DROP' statements are refused"),
            ("SELECT 1; DROP TABLE t", "one statement at a time"),
            ("  ", "empty"),
        ] {
            let err = check_read_only(q).unwrap_err().to_string();
            assert!(err.contains(why), "{q}: {err}");
        }
    }
}
