//! Unpack: apply each layer onto a snapshot prepared on its parent chain id, check the diff id,
//! commit it under its chain id. Existing chain ids are skipped (layers are shared).

use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::types::Descriptor;
use esb_runtime::RuntimeError;

use super::ImageStore;
use super::oci::Desc;
use crate::client::{is_not_found, status_err};

pub(super) async fn unpack(
    store: &ImageStore,
    layers: &[Desc],
    diff_ids: &[String],
    chain: &[String],
    lease: &str,
) -> Result<(), RuntimeError> {
    // Walk down from the top: once a chain id exists, everything below it does too.
    let mut first_missing = chain.len();
    for i in (0..chain.len()).rev() {
        if exists(store, &chain[i]).await? {
            break;
        }
        first_missing = i;
    }
    for i in first_missing..chain.len() {
        let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
        apply_layer(store, &layers[i], &diff_ids[i], &chain[i], parent, lease).await?;
    }
    Ok(())
}

async fn exists(store: &ImageStore, chain_id: &str) -> Result<bool, RuntimeError> {
    let c = &store.client;
    match c
        .snapshots()
        .stat(c.req_t(StatSnapshotRequest {
            snapshotter: store.snapshotter.clone(),
            key: chain_id.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if is_not_found(&s) => Ok(false),
        Err(s) => Err(status_err("stat snapshot", s)),
    }
}

async fn apply_layer(
    store: &ImageStore,
    layer: &Desc,
    diff_id: &str,
    chain_id: &str,
    parent: &str,
    lease: &str,
) -> Result<(), RuntimeError> {
    let c = &store.client;
    let key = format!("esb-unpack-{}-{}", crate::lease::random_hex(6), chain_id);
    let mounts = c
        .snapshots()
        .prepare(c.leased(
            PrepareSnapshotRequest {
                snapshotter: store.snapshotter.clone(),
                key: key.clone(),
                parent: parent.to_string(),
                labels: Default::default(),
            },
            lease,
        ))
        .await
        .map_err(|s| status_err("prepare unpack snapshot", s))?
        .into_inner()
        .mounts;
    let result = async {
        let applied = c
            .diff()
            .apply(c.leased(
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        annotations: Default::default(),
                    }),
                    mounts,
                    payloads: Default::default(),
                    sync_fs: false,
                },
                lease,
            ))
            .await
            .map_err(|s| status_err("apply layer", s))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if applied != diff_id {
            return Err(RuntimeError::internal(format!(
                "layer {} unpacked to {applied}, config says {diff_id}",
                layer.digest
            )));
        }
        match c
            .snapshots()
            .commit(c.leased(
                CommitSnapshotRequest {
                    snapshotter: store.snapshotter.clone(),
                    name: chain_id.to_string(),
                    key: key.clone(),
                    labels: Default::default(),
                },
                lease,
            ))
            .await
        {
            Ok(_) => Ok(true),
            // A concurrent unpack committed the same chain id first.
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(false),
            Err(s) => Err(status_err("commit snapshot", s)),
        }
    }
    .await;
    if !matches!(result, Ok(true)) {
        let _ = c
            .snapshots()
            .remove(c.req_t(RemoveSnapshotRequest {
                snapshotter: store.snapshotter.clone(),
                key,
            }))
            .await;
    }
    result.map(|_| ())
}
