//! The agent's gRPC server: thin handlers over `Arc<dyn Runtime>`, the worker table, the
//! InvokeWorker proxy, authentication (mTLS, token, allow-list), health, reflection and the
//! Prometheus endpoint. Entry point: [`bind`], then [`BoundServer::run`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admission;
pub mod authz;
pub mod convert;
mod drain;
pub mod error;
mod events;
mod grpc;
mod health;
pub mod invoke;
pub mod listen;
pub mod logtail;
pub mod metrics;
pub mod model;
mod ready;
mod rpc;
mod serve;
pub mod service;
pub mod settings;
pub mod standby;
pub mod status;
pub mod tls;
pub mod workers;

pub use error::ServerError;
pub use serve::{BoundServer, bind};
pub use settings::*;
