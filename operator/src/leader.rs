//! One active operator through a `coordination.k8s.io/v1` Lease: the holder renews it every
//! few seconds; another replica takes it over once it has not been renewed for its duration.
//! Writes carry the Lease's resourceVersion, so two candidates cannot both win a takeover.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    s: LeaseSettings,
}

impl Elector {
    pub fn new(client: Client, s: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &s.namespace),
            s,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.s.identity.clone()),
            lease_duration_seconds: Some(self.s.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to hold the lease: true if this replica holds it afterwards.
    pub async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.s.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.s.identity.as_str());
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| now.as_second() - t.0.as_second() > duration);
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // replace() sends the resourceVersion we read: a concurrent writer makes this 409.
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !mine {
                    info!(lease = %self.s.name, previous = ?spec.holder_identity, "took over the lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_hold().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "lease: cannot read or write"),
            }
            tokio::time::sleep(self.s.renew_every).await;
        }
    }

    /// Renews until a renewal fails for longer than the lease lasts, then returns: the caller
    /// must stop reconciling, because another replica may take over from then on.
    pub async fn keep(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.s.renew_every).await;
            match self.try_hold().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!("lease: another replica holds it now");
                    return;
                }
                Err(e) => warn!(error = %e, "lease: renewal failed"),
            }
            // Give up a little before the lease runs out, so two never act at once.
            if last_ok.elapsed() + self.s.renew_every >= self.s.duration {
                warn!("lease: could not renew in time");
                return;
            }
        }
    }
}
