//! The agent's gRPC server: thin handlers over `Arc<dyn Runtime>`, the worker table, the
//! InvokeWorker proxy, authentication (mTLS, token, allow-list), health, reflection and the
//! Prometheus endpoint. Entry point: [`bind`], then [`BoundServer::run`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod admission;
mod authz;
mod convert;
mod drain;
mod error;
mod events;
mod grpc;
mod health;
mod invoke;
mod listen;
mod logtail;
mod metrics;
mod model;
mod ready;
mod rpc;
mod serve;
mod service;
pub mod settings;
mod standby;
mod status;
mod tls;
mod workers;

pub use error::ServerError;
// The worker-response parser is a fuzz target (fuzz/) and has a test of its own.
pub use invoke::{InvokeReply, parse_worker_response};
pub use serve::{BoundServer, bind};
pub use settings::*;
pub use status::ApiError;
