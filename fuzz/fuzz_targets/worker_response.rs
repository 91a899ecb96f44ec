//! A worker's raw HTTP answer, read the way InvokeWorker reads it (hyper's HTTP/1 client, the
//! body bounded by the limit): any bytes end in a reply or a clean error within a second,
//! never a panic, and a reply never exceeds the limit.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use esb_server::parse_worker_response;
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 64 * 1024;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    let out = RT.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), parse_worker_response(data, LIMIT)).await
    });
    let reply = out.expect("the read must end when the worker's bytes do");
    if let Ok(reply) = reply {
        assert!(reply.body.len() as u64 <= LIMIT);
    }
});
