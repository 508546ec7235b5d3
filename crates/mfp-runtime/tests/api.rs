#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! What a newcomer meets: error texts that name what is involved (and a `Debug` form that
//! reads the same), restored agents attached by name with async handlers, finding one's
//! channel to a peer, several channels between one pair, and the warning when a runtime
//! is dropped with messages still queued.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};

use common::{Gate, Inbox, WAIT, cfg};
use mfp_runtime::storage::MemoryStorage;
use mfp_runtime::{AgentHandle, AgentState, DeliveredMessage, Error, Runtime, RuntimeConfig};

fn persistent_cfg() -> RuntimeConfig {
    let mut c = cfg();
    c.deployment_id = b"dep".to_vec();
    c.instance_id = b"api".to_vec();
    c
}

#[test]
fn errors_name_the_agent_or_channel_and_debug_reads_like_display() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let lonely = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();

    let e = lonely.channels().unwrap_err();
    assert_eq!(e, Error::AgentState { agent: lonely.id(), state: AgentState::Bound });
    assert!(e.to_string().contains(&lonely.id().to_string()), "{e}");
    assert!(e.to_string().contains("establish"), "says what to do: {e}");
    assert_eq!(format!("{e:?}"), e.to_string());

    let e = lonely.send(ch, b"x").unwrap_err();
    assert!(e.to_string().contains(&lonely.id().to_string()), "{e}");

    // Another channel keeps `a` active, so the send reaches the channel check.
    let d = rt.bind(|_, _| {}).unwrap();
    rt.establish_channel(&a.id(), &d.id()).unwrap();
    rt.close_channel(&ch).unwrap();
    let e = a.send(ch, b"x").unwrap_err();
    assert_eq!(e, Error::ChannelClosed(ch));
    assert!(e.to_string().contains(&ch.to_string()), "{e}");
    assert_eq!(format!("{e:?}"), e.to_string());

    rt.terminate_agent(&b.id()).unwrap();
    let e = rt.agent_state(&b.id()).unwrap_err();
    assert_eq!(e, Error::AgentNotBound(b.id()));
    assert!(e.to_string().contains(&b.id().to_string()), "{e}");
    // `main() -> Result<(), Error>` prints the Debug form: the same sentence.
    assert_eq!(format!("{:?}", Err::<(), _>(e.clone())), format!("Err({e})"));
    // Also for a storage error, alone or inside the runtime's error.
    let e = Error::Storage(mfp_runtime::storage::StorageError::Decrypt);
    assert_eq!(format!("{e:?}"), e.to_string());
    assert!(!format!("{e:?}").contains("Decrypt"), "{e:?}");
    let s = mfp_runtime::storage::StorageError::Decrypt;
    assert_eq!(format!("{s:?}"), s.to_string());
}

#[test]
fn a_restored_name_is_attached_not_bound_again_also_with_async_handlers() {
    let store = MemoryStorage::new();
    let ch = {
        let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
        let planner = rt.bind_named("planner", |_, _| {}).unwrap();
        let writer = rt.bind_named("writer", |_, _| {}).unwrap();
        let ch = rt.establish_channel(&planner.id(), &writer.id()).unwrap();
        rt.shutdown();
        ch
    };
    let rt = Runtime::builder(persistent_cfg()).storage(store).build().unwrap();
    let e = rt.bind_named("planner", |_, _| {}).unwrap_err();
    assert_eq!(e, Error::RestoredAgentName("planner".into()));
    assert!(e.to_string().contains("attach_named"), "{e}");

    let inbox = Inbox::new();
    let seen = inbox.clone();
    let writer = rt
        .attach_async_fn_named("writer", move |_agent: AgentHandle, m: DeliveredMessage| {
            let seen = seen.clone();
            async move { seen.push(m) }
        })
        .unwrap();
    struct Quiet;
    impl mfp_runtime::AsyncHandler for Quiet {
        async fn handle(&self, _agent: AgentHandle, _msg: DeliveredMessage) {}
    }
    let planner = rt.attach_async_named("planner", Quiet).unwrap();
    assert_err!(rt.attach_async_named("planner", Quiet), Error::AlreadyAttached(_));
    assert_err!(rt.attach_async_fn(&writer.id(), |_, _| async {}), Error::AlreadyAttached(_));
    // Once attached, the name is an ordinary bound agent's: a plain duplicate.
    assert_eq!(rt.bind_named("planner", |_, _| {}).unwrap_err(), Error::DuplicateAgentName("planner".into()));
    rt.bind_named("fresh", |_, _| {}).unwrap();
    assert_eq!(rt.bind_named("fresh", |_, _| {}).unwrap_err(), Error::DuplicateAgentName("fresh".into()));

    assert_eq!(planner.channel_with(&writer.id()).unwrap(), Some(ch));
    planner.send(ch, b"continue").unwrap();
    assert_eq!(inbox.wait_for(1)[0].payload, b"continue");
    rt.shutdown();
}

#[test]
fn channel_with_finds_the_channel_to_a_peer_and_several_channels_may_join_a_pair() {
    let rt = Runtime::new(cfg()).unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let inbox = Inbox::new();
    let b = rt.bind(inbox.handler()).unwrap();
    let c = rt.bind(|_, _| {}).unwrap();
    // A freshly bound agent has no channel: None, not an error.
    assert_eq!(a.channel_with(&b.id()).unwrap(), None);

    let first = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let ac = rt.establish_channel(&a.id(), &c.id()).unwrap();
    assert_eq!(a.channel_with(&b.id()).unwrap(), Some(first));
    assert_eq!(b.channel_with(&a.id()).unwrap(), Some(first));
    assert_eq!(a.channel_with(&c.id()).unwrap(), Some(ac));
    assert_eq!(b.channel_with(&c.id()).unwrap(), None);

    // Establishing again on the same pair opens a second, independent channel (as pymfp
    // does); channel_with keeps answering with the first.
    let second = rt.establish_channel(&b.id(), &a.id()).unwrap();
    assert_ne!(second, first);
    assert_eq!(a.channel_with(&b.id()).unwrap(), Some(first));
    assert_eq!(a.channels().unwrap().iter().filter(|i| i.peer == b.id()).count(), 2);
    assert_eq!(a.send(first, b"1").unwrap().step, 0);
    assert_eq!(a.send(first, b"2").unwrap().step, 1);
    assert_eq!(a.send(second, b"3").unwrap().step, 0, "each channel has its own ratchet");
    inbox.wait_for(3);

    rt.close_channel(&first).unwrap();
    assert_eq!(a.channel_with(&b.id()).unwrap(), Some(second));
    rt.close_channel(&second).unwrap();
    assert_eq!(a.channel_with(&b.id()).unwrap(), None);
}

/// Captures what the tracing subscriber prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn dropping_a_runtime_with_messages_queued_logs_a_warning() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let gate = Gate::new();
    let exec = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    tracing::subscriber::with_default(subscriber, || {
        let rt = Runtime::builder(cfg()).tokio_handle(exec.handle().clone()).build().unwrap();
        let a = rt.bind(|_, _| {}).unwrap();
        let g = gate.clone();
        let b = rt.bind(move |_, _| g.wait()).unwrap();
        let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
        for i in 0..3u8 {
            a.send(ch, &[i]).unwrap();
        }
        gate.wait_entered(1);
        // Dropped inside async code: it cannot wait, so the queued messages are dropped.
        exec.block_on(async move { drop(rt) });
    });
    gate.open();
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("undelivered=3"), "{text}");
    assert!(text.contains("shutdown_async"), "says what to do: {text}");
    let _ = WAIT;
}
