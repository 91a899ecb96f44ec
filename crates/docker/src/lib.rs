//! The Docker Engine backend (SPEC §9). Placeholder: the constructor signature is fixed.

use esb_runtime::RuntimeError;
use esb_runtime::settings::{CommonSettings, DockerSettings};

/// Docker-backed [`esb_runtime::Runtime`].
pub struct DockerRuntime {
    _private: (),
}

impl DockerRuntime {
    /// Connects to the Docker Engine (bounded retry, negotiated API version).
    pub async fn connect(common: CommonSettings, docker: DockerSettings) -> Result<Self, RuntimeError> {
        let _ = (common, docker);
        Err(RuntimeError::unimplemented("docker backend not built yet"))
    }
}
