//! Admission control and draining: a bounded number of requests in the agent at once,
//! and on SIGTERM no new work while what is in flight finishes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::AgentError;

#[derive(Debug)]
pub struct Admission {
    limit: usize,
    outstanding: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

/// Held while a request is inside the agent.
#[derive(Debug)]
pub struct Admitted<'a>(&'a Admission);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if self.0.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// [`Admitted`] that owns its way back: held by a generation's own task, which outlives
/// the call that admitted it.
#[derive(Debug)]
pub struct OwnedAdmitted(std::sync::Arc<Admission>);

impl Drop for OwnedAdmitted {
    fn drop(&mut self) {
        if self.0.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            outstanding: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
        }
    }

    /// Lets a request in, or says why not (draining: 503, full: 429).
    pub fn admit(&self) -> Result<Admitted<'_>, AgentError> {
        if self.is_draining() {
            return Err(AgentError::ShuttingDown);
        }
        let prev = self.outstanding.fetch_add(1, Ordering::AcqRel);
        let guard = Admitted(self);
        if prev >= self.limit {
            return Err(AgentError::Overloaded { limit: self.limit });
        }
        Ok(guard)
    }

    /// [`Admission::admit`] for work that goes on in a task of its own.
    pub fn admit_owned(self: &std::sync::Arc<Self>) -> Result<OwnedAdmitted, AgentError> {
        let admitted = self.admit()?;
        std::mem::forget(admitted);
        Ok(OwnedAdmitted(self.clone()))
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops admitting new requests; what is in flight finishes. The operator calls this
    /// (through `POST /v1/drain`) before it deletes a browser pod it scales away.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Stops admitting and waits until nothing is in flight, or `timeout` passes.
    /// Returns how many requests were still in flight at the end.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.outstanding() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.outstanding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_refuses_with_overloaded() {
        let a = Admission::new(2);
        let g1 = a.admit().unwrap();
        let _g2 = a.admit().unwrap();
        assert!(matches!(
            a.admit(),
            Err(AgentError::Overloaded { limit: 2 })
        ));
        assert_eq!(a.outstanding(), 2, "a refused request leaves no trace");
        drop(g1);
        assert!(a.admit().is_ok());
    }

    #[tokio::test]
    async fn drain_refuses_new_work_and_waits_for_old() {
        let a = std::sync::Arc::new(Admission::new(4));
        let a2 = a.clone();
        let worker = tokio::spawn(async move {
            let _g = a2.admit().unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let left = a.drain(Duration::from_secs(5)).await;
        assert_eq!(left, 0);
        assert!(worker.is_finished());
        assert!(matches!(a.admit(), Err(AgentError::ShuttingDown)));
    }
}
