#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Every administrative operation fails closed alike: when its commit fails, it returns
//! the storage error and memory is exactly as before (state, channel statuses, quarantine
//! reason, counts) — and a retry once storage works succeeds. Also: an id collision is
//! reported as such.

#[macro_use]
mod common;

use common::cfg;
use mfp_runtime::storage::MemoryStorage;
use mfp_runtime::{AgentState, ChannelStatus, Error, Runtime};

fn statuses(rt: &Runtime, agent: &mfp_runtime::AgentId) -> Vec<ChannelStatus> {
    let mut ids: Vec<_> = rt.agent(agent).unwrap().channels().unwrap_or_default();
    ids.sort_by_key(|c| c.channel_id);
    ids.into_iter().map(|c| c.status).collect()
}

fn setup() -> (MemoryStorage, Runtime, mfp_runtime::AgentHandle, mfp_runtime::AgentHandle, mfp_runtime::ChannelId) {
    let store = MemoryStorage::new();
    let rt = Runtime::builder(cfg()).storage(store.clone()).build().unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    (store, rt, a, b, ch)
}

#[test]
fn a_failed_quarantine_changes_nothing() {
    let (store, rt, a, _b, ch) = setup();
    store.fail_next(1);
    assert!(matches!(rt.quarantine_agent(&a.id(), "x"), Err(Error::Storage(_))));
    assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Active);
    assert_eq!(rt.quarantine_reason(&a.id()).unwrap(), "");
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
    assert_eq!(a.send(ch, b"still allowed").unwrap().step, 0);
    rt.quarantine_agent(&a.id(), "x").unwrap();
    assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Quarantined);
    rt.shutdown();
}

#[test]
fn a_failed_restore_changes_nothing() {
    let (store, rt, a, b, ch) = setup();
    rt.quarantine_agent(&a.id(), "x").unwrap();
    store.fail_next(1);
    assert!(matches!(rt.restore_agent(&a.id()), Err(Error::Storage(_))));
    assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Quarantined);
    assert_eq!(rt.quarantine_reason(&a.id()).unwrap(), "x");
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Quarantined);
    assert!(matches!(b.send(ch, b"no"), Err(Error::ChannelQuarantined(_))));
    rt.restore_agent(&a.id()).unwrap();
    assert_eq!(statuses(&rt, &a.id()), vec![ChannelStatus::Active]);
    rt.shutdown();
}

#[test]
fn failed_channel_operations_change_nothing() {
    let (store, rt, a, b, ch) = setup();
    store.fail_next(1);
    assert!(matches!(rt.quarantine_channel(&ch, "x"), Err(Error::Storage(_))));
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Active);
    rt.quarantine_channel(&ch, "x").unwrap();
    store.fail_next(1);
    assert!(matches!(rt.restore_channel(&ch), Err(Error::Storage(_))));
    assert_eq!(rt.channel_info(&ch).unwrap().status, ChannelStatus::Quarantined);
    rt.restore_channel(&ch).unwrap();
    store.fail_next(1);
    assert!(matches!(rt.close_channel(&ch), Err(Error::Storage(_))));
    assert_eq!(rt.channel_count(), 1);
    assert_eq!(a.send(ch, b"open").unwrap().step, 0);
    store.fail_next(1);
    assert!(matches!(rt.unbind_agent(&b.id()), Err(Error::Storage(_))));
    assert_eq!(rt.agent_state(&b.id()).unwrap(), AgentState::Active);
    assert_eq!(a.send(ch, b"still open").unwrap().step, 1);
    rt.close_channel(&ch).unwrap();
    assert_eq!(rt.agent_state(&a.id()).unwrap(), AgentState::Bound);
    rt.shutdown();
}

/// A repeating entropy source draws a channel id already in use: its own error, not
/// `Entropy` (the source did not fail), and nothing changes.
#[test]
fn an_id_collision_has_its_own_error_and_changes_nothing() {
    let rt = Runtime::builder(cfg())
        .entropy(mfp_core::FnEntropy(|b: &mut [u8]| {
            b.fill(7);
            Ok(())
        }))
        .build()
        .unwrap();
    let a = rt.bind(|_, _| {}).unwrap();
    let b = rt.bind(|_, _| {}).unwrap();
    let ch = rt.establish_channel(&a.id(), &b.id()).unwrap();
    let err = rt.establish_channel(&a.id(), &b.id()).unwrap_err();
    assert_eq!(err, Error::IdCollision { what: "channel" });
    assert!(err.to_string().contains("entropy source repeats itself"), "{err}");
    assert_eq!(rt.channel_count(), 1);
    assert_eq!(a.send(ch, b"x").unwrap().step, 0);
    rt.shutdown();
}
