//! The page's copy of the retry policy: `web/src/categories.js` is generated from
//! [`ErrorCategory::is_retryable`] (the one place that decides which categories a client
//! may retry), so the `retryable` flag of the page's error frames says what the agent's
//! own error frames and HTTP bodies say. This test fails when the file is stale;
//! `WEBACCEL_UPDATE_GOLDEN=1 cargo test -p webaccel-node-agent --lib categories` writes
//! it afresh.

use std::path::PathBuf;

use webaccel_api::ErrorCategory;

/// `web/src/categories.js` as [`ErrorCategory`] makes it.
fn categories_js() -> String {
    let rows: String = ErrorCategory::ALL
        .iter()
        .map(|c| format!("  {}: {},\n", c.as_str(), c.is_retryable()))
        .collect();
    format!(
        "// @ts-check\n\
         // Generated from ErrorCategory::is_retryable (api/src/error.rs), the one retry policy:\n\
         // whether a client may send a request again, by the category of its failure. Do not\n\
         // edit: `WEBACCEL_UPDATE_GOLDEN=1 cargo test -p webaccel-node-agent --lib categories`\n\
         // writes it afresh (that test fails while it is stale).\n\
         \n\
         /** @type {{Readonly<Record<string, boolean>>}} */\n\
         export const RETRYABLE = Object.freeze({{\n{rows}}});\n"
    )
}

#[test]
fn the_pages_retry_table_is_error_categorys() {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/web/src/categories.js"
    ));
    let made = categories_js();
    if std::env::var_os("WEBACCEL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &made).unwrap();
    }
    let file = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(file, made, "{} is stale", path.display());
}
