//! Image references, one grammar for both backends (issue 11 §1): docker's
//! distribution/reference grammar without a regex (oci-spec's regex costs ~15 MiB of heap for
//! the life of the process), ASCII only as in Go's RE2, docker's domain split, the default
//! registry for references without a host, and the registry allow-list (review M1).

use crate::error::RuntimeError;

const NAME_TOTAL_LENGTH_MAX: usize = 255;
const DEFAULT_TAG: &str = "latest";

/// Why a reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RefError(&'static str);

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host with an optional port (`docker.io` for host-less references).
    pub registry: String,
    /// Path in the registry (`library/x` for docker.io official images).
    pub repository: String,
    /// Tag; `latest` when the reference has neither tag nor digest.
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `name[:tag][@digest]` exactly (no default registry; docker.io when host-less).
    pub fn parse(s: &str) -> Result<Self, RefError> {
        if s.is_empty() {
            return Err(RefError("empty reference"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if !valid_name(name) {
            return Err(RefError("invalid repository name"));
        }
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(RefError("invalid tag"));
        }
        if let Some(d) = digest {
            check_digest(d)?;
        }
        let (registry, repository) = split_domain(name);
        // docker's ParseNormalizedNamed: `UPPER/x` is not a host, so it is a path, and paths
        // are lowercase.
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(RefError("repository name must be lowercase"));
        }
        if repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(RefError("repository name too long"));
        }
        let tag = match (tag, digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// What the gateway sends, trimmed, with `default_registry` in front when the reference
    /// names no registry host (its first component has no `.` or `:` and is not `localhost`).
    pub fn normalize(raw: &str, default_registry: &str) -> Result<Self, RuntimeError> {
        let raw = raw.trim();
        let first = raw.split('/').next().unwrap_or_default();
        let has_host = raw.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let default_registry = default_registry.trim().trim_end_matches('/');
        let full = if has_host || default_registry.is_empty() {
            raw.to_string()
        } else {
            format!("{default_registry}/{raw}")
        };
        Self::parse(&full).map_err(|e| {
            RuntimeError::invalid_argument(format!("invalid image reference {raw:?}"))
                .with_source(e)
        })
    }

    /// `registry/repository`.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository[:tag][@digest]`.
    pub fn whole(&self) -> String {
        let mut s = self.repo();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// Registries images may come from (`CONTAINER_REGISTRY_ALLOWED`, review M1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedRegistries {
    /// Any registry (`*`): the node connects wherever a reference points.
    Any,
    /// Only these hosts (`host[:port]`, compared case-insensitively).
    Only(Vec<String>),
}

impl AllowedRegistries {
    /// Refuses a reference to a registry outside the list, before any connection.
    pub fn check(&self, r: &ImageRef) -> Result<(), RuntimeError> {
        match self {
            Self::Any => Ok(()),
            Self::Only(hosts) if hosts.iter().any(|h| h.eq_ignore_ascii_case(&r.registry)) => {
                Ok(())
            }
            Self::Only(_) => Err(RuntimeError::invalid_argument(format!(
                "registry {:?} is not allowed (CONTAINER_REGISTRY_ALLOWED)",
                r.registry
            ))),
        }
    }
}

/// `[domain/]component(/component)*`; the first segment may be read as a domain or a path
/// component (the regex accepts either).
fn valid_name(name: &str) -> bool {
    let segs: Vec<&str> = name.split('/').collect();
    let rest_ok = |from: usize| segs[from..].iter().all(|c| valid_component(c));
    rest_ok(0) || (segs.len() > 1 && valid_domain(segs[0]) && rest_ok(1))
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Host components (`[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`) joined by `.`,
/// then an optional `:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = host.split('.').all(|h| {
        let b = h.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    });
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}` (ASCII `\w`).
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `algorithm:hex` with a known algorithm and its exact hex length.
fn check_digest(d: &str) -> Result<(), RefError> {
    let (alg, hex) = d.split_once(':').ok_or(RefError("invalid digest format"))?;
    if hex.len() < 32 || !hex.bytes().all(|x| x.is_ascii_hexdigit()) {
        return Err(RefError("invalid digest format"));
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(RefError("unsupported digest algorithm")),
    };
    if hex.len() == want {
        Ok(())
    } else {
        Err(RefError("invalid digest length"))
    }
}

/// docker's normalisation: a first segment without `.`/`:` (and not `localhost`) is part of
/// the path on docker.io; official images get `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((l, r)) if l.contains(['.', ':']) || l == "localhost" => {
            (l.to_string(), r.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_string();
    }
    if domain == "docker.io" && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
mod tests;
