//! Deterministic simulation: two runtimes (a model of the runtime side on each: per-channel
//! chains, outbound log, positions, durable inbox, what is committed and what is only in
//! memory) over a simulated network with a virtual clock that drops, duplicates, reorders,
//! delays and partitions on demand, and runtimes that crash and restart from what they
//! committed. Whatever the fault schedule, once the network heals every message whose
//! sender got a receipt is received exactly once and in order per channel, handlers see
//! each once (again only flagged, and only when its handling was not committed), no (key,
//! nonce) pair is ever used for two messages, and both sides' chains agree.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use mfp_core::{AgentId, ChannelId};
use mfp_federation::session::SessionConfig;
use proptest::prelude::*;

const ALICE: AgentId = AgentId::from_bytes([0xa1; 32]);
const BOB: AgentId = AgentId::from_bytes([0xb1; 32]);
const CH0: ChannelId = ChannelId::from_bytes([0xc0; 16]);
const CH1: ChannelId = ChannelId::from_bytes([0xc1; 16]);

#[derive(Debug, Clone)]
enum Action {
    /// A side queues one message on a channel.
    Send { from_a: bool, ch1: bool },
    /// The network drops everything for this many ms.
    Partition(u64),
    /// The connection resets.
    Reset,
    /// A runtime's process dies (SIGKILL) and starts again after `down_ms`.
    Crash { a: bool, down_ms: u64 },
}

#[derive(Debug, Clone)]
struct Schedule {
    seed: u64,
    faults: Faults,
    events: Vec<(u64, Action)>,
    window_ms: u64,
}

#[derive(Debug, Default)]
#[allow(dead_code)] // printed
struct Outcome {
    connects: u64,
    handshake_failures: u64,
    sealed: usize,
    sent: u64,
    resent: u64,
    full: u64,
    tampered: u64,
    duplicates: u64,
    delivered: u64,
    crashes: u64,
    requests: u64,
    lost_sends: u64,
    lost_receives: u64,
    lost_removals: u64,
    redelivered: u64,
    resealed: u64,
    handled_twice: usize,
    virtual_secs: u64,
}

fn run(schedule: &Schedule) -> Outcome {
    // Small limits so backpressure happens under load: the models' logs hold 16
    // unacknowledged messages per channel, the sessions queue 4 for transmission.
    let cfg = SessionConfig { max_queued_messages: 4, ..SessionConfig::default() };
    let mut sim = Sim::new(schedule.seed, cfg, 16);
    sim.a.model.open(CH0, 4, ALICE, BOB, [0x11; 32]);
    sim.b.model.open(CH1, 4, BOB, ALICE, [0x22; 32]);
    sim.faults = schedule.faults;
    let mut app_a = App::default();
    let mut app_b = App::default();
    let mut events = schedule.events.clone();
    events.sort_by_key(|(t, _)| *t);
    let mut events = events.into_iter().peekable();
    let mut partition_until = None;
    let end_of_faults = sim.start + Duration::from_millis(schedule.window_ms);
    let deadline = end_of_faults + Duration::from_secs(900);
    loop {
        let elapsed = (sim.now - sim.start).as_millis() as u64;
        while let Some((_, action)) = events.next_if(|(t, _)| *t <= elapsed) {
            match action {
                Action::Send { from_a, ch1 } => {
                    let ch = if ch1 { CH1 } else { CH0 };
                    if from_a {
                        app_a.pending.push_back(ch);
                    } else {
                        app_b.pending.push_back(ch);
                    }
                }
                Action::Partition(ms) => {
                    sim.partitioned = true;
                    partition_until = Some(sim.now + Duration::from_millis(ms));
                }
                Action::Reset => sim.disconnect(),
                Action::Crash { a, down_ms } => {
                    sim.crash(a, Duration::from_millis(down_ms));
                    let (app, side) = if a { (&mut app_a, &mut sim.a) } else { (&mut app_b, &mut sim.b) };
                    app.on_crash(&mut side.model);
                }
            }
        }
        if partition_until.is_some_and(|t| sim.now >= t) {
            sim.partitioned = false;
            partition_until = None;
        }
        if sim.now >= end_of_faults {
            sim.faults = Faults::NONE;
            sim.partitioned = false;
        }
        sim.step(Duration::from_millis(50));
        // The applications run with their runtimes; what they seal now commits in a later
        // step, so the next crash may find it pending.
        if !sim.a.is_down() {
            app_a.flush(&mut sim.a.model);
        }
        if !sim.b.is_down() {
            app_b.flush(&mut sim.b.model);
        }

        let settled = |m: &common::Model| {
            [CH0, CH1].iter().all(|c| m.channels.get(c).is_some_and(|c| c.open && c.log.is_empty()))
        };
        let quiet = sim.now >= end_of_faults
            && events.peek().is_none()
            && app_a.pending.is_empty()
            && app_b.pending.is_empty()
            && app_a.in_flight.is_empty()
            && app_b.in_flight.is_empty()
            && sim.is_up()
            && settled(&sim.a.model)
            && settled(&sim.b.model)
            && sim.a.model.idle()
            && sim.b.model.idle();
        if quiet {
            break;
        }
        assert!(
            sim.now < deadline,
            "no convergence after the network healed: a {} b {}, pending {} / {}",
            sim.a.model.summary(),
            sim.b.model.summary(),
            app_a.pending.len(),
            app_b.pending.len()
        );
    }

    // Every message with a receipt was received (its receive committed) exactly once, in
    // order, per channel and direction; and nothing without a receipt was.
    let mut handled_twice = 0;
    for (sender, receiver) in [(&app_a, &sim.b.model), (&app_b, &sim.a.model)] {
        for ch in [CH0, CH1] {
            let sent = sender.sent.get(&ch).copied().unwrap_or(0);
            let got: Vec<u64> = receiver.channels[&ch]
                .delivered
                .iter()
                .map(|p| u64::from_be_bytes(p[..8].try_into().unwrap()))
                .collect();
            assert_eq!(got, (0..sent).collect::<Vec<_>>(), "channel {ch:?}");
            // The handler saw each of them, first in order; a second time only flagged as
            // a redelivery (the runtime's rule: a message whose handling was not committed
            // when the runtime crashed is delivered again after the restart, flagged; the
            // model checks as it goes that one whose handling committed never comes again).
            let mut next = 0;
            for &(c, step, redelivered) in &receiver.handled {
                if c != ch {
                    continue;
                }
                if step < next {
                    assert!(redelivered, "step {step} of {ch:?} handled twice without the flag");
                    handled_twice += 1;
                } else {
                    assert_eq!(step, next, "channel {ch:?}: the handler skipped a step");
                    next += 1;
                }
            }
            assert_eq!(next, sent, "channel {ch:?}: messages never handled");
        }
    }
    // Both sides' chains agree: what one sends with is what the other receives with; and
    // what each holds in memory is what it committed.
    let (ma, mb) = (&sim.a.model, &sim.b.model);
    for ch in [CH0, CH1] {
        let (ca, cb) = (&ma.channels[&ch], &mb.channels[&ch]);
        assert!(ca.tx == cb.rx && ca.rx == cb.tx, "channel {ch:?}: chains diverged");
        assert_eq!((ca.acked, cb.acked), (ca.tx.step, cb.tx.step));
        assert_eq!((ca.local_agent, ca.remote_agent, ca.depth), (cb.remote_agent, cb.local_agent, cb.depth));
        for (m, c) in [(ma, ca), (mb, cb)] {
            let d = &m.durable[&ch];
            assert!(d.tx == c.tx && d.rx == c.rx && d.open, "channel {ch:?}: memory and store differ");
        }
    }
    let sealed = sim.assert_no_key_nonce_reuse();
    let (sa, sb) = (ma.stats, mb.stats);
    assert_eq!(sealed as u64, sa.sealed + sb.sealed);
    Outcome {
        connects: sim.connects,
        handshake_failures: sim.handshake_failures,
        sealed,
        sent: sa.sent + sb.sent,
        resent: sa.resent + sb.resent,
        full: sa.full + sb.full,
        tampered: sim.tampered,
        duplicates: sa.duplicates + sb.duplicates,
        delivered: sa.delivered + sb.delivered,
        crashes: sim.crashes,
        requests: sa.requests + sb.requests,
        lost_sends: sa.lost_sends + sb.lost_sends,
        lost_receives: sa.lost_receives + sb.lost_receives,
        lost_removals: sa.lost_removals + sb.lost_removals,
        redelivered: sa.redelivered + sb.redelivered,
        resealed: sa.resealed + sb.resealed,
        handled_twice,
        virtual_secs: (sim.now - sim.start).as_secs(),
    }
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        12 => (any::<bool>(), any::<bool>()).prop_map(|(from_a, ch1)| Action::Send { from_a, ch1 }),
        1 => (100u64..45_000).prop_map(Action::Partition),
        1 => Just(Action::Reset),
        1 => (any::<bool>(), 50u64..5_000).prop_map(|(a, down_ms)| Action::Crash { a, down_ms }),
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        any::<u64>(),
        (0u64..15, 0u64..15, 0u64..30, 0u64..40, 0u64..700, 0u64..700),
        proptest::collection::vec((0u64..60_000, action()), 1..150),
    )
        .prop_map(|(seed, (drop, duplicate, reorder, max_delay_ms, slow_commit, slow_handler), events)| Schedule {
            seed,
            faults: Faults { drop, duplicate, reorder, max_delay_ms, slow_commit, slow_handler },
            events,
            window_ms: 60_000,
        })
}

proptest! {
    // 24 schedules by default; PROPTEST_CASES=n runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_fault_schedules_keep_exactly_once_in_order(s in schedule()) {
        let out = run(&s);
        prop_assert!(out.connects >= 1);
    }
}

/// A fixed, heavy schedule; prints its counts (run with `--nocapture`).
#[test]
fn heavy_faults_fixed_schedule() {
    let mut rng = TestEntropy(42);
    let mut events = Vec::new();
    for i in 0..600u64 {
        events.push((i * 100, Action::Send { from_a: rng.below(2) == 0, ch1: rng.below(2) == 0 }));
    }
    events.push((10_000, Action::Partition(40_000)));
    events.push((55_000, Action::Reset));
    let s = Schedule {
        seed: 7,
        faults: Faults { drop: 10, duplicate: 10, reorder: 20, max_delay_ms: 30, slow_commit: 0, slow_handler: 0 },
        events,
        window_ms: 60_000,
    };
    let out = run(&s);
    println!("{out:?}");
    assert!(out.connects > 3, "{out:?}");
    assert!(out.tampered > 0, "faults should have broken some sessions: {out:?}");
    assert_eq!(out.delivered, 600);
}

/// A fixed schedule with crashes of both runtimes under load, a slow writer and slow
/// handlers, on top of network faults; prints its counts (run with `--nocapture`).
#[test]
fn crashes_of_both_sides_fixed_schedule() {
    let mut rng = TestEntropy(4242);
    let mut events = Vec::new();
    for i in 0..500u64 {
        events.push((i * 100, Action::Send { from_a: rng.below(2) == 0, ch1: rng.below(2) == 0 }));
    }
    for (i, t) in
        [3_000u64, 7_500, 12_000, 16_000, 21_000, 27_000, 33_000, 38_500, 44_000, 47_000].into_iter().enumerate()
    {
        let a = i % 2 == 0;
        // A burst from both sides just before, so the crash finds sends and receives
        // sealed or received and not committed yet.
        for k in 0..4 {
            events.push((t - 40 + 10 * k, Action::Send { from_a: a, ch1: k % 2 == 0 }));
            events.push((t - 80 + 10 * k, Action::Send { from_a: !a, ch1: k % 2 == 1 }));
        }
        events.push((t, Action::Crash { a, down_ms: 300 + 400 * (i as u64 % 4) }));
    }
    // Early ones, while the channels are being agreed.
    for (t, a) in [(5, false), (120, true), (240, false)] {
        events.push((t, Action::Crash { a, down_ms: 100 }));
    }
    events.push((24_000, Action::Partition(5_000)));
    events.push((36_000, Action::Reset));
    let s = Schedule {
        seed: 9,
        faults: Faults { drop: 5, duplicate: 5, reorder: 10, max_delay_ms: 20, slow_commit: 400, slow_handler: 400 },
        events,
        window_ms: 50_000,
    };
    let out = run(&s);
    println!("{out:?}");
    assert_eq!(out.crashes, 13, "{out:?}");
    assert_eq!(out.delivered, 580, "{out:?}");
    // The crashes landed where they matter: sends and receives not committed yet,
    // handlings not committed yet (so messages delivered again, flagged).
    assert!(out.lost_sends > 0 && out.lost_receives > 0 && out.lost_removals > 0, "{out:?}");
    assert!(out.resealed > 0 && out.redelivered > 0 && out.handled_twice > 0, "{out:?}");
    // A crash came while the channels were being agreed: a request went again.
    assert!(out.requests > 2, "{out:?}");
}
