//! A real runtime on SqliteStorage: messages persist, a restart restores and continues.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mfp_core::MerkleSg;
use mfp_runtime::{AgentState, Runtime, RuntimeConfig};
use mfp_storage::{SqliteStorage, inspect};

fn cfg() -> RuntimeConfig {
    let mut c = RuntimeConfig::default();
    c.deployment_id = b"dep".to_vec();
    c.instance_id = b"e2e".to_vec();
    c
}

fn wait_for(inbox: &Arc<Mutex<Vec<Vec<u8>>>>, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = inbox.lock().unwrap().clone();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn runtime_state_survives_a_restart() {
    let dir = TempDir::new("e2e");
    let path = dir.file("runtime.db");
    let k = key(1);
    let inbox = Arc::new(Mutex::new(Vec::new()));

    let (alice_id, ch) = {
        let rt = Runtime::builder(cfg()).storage(SqliteStorage::open(config(&path, &k)).unwrap()).build().unwrap();
        let seen = Arc::clone(&inbox);
        let alice = rt.bind_named("alice", |_, _| {}).unwrap();
        let bob = rt.bind_named("bob", move |_, m| seen.lock().unwrap().push(m.payload)).unwrap();
        let ch = rt.establish_channel(&alice.id(), &bob.id()).unwrap();
        for i in 0..5u8 {
            assert_eq!(alice.send(ch, &[i]).unwrap().step, u64::from(i));
        }
        assert_eq!(wait_for(&inbox, 5).len(), 5);
        rt.shutdown();
        (alice.id(), ch)
    };

    // What is on disk: 5 steps, a consistent Sg, both agents active.
    let found = inspect(&path, &k).unwrap().snapshot.unwrap();
    assert_eq!(found.channels.len(), 1);
    assert_eq!((found.channels[0].id, found.channels[0].step), (ch, 5));
    let mut tree = MerkleSg::from_states(found.channels.iter().map(|c| (c.id, &c.state))).unwrap();
    assert_eq!(tree.root(), found.sg);
    assert!(found.agents.iter().all(|a| a.state == AgentState::Active));

    // Restart from the same file and continue where it stopped.
    let rt = Runtime::builder(cfg()).storage(SqliteStorage::open(config(&path, &k)).unwrap()).build().unwrap();
    assert_eq!(rt.agent_counter(), 2);
    let alice = rt.attach_named("alice", |_, _| {}).unwrap();
    assert_eq!(alice.id(), alice_id);
    let seen = Arc::clone(&inbox);
    let _bob = rt.attach_named("bob", move |_, m| seen.lock().unwrap().push(m.payload)).unwrap();
    assert_eq!(alice.send(ch, b"after restart").unwrap().step, 5);
    assert_eq!(wait_for(&inbox, 6)[5], b"after restart");
    // Closing the channel wipes its state on disk.
    rt.close_channel(&ch).unwrap();
    rt.shutdown();
    drop(rt);
    let found = inspect(&path, &k).unwrap().snapshot.unwrap();
    assert!(found.channels.is_empty());
    assert_eq!(found.sg, None);
}
