//! One active operator through a `coordination.k8s.io/v1` Lease, the way client-go's
//! leader election does it:
//!
//! - The holder renews every `renew_every`, and stops leading when it could not renew for
//!   `duration - renew_every` (before anyone else may take over).
//! - A candidate judges expiry by its own clock: from when it last saw the Lease's
//!   `renewTime` (or holder) change, never by comparing the holder's timestamp with its own
//!   clock, so clock skew between nodes cannot cause two leaders or a stuck Lease.
//! - Candidates watch the Lease, so they see a renewal, and a release, at once.
//! - On a clean stop the holder releases the Lease (no holder, a duration of one second):
//!   a rolling update hands over immediately instead of after the Lease's duration.
//! - Writes carry the Lease's resourceVersion, so two candidates cannot both win a takeover.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long the Lease holds without renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// How often the holder renews, and a candidate without news looks again.
    pub renew_every: Duration,
}

/// The Lease as this replica last saw it, and when it saw it change.
#[derive(Debug, Clone)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    duration: Duration,
    changed_at: Instant,
}

#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    s: LeaseSettings,
    observed: Mutex<Option<Observed>>,
    /// The Lease as this replica last wrote it while holding it: renewals start from it
    /// instead of reading it first.
    mine: Mutex<Option<Lease>>,
}

impl Elector {
    pub fn new(client: Client, s: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &s.namespace),
            s,
            observed: Mutex::default(),
            mine: Mutex::default(),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.s.identity.clone()),
            lease_duration_seconds: Some(self.s.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Notes what `lease` says; returns the holder and whether the Lease has expired by
    /// this replica's own clock.
    fn observe(&self, lease: &Lease) -> (Option<String>, bool) {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(0) as u64);
        let mut observed = self.observed.lock();
        let same = observed
            .as_ref()
            .is_some_and(|o| o.holder == holder && o.renew_time == spec.renew_time);
        if !same {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time,
                duration,
                changed_at: Instant::now(),
            });
        }
        let o = observed.as_ref().map(|o| (o.changed_at, o.duration));
        let expired = holder.is_none() || o.is_some_and(|(at, d)| at.elapsed() > d);
        (holder, expired)
    }

    /// How long until the Lease as last seen expires (zero if it has).
    fn until_expiry(&self) -> Option<Duration> {
        self.observed
            .lock()
            .as_ref()
            .map(|o| (o.changed_at + o.duration).saturating_duration_since(Instant::now()))
    }

    /// One attempt to hold the lease: true if this replica holds it afterwards.
    pub async fn try_hold(&self) -> Result<bool, kube::Error> {
        self.try_hold_seen(None).await
    }

    /// Like [`Elector::try_hold`], starting from `seen` (the Lease as a watch just
    /// delivered it) instead of reading it, if given.
    async fn try_hold_seen(&self, seen: Option<Lease>) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let own = self.mine.lock().clone();
        let current = match own.or(seen) {
            Some(l) => Some(l),
            None => self.api.get_opt(&self.s.name).await?,
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.s.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.observe(&l);
                    *self.mine.lock() = Some(l);
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let (holder, expired) = self.observe(&lease);
        let mine = holder.as_deref() == Some(self.s.identity.as_str());
        if !mine && !expired {
            return Ok(false);
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time } else { None };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // replace() sends the resourceVersion we hold: a concurrent writer makes this 409.
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                if !mine {
                    info!(lease = %self.s.name, previous = ?holder, "took over the lease");
                }
                self.observe(&written);
                *self.mine.lock() = Some(written);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Someone else wrote it: read it afresh next time.
                *self.mine.lock() = None;
                Ok(false)
            }
            Err(e) => {
                *self.mine.lock() = None;
                Err(e)
            }
        }
    }

    /// Waits until this replica holds the lease. It watches the Lease, so a release is
    /// taken at once and a renewal is seen when it happens; without news it looks again
    /// when the Lease would expire.
    pub async fn acquire(&self) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.s.name));
        let mut changes = watcher(self.api.clone(), config)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut seen: Option<Lease> = None;
        loop {
            match self.try_hold_seen(seen.take()).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "lease: cannot read or write"),
            }
            // The watch brings renewals and releases; the timer is for a holder that went
            // silent (its Lease expires) or a watch that does not work.
            let wait = self.until_expiry().map_or(self.s.renew_every, |d| {
                (d + Duration::from_millis(10)).min(self.s.duration)
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                next = changes.next() => match next {
                    Some(Ok(lease)) => seen = Some(lease),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "lease watch");
                        tokio::time::sleep(self.s.renew_every.min(Duration::from_secs(1))).await;
                    }
                    None => tokio::time::sleep(self.s.renew_every).await,
                },
            }
        }
    }

    /// Renews until a renewal fails for longer than the lease lasts less one renewal
    /// period, then returns: the caller must stop reconciling, because another replica may
    /// take over from then on.
    pub async fn keep(&self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.s.renew_every).await;
            match self.try_hold().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    warn!("lease: another replica holds it now");
                    return;
                }
                Err(e) => warn!(error = %e, "lease: renewal failed"),
            }
            // Give up before the lease runs out, so two never act at once.
            if last_ok.elapsed() + self.s.renew_every >= self.s.duration {
                warn!("lease: could not renew in time");
                return;
            }
        }
    }

    /// Gives the Lease up (no holder, one second left), so a waiting replica takes over at
    /// once. Only when this replica holds it; a failure is logged (the Lease then expires).
    pub async fn release(&self) {
        let Some(mut lease) = self.mine.lock().take() else {
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: None,
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: spec.lease_transitions,
            ..LeaseSpec::default()
        });
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.s.name, "released the lease"),
            Err(e) => warn!(error = %e, "lease: could not release it; it expires instead"),
        }
    }
}
