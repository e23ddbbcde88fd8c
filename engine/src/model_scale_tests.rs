#![allow(clippy::unwrap_used)]

use super::*;

fn policy(min: i32, max: i32) -> ModelAutoscaling {
    ModelAutoscaling {
        min_replicas: min,
        max_replicas: max,
        target_per_replica: None,
        stable_window_seconds: 60,
        panic_window_seconds: 6,
        panic_threshold_percent: 200,
        scale_to_zero_grace_seconds: 30,
    }
}

/// Runs `trace` (second, in flight, waiting), one sample a second, applying each decision
/// at once (the new size is ready at once), and returns the sizes.
fn run(p: &ModelAutoscaling, start: i32, trace: &[(u32, u64, u64)]) -> Vec<ModelScale> {
    let mut s = ModelScaler::default();
    let mut size = start;
    trace
        .iter()
        .map(|&(t, in_flight, waiting)| {
            let d = s.decide(
                p,
                4,
                f64::from(t),
                size,
                ModelLoad {
                    in_flight: if size == 0 { 0 } else { in_flight },
                    waiting,
                    ready: size,
                    silent: 0,
                },
            );
            size = d.desired;
            d
        })
        .collect()
}

fn steady(from: u32, to: u32, in_flight: u64) -> Vec<(u32, u64, u64)> {
    (from..to).map(|t| (t, in_flight, 0)).collect()
}

#[test]
fn steady_load_is_sized_by_the_stable_average_table() {
    // (in flight, start size, size after a steady minute)
    let table = [
        (0, 1, 1),
        (4, 1, 1),
        (5, 1, 2),
        (16, 4, 4),
        (17, 4, 5),
        (40, 2, 10),
    ];
    for (load, start, want) in table {
        let sizes = run(&policy(1, 10), start, &steady(0, 61, load));
        assert_eq!(
            sizes.last().unwrap().desired,
            want,
            "load {load} from {start}"
        );
    }
}

#[test]
fn a_burst_panics_up_at_once_and_holds_until_a_stable_window_passes() {
    // 4 in flight for a minute (1 replica), then a burst of 40 for 10 s, then 4 again.
    let mut trace = steady(0, 60, 4);
    trace.extend(steady(60, 70, 40));
    trace.extend(steady(70, 200, 4));
    let sizes = run(&policy(1, 20), 1, &trace);
    assert_eq!(sizes[59].desired, 1);
    // The panic window's average passes 2 replicas' worth within the first seconds.
    let up = sizes[60..64].iter().position(|d| d.desired > 2).unwrap();
    assert!(sizes[60 + up].panicking, "{:?}", sizes[60 + up]);
    assert_eq!(sizes[60 + up].cause, "panic");
    assert_eq!(
        sizes[69].desired, 10,
        "40 / 4 once the panic window is full"
    );
    // Held at the peak while panicking: a stable window after the last second that asked
    // for twice the ready replicas (t=60: 10 over 6 s on 1 ready; after that the
    // replicas grew with the burst)...
    for (t, d) in sizes.iter().enumerate().take(120).skip(65) {
        assert!(d.desired == 10 && d.panicking, "t={t}: {d:?}");
    }
    assert!(!sizes[120].panicking);
    // ...then follows the stable average back down to 1.
    assert_eq!(sizes.last().unwrap().desired, 1);
    assert!(!sizes.last().unwrap().panicking);
}

#[test]
fn a_step_from_idle_panics_at_its_first_sample_a_step_from_load_over_the_window() {
    // (load before, load after, seconds from the step to a second replica)
    let table = [
        // From idle: the panic window starts at the load, 16 is 4 replicas' worth of 1.
        (0, 16, 0),
        (0, 9, 0),
        // 8 is exactly the threshold (200% of one replica at 4).
        (0, 8, 0),
        // A rise from a running load keeps the whole window: 16 after 3 needs three
        // samples of the 6 s window to average 8, 12 after 2 four.
        (3, 16, 2),
        (2, 12, 3),
    ];
    for (before, after, want) in table {
        let mut trace = steady(0, 60, before);
        trace.extend(steady(60, 90, after));
        let sizes = run(&policy(1, 10), 1, &trace);
        assert_eq!(sizes[59].desired, 1, "{before} → {after}");
        let up = sizes[60..].iter().position(|d| d.desired > 1).unwrap();
        assert_eq!(up, want, "{before} → {after}: {:?}", sizes[60 + up]);
        assert!(sizes[60 + up].panicking, "{before} → {after}");
    }
    // Below the threshold from idle (5 in flight is 125% of one replica) nothing panics:
    // the stable average decides, once it passes 4.
    let mut trace = steady(0, 30, 0);
    trace.extend(steady(30, 120, 5));
    let sizes = run(&policy(1, 10), 1, &trace);
    assert!(sizes.iter().all(|d| !d.panicking));
    let up = sizes[30..].iter().position(|d| d.desired > 1).unwrap();
    assert!(up > 20, "{up}");
    // A burst of one sample from idle panics (a burst is what panic is for) and the
    // replica goes again once a stable window has passed.
    let mut trace = steady(0, 30, 0);
    trace.push((30, 16, 0));
    trace.extend(steady(31, 200, 0));
    let sizes = run(&policy(1, 10), 1, &trace);
    assert_eq!(sizes[30].desired, 4);
    assert!(sizes[30].panicking);
    assert_eq!(sizes.last().unwrap().desired, 1);
}

#[test]
fn a_slow_ramp_is_followed_step_by_step_without_overshoot() {
    let trace: Vec<_> = (0..240).map(|t| (t, u64::from(t / 10), 0)).collect();
    let sizes = run(&policy(1, 20), 1, &trace);
    assert!(sizes.windows(2).all(|w| w[1].desired >= w[0].desired));
    // The most ever in flight is 23: never more than 6 replicas.
    assert!(sizes.iter().all(|d| d.desired <= 6));
    // The stable average over the last minute is about 20.5: 6 replicas.
    assert_eq!(sizes.last().unwrap().desired, 6);
}

#[test]
fn an_idle_model_goes_to_zero_after_the_grace_and_waiting_requests_bring_it_back() {
    let p = policy(0, 4);
    let mut trace = steady(0, 10, 2);
    trace.extend(steady(10, 180, 0));
    trace.push((180, 0, 3));
    let sizes = run(&p, 1, &trace);
    assert_eq!(sizes[9].desired, 1);
    // The stable average reaches 0 only after a minute of nothing (t=69); the size holds
    // until a whole window of averages agrees (t=128), by when the grace (30 s since the
    // last request at t=9) has passed too.
    assert_eq!(sizes[68].desired, 1);
    assert_eq!(sizes[68].cause, "load");
    assert_eq!(sizes[127].desired, 1, "{:?}", sizes[127]);
    assert_eq!(sizes[128].desired, 0, "{:?}", sizes[128]);
    assert_eq!(sizes[179].desired, 0);
    let back = &sizes[180];
    assert_eq!(
        (back.desired, back.cause),
        (1, "waiting_requests"),
        "{back:?}"
    );
    assert!(back.reason.contains("3 requests waiting"));
}

#[test]
fn a_load_at_a_boundary_does_not_flap_the_replicas() {
    // 4 per replica; after a burst of 6, the load wavers between 3 and 5 in flight every
    // few seconds, around one replica's worth.
    let mut p = policy(1, 10);
    p.stable_window_seconds = 6;
    p.panic_window_seconds = 2;
    let mut trace = steady(0, 10, 6);
    trace.extend((10..120).map(|t| (t, if (t / 3) % 2 == 0 { 3 } else { 5 }, 0)));
    let sizes = run(&p, 1, &trace);
    let changes = sizes[20..]
        .windows(2)
        .filter(|w| w[0].desired != w[1].desired)
        .count();
    assert!(
        changes <= 1,
        "{changes} changes: {:?}",
        sizes[20..].iter().map(|d| d.desired).collect::<Vec<_>>()
    );
}

#[test]
fn the_grace_holds_the_last_replica_after_the_window_is_idle() {
    let mut p = policy(0, 4);
    p.stable_window_seconds = 10;
    p.panic_window_seconds = 2;
    p.scale_to_zero_grace_seconds = 60;
    let mut trace = steady(0, 5, 1);
    trace.extend(steady(5, 80, 0));
    let sizes = run(&p, 1, &trace);
    assert_eq!(sizes[30].desired, 1);
    assert_eq!(sizes[30].cause, "scale_to_zero_grace");
    assert_eq!(sizes[63].desired, 1, "59 s since the last request at t=4");
    assert_eq!(sizes[64].desired, 0);
}

#[test]
fn min_and_max_bound_every_decision() {
    let sizes = run(&policy(2, 3), 2, &steady(0, 90, 100));
    assert!(sizes.iter().all(|d| (2..=3).contains(&d.desired)));
    assert_eq!(sizes.last().unwrap().desired, 3);
    assert!(sizes.last().unwrap().reason.contains("within [2, 3]"));
    let idle = run(&policy(2, 3), 3, &steady(0, 90, 0));
    assert_eq!(idle.last().unwrap().desired, 2, "min 2 never goes below");
}

#[test]
fn a_silent_replica_holds_the_size_but_does_not_block_growth() {
    let p = policy(1, 10);
    let mut s = ModelScaler::default();
    let load = |in_flight, silent| ModelLoad {
        in_flight,
        waiting: 0,
        ready: 3,
        silent,
    };
    let held = s.decide(&p, 4, 0.0, 4, load(0, 1));
    assert_eq!((held.desired, held.cause), (4, "silent_replicas"));
    let mut s = ModelScaler::default();
    let up = s.decide(&p, 4, 0.0, 4, load(40, 1));
    assert_eq!(up.desired, 10);
}

#[test]
fn the_target_is_per_replica_concurrency() {
    // A text-generation model: 8 sequences per replica; 20 active sequences need 3.
    let mut s = ModelScaler::default();
    let load = ModelLoad {
        in_flight: 20,
        waiting: 0,
        ready: 3,
        silent: 0,
    };
    assert_eq!(s.decide(&policy(1, 10), 8, 0.0, 3, load).desired, 3);
}
