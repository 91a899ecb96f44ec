//! The containerd backend (SPEC §7–§8). Placeholder: the constructor signature is fixed.

use esb_runtime::RuntimeError;
use esb_runtime::settings::{CniSettings, CommonSettings, ContainerdSettings};

/// containerd-backed [`esb_runtime::Runtime`].
pub struct ContainerdRuntime {
    _private: (),
}

impl ContainerdRuntime {
    /// Connects to containerd (bounded retry), prepares the namespace, CNI conflist, identity
    /// file and resolv.conf. Does not reconcile (the server calls `reconcile`).
    pub async fn connect(
        common: CommonSettings,
        containerd: ContainerdSettings,
        cni: CniSettings,
    ) -> Result<Self, RuntimeError> {
        let _ = (common, containerd, cni);
        Err(RuntimeError::unimplemented("containerd backend not built yet"))
    }
}
