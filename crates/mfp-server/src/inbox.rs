//! The inbox of an mcp agent: messages the runtime delivered wait here until an MCP host
//! takes them with `mfp_receive`.
//!
//! The runtime has no durable delivery yet, so the only inbox is [`MemoryInbox`]: bounded,
//! in memory, lost when the server stops. When it is full, the runtime's handler waits for
//! room (the runtime's backpressure reaches the sender), and drops the message after
//! [`ENQUEUE_WAIT`], counted and logged like every other agent
//! queue. The MCP side only sees the [`Inbox`] trait, so a durable inbox can replace this one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::adapter::{Incoming, Sink};
use crate::agents::{Counters, ENQUEUE_WAIT, done};

/// A boxed future borrowing the inbox.
pub(crate) type InboxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the MCP tools need from an agent's inbox.
pub(crate) trait Inbox: Send + Sync {
    /// Waits up to `wait` for a message, then takes up to `max` (at least one unless the
    /// wait ended empty). Taken messages are acknowledged: they leave the inbox. Cancel-safe:
    /// dropped before it completes, it takes nothing.
    fn take(&self, max: usize, wait: Duration) -> InboxFuture<'_, Vec<Incoming>>;
    /// Messages waiting.
    fn waiting(&self) -> usize;
    /// A counter that moves whenever a message arrives (for notifications).
    fn arrivals(&self) -> watch::Receiver<u64>;
}

/// The bounded in-memory inbox.
pub(crate) struct MemoryInbox {
    rx: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    /// Kept to measure how full the queue is (the sink holds another).
    tx: mpsc::Sender<Incoming>,
    arrivals: watch::Sender<u64>,
    counters: Arc<Counters>,
}

/// A bounded in-memory inbox for agent `name` and the sink the runtime hands messages to.
pub(crate) fn memory(name: &str, capacity: usize, counters: &Arc<Counters>) -> (Sink, Arc<MemoryInbox>) {
    let (tx, rx) = mpsc::channel::<Incoming>(capacity);
    let (arrivals, _) = watch::channel(0u64);
    let inbox = Arc::new(MemoryInbox { rx: tokio::sync::Mutex::new(rx), tx, arrivals, counters: Arc::clone(counters) });
    let sink_inbox = Arc::clone(&inbox);
    let name = name.to_string();
    let sink: Sink = Arc::new(move |msg: Incoming| {
        let inbox = Arc::clone(&sink_inbox);
        let name = name.clone();
        Box::pin(async move {
            inbox.counters.pending.fetch_add(1, Ordering::AcqRel);
            let ok = match inbox.tx.try_send(msg) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    matches!(tokio::time::timeout(ENQUEUE_WAIT, inbox.tx.send(msg)).await, Ok(Ok(())))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            };
            if ok {
                inbox.counters.in_inboxes.fetch_add(1, Ordering::AcqRel);
                inbox.arrivals.send_modify(|n| *n = n.wrapping_add(1));
            } else {
                inbox.counters.pending.fetch_sub(1, Ordering::AcqRel);
                inbox.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(agent = %name, "message dropped: the mcp agent's inbox stayed full (no MCP host is calling mfp_receive, or raise queue_capacity)");
            }
        })
    });
    (sink, inbox)
}

impl Inbox for MemoryInbox {
    fn take(&self, max: usize, wait: Duration) -> InboxFuture<'_, Vec<Incoming>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            // Concurrent receivers take turns; each waits at most its own `wait`.
            let Ok(mut rx) = tokio::time::timeout_at(deadline, self.rx.lock()).await else { return Vec::new() };
            let mut out = Vec::new();
            match rx.try_recv() {
                Ok(m) => out.push(m),
                Err(_) => {
                    if let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                        out.push(m);
                    }
                }
            }
            while out.len() < max {
                match rx.try_recv() {
                    Ok(m) => out.push(m),
                    Err(_) => break,
                }
            }
            for _ in &out {
                self.counters.in_inboxes.fetch_sub(1, Ordering::AcqRel);
                done(&self.counters);
            }
            out
        })
    }

    fn waiting(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity())
    }

    fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u8) -> Incoming {
        Incoming {
            payload: vec![i],
            sender: "s".into(),
            sender_name: None,
            channel: "c".into(),
            message_id: format!("m{i}"),
            step: u64::from(i),
        }
    }

    #[tokio::test]
    async fn takes_in_order_up_to_max_and_acknowledges() {
        let counters = Arc::new(Counters::default());
        let (sink, inbox) = memory("a", 8, &counters);
        let mut arrivals = inbox.arrivals();
        for i in 0..5 {
            sink(msg(i)).await;
        }
        assert!(arrivals.has_changed().unwrap_or(false));
        assert_eq!(*arrivals.borrow_and_update(), 5);
        assert_eq!(inbox.waiting(), 5);
        let got = inbox.take(3, Duration::ZERO).await;
        assert_eq!(got.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(inbox.waiting(), 2);
        assert_eq!(counters.pending.load(Ordering::Acquire), 2);
        assert_eq!(counters.in_inboxes.load(Ordering::Acquire), 2);
        assert_eq!(counters.delivered.load(Ordering::Acquire), 3);
        let got = inbox.take(10, Duration::ZERO).await;
        assert_eq!(got.len(), 2);
        assert!(inbox.take(10, Duration::ZERO).await.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_receive_gets_the_next_message() {
        let counters = Arc::new(Counters::default());
        let (sink, inbox) = memory("a", 8, &counters);
        let waiter = {
            let inbox = Arc::clone(&inbox);
            tokio::spawn(async move { inbox.take(4, Duration::from_secs(60)).await })
        };
        sink(msg(9)).await;
        let got = waiter.await.unwrap_or_default();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message_id, "m9");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_inbox_drops_after_the_wait() {
        let counters = Arc::new(Counters::default());
        let (sink, inbox) = memory("a", 1, &counters);
        sink(msg(1)).await;
        // Paused time: the enqueue wait elapses without real time passing.
        sink(msg(2)).await;
        assert_eq!(counters.dropped.load(Ordering::Acquire), 1);
        assert_eq!(inbox.waiting(), 1);
        assert_eq!(inbox.take(5, Duration::ZERO).await[0].message_id, "m1");
    }
}
