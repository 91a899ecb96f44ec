//! Proto ↔ domain conversion and input validation (SPEC §3 order and messages, §10 bounds).
//! Every rejection is INVALID_ARGUMENT or RESOURCE_EXHAUSTED with a clear message.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use esb_proto::v1;
use esb_runtime::{EnsureRequest, Worker, WorkerMetrics, WorkerStatus, names};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

pub use crate::model::{InvokeCall, Target, is_hop_by_hop};
use crate::service::{Core, PullUpdate};
use crate::status::ApiError;

/// Longest accepted container id / owner id, bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most headers per invocation.
pub const MAX_HEADERS: usize = 128;
/// Largest total header size (names + values), bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest invoke path, bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest per-call invoke timeout (Lambda's own maximum); larger values are clamped.
pub const MAX_INVOKE_TIMEOUT: Duration = Duration::from_secs(900);
/// RIE invocation path used when `path` is empty (compat).
pub const DEFAULT_INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A required, trimmed identifier field.
fn required_id(field: &str, value: &str) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::InvalidArgument(format!("{field} is required")));
    }
    if v.len() > MAX_ID_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "{field} is too long ({} bytes, max {MAX_ID_BYTES})",
            v.len()
        )));
    }
    if has_control(v) {
        return Err(ApiError::InvalidArgument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(v.to_owned())
}

/// `owner_id` (every RPC): trimmed, required.
pub fn owner(owner_id: &str) -> Result<String, ApiError> {
    required_id("owner_id", owner_id)
}

/// Id-based RPCs: container_id first, then owner_id. A container id must look like one
/// (`[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`, M3) before any runtime call: a daemon API could read
/// `..`, `/` or `?` as part of a path.
pub fn target(container_id: &str, owner_id: &str) -> Result<Target, ApiError> {
    let container_id = required_id("container_id", container_id)?;
    if !names::is_valid_container_id(&container_id) {
        return Err(ApiError::InvalidArgument(format!(
            "container_id is not a valid id (letters, digits, '_', '.', '-'; starting with a letter or digit; at most {} bytes)",
            names::MAX_CONTAINER_ID_LEN
        )));
    }
    let owner_id = owner(owner_id)?;
    Ok(Target {
        container_id,
        owner_id,
    })
}

/// EnsureContainer: function_name → owner_id → image → env.
pub fn ensure_request(req: v1::EnsureContainerRequest) -> Result<EnsureRequest, ApiError> {
    if req.function_name.trim().is_empty() {
        return Err(ApiError::InvalidArgument(
            "function_name is required".into(),
        ));
    }
    names::validate_function_name(&req.function_name)?;
    let owner_id = owner(&req.owner_id)?;
    let image = image(&req.image)?;
    let env = env(req.env)?;
    Ok(EnsureRequest {
        function_name: req.function_name,
        image,
        env,
        owner_id,
    })
}

/// An image reference as a request carries it: trimmed, non-empty, bounded, one token.
pub fn image(raw: &str) -> Result<String, ApiError> {
    Ok(esb_runtime::request::image(raw)?.to_owned())
}

/// The env rules shared with the backends (`esb_runtime::request::env`).
fn env(map: HashMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    esb_runtime::request::env(map.iter())?;
    Ok(map.into_iter().collect())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// InvokeWorker: container_id → owner_id → path → headers → timeout.
pub fn invoke_request(
    req: v1::InvokeWorkerRequest,
    default_timeout: Duration,
) -> Result<InvokeCall, ApiError> {
    let target = target(&req.container_id, &req.owner_id)?;
    let path = invoke_path(&req.path)?;
    let headers = invoke_headers(req.headers)?;
    let timeout = if req.timeout_ms <= 0 {
        default_timeout
    } else {
        Duration::from_millis(req.timeout_ms as u64)
    }
    .min(MAX_INVOKE_TIMEOUT);
    Ok(InvokeCall {
        target,
        path,
        payload: Bytes::from(req.payload),
        headers,
        timeout,
    })
}

fn invoke_path(raw: &str) -> Result<PathAndQuery, ApiError> {
    let raw = raw.trim();
    if raw.len() > MAX_PATH_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "path is too long ({} bytes, max {MAX_PATH_BYTES})",
            raw.len()
        )));
    }
    let path = if raw.is_empty() {
        DEFAULT_INVOKE_PATH.to_owned()
    } else if raw.starts_with('/') {
        raw.to_owned()
    } else {
        format!("/{raw}")
    };
    path.parse::<PathAndQuery>()
        .map_err(|_| ApiError::InvalidArgument("path is not a valid http path".into()))
}

fn invoke_headers(map: HashMap<String, String>) -> Result<HeaderMap, ApiError> {
    if map.len() > MAX_HEADERS {
        return Err(ApiError::TooLarge(format!(
            "too many headers ({}, max {MAX_HEADERS})",
            map.len()
        )));
    }
    let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_HEADER_BYTES {
        return Err(ApiError::TooLarge(format!(
            "headers are too large ({total} bytes, max {MAX_HEADER_BYTES})"
        )));
    }
    let mut out = HeaderMap::with_capacity(map.len());
    for (k, v) in map {
        // Compat: empty keys are skipped, not rejected.
        if k.trim().is_empty() {
            continue;
        }
        let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| {
            ApiError::InvalidArgument(format!("invalid header name {:?}", truncate(&k)))
        })?;
        if is_hop_by_hop(&name)
            || name == http::header::HOST
            || name == http::header::CONTENT_LENGTH
        {
            continue;
        }
        let value = HeaderValue::from_str(&v).map_err(|_| {
            ApiError::InvalidArgument(format!(
                "invalid value for header {:?}",
                truncate(name.as_str())
            ))
        })?;
        out.insert(name, value);
    }
    Ok(out)
}

pub fn worker_info(w: &Worker) -> v1::WorkerInfo {
    v1::WorkerInfo {
        id: w.id.clone(),
        name: w.name.clone(),
        ip_address: w.ip.to_string(),
        port: i32::from(w.port),
    }
}

pub fn container_metrics(m: WorkerMetrics) -> v1::GetContainerMetricsResponse {
    v1::GetContainerMetricsResponse {
        metrics: Some(v1::ContainerMetrics {
            container_id: m.id,
            function_name: m.function_name,
            container_name: m.name,
            state: m
                .status
                .unwrap_or(WorkerStatus::Unknown)
                .as_str()
                .to_owned(),
            memory_current: m.memory_current,
            memory_max: m.memory_max,
            oom_events: m.oom_events,
            cpu_usage_ns: m.cpu_usage_ns,
            exit_code: m.exit_code,
            restart_count: m.restart_count,
            exit_time: m.exit_time,
            collected_at: m.collected_at,
        }),
    }
}

pub fn list_response(listed: Vec<crate::model::Listed>) -> v1::ListContainersResponse {
    v1::ListContainersResponse {
        containers: listed
            .into_iter()
            .map(|l| v1::ContainerState {
                container_id: l.state.id,
                function_name: l.state.function_name,
                status: l.state.status.as_str().to_owned(),
                last_used_at: l.last_used_at,
                container_name: l.state.name,
                created_at: l.state.created_at,
                owner_id: l.state.owner_id,
            })
            .collect(),
    }
}

pub fn invoke_response(r: crate::invoke::InvokeReply) -> v1::InvokeWorkerResponse {
    v1::InvokeWorkerResponse {
        status_code: i32::from(r.status),
        headers: r.headers,
        body: r.body.to_vec(),
    }
}

/// GetCapabilities' answer from the core's facts. Never fails.
pub fn capabilities(core: &Core) -> v1::Capabilities {
    let c = core.runtime.capabilities();
    let a = core.admission.settings();
    let usage = core.admission.usage(&core.table);
    // Unlimited is reported as 0 (proto3's "unset").
    let cap = |v: u64| if v == u64::MAX { 0 } else { v };
    let mut warnings = Vec::new();
    if !core.facts.tls_enabled {
        warnings.push(
            "TLS is disabled: gRPC traffic is plaintext and clients are not authenticated by certificate"
                .to_owned(),
        );
    }
    v1::Capabilities {
        runtime: c.kind.as_str().to_owned(),
        runtime_version: c.version,
        agent_version: core.facts.agent_version.clone(),
        pause_resume: c.pause_resume,
        metrics: c.metrics,
        invoke: true,
        cgroup_version: c.cgroup_version,
        snapshotter: c.snapshotter,
        cni_network: c.network,
        cni_subnet: c.subnet,
        cni_bridge: c.bridge,
        max_invoke_response_bytes: core.invoker.settings().max_response_bytes,
        max_request_bytes: core.facts.max_request_bytes,
        default_memory_bytes: c.default_memory_bytes,
        default_cpu_millis: c.default_cpu_millis,
        default_pids_limit: c.default_pids_limit,
        tls_enabled: core.facts.tls_enabled,
        warnings,
        max_workers: cap(a.max_workers),
        workers_used: usage.workers,
        memory_budget_bytes: cap(a.memory_budget_bytes),
        memory_reserved_bytes: usage.memory_bytes,
        worker_memory_max_bytes: a.memory_max_bytes,
        max_workers_per_owner: cap(a.max_workers_per_owner),
        max_concurrent_ensures: a.max_concurrent_ensures as u64,
        standby_max: core.standby.settings().max,
        standby_per_spec: core.standby.settings().per_spec,
        standby_ready: core.standby.usage().ready,
    }
}

/// A WorkerLogs stream item on the wire.
pub fn log_chunk(item: Result<Vec<u8>, ApiError>) -> Result<v1::WorkerLogsChunk, tonic::Status> {
    item.map(|data| v1::WorkerLogsChunk { data })
        .map_err(tonic::Status::from)
}

/// A PullImage stream item on the wire.
pub fn pull_progress(
    item: Result<PullUpdate, ApiError>,
) -> Result<v1::PullImageProgress, tonic::Status> {
    match item.map_err(tonic::Status::from)? {
        PullUpdate::Progress(p) => Ok(v1::PullImageProgress {
            layers_done: p.layers_done,
            layers_total: p.layers_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            ..Default::default()
        }),
        PullUpdate::Done(img) => Ok(v1::PullImageProgress {
            done: true,
            reference: img.reference,
            digest: img.digest,
            pulled: img.pulled,
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_defaults_and_normalises() {
        assert_eq!(invoke_path("").unwrap().as_str(), DEFAULT_INVOKE_PATH);
        assert_eq!(invoke_path("a/b?x=1").unwrap().as_str(), "/a/b?x=1");
        assert_eq!(invoke_path("/x").unwrap().as_str(), "/x");
        assert!(invoke_path("/a b").is_err());
    }

    #[test]
    fn headers_skip_empty_and_hop_by_hop() {
        let map = HashMap::from([
            (String::new(), "v".to_owned()),
            ("Connection".to_owned(), "close".to_owned()),
            ("Host".to_owned(), "evil".to_owned()),
            ("Content-Length".to_owned(), "9".to_owned()),
            ("X-Keep".to_owned(), "1".to_owned()),
        ]);
        let h = invoke_headers(map).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "1");
    }

    #[test]
    fn timeout_defaults_and_clamps() {
        let mk = |t| v1::InvokeWorkerRequest {
            container_id: "c".into(),
            owner_id: "o".into(),
            timeout_ms: t,
            ..Default::default()
        };
        let d = Duration::from_secs(30);
        assert_eq!(invoke_request(mk(0), d).unwrap().timeout, d);
        assert_eq!(invoke_request(mk(-5), d).unwrap().timeout, d);
        assert_eq!(
            invoke_request(mk(i32::MAX), d).unwrap().timeout,
            MAX_INVOKE_TIMEOUT
        );
        assert_eq!(
            invoke_request(mk(250), d).unwrap().timeout,
            Duration::from_millis(250)
        );
    }
}
