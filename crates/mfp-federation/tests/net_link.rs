//! The transport between two networks in one process over 127.0.0.1: the link comes up,
//! outlives the idle timeout on keepalives, closes on shutdown, comes back after a
//! restart; simultaneous dials leave one link.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod net_support;

use std::time::Duration;

use mfp_federation::net::{NetError, NetEvent, Network};
use mfp_federation::session::{CloseReason, Event};
use net_support::*;
use tokio::net::{TcpListener, TcpStream};

fn down_reason(ev: &NetEvent) -> &str {
    match ev {
        NetEvent::Down { reason, .. } => reason,
        other => panic!("not a Down event: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_comes_up_outlives_the_idle_timeout_and_closes_on_shutdown() {
    // The listener's idle timeout is 1.5 s, fifteen keepalive periods: the session
    // survives a stall of the process of more than a second.
    let mut c = cfg(1);
    c.session.idle_timeout = Duration::from_millis(1500);
    let mut p = Pair::up(c).await;
    let (l, h) = p.handles();
    assert_eq!(l.runtime(), p.high.runtime);
    assert_eq!(p.ln.local_runtime(), p.low.runtime);
    // Three idle timeouts pass: keepalives every 100 ms keep the session.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    p.assert_alive().await;
    assert_eq!(l.stats().sessions, 1);
    assert_eq!(p.ln.stats().snapshot().sessions_active, 1);

    let Pair { ln, hn, mut hrx, low, .. } = p;
    ln.shutdown().await;
    let (down, before) = wait_for(&mut hrx, "Down", is_down).await;
    assert!(down_reason(&down).contains("closed the session"), "{down:?}");
    // The session's own Closed event is forwarded unchanged before Down.
    assert!(
        before.iter().any(|e| matches!(e, NetEvent::Session { event: Event::Closed(CloseReason::PeerClosed(_)), .. })),
        "{before:?}"
    );
    assert!(!h.is_up());
    assert!(matches!(h.with_session(|s| s.is_closed()), Err(NetError::NotConnected(_))));
    assert_eq!(hn.stats().snapshot().sessions_active, 0);
    assert_eq!(hn.peer(&low.runtime).unwrap().runtime(), low.runtime);
    hn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_reconnects_after_the_listener_restarts() {
    let p = Pair::up(cfg(1)).await;
    let addr = p.ln.local_addr().unwrap();
    let Pair { low, high, ln, hn, mut hrx, .. } = p;
    ln.shutdown().await;
    wait_for(&mut hrx, "Down", is_down).await;

    let mut again = cfg(3);
    again.listen = Some(addr);
    let (ln2, mut lrx2) = start(&low, vec![high.peer(None)], again).await;
    wait_for(&mut lrx2, "Up after the restart (listener)", is_up).await;
    wait_for(&mut hrx, "Up after the restart (dialer)", is_up).await;
    assert_eq!(hn.stats().snapshot().sessions_established, 2);
    assert_link_alive(&ln2.peer(&high.runtime).unwrap(), &hn.peer(&low.runtime).unwrap()).await;
    hn.shutdown().await;
    ln2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_by_the_caller_is_redialled() {
    let mut p = Pair::up(cfg(1)).await;
    let (l, h) = p.handles();
    // The closure runs under the link's lock; the task is woken to send the Close.
    l.with_session(|s| s.close()).unwrap();
    let (down, _) = wait_for(&mut p.lrx, "Down (closing side)", is_down).await;
    assert!(down_reason(&down).contains("closed by this side"), "{down:?}");
    let (down, _) = wait_for(&mut p.hrx, "Down (other side)", is_down).await;
    assert!(down_reason(&down).contains("closed the session"), "{down:?}");
    wait_for(&mut p.hrx, "Up again (dialer)", is_up).await;
    wait_for(&mut p.lrx, "Up again (listener)", is_up).await;
    tokio::time::timeout(BOUND, h.up()).await.unwrap().unwrap();
    assert_eq!(p.ln.stats().snapshot().sessions_established, 2);
    assert_eq!(p.hn.stats().snapshot().sessions_established, 2);
    assert_link_alive(&l, &h).await;
    // What the session had to send is written: writable resolves.
    l.with_session(|s| s.is_closed()).unwrap();
    tokio::time::timeout(BOUND, l.writable()).await.unwrap();
    let Pair { ln, hn, .. } = p;
    hn.shutdown().await;
    ln.shutdown().await;
    assert!(matches!(h.up().await, Err(NetError::ShutDown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_channel_makes_the_link_wait_and_loses_nothing() {
    let mut c = cfg(1);
    c.event_capacity = 1;
    let (low, high) = two_ids();
    let (ln, mut lrx) = start(&low, vec![high.peer(None)], c).await;
    let (hn, mut hrx) = start(&high, vec![low.peer(Some(ln.local_addr().unwrap()))], cfg(2)).await;
    wait_for(&mut hrx, "Up (dialer)", is_up).await;
    let l = ln.peer(&high.runtime).unwrap();
    tokio::time::timeout(BOUND, l.up()).await.unwrap().unwrap();
    // The listener's channel holds its Up; nobody reads it. The dialer closes the
    // session: the listener's task has the session's Closed and a Down to report and
    // waits for room for each; the dialer's reconnection then waits behind them (its
    // Up on the listener comes before message 2 is written).
    let h = hn.peer(&low.runtime).unwrap();
    h.with_session(|s| s.close()).unwrap();
    wait_for(&mut hrx, "Down (dialer)", is_down).await;
    let mut seen = Vec::new();
    while seen.iter().filter(|e| is_up(e)).count() < 2 {
        seen.push(tokio::time::timeout(BOUND, lrx.recv()).await.unwrap().unwrap());
    }
    let kinds: Vec<&str> = seen
        .iter()
        .map(|e| match e {
            NetEvent::Up { .. } => "up",
            NetEvent::Down { .. } => "down",
            NetEvent::Session { event: Event::Closed(_), .. } => "closed",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["up", "closed", "down", "up"], "{seen:?}");
    wait_for(&mut hrx, "Up again (dialer)", is_up).await;
    assert_link_alive(&l, &h).await;
    hn.shutdown().await;
    ln.shutdown().await;
}

/// Accepts one connection on `listener` and forwards it to `target` once `go` fires.
async fn held(listener: &TcpListener) -> TcpStream {
    tokio::time::timeout(BOUND, listener.accept()).await.unwrap().unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_leave_the_link_initiated_by_the_lower_id() {
    let (low, high) = two_ids();
    // Each side dials a gate of the test, which holds both dials until both arrived and
    // then forwards them at the same moment: two handshakes in flight at once.
    let gate_to_low = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_to_high = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ln, mut lrx) = start(&low, vec![high.peer(Some(gate_to_high.local_addr().unwrap()))], cfg(1)).await;
    let (hn, mut hrx) = start(&high, vec![low.peer(Some(gate_to_low.local_addr().unwrap()))], cfg(2)).await;
    let from_low = held(&gate_to_high).await;
    let from_high = held(&gate_to_low).await;
    let to_high = TcpStream::connect(hn.local_addr().unwrap()).await.unwrap();
    let to_low = TcpStream::connect(ln.local_addr().unwrap()).await.unwrap();
    let forward = |mut a: TcpStream, mut b: TcpStream| {
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        })
    };
    let low_initiated = forward(from_low, to_high);
    let high_initiated = forward(from_high, to_low);

    wait_for(&mut lrx, "Up (low)", is_up).await;
    wait_for(&mut hrx, "Up (high)", is_up).await;
    // The connection initiated by the higher id is closed by both sides...
    tokio::time::timeout(BOUND, high_initiated).await.expect("the duplicate link stayed open").unwrap();
    // ...and the one initiated by the lower id carries the link.
    let (l, h) = (ln.peer(&high.runtime).unwrap(), hn.peer(&low.runtime).unwrap());
    tokio::time::timeout(BOUND, l.up()).await.unwrap().unwrap();
    tokio::time::timeout(BOUND, h.up()).await.unwrap().unwrap();
    assert_link_alive(&l, &h).await;
    assert!(!low_initiated.is_finished(), "the link initiated by the lower id was closed");
    let (ls, hs) = (ln.stats().snapshot(), hn.stats().snapshot());
    assert!(ls.duplicate_links_refused + ls.sessions_replaced + hs.duplicate_links_refused + hs.sessions_replaced >= 1);
    assert_eq!((ls.sessions_active, hs.sessions_active), (1, 1));
    // It stays that way: no more Down once settled.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_link_alive(&l, &h).await;
    assert!(!low_initiated.is_finished());
    drain(&mut lrx);
    drain(&mut hrx);
    hn.shutdown().await;
    ln.shutdown().await;
}

#[tokio::test]
async fn configuration_mistakes_are_refused() {
    let (low, high) = two_ids();
    let mut bad = cfg(1);
    bad.max_connections = 0;
    let e = Network::start(low.key(), low.runtime, vec![], bad).await.unwrap_err();
    assert!(matches!(e, NetError::Config(_)), "{e}");
    let e = Network::start(low.key(), low.runtime, vec![low.peer(None)], cfg(1)).await.unwrap_err();
    assert!(e.to_string().contains("its own peer"), "{e}");
    let e = Network::start(low.key(), low.runtime, vec![high.peer(None), high.peer(None)], cfg(1)).await.unwrap_err();
    assert!(e.to_string().contains("configured twice"), "{e}");
    let mut spin = cfg(1);
    spin.busy_poll = mfp_federation::net::MAX_BUSY_POLL + Duration::from_millis(1);
    let e = Network::start(low.key(), low.runtime, vec![], spin).await.unwrap_err();
    assert!(e.to_string().contains("busy_poll"), "{e}");
    let mut short = cfg(1);
    short.session.idle_timeout = short.session.keepalive;
    assert!(matches!(Network::start(low.key(), low.runtime, vec![], short).await, Err(NetError::Config(_))));
    // A listener on an address in use.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut clash = cfg(1);
    clash.listen = Some(taken.local_addr().unwrap());
    assert!(matches!(Network::start(low.key(), low.runtime, vec![], clash).await, Err(NetError::Bind { .. })));
    // No session yet: NotConnected; a handle on an unknown peer: none.
    let (net, _rx) = start(&low, vec![high.peer(None)], cfg(1)).await;
    let h = net.peer(&high.runtime).unwrap();
    assert!(!h.is_up());
    assert!(matches!(h.with_session(|_| ()), Err(NetError::NotConnected(_))));
    assert!(net.peer(&low.runtime).is_none());
    net.shutdown().await;
}

/// `busy_poll`: the link's task goes round without parking for that long after its last
/// read or write, then waits for the socket again; with zero (the default) it never spins.
/// Keepalives are 5 s apart here, so once the link is up nothing is read or written for
/// the rest of the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_polling_link_spins_after_its_last_byte_and_then_stops() {
    let (low, high) = two_ids();
    let quiet = |seed| {
        let mut c = cfg(seed);
        c.session.keepalive = Duration::from_secs(5);
        c.session.idle_timeout = Duration::from_secs(20);
        c
    };
    let mut spinning = quiet(1);
    spinning.busy_poll = Duration::from_millis(5);
    let (ln, mut lrx) = start(&low, vec![high.peer(None)], spinning).await;
    let (hn, mut hrx) = start(&high, vec![low.peer(Some(ln.local_addr().unwrap()))], quiet(2)).await;
    wait_for(&mut lrx, "Up (listener)", is_up).await;
    wait_for(&mut hrx, "Up (dialer)", is_up).await;
    // The handshake's last bytes: the listener's link spun after them, the dialer's did not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spun = ln.stats().snapshot().busy_polls;
    assert!(spun > 0, "the link did not spin after its last byte");
    assert_eq!(hn.stats().snapshot().busy_polls, 0, "a link without busy_poll spun");
    // Nothing is read or written now: the window closed, the task waits for the socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ln.stats().snapshot().busy_polls, spun, "the link kept spinning with nothing to read or write");
    let (l, h) = (ln.peer(&high.runtime).unwrap(), hn.peer(&low.runtime).unwrap());
    assert!(l.is_up() && h.is_up());
    ln.shutdown().await;
    hn.shutdown().await;
}
