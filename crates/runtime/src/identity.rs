//! Identity derived from the brand slug (SPEC §5): brand resolution, containerd namespace,
//! CNI network/bridge names, default subnet slots, label keys and the env prefix.

use std::collections::BTreeMap;

/// Sources for brand resolution (env values; `None` or blank = unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrandSources {
    pub esb_brand_slug: Option<String>,
    pub project_name: Option<String>,
    pub containers_network: Option<String>,
    pub env: Option<String>,
}

/// Brand resolution failed: nothing usable was configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot resolve the brand slug: set ESB_BRAND_SLUG, PROJECT_NAME, or CONTAINERS_NETWORK (not bridge/host/none)"
)]
pub struct BrandError;

/// Lowercase, keep `[a-z0-9]`, every run of other characters -> one `-`, trim `-`.
pub fn sanitize_slug(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut pending_dash = false;
    for c in raw.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        } else {
            pending_dash = true;
        }
    }
    out
}

/// `value` with `suffix` cut off its end (ASCII case-insensitive), if present.
fn cut_suffix<'a>(value: &'a str, suffix: &str) -> Option<&'a str> {
    let split = value.len().checked_sub(suffix.len())?;
    let tail = value.get(split..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &value[..split])
}

/// Non-blank, trimmed value of an optional source.
fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `sanitize(cut)`, or `sanitize(uncut)` when the cut one is empty.
fn sanitize_or_uncut(cut: &str, uncut: &str) -> String {
    let slug = sanitize_slug(cut);
    if slug.is_empty() {
        sanitize_slug(uncut)
    } else {
        slug
    }
}

/// Resolves the brand slug from its sources (SPEC §5, first non-empty wins).
pub fn resolve_brand(src: &BrandSources) -> Result<String, BrandError> {
    if let Some(slug) = present(&src.esb_brand_slug).map(sanitize_slug)
        && !slug.is_empty()
    {
        return Ok(slug);
    }
    let env = present(&src.env);
    if let Some(project) = present(&src.project_name) {
        let cut = env
            .and_then(|e| {
                cut_suffix(project, &format!("-{e}"))
                    .or_else(|| cut_suffix(project, &format!("_{e}")))
            })
            .unwrap_or(project);
        let slug = sanitize_or_uncut(cut, project);
        if !slug.is_empty() {
            return Ok(slug);
        }
    }
    if let Some(network) = present(&src.containers_network)
        && !["bridge", "host", "none"]
            .iter()
            .any(|n| network.eq_ignore_ascii_case(n))
    {
        let mut suffixes = vec!["-external".to_string(), "_external".to_string()];
        if let Some(e) = env {
            suffixes.push(format!("-{e}"));
            suffixes.push(format!("_{e}"));
        }
        // Each suffix is cut at most once, in this order (SPEC §5).
        let cut = suffixes.iter().fold(network, |acc, suffix| {
            cut_suffix(acc, suffix).unwrap_or(acc)
        });
        let slug = sanitize_or_uncut(cut, network);
        if !slug.is_empty() {
            return Ok(slug);
        }
    }
    Err(BrandError)
}

/// The md5 digest of `s`.
fn md5(s: &str) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes()).into()
}

/// Number of /23 slots in 10.0.0.0/8 once second octet 88 is skipped.
pub const SUBNET_SLOTS: u32 = 255 * 128;

/// The agent's identity: brand `b` and ENV. Everything else is derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    brand: String,
    env: String,
}

impl Identity {
    pub fn new(brand: impl Into<String>, env: impl Into<String>) -> Self {
        Self {
            brand: brand.into(),
            env: env.into(),
        }
    }

    /// `b` (may be empty only in tests; resolution refuses an empty brand).
    pub fn brand(&self) -> &str {
        &self.brand
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    /// `nb`: the brand, or `esb` when empty.
    pub fn network_brand(&self) -> &str {
        if self.brand.is_empty() {
            "esb"
        } else {
            &self.brand
        }
    }

    /// containerd namespace = `b`.
    pub fn namespace(&self) -> &str {
        &self.brand
    }

    /// CNI network name `<nb>-net`.
    pub fn cni_network_name(&self) -> String {
        format!("{}-net", self.network_brand())
    }

    /// Bridge name: `esb-` + first 4 chars of nb without `-` + first 6 hex of md5(nb).
    pub fn bridge_name(&self) -> String {
        let nb = self.network_brand();
        let short: String = nb.chars().filter(|c| *c != '-').take(4).collect();
        let digest = hex::encode(md5(nb));
        format!("esb-{short}{}", &digest[..6])
    }

    /// Default /23 subnet for slot `k` (SPEC §5), e.g. `10.184.208.0/23` for `esb`, k=0.
    pub fn subnet_slot(&self, k: u32) -> String {
        let d = md5(self.network_brand());
        let base = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % SUBNET_SLOTS;
        let s = (base + k % SUBNET_SLOTS) % SUBNET_SLOTS;
        let mut second = s / 128;
        if second >= 88 {
            second += 1;
        }
        let third = (s % 128) * 2;
        format!("10.{second}.{third}.0/23")
    }

    /// Label prefix `com.<b>`.
    pub fn label_prefix(&self) -> String {
        format!("com.{}", self.brand)
    }

    /// Env prefix: uppercase b with `-` -> `_`.
    pub fn env_prefix(&self) -> String {
        self.brand.to_uppercase().replace('-', "_")
    }

    /// `created_by` value: `<b>-agent`.
    pub fn created_by(&self) -> String {
        format!("{}-agent", self.brand)
    }

    /// Label key `<b>_env`.
    pub fn env_label_key(&self) -> String {
        format!("{}_env", self.brand)
    }

    /// Label key `com.<b>.kind` (value `function`).
    pub fn kind_label_key(&self) -> String {
        format!("com.{}.kind", self.brand)
    }

    /// Label key `<b>_function` (value: raw function name).
    pub fn function_label_key(&self) -> String {
        format!("{}_function", self.brand)
    }

    /// Label key `com.<b>.owner` (value: owner id).
    pub fn owner_label_key(&self) -> String {
        format!("com.{}.owner", self.brand)
    }

    /// The three labels that mark a worker as managed by this brand+ENV (List, GC filter).
    pub fn managed_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("created_by".to_string(), self.created_by()),
            (self.env_label_key(), self.env.clone()),
            (self.kind_label_key(), "function".to_string()),
        ])
    }

    /// Every label a new worker carries (SPEC §5).
    pub fn worker_labels(&self, function_name: &str, owner_id: &str) -> BTreeMap<String, String> {
        let mut labels = self.managed_selector();
        labels.insert(self.function_label_key(), function_name.to_string());
        labels.insert(self.owner_label_key(), owner_id.to_string());
        labels
    }

    /// The function name and owner id a worker's labels carry (empty when missing): how
    /// both backends read them back (List, inspect).
    pub fn function_and_owner<'a>(
        &self,
        labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> (String, String) {
        let (function_key, owner_key) = (self.function_label_key(), self.owner_label_key());
        let (mut function, mut owner) = (String::new(), String::new());
        for (k, v) in labels {
            if *k == function_key {
                function.clone_from(v);
            } else if *k == owner_key {
                owner.clone_from(v);
            }
        }
        (function, owner)
    }

    /// True when `labels` carry the managed selector of this brand+ENV.
    pub fn is_managed(&self, labels: &BTreeMap<String, String>) -> bool {
        self.managed_selector()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests;
