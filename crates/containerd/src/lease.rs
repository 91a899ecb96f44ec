//! containerd leases: every multi-step operation runs under one, so GC never reclaims a blob
//! or snapshot mid-way; deleting it (after the records exist, or on failure) hands the rest to
//! containerd's GC.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex::encode(bytes)
}

/// RFC 3339 UTC timestamp (seconds precision) without a date crate.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        assert_eq!(rfc3339(t), "2026-11-30T00:53:20Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn random_hex_has_length() {
        assert_eq!(random_hex(4).len(), 8);
    }
}
