#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Persistence through the storage trait, with the in-memory store: what is saved, what a
//! restart restores, and failing closed.

#[macro_use]
mod common;

use common::manual_store::ManualStore;
use common::{Inbox, cfg};
use mfp_core::{RuntimeId, State};
use mfp_runtime::storage::{MemoryStorage, Storage, StorageError, StorageOp};
use mfp_runtime::{AgentState, ChannelStatus, Error, Runtime, RuntimeConfig};

fn persistent_cfg() -> RuntimeConfig {
    let mut c = cfg();
    c.deployment_id = b"dep".to_vec();
    c.instance_id = b"inst".to_vec();
    c
}

#[test]
fn restart_restores_identity_agents_channels_and_steps() {
    let store = MemoryStorage::new();
    let (alice_id, bob_id, ch) = {
        let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
        let inbox = Inbox::new();
        let alice = rt.bind_named("alice", |_, _| {}).unwrap();
        let bob = rt.bind_named("bob", inbox.handler()).unwrap();
        let ch = rt.establish_channel(&alice.id(), &bob.id()).unwrap();
        for i in 0..3u8 {
            assert_eq!(alice.send(ch, &[i]).unwrap().step, u64::from(i));
        }
        inbox.wait_for(3);
        rt.shutdown();
        (alice.id(), bob.id(), ch)
    };
    let snap = store.load().unwrap().unwrap();
    assert_eq!(snap.channels.len(), 1);
    assert_eq!(snap.channels[0].step, 3);
    assert_eq!(snap.agents.len(), 2);
    assert!(snap.sg.is_some());

    let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
    assert_eq!(rt.identity(), RuntimeId::derive(b"dep", b"inst"));
    assert_eq!(rt.agent_state(&alice_id).unwrap(), AgentState::Active);
    assert_eq!(rt.agent_counter(), 2);
    let mut detached = rt.detached_agents();
    detached.sort_by_key(|d| d.1.clone());
    assert_eq!(detached, vec![(alice_id, Some("alice".into())), (bob_id, Some("bob".into()))]);
    let inbox = Inbox::new();
    let alice = rt.attach_named("alice", |_, _| {}).unwrap();
    // A second attach is refused.
    assert_eq!(rt.attach(&alice_id, |_, _| {}).unwrap_err(), Error::AlreadyAttached(alice_id));
    // Bob gets a message while detached: it waits in his mailbox until he is attached.
    let r = alice.send(ch, b"after restart").unwrap();
    assert_eq!(r.step, 3);
    let _bob = rt.attach_named("bob", inbox.handler()).unwrap();
    let got = inbox.wait_for(1);
    assert_eq!(got[0].payload, b"after restart");
    assert_eq!(got[0].step, 3);
    rt.shutdown();
    assert_eq!(store.load().unwrap().unwrap().channels[0].step, 4);
}

/// Waits (bounded) until every handled message's removal from the stored inbox is written.
fn wait_inbox_written(store: &MemoryStorage) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.load().unwrap().unwrap().deliveries.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the inbox removals were not written within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_failed_write_fails_the_send_and_moves_nothing() {
    let store = MemoryStorage::new();
    let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
    let inbox = Inbox::new();
    let alice = rt.bind(|_, _| {}).unwrap();
    let bob = rt.bind(inbox.handler()).unwrap();
    let ch = rt.establish_channel(&alice.id(), &bob.id()).unwrap();
    assert_eq!(alice.send(ch, b"one").unwrap().step, 0);
    // The removal of a handled message from the inbox is a batch of its own, submitted
    // after the handler returned: it must be written before the failure is armed, or it
    // takes the failure meant for the next send.
    inbox.wait_for(1);
    wait_inbox_written(&store);
    store.fail_next(1);
    let err = alice.send(ch, b"lost").unwrap_err();
    assert!(matches!(err, Error::Storage(StorageError::Backend(_))), "{err:?}");
    assert_eq!(rt.metrics().storage_failures.get(), 1);
    // Nothing moved: the next send uses step 1 and the failed payload was never delivered.
    assert_eq!(alice.send(ch, b"two").unwrap().step, 1);
    let got = inbox.wait_for(2);
    assert_eq!(got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(store.load().unwrap().unwrap().channels[0].step, 2);
    // Administrative operations fail closed too (once the removal of "two" is written).
    wait_inbox_written(&store);
    store.fail_next(1);
    assert!(matches!(rt.establish_channel(&alice.id(), &bob.id()), Err(Error::Storage(_))));
    assert_eq!(rt.channel_count(), 1);
    store.fail_next(1);
    assert!(matches!(rt.bind(|_, _| {}), Err(Error::Storage(_))));
    assert_eq!(rt.agent_count(), 2);
    rt.shutdown();
}

#[test]
fn fail_open_keeps_sending_and_counts_failures() {
    let store = MemoryStorage::new();
    let config = {
        let mut c = persistent_cfg();
        c.storage_fail_open = true;
        c
    };
    let rt = Runtime::builder(config).storage(store.clone()).build().unwrap();
    let alice = rt.bind(|_, _| {}).unwrap();
    let bob = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&alice.id(), &bob.id()).unwrap();
    store.fail_next(1);
    assert_eq!(alice.send(ch, b"x").unwrap().step, 0);
    assert_eq!(rt.metrics().storage_failures.get(), 1);
    assert_eq!(alice.send(ch, b"y").unwrap().step, 1);
    rt.shutdown();
}

#[test]
fn quarantine_close_and_unbind_survive_a_restart() {
    let store = MemoryStorage::new();
    let (a, b, c) = {
        let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
        let a = rt.bind_named("a", |_, _| {}).unwrap().id();
        let b = rt.bind_named("b", |_, _| {}).unwrap().id();
        let c = rt.bind_named("c", |_, _| {}).unwrap().id();
        let ab = rt.establish_channel(&a, &b).unwrap();
        let bc = rt.establish_channel(&b, &c).unwrap();
        rt.quarantine_agent(&a, "operator says so").unwrap();
        rt.close_channel(&bc).unwrap();
        let _ = ab;
        rt.shutdown();
        (a, b, c)
    };
    let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
    assert_eq!(rt.agent_state(&a).unwrap(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&a).unwrap(), "operator says so");
    assert_eq!(rt.agent_state(&b).unwrap(), AgentState::Active);
    assert_eq!(rt.agent_state(&c).unwrap(), AgentState::Bound);
    assert_eq!(rt.channel_count(), 1);
    // The channel quarantined because of `a` is restored with it.
    rt.restore_agent(&a).unwrap();
    let ch = rt.agent(&a).unwrap().channels().unwrap();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].status, ChannelStatus::Active);
    rt.unbind_agent(&c).unwrap();
    rt.shutdown();
    let rt = Runtime::builder(persistent_cfg()).storage(store).build().unwrap();
    assert!(matches!(rt.agent_state(&c), Err(Error::AgentNotBound(_))));
    assert_eq!(rt.agent_count(), 2);
    rt.shutdown();
}

#[test]
fn a_damaged_store_is_refused_with_a_typed_error() {
    let store = MemoryStorage::new();
    let ch = {
        let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
        let a = rt.bind(|_, _| {}).unwrap();
        let b = rt.bind(|_, _| {}).unwrap();
        let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
        a.send(ch, b"x").unwrap();
        rt.shutdown();
        ch
    };
    // A channel state that does not match the stored Sg.
    store.apply(vec![StorageOp::AdvanceChannel { id: ch, state: State::from_bytes([9; 32]), step: 1 }]).wait().unwrap();
    let err = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap_err();
    assert!(matches!(err, Error::Storage(StorageError::Corrupt(_))), "{err:?}");
    // A configuration naming another runtime is refused as well.
    let other = {
        let mut c = persistent_cfg();
        c.instance_id = b"other".to_vec();
        c
    };
    assert!(matches!(Runtime::builder(other).storage(store).build(), Err(Error::Config(_))));
}

#[test]
fn a_random_identity_is_kept_across_restarts() {
    let store = MemoryStorage::new();
    let id = {
        let rt = Runtime::builder(cfg()).storage(store.clone()).build().unwrap();
        let id = rt.identity();
        rt.shutdown();
        id
    };
    let rt = Runtime::builder(cfg()).storage(store).build().unwrap();
    assert_eq!(rt.identity(), id);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_sends_with_storage_on_a_multi_threaded_runtime() {
    let store = MemoryStorage::new();
    let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
    let a = rt.bind_async_fn(|_, _| async {}).unwrap();
    let b = rt.bind_async_fn(|_, _| async {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    for i in 0..20u64 {
        assert_eq!(a.send_async(ch, b"x").await.unwrap().step, i);
    }
    assert_eq!(store.load().unwrap().unwrap().channels[0].step, 20);
    rt.shutdown_async().await;
}

#[tokio::test(flavor = "current_thread")]
async fn async_sends_with_storage_on_a_current_thread_runtime() {
    let store = MemoryStorage::new();
    let rt = Runtime::builder(persistent_cfg()).storage(store.clone()).build().unwrap();
    let a = rt.bind_async_fn(|_, _| async {}).unwrap();
    let b = rt.bind_async_fn(|_, _| async {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    for i in 0..5u64 {
        assert_eq!(a.send_async(ch, b"x").await.unwrap().step, i);
    }
    assert_eq!(store.load().unwrap().unwrap().channels[0].step, 5);
    rt.shutdown_async().await;
}

/// A store that applies every batch to a model of the committed state, in the order the
/// batches are submitted, and checks each batch's Sg against the Merkle root of the channel
/// states committed so far (what a crash right after that batch would leave on disk).
#[derive(Clone, Default)]
struct SgOrderChecker(std::sync::Arc<std::sync::Mutex<SgModel>>);

#[derive(Default)]
struct SgModel {
    states: std::collections::BTreeMap<mfp_core::ChannelId, State>,
    batches: usize,
    sg_batches: usize,
    mismatches: usize,
}

impl Storage for SgOrderChecker {
    fn load(&self) -> Result<Option<mfp_runtime::storage::Snapshot>, StorageError> {
        Ok(None)
    }

    fn apply(&self, ops: Vec<StorageOp>) -> mfp_runtime::storage::Ticket {
        let mut m = self.0.lock().unwrap();
        m.batches += 1;
        for op in ops {
            match op {
                StorageOp::PutChannel(c) => {
                    m.states.insert(c.id, c.state);
                }
                StorageOp::AdvanceChannel { id, state, .. } => {
                    m.states.insert(id, state);
                }
                StorageOp::CloseChannel(id) => {
                    m.states.remove(&id);
                }
                StorageOp::Sg(sg) => {
                    m.sg_batches += 1;
                    let root = mfp_core::MerkleSg::from_states(m.states.iter().map(|(c, s)| (*c, s))).unwrap().root();
                    if root != sg {
                        m.mismatches += 1;
                    }
                }
                _ => {}
            }
        }
        mfp_runtime::storage::Ticket::ready(Ok(()))
    }
}

#[test]
fn every_submitted_sg_is_the_root_of_the_states_submitted_before_it() {
    const SENDERS: usize = 8;
    const MESSAGES: usize = 1500;
    let store = SgOrderChecker::default();
    let rt = std::sync::Arc::new(
        Runtime::builder({
            let mut c = persistent_cfg();
            c.max_message_rate = 0;
            c
        })
        .storage(store.clone())
        .build()
        .unwrap(),
    );
    let bob = rt.bind_named("bob", |_, _| {}).unwrap();
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let a = rt.bind_named(&format!("sender-{i}"), |_, _| {}).unwrap();
        let ch = rt.establish_channel(&a.id(), &bob.id()).unwrap();
        senders.push((a, ch));
    }
    let threads: Vec<_> = senders
        .into_iter()
        .map(|(a, ch)| {
            std::thread::spawn(move || {
                for i in 0..MESSAGES {
                    a.send(ch, &(i as u64).to_be_bytes()).unwrap();
                }
            })
        })
        .collect();
    // Channels established and closed meanwhile submit Sg updates too.
    let churn = {
        let rt = std::sync::Arc::clone(&rt);
        let bob = bob.id();
        std::thread::spawn(move || {
            let c = rt.bind_named("churn", |_, _| {}).unwrap();
            for _ in 0..200 {
                let ch = rt.establish_channel(&c.id(), &bob).unwrap();
                rt.close_channel(&ch).unwrap();
            }
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    churn.join().unwrap();
    rt.shutdown();
    let m = store.0.lock().unwrap();
    assert!(m.sg_batches >= SENDERS * MESSAGES + 400, "{} batches with an Sg", m.sg_batches);
    assert_eq!(
        m.mismatches, 0,
        "{} of {} submitted Sg values differ from the root of the states before them",
        m.mismatches, m.sg_batches
    );
}

/// Channel A's batch fails after channel B's batch — whose Sg counted A's new state — was
/// queued behind it; B's commits. The runtime must then queue the corrected Sg, so the
/// store does not stay (until some later write) with an Sg that matches no committed state.
#[test]
fn a_failed_batch_is_followed_by_the_corrected_sg() {
    let store = ManualStore::default();
    let setup = {
        let store = store.clone();
        std::thread::spawn(move || {
            let rt = Runtime::builder(persistent_cfg()).storage(store).build().unwrap();
            let a = rt.bind(|_, _| {}).unwrap();
            let b = rt.bind(|_, _| {}).unwrap();
            let c = rt.bind(|_, _| {}).unwrap();
            let ab = rt.establish_channel(&a.id(), &b.id()).unwrap();
            let ac = rt.establish_channel(&a.id(), &c.id()).unwrap();
            (rt, a, ab, ac)
        })
    };
    for _ in 0..6 {
        store.complete_next(true); // the metadata, three binds, two establishes
    }
    let (rt, a, ab, ac) = setup.join().unwrap();
    assert!(store.consistent());

    let first = {
        let a = a.clone();
        std::thread::spawn(move || a.send(ab, b"fails"))
    };
    store.wait_pending(1);
    let second = std::thread::spawn(move || a.send(ac, b"commits"));
    store.wait_pending(2);
    store.complete_next(false);
    store.complete_next(true);
    assert!(first.join().unwrap().is_err());
    assert_eq!(second.join().unwrap().unwrap().step, 0);
    // Whatever the runtime queued after the failure commits.
    loop {
        let pending = store.0.0.lock().unwrap().pending.len();
        if pending == 0 {
            break;
        }
        store.complete_next(true);
    }
    assert!(store.consistent(), "the committed Sg is not the root of the committed channel states");
    rt.shutdown();
}
