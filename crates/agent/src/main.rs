//! `esb-agent`: the node agent daemon (`serve`, the default) and its operator CLI (`config`).
//! This file only wires: parse flags, load config, start logging and signals, run.

mod cli;
mod config;
mod logging;
mod serve;
mod signals;

use std::process::ExitCode;

use config::{Layered, ProcessEnv};

/// Allocations from this size up get their own mapping, returned to the system when freed.
#[cfg(target_env = "gnu")]
const OWN_MAPPING_FROM_BYTES: libc::c_int = 1 << 20;

/// Review L7: glibc raises its mmap threshold to the size of each large block freed, so after a
/// few large messages their buffers came from the arenas and stayed there (RSS 29 → 69 MiB
/// after three rounds of four 9 MiB invokes, never given back). A fixed threshold keeps blocks
/// of a megabyte and more out of the arenas (the same rounds: +3 MiB, back at idle). An
/// operator's own `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…` wins.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)] // one FFI call with two integers; see SAFETY
fn give_large_buffers_back() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold")) {
        return;
    }
    // SAFETY: mallopt takes no pointers and only sets an allocator parameter (under glibc's
    // own lock); an unknown parameter or value is refused with 0, which changes nothing.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM_BYTES) };
}

#[cfg(not(target_env = "gnu"))]
fn give_large_buffers_back() {}

/// Exit codes: 0 clean, 1 runtime failure, 2 bad configuration (130: forced by a second signal).
const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    give_large_buffers_back();
    // The per-task log writer containerd's shim runs (`binary://`): dispatched before anything
    // else so it stays small (no config, no async runtime).
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(parsed) = esb_containerd::log_writer::parse_args(&args) {
        return log_writer(parsed);
    }
    let cli = cli::from_matches(&cli::command().get_matches());
    let cfg = match config::load(&Layered {
        top: cli.flags,
        bottom: ProcessEnv,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("esb-agent: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.action {
        cli::Action::Config => {
            print!("{}", config::render(&cfg));
            ExitCode::SUCCESS
        }
        cli::Action::Serve => match run(cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("esb-agent: {}", report(&e));
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}

/// The error and its causes on one line, each said once: an error that already shows its
/// source (`"cannot bind …: Address in use"`) is not followed by that source again.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn log_writer(parsed: Result<esb_containerd::log_writer::Args, String>) -> ExitCode {
    let r = parsed.and_then(|a| esb_containerd::log_writer::run(&a).map_err(|e| e.to_string()));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esb-agent log-writer: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(cfg: config::Config) -> anyhow::Result<()> {
    logging::init(&cfg.logging)?;
    // One TLS crypto provider for the whole process (server, registry client); an error only
    // means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = signals::install()?;
        serve::run(cfg, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_its_parent_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use");
        let bind = esb_server::ServerError::Bind {
            what: "gRPC",
            addr: "127.0.0.1:1".parse().unwrap(),
            source: io,
        };
        let e = anyhow::Error::new(bind).context("cannot start the gRPC server");
        assert_eq!(
            report(&e),
            "cannot start the gRPC server: cannot bind the gRPC listener on 127.0.0.1:1: Address in use"
        );
    }
}
