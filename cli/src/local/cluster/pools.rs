//! One pool's round in local mode: observe its processes and their agents, let the
//! engine decide the size and the plan ([`round::decide`], as for pods), carry the plan
//! out with processes, remember it, and report the status the operator would write.

use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use webaccel_agent_client::AgentApi as _;
use webaccel_analytics::history::PoolEvent;
use webaccel_crds::scale;
use webaccel_crds::status::pool::{self as status, Outcome};
use webaccel_crds::v1alpha1::{BrowserPool, BrowserPoolStatus, ModelDeployment};
use webaccel_engine::pool::browser::BrowserView;
use webaccel_engine::pool::memory::PoolMemory;
use webaccel_engine::pool::round;
use webaccel_engine::pool::size::Demand;
use webaccel_gateway::waiting::WaitingByModel;

use super::{Desired, Engine, PoolState, template_hash};
use crate::local::process::LocalBrowser;

impl Engine {
    pub(super) async fn reconcile_pool(
        &mut self,
        name: &str,
        pool: &BrowserPool,
        desired: &Desired,
        waiting: &WaitingByModel,
    ) -> BrowserPoolStatus {
        let now = Timestamp::now();
        // The browsers the pool's deployments want for their replicas (as their last
        // round decided).
        let deployed: Vec<ModelDeployment> = desired
            .models
            .iter()
            .filter(|(_, (md, _))| md.spec.pool_ref.name == name)
            .map(|(model, (md, _))| {
                let mut shown = md.clone();
                shown.status = self.deployments.get(model).map(|d| d.status.clone());
                shown
            })
            .collect();
        let models = scale::pool_demand(&deployed);
        let state = self
            .pools
            .entry(name.to_owned())
            .or_insert_with(|| PoolState {
                browsers: Vec::new(),
                memory: PoolMemory::default(),
                status: None,
            });
        // Validate: what the schema cannot check, as the operator refuses it.
        if let Err(e) = pool.spec.validate() {
            let mut refused = pool.clone();
            refused.status = state.status.clone();
            let s = status::invalid(&refused, &e.to_string(), now);
            if state.status.as_ref() != Some(&s) {
                tracing::warn!(pool = %name, reason = %e, "refusing the pool's spec");
            }
            state.status = Some(s.clone());
            return s;
        }

        // Observe: processes, then their agents (all at once).
        for b in &mut state.browsers {
            b.poll_exit();
        }
        let agents = &self.agents;
        let asked = join_all(state.browsers.iter().map(|b| async move {
            if b.exited.is_some() {
                return (None, None);
            }
            let stats = agents.stats(&b.endpoint).await.ok();
            let caps = match (&b.capabilities, stats.as_ref().is_some_and(|s| s.ready)) {
                (None, true) => agents.capabilities(&b.endpoint).await.ok(),
                _ => None,
            };
            (stats, caps)
        }))
        .await;
        for (b, (stats, caps)) in state.browsers.iter_mut().zip(asked) {
            b.observed(stats);
            if caps.is_some() {
                b.capabilities = caps;
            }
        }
        let sole = scale::sole_copies(&deployed);
        let views: Vec<_> = state
            .browsers
            .iter()
            .map(|b| BrowserView {
                sole_copies: sole.get(&b.name).copied().unwrap_or(0),
                ..b.view()
            })
            .collect();

        // Decide: the engine's round, as for pods.
        let pool_waiting: u64 = desired
            .models
            .iter()
            .filter(|(_, (md, _))| md.spec.pool_ref.name == name)
            .filter_map(|(model, _)| waiting.get(model))
            .map(|&n| n as u64)
            .sum();
        let demand = Demand {
            waiting: pool_waiting,
            model_browsers: models.browsers,
            without_room: models.without_room,
        };
        let hash = template_hash(pool);
        let decided = round::decide(
            &pool.spec.policy(),
            &hash,
            &views,
            &mut state.memory,
            demand,
            state.status.as_ref().map(|s| s.desired_replicas),
            &self.pacing,
            now,
        );
        if let Some(reason) = decided.scaled() {
            let from = decided.previous.unwrap_or_default();
            tracing::info!(pool = %name, from, to = decided.size.desired, %reason, "scaling");
            self.history.record(
                "",
                name,
                PoolEvent::Scale,
                "",
                from,
                decided.size.desired,
                reason,
            );
        }

        // Act: with processes.
        let plan = &decided.plan;
        let mut stopped = Vec::new();
        for (browser, why) in &plan.delete {
            if let Some(i) = state.browsers.iter().position(|b| &b.name == browser) {
                let b = state.browsers.swap_remove(i);
                tracing::info!(pool = %name, browser = %b.name, reason = %why.describe(), log = %b.log.display(), "removing a browser");
                stopped.push(b);
            }
        }
        for (browser, why) in &plan.drain {
            if let Some(b) = state.browsers.iter_mut().find(|b| &b.name == browser) {
                tracing::info!(pool = %name, browser = %b.name, reason = %why.describe(), "draining a browser");
                if let Err(e) = agents.drain(&b.endpoint).await {
                    tracing::warn!(browser = %b.name, error = %e, "drain refused; removing it anyway");
                }
                b.draining_since = Some(now);
                b.drained_for = Some(why.clone());
            }
        }
        for (browser, cordon) in plan
            .cordon
            .iter()
            .map(|b| (b, true))
            .chain(plan.uncordon.iter().map(|b| (b, false)))
        {
            if let Some(b) = state.browsers.iter_mut().find(|b| &b.name == browser) {
                if cordon {
                    tracing::info!(pool = %name, browser = %b.name, "cordoning a browser: the models only it holds load elsewhere before it drains");
                } else {
                    tracing::info!(pool = %name, browser = %b.name, "uncordoning a browser: the pool needs it again");
                }
                b.cordoned_since = cordon.then_some(now);
            }
        }
        for _ in 0..plan.create {
            match self.launcher.start(name, &pool.spec, &hash) {
                Ok(b) => {
                    tracing::info!(pool = %name, browser = %b.name, url = %b.endpoint.base_url, "starting a browser");
                    state.browsers.push(b);
                }
                Err(e) => tracing::error!(pool = %name, error = %e, "cannot start a browser"),
            }
        }
        round::remember(&mut state.memory, &decided, &self.pacing, now);

        // Status: over the browsers as they are now, as the operator writes it.
        let mut shown = pool.clone();
        shown.status = state.status.clone();
        let views: Vec<_> = state.browsers.iter().map(LocalBrowser::view).collect();
        let s = status::build(
            &shown,
            state.status.as_ref(),
            &views,
            &Outcome {
                desired: decided.size.desired,
                template_hash: &hash,
                selector: format!("{}={name}", webaccel_crds::labels::POOL),
                plan,
                scaled: decided.scaled().map(str::to_owned),
            },
            now,
        );
        state.status = Some(s.clone());
        for b in stopped {
            self.stop_later(b);
        }
        s
    }
}
