#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Concurrency: re-entrant replies from sync handlers (pymfp deadlocks there), per-channel
//! ordering under concurrent senders, and sends racing a channel close.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use common::{Inbox, WAIT, cfg};
use mfp_runtime::{AgentHandle, DeliveredMessage, Error, Receipt, Runtime};

fn n_of(m: &DeliveredMessage) -> u32 {
    u32::from_be_bytes(m.payload.as_slice().try_into().unwrap())
}

/// Two sync handlers reply to each other on the channel the message came in on, from
/// inside the handler, for 50 round trips.
#[test]
fn sync_handlers_reply_on_the_same_channel_without_deadlock() {
    const LAST: u32 = 100; // 50 rounds of ping + pong
    let rt = Runtime::new(cfg()).unwrap();
    let (tx, rx) = mpsc::channel::<Result<u32, Error>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let make = |tx: mpsc::Sender<Result<u32, Error>>, seen: Arc<Mutex<Vec<(u64, u32)>>>| {
        move |me: &AgentHandle, m: DeliveredMessage| {
            let n = n_of(&m);
            seen.lock().unwrap().push((m.step, n));
            if n >= LAST {
                let _ = tx.send(Ok(n));
                return;
            }
            match me.send(m.channel, &(n + 1).to_be_bytes()) {
                Ok(r) if r.step == u64::from(n) + 1 => {}
                Ok(r) => {
                    let _ = tx.send(Err(Error::HookRejected(format!("wrong step {}", r.step))));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
    };
    let a = rt.bind(make(tx.clone(), Arc::clone(&seen))).unwrap();
    let b = rt.bind(make(tx, Arc::clone(&seen))).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send(ch, &0u32.to_be_bytes()).unwrap();

    let end = rx.recv_timeout(WAIT).expect("ping-pong stalled (deadlock?)");
    assert_eq!(end, Ok(LAST));
    // The last sender's counters update after its message was queued.
    assert!(rt.wait_idle(WAIT));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), LAST as usize + 1);
    for (i, (step, n)) in seen.iter().enumerate() {
        assert_eq!(*step, i as u64);
        assert_eq!(*n, i as u32);
    }
    assert_eq!(a.status().unwrap().messages_sent, 51);
    assert_eq!(b.status().unwrap().messages_sent, 50);
}

/// A handler that fans a message out to several channels, including back to the sender,
/// and a chain A → B → C → A of forwarding handlers.
#[test]
fn handlers_forward_along_a_ring() {
    let rt = Runtime::new(cfg()).unwrap();
    let (tx, rx) = mpsc::channel::<u32>();
    let next: Arc<Mutex<std::collections::HashMap<mfp_runtime::AgentId, mfp_runtime::ChannelId>>> = Arc::default();
    let make = |next: Arc<Mutex<std::collections::HashMap<_, _>>>, tx: mpsc::Sender<u32>| {
        move |me: &AgentHandle, m: DeliveredMessage| {
            let n = n_of(&m);
            if n >= 30 {
                let _ = tx.send(n);
                return;
            }
            let out = *next.lock().unwrap().get(&me.id()).unwrap();
            me.send(out, &(n + 1).to_be_bytes()).unwrap();
        }
    };
    let a = rt.bind(make(Arc::clone(&next), tx.clone())).unwrap();
    let b = rt.bind(make(Arc::clone(&next), tx.clone())).unwrap();
    let c = rt.bind(make(Arc::clone(&next), tx)).unwrap();
    let ab = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let bc = rt.establish_channel(&b.id(), &c.id()).unwrap();
    let ca = rt.establish_channel(&c.id(), &a.id()).unwrap();
    next.lock().unwrap().extend([(a.id(), ab), (b.id(), bc), (c.id(), ca)]);
    a.send(ab, &0u32.to_be_bytes()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT), Ok(30));
    // 31 messages went around: 11 on ab (0, 3, …, 30), 10 on bc, 10 on ca.
    assert!(rt.wait_idle(WAIT));
    assert_eq!(rt.metrics().messages_sent.get(), 31);
    assert_eq!(a.send(ab, &99u32.to_be_bytes()).unwrap().step, 11);
    assert_eq!(b.send(bc, &99u32.to_be_bytes()).unwrap().step, 10);
    assert_eq!(c.send(ca, &99u32.to_be_bytes()).unwrap().step, 10);
}

/// Checks that `msgs` (in delivery order) carry strictly increasing steps and payload
/// counters.
fn assert_increasing(msgs: &[&DeliveredMessage]) {
    for w in msgs.windows(2) {
        assert!(w[0].step < w[1].step, "steps out of order: {} then {}", w[0].step, w[1].step);
        assert!(n_of(w[0]) < n_of(w[1]), "payloads out of order");
    }
}

#[test]
fn per_channel_order_holds_under_concurrent_senders() {
    const N: u32 = 500;
    const M: u32 = 300;
    let config = {
        let mut c = cfg();
        c.max_message_rate = 0;
        c.pipeline_timeout = std::time::Duration::from_secs(2);
        c
    };
    let rt = Runtime::new(config).unwrap();
    let r_inbox = Inbox::new();
    let x_inbox = Inbox::new();
    let y_inbox = Inbox::new();
    let s1 = rt.bind(|_, _| {}).unwrap();
    let s2 = rt.bind(|_, _| {}).unwrap();
    let r = rt.bind(r_inbox.handler()).unwrap();
    let x = rt.bind(x_inbox.handler()).unwrap();
    let y = rt.bind(y_inbox.handler()).unwrap();
    let c1 = rt.establish_channel(&s1.id(), &r.id()).unwrap();
    let c2 = rt.establish_channel(&s2.id(), &r.id()).unwrap();
    let c3 = rt.establish_channel(&x.id(), &y.id()).unwrap();

    let barrier = Arc::new(Barrier::new(4));
    let spawn = |h: AgentHandle, ch, count: u32, barrier: Arc<Barrier>| {
        thread::spawn(move || {
            barrier.wait();
            (0..count).map(|i| h.send(ch, &i.to_be_bytes()).unwrap()).collect::<Vec<Receipt>>()
        })
    };
    let t1 = spawn(s1.clone(), c1, N, Arc::clone(&barrier));
    let t2 = spawn(s2.clone(), c2, N, Arc::clone(&barrier));
    let t3 = spawn(x.clone(), c3, M, Arc::clone(&barrier));
    let t4 = spawn(y.clone(), c3, M, barrier);
    let (r1, r2, r3, r4) = (t1.join().unwrap(), t2.join().unwrap(), t3.join().unwrap(), t4.join().unwrap());

    // Receipts of a lone sender are exactly 0..N; those of the two ends of c3 interleave.
    assert_eq!(r1.iter().map(|r| r.step).collect::<Vec<_>>(), (0..u64::from(N)).collect::<Vec<_>>());
    assert_eq!(r2.iter().map(|r| r.step).collect::<Vec<_>>(), (0..u64::from(N)).collect::<Vec<_>>());
    let mut both: Vec<u64> = r3.iter().chain(&r4).map(|r| r.step).collect();
    assert!(r3.windows(2).all(|w| w[0].step < w[1].step));
    assert!(r4.windows(2).all(|w| w[0].step < w[1].step));
    both.sort_unstable();
    assert_eq!(both, (0..u64::from(2 * M)).collect::<Vec<_>>());

    let at_r = r_inbox.wait_for(2 * N as usize);
    let at_x = x_inbox.wait_for(M as usize);
    let at_y = y_inbox.wait_for(M as usize);
    assert!(rt.wait_idle(WAIT));
    for ch in [c1, c2] {
        let on: Vec<&DeliveredMessage> = at_r.iter().filter(|m| m.channel == ch).collect();
        assert_eq!(on.len(), N as usize);
        assert_increasing(&on);
        assert_eq!(on.first().unwrap().step, 0);
        assert_eq!(on.last().unwrap().step, u64::from(N) - 1);
    }
    let at_x: Vec<&DeliveredMessage> = at_x.iter().collect();
    let at_y: Vec<&DeliveredMessage> = at_y.iter().collect();
    assert_increasing(&at_x);
    assert_increasing(&at_y);
    assert!(at_x.iter().all(|m| m.sender == y.id()));
    assert!(at_y.iter().all(|m| m.sender == x.id()));
    let mut steps: Vec<u64> = at_x.iter().chain(&at_y).map(|m| m.step).collect();
    steps.sort_unstable();
    assert_eq!(steps, (0..u64::from(2 * M)).collect::<Vec<_>>());
    // Every receipt matches exactly one delivered message.
    let ids: HashSet<_> = r3.iter().chain(&r4).map(|r| r.message_id).collect();
    let got: HashSet<_> = at_x.iter().chain(&at_y).map(|m| m.message_id).collect();
    assert_eq!(ids, got);
}

#[test]
fn one_sender_on_many_threads_gets_contiguous_steps() {
    const THREADS: usize = 4;
    const PER: usize = 100;
    let config = {
        let mut c = cfg();
        c.max_message_rate = 0;
        c.pipeline_timeout = std::time::Duration::from_secs(2);
        c
    };
    let rt = Runtime::new(config).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let a = a.clone();
            thread::spawn(move || (0..PER).map(|_| a.send(ch, b"m").unwrap().step).collect::<Vec<_>>())
        })
        .collect();
    let mut steps: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    steps.sort_unstable();
    assert_eq!(steps, (0..(THREADS * PER) as u64).collect::<Vec<_>>());
    let got = inbox.wait_for(THREADS * PER);
    assert!(got.windows(2).all(|w| w[0].step + 1 == w[1].step), "delivery order must follow step order");
    assert_eq!(a.status().unwrap().messages_sent, (THREADS * PER) as u64);
}

/// Sends racing a close: each send either commits (and is then delivered) or fails
/// cleanly; nothing is delivered without a receipt.
#[test]
fn sends_racing_a_channel_close_are_all_or_nothing() {
    let config = {
        let mut c = cfg();
        c.max_message_rate = 0;
        c
    };
    let rt = Runtime::new(config).unwrap();
    let inbox = Inbox::new();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(inbox.handler()).unwrap();
    let keep = rt.bind(|_, _| {}).unwrap();
    // A second channel keeps `a` active after the close.
    rt.establish_channel(&a.id(), &keep.id()).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let sender = {
        let a = a.clone();
        thread::spawn(move || {
            let mut ok = Vec::new();
            for i in 0..5000u32 {
                match a.send(ch, &i.to_be_bytes()) {
                    Ok(r) => ok.push(r),
                    Err(Error::UnknownChannel(_) | Error::ChannelClosed(_)) => break,
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            }
            ok
        })
    };
    // Let some sends through, then close.
    inbox.wait_for(10);
    rt.close_channel(&ch).unwrap();
    let ok = sender.join().unwrap();
    assert!(ok.len() >= 10);
    assert!(rt.wait_idle(WAIT));
    let got = inbox.all();
    assert_eq!(got.len(), ok.len(), "every committed send is delivered, and nothing else");
    for (m, r) in got.iter().zip(&ok) {
        assert_eq!(m.message_id, r.message_id);
        assert_eq!(m.step, r.step);
    }
    assert_err!(a.send(ch, b"after"), Error::ChannelClosed(_));
}
