//! Logging: one `tracing` subscriber, text or JSON on stderr, filter from the config.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber (once, at start-up).
pub fn init(s: &LogSettings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&s.filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: journald and log collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let installed = match s.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
