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
