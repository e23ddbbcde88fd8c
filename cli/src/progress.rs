//! Progress for long queries: after a second without an answer, a spinner with the
//! elapsed time on stderr, when stderr is a terminal and the output is not JSON.
//!
//! Elapsed time, not rows read: ClickHouse 18.16 sent no `X-ClickHouse-Progress`
//! headers for a 25 s query even with `send_progress_in_http_headers=1`, and the
//! clickhouse crate (0.15) exposes only the final `X-ClickHouse-Summary`, so there is
//! no honest row count to show while a query runs.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::time::Instant;

/// Quiet queries show nothing for this long.
const DELAY: Duration = Duration::from_secs(1);
const FRAMES: [char; 4] = ['|', '/', '-', '\\'];

/// Whether to show progress: never into a pipe or file, never with `--json` (a
/// machine reads that run).
pub fn wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// The line shown after `elapsed` at animation step `tick`.
fn line(label: &str, elapsed: Duration, tick: usize) -> String {
    format!(
        "\r{} {label}: {:.1} s",
        FRAMES[tick % FRAMES.len()],
        elapsed.as_secs_f64()
    )
}

/// Awaits `work`, showing progress on stderr meanwhile if `show`; the line is erased
/// when the work ends, so only the result remains.
pub async fn with_progress<F: Future>(label: &str, show: bool, work: F) -> F::Output {
    if !show {
        return work.await;
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + DELAY, Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut work = std::pin::pin!(work);
    let mut frame = 0;
    loop {
        tokio::select! {
            out = &mut work => {
                if frame > 0 {
                    // Erase the line: carriage return, then clear to its end.
                    let mut err = std::io::stderr();
                    let _ = write!(err, "\r\x1b[2K");
                    let _ = err.flush();
                }
                return out;
            }
            _ = tick.tick() => {
                let mut err = std::io::stderr();
                let _ = write!(err, "{}", line(label, start.elapsed(), frame));
                let _ = err.flush();
                frame += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_elapsed_seconds() {
        assert_eq!(
            line("querying ClickHouse", Duration::from_millis(2345), 5),
            "\r/ querying ClickHouse: 2.3 s"
        );
    }

    #[tokio::test]
    async fn quick_work_passes_through_untouched() {
        assert_eq!(with_progress("x", true, async { 7 }).await, 7);
        let slow = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            8
        };
        assert_eq!(with_progress("x", false, slow).await, 8);
    }
}
