//! A minimal `block_on` for the blocking API: parks the calling thread until the future is
//! ready. Unlike tokio's, it never panics when called from inside an async context (it
//! just blocks that thread, which async callers should avoid by using the async API).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` to completion on the current thread.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    // Most futures given here are ready at once (a send that does not wait): try that
    // without setting up a waker. A pending future is polled again below with the real
    // waker, so no wake-up can be lost.
    if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return v;
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Runs `fut` on the current thread for at most `limit`; `None` if it did not finish.
/// Uses `thread::park_timeout`, so it needs no timer driver and has microsecond precision.
pub(crate) fn block_on_timeout<F: Future>(fut: F, limit: std::time::Duration) -> Option<F::Output> {
    let deadline = std::time::Instant::now() + limit;
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

thread_local! {
    /// Set while this thread runs an agent's synchronous handler.
    static HANDLER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as running an agent's synchronous handler until dropped: a
/// blocking call from there may wait, since the runtime's own threads stay free.
pub(crate) struct HandlerThread(bool);

impl HandlerThread {
    pub(crate) fn enter() -> Self {
        Self(HANDLER_THREAD.with(|h| h.replace(true)))
    }
}

impl Drop for HandlerThread {
    fn drop(&mut self) {
        HANDLER_THREAD.with(|h| h.set(self.0));
    }
}

/// Where a blocking call is made from, with respect to the tokio runtime `exec` that runs
/// the delivery workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Outside any tokio runtime, on an agent's handler thread, or inside another
    /// current-thread runtime: blocking here stalls nothing the call waits for.
    Outside,
    /// Inside a multi-threaded tokio runtime: blocking goes through `block_in_place`, so
    /// the worker's other tasks move to another thread.
    MultiThread,
    /// On the thread that drives `exec` itself, a current-thread runtime: while this
    /// thread is blocked, no delivery worker and no timer of `exec` runs, so a wait for
    /// one of them could never end. Such a call must not wait for them.
    Driver,
}

/// Classifies the calling thread (see [`Place`]).
pub(crate) fn place(exec: &tokio::runtime::Handle) -> Place {
    let Ok(current) = tokio::runtime::Handle::try_current() else { return Place::Outside };
    match current.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => {
            if current.id() != exec.id() || HANDLER_THREAD.with(std::cell::Cell::get) {
                Place::Outside
            } else {
                Place::Driver
            }
        }
        _ => Place::MultiThread,
    }
}

/// Polls `fut` once; `None` if it would have to wait.
pub(crate) fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let fut = std::pin::pin!(fut);
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
