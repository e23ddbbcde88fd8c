//! The slowest 1% of recent requests, kept whole: each one's stages, so that one look at
//! `/v1/stats` says which stage makes the tail (Dean and Barroso's point: the tail has
//! causes of its own that the median hides).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Stage, StageTimes};

/// The slowest requests reported, at most.
const SLOWEST_LISTED: usize = 20;

/// One finished request as the window keeps it.
#[derive(Debug, Clone)]
struct Finished {
    at: Instant,
    model: String,
    request_id: String,
    total_ms: f64,
    stages: StageTimes,
}

/// How long a report is served before it is worked out again: `/v1/stats` is polled by
/// every gateway and operator, and taking 20,000 requests apart on each poll would cost
/// the agent's threads milliseconds, which would show in the very tail it reports.
const REPORT_REFRESH: Duration = Duration::from_secs(1);

/// Recent requests (the last `span`, at most `capacity`), for [`TailReport`]s.
#[derive(Debug)]
pub struct TailWindow {
    span: Duration,
    capacity: usize,
    finished: Mutex<VecDeque<Finished>>,
    /// The last report and when it was worked out.
    reported: Mutex<Option<(Instant, TailReport)>>,
}

impl Default for TailWindow {
    /// The last minute, at most 20,000 requests (about 1 MB).
    fn default() -> Self {
        Self::new(Duration::from_secs(60), 20_000)
    }
}

/// A slow request: its whole breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowRequest {
    pub model: String,
    pub request_id: String,
    /// Seconds ago it finished.
    pub age_s: f64,
    pub total_ms: f64,
    pub stages: StageTimes,
}

/// One stage over the window: its median over all requests and its mean over the
/// slowest 1%.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageShare {
    pub stage: String,
    pub p50_ms: f64,
    pub tail_mean_ms: f64,
}

/// Where the slowest 1% of the window's successful requests spent their time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailReport {
    pub window_s: f64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The slowest 1% of the requests by rank (at least one): the tail the rest
    /// describes.
    pub tail_requests: u64,
    /// Every measured stage, in path order.
    pub stages: Vec<StageShare>,
    /// The stage whose tail mean exceeds its median by the most: where the tail's extra
    /// time goes. `None` with no requests.
    pub dominant: Option<String>,
    /// The slowest requests, slowest first (at most 20).
    pub slowest: Vec<SlowRequest>,
}

/// The `q` quantile of `v` (nearest rank; 0 when empty), reordering `v` in linear time:
/// `/v1/stats` is polled every few seconds, and this must not take a core while it
/// serves.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    *v.select_nth_unstable_by(rank - 1, f64::total_cmp).1
}

impl TailWindow {
    pub fn new(span: Duration, capacity: usize) -> Self {
        Self {
            span,
            capacity: capacity.max(1),
            finished: Mutex::new(VecDeque::new()),
            reported: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Finished>> {
        // A panic elsewhere while holding it leaves plain data behind: keep using it.
        self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a successful request that took `total_ms` from its front's first sight of
    /// it, with its stages.
    pub fn push(&self, model: &str, request_id: &str, total_ms: f64, stages: StageTimes) {
        let now = Instant::now();
        let mut finished = self.lock();
        while finished.len() >= self.capacity
            || finished
                .front()
                .is_some_and(|f| now.duration_since(f.at) > self.span)
        {
            finished.pop_front();
        }
        finished.push_back(Finished {
            at: now,
            model: model.to_owned(),
            request_id: request_id.to_owned(),
            total_ms,
            stages,
        });
    }

    /// The window summed up, as of at most a second ago.
    pub fn report(&self) -> TailReport {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, report)) = &*reported
            && at.elapsed() < REPORT_REFRESH
        {
            return report.clone();
        }
        let report = self.report_now();
        *reported = Some((Instant::now(), report.clone()));
        report
    }

    /// The window now, summed up.
    pub fn report_now(&self) -> TailReport {
        let now = Instant::now();
        let finished = self.lock();
        let recent: Vec<&Finished> = finished
            .iter()
            .filter(|f| now.duration_since(f.at) <= self.span)
            .collect();
        let mut totals: Vec<f64> = recent.iter().map(|f| f.total_ms).collect();
        // The slowest 1% by rank (at least one request): ties at the p99 do not drag the
        // median's requests in.
        let mut tail = recent.clone();
        let k = recent.len().div_ceil(100);
        if k > 0 {
            tail.select_nth_unstable_by(k - 1, |a, b| b.total_ms.total_cmp(&a.total_ms));
            tail.truncate(k);
        }
        tail.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        let mut stages = Vec::new();
        let mut dominant: Option<(f64, Stage)> = None;
        for stage in Stage::ALL {
            let mut all: Vec<f64> = recent.iter().filter_map(|f| f.stages.get(stage)).collect();
            if all.is_empty() {
                continue;
            }
            let p50 = quantile(&mut all, 0.5);
            let in_tail: Vec<f64> = tail.iter().filter_map(|f| f.stages.get(stage)).collect();
            let tail_mean = in_tail.iter().sum::<f64>() / in_tail.len().max(1) as f64;
            if dominant.is_none_or(|(extra, _)| tail_mean - p50 > extra) {
                dominant = Some((tail_mean - p50, stage));
            }
            stages.push(StageShare {
                stage: stage.as_str().to_owned(),
                p50_ms: p50,
                tail_mean_ms: tail_mean,
            });
        }
        TailReport {
            window_s: self.span.as_secs_f64(),
            requests: recent.len() as u64,
            p50_ms: quantile(&mut totals, 0.5),
            p99_ms: quantile(&mut totals, 0.99),
            p999_ms: quantile(&mut totals, 0.999),
            tail_requests: tail.len() as u64,
            stages,
            dominant: dominant.map(|(_, s)| s.as_str().to_owned()),
            slowest: tail
                .iter()
                .take(SLOWEST_LISTED)
                .map(|f| SlowRequest {
                    model: f.model.clone(),
                    request_id: f.request_id.clone(),
                    age_s: now.duration_since(f.at).as_secs_f64(),
                    total_ms: f.total_ms,
                    stages: f.stages,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(queue: f64, run: f64) -> StageTimes {
        let mut t = StageTimes::default();
        t.set(Stage::AgentQueue, queue);
        t.set(Stage::Run, run);
        t
    }

    #[test]
    fn the_slowest_percent_is_listed_whole_and_its_extra_time_named() {
        let w = TailWindow::default();
        // 990 requests of 1 ms (run 0.9); 10 of 20 ms, all of it spent queueing.
        for i in 0..990 {
            w.push("m", &format!("fast-{i}"), 1.0, stages(0.1, 0.9));
        }
        for i in 0..10 {
            w.push(
                "m",
                &format!("slow-{i}"),
                20.0 + f64::from(i),
                stages(19.1 + f64::from(i), 0.9),
            );
        }
        let r = w.report_now();
        assert_eq!(r.requests, 1000);
        assert_eq!(r.p50_ms, 1.0);
        assert_eq!(r.p99_ms, 1.0, "the 990th of 1000 is still a fast one");
        assert_eq!(r.p999_ms, 28.0);
        assert_eq!(r.dominant.as_deref(), Some("agent_queue"));
        assert_eq!(r.tail_requests, 10);
        assert_eq!(r.slowest.len(), 10);
        assert_eq!(r.slowest[0].request_id, "slow-9");
        assert_eq!(r.slowest[0].stages.agent_queue, Some(28.1));
        let run = r.stages.iter().find(|s| s.stage == "run").unwrap();
        assert_eq!(run.p50_ms, 0.9);
        let names: Vec<&str> = r.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            names,
            ["agent_queue", "run"],
            "measured stages only, in path order"
        );
    }

    #[test]
    fn old_requests_and_those_past_capacity_leave_the_window() {
        let w = TailWindow::new(Duration::from_millis(50), 3);
        for i in 0..5 {
            w.push("m", &i.to_string(), f64::from(i), StageTimes::default());
        }
        let r = w.report();
        assert_eq!(r.requests, 3);
        assert_eq!(r.slowest[0].request_id, "4");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(w.report_now().requests, 0);
        assert_eq!(w.report().requests, 3, "a report is served for a second");
        assert_eq!(TailWindow::default().report().dominant, None);
    }
}
