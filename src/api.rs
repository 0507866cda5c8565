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
    /// bangerd has begun to stop: it takes no new operations and ends every stream.
    #[serde(default)]
    pub shutting_down: bool,
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

/// `daemon.operations.retry`: run the pending undos of a stuck operation again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationsRetryParams {
    pub op_id: OpId,
}

/// `daemon.operations.retry`: the operation after its undos succeeded (rolled back). When an
/// undo fails again the answer is an `operation_failed` error instead, and it stays stuck.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationsRetryResult {
    pub operation: OperationView,
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
    /// How the ssh setup of the VM's latest boot went, as far as this bangerd saw it (it
    /// keeps no record of boots before it started: `None` then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<VmSshStatus>,
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

/// `kernel.pull`: fetch a kernel from the catalog (`kernel.catalog`) and register it: a bundle
/// tarball unpacked, or a Debian kernel package converted into a bundle on this host. A
/// stream: with `progress`, its items are [`KernelPullProgress`]; the result is the
/// [`KernelView`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPullParams {
    pub name: String,
    /// Replace a kernel of the same name (refused while a VM that boots it runs).
    #[serde(default)]
    pub force: bool,
    /// Send progress items before the result (a plain call leaves it false).
    #[serde(default)]
    pub progress: bool,
}

/// What a kernel pull reports while it runs: an item of a `kernel.pull` stream, and of a
/// `vm.create` stream that pulls its kernel. Not in the log (the log has the steps). Items of
/// these streams are tagged by `event`; a client ignores events it does not know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum KernelPullProgress {
    /// Bytes are arriving (reported at the start, about every MiB, and at the end).
    KernelDownload {
        name: String,
        url: String,
        done_bytes: u64,
        total_bytes: u64,
    },
    /// The download is verified; the bundle is being made from it: a `debian_package`
    /// converted, a `bundle` unpacked.
    KernelConvert { name: String, kind: String },
}

/// `kernel.catalog`: what `kernel pull` can fetch, and what this host has of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelCatalogResult {
    pub kernels: Vec<KernelCatalogItem>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelCatalogItem {
    pub name: String,
    /// `debian_package` or `bundle`.
    pub kind: String,
    /// The kernel release (`uname -r` in the guest).
    pub version: String,
    pub arch: String,
    /// The download's size.
    pub size_bytes: u64,
    /// Where it is downloaded from (after the configured mirrors).
    pub url: String,
    pub sha256: String,
    pub description: String,
    pub state: KernelCatalogState,
}

/// Whether a catalog kernel is here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelCatalogState {
    /// Pulled from this catalog entry.
    Pulled,
    /// Not here: `kernel pull NAME` fetches it.
    Available,
    /// A kernel of this name is here, but it did not come from this entry (imported, or
    /// pulled from another catalog); `kernel pull NAME --force` replaces it.
    Other,
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

pub use crate::operations::image_promote::ImagePromoteParams;
pub use crate::operations::image_pull::{
    ImageProgress, ImagePullParams, ImagePullResult, PullItem, PullOutcome,
};
pub use crate::registry::PruneSummary as ImageCachePruneResult;

/// `image.cache.prune`: empty the OCI blob cache (or say what that would free).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageCachePruneParams {
    #[serde(default)]
    pub dry_run: bool,
}

/// `image.catalog`: the image catalog, and which of its entries are pulled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCatalogResult {
    /// What `vm create` / `vm run` boot without `--image`.
    pub default_image: String,
    /// The kernel of images pulled by raw OCI reference.
    pub default_kernel: String,
    pub entries: Vec<CatalogEntryView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntryView {
    pub name: String,
    pub description: String,
    pub kernel: String,
    /// `oci:REF` or `bundle:URL`.
    pub source: String,
    /// A bundle's download size; unknown for an OCI entry until it is resolved.
    pub size_bytes: Option<u64>,
    /// `pulled` (an image of this name came from this entry), `available`, or `name-taken`
    /// (an image of this name came from elsewhere: pull the entry with `--name`).
    pub state: String,
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
    /// Only events recorded at or after this time (milliseconds since the Unix epoch, compared
    /// with each envelope's `at_unix_ms`), on top of `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_unix_ms: Option<u64>,
}

/// One host resource that carries banger's name but that the log does not know (see
/// `daemon::orphans`): what `daemon.orphans` lists and `daemon.orphans.remove` removes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrphanView {
    pub handle: Handle,
    /// What it is, for people: `tap bt1f00`, `directory /…/vms/00ab…`, `process 4242 (…)`.
    pub what: String,
    /// A command a person can run to remove it by hand.
    pub remove_with: String,
}

/// `daemon.orphans`: the orphans now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrphansResult {
    pub orphans: Vec<OrphanView>,
}

/// `daemon.orphans.remove`: what was removed (each recorded as an `orphan_found` event), and
/// what could not be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrphansRemoveResult {
    pub removed: Vec<OrphanView>,
    pub failed: Vec<OrphanFailure>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrphanFailure {
    pub orphan: OrphanView,
    pub error: String,
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

/// `vm.create`: define a VM from an image and boot it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmCreateParams {
    pub name: String,
    pub image: String,
    /// A registered kernel; default: the image's kernel.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub work_disk_mib: Option<u64>,
    /// The VMM that runs it; default: the config's `vm.vmm` (`auto`).
    #[serde(default)]
    pub vmm: Option<crate::host::backends::VmmChoice>,
    /// Answer as soon as the operation has started (the op id and VM id), instead of when the
    /// VM runs and its agent answers. Follow it with `banger ops` or `banger events --op`.
    #[serde(default)]
    pub no_wait: bool,
    /// Send progress items (a kernel pulled on first use: [`KernelPullProgress`]) before the
    /// result; `vm.create` is a stream then. A plain call leaves it false.
    #[serde(default)]
    pub progress: bool,
}

/// `vm.create`: the operation, and the VM as it stands when the answer is written (running
/// unless `no_wait` was asked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmCreateResult {
    pub op_id: OpId,
    pub vm_id: VmId,
    pub name: String,
    /// `None` only when the VM is not in the views yet (a `no_wait` answer can be that quick).
    pub vm: Option<VmView>,
}

/// `vm.set`: change the shape of a stopped VM. Absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSetParams {
    pub name: String,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Grows the work disk (ext4 resized in place); shrinking is refused.
    #[serde(default)]
    pub work_disk_mib: Option<u64>,
}

/// `vm.stop`, `vm.restart`: which VM, and how long its guest gets to power off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStopParams {
    pub name: String,
    /// How long the guest gets after Ctrl-Alt-Del before its VMM is killed; 0 kills it at
    /// once (no grace). At most [`MAX_STOP_TIMEOUT_MS`]. Default: the configured
    /// `timeouts.stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The longest stop timeout a request may ask for: one hour. A longer one is far more likely
/// a unit mistake (seconds taken for milliseconds) than a wish, and it would hold the VM's
/// claim, and so every other operation on it, for that long.
pub const MAX_STOP_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// `vm.start`, `vm.stop`, `vm.restart`, `vm.kill`, `vm.set`: the VM after the operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmResult {
    pub vm: VmView,
}

/// `vm.delete`: what was removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmDeleteResult {
    pub name: String,
    pub vm_id: VmId,
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

/// How the ssh setup at a VM's boot went (the `ssh-setup` step of `vm.create` and
/// `vm.start`): `vm show` says it, `vm ssh` explains itself with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VmSshStatus {
    /// banger's key is installed for `user` and the guest's host key is the recorded one.
    Ready {
        user: String,
        fingerprint_sha256: String,
    },
    /// The image has no ssh server (`vm exec -tt NAME` gives a shell instead).
    NoSshd,
    /// The setup failed; the boot went on.
    Failed { reason: String },
    /// The guest presented another host key than the one recorded: not recorded, and ssh
    /// refuses it.
    HostKeyChanged {
        recorded_sha256: String,
        presented_sha256: String,
    },
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

// ---- the guest agent: vm.exec, vm.logs, vm.health, vm.ping ------------------------------------
//
// Bytes (command output, console text) cross the JSON wire as standard base64 (RFC 4648, with
// padding) in fields named `data`: console and command output are arbitrary bytes, and base64
// costs a third more where a JSON array of numbers would cost three to four times more.

/// `vm.exec`: run a command in a running VM through its guest agent. A stream: items are
/// [`VmExecItem`]s (output chunks, in the order the agent sent them), the final result a
/// [`VmExecResult`]. A client that hangs up ends the command: bangerd drops the agent
/// connection, and the agent kills the command's process group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmExecParams {
    pub name: VmName,
    /// The program and its arguments; `argv[0]` is looked up on the guest's `PATH`.
    pub argv: Vec<String>,
    /// Added to the command's (clean) environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Absolute working directory in the guest (default: the guest user's home).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Feed the command's stdin: after this request the client writes [`VmExecInput`] lines
    /// on the same connection, ending its stdin with one whose `eof` is true. Without it the
    /// command's stdin is `/dev/null`. A connection whose exec had stdin (or a tty) is closed
    /// after the result (input the command did not read may still be on its way, and is not
    /// a request).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Run the command on a pseudo-terminal in the guest, of this size: its stdin, stdout and
    /// stderr are the terminal, output comes back as stdout only, and the client's input lines
    /// (as with `stdin`, which a tty implies) are what the user types; they may also carry
    /// `resize`. Needs a guest agent of protocol 2 or later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<VmExecTty>,
}

impl VmExecParams {
    /// Whether the client writes [`VmExecInput`] lines after the request.
    pub fn takes_input(&self) -> bool {
        self.stdin || self.tty.is_some()
    }
}

/// The pseudo-terminal a `vm.exec` asks for: the client terminal's size and type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmExecTty {
    pub rows: u16,
    pub cols: u16,
    /// `TERM` for the command (the client's own); none: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// One line of a `vm.exec` client's input: stdin bytes `{"data":"aGkK"}` and last
/// `{"eof":true}` (which may carry data too); `{"resize":{"rows":50,"cols":132}}` when the
/// client's terminal changed size (only with `tty`); `{"signal":2}` to send the command a
/// signal (a Linux signal number; with a tty it goes to the terminal's foreground process
/// group, else to the command's process group). Resizes and signals may follow the `eof`.
/// Each line is at most the 1 MiB request limit; the CLI sends [`EXEC_STDIN_CHUNK_BYTES`] of
/// stdin at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmExecInput {
    #[serde(default, with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<u8>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eof: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<VmExecResize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// A terminal's new size, in a [`VmExecInput`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmExecResize {
    pub rows: u16,
    pub cols: u16,
}

/// How much stdin the CLI puts in one [`VmExecInput`] line: the agent's frame payload size, so
/// that one line becomes one stdin frame.
pub const EXEC_STDIN_CHUNK_BYTES: usize = crate::agent::protocol::MAX_CHUNK_LEN;

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecStream {
    Stdout,
    Stderr,
}

/// One chunk of a command's output: `{"stream":"stdout","data":"aGkK"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExecItem {
    pub stream: ExecStream,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// How the command ended: exactly one of `exit_code` and `signal` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExecResult {
    /// The command's pid in the guest.
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl VmExecResult {
    /// The status a shell reports: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            // Neither: a result from a confused peer; report a generic failure.
            (None, None) => 1,
        }
    }
}

/// `vm.logs`: the VM's serial console. A stream: items are [`VmLogsItem`]s, the final result
/// a [`VmLogsEnd`]. Without `follow` it ends at the end of the file as it was; with `follow`
/// it keeps sending what the console appends until the client hangs up or the VM is deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmLogsParams {
    pub name: VmName,
    #[serde(default)]
    pub follow: bool,
    /// Start this many bytes before the end instead of at the beginning.
    #[serde(default)]
    pub tail_bytes: Option<u64>,
}

/// Console bytes starting at `offset` in the console file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmLogsItem {
    pub offset: u64,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// Why a console stream ended, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmLogsEnd {
    /// The offset after the last byte sent.
    pub offset: u64,
    /// True when it ended because the VM was deleted.
    #[serde(default)]
    pub deleted: bool,
}

/// `vm.health`: what the guest agent says about itself, and one round trip's time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmHealthResult {
    pub name: String,
    pub health: crate::agent::protocol::Health,
    pub rtt_us: u64,
}

/// `vm.ping`: one round trip through the guest agent (the connection is already open, so
/// this is the agent's answer time, not the connect time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPingResult {
    pub name: String,
    pub agent_version: String,
    pub rtt_us: u64,
}

/// Serde glue for `Vec<u8>` as a standard base64 string (RFC 4648 alphabet, with padding).
///
/// Hand-written rather than a dependency: it is forty lines, and the wire format is the
/// standard one any client library decodes.
pub mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Decodes padded standard base64; anything else is an error naming the problem.
    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let text = text.as_bytes();
        if !text.len().is_multiple_of(4) {
            return Err(format!(
                "base64 text of {} characters is not a multiple of 4",
                text.len()
            ));
        }
        let value = |c: u8| -> Result<u32, String> {
            match c {
                b'A'..=b'Z' => Ok(u32::from(c - b'A')),
                b'a'..=b'z' => Ok(u32::from(c - b'a') + 26),
                b'0'..=b'9' => Ok(u32::from(c - b'0') + 52),
                b'+' => Ok(62),
                b'/' => Ok(63),
                other => Err(format!("invalid base64 character {:?}", other as char)),
            }
        };
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        let quads = text.len() / 4;
        for (index, quad) in text.chunks(4).enumerate() {
            let last = index + 1 == quads;
            let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
            if pad > 2 || (pad > 0 && !last) {
                return Err("misplaced base64 padding".into());
            }
            let mut n = 0u32;
            for &c in &quad[..4 - pad] {
                n = (n << 6) | value(c)?;
            }
            n <<= 6 * pad as u32;
            let bytes = n.to_be_bytes();
            out.extend_from_slice(&bytes[1..4 - pad]);
        }
        Ok(out)
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode(&text).map_err(serde::de::Error::custom)
    }

    #[cfg(test)]
    mod tests {
        use super::{decode, encode};

        #[test]
        fn round_trips_every_length_and_byte() {
            let all: Vec<u8> = (0..=255u8).collect();
            for len in 0..all.len() {
                let text = encode(&all[..len]);
                assert_eq!(decode(&text).as_deref(), Ok(&all[..len]), "{len}");
            }
        }

        #[test]
        fn matches_rfc_4648_vectors() {
            for (plain, coded) in [
                ("", ""),
                ("f", "Zg=="),
                ("fo", "Zm8="),
                ("foo", "Zm9v"),
                ("foob", "Zm9vYg=="),
                ("fooba", "Zm9vYmE="),
                ("foobar", "Zm9vYmFy"),
            ] {
                assert_eq!(encode(plain.as_bytes()), coded);
                assert_eq!(decode(coded).as_deref(), Ok(plain.as_bytes()));
            }
        }

        #[test]
        fn refuses_malformed_text() {
            for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "===="] {
                assert!(decode(bad).is_err(), "{bad:?}");
            }
        }
    }
}

#[cfg(test)]
mod wire_shape_tests {
    use super::*;

    #[test]
    fn exec_stdin_lines_and_stop_timeouts_have_the_documented_shape() {
        let chunk = VmExecInput {
            data: b"hi\n".to_vec(),
            ..VmExecInput::default()
        };
        assert_eq!(serde_json::to_string(&chunk).unwrap(), r#"{"data":"aGkK"}"#);
        let end: VmExecInput = serde_json::from_str(r#"{"eof":true}"#).unwrap();
        assert_eq!(
            end,
            VmExecInput {
                eof: true,
                ..VmExecInput::default()
            }
        );
        assert!(serde_json::from_str::<VmExecInput>(r#"{"method":"vm.list"}"#).is_err());
        let resize = VmExecInput {
            resize: Some(VmExecResize {
                rows: 50,
                cols: 132,
            }),
            ..VmExecInput::default()
        };
        assert_eq!(
            serde_json::to_string(&resize).unwrap(),
            r#"{"resize":{"rows":50,"cols":132}}"#
        );
        let signal: VmExecInput = serde_json::from_str(r#"{"signal":2}"#).unwrap();
        assert_eq!(signal.signal, Some(2));

        // Old clients send neither field: no stdin, the configured timeout.
        let exec: VmExecParams = serde_json::from_str(r#"{"name":"dev","argv":["true"]}"#).unwrap();
        assert!(!exec.stdin && exec.tty.is_none() && !exec.takes_input());
        let exec: VmExecParams = serde_json::from_str(
            r#"{"name":"dev","argv":["sh"],"tty":{"rows":24,"cols":80,"term":"xterm"}}"#,
        )
        .unwrap();
        assert!(exec.takes_input());
        assert_eq!(exec.tty.as_ref().map(|t| (t.rows, t.cols)), Some((24, 80)));
        let stop: VmStopParams = serde_json::from_str(r#"{"name":"dev"}"#).unwrap();
        assert_eq!(stop.timeout_ms, None);
        let stop: VmStopParams = serde_json::from_str(r#"{"name":"dev","timeout_ms":0}"#).unwrap();
        assert_eq!(stop.timeout_ms, Some(0));
    }
}

/// `dns.status`: bangerd's DNS server for `NAME.vm` on the bridge's address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatusResult {
    /// The bridge's address, where it listens (UDP and TCP port 53) and which guests are
    /// given as their name server while it serves.
    pub address: String,
    pub serving: bool,
    /// Who bound port 53: `bangerd` itself, or `banger-helper`, which passed the sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_by: Option<String>,
    /// Why it does not serve: the last attempt's error. `None` with `serving` false: no VM
    /// network exists yet (it starts with the first VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the host's own lookups of `.vm` reach it; `None` until it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_routing: Option<DnsRouting>,
}

/// `network.status`: banger-helper as bangerd reaches it, and the network bangerd uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatusResult {
    pub helper_socket: String,
    /// The bridge bangerd's VMs join (`network.bridge`).
    pub bridge: String,
    /// The bridge's address and the guests' prefix (`network.gateway`), `172.30.0.1/24`.
    pub gateway: String,
    /// bangerd starts banger-helper itself when none answers (it runs as root).
    pub starts_helper: bool,
    pub helper: HelperStatus,
}

/// What banger-helper said when bangerd asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HelperStatus {
    /// Nothing answers on the socket.
    Unreachable { error: String },
    /// It answers but refuses this user (not on its allow-list).
    Refused { error: String },
    /// It speaks another protocol version than this bangerd.
    Incompatible { version: u32, wanted: u32 },
    /// It answers, but could not say what the networks are (nft missing, say).
    Failed { error: String },
    /// It answers: the networks its configuration gives this user, and their state.
    Answers {
        version: u32,
        networks: Vec<GivenNetwork>,
    },
}

/// One network banger-helper gives this user, as the host has it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GivenNetwork {
    pub bridge: String,
    /// `172.30.0.1/24`.
    pub gateway: String,
    /// The bridge exists with that address.
    pub bridge_up: bool,
    /// banger's nftables table holds its masquerade rule.
    pub nat: bool,
}

/// How the host's `.vm` lookups reach bangerd's DNS server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DnsRouting {
    /// systemd-resolved sends `~vm` to the bridge's address.
    Routed,
    /// Nothing routes them (no systemd-resolved, say): `reason` says why.
    Skipped { reason: String },
    /// Asking banger-helper to route them failed.
    Failed { error: String },
}

// ---- vm.stats, vm.ports ------------------------------------------------------------------------

pub use crate::agent::tool_ports::{Protocol as PortProtocol, SocketOwner};
pub use crate::agent::tool_stats::{CpuStats, DiskStats, GuestStats, MemoryStats};
pub use crate::host::web_probe::WebScheme;

/// `vm.stats` (parameters: [`NameParams`]): the guest's figures, as its agent's `--stats`
/// tool reads them, and what the VM costs the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmStatsResult {
    pub name: String,
    pub guest: GuestStats,
    pub host: VmHostStats,
}

/// The host's side of `vm.stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmHostStats {
    /// The VMM process (Firecracker or QEMU).
    pub vmm_pid: u32,
    /// Its resident memory (`VmRSS`): the guest memory it touched, and its own.
    pub vmm_rss_bytes: u64,
    /// Its user plus system CPU time since it started, in seconds.
    pub vmm_cpu_secs: f64,
    /// The VM's disk files on the host: `root`, then `work`.
    pub disks: Vec<VmDiskFile>,
}

/// One of a VM's disk files on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDiskFile {
    /// `root` or `work`.
    pub role: String,
    pub path: String,
    /// The size the guest sees.
    pub apparent_bytes: u64,
    /// What the host's filesystem allocated for it (the files are sparse or reflinked).
    pub allocated_bytes: u64,
}

/// `vm.ports` (parameters: [`NameParams`]): the guest's listening sockets, one row per
/// service (the IPv4 and IPv6 sockets of one port and scope merged), sorted by port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPortsResult {
    pub name: String,
    /// The guest's address on the bridge, through which TCP ports were probed.
    pub guest_ip: Option<std::net::Ipv4Addr>,
    pub ports: Vec<VmPort>,
    /// The guest had more sockets than one answer lists; the highest ports were left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One listening service of a guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPort {
    pub protocol: PortProtocol,
    pub port: u16,
    /// Who can reach it.
    pub scope: PortScope,
    /// Every local address its sockets are bound to (`0.0.0.0` and `::` for one service
    /// listening on both families).
    pub addresses: Vec<std::net::IpAddr>,
    /// The processes holding its sockets, by pid.
    pub processes: Vec<SocketOwner>,
    /// What a probe from the host found it speaks (TCP ports reachable from the host only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebScheme>,
    /// `http://<guest ip>:PORT/` (or https) for a web listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Who can reach a guest's listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortScope {
    /// Bound to every address (`0.0.0.0`, `::`): reachable from the host through the bridge.
    Any,
    /// Bound to the guest's own bridge address: reachable from the host too.
    Guest,
    /// Bound to loopback (`127.0.0.1`, `::1`): only the guest's own processes reach it.
    GuestLocal,
    /// Bound to some other address of the guest (another interface, an IPv6 address).
    Other,
}

impl PortScope {
    pub fn as_str(self) -> &'static str {
        match self {
            PortScope::Any => "any",
            PortScope::Guest => "guest",
            PortScope::GuestLocal => "guest_local",
            PortScope::Other => "other",
        }
    }

    /// Whether the host can reach it over the bridge.
    pub fn reachable_from_host(self) -> bool {
        matches!(self, PortScope::Any | PortScope::Guest)
    }
}

// ---- vm.workspace.* ---------------------------------------------------------------------------

pub use crate::operations::workspace_export::ExportSummary as WorkspaceExportResult;
pub use crate::operations::workspace_import::ImportSummary as WorkspaceImportResult;

/// `vm.workspace.import`: copy the git checkout containing `host_path` (absolute) into the VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceImportParams {
    pub name: String,
    pub host_path: String,
    /// Where in the guest; absent: `/work/<checkout directory name>`.
    #[serde(default)]
    pub guest_path: Option<String>,
    /// Overwrite guest files changed since the last sync.
    #[serde(default)]
    pub force: bool,
}

/// `vm.workspace.export`: the guest's changes back into the checkout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceExportParams {
    pub name: String,
    /// The checkout (absolute); absent: the one the workspace was imported from.
    #[serde(default)]
    pub host_path: Option<String>,
    /// Overwrite host files changed since the import.
    #[serde(default)]
    pub force: bool,
}

/// `vm.workspace.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceStatusParams {
    pub name: String,
    /// Only look at the host checkout (no agent call): what `vm exec`'s warning asks.
    #[serde(default)]
    pub host_only: bool,
}

/// Where a workspace stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceSync {
    /// Nothing was imported into the VM.
    None,
    InSync,
    GuestAhead,
    HostAhead,
    /// Both sides changed since the last sync.
    Diverged,
}

impl WorkspaceSync {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceSync::None => "no workspace",
            WorkspaceSync::InSync => "in sync",
            WorkspaceSync::GuestAhead => "guest ahead",
            WorkspaceSync::HostAhead => "host ahead",
            WorkspaceSync::Diverged => "both changed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceStatusResult {
    pub name: String,
    pub state: WorkspaceSync,
    #[serde(default)]
    pub host_path: String,
    #[serde(default)]
    pub guest_path: String,
    /// The commit the import recorded, and the checkout's now.
    #[serde(default)]
    pub commit: String,
    #[serde(default)]
    pub host_commit: String,
    #[serde(default)]
    pub guest_changed: Vec<String>,
    #[serde(default)]
    pub host_changed: Vec<String>,
    /// False with `host_only` (or when the guest could not be asked): `guest_changed` is empty
    /// because nobody looked.
    #[serde(default)]
    pub guest_checked: bool,
    #[serde(default)]
    pub imported_at_unix_ms: u64,
    /// What limited the answer, when something did (no manifest cached: commit compared only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}
