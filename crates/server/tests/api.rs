//! API tests: a real tonic server on 127.0.0.1:0 over FakeRuntime, driven by a tonic client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api {
    pub mod admission;
    pub mod bad_input;
    pub mod events;
    pub mod fuzz;
    pub mod harness;
    pub mod invoke;
    pub mod listen;
    pub mod liveness;
    pub mod logtail;
    pub mod observability;
    pub mod pki;
    pub mod pull;
    pub mod ready;
    pub mod relist;
    pub mod report;
    pub mod service;
    pub mod standby;
    pub mod tls;
    pub mod tls_owner;
    pub mod tls_reload;
    pub mod upstream;
    pub mod worker;
    pub mod worker_logs;
    pub mod worker_response;
}
