//! "Finish even if the caller left" (issue 11 §1): the one helper every saga uses — Ensure in
//! the server, Destroy in both backends, CNI attach/detach — so a caller that drops its future
//! (deadline, disconnect) never leaves work half done.

use std::future::Future;

use tracing::Instrument;

use crate::error::RuntimeError;

/// Runs `fut` on its own task inside `span` and waits for it. Dropping the returned future
/// detaches the task, which still runs to completion. A panic in the task becomes an
/// `Internal` error naming `what`.
pub async fn finish_detached<T, E>(
    what: &'static str,
    span: tracing::Span,
    fut: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<RuntimeError> + Send + 'static,
{
    tokio::spawn(fut.instrument(span))
        .await
        .unwrap_or_else(|e| {
            Err(RuntimeError::internal(format!("{what} task failed"))
                .with_source(e)
                .into())
        })
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
