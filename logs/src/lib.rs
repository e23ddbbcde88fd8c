//! How every webaccel binary logs. Text for people, with colour only where a person
//! reads it (a terminal, and `NO_COLOR` unset), because escapes written to a file or a
//! pipe end up in `kubectl logs` and demo logs as `^[[2m` noise; or one JSON object per
//! line, with the event's fields and its spans' fields, for cluster log pipelines
//! (Fluent Bit, Vector, Loki) that parse rather than read.
//!
//! Each binary flattens [`LogArgs`] into its command line (`--log-format`,
//! `--log-color`, or `WEBACCEL_LOG_FORMAT` / `WEBACCEL_LOG_COLOR`) and calls
//! [`LogArgs::init`] before anything logs. `RUST_LOG` still picks what is logged.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The shape of each log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (the message
    /// and the event's fields), `span` and `spans` (their fields).
    Json,
}

impl LogFormat {
    /// As `--log-format` takes it, for a child process started with the same format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// When text lines are coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogColor {
    /// When standard error is a terminal and `NO_COLOR` is not set.
    #[default]
    Auto,
    Always,
    Never,
}

/// The logging options every binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log lines as text or as one JSON object per line.
    #[arg(
        long,
        env = "WEBACCEL_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,
    /// Colour in text logs.
    #[arg(
        long,
        env = "WEBACCEL_LOG_COLOR",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_color: LogColor,
}

impl LogArgs {
    /// Whether text lines get colour escapes, given whether standard error is a terminal
    /// and whether `NO_COLOR` is set.
    pub fn colored(&self, terminal: bool, no_color: bool) -> bool {
        match self.log_color {
            LogColor::Always => true,
            LogColor::Never => false,
            LogColor::Auto => terminal && !no_color,
        }
    }

    /// Installs the global subscriber, writing to standard error. `default_filter` is used
    /// when `RUST_LOG` is unset or invalid.
    pub fn init(&self, default_filter: &str) {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .init(),
            LogFormat::Text => builder
                .with_ansi(self.colored(std::io::stderr().is_terminal(), no_color()))
                .init(),
        }
    }
}

/// `NO_COLOR` set to anything non-empty (<https://no-color.org>).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color_unless_told() {
        let auto = LogArgs::default();
        assert!(auto.colored(true, false));
        assert!(
            !auto.colored(false, false),
            "a file or a pipe gets no escapes"
        );
        assert!(!auto.colored(true, true), "NO_COLOR wins on a terminal");
        let always = LogArgs {
            log_color: LogColor::Always,
            ..LogArgs::default()
        };
        assert!(always.colored(false, true));
        let never = LogArgs {
            log_color: LogColor::Never,
            ..LogArgs::default()
        };
        assert!(!never.colored(true, false));
    }

    #[test]
    fn flags_parse_and_bad_values_are_refused_with_the_choices() {
        let cli = Cli::try_parse_from(["x", "--log-format", "json", "--log-color", "never"])
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert_eq!(cli.log.log_color, LogColor::Never);
        let Err(e) = Cli::try_parse_from(["x", "--log-format", "yaml"]) else {
            panic!("yaml accepted");
        };
        let e = e.to_string();
        assert!(e.contains("text") && e.contains("json"), "{e}");
    }
}
