//! The link with one peer: its slot (the session, shared with callers under a lock) and
//! the I/O task of the connection that owns the session.

use core::time::Duration;
use std::sync::Arc;
use std::time::Instant;

use mfp_core::RuntimeId;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use super::gate::FrameGate;
use super::glue::{self, Carry};
use super::stats::{NetStats, PeerCounters};
use super::{NetEvent, PeerConfig, Shared};
use crate::handshake::{Accepted, Established, HandshakeError, Timestamp};
use crate::identity::PublicKey;
use crate::session::{Event, Session};

/// Bytes taken from the session into the write buffer before the task writes some out.
const MAX_PENDING_OUT: usize = 256 * 1024;
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// The link with one configured peer.
pub(super) struct PeerSlot {
    pub(super) runtime: RuntimeId,
    pub(super) key: PublicKey,
    pub(super) endpoint: Option<String>,
    state: Mutex<SlotState>,
    /// Notified (all waiters) when the transmit bytes drained or the link went down.
    pub(super) drained: Notify,
    /// Whether a session is established.
    pub(super) up: watch::Sender<bool>,
    pub(super) counters: PeerCounters,
}

struct SlotState {
    session: Option<Session>,
    /// What the link keeps while no session holds it.
    carry: Option<Carry>,
    /// The connection owning the session (0: none) and how to wake its task.
    owner: u64,
    owner_wake: Option<Arc<Notify>>,
    /// Whether the owning connection was initiated by the runtime with the lower id.
    lower_initiated: bool,
    /// Last bytes for connections whose session was replaced: (connection, bytes).
    farewells: Vec<(u64, Vec<u8>)>,
    /// Whether everything the session had to send has been written.
    drained: bool,
    /// The greatest timestamp this side put in a message 1 to the peer.
    last_sent_ts: Option<Timestamp>,
}

/// How a handshake ended, to be installed as the pair's session.
pub(super) enum Completed {
    /// This side dialled; `received` is what its message 1 said it had received.
    Initiator { est: Box<Established>, received: u64 },
    /// This side answers: message 2 is written while the slot is locked.
    Responder(Box<Accepted>),
}

/// Why a completed handshake did not become the pair's session.
#[derive(Debug)]
pub(super) enum InstallError {
    /// The pair keeps its link initiated by the lower runtime id.
    Duplicate,
    /// The positions exchanged in the handshake no longer fit this side's.
    Moved,
    /// Message 2 could not be written.
    Handshake(HandshakeError),
    /// The session refused the handshake's result (positions, configuration).
    Session(String),
}

impl core::fmt::Display for InstallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InstallError::Duplicate => {
                f.write_str("the pair already has its link (the one initiated by the lower runtime id)")
            }
            InstallError::Moved => f.write_str("this side's position changed during the handshake; redialling"),
            InstallError::Handshake(e) => write!(f, "{e}"),
            InstallError::Session(e) => write!(f, "the session refused the handshake: {e}"),
        }
    }
}

/// A session installed for a connection: what its I/O task starts with.
pub(super) struct Installed {
    pub(super) conn: u64,
    pub(super) wake: Arc<Notify>,
    /// Bytes to send first (message 2 on the responder).
    pub(super) first_out: Vec<u8>,
    /// Events to emit before the task runs (a replaced session's last events, Down, Up).
    pub(super) events: Vec<NetEvent>,
}

impl PeerSlot {
    pub(super) fn new(local: RuntimeId, cfg: &PeerConfig) -> Self {
        Self {
            runtime: cfg.runtime,
            key: cfg.key,
            endpoint: cfg.endpoint.clone(),
            state: Mutex::new(SlotState {
                session: None,
                carry: Some(glue::new_carry(local, cfg.runtime)),
                owner: 0,
                owner_wake: None,
                lower_initiated: false,
                farewells: Vec::new(),
                drained: true,
                last_sent_ts: None,
            }),
            drained: Notify::new(),
            up: watch::Sender::new(false),
            counters: PeerCounters::default(),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.state.lock().session.as_ref().is_some_and(|s| !s.is_closed())
    }

    pub(super) fn is_drained_or_down(&self) -> bool {
        let st = self.state.lock();
        st.drained || st.session.as_ref().is_none_or(Session::is_closed)
    }

    pub(super) fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let (r, wake) = {
            let mut st = self.state.lock();
            let session = st.session.as_mut().filter(|s| !s.is_closed())?;
            let r = f(session);
            st.drained = false;
            (r, st.owner_wake.clone())
        };
        if let Some(w) = wake {
            w.notify_one();
        }
        Some(r)
    }

    /// The timestamp for the next message 1 to the peer (strictly above the previous one,
    /// even if the wall clock went back) and this side's received count for it.
    pub(super) fn next_dial(&self, wall: Timestamp) -> (Timestamp, u64) {
        let mut st = self.state.lock();
        let ts = match st.last_sent_ts {
            Some(prev) if wall <= prev => {
                let nanos = prev.nanos + 1;
                if nanos >= 1_000_000_000 {
                    Timestamp { secs: prev.secs.saturating_add(1), nanos: 0 }
                } else {
                    Timestamp { secs: prev.secs, nanos }
                }
            }
            _ => wall,
        };
        st.last_sent_ts = Some(ts);
        (ts, glue::received(st.carry.as_ref(), st.session.as_ref()))
    }

    /// Installs a completed handshake as the pair's session, or refuses it (one link per
    /// pair). `initiator_is_lower`: whether the connection was initiated by the runtime
    /// with the lower id.
    pub(super) fn install(
        &self,
        shared: &Shared,
        completed: Completed,
        initiator_is_lower: bool,
        now: Instant,
    ) -> Result<Installed, (InstallError, Vec<NetEvent>)> {
        let conn = shared.next_conn_id();
        let wake = Arc::new(Notify::new());
        let mut events = Vec::new();
        let mut st = self.state.lock();
        let live = st.session.as_ref().is_some_and(|s| !s.is_closed());
        if live && st.lower_initiated && !initiator_is_lower {
            return Err((InstallError::Duplicate, events));
        }
        let received = glue::received(st.carry.as_ref(), st.session.as_ref());
        if let Completed::Initiator { received: sent, .. } = &completed
            && *sent != received
        {
            return Err((InstallError::Moved, events));
        }
        // Replace what the pair had: close it, hand its last bytes to its connection.
        let carry = match st.session.take() {
            Some(mut old) => {
                old.close();
                let mut bytes = Vec::new();
                while let Some(b) = old.poll_transmit(now) {
                    bytes.extend_from_slice(&b);
                }
                while let Some(event) = old.poll_event() {
                    events.push(NetEvent::Session { peer: self.runtime, event });
                }
                if st.owner != 0 {
                    let owner = st.owner;
                    st.farewells.push((owner, bytes));
                    if let Some(w) = st.owner_wake.take() {
                        w.notify_one();
                    }
                    NetStats::dec(&shared.stats.sessions_active);
                    if live {
                        NetStats::inc(&shared.stats.sessions_replaced);
                    }
                    let reason = if live { "replaced by a new connection with the peer" } else { "the session closed" };
                    events.push(NetEvent::Down { peer: self.runtime, reason: reason.into() });
                }
                glue::retire(old)
            }
            None => st.carry.take().unwrap_or_else(|| glue::new_carry(shared.local(), self.runtime)),
        };
        st.owner = 0;
        let (est, first_out) = match completed {
            Completed::Initiator { est, .. } => (*est, Vec::new()),
            Completed::Responder(accepted) => match shared.cfg.entropy.with(|e| glue::finish(*accepted, received, e)) {
                Ok(done) => done,
                Err(e) => {
                    st.carry = Some(carry);
                    self.set_down();
                    drop(st);
                    return Err((InstallError::Handshake(e), events));
                }
            },
        };
        match glue::open(est, carry, shared.cfg.session, now) {
            Ok(session) => {
                st.session = Some(session);
                st.owner = conn;
                st.owner_wake = Some(wake.clone());
                st.lower_initiated = initiator_is_lower;
                st.drained = false;
            }
            Err(refused) => {
                let (why, carry) = *refused;
                st.carry = Some(carry);
                self.set_down();
                drop(st);
                return Err((InstallError::Session(why), events));
            }
        }
        // Counted and announced under the lock, as the replacement and the release that
        // undo them are: a concurrent install replacing this session must find it counted
        // (the count saturates at 0), and a release's Down must not land after this Up.
        self.up.send_replace(true);
        NetStats::inc(&shared.stats.sessions_established);
        NetStats::inc(&shared.stats.sessions_active);
        NetStats::inc(&self.counters.sessions);
        drop(st);
        events.push(NetEvent::Up { peer: self.runtime });
        Ok(Installed { conn, wake, first_out, events })
    }

    fn set_down(&self) {
        self.up.send_replace(false);
        self.drained.notify_waiters();
    }

    /// Ends `conn`'s ownership of the session, if it still has it. Returns whether it
    /// did (then the caller reports Down).
    fn release(&self, shared: &Shared, conn: u64) -> bool {
        let mut st = self.state.lock();
        st.farewells.retain(|(c, _)| *c != conn);
        if st.owner != conn {
            return false;
        }
        st.owner = 0;
        st.owner_wake = None;
        if let Some(session) = st.session.take() {
            st.carry = Some(glue::retire(session));
        }
        NetStats::dec(&shared.stats.sessions_active);
        self.set_down();
        drop(st);
        true
    }
}

/// The write side's buffer.
struct OutBuf {
    bytes: Vec<u8>,
    pos: usize,
    /// When the current write started waiting (for the write timeout).
    since: Option<Instant>,
}

impl OutBuf {
    fn pending(&self) -> &[u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn push(&mut self, b: &[u8], now: Instant) {
        if b.is_empty() {
            return;
        }
        if self.is_empty() {
            self.since = Some(now);
        }
        self.bytes.extend_from_slice(b);
    }

    fn advance(&mut self, n: usize, now: Instant) {
        self.pos += n;
        if self.is_empty() {
            self.bytes.clear();
            self.pos = 0;
            self.since = None;
        } else {
            if self.pos > 64 * 1024 {
                self.bytes.drain(..self.pos);
                self.pos = 0;
            }
            self.since = Some(now);
        }
    }
}

/// Runs the connection that owns `installed`'s session until it ends. `leftover`: bytes
/// read after the handshake frame, for the session.
pub(super) async fn run(shared: &Shared, slot: &PeerSlot, stream: TcpStream, installed: Installed, leftover: Vec<u8>) {
    let Installed { conn, wake, first_out, events } = installed;
    for ev in events {
        shared.emit(ev).await;
    }
    let peer = slot.runtime;
    let cfg = &shared.cfg;
    let (mut rd, mut wr) = stream.into_split();
    let mut out = OutBuf { bytes: Vec::new(), pos: 0, since: None };
    let start = Instant::now();
    out.push(&first_out, start);
    let mut gate = FrameGate::new(cfg.max_frame_body);
    let mut frame_started: Option<Instant> = None;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut shutdown = shared.shutdown.clone();
    let mut shutting_down = false;
    let mut reason: Option<String> = None;
    let mut pending_input = leftover;
    let mut pending_events = Vec::new();
    let mut replaced = false;
    // The last read or write, for `busy_poll`.
    let mut last_io = start;

    loop {
        let now = Instant::now();
        let mut failure: Option<String> = None;
        if !pending_input.is_empty() {
            match gate.feed(&pending_input) {
                Err(e) => {
                    NetStats::inc(&shared.stats.frames_refused);
                    failure = Some(format!("link stream refused: {e}"));
                }
                // The read timeout runs from the first byte of the frame still incomplete.
                Ok(_) if !gate.mid_frame() => frame_started = None,
                Ok(true) => frame_started = Some(now),
                Ok(false) => frame_started = frame_started.or(Some(now)),
            }
        }
        let (closed, timer, notify) = {
            let mut st = slot.state.lock();
            if st.owner != conn {
                if let Some(i) = st.farewells.iter().position(|(c, _)| *c == conn) {
                    let (_, bytes) = st.farewells.swap_remove(i);
                    out.push(&bytes, now);
                }
                replaced = true;
                break;
            }
            let Some(session) = st.session.as_mut() else { break };
            if let Some(why) = failure.take() {
                reason.get_or_insert(why);
                session.close();
            } else if !pending_input.is_empty() {
                session.handle_input(now, &pending_input);
            }
            pending_input.clear();
            if shutting_down {
                session.close();
            }
            // Timers are run here, not only when their sleep fires: a due keepalive that
            // cannot be sent while the write buffer is full must not wake the task again
            // and again.
            if session.poll_timeout().is_some_and(|t| t <= now) {
                session.handle_timeout(now);
            }
            let mut exhausted = false;
            while out.pending().len() < MAX_PENDING_OUT {
                match session.poll_transmit(now) {
                    Some(b) => out.push(&b, now),
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
            while let Some(event) = session.poll_event() {
                if let Event::Closed(why) = &event {
                    reason.get_or_insert_with(|| why.to_string());
                }
                pending_events.push(event);
            }
            let closed = session.is_closed();
            let timer = session.poll_timeout();
            let now_drained = exhausted && out.is_empty();
            let notify = now_drained && !st.drained;
            st.drained = now_drained;
            (closed, timer, notify)
        };
        if notify {
            slot.drained.notify_waiters();
        }
        for event in pending_events.drain(..) {
            shared.emit(NetEvent::Session { peer, event }).await;
        }
        if closed && out.is_empty() {
            break;
        }
        let far = now + Duration::from_secs(86_400);
        let read_deadline = frame_started.map_or(far, |t| t + cfg.read_timeout);
        let write_deadline = out.since.map_or(far, |t| t + cfg.write_timeout);
        let timer = timer.unwrap_or(far);
        let spinning = !closed && now < last_io + cfg.busy_poll;
        tokio::select! {
            r = rd.read(&mut buf), if !closed => match r {
                Ok(0) => {
                    reason.get_or_insert_with(|| "the peer closed the connection".into());
                    break;
                }
                Ok(n) => {
                    NetStats::add(&shared.stats.bytes_in, n as u64);
                    NetStats::add(&slot.counters.bytes_in, n as u64);
                    pending_input.extend_from_slice(buf.get(..n).unwrap_or_default());
                    last_io = Instant::now();
                }
                Err(e) => {
                    reason.get_or_insert_with(|| format!("read failed: {e}"));
                    break;
                }
            },
            r = wr.write(out.pending()), if !out.is_empty() => match r {
                Ok(0) => {
                    reason.get_or_insert_with(|| "the connection refused more bytes".into());
                    break;
                }
                Ok(n) => {
                    NetStats::add(&shared.stats.bytes_out, n as u64);
                    NetStats::add(&slot.counters.bytes_out, n as u64);
                    out.advance(n, Instant::now());
                    last_io = Instant::now();
                }
                Err(e) => {
                    reason.get_or_insert_with(|| format!("write failed: {e}"));
                    break;
                }
            },
            () = wake.notified() => {}
            // Busy polling: `yield_now` has the worker poll its I/O driver without waiting
            // and run its other tasks, then this task goes round again.
            () = tokio::task::yield_now(), if spinning => NetStats::inc(&shared.stats.busy_polls),
            // Runs the timers at the top of the loop.
            () = tokio::time::sleep_until(timer.into()), if !closed && timer > now => {}
            () = tokio::time::sleep_until(read_deadline.into()), if frame_started.is_some() && !closed => {
                NetStats::inc(&shared.stats.read_timeouts);
                reason.get_or_insert_with(|| "a frame did not arrive whole within the read timeout".into());
                frame_started = None;
                let mut st = slot.state.lock();
                if st.owner == conn && let Some(s) = st.session.as_mut() {
                    s.close();
                }
            }
            () = tokio::time::sleep_until(write_deadline.into()), if !out.is_empty() => {
                NetStats::inc(&shared.stats.write_timeouts);
                reason.get_or_insert_with(|| "a write made no progress within the write timeout".into());
                out = OutBuf { bytes: Vec::new(), pos: 0, since: None };
                break;
            }
            _ = shutdown.wait_for(|s| *s), if !shutting_down => {
                shutting_down = true;
                reason.get_or_insert_with(|| "this runtime shut its federation network down".into());
            }
        }
    }

    // Last bytes (a Close), bounded by the write timeout.
    if !out.is_empty() {
        let rest = out.pending().to_vec();
        if let Ok(Ok(())) = tokio::time::timeout(cfg.write_timeout, wr.write_all(&rest)).await {
            NetStats::add(&shared.stats.bytes_out, rest.len() as u64);
            NetStats::add(&slot.counters.bytes_out, rest.len() as u64);
        }
    }
    let _ = tokio::time::timeout(cfg.write_timeout, wr.shutdown()).await;
    // Events the session produced while closing.
    if !replaced {
        let mut st = slot.state.lock();
        if st.owner == conn
            && let Some(s) = st.session.as_mut()
        {
            s.close();
            while let Some(event) = s.poll_event() {
                if let Event::Closed(why) = &event {
                    reason.get_or_insert_with(|| why.to_string());
                }
                pending_events.push(event);
            }
        }
    }
    for event in pending_events.drain(..) {
        shared.emit(NetEvent::Session { peer, event }).await;
    }
    if slot.release(shared, conn) {
        let reason = reason.unwrap_or_else(|| "the session ended".into());
        tracing::debug!(peer = %peer.short(), %reason, "federation link down");
        shared.emit(NetEvent::Down { peer, reason }).await;
    }
}
