//! One round of a pool's decisions, built from the view alone: the size, the plan, the
//! owned objects and the status; and what of it the API does not show yet ([`Work`]). The
//! reconcile applies a round; the agent poller builds one to learn whether the reconcile
//! has anything to do, and wakes it only then.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use webaccel_crds::pods;
use webaccel_crds::scale;
use webaccel_crds::status::pool::{self as status, Outcome};
use webaccel_crds::v1alpha1::{BrowserPool, BrowserPoolStatus};
use webaccel_engine::pool::decide::Plan;
use webaccel_engine::pool::round as engine_round;
use webaccel_engine::pool::size::Demand;

use super::build;
use super::observe::PoolView;
use crate::context::{Context, EXPECTATION_TTL};

#[derive(Debug, Clone)]
pub struct Round {
    pub key: String,
    pub ns: String,
    pub name: String,
    pub hash: String,
    /// What the engine decided: the size (with its reason and the size before) and the
    /// plan; remembered once applied.
    pub decided: engine_round::Round,
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    pub status: BrowserPoolStatus,
}

impl Round {
    /// The size steered to.
    pub fn desired(&self) -> i32 {
        self.decided.size.desired
    }

    pub fn plan(&self) -> &Plan {
        &self.decided.plan
    }
}

/// The round for `pool` as `view` shows it at `now`. Feeds the autoscaler (its windows
/// want every sample) but changes nothing else this process remembers.
pub fn build(ctx: &Context, pool: &BrowserPool, view: &PoolView, now: Timestamp) -> Round {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let key = format!("{ns}/{name}");
    let hash = build::template_hash(pool);
    let browsers = view.views();
    let models = scale::pool_demand(ctx.stores.deployments_in(&ns, &name).iter().map(|m| &**m));
    let demand = Demand {
        // Requests waiting for a pool with no ready browser.
        waiting: scale::waiting_requests(pool.annotations(), now),
        model_browsers: models.browsers,
        without_room: models.without_room,
    };
    let held = held_status(ctx, pool, &key);
    let reported = held.as_ref().map(|s| s.desired_replicas);
    let pacing = ctx.pacing();
    let decided = ctx.with_pool(&key, |m| {
        engine_round::decide(
            &pool.spec.policy(),
            &hash,
            &browsers,
            m,
            demand,
            reported,
            &pacing,
            now,
        )
    });
    let scaled = decided.scaled().map(str::to_owned);
    let status = status::build(
        pool,
        held.as_ref(),
        &browsers,
        &Outcome {
            desired: decided.size.desired,
            template_hash: &hash,
            selector: pods::selector_string(&name),
            plan: &decided.plan,
            scaled,
        },
        now,
    );
    Round {
        service: build::service(pool),
        pdb: build::pdb(pool),
        key,
        ns,
        name,
        hash,
        status,
        decided,
    }
}

/// The status once the round's plan is applied: the same decisions, over the browsers as
/// they are now (the pods just created, deleted or marked draining, which the caches show
/// a moment later). Written so, it needs no second write when the watch events arrive.
pub fn status_after(
    ctx: &Context,
    pool: &BrowserPool,
    round: &Round,
    now: Timestamp,
) -> BrowserPoolStatus {
    let view = super::observe::view(ctx, pool, &round.hash, now);
    status::build(
        pool,
        held_status(ctx, pool, &round.key).as_ref(),
        &view.views(),
        &Outcome {
            desired: round.desired(),
            template_hash: &round.hash,
            selector: pods::selector_string(&round.name),
            plan: round.plan(),
            scaled: round.decided.scaled().map(str::to_owned),
        },
        now,
    )
}

/// Whether `actual` (as the API server holds it) already says everything `desired` says:
/// every field set in `desired` has the same value in `actual` (the server may add more,
/// defaults and other managers' fields). A server-side apply of `desired` would change
/// nothing, so none is sent.
pub fn covers(actual: &impl Serialize, desired: &impl Serialize) -> bool {
    fn sub(a: &serde_json::Value, d: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (a, d) {
            (_, Value::Null) => true,
            (Value::Object(a), Value::Object(d)) => d
                .iter()
                .all(|(k, dv)| sub(a.get(k).unwrap_or(&Value::Null), dv)),
            (Value::Array(a), Value::Array(d)) => {
                a.len() == d.len() && a.iter().zip(d).all(|(a, d)| sub(a, d))
            }
            (a, d) => a == d,
        }
    }
    match (serde_json::to_value(actual), serde_json::to_value(desired)) {
        (Ok(a), Ok(d)) => sub(&a, &d),
        _ => false,
    }
}

/// The token Secret's part of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenWork {
    /// The token is known.
    None,
    /// The operator's Secret does not exist: create it.
    Create,
    /// The user's Secret is not in the cache: read it.
    Read,
}

/// What applying a round would write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub token: TokenWork,
    pub service: bool,
    pub pdb: bool,
    pub pods: bool,
    pub status: bool,
}

impl Work {
    pub fn any(&self) -> bool {
        self.token != TokenWork::None || self.service || self.pdb || self.pods || self.status
    }
}

/// The status without the figures that move all the time (each browser's load).
pub fn without_load(s: &BrowserPoolStatus) -> BrowserPoolStatus {
    let mut s = s.clone();
    for b in &mut s.browsers {
        b.load = None;
    }
    s
}

/// The status the API server holds: the cached pool's, or, while the cache still shows the
/// version the last status write was built from, that write.
pub fn held_status(ctx: &Context, pool: &BrowserPool, key: &str) -> Option<BrowserPoolStatus> {
    let rv = pool.resource_version();
    ctx.with_state(key, |s| match &s.status_written {
        Some((built_from, written)) if *built_from == rv => Some(written.clone()),
        _ => pool.status.clone(),
    })
}

/// Whether `new` must be written over the status the API server holds. A change of the
/// browsers' load alone is written at most every `status_load_refresh`, so a busy pool does
/// not write (and wake itself) every second.
pub fn status_needs_write(
    ctx: &Context,
    pool: &BrowserPool,
    key: &str,
    new: &BrowserPoolStatus,
) -> bool {
    let refresh = ctx.settings.status_load_refresh;
    let held = held_status(ctx, pool, key);
    ctx.with_state(key, |s| {
        let Some(base) = held.as_ref() else {
            return true;
        };
        if without_load(base) != without_load(new) {
            return true;
        }
        // The refresh period starts with the first look of this process, so a restart
        // does not rewrite every pool's load at once.
        let since = *s
            .last_status_write
            .get_or_insert_with(tokio::time::Instant::now);
        base != new && since.elapsed() >= refresh
    })
}

/// Whether owned object `kind` must be applied as `desired`: the cache does not show it so,
/// and this process has not just applied exactly that (the cache may be behind).
fn needs_apply<K: Serialize>(
    ctx: &Context,
    key: &str,
    kind: &'static str,
    cached: Option<&K>,
    desired: &K,
) -> bool {
    if cached.is_some_and(|c| covers(c, desired)) {
        return false;
    }
    let sent = serde_json::to_value(desired).ok();
    !ctx.with_state(key, |s| {
        s.applied
            .get(kind)
            .is_some_and(|(v, at)| Some(v) == sent.as_ref() && at.elapsed() < EXPECTATION_TTL)
    })
}

/// Notes that owned object `kind` was applied as `desired`.
pub fn applied<K: Serialize>(ctx: &Context, key: &str, kind: &'static str, desired: &K) {
    if let Ok(v) = serde_json::to_value(desired) {
        ctx.with_state(key, |s| {
            s.applied.insert(kind, (v, tokio::time::Instant::now()));
        });
    }
}

/// What of `round` the API server does not hold yet.
pub fn work(ctx: &Context, pool: &BrowserPool, view: &PoolView, round: &Round) -> Work {
    let token = if view.token.is_some() {
        TokenWork::None
    } else if ctx
        .stores
        .secret(&round.ns, &pods::token_secret_name(pool))
        .is_some()
    {
        // There, but without a token: nothing to write; the status says so.
        TokenWork::None
    } else if pods::owns_token_secret(pool) {
        TokenWork::Create
    } else {
        TokenWork::Read
    };
    let p = round.plan();
    Work {
        token,
        service: needs_apply(
            ctx,
            &round.key,
            "service",
            ctx.stores.service(&round.ns, &round.name).as_deref(),
            &round.service,
        ),
        pdb: needs_apply(
            ctx,
            &round.key,
            "pdb",
            ctx.stores.pdb(&round.ns, &round.name).as_deref(),
            &round.pdb,
        ),
        pods: p.create > 0
            || !p.drain.is_empty()
            || !p.delete.is_empty()
            || !p.cordon.is_empty()
            || !p.uncordon.is_empty(),
        status: status_needs_write(ctx, pool, &round.key, &round.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_covers_what_it_holds_and_server_defaults_do_not_matter() {
        let desired =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}]}});
        let actual = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"},
                            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIPs": ["None"]}});
        assert!(covers(&actual, &desired));
        let changed =
            json!({"metadata": {"labels": {"a": "2"}}, "spec": {"ports": [{"port": 80}]}});
        assert!(!covers(&changed, &desired));
        let more_ports = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}, {"port": 81}]}});
        assert!(!covers(&more_ports, &desired));
    }
}
