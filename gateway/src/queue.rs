//! Requests waiting for a browser, per model: bounded (the gateway answers 429 when a
//! model's queue is full), and counted, so the number waiting for a model no browser
//! holds can be published as the scale-from-zero signal.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Requests waiting for a free browser.
    pub total: usize,
    /// Of those, requests waiting because no ready browser holds the model at all.
    pub for_browser: usize,
}

#[derive(Debug)]
pub struct Queues {
    limit: usize,
    waiting: Mutex<BTreeMap<String, Waiting>>,
}

impl Queues {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            waiting: Mutex::new(BTreeMap::new()),
        })
    }

    /// Requests that may wait per model.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a place in `model`'s queue; `None` when it is full.
    pub fn enter(self: &Arc<Self>, model: &str) -> Option<WaitGuard> {
        let mut waiting = self.waiting.lock();
        let w = waiting.entry(model.to_owned()).or_default();
        if w.total >= self.limit {
            return None;
        }
        w.total += 1;
        Some(WaitGuard {
            queues: self.clone(),
            model: model.to_owned(),
            for_browser: false,
        })
    }

    /// Every model with requests waiting.
    pub fn snapshot(&self) -> BTreeMap<String, Waiting> {
        self.waiting.lock().clone()
    }
}

/// A place in a model's queue, given back when dropped (served, timed out, or its client
/// went away).
#[derive(Debug)]
pub struct WaitGuard {
    queues: Arc<Queues>,
    model: String,
    for_browser: bool,
}

impl WaitGuard {
    /// Notes whether the request waits for a browser to exist (scale from zero) rather
    /// than for one to be free.
    pub fn waiting_for_browser(&mut self, yes: bool) {
        if yes == self.for_browser {
            return;
        }
        let mut waiting = self.queues.waiting.lock();
        if let Some(w) = waiting.get_mut(&self.model) {
            if yes {
                w.for_browser += 1;
            } else {
                w.for_browser = w.for_browser.saturating_sub(1);
            }
        }
        self.for_browser = yes;
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut waiting = self.queues.waiting.lock();
        if let Some(w) = waiting.get_mut(&self.model) {
            w.total = w.total.saturating_sub(1);
            if self.for_browser {
                w.for_browser = w.for_browser.saturating_sub(1);
            }
            if w.total == 0 {
                waiting.remove(&self.model);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_and_places_come_back() {
        let q = Queues::new(2);
        let mut a = q.enter("m").unwrap();
        let b = q.enter("m").unwrap();
        assert!(q.enter("m").is_none(), "full");
        assert!(q.enter("other").is_some(), "per model");
        a.waiting_for_browser(true);
        assert_eq!(
            q.snapshot()["m"],
            Waiting {
                total: 2,
                for_browser: 1
            }
        );
        drop(a);
        assert_eq!(
            q.snapshot()["m"],
            Waiting {
                total: 1,
                for_browser: 0
            }
        );
        drop(b);
        assert!(q.snapshot().is_empty());
    }
}
