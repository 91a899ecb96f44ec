//! Typed readers over a [`Source`]: each value is trimmed (blank = unset), parsed and
//! range-checked; a bad value is a [`ConfigError`] naming the variable and what is accepted.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::env;
use super::{ConfigError, Source};

/// Longest raw value quoted back in an error message.
const MAX_QUOTED: usize = 64;

/// Typed access to the settings of one source.
pub struct Vars<'a> {
    src: &'a dyn Source,
}

impl<'a> Vars<'a> {
    pub fn new(src: &'a dyn Source) -> Self {
        Self { src }
    }

    /// The trimmed value, `None` when unset or blank.
    pub fn raw(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self
            .src
            .get(var)?
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()))
    }

    /// An error about `value` of `var`; secret values are never quoted.
    pub fn bad(&self, var: &'static str, value: &str, expected: &str) -> ConfigError {
        ConfigError::new(
            var,
            format!("{} is not accepted; expected {expected}", quote(var, value)),
        )
    }

    pub fn string(&self, var: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self.raw(var)?.unwrap_or_else(|| default.to_string()))
    }

    /// `1/true/yes/on` or `0/false/no/off`, case-insensitive.
    pub fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        let Some(v) = self.raw(var)? else {
            return Ok(default);
        };
        match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(self.bad(var, &v, "1, true, yes, on, 0, false, no or off")),
        }
    }

    /// An integer in `min..=max`.
    pub fn u64_in(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(v) = self.raw(var)? else {
            return Ok(default);
        };
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.bad(var, &v, &format!("an integer from {min} to {max}"))),
        }
    }

    /// A duration: `500ms`, `30s`, `2m`, `1h`, or plain seconds; at least `min`.
    pub fn duration(
        &self,
        var: &'static str,
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = self.raw(var)? else {
            return Ok(default);
        };
        let expected = format!(
            "a duration such as 500ms, 30s, 2m or 1h (plain numbers are seconds), at least {}ms",
            min.as_millis()
        );
        match parse_duration(&v) {
            Some(d) if d >= min && d <= Duration::from_secs(7 * 24 * 3600) => Ok(d),
            _ => Err(self.bad(var, &v, &expected)),
        }
    }

    /// An absolute path.
    pub fn abs_path(&self, var: &'static str, default: &str) -> Result<PathBuf, ConfigError> {
        let v = self.string(var, default)?;
        let p = PathBuf::from(&v);
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(self.bad(var, &v, "an absolute path"))
        }
    }

    /// An optional absolute path.
    pub fn opt_abs_path(&self, var: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        match self.raw(var)? {
            None => Ok(None),
            Some(v) if v.starts_with('/') => Ok(Some(PathBuf::from(v))),
            Some(v) => Err(self.bad(var, &v, "an absolute path")),
        }
    }

    /// An IP address.
    pub fn opt_ip(&self, var: &'static str) -> Result<Option<IpAddr>, ConfigError> {
        match self.raw(var)? {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.bad(var, &v, "an IP address such as 0.0.0.0, 127.0.0.1 or ::")),
        }
    }

    /// One of `choices` (case-insensitive, `_` read as `-`).
    pub fn choice<T: Copy>(
        &self,
        var: &'static str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(v) = self.raw(var)? else {
            return Ok(default);
        };
        let norm = v.to_ascii_lowercase().replace('_', "-");
        choices
            .iter()
            .find(|(name, _)| *name == norm)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<_> = choices.iter().map(|(n, _)| *n).collect();
                self.bad(var, &v, &names.join(" or "))
            })
    }
}

/// `"value"` for error messages: secrets are never shown, long values are cut.
pub fn quote(var: &str, value: &str) -> String {
    if env::lookup(var).is_some_and(|s| s.secret) {
        return "the value".to_string();
    }
    let mut shown: String = value.chars().take(MAX_QUOTED).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// `500ms`, `30s`, `2m`, `1h`, or a plain number of seconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Human form of a duration, the inverse of [`parse_duration`] where exact.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) || ms == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m", ms / 60_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in [
            "",
            "s",
            "-1s",
            "1.5s",
            "1d",
            "10 s x",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        for d in ["500ms", "30s", "2m", "0s", "90s"] {
            assert_eq!(format_duration(parse_duration(d).unwrap_or_default()), d);
        }
    }

    #[test]
    fn quoting_hides_secrets_and_cuts_long_values() {
        assert_eq!(quote(env::AGENT_AUTH_TOKEN, "s3cret"), "the value");
        assert_eq!(quote(env::PORT, "x"), "\"x\"");
        let long = quote(env::PORT, &"y".repeat(200));
        assert!(long.len() < 80 && long.contains('…'), "{long}");
    }
}
