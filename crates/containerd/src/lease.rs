//! containerd leases: every multi-step operation runs under one, so GC never reclaims a blob
//! or snapshot mid-way; deleting it (after the records exist, or on failure) hands the rest to
//! containerd's GC.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use esb_runtime::RuntimeError;

use crate::client::{Client, status_err};

/// Label that makes containerd expire a lease nobody deleted (agent crash mid-operation).
const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// Creates a lease that expires on its own after `ttl`.
pub(crate) async fn create(client: &Client, ttl: Duration) -> Result<String, RuntimeError> {
    let id = format!("esb-{}", random_hex(8));
    let expire = SystemTime::now()
        .checked_add(ttl)
        .unwrap_or_else(SystemTime::now);
    let labels = HashMap::from([(EXPIRE_LABEL.to_string(), rfc3339(expire))]);
    client
        .leases()
        .create(client.req_t(CreateRequest {
            id: id.clone(),
            labels,
        }))
        .await
        .map_err(|s| status_err("create lease", s))?;
    Ok(id)
}

/// Deletes a lease (missing = fine). `sync` makes containerd collect at once.
pub(crate) async fn delete(client: &Client, id: &str, sync: bool) -> Result<(), RuntimeError> {
    match client
        .leases()
        .delete(client.req_t(DeleteRequest {
            id: id.to_string(),
            sync,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if crate::client::is_not_found(&s) => Ok(()),
        Err(s) => Err(status_err("delete lease", s)),
    }
}

pub(crate) use esb_runtime::clock::{random_hex, rfc3339};
