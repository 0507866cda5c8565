//! Which VMM runs a VM: the backends bangerd has, the `auto` rule, and the lookup by a VM's
//! recorded backend.
//!
//! A VM's backend is chosen once, when it is created (`vm create/run --vmm`, else the
//! config's `vm.vmm`, default `auto`), and recorded in the log (`VmBackendChosen`, beside
//! `VmDefined`). Every later start, stop, kill, undo, re-adoption and agent connection of
//! that VM goes through [`Backends::get`] with the recorded kind, never through a guess: a
//! VM created on QEMU stays on QEMU even if the host later gains a working KVM.
//!
//! The `auto` rule ([`decide`]), in order:
//!
//! ```text
//!  BANGER_FIRECRACKER is set ─────────────────────────────▶ firecracker (that binary: a
//!                                                           deliberate choice, e.g. the fake)
//!  KVM runs a stock guest, firecracker is installed and
//!  this user can open /dev/net/tun ───────────────────────▶ firecracker (it opens each VM's
//!                                                           tap itself, by name)
//!  QEMU is installed ─────────────────────────────────────▶ qemu (KVM if it runs a stock
//!                                                           guest, else TCG)
//!  otherwise ─────────────────────────────────────────────▶ refused, saying why each one
//!                                                           cannot run
//! ```
//!
//! An explicit `--vmm firecracker` or `--vmm qemu` only needs the binary, and Firecracker a
//! `/dev/net/tun` this user can open (QEMU gets its tap from banger-helper); the reason
//! recorded says when KVM would not run a stock guest under Firecracker.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use banger_events::VmmKind;
use serde::{Deserialize, Serialize};

use super::jailed::JailedFirecracker;
use super::kvm::{self, KvmSupport};
use super::qemu::{Accel, QemuVmm};
use super::vmm::{FIRECRACKER_ENV, FirecrackerVmm, Vmm};

/// What a user asks for: a backend, or `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmChoice {
    #[default]
    Auto,
    Firecracker,
    Qemu,
}

impl VmmChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            VmmChoice::Auto => "auto",
            VmmChoice::Firecracker => "firecracker",
            VmmChoice::Qemu => "qemu",
        }
    }
}

impl fmt::Display for VmmChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmmChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<VmmChoice, String> {
        match s {
            "auto" => Ok(VmmChoice::Auto),
            "firecracker" => Ok(VmmChoice::Firecracker),
            "qemu" => Ok(VmmChoice::Qemu),
            other => Err(format!(
                "unknown VMM {other:?}: use auto, firecracker or qemu"
            )),
        }
    }
}

/// A decision: the backend and the sentence that says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub vmm: VmmKind,
    pub reason: String,
}

/// Where a VMM binary is, or why it is not usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binary {
    Found(PathBuf),
    Missing(String),
}

/// What the `auto` rule looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub kvm: KvmSupport,
    pub firecracker: Binary,
    /// `BANGER_FIRECRACKER`, when set: the firecracker binary was chosen on purpose.
    pub firecracker_from_env: Option<PathBuf>,
    pub qemu: Binary,
    /// Whether this process can open `/dev/net/tun` (the error when it cannot): Firecracker
    /// opens each VM's tap through it.
    pub tun: Result<(), String>,
    /// banger-helper starts Firecracker (`firecracker.launch`), through its jailer, which
    /// makes `/dev/net/tun` and `/dev/kvm` inside the VM's chroot: this process's own access
    /// to them does not matter then.
    pub firecracker_via_helper: bool,
    /// banger-helper opens `/dev/kvm` for QEMU ([`super::qemu::kvm_through_helper`]).
    pub qemu_kvm_via_helper: bool,
    /// KVM as a VMM that banger-helper gives `/dev/kvm` finds it ([`kvm::probe_device`]).
    pub kvm_device: KvmSupport,
}

impl HostFacts {
    /// Looks at this host now for the `firecracker` and `qemu` binaries configured: KVM,
    /// each binary, `BANGER_FIRECRACKER`, and `/dev/net/tun`; `firecracker_via_helper` says
    /// who starts Firecracker.
    pub fn probe(
        firecracker: &Path,
        qemu: &Path,
        firecracker_via_helper: bool,
        qemu_kvm_via_helper: bool,
    ) -> HostFacts {
        HostFacts {
            kvm: kvm::probe(),
            kvm_device: kvm::probe_device(),
            qemu_kvm_via_helper,
            firecracker: find_binary(firecracker, "firecracker"),
            firecracker_from_env: std::env::var_os(FIRECRACKER_ENV)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from),
            qemu: find_binary(qemu, "QEMU"),
            tun: tun_access(),
            firecracker_via_helper,
        }
    }

    /// KVM as Firecracker finds it: this process's, or (launched by banger-helper's jailer,
    /// which makes `/dev/kvm` in its chroot) what root finds where this process may not open it.
    pub fn firecracker_kvm(&self) -> &KvmSupport {
        self.kvm_seen_by(self.firecracker_via_helper)
    }

    /// KVM as QEMU finds it, the same way (banger-helper opens it for a QEMU 8.2+).
    pub fn qemu_kvm(&self) -> &KvmSupport {
        self.kvm_seen_by(self.qemu_kvm_via_helper)
    }

    fn kvm_seen_by(&self, via_helper: bool) -> &KvmSupport {
        match &self.kvm {
            KvmSupport::NoAccess(_) if via_helper => &self.kvm_device,
            own => own,
        }
    }

    /// Whether Firecracker can open VMs' taps: the error when it cannot.
    pub fn firecracker_tun(&self) -> Result<(), String> {
        if self.firecracker_via_helper {
            Ok(())
        } else {
            self.tun.clone()
        }
    }
}

/// Whether this process can open `/dev/net/tun` for reading and writing.
pub fn tun_access() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map(drop)
        .map_err(|e| format!("{TUN_DEVICE} cannot be opened by this user ({e})"))
}

/// The device a VMM opens a tap through when it opens it by name.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// The `auto` rule and the checks of an explicit choice (see the module docs).
pub fn decide(requested: VmmChoice, facts: &HostFacts) -> Result<Choice, String> {
    let accel = Accel::for_host(facts.qemu_kvm());
    let kvm = facts.firecracker_kvm();
    let tun = facts.firecracker_tun();
    let qemu_reason = |why: &str| format!("{why}; QEMU runs it under {}", accel.as_str());
    match requested {
        VmmChoice::Firecracker => match &facts.firecracker {
            Binary::Found(_) if tun.is_err() => Err(format!(
                "--vmm firecracker: firecracker opens each VM's tap itself, and {}; use --vmm qemu, whose tap banger-helper passes in",
                tun.as_ref().err().map_or("", String::as_str)
            )),
            Binary::Found(_) if kvm.runs_stock_guests() => Ok(Choice {
                vmm: VmmKind::Firecracker,
                reason: "asked for with --vmm firecracker".to_owned(),
            }),
            Binary::Found(_) => Ok(Choice {
                vmm: VmmKind::Firecracker,
                reason: format!(
                    "asked for with --vmm firecracker (note: {}; a stock guest may not boot)",
                    kvm.describe()
                ),
            }),
            Binary::Missing(why) => Err(format!("--vmm firecracker: {why}")),
        },
        VmmChoice::Qemu => match &facts.qemu {
            Binary::Found(_) => Ok(Choice {
                vmm: VmmKind::Qemu,
                reason: qemu_reason("asked for with --vmm qemu"),
            }),
            Binary::Missing(why) => Err(format!("--vmm qemu: {why}")),
        },
        VmmChoice::Auto => {
            if let Some(binary) = &facts.firecracker_from_env {
                // A deliberate choice: refused, not overruled, where it cannot work.
                if let Err(tun) = &tun {
                    return Err(format!(
                        "{FIRECRACKER_ENV} names {}, but firecracker opens each VM's tap itself, and {tun}; unset {FIRECRACKER_ENV} to run VMs on QEMU, whose tap banger-helper passes in",
                        binary.display()
                    ));
                }
                return Ok(Choice {
                    vmm: VmmKind::Firecracker,
                    reason: format!("auto: {FIRECRACKER_ENV} names {}", binary.display()),
                });
            }
            let no_firecracker = match (&facts.firecracker, kvm.runs_stock_guests()) {
                (Binary::Found(_), true) if tun.is_err() => format!(
                    "firecracker opens each VM's tap itself, and {} (QEMU's comes from banger-helper)",
                    tun.as_ref().err().map_or("", String::as_str)
                ),
                (Binary::Found(path), true) => {
                    return Ok(Choice {
                        vmm: VmmKind::Firecracker,
                        reason: format!(
                            "auto: {}, and firecracker is {}",
                            kvm.describe(),
                            path.display()
                        ),
                    });
                }
                (_, false) => kvm.describe(),
                (Binary::Missing(why), true) => why.clone(),
            };
            match &facts.qemu {
                Binary::Found(_) => Ok(Choice {
                    vmm: VmmKind::Qemu,
                    reason: qemu_reason(&format!("auto: {no_firecracker}")),
                }),
                Binary::Missing(why) => Err(format!(
                    "no VMM can run a VM on this host: firecracker cannot ({no_firecracker}), \
                     and neither can QEMU ({why}); install QEMU (`apt-get install \
                     qemu-system-x86`) or, on a host whose KVM runs stock guests, firecracker"
                )),
            }
        }
    }
}

/// Finds `binary`: a path with a `/` as it is, a bare name on `PATH`; it must be an
/// executable file.
pub fn find_binary(binary: &Path, what: &str) -> Binary {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if binary.components().count() > 1 || binary.is_absolute() {
        return if executable(binary) {
            Binary::Found(binary.to_path_buf())
        } else {
            Binary::Missing(format!(
                "{what} {} is not an executable file",
                binary.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(binary);
        if executable(&candidate) {
            return Binary::Found(candidate);
        }
    }
    Binary::Missing(format!(
        "{what} ({}) is not installed (not found on PATH)",
        binary.display()
    ))
}

/// The backends of one daemon.
pub struct Backends {
    firecracker: Arc<dyn Vmm>,
    firecracker_binary: PathBuf,
    firecracker_via_helper: bool,
    qemu: Arc<dyn Vmm>,
    qemu_binary: PathBuf,
    qemu_kvm_via_helper: bool,
}

impl Backends {
    pub fn new(firecracker: FirecrackerVmm, qemu: QemuVmm) -> Backends {
        Backends {
            firecracker_binary: firecracker.binary.clone(),
            firecracker: Arc::new(firecracker),
            firecracker_via_helper: false,
            qemu_binary: qemu.binary.clone(),
            qemu_kvm_via_helper: qemu.kvm_opener.is_some() && qemu.accel == Accel::Kvm,
            qemu: Arc::new(qemu),
        }
    }

    /// Any two backends (tests put fakes behind both names).
    pub fn with(
        firecracker: Arc<dyn Vmm>,
        firecracker_binary: PathBuf,
        qemu: Arc<dyn Vmm>,
        qemu_binary: PathBuf,
    ) -> Backends {
        Backends {
            firecracker,
            firecracker_binary,
            firecracker_via_helper: false,
            qemu,
            qemu_binary,
            qemu_kvm_via_helper: false,
        }
    }

    /// Firecracker started by banger-helper's jailer ([`JailedFirecracker`]) instead of by
    /// this process.
    pub fn with_jailed_firecracker(mut self, jailed: JailedFirecracker) -> Backends {
        self.firecracker_binary = jailed.binary().to_path_buf();
        self.firecracker = Arc::new(jailed);
        self.firecracker_via_helper = true;
        self
    }

    /// Firecracker at `binary` (tests: the fake, or a path that does not exist), QEMU from
    /// the environment.
    pub fn firecracker_at(binary: impl Into<PathBuf>) -> Backends {
        Backends::new(
            FirecrackerVmm::new(binary),
            QemuVmm::from_env_or(super::qemu::DEFAULT_QEMU_BINARY),
        )
    }

    /// The backend of `kind`.
    pub fn get(&self, kind: VmmKind) -> &Arc<dyn Vmm> {
        match kind {
            VmmKind::Firecracker => &self.firecracker,
            VmmKind::Qemu => &self.qemu,
        }
    }

    /// Looks at the host now: KVM, and whether each binary is there.
    pub fn facts(&self) -> HostFacts {
        HostFacts::probe(
            &self.firecracker_binary,
            &self.qemu_binary,
            self.firecracker_via_helper,
            self.qemu_kvm_via_helper,
        )
    }

    /// Decides which backend a new VM gets.
    pub fn choose(&self, requested: VmmChoice) -> Result<Choice, String> {
        decide(requested, &self.facts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm: KvmSupport, firecracker: bool, qemu: bool) -> HostFacts {
        let binary = |found: bool, name: &str| {
            if found {
                Binary::Found(PathBuf::from(format!("/usr/bin/{name}")))
            } else {
                Binary::Missing(format!("{name} is not installed"))
            }
        };
        HostFacts {
            kvm,
            firecracker: binary(firecracker, "firecracker"),
            firecracker_from_env: None,
            qemu: binary(qemu, "qemu-system-x86_64"),
            tun: Ok(()),
            firecracker_via_helper: false,
            qemu_kvm_via_helper: false,
            kvm_device: KvmSupport::ThroughHelper,
        }
    }

    #[test]
    fn firecracker_needs_a_tun_this_user_can_open_and_auto_takes_qemu_without_one() {
        let mut host = facts(KvmSupport::Usable, true, true);
        host.tun = Err("/dev/net/tun cannot be opened by this user (denied)".into());
        let choice = decide(VmmChoice::Auto, &host).unwrap();
        assert_eq!(choice.vmm, VmmKind::Qemu);
        assert!(
            choice.reason.contains("opens each VM's tap itself")
                && choice.reason.contains("denied")
                && choice.reason.ends_with("kvm"),
            "{}",
            choice.reason
        );
        let error = decide(VmmChoice::Firecracker, &host).unwrap_err();
        assert!(
            error.contains("denied") && error.contains("--vmm qemu"),
            "{error}"
        );
        host.firecracker_from_env = Some("/opt/fake-firecracker".into());
        let error = decide(VmmChoice::Auto, &host).unwrap_err();
        assert!(
            error.contains("/opt/fake-firecracker") && error.contains("denied"),
            "{error}"
        );
        // With banger-helper's jailer starting Firecracker, this user's tun does not matter.
        host.firecracker_via_helper = true;
        assert_eq!(
            decide(VmmChoice::Auto, &host).unwrap().vmm,
            VmmKind::Firecracker
        );
        host.firecracker_from_env = None;
        assert_eq!(
            decide(VmmChoice::Firecracker, &host).unwrap().vmm,
            VmmKind::Firecracker
        );
    }

    #[test]
    fn kvm_this_user_cannot_open_counts_where_banger_helper_hands_it_over() {
        let mut host = facts(KvmSupport::NoAccess("denied".into()), true, true);
        let choice = decide(VmmChoice::Auto, &host).unwrap();
        assert_eq!(choice.vmm, VmmKind::Qemu);
        assert!(choice.reason.ends_with("tcg"), "{}", choice.reason);
        // QEMU 8.2+ with its /dev/kvm from banger-helper: KVM, still QEMU (firecracker would
        // open /dev/kvm itself).
        host.qemu_kvm_via_helper = true;
        let choice = decide(VmmChoice::Auto, &host).unwrap();
        assert_eq!(choice.vmm, VmmKind::Qemu);
        assert!(
            choice.reason.contains("denied") && choice.reason.ends_with("kvm"),
            "{}",
            choice.reason
        );
        // The jailer makes /dev/kvm in Firecracker's chroot: auto takes Firecracker.
        host.firecracker_via_helper = true;
        let choice = decide(VmmChoice::Auto, &host).unwrap();
        assert_eq!(choice.vmm, VmmKind::Firecracker);
        assert!(
            choice.reason.contains("banger-helper opens it"),
            "{}",
            choice.reason
        );
        // What root finds decides then: a PVM-backed KVM runs no stock guest either way.
        host.kvm_device = KvmSupport::Pvm;
        let choice = decide(VmmChoice::Auto, &host).unwrap();
        assert_eq!(choice.vmm, VmmKind::Qemu);
        assert!(choice.reason.ends_with("tcg"), "{}", choice.reason);
    }

    #[test]
    fn auto_prefers_firecracker_where_kvm_runs_stock_guests() {
        let choice = decide(VmmChoice::Auto, &facts(KvmSupport::Usable, true, true)).unwrap();
        assert_eq!(choice.vmm, VmmKind::Firecracker);
        assert!(
            choice.reason.contains("KVM can run a stock guest"),
            "{}",
            choice.reason
        );
    }

    #[test]
    fn auto_falls_back_to_qemu_and_says_why() {
        let cases = [
            (KvmSupport::Pvm, true, "PVM", "tcg"),
            (KvmSupport::Absent, true, "no /dev/kvm", "tcg"),
            (KvmSupport::NoAccess("denied".into()), true, "denied", "tcg"),
            (
                KvmSupport::Usable,
                false,
                "firecracker is not installed",
                "kvm",
            ),
        ];
        for (kvm, firecracker, why, accel) in cases {
            let choice = decide(VmmChoice::Auto, &facts(kvm, firecracker, true)).unwrap();
            assert_eq!(choice.vmm, VmmKind::Qemu);
            assert!(choice.reason.contains(why), "{}", choice.reason);
            assert!(choice.reason.ends_with(accel), "{}", choice.reason);
        }
    }

    #[test]
    fn auto_takes_the_firecracker_named_by_the_environment() {
        let mut host = facts(KvmSupport::Pvm, false, true);
        host.firecracker_from_env = Some("/opt/fake-firecracker".into());
        let choice = decide(VmmChoice::Auto, &host).unwrap();
        assert_eq!(choice.vmm, VmmKind::Firecracker);
        assert!(
            choice.reason.contains("/opt/fake-firecracker"),
            "{}",
            choice.reason
        );
    }

    #[test]
    fn when_nothing_can_run_the_error_says_why_for_each() {
        let error = decide(VmmChoice::Auto, &facts(KvmSupport::Pvm, true, false)).unwrap_err();
        assert!(error.contains("PVM"), "{error}");
        assert!(
            error.contains("qemu-system-x86_64 is not installed"),
            "{error}"
        );
        assert!(error.contains("apt-get install qemu-system-x86"), "{error}");
    }

    #[test]
    fn an_explicit_choice_needs_its_binary() {
        let host = facts(KvmSupport::Pvm, false, false);
        assert!(
            decide(VmmChoice::Qemu, &host)
                .unwrap_err()
                .contains("--vmm qemu")
        );
        assert!(
            decide(VmmChoice::Firecracker, &host)
                .unwrap_err()
                .contains("--vmm firecracker")
        );
        let host = facts(KvmSupport::Pvm, true, true);
        let choice = decide(VmmChoice::Firecracker, &host).unwrap();
        assert_eq!(choice.vmm, VmmKind::Firecracker);
        assert!(choice.reason.contains("may not boot"), "{}", choice.reason);
        assert_eq!(decide(VmmChoice::Qemu, &host).unwrap().vmm, VmmKind::Qemu);
    }

    #[test]
    fn choices_parse_as_users_type_them() {
        for choice in [VmmChoice::Auto, VmmChoice::Firecracker, VmmChoice::Qemu] {
            assert_eq!(choice.as_str().parse::<VmmChoice>(), Ok(choice));
        }
        assert!(
            "kvm"
                .parse::<VmmChoice>()
                .unwrap_err()
                .contains("auto, firecracker or qemu")
        );
    }

    #[test]
    fn binaries_are_found_on_path_or_where_named() {
        assert!(matches!(
            find_binary(Path::new("sh"), "sh"),
            Binary::Found(_)
        ));
        assert!(matches!(
            find_binary(Path::new("/nonexistent/firecracker"), "firecracker"),
            Binary::Missing(_)
        ));
        assert!(matches!(
            find_binary(Path::new("no-such-binary-here"), "x"),
            Binary::Missing(why) if why.contains("not found on PATH")
        ));
    }
}
