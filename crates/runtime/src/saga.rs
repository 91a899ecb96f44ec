//! "Finish even if the caller left" (issue 11 §1): the one helper every saga uses — Ensure in
//! the server, Destroy in both backends, CNI attach/detach — so a caller that drops its future
//! (deadline, disconnect) never leaves work half done.

use std::future::Future;

use tracing::Instrument;

use crate::error::RuntimeError;

/// Runs `fut` on its own task inside `span` and waits for it. Dropping the returned future
/// detaches the task, which still runs to completion. A panic in the task becomes an
/// `Internal` error naming `what`.
///
/// Errors are logged once, by whoever receives them (the RPC edge); when the caller has left,
/// nobody does, so the task logs the error itself.
pub async fn finish_detached<T, E>(
    what: &'static str,
    span: tracing::Span,
    fut: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<RuntimeError> + std::fmt::Display + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(
        async move {
            let res = fut.await;
            if let Err(Err(e)) = tx.send(res) {
                tracing::warn!(error = %e, "{what} failed after its caller left");
            }
        }
        .instrument(span),
    );
    match rx.await {
        Ok(res) => res,
        // The sender is gone without a result: the task panicked.
        Err(_) => Err(match task.await {
            Err(e) => RuntimeError::internal(format!("{what} task failed")).with_source(e),
            Ok(()) => RuntimeError::internal(format!("{what} task failed")),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_dropped_caller_does_not_stop_the_work() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let call = finish_detached("test", tracing::Span::none(), async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
            Ok::<_, RuntimeError>(())
        });
        // The caller gives up long before the work is done.
        let _ = tokio::time::timeout(Duration::from_millis(5), call).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panic_is_an_internal_error() {
        let r: Result<(), RuntimeError> =
            finish_detached("boom", tracing::Span::none(), async { panic!("x") }).await;
        let e = r.expect_err("panicked");
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert!(e.message().contains("boom task failed"), "{e:?}");
    }
}
