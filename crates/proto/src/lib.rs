//! Generated code for the `esb.agent.v1` wire contract, plus its file descriptor set
//! (served by gRPC reflection when enabled).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Messages and service stubs of package `esb.agent.v1`.
pub mod v1 {
    tonic::include_proto!("esb.agent.v1");
}

/// Encoded `FileDescriptorSet` of `agent.proto`, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("agent_descriptor");

/// Fully-qualified service name (also registered with gRPC health).
pub const SERVICE_NAME: &str = "esb.agent.v1.AgentService";
/// The legacy service name the old gateway health-checks.
pub const LEGACY_SERVICE_NAME: &str = "agent.v1.AgentService";
