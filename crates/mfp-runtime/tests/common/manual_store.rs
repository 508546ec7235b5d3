//! A store whose batches wait until the test completes them.

use mfp_core::State;
use mfp_runtime::storage::{Storage, StorageError, StorageOp};

/// A store whose batches wait until the test completes them, one by one, in submission
/// order (as the SQLite writer commits them), failing the ones it chooses. The model holds
/// what was committed.
#[derive(Clone, Default)]
pub(crate) struct ManualStore(pub(crate) std::sync::Arc<(std::sync::Mutex<ManualQueue>, std::sync::Condvar)>);

#[derive(Default)]
pub(crate) struct ManualQueue {
    pub(crate) pending: std::collections::VecDeque<(Vec<StorageOp>, mfp_runtime::storage::TicketSender)>,
    states: std::collections::BTreeMap<mfp_core::ChannelId, State>,
    sg: Option<State>,
    /// Cross-runtime channels: the committed outbound chain.
    remote_tx: std::collections::BTreeMap<mfp_core::ChannelId, mfp_core::bilateral::BilateralState>,
    /// Cross-runtime channels: the committed outbound log (channel, step).
    outbound: std::collections::BTreeSet<(mfp_core::ChannelId, u64)>,
    /// Commit every batch at once (for setting up).
    auto: bool,
}

/// Applies a committed batch to the model.
fn commit(q: &mut ManualQueue, ops: Vec<StorageOp>) {
    for op in ops {
        match op {
            StorageOp::PutChannel(c) => {
                q.states.insert(c.id, c.state);
            }
            StorageOp::AdvanceChannel { id, state, .. } => {
                q.states.insert(id, state);
            }
            StorageOp::CloseChannel(id) => {
                q.states.remove(&id);
                q.remote_tx.remove(&id);
                q.outbound.retain(|(c, _)| *c != id);
            }
            StorageOp::PutRemoteChannel(r) => {
                q.remote_tx.insert(r.id, r.tx);
            }
            StorageOp::AdvanceRemoteTx { id, tx, .. } => {
                q.remote_tx.insert(id, tx);
            }
            StorageOp::PutOutbound(row) => {
                q.outbound.insert((row.channel, row.step));
            }
            StorageOp::AckOutbound { channel, next } => {
                q.outbound.retain(|(c, s)| *c != channel || *s >= next);
            }
            StorageOp::TruncateOutbound { channel, from } => {
                q.outbound.retain(|(c, s)| *c != channel || *s < from);
            }
            StorageOp::Sg(sg) => q.sg = sg,
            _ => {}
        }
    }
}

impl ManualStore {
    /// Waits until at least `n` batches are pending.
    pub(crate) fn wait_pending(&self, n: usize) {
        let (lock, cv) = &*self.0;
        let deadline = std::time::Instant::now() + super::WAIT;
        let mut q = lock.lock().unwrap();
        while q.pending.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "expected {n} pending batches, have {}", q.pending.len());
            q = cv.wait_timeout(q, left).unwrap().0;
        }
    }

    /// Commits (or fails) the oldest pending batch.
    pub(crate) fn complete_next(&self, ok: bool) {
        self.complete_nth(0, ok);
    }

    /// Commits (or fails) the `n`-th oldest pending batch (a store must commit in order;
    /// completing out of order shows what a runtime does when completions are seen late).
    pub(crate) fn complete_nth(&self, n: usize, ok: bool) {
        self.wait_pending(n + 1);
        let (ops, done) = self.0.0.lock().unwrap().pending.remove(n).unwrap();
        if ok {
            commit(&mut self.0.0.lock().unwrap(), ops);
            done.complete(Ok(()));
        } else {
            done.complete(Err(StorageError::Backend("injected failure".into())));
        }
    }

    /// Commits every batch at once from now on (`true`), or waits for the test (`false`).
    pub(crate) fn set_auto(&self, auto: bool) {
        self.0.0.lock().unwrap().auto = auto;
    }

    /// How many batches are pending.
    pub(crate) fn pending(&self) -> usize {
        self.0.0.lock().unwrap().pending.len()
    }

    /// Pending batches that advance a channel (sends; not the removals of handled messages
    /// a delivery worker submits on its own).
    pub(crate) fn pending_sends(&self) -> usize {
        self.0
            .0
            .lock()
            .unwrap()
            .pending
            .iter()
            .filter(|(ops, _)| ops.iter().any(|op| matches!(op, StorageOp::AdvanceChannel { .. })))
            .count()
    }

    /// Completes every pending batch (successfully).
    pub(crate) fn complete_all(&self) {
        while self.pending() > 0 {
            self.complete_next(true);
        }
    }

    /// The committed state of a channel.
    pub(crate) fn state_of(&self, id: &mfp_core::ChannelId) -> Option<State> {
        self.0.0.lock().unwrap().states.get(id).cloned()
    }

    /// The committed outbound chain of a cross-runtime channel.
    pub(crate) fn remote_tx_of(&self, id: &mfp_core::ChannelId) -> Option<mfp_core::bilateral::BilateralState> {
        self.0.0.lock().unwrap().remote_tx.get(id).cloned()
    }

    /// The steps of a cross-runtime channel's committed outbound log.
    pub(crate) fn outbound_of(&self, id: &mfp_core::ChannelId) -> Vec<u64> {
        self.0.0.lock().unwrap().outbound.iter().filter(|(c, _)| c == id).map(|(_, s)| *s).collect()
    }

    /// Whether the committed Sg is the root of the committed channel states.
    pub(crate) fn consistent(&self) -> bool {
        let q = self.0.0.lock().unwrap();
        mfp_core::MerkleSg::from_states(q.states.iter().map(|(c, s)| (*c, s))).unwrap().root() == q.sg
    }
}

impl Storage for ManualStore {
    fn load(&self) -> Result<Option<mfp_runtime::storage::Snapshot>, StorageError> {
        Ok(None)
    }

    fn apply(&self, ops: Vec<StorageOp>) -> mfp_runtime::storage::Ticket {
        let (lock, cv) = &*self.0;
        let mut q = lock.lock().unwrap();
        if q.auto {
            commit(&mut q, ops);
            return mfp_runtime::storage::Ticket::ready(Ok(()));
        }
        let (done, ticket) = mfp_runtime::storage::Ticket::pending();
        q.pending.push_back((ops, done));
        drop(q);
        cv.notify_all();
        ticket
    }
}
