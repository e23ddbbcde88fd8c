use super::*;
use webaccel_api::agent::{AgentStats, ModelStats};

const NOW: i64 = 1_800_000_000;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

/// A ready, current browser with `load` requests, created an hour ago.
fn browser(name: &str, load: u64) -> BrowserView {
    BrowserView {
        name: name.into(),
        ip: Some("10.0.0.1".into()),
        phase: "Running".into(),
        ready: true,
        template_hash: Some("h1".into()),
        created: Some(at(NOW - 3600)),
        stats: Some(AgentStats {
            healthy: true,
            ready: true,
            outstanding: load,
            ..AgentStats::default()
        }),
        ..BrowserView::default()
    }
}

fn inputs(desired: i32) -> Inputs<'static> {
    static HEALING: HealingSpec = HealingSpec {
        unready_grace_seconds: 180,
        max_container_restarts: 3,
    };
    Inputs {
        desired,
        template_hash: "h1",
        healing: &HEALING,
        recycle: None,
        now: at(NOW),
        may_heal: true,
        drain_timeout_s: 60,
        rollout: &ROLLOUT,
        roll_stopped: None,
    }
}

static ROLLOUT: RolloutSpec = RolloutSpec {
    max_surge: 1,
    max_unavailable: 0,
    min_ready_seconds: 10,
};

fn names(v: &[(String, Removal)]) -> Vec<&str> {
    v.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn an_empty_pool_creates_its_desired_browsers() {
    let p = plan(&[], &inputs(3));
    assert_eq!(
        p,
        Plan {
            create: 3,
            ..Plan::default()
        }
    );
}

#[test]
fn scale_down_consolidates_draining_the_emptiest_idle_browser() {
    let holding = |name: &str, mib: u64| {
        let mut b = browser(name, 0);
        if let Some(s) = b.stats.as_mut() {
            s.browser_memory_bytes = Some(mib << 20);
        }
        b
    };
    // All idle: the one whose browsers hold the least (fewest, smallest models) goes, so
    // the models that must move are few and the others stay where they are.
    let p = plan(
        &[
            holding("full", 1800),
            holding("empty", 300),
            holding("half", 900),
        ],
        &inputs(2),
    );
    assert_eq!(names(&p.drain), ["empty"]);
}

#[test]
fn a_browser_holding_a_models_only_copy_is_cordoned_until_it_is_loaded_elsewhere() {
    let mut sole = browser("sole", 0);
    sole.sole_copies = 1;
    sole.created = Some(at(NOW - 60));
    let other = browser("other", 5);
    // Scaling to one: "sole" is idle, but the only loaded copy of a model is there.
    let p = plan(&[sole.clone(), other.clone()], &inputs(1));
    assert_eq!(p.cordon, ["sole"]);
    assert!(p.drain.is_empty() && p.delete.is_empty(), "{p:?}");
    // Cordoned, the model still only there: wait, nothing more to do.
    sole.cordoned_since = Some(at(NOW - 10));
    let p = plan(&[sole.clone(), other.clone()], &inputs(1));
    assert!(p.cordon.is_empty() && p.drain.is_empty(), "{p:?}");
    // Loaded on "other" now: drain.
    sole.sole_copies = 0;
    let p = plan(&[sole.clone(), other.clone()], &inputs(1));
    assert_eq!(names(&p.drain), ["sole"]);
    // A model that cannot move within the drain timeout does not keep it forever.
    sole.sole_copies = 1;
    sole.cordoned_since = Some(at(NOW - 61));
    let p = plan(&[sole.clone(), other.clone()], &inputs(1));
    assert_eq!(names(&p.drain), ["sole"]);
    // The load came back before it drained: it takes replicas again.
    sole.cordoned_since = Some(at(NOW - 10));
    let p = plan(&[sole, other], &inputs(2));
    assert_eq!(p.uncordon, ["sole"]);
    assert!(p.drain.is_empty() && p.cordon.is_empty());
}

#[test]
fn scale_down_drains_the_idle_browsers_never_the_busy_one() {
    let pods = [
        browser("busy", 9),
        browser("idle-a", 0),
        browser("idle-b", 0),
    ];
    let p = plan(&pods, &inputs(1));
    assert_eq!(p.create, 0);
    let mut drained = names(&p.drain);
    drained.sort();
    assert_eq!(drained, ["idle-a", "idle-b"]);
    assert!(p.delete.is_empty(), "nothing is deleted before it drained");
}

#[test]
fn a_drained_browser_is_deleted_once_idle_or_overdue_and_not_before() {
    let mut working = browser("working", 2);
    working.draining_since = Some(at(NOW - 10));
    let mut done = browser("done", 0);
    done.draining_since = Some(at(NOW - 10));
    let mut overdue = browser("overdue", 5);
    overdue.draining_since = Some(at(NOW - 61));
    let p = plan(&[working, done, overdue, browser("keep", 1)], &inputs(1));
    assert_eq!(names(&p.delete), ["done", "overdue"]);
    assert!(p.drain.is_empty() && p.create == 0);
}

#[test]
fn never_ready_browsers_go_first_and_without_a_drain() {
    let mut starting = browser("starting", 0);
    starting.ready = false;
    starting.stats = None;
    starting.unready_since = Some(at(NOW - 5));
    let p = plan(&[browser("a", 0), starting], &inputs(1));
    assert_eq!(names(&p.delete), ["starting"]);
    assert!(p.drain.is_empty());
}

#[test]
fn broken_browsers_are_replaced_for_each_reason() {
    let mut failed = browser("failed", 0);
    failed.phase = "Failed".into();
    let mut looping = browser("looping", 0);
    looping.crash_looping = true;
    looping.restarts = 1;
    let mut stuck = browser("stuck", 0);
    stuck.ready = false;
    stuck.unready_since = Some(at(NOW - 181));
    let mut sick = browser("sick", 0);
    sick.stats.as_mut().unwrap().healthy = false;
    let p = plan(
        &[failed, looping, stuck, sick, browser("fine", 0)],
        &inputs(5),
    );
    assert_eq!(names(&p.delete), ["failed", "looping", "stuck", "sick"]);
    assert!(p.delete.iter().all(|(_, r)| matches!(r, Removal::Heal(_))));
    assert_eq!(p.create, 4, "each broken browser is replaced");
    let Removal::Heal(why) = &p.delete[2].1 else {
        unreachable!()
    };
    assert_eq!(why, "unready for 181s (grace 180s)");
}

#[test]
fn an_unready_browser_within_its_grace_is_left_alone() {
    let mut starting = browser("starting", 0);
    starting.ready = false;
    starting.unready_since = Some(at(NOW - 30));
    let p = plan(&[starting], &inputs(1));
    assert_eq!(p, Plan::default());
}

#[test]
fn heal_backoff_keeps_broken_pods_and_does_not_overgrow() {
    let mut failed = browser("failed", 0);
    failed.phase = "Failed".into();
    let p = plan(
        &[failed, browser("ok", 0)],
        &Inputs {
            may_heal: false,
            ..inputs(2)
        },
    );
    assert_eq!(p.heal_deferred, ["failed"]);
    assert_eq!(p.create, 0);
    assert!(p.delete.is_empty());
}

fn old(name: &str, load: u64) -> BrowserView {
    BrowserView {
        template_hash: Some("h0".into()),
        ..browser(name, load)
    }
}

#[test]
fn a_spec_change_creates_first_and_drains_an_old_browser_once_the_new_one_stayed_ready() {
    let (busy, idle) = (old("old-busy", 3), old("old-idle", 0));
    // The new spec: one browser above the size first, nothing drained.
    let p = plan(&[busy.clone(), idle.clone()], &inputs(2));
    assert_eq!((p.create, p.drain.len()), (1, 0));
    // Ready for 3 s only: not yet available (it might be OOM-killed in a moment).
    let mut new = browser("new", 0);
    new.ready_since = Some(at(NOW - 3));
    let p = plan(&[busy.clone(), idle.clone(), new.clone()], &inputs(2));
    assert_eq!(p, Plan::default(), "{p:?}");
    // Ready for 10 s: the idlest old browser drains, and nothing else happens.
    new.ready_since = Some(at(NOW - 10));
    let p = plan(&[busy.clone(), idle.clone(), new.clone()], &inputs(2));
    assert_eq!(p.drain, [("old-idle".into(), Removal::OutOfDate)]);
    assert_eq!(p.create, 0);
    // Drained and idle: deleted as a roll (its own Event reason), and the next new
    // browser is created while the busy old one keeps serving.
    let mut draining = idle;
    draining.draining_since = Some(at(NOW - 1));
    draining.drained_for = Some(Removal::OutOfDate);
    let p = plan(&[busy.clone(), draining, new.clone()], &inputs(2));
    assert_eq!(p.delete, [("old-idle".into(), Removal::OutOfDate)]);
    assert_eq!(p.create, 1);
    assert!(p.drain.is_empty());
    // The last old one goes once the second new one is available; then the roll is over.
    let p = plan(&[busy, new.clone(), browser("new-2", 0)], &inputs(2));
    assert_eq!(p.drain, [("old-busy".into(), Removal::OutOfDate)]);
    let p = plan(&[new, browser("new-2", 0)], &inputs(2));
    assert_eq!(p, Plan::default());
}

#[test]
fn a_roll_whose_new_browser_restarts_stops_and_takes_the_new_one_back() {
    let mut new = browser("new", 0);
    new.ready = false;
    new.restarts = 1;
    let p = plan(&[old("a", 1), old("b", 1), new.clone()], &inputs(2));
    assert_eq!(
        p.roll_stopped.as_deref(),
        Some("new: agent container restarted 1 times")
    );
    // No old browser drains: the failing new one goes instead (never ready: at once).
    assert!(p.drain.is_empty(), "{p:?}");
    assert_eq!(
        p.delete,
        [(
            "new".into(),
            Removal::RollStopped("new: agent container restarted 1 times".into())
        )]
    );
    assert_eq!(p.create, 0);
    // Remembered: after the new one is gone, no new one comes until the spec changes.
    let p = plan(
        &[old("a", 1), old("b", 1)],
        &Inputs {
            roll_stopped: Some("new: agent container restarted 1 times"),
            ..inputs(2)
        },
    );
    assert_eq!((p.create, p.drain.len()), (0, 0));
    assert!(p.roll_stopped.is_some());
}

#[test]
fn rollout_settings_table() {
    // (max surge, max unavailable, size) → (created, drained) on a spec change
    let table = [
        ((1, 0), 2, (1, 0)),
        ((2, 0), 2, (2, 0)),
        // No surge: one old browser drains first (the pool at its size is settled).
        ((0, 1), 2, (0, 1)),
        // Surge and unavailability: one created, one drained at once.
        ((1, 1), 2, (1, 0)),
    ];
    for ((max_surge, max_unavailable), size, want) in table {
        let rollout = RolloutSpec {
            max_surge,
            max_unavailable,
            min_ready_seconds: 10,
        };
        let olds: Vec<BrowserView> = (0..size).map(|k| old(&format!("o{k}"), 0)).collect();
        let p = plan(
            &olds,
            &Inputs {
                rollout: &rollout,
                ..inputs(size)
            },
        );
        assert_eq!(
            (p.create, p.drain.len()),
            want,
            "surge {max_surge} unavailable {max_unavailable}"
        );
    }
}

#[test]
fn a_pod_no_node_can_take_is_left_alone_with_the_schedulers_message() {
    let mut pending = browser("pending", 0);
    pending.ready = false;
    pending.phase = "Pending".into();
    pending.stats = None;
    pending.created = Some(at(NOW - 3600));
    pending.unready_since = Some(at(NOW - 3600));
    pending.unschedulable = Some("0/2 nodes are available: 1 Insufficient cpu.".into());
    let p = plan(&[browser("a", 0), pending.clone()], &inputs(2));
    assert_eq!(p, Plan::default(), "not deleted and recreated: {p:?}");
    // Without the scheduler's word it is an unready pod past its grace: replaced.
    pending.unschedulable = None;
    let p = plan(&[browser("a", 0), pending], &inputs(2));
    assert!(matches!(p.delete[..], [(_, Removal::Heal(_))]), "{p:?}");
}

#[test]
fn drain_marks_read_back_as_the_removal() {
    for r in [
        Removal::ScaleDown,
        Removal::OutOfDate,
        Removal::Recycle("served 10 requests (limit 10)".into()),
        Removal::Heal("pod phase Failed".into()),
        Removal::RollStopped("p-2: agent container restarted 2 times".into()),
    ] {
        assert_eq!(Removal::from_mark(&r.mark()), r);
    }
    assert_eq!(Removal::from_mark("anything"), Removal::ScaleDown);
}

#[test]
fn recycling_after_requests_or_lifetime_drains_one() {
    let mut worn = browser("worn", 0);
    worn.stats.as_mut().unwrap().models.insert(
        "m".into(),
        ModelStats {
            requests: 1000,
            ..ModelStats::default()
        },
    );
    let recycle = RecycleSpec {
        after_requests: Some(1000),
        max_lifetime_seconds: None,
    };
    let p = plan(
        &[worn, browser("fresh", 0)],
        &Inputs {
            recycle: Some(&recycle),
            ..inputs(2)
        },
    );
    assert_eq!(
        p.drain,
        [(
            "worn".into(),
            Removal::Recycle("served 1000 requests (limit 1000)".into())
        )]
    );

    let old = RecycleSpec {
        after_requests: None,
        max_lifetime_seconds: Some(3000),
    };
    let p = plan(
        &[browser("a", 0), browser("b", 0)],
        &Inputs {
            recycle: Some(&old),
            ..inputs(2)
        },
    );
    assert_eq!(
        p.drain.len(),
        1,
        "only one at a time even though both are due"
    );
}

#[test]
fn terminating_pods_are_not_counted() {
    let mut going = browser("going", 0);
    going.terminating = true;
    let p = plan(&[going, browser("a", 0)], &inputs(2));
    assert_eq!(p.create, 1);
}
