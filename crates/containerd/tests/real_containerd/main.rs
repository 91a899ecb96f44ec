//! Real-daemon tests of the containerd backend against the private containerd of
//! `scripts/dev-env` (skipped unless `ESB_TEST_CONTAINERD_SOCKET` etc. are set; failing when
//! `ESB_REQUIRE_REAL_DAEMONS=1`): one test binary, like the Docker backend's. Each test owns
//! the brand, namespace and subnet of its `World` number; the restart tests run a throwaway
//! containerd of their own.

mod support;

mod events_restart;
mod hostile_registry;
mod images;
mod lifecycle;
mod logs;
mod observe;
mod reconnect;
mod recovery;
mod sandbox;
mod scenarios;
