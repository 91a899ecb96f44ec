//! CNI for workers (SPEC §8): the conflist and identity-file generators, a libcni-style plugin
//! executor, pinned network namespaces, the durable attachment journal and reconcile of
//! IPAM reservations and pins that no live worker owns. Entry point: [`CniNetwork`].

#[cfg(test)]
mod bench;
mod chain;
pub mod conflist;
pub mod error;
pub mod exec;
pub mod firewall;
mod fsutil;
mod ipam;
pub mod journal;
mod netns;
mod network;
mod pool;
pub mod settings;
pub mod spoofchk;

pub use error::CniError;
pub use journal::{AttachState, Attachment};
pub use network::CniNetwork;
pub use settings::{CniSettings, DEFAULT_CNI_PLUGIN_TIMEOUT, WorkerFirewall};
