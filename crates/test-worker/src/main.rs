//! `esb-test-worker`: a tiny Lambda RIE-compatible HTTP worker whose behaviour is driven by the
//! invocation payload; the agent's backends and the quickstart are tested against it.

mod behaviour;
mod http;

use std::io::{BufReader, BufWriter};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use behaviour::Outcome;
use http::{Request, Response};

/// The RIE invocation path.
const INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";

/// One invocation at a time, like the RIE; idle keep-alive connections don't hold it.
static INVOKE: Mutex<()> = Mutex::new(());

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Blocks SIGTERM/SIGINT in every thread and exits 0 when one arrives. As PID 1 in a container
/// a signal with the default action is ignored by the kernel; a blocked-and-waited one is not.
fn install_signal_exit() -> std::io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("esb-test-worker: {sig}, exiting");
            }
            std::process::exit(0);
        })?;
    Ok(())
}

fn main() {
    if let Err(e) = install_signal_exit() {
        eprintln!("esb-test-worker: cannot install signal handling: {e}");
        std::process::exit(2);
    }
    if let Some(ms) = env_u64("WORKER_START_DELAY_MS") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let port = env_u64("WORKER_PORT").unwrap_or(8080);
    let host = std::env::var("WORKER_BIND").unwrap_or_else(|_| "0.0.0.0".into());
    let listener = match TcpListener::bind(format!("{host}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("esb-test-worker: cannot listen on {host}:{port}: {e}");
            std::process::exit(2);
        }
    };
    match listener.local_addr() {
        // Tests read this line to learn the port when WORKER_PORT=0.
        Ok(addr) => println!("esb-test-worker listening on {addr}"),
        Err(e) => eprintln!("esb-test-worker: local_addr: {e}"),
    }
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || serve(stream));
                if let Err(e) = spawned {
                    eprintln!("esb-test-worker: cannot spawn connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("esb-test-worker: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Serves requests on one connection until the client closes it or asks to.
fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(&stream);
    loop {
        let req = match http::read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                let resp = Response::json(400, &serde_json::json!({ "error": e.to_string() }));
                let _ = http::write_response(&mut writer, &resp, false);
                return;
            }
        };
        let keep_alive = req.keep_alive;
        match route(&req) {
            Routed::Plain(resp) => {
                if http::write_response(&mut writer, &resp, keep_alive).is_err() {
                    return;
                }
            }
            Routed::Invoke => {
                let _guard = INVOKE.lock().unwrap_or_else(|p| p.into_inner());
                match behaviour::invoke(&req) {
                    Outcome::Drop => {
                        let _ = stream.shutdown(Shutdown::Both);
                        return;
                    }
                    Outcome::Reply(resp, Some(code)) => {
                        let _ = http::write_response(&mut writer, &resp, false);
                        let _ = stream.shutdown(Shutdown::Both);
                        std::process::exit(code);
                    }
                    Outcome::Reply(resp, None) => {
                        if http::write_response(&mut writer, &resp, keep_alive).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if !keep_alive {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

enum Routed {
    Plain(Response),
    Invoke,
}

fn route(req: &Request) -> Routed {
    let path = req.path.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        ("POST", INVOKE_PATH) => Routed::Invoke,
        ("GET", "/health") => {
            Routed::Plain(Response::json(200, &serde_json::json!({"status": "ok"})))
        }
        (_, INVOKE_PATH | "/health") => Routed::Plain(Response::json(
            405,
            &serde_json::json!({"error": "method not allowed"}),
        )),
        _ => Routed::Plain(Response::json(
            404,
            &serde_json::json!({"error": "not found"}),
        )),
    }
}
