//! Where ClickHouse is and how to log in, validated up front so a typo is reported
//! with the setting's name instead of as a network error later.

/// Connection settings. `url` is the HTTP interface (`http://host:8123`), optionally
/// with `user:password@` in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("ClickHouse URL '{url}' (setting {setting}) is malformed: {reason}")]
    BadUrl {
        setting: &'static str,
        url: String,
        reason: String,
    },
    #[error("ClickHouse database name '{0}' (setting database) must be letters, digits and '_'")]
    BadDatabase(String),
}

impl ClickHouseSettings {
    /// Parses and checks settings; `setting` names the flag or variable the URL came
    /// from, for the error message.
    pub fn new(url: &str, database: &str, setting: &'static str) -> Result<Self, SettingsError> {
        let bad = |reason: &str| SettingsError::BadUrl {
            setting,
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad(
                "the scheme must be http or https (ClickHouse's HTTP interface)",
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("it has no host"));
        }
        if database.is_empty()
            || !database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(SettingsError::BadDatabase(database.to_owned()));
        }
        let user = Some(parsed.username().to_owned()).filter(|u| !u.is_empty());
        let password = parsed.password().map(str::to_owned);
        let mut clean = parsed.clone();
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
        Ok(Self {
            url: clean.as_str().trim_end_matches('/').to_owned(),
            database: database.to_owned(),
            user,
            password,
        })
    }

    /// A client for this server. `with_database` is false for the statements that
    /// create the database itself.
    pub fn client(&self, with_database: bool) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.url)
            // RowBinaryWithNamesAndTypes, used for validation, is newer than the
            // servers webaccel supports (18.16 and up).
            .with_validation(false);
        if with_database {
            c = c.with_database(&self.database);
        }
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_split_out() {
        let s = ClickHouseSettings::new(
            "http://bob:pw@127.0.0.1:8123/",
            "webaccel",
            "--clickhouse-url",
        )
        .unwrap();
        assert_eq!(s.url, "http://127.0.0.1:8123");
        assert_eq!(
            (s.user.as_deref(), s.password.as_deref()),
            (Some("bob"), Some("pw"))
        );
    }

    #[test]
    fn malformed_settings_name_the_setting() {
        let err =
            ClickHouseSettings::new("localhost:8123", "db", "WEBACCEL_CLICKHOUSE_URL").unwrap_err();
        assert!(
            err.to_string()
                .contains("(setting WEBACCEL_CLICKHOUSE_URL)"),
            "{err}"
        );
        let err = ClickHouseSettings::new("tcp://h:9000", "db", "--clickhouse-url").unwrap_err();
        assert!(err.to_string().contains("scheme must be http"), "{err}");
        let err =
            ClickHouseSettings::new("http://h:8123", "my-db", "--clickhouse-url").unwrap_err();
        assert_eq!(err, SettingsError::BadDatabase("my-db".into()));
    }
}
