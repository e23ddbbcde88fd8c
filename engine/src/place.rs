//! Placement, pure: which browsers of the pool hold a model, which get it next and on which
//! backend, which give it up, and what each replica's state is.

use webaccel_agent_client::ModelOnAgent;
use webaccel_api::Backend;

use crate::replica::{ReplicaState, ReplicaStatus};

/// One browser of the pool as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub pod: String,
    /// Ready and not draining: may take new work.
    pub usable: bool,
    /// Chosen for scale-down while it held the only loaded copy of some model: not
    /// usable, but its copy serves (and is reported) until one on a browser that stays is
    /// loaded.
    pub cordoned: bool,
    /// Backends the browser detected (from its capabilities); empty if unknown.
    pub backends: Vec<Backend>,
    pub adapter: Option<String>,
    pub model: ModelOnAgent,
    /// How many models the pod holds already, to spread them.
    pub models_held: usize,
    /// The load of this model failed on this pod for the current generation.
    pub failed_before: Option<String>,
    /// It holds a copy of a file since replaced (another digest or URI than the
    /// deployment's now): renewed one copy at a time (see [`plan`]).
    pub stale: bool,
    /// Room left in the browser's memory budget: the budget less what its browsers use
    /// now. `None`: no budget, or its use is unknown.
    pub room: Option<u64>,
    /// What this model takes on a browser, as its loads measured it (the most seen);
    /// `None` before its first load.
    pub need: Option<u64>,
}

impl Candidate {
    /// Whether the model fits in the browser's room (unknown either way: it does).
    pub fn fits(&self) -> bool {
        self.need
            .zip(self.room)
            .is_none_or(|(need, room)| need <= room)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub load: Vec<(String, Backend)>,
    pub unload: Vec<String>,
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas wanted that no browser can take now, and why.
    pub unplaced: usize,
    pub unplaced_reason: Option<String>,
    /// Of those, the replicas that a browser would take but for its memory: a new
    /// browser would take them (the pool's demand grows by them).
    pub unplaced_for_room: usize,
}

/// The backend to ask a browser for: the first requested one that the pool allows and the
/// browser detected. `auto` stays `auto` (the agent measures) only when the pool allows every
/// backend; otherwise it means the first allowed backend the browser has.
pub fn choose_backend(
    requested: &[Backend],
    allowed: &[Backend],
    detected: &[Backend],
) -> Option<Backend> {
    let usable = |b: &Backend| allowed.contains(b) && detected.contains(b);
    requested.iter().find_map(|&b| match b {
        Backend::Auto
            if [Backend::Webgpu, Backend::Webnn, Backend::Wasm]
                .iter()
                .all(|x| allowed.contains(x))
                && !detected.is_empty() =>
        {
            Some(Backend::Auto)
        }
        Backend::Auto => allowed.iter().copied().find(|x| detected.contains(x)),
        b => usable(&b).then_some(b),
    })
}

/// The order holders are kept in: a current loaded copy first, then one loading, then a
/// copy of a file since replaced (kept only while nothing else can serve).
fn keep_rank(c: &Candidate) -> u8 {
    match c.model {
        ModelOnAgent::Loaded { .. } if !c.stale => 0,
        ModelOnAgent::Loaded { .. } => 2,
        _ => 1,
    }
}

fn is_loaded(c: &Candidate) -> bool {
    matches!(c.model, ModelOnAgent::Loaded { .. })
}

/// The replica a holder reports.
fn held_replica(c: &Candidate) -> ReplicaStatus {
    let mut r = ReplicaStatus::new(&c.pod, ReplicaState::Loading);
    if let ModelOnAgent::Loaded {
        backend,
        init_ms,
        precision,
        memory_bytes,
        ..
    } = &c.model
    {
        r.state = ReplicaState::Loaded;
        r.backend = Some(backend.clone());
        r.init_ms = *init_ms;
        r.precision = *precision;
        r.adapter = c.adapter.clone().filter(|_| backend.starts_with("webgpu"));
        r.memory_bytes = *memory_bytes;
    }
    if c.stale {
        r.reason = Some(STALE.to_owned());
    }
    r
}

/// Why a cordoned browser's copy is still reported.
const CORDONED: &str =
    "on a browser leaving the pool: serves until a copy on a browser that stays is loaded";

/// Why a replica holds an old copy.
const STALE: &str = "holds the model's previous file: reloaded once the other copies are loaded";

/// Where `replicas` copies of a model go among `candidates` (every browser of the pool as
/// this model sees it), on the first of the `requested` backends the pool `allowed` and
/// the browser detected.
///
/// A copy of a file since replaced (`Candidate::stale`) is renewed like a rolling update,
/// one copy at a time and only while every other copy is loaded: a new copy is loaded on
/// a browser without one if there is such a browser (the old one serves until the new one
/// is loaded, then is given up), else the old copy is reloaded where it is.
pub fn plan(
    replicas: i32,
    requested: &[Backend],
    allowed: &[Backend],
    candidates: &[Candidate],
) -> Placement {
    let want = replicas.max(0) as usize;
    let mut p = Placement::default();

    // Holders: current loaded copies first, then loading ones, then old ones; a draining
    // browser still holds its copy until it goes, but a replacement is placed now.
    let mut holders: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| {
            c.usable && matches!(c.model, ModelOnAgent::Loaded { .. } | ModelOnAgent::Loading)
        })
        .collect();
    holders.sort_by_key(|c| (keep_rank(c), c.pod.clone()));
    let kept = &holders[..want.min(holders.len())];
    let kept_loaded = kept.iter().all(|c| is_loaded(c));
    for extra in holders.iter().skip(want) {
        if extra.stale && is_loaded(extra) && !kept_loaded {
            // Still the only loaded copy of its slot: it serves until the copy taking its
            // place is loaded.
            p.replicas.push(held_replica(extra));
        } else {
            p.unload.push(extra.pod.clone());
        }
    }
    for c in kept {
        p.replicas.push(held_replica(c));
    }
    // A cordoned browser's copy still serves: reported, so its host keeps the browser
    // until a copy elsewhere is loaded; a replacement is placed below all the same.
    for c in candidates
        .iter()
        .filter(|c| c.cordoned && !c.usable && is_loaded(c))
    {
        let mut r = held_replica(c);
        r.reason = Some(CORDONED.to_owned());
        p.replicas.push(r);
    }

    for c in candidates {
        let reason = match &c.model {
            ModelOnAgent::Failed(why) => Some(why.clone()),
            _ => c.failed_before.clone(),
        };
        if let Some(why) = reason {
            let mut r = ReplicaStatus::new(&c.pod, ReplicaState::FailedToLoad);
            r.reason = Some(why);
            p.replicas.push(r);
        }
    }

    let mut need = want.saturating_sub(holders.len());
    let able: Vec<(&Candidate, Backend)> = candidates
        .iter()
        .filter(|c| c.usable && c.model == ModelOnAgent::Absent && c.failed_before.is_none())
        .filter_map(|c| choose_backend(requested, allowed, &c.backends).map(|b| (c, b)))
        .collect();
    let too_full = able.iter().filter(|(c, _)| !c.fits()).count();
    let mut fresh: Vec<(&Candidate, Backend)> =
        able.into_iter().filter(|(c, _)| c.fits()).collect();
    // Bin packing where memory is known: the browser with the least room that still
    // fits first (best fit), so whole browsers stay free for big models and for
    // scale-down; then the one holding fewest models (spreading, where it is not).
    fresh.sort_by_key(|(c, _)| (c.room.unwrap_or(u64::MAX), c.models_held, c.pod.clone()));
    let renew = kept
        .iter()
        .find(|c| c.stale)
        .filter(|_| need == 0 && kept_loaded && holders.len() <= want);
    if let Some(old) = renew {
        match fresh.first() {
            // One more copy, of the new file, beside the old one.
            Some(&(c, backend)) => {
                p.load.push((c.pod.clone(), backend));
                let mut r = ReplicaStatus::new(&c.pod, ReplicaState::Loading);
                r.backend = Some(backend.to_string());
                p.replicas.push(r);
            }
            // No browser without a copy: the old copy is reloaded where it is.
            None => {
                if let Some(backend) = choose_backend(requested, allowed, &old.backends) {
                    p.load.push((old.pod.clone(), backend));
                    if let Some(r) = p.replicas.iter_mut().find(|r| r.pod == old.pod) {
                        r.state = ReplicaState::Loading;
                        r.backend = Some(backend.to_string());
                        r.reason = Some("reloading: the model's file changed".to_owned());
                    }
                }
            }
        }
        return p;
    }
    for (c, backend) in fresh.into_iter().take(need) {
        p.load.push((c.pod.clone(), backend));
        let mut r = ReplicaStatus::new(&c.pod, ReplicaState::Loading);
        r.backend = Some(backend.to_string());
        p.replicas.push(r);
        need -= 1;
    }
    if need > 0 {
        let wanted: Vec<&str> = requested.iter().map(|b| b.as_str()).collect();
        p.unplaced = need;
        p.unplaced_reason = Some(if too_full > 0 {
            p.unplaced_for_room = need;
            let mib = |b: u64| b / (1 << 20);
            let room = candidates
                .iter()
                .filter(|c| c.usable && c.model == ModelOnAgent::Absent)
                .filter_map(|c| c.room)
                .max()
                .unwrap_or(0);
            format!(
                "{need} replicas cannot be placed: the model takes {} MiB and the most room \
                 left on a browser without it is {} MiB of its memory budget",
                mib(candidates.iter().find_map(|c| c.need).unwrap_or(0)),
                mib(room)
            )
        } else {
            format!(
                "{need} replicas cannot be placed: no ready browser of the pool without this model \
                 can run [{}] within the pool's backends",
                wanted.join(", ")
            )
        });
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use Backend::*;

    fn browser(pod: &str, backends: &[Backend], model: ModelOnAgent) -> Candidate {
        Candidate {
            pod: pod.into(),
            usable: true,
            cordoned: false,
            backends: backends.to_vec(),
            adapter: Some("google vulkan SwiftShader (software)".into()),
            model,
            models_held: 0,
            failed_before: None,
            stale: false,
            room: None,
            need: None,
        }
    }

    const ALL: [Backend; 3] = [Webgpu, Webnn, Wasm];

    /// A loaded copy on wasm, nothing else known.
    fn wasm_copy() -> ModelOnAgent {
        ModelOnAgent::Loaded {
            backend: "wasm".into(),
            init_ms: None,
            precision: None,
            uri: String::new(),
            sha256: String::new(),
            memory_bytes: None,
            settings: None,
        }
    }

    #[test]
    fn backend_is_the_first_requested_that_pool_and_browser_allow() {
        assert_eq!(
            choose_backend(&[Webnn, Webgpu, Wasm], &ALL, &[Webgpu, Wasm]),
            Some(Webgpu)
        );
        assert_eq!(choose_backend(&[Webgpu], &[Wasm], &[Webgpu, Wasm]), None);
        assert_eq!(choose_backend(&[Auto], &ALL, &[Wasm]), Some(Auto));
        assert_eq!(
            choose_backend(&[Auto], &[Wasm, Webgpu], &[Webgpu, Wasm]),
            Some(Wasm)
        );
        assert_eq!(choose_backend(&[Webnn], &ALL, &[Webgpu, Wasm]), None);
    }

    #[test]
    fn places_on_capable_browsers_spreading_load() {
        let mut busy = browser("a", &[Webgpu, Wasm], ModelOnAgent::Absent);
        busy.models_held = 3;
        let cands = [
            busy,
            browser("b", &[Wasm], ModelOnAgent::Absent),
            browser("c", &[Webgpu, Wasm], ModelOnAgent::Absent),
        ];
        let p = plan(2, &[Webgpu], &ALL, &cands);
        // Only a and c have WebGPU; both are needed.
        assert_eq!(p.load, [("c".into(), Webgpu), ("a".into(), Webgpu)]);
        let p = plan(1, &[Webgpu, Wasm], &ALL, &cands);
        assert_eq!(
            p.load,
            [("b".into(), Wasm)],
            "b holds fewest models and can run the fallback"
        );
    }

    #[test]
    fn replicas_pack_into_the_fullest_browser_that_fits_and_the_rest_raise_demand() {
        const MIB: u64 = 1 << 20;
        let with_room = |pod: &str, room: u64, held: usize| {
            let mut c = browser(pod, &[Wasm], ModelOnAgent::Absent);
            c.room = Some(room * MIB);
            c.need = Some(300 * MIB);
            c.models_held = held;
            c
        };
        // a has room for it but little to spare, b is empty, c is too full.
        let cands = [
            with_room("a", 400, 3),
            with_room("b", 1500, 0),
            with_room("c", 100, 1),
        ];
        let p = plan(1, &[Wasm], &ALL, &cands);
        assert_eq!(p.load, [("a".into(), Wasm)], "best fit, not the emptiest");
        // Two replicas: a and b (one per browser); three: c is too full, so one waits
        // for a browser the pool adds.
        let p = plan(2, &[Wasm], &ALL, &cands);
        assert_eq!(p.load, [("a".into(), Wasm), ("b".into(), Wasm)]);
        let p = plan(3, &[Wasm], &ALL, &cands);
        assert_eq!((p.unplaced, p.unplaced_for_room), (1, 1));
        let why = p.unplaced_reason.unwrap();
        assert!(
            why.contains(
                "the model takes 300 MiB and the most room left on a browser without it is 1500 MiB"
            ),
            "{why}"
        );
        // Before its first load the model's size is unknown: it goes anywhere, spread.
        let mut unknown = cands.clone();
        for c in &mut unknown {
            c.need = None;
            c.room = None;
        }
        let p = plan(1, &[Wasm], &ALL, &unknown);
        assert_eq!(p.load, [("b".into(), Wasm)], "fewest models");
        // A draining browser never gets one, whatever its room.
        let mut draining = with_room("d", 4000, 0);
        draining.usable = false;
        let p = plan(1, &[Wasm], &ALL, &[draining, with_room("c", 100, 1)]);
        assert!(p.load.is_empty());
        assert_eq!(p.unplaced_for_room, 1);
    }

    #[test]
    fn keeps_loaded_replicas_and_unloads_extras() {
        let loaded = |b: &str| ModelOnAgent::Loaded {
            backend: b.into(),
            init_ms: Some(12.0),
            precision: None,
            uri: String::new(),
            sha256: String::new(),
            memory_bytes: None,
            settings: None,
        };
        let cands = [
            browser("a", &[Wasm], loaded("wasm")),
            browser("b", &[Wasm], ModelOnAgent::Loading),
            browser("c", &[Wasm], loaded("wasm")),
        ];
        let p = plan(2, &[Wasm], &ALL, &cands);
        assert!(p.load.is_empty());
        assert_eq!(p.unload, ["b"], "a loading copy goes before a loaded one");
        assert!(
            p.replicas
                .iter()
                .all(|r| r.state == ReplicaState::Loaded && r.init_ms == Some(12.0))
        );
    }

    #[test]
    fn replaces_a_replica_lost_to_healing_or_draining() {
        let mut draining = browser("old", &[Wasm], wasm_copy());
        draining.usable = false;
        let p = plan(
            1,
            &[Wasm],
            &ALL,
            &[draining, browser("new", &[Wasm], ModelOnAgent::Absent)],
        );
        assert_eq!(p.load, [("new".into(), Wasm)]);
    }

    #[test]
    fn a_cordoned_browsers_copy_serves_on_while_its_replacement_loads() {
        let mut leaving = browser("old", &[Wasm], wasm_copy());
        leaving.usable = false;
        leaving.cordoned = true;
        let p = plan(
            1,
            &[Wasm],
            &ALL,
            &[leaving, browser("new", &[Wasm], ModelOnAgent::Absent)],
        );
        assert_eq!(p.load, [("new".into(), Wasm)]);
        let old = p.replicas.iter().find(|r| r.pod == "old").unwrap();
        assert_eq!(old.state, ReplicaState::Loaded, "still serving");
        assert!(old.reason.as_deref().unwrap().contains("leaving the pool"));
        assert!(p.unload.is_empty());
    }

    #[test]
    fn failures_are_reported_and_not_retried_on_the_same_browser() {
        let mut failed = browser("a", &[Wasm], ModelOnAgent::Absent);
        failed.failed_before = Some("sha256 mismatch".into());
        let p = plan(1, &[Wasm], &ALL, &[failed]);
        assert!(p.load.is_empty());
        assert_eq!(p.replicas[0].state, ReplicaState::FailedToLoad);
        assert_eq!(p.replicas[0].reason.as_deref(), Some("sha256 mismatch"));
        assert_eq!(p.replicas.len(), 1);
        assert_eq!(p.unplaced, 1);
        assert!(
            p.unplaced_reason
                .unwrap()
                .starts_with("1 replicas cannot be placed")
        );
    }

    fn old_copy(pod: &str) -> Candidate {
        let mut c = browser(
            pod,
            &[Wasm],
            ModelOnAgent::Loaded {
                backend: "wasm".into(),
                init_ms: None,
                precision: None,
                uri: "file:///m.onnx".into(),
                sha256: "aa".into(),
                memory_bytes: None,
                settings: None,
            },
        );
        c.stale = true;
        c
    }

    #[test]
    fn a_changed_file_gets_a_new_copy_beside_the_old_one_which_serves_until_it_is_loaded() {
        // Round 1: the one copy is old and a browser is free: a new copy goes there.
        let free = browser("b", &[Wasm], ModelOnAgent::Absent);
        let p = plan(1, &[Wasm], &ALL, &[old_copy("a"), free]);
        assert_eq!(p.load, [("b".into(), Wasm)]);
        assert!(p.unload.is_empty());
        let a = p.replicas.iter().find(|r| r.pod == "a").unwrap();
        assert_eq!(a.state, ReplicaState::Loaded, "the old copy still serves");
        // Round 2: the new copy is loading: the old one keeps serving.
        let loading = browser("b", &[Wasm], ModelOnAgent::Loading);
        let p = plan(1, &[Wasm], &ALL, &[old_copy("a"), loading]);
        assert!(p.load.is_empty() && p.unload.is_empty(), "{p:?}");
        assert_eq!(p.replicas.len(), 2);
        // Round 3: the new copy is loaded: the old one goes.
        let loaded = browser(
            "b",
            &[Wasm],
            ModelOnAgent::Loaded {
                backend: "wasm".into(),
                init_ms: None,
                precision: None,
                uri: "file:///m.onnx".into(),
                sha256: "bb".into(),
                memory_bytes: None,
                settings: None,
            },
        );
        let p = plan(1, &[Wasm], &ALL, &[old_copy("a"), loaded]);
        assert_eq!(p.unload, ["a"]);
        assert!(p.load.is_empty());
    }

    #[test]
    fn a_changed_file_is_reloaded_in_place_one_copy_at_a_time_without_a_free_browser() {
        let p = plan(2, &[Wasm], &ALL, &[old_copy("a"), old_copy("b")]);
        assert_eq!(p.load, [("a".into(), Wasm)], "one at a time");
        let states: Vec<_> = p
            .replicas
            .iter()
            .map(|r| (r.pod.as_str(), r.state))
            .collect();
        assert_eq!(
            states,
            [("a", ReplicaState::Loading), ("b", ReplicaState::Loaded)]
        );
        // While a's new copy loads, b waits.
        let p = plan(
            2,
            &[Wasm],
            &ALL,
            &[browser("a", &[Wasm], ModelOnAgent::Loading), old_copy("b")],
        );
        assert!(p.load.is_empty() && p.unload.is_empty(), "{p:?}");
    }
}
