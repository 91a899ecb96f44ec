//! Worker events from containerd's event stream (Events.Subscribe): task exit, OOM, pause,
//! resume and container delete in this agent's namespace, decoded into backend-neutral
//! [`WorkerEvent`]s. Exec exits are dropped (only the worker's main process counts).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use containerd_client::events::{ContainerDelete, TaskExit, TaskOom, TaskPaused, TaskResumed};
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::types::Envelope;
use esb_runtime::{EventStream, Result, WorkerEvent, WorkerEventKind};
use prost::Message;

use crate::Inner;
use crate::client::status_err;

/// The topics that change a worker's state.
const TOPICS: [&str; 5] = [
    "/tasks/exit",
    "/tasks/oom",
    "/tasks/paused",
    "/tasks/resumed",
    "/containers/delete",
];

/// Events buffered between the daemon and the consumer.
const BUFFER: usize = 256;

/// One filter per topic (containerd ORs filters, ANDs the terms of one).
fn filters(namespace: &str) -> Vec<String> {
    TOPICS
        .iter()
        .map(|t| format!("namespace=={namespace:?},topic=={t:?}"))
        .collect()
}

/// Starts a subscription. containerd sends the stream's response headers only with its
/// first event, so the call runs in a task and this returns at once; the stream yields an
/// error (or ends) when the subscription breaks.
pub(crate) fn subscribe(inner: &Arc<Inner>) -> Result<EventStream> {
    let client = inner.client.clone();
    let req = SubscribeRequest {
        filters: filters(client.namespace()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<WorkerEvent>>(BUFFER);
    tokio::spawn(async move {
        let call = async {
            let mut events = client.events();
            events.subscribe(client.req(req)).await
        };
        let mut stream = tokio::select! {
            () = tx.closed() => return,
            r = call => match r {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let _ = tx.send(Err(status_err("subscribe to events", s))).await;
                    return;
                }
            },
        };
        loop {
            let msg = tokio::select! {
                () = tx.closed() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(env)) => {
                    if let Some(ev) = decode(&env)
                        && tx.send(Ok(ev)).await.is_err()
                    {
                        return;
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    let _ = tx.send(Err(status_err("event stream", s))).await;
                    return;
                }
            }
        }
    });
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

/// The worker event an envelope carries; `None` for other topics, exec exits and payloads
/// that do not decode.
fn decode(env: &Envelope) -> Option<WorkerEvent> {
    let any = env.event.as_ref()?;
    let bytes = any.value.as_slice();
    let (id, kind) = match env.topic.as_str() {
        "/tasks/exit" => {
            let e = TaskExit::decode(bytes).ok()?;
            // An exec's exit names the exec id; the task's own exit names the container.
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            (
                e.container_id,
                WorkerEventKind::Exited {
                    exit_code: e.exit_status,
                    oom: false,
                },
            )
        }
        "/tasks/oom" => (
            TaskOom::decode(bytes).ok()?.container_id,
            WorkerEventKind::Oom,
        ),
        "/tasks/paused" => (
            TaskPaused::decode(bytes).ok()?.container_id,
            WorkerEventKind::Paused,
        ),
        "/tasks/resumed" => (
            TaskResumed::decode(bytes).ok()?.container_id,
            WorkerEventKind::Resumed,
        ),
        "/containers/delete" => (
            ContainerDelete::decode(bytes).ok()?.id,
            WorkerEventKind::Deleted,
        ),
        _ => return None,
    };
    let at = env.timestamp.as_ref().and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        Some(UNIX_EPOCH + Duration::new(secs, nanos))
    });
    (!id.is_empty()).then_some(WorkerEvent { id, kind, at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(topic: &str, msg: &impl Message) -> Envelope {
        Envelope {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            namespace: "ns".into(),
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: "containerd.events.X".into(),
                value: msg.encode_to_vec(),
            }),
        }
    }

    #[test]
    fn decodes_the_five_topics_and_drops_exec_exits() {
        let exit = TaskExit {
            container_id: "w1".into(),
            id: "w1".into(),
            pid: 7,
            exit_status: 3,
            exited_at: None,
        };
        assert_eq!(
            decode(&envelope("/tasks/exit", &exit)),
            Some(WorkerEvent {
                id: "w1".into(),
                kind: WorkerEventKind::Exited {
                    exit_code: 3,
                    oom: false
                },
                at: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
            })
        );
        let exec = TaskExit {
            id: "exec-1".into(),
            ..exit
        };
        assert_eq!(decode(&envelope("/tasks/exit", &exec)), None);
        let oom = TaskOom {
            container_id: "w1".into(),
        };
        assert_eq!(
            decode(&envelope("/tasks/oom", &oom)).map(|e| e.kind),
            Some(WorkerEventKind::Oom)
        );
        let p = TaskPaused {
            container_id: "w1".into(),
        };
        assert_eq!(
            decode(&envelope("/tasks/paused", &p)).map(|e| e.kind),
            Some(WorkerEventKind::Paused)
        );
        let r = TaskResumed {
            container_id: "w1".into(),
        };
        assert_eq!(
            decode(&envelope("/tasks/resumed", &r)).map(|e| e.kind),
            Some(WorkerEventKind::Resumed)
        );
        let d = ContainerDelete { id: "w1".into() };
        assert_eq!(
            decode(&envelope("/containers/delete", &d)).map(|e| e.kind),
            Some(WorkerEventKind::Deleted)
        );
        assert_eq!(decode(&envelope("/tasks/start", &d)), None);
    }

    #[test]
    fn filters_name_the_namespace_and_each_topic() {
        let f = filters("esb-dev");
        assert_eq!(f.len(), TOPICS.len());
        assert_eq!(f[0], r#"namespace=="esb-dev",topic=="/tasks/exit""#);
    }
}
