//! Content store access: read a blob, stream one in (Content.Write), and fix labels of a blob
//! that is already present.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_client::services::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use esb_runtime::RuntimeError;
use prost_types::FieldMask;
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Client, is_not_found, status_err};

/// Largest manifest/config the agent reads into memory.
const MAX_READ: usize = 32 * 1024 * 1024;
/// Chunk size of blob writes.
const CHUNK: usize = 1024 * 1024;

/// Where the bytes of a blob come from.
pub(crate) enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Reads a whole (small) blob.
pub(crate) async fn read(client: &Client, digest: &str) -> Result<Vec<u8>, RuntimeError> {
    let mut stream = client
        .content()
        .read(client.req(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| status_err("read content", s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|s| status_err("read content", s))?;
        out.extend_from_slice(&msg.data);
        if out.len() > MAX_READ {
            return Err(RuntimeError::internal(format!(
                "blob {digest} is too large"
            )));
        }
    }
    Ok(out)
}

/// Labels of a blob, `None` when absent.
pub(crate) async fn info(
    client: &Client,
    digest: &str,
) -> Result<Option<HashMap<String, String>>, RuntimeError> {
    match client
        .content()
        .info(client.req_t(InfoRequest {
            digest: digest.to_string(),
        }))
        .await
    {
        Ok(r) => Ok(Some(
            r.into_inner().info.map(|i| i.labels).unwrap_or_default(),
        )),
        Err(s) if is_not_found(&s) => Ok(None),
        Err(s) => Err(status_err("content info", s)),
    }
}

/// Sets `labels` on an existing blob (other labels untouched).
pub(crate) async fn set_labels(
    client: &Client,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    client
        .content()
        .update(client.req_t(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths }),
        }))
        .await
        .map_err(|s| status_err("update content labels", s))?;
    Ok(())
}

/// Ensures the blob `digest` is present with `labels`: writes it under `lease` when absent,
/// else only updates labels. containerd verifies size and digest at commit.
pub(crate) async fn ensure(
    client: &Client,
    lease: &str,
    digest: &str,
    size: i64,
    source: Source,
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    if let Some(have) = info(client, digest).await? {
        let missing: HashMap<_, _> = labels
            .into_iter()
            .filter(|(k, v)| have.get(k) != Some(v))
            .collect();
        if !missing.is_empty() {
            set_labels(client, digest, missing).await?;
        }
        return Ok(());
    }
    match write(client, lease, digest, size, source, labels.clone()).await {
        Ok(()) => Ok(()),
        // A concurrent writer won the race: just fix labels.
        Err(e) if e.message().contains("already exists") => {
            set_labels(client, digest, labels).await
        }
        Err(e) => Err(e),
    }
}

async fn write(
    client: &Client,
    lease: &str,
    digest: &str,
    size: i64,
    source: Source,
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    let r#ref = format!(
        "esb-{}-{}",
        digest.replace(':', "-"),
        crate::lease::random_hex(4)
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let producer = {
        let r#ref = r#ref.clone();
        let expected = digest.to_string();
        tokio::spawn(async move {
            let mut offset: i64 = 0;
            let send = |data: Vec<u8>, offset: i64| WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: r#ref.clone(),
                total: size,
                expected: expected.clone(),
                offset,
                data,
                labels: HashMap::new(),
            };
            match source {
                Source::Bytes(bytes) => {
                    for chunk in bytes.chunks(CHUNK) {
                        if tx.send(send(chunk.to_vec(), offset)).await.is_err() {
                            return Ok(());
                        }
                        offset += chunk.len() as i64;
                    }
                }
                Source::File(path) => {
                    let mut f = tokio::fs::File::open(&path).await?;
                    loop {
                        let mut buf = vec![0u8; CHUNK];
                        let n = f.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        buf.truncate(n);
                        if tx.send(send(buf, offset)).await.is_err() {
                            return Ok(());
                        }
                        offset += n as i64;
                    }
                }
            }
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref,
                total: size,
                expected,
                offset,
                data: Vec::new(),
                labels,
            };
            let _ = tx.send(commit).await;
            Ok::<(), std::io::Error>(())
        })
    };
    let result = async {
        let mut responses = client
            .content()
            .write(client.leased(ReceiverStream::new(rx), lease))
            .await
            .map_err(|s| status_err("write content", s))?
            .into_inner();
        while let Some(msg) = responses.next().await {
            let msg = msg.map_err(|s| status_err("write content", s))?;
            if msg.action == WriteAction::Commit as i32 {
                return Ok(());
            }
        }
        Err(RuntimeError::internal(format!(
            "content write of {digest} ended before commit"
        )))
    }
    .await;
    match producer.await {
        Ok(Ok(())) => result,
        Ok(Err(e)) => Err(RuntimeError::internal("reading pulled blob").with_source(e)),
        Err(e) => Err(RuntimeError::internal("blob writer task").with_source(e)),
    }
}
