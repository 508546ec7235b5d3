#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The async API: a runtime built inside a tokio context runs on it; `send_async`,
//! `send_and_wait_async`, `mfp_send_async`, `wait_idle_async` and `shutdown_async`;
//! async handlers (closures and `AsyncHandler` types) replying on the same channel; and a
//! runtime on an explicitly given tokio handle.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gate, Inbox, WAIT, cfg, gated_pair};
use mfp_runtime::{
    AgentHandle, AgentState, AsyncHandler, Backpressure, DeliveredMessage, Error, Runtime, mfp_send_async,
};
use tokio::sync::mpsc;

fn n_of(m: &DeliveredMessage) -> u32 {
    u32::from_be_bytes(m.payload.as_slice().try_into().unwrap())
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_built_in_a_tokio_context_runs_on_it() {
    let rt = Runtime::new(cfg()).unwrap();
    let names = Arc::new(Mutex::new(Vec::new()));
    let rec = Arc::clone(&names);
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt
        .bind_async_fn(move |_, _| {
            let rec = Arc::clone(&rec);
            async move { rec.lock().unwrap().push(thread_name()) }
        })
        .unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send_and_wait_async(ch, b"where am I").await.unwrap();
    let names = names.lock().unwrap().clone();
    assert_eq!(names.len(), 1);
    assert_ne!(names[0], "mfp-runtime", "the handler ran on a runtime-owned tokio runtime");
    rt.shutdown_async().await;
}

#[test]
fn a_runtime_built_outside_tokio_owns_its_executor() {
    let rt = Runtime::builder(cfg()).worker_threads(1).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt
        .bind_async_fn(move |_, _| {
            let _ = tx.lock().unwrap().send(thread_name());
            async {}
        })
        .unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send_and_wait(ch, b"x").unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "mfp-runtime");
}

#[test]
fn a_runtime_on_an_explicit_tokio_handle_runs_there() {
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("custom-tokio")
        .enable_time()
        .build()
        .unwrap();
    let rt = Runtime::builder(cfg()).tokio_handle(tokio_rt.handle().clone()).build().unwrap();
    let names = Arc::new(Mutex::new(Vec::new()));
    let (r1, r2) = (Arc::clone(&names), Arc::clone(&names));
    let a = rt.bind(move |_, _| r1.lock().unwrap().push(thread_name())).unwrap();
    let b = rt
        .bind_async_fn(move |_, _| {
            let r2 = Arc::clone(&r2);
            async move { r2.lock().unwrap().push(thread_name()) }
        })
        .unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    a.send_and_wait(ch, b"to async").unwrap();
    b.send_and_wait(ch, b"to sync").unwrap();
    assert_eq!(names.lock().unwrap().clone(), ["custom-tokio", "custom-tokio"]);
    rt.shutdown();
    drop(rt);
    drop(tokio_rt);
}

const LAST: u32 = 100;

type Done = mpsc::UnboundedSender<Result<(u64, u32), Error>>;

/// Replies `n + 1` to `n` on the same channel until `LAST`, then reports.
async fn ping_pong(tx: Done, me: AgentHandle, m: DeliveredMessage) {
    let n = n_of(&m);
    if n >= LAST {
        let _ = tx.send(Ok((m.step, n)));
        return;
    }
    if let Err(e) = me.send_async(m.channel, &(n + 1).to_be_bytes()).await {
        let _ = tx.send(Err(e));
    }
}

/// The same as an `AsyncHandler` type.
struct PingPong(Done);

impl AsyncHandler for PingPong {
    async fn handle(&self, agent: AgentHandle, msg: DeliveredMessage) {
        ping_pong(self.0.clone(), agent, msg).await;
    }
}

/// Async handlers (one `AsyncHandler` type, one closure) reply on the channel the message
/// came in on, 50 round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_reply_on_the_same_channel_without_deadlock() {
    let rt = Runtime::new(cfg()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = rt.bind_async(PingPong(tx.clone())).unwrap();
    let b = rt.bind_async_fn(move |me, m| ping_pong(tx.clone(), me, m)).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let r = mfp_send_async(&a, ch, &0u32.to_be_bytes()).await.unwrap();
    assert_eq!(r.step, 0);
    let end = tokio::time::timeout(WAIT, rx.recv()).await.expect("ping-pong stalled (deadlock?)");
    assert_eq!(end, Some(Ok((u64::from(LAST), LAST))));
    assert!(rt.wait_idle_async(WAIT).await);
    assert_eq!(a.status().unwrap().messages_sent, 51);
    assert_eq!(b.status().unwrap().messages_sent, 50);
    // The channel's next step follows the 101 messages.
    assert_eq!(b.send_async(ch, &LAST.to_be_bytes()).await.unwrap().step, 101);
    rt.shutdown_async().await;
}

/// An `AsyncHandler` type that echoes every message back, prefixed with "re:".
struct Echo;

impl AsyncHandler for Echo {
    async fn handle(&self, agent: AgentHandle, msg: DeliveredMessage) {
        let mut reply = b"re:".to_vec();
        reply.extend_from_slice(&msg.payload);
        agent.send_async(msg.channel, &reply).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_handler_type_echoes_replies() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let client = rt.bind(inbox.handler()).unwrap();
    let echo = rt.bind_async_named("echo", Echo).unwrap();
    assert_eq!(echo.name(), Some("echo"));
    let ch = rt.establish_channel(&client.id(), &echo.id()).unwrap();
    for i in 0..5u8 {
        let r = client.send_and_wait_async(ch, &[b'0' + i]).await.unwrap();
        assert_eq!(r.step, u64::from(i) * 2);
    }
    assert!(rt.wait_idle_async(WAIT).await);
    let got = inbox.all();
    assert_eq!(got.len(), 5);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload, [b'r', b'e', b':', b'0' + i as u8]);
        assert_eq!(m.sender, echo.id());
        assert_eq!(m.step, i as u64 * 2 + 1);
    }
    rt.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_async_delivers_what_is_queued_then_refuses_sends() {
    let rt = Runtime::new(cfg()).unwrap();
    let inbox = Inbox::new();
    let rec = inbox.clone();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt
        .bind_async_fn(move |_, m| {
            let rec = rec.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                rec.push(m);
            }
        })
        .unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let mut receipts = Vec::new();
    for i in 0..5u8 {
        receipts.push(a.send_async(ch, &[i]).await.unwrap());
    }
    assert!(inbox.len() < 5);
    rt.shutdown_async().await;
    let got = inbox.all();
    assert_eq!(got.len(), 5, "shutdown_async must deliver every queued message");
    for (m, r) in got.iter().zip(&receipts) {
        assert_eq!(m.message_id, r.message_id);
        assert_eq!(m.correlation_id, r.correlation_id);
    }
    assert_eq!(a.send_async(ch, b"late").await, Err(Error::ShutDown));
    assert_eq!(a.send_and_wait_async(ch, b"late").await, Err(Error::ShutDown));
    assert_eq!(rt.channel_count(), 0);
    // A second shutdown is harmless.
    rt.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_wait_async_reports_handler_outcomes() {
    common::quiet_intentional_panics();
    let config = {
        let mut c = cfg();
        c.agent_timeout = Duration::from_millis(100);
        c
    };
    let rt = Runtime::new(config).unwrap();
    let s = rt.bind(|_, _| {}).unwrap();
    let ok = rt.bind_async_fn(|_, _| async {}).unwrap();
    let panicky = rt
        .bind_async_fn(|_, _| async {
            tokio::task::yield_now().await;
            panic!("async handler exploded on purpose");
        })
        .unwrap();
    let slow = rt.bind_async_fn(|_, _| tokio::time::sleep(Duration::from_millis(400))).unwrap();
    let c_ok = rt.establish_channel(&s.id(), &ok.id()).unwrap();
    let c_panic = rt.establish_channel(&s.id(), &panicky.id()).unwrap();
    let c_slow = rt.establish_channel(&s.id(), &slow.id()).unwrap();

    assert_eq!(s.send_and_wait_async(c_ok, b"x").await.unwrap().step, 0);
    assert_eq!(s.send_and_wait_async(c_panic, b"x").await, Err(Error::HandlerFailed));
    assert_eq!(rt.metrics().handler_panics.get(), 1);
    let t = Instant::now();
    assert_eq!(s.send_and_wait_async(c_slow, b"x").await, Err(Error::Timeout));
    assert!(t.elapsed() < Duration::from_millis(400));
    assert_eq!(slow.state(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&slow.id()).unwrap(), "Agent callable timeout");
    assert_err!(s.send_async(c_slow, b"x").await, Error::ChannelQuarantined(_));
    assert_eq!(s.send_and_wait_async(c_ok, b"still fine").await.unwrap().step, 1);
    rt.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_async_waits_for_mailbox_space_then_gives_up() {
    let config = {
        let mut c = cfg();
        c.mailbox_capacity = 1;
        c.backpressure = Backpressure::Wait;
        c.pipeline_timeout = Duration::from_millis(100);
        c.agent_timeout = Duration::from_secs(3);
        c
    };
    let rt = Runtime::new(config).unwrap();
    let (gate, inbox) = (Gate::new(), Inbox::new());
    let (a, _b, ch) = gated_pair(&rt, &gate, &inbox);
    a.send_async(ch, b"m0").await.unwrap();
    let g2 = gate.clone();
    tokio::task::spawn_blocking(move || g2.wait_entered(1)).await.unwrap();
    a.send_async(ch, b"m1").await.unwrap();
    let t = Instant::now();
    assert_err!(a.send_async(ch, b"m2").await, Error::MailboxFull(_));
    assert!(t.elapsed() >= Duration::from_millis(80));
    gate.open();
    assert!(rt.wait_idle_async(WAIT).await);
    assert_eq!(a.send_async(ch, b"m3").await.unwrap().step, 2);
    assert!(rt.wait_idle_async(WAIT).await);
    assert_eq!(inbox.payloads(), [b"m0".to_vec(), b"m1".to_vec(), b"m3".to_vec()]);
    rt.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_async_senders_keep_per_channel_order() {
    let config = {
        let mut c = cfg();
        c.max_message_rate = 0;
        c.pipeline_timeout = Duration::from_secs(2);
        c
    };
    let rt = Runtime::new(config).unwrap();
    let inbox = Inbox::new();
    let sink = rt.bind(inbox.handler()).unwrap();
    let mut tasks = Vec::new();
    let mut chans = Vec::new();
    for _ in 0..4 {
        let s = rt.bind_async_fn(|_, _| async {}).unwrap();
        let ch = rt.establish_channel(&s.id(), &sink.id()).unwrap();
        chans.push(ch);
        tasks.push(tokio::spawn(async move {
            for i in 0..100u32 {
                let r = s.send_async(ch, &i.to_be_bytes()).await.unwrap();
                assert_eq!(r.step, u64::from(i));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(rt.wait_idle_async(WAIT).await);
    let got = inbox.all();
    assert_eq!(got.len(), 400);
    for ch in chans {
        let steps: Vec<u64> = got.iter().filter(|m| m.channel == ch).map(|m| m.step).collect();
        assert_eq!(steps, (0..100).collect::<Vec<u64>>());
    }
    rt.shutdown_async().await;
}
