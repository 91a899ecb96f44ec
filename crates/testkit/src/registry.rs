//! A registry of the test's own on loopback (plain HTTP/1.1, no auth) that serves images as
//! told, honestly or not: blobs longer than declared, without end or one byte per 100 ms, and
//! manifests without end. For the backends' hostile-registry tests (review M1); it counts
//! connections and blob requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `sha256:<hex>` of `b`.
pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// How a blob is served.
#[derive(Debug, Clone)]
pub enum Blob {
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// Zeros without end (no Content-Length, body until close).
    Endless,
    /// One byte per 100 ms.
    Trickle,
}

#[derive(Debug, Default)]
pub struct Registry {
    /// Path → (content type, body) for manifests.
    pub manifests: HashMap<String, Vec<u8>>,
    /// Path → declared Content-Length (None: no length) of manifests that never end.
    pub endless_manifests: HashMap<String, Option<u64>>,
    pub blobs: HashMap<String, Blob>,
    pub blob_requests: AtomicUsize,
    pub connections: AtomicUsize,
}

/// Adds repository `name` whose manifest declares `config_size` and `layer_size`; the blobs are
/// served as given.
pub fn add_image(
    reg: &mut Registry,
    name: &str,
    config: (Vec<u8>, i64, Blob),
    layer: Option<(String, i64, Blob)>,
) {
    let (config_bytes, config_size, config_blob) = config;
    let config_digest = digest(&config_bytes);
    let layers = match &layer {
        Some((d, size, _)) => format!(
            r#"[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{size}}}]"#
        ),
        None => "[]".to_string(),
    };
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":{layers}}}"#
    );
    // By tag and by digest (dockerd fetches the digest it resolved).
    reg.manifests.insert(
        format!("/v2/{name}/manifests/{}", digest(manifest.as_bytes())),
        manifest.clone().into_bytes(),
    );
    reg.manifests.insert(
        format!("/v2/{name}/manifests/latest"),
        manifest.into_bytes(),
    );
    reg.blobs
        .insert(format!("/v2/{name}/blobs/{config_digest}"), config_blob);
    if let Some((d, _, blob)) = layer {
        reg.blobs.insert(format!("/v2/{name}/blobs/{d}"), blob);
    }
}

/// Serves `reg` on 127.0.0.1 (an ephemeral port) until the runtime ends.
pub async fn serve(reg: Arc<Registry>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback listener");
    let addr = l.local_addr().expect("loopback listener");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            reg.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(conn(reg.clone(), s));
        }
    });
    addr
}

async fn conn(reg: Arc<Registry>, mut s: TcpStream) {
    loop {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b).await {
                // A TLS ClientHello (dockerd tries HTTPS first even for an insecure
                // registry): refuse it, so the client falls back to plain HTTP.
                Ok(1) if head.is_empty() && b[0] == 0x16 => return,
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let is_head = head.starts_with("HEAD ");
        if path == "/v2/" || path == "/v2" {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await;
            continue;
        }
        if let Some(declared) = reg.endless_manifests.get(&path) {
            let length = declared.map_or_else(String::new, |n| format!("content-length: {n}\r\n"));
            let h = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\nconnection: close\r\n{length}\r\n{{\"schemaVersion\":2,\"x\":\""
            );
            let _ = s.write_all(h.as_bytes()).await;
            let spaces = vec![b' '; 64 * 1024];
            while s.write_all(&spaces).await.is_ok() {}
            return;
        }
        if let Some(m) = reg.manifests.get(&path) {
            let h = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ndocker-content-digest: {}\r\ncontent-length: {}\r\n\r\n",
                digest(m),
                m.len()
            );
            let _ = s.write_all(h.as_bytes()).await;
            if !is_head {
                let _ = s.write_all(m).await;
            }
            continue;
        }
        let Some(blob) = reg.blobs.get(&path).cloned() else {
            let body = r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}"#;
            let h = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(h.as_bytes()).await;
            continue;
        };
        reg.blob_requests.fetch_add(1, Ordering::Relaxed);
        match blob {
            Blob::Bytes(b) => {
                let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", b.len());
                let _ = s.write_all(h.as_bytes()).await;
                let _ = s.write_all(&b).await;
            }
            Blob::Endless => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                    .await;
                let zeros = vec![0u8; 64 * 1024];
                while s.write_all(&zeros).await.is_ok() {}
                return;
            }
            Blob::Trickle => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                    .await;
                while s.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return;
            }
        }
    }
}
