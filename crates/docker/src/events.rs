//! Worker events from Docker's `/events` stream: `die`, `oom`, `pause`, `unpause` and
//! `destroy` of containers carrying this agent's managed labels, decoded into backend-neutral
//! [`WorkerEvent`]s.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use esb_runtime::{EventStream, Result, WorkerEvent, WorkerEventKind};
use futures::StreamExt;

use crate::Inner;
use crate::error::{Subject, map};
use crate::list::managed_filters;

/// Events buffered between the daemon and the consumer.
const BUFFER: usize = 256;
/// The subscription asks for events from this long before it was made: the daemon replays
/// them, so an event between the request leaving and the daemon registering it is not
/// lost (a replayed event is applied again, which is harmless).
const REPLAY_SECS: u64 = 2;

/// Starts a subscription; the request is sent at once by a task that forwards the events.
pub(crate) fn subscribe(inner: &Arc<Inner>) -> Result<EventStream> {
    let mut filters = managed_filters(inner);
    filters.insert("type".into(), vec!["container".into()]);
    filters.insert(
        "event".into(),
        ["die", "oom", "pause", "unpause", "destroy"]
            .map(String::from)
            .to_vec(),
    );
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(REPLAY_SECS))
        .unwrap_or(0);
    let opts = EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters),
    };
    let mut stream = inner.docker.events(Some(opts));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<WorkerEvent>>(BUFFER);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                () = tx.closed() => return,
                i = stream.next() => i,
            };
            match item {
                Some(Ok(msg)) => {
                    if let Some(ev) = decode(&msg)
                        && tx.send(Ok(ev)).await.is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = tx
                        .send(Err(map(e, "worker event stream", Subject::Worker)))
                        .await;
                    return;
                }
                None => return,
            }
        }
    });
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

/// The worker event of one Docker event message; `None` for other actions.
fn decode(msg: &EventMessage) -> Option<WorkerEvent> {
    let actor = msg.actor.as_ref()?;
    let id = actor.id.clone().filter(|id| !id.is_empty())?;
    let attr = |k: &str| actor.attributes.as_ref().and_then(|a| a.get(k));
    let kind = match msg.action.as_deref()? {
        "die" => WorkerEventKind::Exited {
            exit_code: attr("exitCode")
                .and_then(|c| c.parse::<i64>().ok())
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0),
            oom: false,
        },
        "oom" => WorkerEventKind::Oom,
        "pause" => WorkerEventKind::Paused,
        "unpause" => WorkerEventKind::Resumed,
        "destroy" => WorkerEventKind::Deleted,
        _ => return None,
    };
    let at = msg
        .time_nano
        .and_then(|n| u64::try_from(n).ok())
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n));
    Some(WorkerEvent { id, kind, at })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::EventActor;

    use super::*;

    /// For tests: a Docker event message.
    fn message(action: &str, id: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<HashMap<_, _>>(),
                ),
            }),
            time_nano: Some(1_700_000_000_000_000_005),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_the_five_actions() {
        assert_eq!(
            decode(&message("die", "c1", &[("exitCode", "3")])),
            Some(WorkerEvent {
                id: "c1".into(),
                kind: WorkerEventKind::Exited {
                    exit_code: 3,
                    oom: false
                },
                at: Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_005)),
            })
        );
        let kind = |a| decode(&message(a, "c1", &[])).map(|e| e.kind);
        assert_eq!(kind("oom"), Some(WorkerEventKind::Oom));
        assert_eq!(kind("pause"), Some(WorkerEventKind::Paused));
        assert_eq!(kind("unpause"), Some(WorkerEventKind::Resumed));
        assert_eq!(kind("destroy"), Some(WorkerEventKind::Deleted));
        assert_eq!(kind("start"), None);
        assert_eq!(decode(&message("die", "", &[])), None);
    }
}
