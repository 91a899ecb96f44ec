//! `esbctl`'s library half: the agent client (plaintext, TLS, mTLS, bearer token), shared
//! with the end-to-end tests.

pub mod client;
