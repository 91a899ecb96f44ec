//! `esb-agent`: the node agent daemon (`serve`, the default) and its operator CLI (`config`).
//! This file only wires: parse flags, load config, start logging and signals, run.

mod cli;
mod config;
mod logging;
mod serve;
mod signals;

use std::process::ExitCode;

use config::{Layered, ProcessEnv};

/// Exit codes: 0 clean, 1 runtime failure, 2 bad configuration (130: forced by a second signal).
const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
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
                eprintln!("esb-agent: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
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
