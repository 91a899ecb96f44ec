//! The log writer alone (`esb-containerd-log-writer`), for this crate's real-containerd tests;
//! production runs the same code as `esb-agent`'s `log-writer` mode.

use std::process::ExitCode;

use esb_containerd::log_writer;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let r = match log_writer::parse_args(&args) {
        Some(parsed) => parsed.and_then(|a| log_writer::run(&a).map_err(|e| e.to_string())),
        None => Err("usage: log-writer PATH max-bytes N (pairs in any order)".to_string()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esb-containerd-log-writer: {e}");
            ExitCode::FAILURE
        }
    }
}
