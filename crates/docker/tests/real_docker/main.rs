//! Real-daemon tests of the Docker backend against the private dockerd of `scripts/dev-env`
//! (skipped unless `ESB_TEST_DOCKER_HOST` etc. are set; failing when
//! `ESB_REQUIRE_REAL_DAEMONS=1`). Each test owns the brand `esbt-dk-<n>` and removes its
//! containers at start and end.

mod support;

mod failures;
mod isolation;
mod lifecycle;
mod logs;
mod observe;
mod ownership;
mod pulls;
mod scale;
