//! The agent's gRPC server: thin handlers over `Arc<dyn Runtime>`, the worker table, the
//! InvokeWorker proxy, authentication (mTLS, token, allow-list), health, reflection and the
//! Prometheus endpoint.

pub mod settings;

pub use settings::*;
