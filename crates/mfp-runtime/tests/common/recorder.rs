//! Two runtimes joined by hand: a transport that records what a runtime hands over (the
//! test carries it), and one side of such a pair — a runtime, its recorder, one agent and
//! its inbox.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use mfp_runtime::remote::{OutboundMessage, OutboundSlot, ReadyFuture, Transport, TransportError};
use mfp_runtime::storage::Storage;
use mfp_runtime::{AgentHandle, Runtime, RuntimeConfig, RuntimeId};

use super::{Inbox, WAIT};

/// What a runtime handed to its transport, in hand-over order. Reservations always succeed.
#[derive(Clone, Default)]
pub(crate) struct Recorder(Arc<(Mutex<Vec<OutboundMessage>>, Condvar)>);

struct Slot(Recorder);

impl OutboundSlot for Slot {
    fn send(self: Box<Self>, message: OutboundMessage) {
        let (lock, cv) = &*self.0.0;
        lock.lock().unwrap().push(message);
        cv.notify_all();
    }
}

impl Transport for Recorder {
    fn reserve(&self, _peer: &RuntimeId, _len: usize) -> Result<Box<dyn OutboundSlot>, TransportError> {
        Ok(Box::new(Slot(self.clone())))
    }

    fn ready(&self, _peer: &RuntimeId) -> ReadyFuture {
        Box::pin(std::future::ready(()))
    }
}

impl Recorder {
    /// Everything handed over so far.
    pub(crate) fn sent(&self) -> Vec<OutboundMessage> {
        self.0.0.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages were handed over (at most `WAIT`).
    pub(crate) fn wait_for(&self, n: usize) -> Vec<OutboundMessage> {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + WAIT;
        let mut g = lock.lock().unwrap();
        while g.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "expected {n} messages handed to the transport, have {}", g.len());
            g = cv.wait_timeout(g, left).unwrap().0;
        }
        g.clone()
    }
}

/// One side: a runtime, its transport, one agent (`agent`) and its inbox.
pub(crate) struct Side {
    pub(crate) rt: Runtime,
    pub(crate) wire: Recorder,
    pub(crate) agent: AgentHandle,
    pub(crate) inbox: Inbox,
}

/// A side with `config`, on `store` if given (in memory otherwise).
pub(crate) fn side(config: RuntimeConfig, store: Option<impl Storage + 'static>) -> Side {
    let mut b = Runtime::builder(config);
    if let Some(s) = store {
        b = b.storage(s);
    }
    let rt = b.build().unwrap();
    let wire = Recorder::default();
    rt.attach_transport(Arc::new(wire.clone())).unwrap();
    let inbox = Inbox::new();
    let agent = rt.bind_named("agent", inbox.handler()).unwrap();
    Side { rt, wire, agent, inbox }
}
