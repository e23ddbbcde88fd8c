//! Placement of a model cut into stages (`spec.stages`): each stage is a model of its own
//! (`<deployment>.stage<i>`), placed by [`place::plan`] with `replicas` per stage, on
//! browsers that hold no other stage of the deployment while the pool has browsers enough
//! for that (stages × replicas). One stage per browser is the point of cutting a model:
//! each browser holds a fraction of the parameters, and the stages of consecutive requests
//! run at the same time on different browsers.
//!
//! A pool too small for that is said to be so ([`StagedPlacement::shared`]) and its stages
//! share browsers, spread as evenly as they go. When it grows, a stage sharing a browser
//! is loaded anew on a browser of its own, and given up on the shared one only once the
//! new copy is loaded, so the pipeline never loses a stage on the way.

use std::collections::HashMap;

use crate::replica::{ReplicaState, ReplicaStatus};
use webaccel_api::Backend;

use crate::place::{self, Candidate, Placement};
use webaccel_agent_client::ModelOnAgent;

/// What to do for every stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StagedPlacement {
    /// One placement per stage, in pipeline order.
    pub stages: Vec<Placement>,
    /// Why stages share browsers, when they do.
    pub shared: Option<String>,
}

fn holds(c: &Candidate) -> bool {
    c.usable && matches!(c.model, ModelOnAgent::Loaded { .. } | ModelOnAgent::Loading)
}

/// The stage each usable browser is taken by: the first stage it has loaded, else the
/// first it is loading. A browser holding several keeps that one; the others move.
fn claims(stages: &[Vec<Candidate>]) -> HashMap<String, usize> {
    let mut claimed = HashMap::new();
    for loaded_only in [true, false] {
        for (s, candidates) in stages.iter().enumerate() {
            for c in candidates.iter().filter(|c| holds(c)) {
                let loaded = matches!(c.model, ModelOnAgent::Loaded { .. });
                if loaded || !loaded_only {
                    claimed.entry(c.pod.clone()).or_insert(s);
                }
            }
        }
    }
    claimed
}

/// Places every stage of a deployment. `stages[s]` holds every browser of the pool as
/// stage `s` sees it (its model state is that stage's); `pool_browsers` is how many
/// browsers the pool has or is about to have (its desired size), not counting draining
/// ones: with at least stages × replicas of them, a stage waits for a browser of its own
/// rather than share one.
pub fn plan_stages(
    replicas: i32,
    requested: &[Backend],
    allowed: &[Backend],
    stages: &[Vec<Candidate>],
    pool_browsers: usize,
) -> StagedPlacement {
    let want = usize::try_from(replicas.max(0)).unwrap_or(0);
    let needed = want * stages.len();
    if pool_browsers >= needed {
        apart(replicas, requested, allowed, stages, pool_browsers)
    } else {
        together(replicas, requested, allowed, stages, pool_browsers)
    }
}

/// Each stage on browsers of its own.
fn apart(
    replicas: i32,
    requested: &[Backend],
    allowed: &[Backend],
    stages: &[Vec<Candidate>],
    pool_browsers: usize,
) -> StagedPlacement {
    let want = usize::try_from(replicas.max(0)).unwrap_or(0);
    let mut claimed = claims(stages);
    let mut out = StagedPlacement::default();
    for (s, candidates) in stages.iter().enumerate() {
        let other =
            |pod: &str, claimed: &HashMap<String, usize>| claimed.get(pod).is_some_and(|&t| t != s);
        // A browser taken by another stage is, for this one, like a draining browser:
        // its copy (if any) is not counted, and a replacement is placed elsewhere.
        let view: Vec<Candidate> = candidates
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.usable &= !other(&c.pod, &claimed);
                c
            })
            .collect();
        let mut p = place::plan(replicas, requested, allowed, &view);
        for (pod, _) in &p.load {
            claimed.insert(pod.clone(), s);
        }
        let own_loaded = p
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Loaded)
            .count();
        for c in candidates
            .iter()
            .filter(|c| holds(c) && other(&c.pod, &claimed))
        {
            if own_loaded >= want {
                p.unload.push(c.pod.clone());
            } else {
                let with = claimed.get(&c.pod).copied().unwrap_or(s);
                p.replicas.push(sharing(c, with));
            }
        }
        if let Some(reason) = p.unplaced_reason.take() {
            p.unplaced_reason = Some(format!(
                "stage {s}: {reason}, holding no other stage of this deployment (stages keep \
                 to browsers of their own: the pool has {pool_browsers} for {} stages × \
                 {want} replicas)",
                stages.len()
            ));
        }
        out.stages.push(p);
    }
    out
}

/// A copy of a stage on a browser another stage has taken, kept (still serving) until
/// the stage is loaded on browsers of its own.
fn sharing(c: &Candidate, with: usize) -> ReplicaStatus {
    let (state, backend, init_ms, precision) = match &c.model {
        ModelOnAgent::Loaded {
            backend,
            init_ms,
            precision,
            ..
        } => (
            ReplicaState::Loaded,
            Some(backend.clone()),
            *init_ms,
            *precision,
        ),
        _ => (ReplicaState::Loading, None, None, None),
    };
    ReplicaStatus {
        pod: c.pod.clone(),
        state,
        adapter: c
            .adapter
            .clone()
            .filter(|_| backend.as_deref().is_some_and(|b| b.starts_with("webgpu"))),
        backend,
        init_ms,
        precision,
        reason: Some(format!(
            "shares the browser with stage {with}; moves to a browser of its own once one has it loaded"
        )),
        memory_bytes: match &c.model {
            ModelOnAgent::Loaded { memory_bytes, .. } => *memory_bytes,
            _ => None,
        },
    }
}

/// The pool has too few browsers: stages share them, spread before they stack.
fn together(
    replicas: i32,
    requested: &[Backend],
    allowed: &[Backend],
    stages: &[Vec<Candidate>],
    pool_browsers: usize,
) -> StagedPlacement {
    let want = usize::try_from(replicas.max(0)).unwrap_or(0);
    // How many stages each browser holds or is given.
    let mut count: HashMap<String, usize> = HashMap::new();
    for c in stages.iter().flatten().filter(|c| holds(c)) {
        *count.entry(c.pod.clone()).or_default() += 1;
    }
    let mut out = StagedPlacement::default();
    for candidates in stages {
        // `place::plan` gives new copies to the browsers holding the fewest models: a
        // browser holding k stages of this deployment counts as holding more than any
        // browser holding fewer, whatever else it holds.
        let view: Vec<Candidate> = candidates
            .iter()
            .map(|c| {
                let mut c = c.clone();
                let stages_held = count.get(&c.pod).copied().unwrap_or(0);
                c.models_held = stages_held * 1_000_000 + c.models_held.min(999_999);
                c
            })
            .collect();
        let p = place::plan(replicas, requested, allowed, &view);
        for (pod, _) in &p.load {
            *count.entry(pod.clone()).or_default() += 1;
        }
        out.stages.push(p);
    }
    if count.values().any(|&n| n > 1) {
        out.shared = Some(format!(
            "stages share browsers: the pool has {pool_browsers} browsers for {} stages × \
             {want} replicas (one stage per browser needs {})",
            stages.len(),
            stages.len() * want
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Backend::*;

    fn browser(pod: &str) -> Candidate {
        Candidate {
            cordoned: false,
            pod: pod.into(),
            usable: true,
            backends: vec![Webgpu, Wasm],
            adapter: None,
            model: ModelOnAgent::Absent,
            models_held: 0,
            failed_before: None,
            stale: false,
            room: None,
            need: None,
        }
    }

    fn loaded() -> ModelOnAgent {
        ModelOnAgent::Loaded {
            backend: "wasm".into(),
            init_ms: Some(5.0),
            precision: Some(webaccel_api::Precision::Int8),
            uri: String::new(),
            sha256: String::new(),
            memory_bytes: None,
            settings: None,
        }
    }

    /// Every stage sees the same browsers; `held[s]` lists the pods holding stage `s`
    /// loaded.
    fn pool(pods: &[&str], held: &[&[&str]]) -> Vec<Vec<Candidate>> {
        held.iter()
            .map(|holders| {
                pods.iter()
                    .map(|p| {
                        let mut c = browser(p);
                        if holders.contains(p) {
                            c.model = loaded();
                        }
                        c
                    })
                    .collect()
            })
            .collect()
    }

    const ALL: [Backend; 3] = [Webgpu, Webnn, Wasm];

    fn loads(p: &StagedPlacement) -> Vec<Vec<String>> {
        p.stages
            .iter()
            .map(|s| s.load.iter().map(|(pod, _)| pod.clone()).collect())
            .collect()
    }

    #[test]
    fn each_stage_goes_to_a_browser_of_its_own() {
        let p = plan_stages(1, &[Wasm], &ALL, &pool(&["a", "b", "c"], &[&[], &[]]), 3);
        assert_eq!(loads(&p), [vec!["a"], vec!["b"]]);
        assert_eq!(p.shared, None);
        // Two replicas per stage of three stages: six browsers, all different.
        let pods = ["a", "b", "c", "d", "e", "f"];
        let p = plan_stages(2, &[Wasm], &ALL, &pool(&pods, &[&[], &[], &[]]), 6);
        let mut all: Vec<String> = loads(&p).concat();
        assert_eq!(all.len(), 6);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6, "{:?}", loads(&p));
    }

    #[test]
    fn a_stage_waits_for_a_browser_of_its_own_when_the_pool_will_have_one() {
        // The pool is meant to have two browsers; one is ready so far.
        let p = plan_stages(1, &[Wasm], &ALL, &pool(&["a"], &[&["a"], &[]]), 2);
        assert!(p.stages[0].load.is_empty());
        assert!(p.stages[1].load.is_empty(), "not stacked on a");
        assert_eq!(p.stages[1].unplaced, 1);
        let why = p.stages[1].unplaced_reason.clone().unwrap();
        assert!(
            why.starts_with("stage 1: 1 replicas cannot be placed")
                && why.contains("holding no other stage"),
            "{why}"
        );
        assert_eq!(p.shared, None);
    }

    #[test]
    fn a_small_pool_shares_browsers_and_says_so() {
        let p = plan_stages(1, &[Wasm], &ALL, &pool(&["a", "b"], &[&[], &[], &[]]), 2);
        assert_eq!(loads(&p), [vec!["a"], vec!["b"], vec!["a"]]);
        let why = p.shared.unwrap();
        assert!(
            why.contains("the pool has 2 browsers for 3 stages × 1 replicas"),
            "{why}"
        );
        assert!(p.stages.iter().all(|s| s.unplaced == 0));
    }

    #[test]
    fn a_shared_stage_moves_when_the_pool_grows_and_is_given_up_once_loaded() {
        // a holds both stages (the pool had one browser); b is new.
        let before = pool(&["a", "b"], &[&["a"], &["a"]]);
        let p = plan_stages(1, &[Wasm], &ALL, &before, 2);
        assert!(p.stages[0].load.is_empty() && p.stages[0].unload.is_empty());
        assert_eq!(loads(&p)[1], ["b"], "stage 1 gets a browser of its own");
        assert!(p.stages[1].unload.is_empty(), "kept on a until b has it");
        let on_a = p.stages[1].replicas.iter().find(|r| r.pod == "a").unwrap();
        assert_eq!(on_a.state, ReplicaState::Loaded);
        assert!(
            on_a.reason
                .as_deref()
                .unwrap()
                .contains("shares the browser with stage 0")
        );
        // b has loaded it: a gives it up.
        let after = pool(&["a", "b"], &[&["a"], &["a", "b"]]);
        let p = plan_stages(1, &[Wasm], &ALL, &after, 2);
        assert_eq!(p.stages[1].unload, ["a"]);
        assert!(loads(&p).concat().is_empty());
        assert!(p.stages[1].replicas.iter().all(|r| r.pod == "b"));
    }

    #[test]
    fn a_settled_pipeline_changes_nothing_and_a_lost_stage_is_placed_again() {
        let settled = pool(&["a", "b", "c"], &[&["a"], &["b"]]);
        let p = plan_stages(1, &[Wasm], &ALL, &settled, 3);
        assert!(
            p.stages
                .iter()
                .all(|s| s.load.is_empty() && s.unload.is_empty())
        );
        // b drains (scale-down, roll): stage 1 goes to c, never to a.
        let mut draining = settled.clone();
        for stage in &mut draining {
            stage[1].usable = false;
        }
        let p = plan_stages(1, &[Wasm], &ALL, &draining, 2);
        assert_eq!(loads(&p), [Vec::<String>::new(), vec!["c".to_owned()]]);
    }

    #[test]
    fn backends_still_rule_each_stage() {
        let mut stages = pool(&["a", "b"], &[&[], &[]]);
        for stage in &mut stages {
            stage[1].backends = vec![Wasm];
        }
        let p = plan_stages(1, &[Webgpu], &ALL, &stages, 2);
        assert_eq!(loads(&p)[0], ["a"]);
        assert!(p.stages[1].load.is_empty());
        assert!(
            p.stages[1]
                .unplaced_reason
                .as_deref()
                .unwrap()
                .contains("can run [webgpu]")
        );
    }
}
