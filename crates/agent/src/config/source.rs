//! Where setting values come from: a [`Source`] trait (process env, a map in tests) and a
//! layered source where CLI flags override the environment.

use std::collections::BTreeMap;

use super::ConfigError;

/// A source of raw setting values, keyed by env var name.
pub trait Source {
    /// The raw value of `var`, `None` when unset. Non-UTF-8 values are an error.
    fn get(&self, var: &'static str) -> Result<Option<String>, ConfigError>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(ConfigError::new(var, "is not valid UTF-8"))
            }
        }
    }
}

/// A fixed map (tests, and the CLI flags layer).
#[derive(Debug, Default, Clone)]
pub struct MapSource(pub BTreeMap<String, String>);

impl MapSource {
    #[cfg(test)]
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Source for MapSource {
    fn get(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self.0.get(var).cloned())
    }
}

/// `top` (flags) wins over `bottom` (environment).
pub struct Layered<A, B> {
    pub top: A,
    pub bottom: B,
}

impl<A: Source, B: Source> Source for Layered<A, B> {
    fn get(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match self.top.get(var)? {
            Some(v) => Ok(Some(v)),
            None => self.bottom.get(var),
        }
    }
}
