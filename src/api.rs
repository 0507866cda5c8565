//! Parameters and results of every RPC method, shared by bangerd and the CLI.
//!
//! Views (VMs, images, kernels, operations) are the projection types themselves: what the
//! daemon returns is exactly what the log folds to, with nothing re-shaped on the way.

use serde::{Deserialize, Serialize};

pub use banger_events::{Envelope, Handle, OpId, Seq, VmId};
pub use banger_projections::{HandleView, ImageView, KernelView, OperationView, VmView};

/// `daemon.ping`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingResult {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub last_seq: Seq,
    /// `writable`, or `read-only: <why>`.
    pub log_health: String,
    pub uptime_ms: u64,
    pub state_dir: String,
}

/// `daemon.operations.list`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationsListParams {
    /// Include finished operations, not only those in flight (and stuck).
    #[serde(default)]
    pub all: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationsListResult {
    pub operations: Vec<OperationView>,
}

/// `vm.show`, `image.show`, `kernel.show`, `image.delete`, `kernel.remove`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameParams {
    pub name: String,
}

/// `vm.list`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmListResult {
    pub vms: Vec<VmView>,
}

/// `vm.show`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmShowResult {
    pub vm: VmView,
    /// Host resources the VM holds.
    pub handles: Vec<HandleEntry>,
    /// Operations that targeted this VM, newest last.
    pub operations: Vec<OperationView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandleEntry {
    pub handle: Handle,
    #[serde(flatten)]
    pub view: HandleView,
}

/// `image.list`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageListResult {
    pub images: Vec<ImageView>,
}

/// `kernel.list`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelListResult {
    pub kernels: Vec<KernelView>,
}

/// `kernel.import`: copy a kernel (vmlinux, optional initrd) from a directory into banger's
/// kernel store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelImportParams {
    pub name: String,
    /// Absolute path of a directory holding `vmlinux` (or `boot/vmlinux-*`) and optionally
    /// `initrd.img` (or `boot/initrd.img-*`).
    pub from: String,
}

/// `image.register`: record an existing ext4 root filesystem as an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRegisterParams {
    pub name: String,
    /// Absolute path of the rootfs file; it is copied into banger's image store.
    pub rootfs: String,
    /// Name of a registered kernel the image boots with by default.
    #[serde(default)]
    pub kernel: Option<String>,
}

/// `events.follow`: stream events. Items are [`Envelope`]s.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    /// Start after this sequence number (0: from the beginning).
    #[serde(default)]
    pub since: Seq,
    /// Only events of this operation.
    #[serde(default)]
    pub op: Option<OpId>,
    /// Only events about the VM of this name (any VM that ever had it).
    #[serde(default)]
    pub vm: Option<String>,
    /// Keep streaming new events; without it the stream ends once it has caught up.
    #[serde(default)]
    pub follow: bool,
}

/// Final result of a stream that ended because it caught up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventsEnd {
    pub last_seq: Seq,
}

/// Parameters of the methods that take none (`daemon.ping`, `vm.list`, …): an empty object,
/// or `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `daemon.shutdown`: the daemon stops after answering.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShutdownResult {
    pub pid: u32,
}

/// `image.delete`, `kernel.remove`: what was removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoveResult {
    pub name: String,
}

/// A VM name: a DNS label, because every VM is reachable as `<name>.vm`. The CLI checks names
/// with this type before sending them, and the daemon checks them again on arrival.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

/// Why a text is not a [`VmName`]; the message says what a valid one looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid VM name {name:?}: {reason}; VM names are DNS labels: 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit (for example dev or agent-7)"
)]
pub struct InvalidVmName {
    pub name: String,
    pub reason: &'static str,
}

impl VmName {
    pub const MAX_LEN: usize = 63;

    pub fn parse(text: &str) -> Result<VmName, InvalidVmName> {
        let invalid = |reason| InvalidVmName {
            name: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        if text.len() > Self::MAX_LEN {
            return Err(invalid("it is longer than 63 characters"));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(if bad.is_ascii_uppercase() {
                invalid("it has an uppercase letter")
            } else {
                invalid("it has a character other than a-z, 0-9 and '-'")
            });
        }
        if text.starts_with('-') || text.ends_with('-') {
            return Err(invalid("it starts or ends with '-'"));
        }
        Ok(VmName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for VmName {
    type Err = InvalidVmName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        VmName::parse(text)
    }
}

impl TryFrom<String> for VmName {
    type Error = InvalidVmName;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        VmName::parse(&text)
    }
}

impl From<VmName> for String {
    fn from(name: VmName) -> String {
        name.0
    }
}

impl std::fmt::Display for VmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod vm_name_tests {
    use super::VmName;

    #[test]
    fn dns_labels_are_vm_names() {
        for name in ["dev", "a", "agent-7", "0", "x1-y2-z3", &"a".repeat(63)] {
            assert_eq!(
                VmName::parse(name).map(String::from).as_deref(),
                Ok(name),
                "{name:?}"
            );
        }
    }

    #[test]
    fn everything_else_is_refused_with_a_reason() {
        let cases = [
            ("", "empty"),
            (&*"a".repeat(64), "longer than 63"),
            ("Dev", "uppercase"),
            ("dev_1", "other than"),
            ("dev.vm", "other than"),
            ("dév", "other than"),
            ("-dev", "starts or ends"),
            ("dev-", "starts or ends"),
        ];
        for (name, reason) in cases {
            let error = VmName::parse(name).expect_err(name);
            assert!(error.to_string().contains(reason), "{name:?}: {error}");
            assert!(error.to_string().contains("DNS label"), "{error}");
        }
    }

    #[test]
    fn json_checks_names_too() {
        assert!(serde_json::from_str::<VmName>("\"dev\"").is_ok());
        assert!(serde_json::from_str::<VmName>("\"Not Valid\"").is_err());
    }
}
