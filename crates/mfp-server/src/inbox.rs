//! The inbox of an mcp agent: the message the runtime delivered waits here until an MCP
//! host takes it with `mfp_receive`.
//!
//! The runtime's handler waits until the message is taken: only then is it acknowledged to
//! the runtime (with storage, it leaves the durable inbox then). Until it is taken, it is
//! durable — a server that stops or crashes delivers it again at the next start; once
//! `mfp_receive` has taken it, it is the host's (at most once to the host: an answer lost
//! on the way to the host is not sent again). The runtime hands over one message of an
//! agent at a time, so this in-memory part holds at most one; the rest wait in the
//! runtime's mailbox. The MCP side only sees the [`Inbox`] trait.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::adapter::{Incoming, Sink};
use crate::agents::Counters;

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
    /// Taken and acknowledged, not yet returned to a host.
    held: parking_lot::Mutex<std::collections::VecDeque<Incoming>>,
}

/// A bounded in-memory inbox for agent `name` and the sink the runtime hands messages to.
pub(crate) fn memory(name: &str, capacity: usize, counters: &Arc<Counters>) -> (Sink, Arc<MemoryInbox>) {
    let (tx, rx) = mpsc::channel::<Incoming>(capacity);
    let (arrivals, _) = watch::channel(0u64);
    let inbox = Arc::new(MemoryInbox {
        rx: tokio::sync::Mutex::new(rx),
        tx,
        arrivals,
        counters: Arc::clone(counters),
        held: parking_lot::Mutex::default(),
    });
    let sink_inbox = Arc::clone(&inbox);
    let name = name.to_string();
    let sink: Sink = Arc::new(move |msg: Incoming| {
        let inbox = Arc::clone(&sink_inbox);
        let name = name.clone();
        Box::pin(async move {
            inbox.counters.pending.fetch_add(1, Ordering::AcqRel);
            if inbox.tx.send(msg).await.is_ok() {
                inbox.counters.in_inboxes.fetch_add(1, Ordering::AcqRel);
                inbox.arrivals.send_modify(|n| *n = n.wrapping_add(1));
            } else {
                inbox.counters.pending.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(agent = %name, "the mcp agent's inbox is closed; the message is not acknowledged");
            }
        })
    });
    (sink, inbox)
}

/// After a message was taken, how long `take` waits for the runtime to hand over the next
/// one (it does so only once the previous one was acknowledged), to fill a batch.
const BATCH_LINGER: Duration = Duration::from_millis(20);

impl MemoryInbox {
    /// Acknowledges `m` to the runtime (the host is about to get it) and holds it until
    /// `take` returns.
    fn hold(&self, mut m: Incoming) {
        std::mem::replace(&mut m.done, crate::adapter::Done::none()).ack();
        self.held.lock().push_back(m);
    }
}

impl Inbox for MemoryInbox {
    fn take(&self, max: usize, wait: Duration) -> InboxFuture<'_, Vec<Incoming>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            // Concurrent receivers take turns; each waits at most its own `wait`.
            let Ok(mut rx) = tokio::time::timeout_at(deadline, self.rx.lock()).await else { return Vec::new() };
            // Messages acknowledged by a take that was dropped before it returned go first.
            if self.held.lock().is_empty() {
                let first = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
                };
                let Some(m) = first else { return Vec::new() };
                self.hold(m);
            }
            // Each message taken is acknowledged at once, so the runtime hands over the next:
            // a batch gathers what follows closely, bounded by `max` and the caller's wait.
            // Until returned, they are held here, so a take dropped meanwhile loses nothing.
            while self.held.lock().len() < max {
                let linger = (tokio::time::Instant::now() + BATCH_LINGER).min(deadline);
                let next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) => tokio::time::timeout_at(linger, rx.recv()).await.ok().flatten(),
                };
                match next {
                    Some(m) => self.hold(m),
                    None => break,
                }
            }
            let mut held = self.held.lock();
            let n = held.len().min(max);
            let out: Vec<Incoming> = held.drain(..n).collect();
            for _ in &out {
                self.counters.in_inboxes.fetch_sub(1, Ordering::AcqRel);
                self.counters.pending.fetch_sub(1, Ordering::AcqRel);
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            out
        })
    }

    fn waiting(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity()) + self.held.lock().len()
    }

    fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn msg(i: u8) -> (Incoming, oneshot::Receiver<()>) {
        let (done, acked) = crate::adapter::Done::new();
        let m = Incoming {
            payload: vec![i],
            sender: "s".into(),
            sender_name: None,
            channel: "c".into(),
            message_id: format!("m{i}"),
            step: u64::from(i),
            redelivered: false,
            done,
        };
        (m, acked)
    }

    #[tokio::test]
    async fn takes_in_order_up_to_max_and_acknowledges_only_when_taken() {
        let counters = Arc::new(Counters::default());
        let (sink, inbox) = memory("a", 8, &counters);
        let mut arrivals = inbox.arrivals();
        let mut acks = Vec::new();
        for i in 0..5 {
            let (m, acked) = msg(i);
            sink(m).await;
            acks.push(acked);
        }
        assert!(arrivals.has_changed().unwrap_or(false));
        assert_eq!(*arrivals.borrow_and_update(), 5);
        assert_eq!(inbox.waiting(), 5);
        for a in &mut acks {
            assert!(a.try_recv().is_err(), "acknowledged before a host took it");
        }
        let got = inbox.take(3, Duration::ZERO).await;
        assert_eq!(got.iter().map(|m| m.payload[0]).collect::<Vec<_>>(), [0, 1, 2]);
        for (i, a) in acks.iter_mut().enumerate() {
            assert_eq!(a.try_recv().is_ok(), i < 3, "message {i}");
        }
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
        let (m, acked) = msg(9);
        sink(m).await;
        let got = waiter.await.unwrap_or_default();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message_id, "m9");
        assert!(acked.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_take_dropped_while_gathering_loses_nothing() {
        let counters = Arc::new(Counters::default());
        let (sink, inbox) = memory("a", 8, &counters);
        let (m, _acked) = msg(1);
        sink(m).await;
        {
            // Taken and acknowledged, then dropped while it waits for a second message.
            let mut take = inbox.take(5, Duration::from_secs(60));
            assert!(futures_poll_once(&mut take).await.is_none());
        }
        assert_eq!(inbox.waiting(), 1);
        let got = inbox.take(5, Duration::ZERO).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message_id, "m1");
    }

    /// Polls a future once.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
