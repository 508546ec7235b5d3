#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! The async forms of the administrative calls, on both tokio flavours, with a storage
//! whose commits complete from another thread: every call works, its futures are `Send`
//! (spawned), and what they did survives a restart.

#[macro_use]
mod common;

use std::sync::Arc;

use common::{Inbox, PendingStorage, cfg};
use mfp_runtime::{AgentHandler, AgentState, ChannelStatus, Error, Runtime};

async fn round(store: PendingStorage) {
    let rt = Arc::new(Runtime::builder(cfg()).storage(store.clone()).build().unwrap());
    let inbox = Inbox::new();
    let a = rt.bind_agent_async(Some("a"), AgentHandler::sync(|_, _| {})).await.unwrap();
    let b = rt.bind_agent_async(None, AgentHandler::sync(inbox.handler())).await.unwrap();
    let c = rt.bind_agent_async(None, AgentHandler::async_fn(|_, _| async {})).await.unwrap();
    assert!(matches!(
        rt.bind_agent_async(Some("a"), AgentHandler::sync(|_, _| {})).await,
        Err(Error::DuplicateAgentName(_))
    ));
    // Spawned: the futures are Send.
    let (ra, ida, idb) = (Arc::clone(&rt), a.id(), b.id());
    let ab = tokio::spawn(async move { ra.establish_channel_async(&ida, &idb).await }).await.unwrap().unwrap();
    let bc = rt.establish_channel_with_depth_async(&b.id(), &c.id(), 3).await.unwrap();
    a.send_async(ab, b"one").await.unwrap();
    rt.quarantine_agent_async(&a.id(), "test").await.unwrap();
    assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Quarantined);
    rt.restore_agent_async(&a.id()).await.unwrap();
    rt.quarantine_channel_async(&bc, "test").await.unwrap();
    assert_eq!(rt.channel_info(&bc).unwrap().status, ChannelStatus::Quarantined);
    rt.restore_channel_async(&bc).await.unwrap();
    rt.close_channel_async(&bc).await.unwrap();
    rt.unbind_agent_async(&c.id()).await.unwrap();
    let d = rt.bind_agent_async(None, AgentHandler::sync(|_, _| {})).await.unwrap();
    rt.terminate_agent_async(&d.id()).await.unwrap();
    a.send_async(ab, b"two").await.unwrap();
    assert!(rt.wait_idle_async(common::WAIT).await);
    assert_eq!(inbox.payloads(), vec![b"one".to_vec(), b"two".to_vec()]);
    rt.quarantine_agent_async(&b.id(), "kept").await.unwrap();
    rt.shutdown_async().await;
    drop(rt);

    let rt = Runtime::builder(cfg()).storage(store).build().unwrap();
    assert_eq!(rt.agent_count(), 2);
    assert_eq!(rt.channel_count(), 1);
    assert_eq!(rt.agent_state(&b.id()).unwrap(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&b.id()).unwrap(), "kept");
    let a2 = rt.attach_agent_async(&a.id(), AgentHandler::sync(|_, _| {})).await.unwrap();
    assert_eq!(a2.name(), Some("a"));
    assert!(matches!(
        rt.attach_agent_async(&a.id(), AgentHandler::sync(|_, _| {})).await,
        Err(Error::AlreadyAttached(_))
    ));
    rt.shutdown_async().await;
}

#[tokio::test(flavor = "current_thread")]
async fn async_admin_on_a_current_thread_runtime() {
    tokio::time::timeout(std::time::Duration::from_secs(20), round(PendingStorage::new())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_admin_on_a_multi_threaded_runtime() {
    tokio::time::timeout(std::time::Duration::from_secs(20), round(PendingStorage::new())).await.unwrap();
}
