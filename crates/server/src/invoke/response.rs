//! Reading a worker's response: first value per header without hop-by-hop headers, and the
//! body streamed up to the configured limit.

use std::collections::HashMap;

use bytes::BytesMut;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::InvokeReply;
use crate::model::is_hop_by_hop;
use crate::status::ApiError;

fn too_large(limit: u64) -> ApiError {
    ApiError::TooLarge(format!("response body too large (limit {limit} bytes)"))
}

/// Reads the whole response; never buffers more than `limit` bytes.
pub async fn read(resp: http::Response<Incoming>, limit: u64) -> Result<InvokeReply, ApiError> {
    let (parts, mut body) = resp.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::Unavailable(format!(
                "worker connection broke while sending its response (not retried): {e}"
            ))
        })?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(InvokeReply {
        status: parts.status.as_u16(),
        headers: headers(&parts.headers),
        body: buf.freeze(),
    })
}

/// First value per header; hop-by-hop ones and those named by `Connection` are removed;
/// values that are not visible ASCII are dropped so the result is safe to forward.
fn headers(h: &HeaderMap) -> HashMap<String, String> {
    let named: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HashMap::with_capacity(h.keys_len());
    for name in h.keys() {
        if is_hop_by_hop(name) || named.iter().any(|n| n == name.as_str()) {
            continue;
        }
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            out.insert(name.as_str().to_owned(), v.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_and_no_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        h.append("connection", "x-private".parse().unwrap());
        h.append("x-private", "p".parse().unwrap());
        h.append("transfer-encoding", "chunked".parse().unwrap());
        let out = headers(&h);
        assert_eq!(out.len(), 1);
        assert_eq!(out["x-a"], "1");
    }
}
