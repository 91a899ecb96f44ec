//! List and inspect: one label-filtered Containers.List plus one Tasks.List (no N+1), IPs from
//! the durable CNI journal so they survive agent restarts.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use containerd_client::services::v1::{
    Container, GetContainerRequest, GetRequest, ListContainersRequest, ListTasksRequest,
};
use containerd_client::types::v1::{Process, Status};
use esb_runtime::identity::Identity;
use esb_runtime::{RuntimeError, WorkerState, WorkerStatus};

use crate::Inner;
use crate::client::{is_not_found, status_err};

/// containerd filter matching the managed selector (every label ANDed; keys and values quoted
/// because label keys contain dots).
pub(crate) fn managed_filter(identity: &Identity) -> String {
    identity
        .managed_selector()
        .iter()
        .map(|(k, v)| format!("labels.{}=={}", quote(k), quote(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Task status → the shared status enum (no task = stopped).
pub(crate) fn status_of(task: Option<&Process>) -> WorkerStatus {
    match task.map(|t| Status::try_from(t.status).unwrap_or(Status::Unknown)) {
        None | Some(Status::Stopped) => WorkerStatus::Stopped,
        Some(Status::Running) => WorkerStatus::Running,
        Some(Status::Paused | Status::Pausing) => WorkerStatus::Paused,
        Some(_) => WorkerStatus::Unknown,
    }
}

/// Every container id in the namespace, whoever manages it (other ENVs of the brand share the
/// namespace and the CNI network: their IP reservations are not ours to release, M5).
pub(crate) async fn all_container_ids(
    inner: &Inner,
) -> Result<std::collections::HashSet<String>, RuntimeError> {
    let c = &inner.client;
    Ok(c.containers()
        .list(c.req_t(ListContainersRequest {
            filters: Vec::new(),
        }))
        .await
        .map_err(|s| status_err("list containers", s))?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect())
}

/// The managed containers (one query) and all tasks of the namespace (one query).
pub(crate) async fn managed_containers(
    inner: &Inner,
) -> Result<(Vec<Container>, HashMap<String, Process>), RuntimeError> {
    let c = &inner.client;
    let containers = c
        .containers()
        .list(c.req_t(ListContainersRequest {
            filters: vec![managed_filter(&inner.common.identity)],
        }))
        .await
        .map_err(|s| status_err("list containers", s))?
        .into_inner()
        .containers;
    let tasks = c
        .tasks()
        .list(c.req_t(ListTasksRequest {
            filter: String::new(),
        }))
        .await
        .map_err(|s| status_err("list tasks", s))?
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    // The server filter is the first line; re-check so a filter quirk can never leak others.
    let containers = containers
        .into_iter()
        .filter(|c| inner.common.identity.is_managed(&labels_of(c)))
        .collect();
    Ok((containers, tasks))
}

pub(crate) fn labels_of(c: &Container) -> BTreeMap<String, String> {
    c.labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(crate) fn to_state(
    identity: &Identity,
    c: &Container,
    task: Option<&Process>,
    ip: Option<IpAddr>,
) -> WorkerState {
    let (function_name, owner_id) = identity.function_and_owner(&c.labels);
    WorkerState {
        id: c.id.clone(),
        name: c.id.clone(),
        function_name,
        owner_id,
        status: status_of(task),
        ip,
        created_at: crate::unix(c.created_at.as_ref()),
    }
}

pub(crate) async fn list(inner: &Inner) -> Result<Vec<WorkerState>, RuntimeError> {
    let (containers, tasks) = managed_containers(inner).await?;
    let ips: HashMap<String, IpAddr> = inner
        .cni
        .attachments()?
        .into_iter()
        .filter_map(|a| Some((a.container_id, a.ip?)))
        .collect();
    let creating = inner.creating.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(containers
        .iter()
        .filter(|c| !creating.contains(&c.id))
        .map(|c| {
            to_state(
                &inner.common.identity,
                c,
                tasks.get(&c.id),
                ips.get(&c.id).copied(),
            )
        })
        .collect())
}

/// One container record, `None` when absent.
pub(crate) async fn get_container(
    inner: &Inner,
    id: &str,
) -> Result<Option<Container>, RuntimeError> {
    let c = &inner.client;
    match c
        .containers()
        .get(c.req_t(GetContainerRequest { id: id.to_string() }))
        .await
    {
        Ok(r) => Ok(r.into_inner().container),
        Err(s) if is_not_found(&s) => Ok(None),
        Err(s) => Err(status_err("get container", s)),
    }
}

/// The task of `id`, `None` when it has none.
pub(crate) async fn get_task(inner: &Inner, id: &str) -> Result<Option<Process>, RuntimeError> {
    let c = &inner.client;
    match c
        .tasks()
        .get(c.req_t(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(r) => Ok(r.into_inner().process),
        Err(s) if is_not_found(&s) => Ok(None),
        Err(s) => Err(status_err("get task", s)),
    }
}

/// A managed container of this brand+ENV, `None` when absent or foreign.
pub(crate) async fn managed(inner: &Inner, id: &str) -> Result<Option<Container>, RuntimeError> {
    Ok(get_container(inner, id)
        .await?
        .filter(|c| inner.common.identity.is_managed(&labels_of(c))))
}

pub(crate) async fn inspect(inner: &Inner, id: &str) -> Result<Option<WorkerState>, RuntimeError> {
    let Some(container) = managed(inner, id).await? else {
        return Ok(None);
    };
    let task = get_task(inner, id).await?;
    let ip = inner.cni.attachment(id).ok().flatten().and_then(|a| a.ip);
    Ok(Some(to_state(
        &inner.common.identity,
        &container,
        task.as_ref(),
        ip,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_quotes_keys_and_values() {
        let id = Identity::new("acme", "dev");
        assert_eq!(
            managed_filter(&id),
            "labels.\"acme_env\"==\"dev\",labels.\"com.acme.kind\"==\"function\",labels.\"created_by\"==\"acme-agent\""
        );
    }

    #[test]
    fn task_status_maps() {
        let p = |s: Status| Process {
            status: s as i32,
            ..Default::default()
        };
        assert_eq!(status_of(None), WorkerStatus::Stopped);
        assert_eq!(status_of(Some(&p(Status::Running))), WorkerStatus::Running);
        assert_eq!(status_of(Some(&p(Status::Paused))), WorkerStatus::Paused);
        assert_eq!(status_of(Some(&p(Status::Stopped))), WorkerStatus::Stopped);
        assert_eq!(status_of(Some(&p(Status::Created))), WorkerStatus::Unknown);
    }
}
