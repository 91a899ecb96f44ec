//! List (one label-filtered call, IPs from the list result, no per-container inspect) and
//! inspect of one managed worker.

use std::collections::HashMap;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use esb_runtime::{Result, WorkerState, names};

use crate::Inner;
use crate::convert::{labels_of, state_from_inspect, state_from_summary};
use crate::error::{Subject, is_not_found, map};

/// `label=k=v` filters selecting the managed workers of this brand+ENV.
pub(crate) fn managed_filters(inner: &Inner) -> HashMap<String, Vec<String>> {
    let labels = inner
        .common
        .identity
        .managed_selector()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    HashMap::from([("label".to_string(), labels)])
}

pub(crate) async fn list(inner: &Inner) -> Result<Vec<WorkerState>> {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(managed_filters(inner)),
        ..Default::default()
    };
    let containers = inner
        .docker
        .list_containers(Some(opts))
        .await
        .map_err(|e| map(e, "list workers", Subject::Worker))?;
    let identity = &inner.common.identity;
    let workers: Vec<WorkerState> = containers
        .iter()
        .filter_map(|c| state_from_summary(c, identity, &inner.settings.network))
        .collect();
    inner.known.replace(workers.iter().map(|w| w.id.as_str()));
    Ok(workers)
}

pub(crate) async fn inspect(inner: &Inner, id: &str) -> Result<Option<WorkerState>> {
    Ok(inspect_managed(inner, id)
        .await?
        .and_then(|c| state_from_inspect(&c, &inner.common.identity, &inner.settings.network)))
}

/// The raw inspect of `id` (id or name) when it exists and carries our managed labels.
/// Every caller-supplied id reaches the Engine through here first: one that is not an id
/// (`.`, `..`, `/`, `?`) would become part of the request path (`Url::join` resolves dot
/// segments), so it is "not found" without a request (M3, defence in depth behind the API).
pub(crate) async fn inspect_managed(
    inner: &Inner,
    id: &str,
) -> Result<Option<ContainerInspectResponse>> {
    if !names::is_valid_container_id(id) {
        return Ok(None);
    }
    match inner
        .docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    {
        Ok(c) => {
            let labels = labels_of(c.config.as_ref().and_then(|cfg| cfg.labels.as_ref()));
            let managed = inner.common.identity.is_managed(&labels);
            if let (true, Some(full)) = (managed, c.id.as_deref()) {
                inner.known.remember(full);
            }
            Ok(managed.then_some(c))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(map(e, "inspect worker", Subject::Worker)),
    }
}
