//! What a shutdown waits for: the RPCs in flight, each until its response has been handed to
//! the connection (the guard rides in the response body). Open-ended streams (health `Watch`,
//! `WorkerLogs`, reflection) are not counted: a client may hold them for ever, and an agent
//! restart must not wait out the drain bound for them, nor for an idle connection whose client
//! does not answer the GOAWAY (a frozen gateway, a half-open TCP path).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use tokio::sync::Notify;

/// The number of drained RPCs in flight.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> Guard {
        self.count.fetch_add(1, Ordering::AcqRel);
        Guard(Some(self.clone()))
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no drained RPC is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check: a guard dropped in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One RPC in flight; `Guard(None)` for a stream that is not drained.
#[derive(Debug)]
pub struct Guard(Option<Arc<InFlight>>);

impl Guard {
    pub fn none() -> Self {
        Self(None)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take()
            && f.count.fetch_sub(1, Ordering::AcqRel) == 1
        {
            f.idle.notify_waiters();
        }
    }
}

/// A response body that keeps its RPC in flight until it has been sent (or dropped).
pub struct GuardedBody<B> {
    inner: B,
    _guard: Guard,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, guard: Guard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_the_last_guard() {
        let f = Arc::new(InFlight::default());
        let (a, b) = (f.enter(), f.enter());
        assert_eq!(f.count(), 2);
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.idle().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one RPC is still in flight");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("idle once the last guard is gone")
            .unwrap();
        drop(Guard::none());
        assert_eq!(f.count(), 0);
    }
}
