//! A runtime `Observer` that records every observation, for the backends' observer tests.
#![allow(clippy::unwrap_used)] // test code: a poisoned lock is a test failure anyway

use std::sync::Mutex;
use std::time::Duration;

use esb_runtime::{Observer, Phase, PullOutcome};

/// Records every observation, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    pub phases: Mutex<Vec<Phase>>,
    pub pulls: Mutex<Vec<PullOutcome>>,
    pub rollbacks: Mutex<Vec<&'static str>>,
    pub ipam: Mutex<Vec<u64>>,
}

impl Observer for Recorder {
    fn phase(&self, phase: Phase, _d: Duration) {
        self.phases.lock().unwrap().push(phase);
    }
    fn pull(&self, outcome: PullOutcome) {
        self.pulls.lock().unwrap().push(outcome);
    }
    fn rollback(&self, op: &'static str) {
        self.rollbacks.lock().unwrap().push(op);
    }
    fn ipam_reservations(&self, n: u64) {
        self.ipam.lock().unwrap().push(n);
    }
}
