//! Whether this host's KVM can run a stock guest kernel: what decides whether Firecracker can
//! boot a guest here, and which accelerator QEMU uses.
//!
//! Two things stop a stock guest under KVM besides its absence: no access to `/dev/kvm` (it is
//! `0600 root` on hardened hosts, and the process that launches the VMM must open it), and
//! KVM backed by PVM (the `kvm_pvm` module, as on some cloud VMs without nested
//! virtualisation), whose guests must be PVM-aware: a Debian kernel does not boot under it.
//! The probe only reads: it opens `/dev/kvm` and closes it again.

use std::path::Path;

/// Where KVM's device is.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Present when KVM is backed by PVM.
pub const KVM_PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmSupport {
    /// `/dev/kvm` opens and is hardware KVM: stock guests run.
    Usable,
    /// No `/dev/kvm`.
    Absent,
    /// `/dev/kvm` exists but this process cannot open it.
    NoAccess(String),
    /// KVM is backed by PVM: only PVM-aware guest kernels run.
    Pvm,
    /// `/dev/kvm` is not this process's to open, but banger-helper hands it to the VMM (the
    /// jailer makes it inside a Firecracker's chroot; QEMU 8.2+ takes it as a descriptor),
    /// and it is hardware KVM: stock guests run.
    ThroughHelper,
}

impl KvmSupport {
    pub fn runs_stock_guests(&self) -> bool {
        matches!(self, KvmSupport::Usable | KvmSupport::ThroughHelper)
    }

    /// A sentence for `vm show`, `banger doctor` and errors.
    pub fn describe(&self) -> String {
        match self {
            KvmSupport::Usable => "KVM can run a stock guest here".to_owned(),
            KvmSupport::Absent => format!("this host has no {KVM_DEVICE}"),
            KvmSupport::NoAccess(why) => format!("{KVM_DEVICE} cannot be opened ({why})"),
            KvmSupport::Pvm => format!(
                "KVM here is backed by PVM ({KVM_PVM_MODULE} is loaded), which cannot run a stock guest kernel"
            ),
            KvmSupport::ThroughHelper => format!(
                "KVM can run a stock guest here ({KVM_DEVICE} is not this user's; banger-helper opens it for the VMM)"
            ),
        }
    }
}

/// Probes this host.
pub fn probe() -> KvmSupport {
    probe_at(Path::new(KVM_DEVICE), Path::new(KVM_PVM_MODULE))
}

/// [`probe`] with the paths given, for tests.
pub fn probe_at(device: &Path, pvm_module: &Path) -> KvmSupport {
    if !device.exists() {
        return KvmSupport::Absent;
    }
    if let Err(error) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        return KvmSupport::NoAccess(error.to_string());
    }
    if pvm_module.exists() {
        return KvmSupport::Pvm;
    }
    KvmSupport::Usable
}

/// What a VMM that banger-helper gives `/dev/kvm` finds on this host (see [`probe_device_at`]).
pub fn probe_device() -> KvmSupport {
    probe_device_at(Path::new(KVM_DEVICE), Path::new(KVM_PVM_MODULE))
}

/// What a VMM that banger-helper gives `/dev/kvm` finds, without opening it (this process may
/// not): [`KvmSupport::Absent`], [`KvmSupport::Pvm`] or [`KvmSupport::ThroughHelper`].
pub fn probe_device_at(device: &Path, pvm_module: &Path) -> KvmSupport {
    if !device.exists() {
        KvmSupport::Absent
    } else if pvm_module.exists() {
        KvmSupport::Pvm
    } else {
        KvmSupport::ThroughHelper
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_obstacle_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("kvm");
        let pvm = dir.path().join("kvm_pvm");
        assert_eq!(probe_at(&device, &pvm), KvmSupport::Absent);
        std::fs::write(&device, "").unwrap();
        assert_eq!(probe_at(&device, &pvm), KvmSupport::Usable);
        assert!(probe_at(&device, &pvm).runs_stock_guests());
        std::fs::create_dir(&pvm).unwrap();
        assert_eq!(probe_at(&device, &pvm), KvmSupport::Pvm);
        assert!(probe_at(&device, &pvm).describe().contains("PVM"));
        let unreadable = dir.path().join("missing-dir").join("kvm");
        assert_eq!(probe_at(&unreadable, &pvm), KvmSupport::Absent);
        // Through banger-helper: what root would find, never opened here.
        assert_eq!(probe_device_at(&unreadable, &pvm), KvmSupport::Absent);
        assert_eq!(probe_device_at(&device, &pvm), KvmSupport::Pvm);
        std::fs::remove_dir(&pvm).unwrap();
        let through = probe_device_at(&device, &pvm);
        assert_eq!(through, KvmSupport::ThroughHelper);
        assert!(through.runs_stock_guests() && through.describe().contains("banger-helper"));
    }
}
