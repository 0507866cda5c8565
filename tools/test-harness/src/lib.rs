//! The harness of banger's integration-test binaries (`tests/integration`, `helper/tests/helper`,
//! `replay-tests/tests/replay`), built on `libtest-mimic` so that a test which cannot run here
//! is reported to the runner as *skipped*, never as a silent pass.
//!
//! libtest has no way for a running test to say "skipped": a gated test that printed a line and
//! returned showed as PASS. Here each test declares, when it is registered, the [`Tier`]s it
//! needs (root; a real firecracker). When the binary starts, every tier is checked once:
//!
//! ```text
//!  tier available ───────────────────────────▶ the trial runs
//!  tier missing ──┬─ not required ───────────▶ the trial is listed as ignored (nextest: SKIP,
//!                 │                              cargo test: "ignored"); run anyway with
//!                 │                              --ignored, it fails with the reason
//!                 └─ required (CI) ──────────▶ the trial runs and fails with the reason
//! ```
//!
//! `BANGER_REQUIRE_PRIVILEGED=1` (set by `.ci/run`) makes the root, qemu and browser tiers
//! required (CI runs as root and installs QEMU and Chromium). The real firecracker tier is
//! opt-in: setting `BANGER_FIRECRACKER=/path` is what asks for it, so a path that does not work
//! fails its trials rather than skipping them.
//!
//! Every binary also gets one trial that always runs, `tiers::report`: it prints which tiers
//! are missing, why, and how many trials each one skips, and fails when a required tier is
//! missing. (The workspace's `.config/nextest.toml` shows its output even when it passes.)
//!
//! Registering tests: each module of a test binary lists its tests with [`tests!`], and the
//! binary's `main` hands every module's list to [`run`]:
//!
//! ```ignore
//! // vm.rs
//! pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
//!     banger_test_harness::tests![
//!         tokio the_whole_lifecycle needs(Root),   // async, on a current-thread runtime
//!         sync boot_steps_are_idempotent needs(Root),
//!         sync builds_a_release_binary ignore("slow: run with --ignored"),
//!     ]
//! }
//! // main.rs
//! fn main() {
//!     banger_test_harness::run(vec![vm::tests(), cli::tests()]);
//! }
//! ```
//!
//! A test function that no list names is dead code, which the workspace's `-D warnings`
//! refuses: a test cannot be forgotten silently. Trial names are the module path without the
//! crate (`vm::the_whole_lifecycle`), as libtest named them, so filters keep working.
//!
//! [`http`] is a small file server for the tests that download (kernel pulls).

pub mod http;

use std::collections::BTreeSet;
use std::future::Future;

use libtest_mimic::{Arguments, Failed, Trial};

/// What a group of tests needs from the machine they run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Running as root: VM tests run a real banger-helper in a throwaway network namespace
    /// (taps, a bridge, nftables), which only root may make.
    Root,
    /// A real firecracker, named by `BANGER_FIRECRACKER`: the tests that need no booted guest
    /// run against it as well as against the fake.
    Firecracker,
    /// `qemu-system-x86_64` on `PATH`: the tests that boot a real guest kernel (QEMU's microvm
    /// machine, software emulation where KVM cannot run it). Required where root is (CI
    /// installs QEMU).
    Qemu,
    /// A Chromium to drive headless (the dashboard's browser tests): `BANGER_CHROMIUM`, else
    /// `chromium` on `PATH` (Debian's `chromium` package). Required where root is (CI
    /// installs Chromium).
    Browser,
    /// `/dev/kvm` exists: the tests that hand KVM's device to a VMM (whatever the KVM behind
    /// it, PVM included). Not required: a host without KVM has nothing to hand over.
    Kvm,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Root,
        Tier::Firecracker,
        Tier::Qemu,
        Tier::Browser,
        Tier::Kvm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Root => "root",
            Tier::Firecracker => "firecracker",
            Tier::Qemu => "qemu",
            Tier::Browser => "browser",
            Tier::Kvm => "kvm",
        }
    }

    /// `None` when the tier is available here, else why not and how to get it.
    pub fn missing(self) -> Option<String> {
        match self {
            Tier::Root => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let euid = unsafe { libc::geteuid() };
                (euid != 0).then(|| {
                    format!(
                        "not running as root (euid {euid}): these tests run banger-helper in a \
                         throwaway network namespace (taps, a bridge, nftables), which needs \
                         root; run the tests as root (CI does)"
                    )
                })
            }
            Tier::Firecracker => firecracker().is_none().then(|| {
                "BANGER_FIRECRACKER is not set: set it to a real firecracker binary to run the \
                 tests that need no booted guest against it too"
                    .to_owned()
            }),
            Tier::Qemu => qemu().is_none().then(|| {
                format!(
                    "{QEMU} is not on PATH: the tests that boot a real guest kernel need it \
                     (apt-get install qemu-system-x86; CI installs it)"
                )
            }),
            Tier::Kvm => (!std::path::Path::new(KVM_DEVICE).exists())
                .then(|| format!("this host has no {KVM_DEVICE}: no KVM to hand a VMM")),
            Tier::Browser => chromium().is_none().then(|| {
                "no Chromium: install Debian's `chromium` package (apt-get install chromium), \
                 or set BANGER_CHROMIUM to a Chromium or Chrome binary"
                    .to_owned()
            }),
        }
    }

    /// Whether a missing tier fails its trials instead of skipping them.
    pub fn required(self) -> bool {
        match self {
            Tier::Root | Tier::Qemu | Tier::Browser => require_privileged(),
            // Setting BANGER_FIRECRACKER is what asks for the tier, so it is never missing
            // when asked for; a path that does not work fails the trials themselves.
            Tier::Firecracker => false,
            // A machine has KVM or not; the tests cannot install it.
            Tier::Kvm => false,
        }
    }
}

/// `BANGER_FIRECRACKER`, when it names something (the real firecracker to test against).
pub fn firecracker() -> Option<std::path::PathBuf> {
    std::env::var_os("BANGER_FIRECRACKER")
        .filter(|path| !path.is_empty())
        .map(std::path::PathBuf::from)
}

/// KVM's device, which the [`Tier::Kvm`] tests need.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The QEMU binary the [`Tier::Qemu`] tests boot guests with.
pub const QEMU: &str = "qemu-system-x86_64";

/// Where [`QEMU`] is on `PATH`, if it is.
pub fn qemu() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The Chromium the browser tests drive: `BANGER_CHROMIUM` when it names something, else the
/// first of `chromium`, `chromium-browser`, `google-chrome` on `PATH`.
pub fn chromium() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("BANGER_CHROMIUM").filter(|path| !path.is_empty()) {
        return Some(std::path::PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// `BANGER_REQUIRE_PRIVILEGED` is set (to anything but `0` or nothing): a missing root tier
/// fails instead of skipping.
pub fn require_privileged() -> bool {
    std::env::var("BANGER_REQUIRE_PRIVILEGED").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// One registered test: a name, the tiers it needs, and its body.
pub struct Test {
    name: String,
    needs: Vec<Tier>,
    opt_in: Option<&'static str>,
    body: Box<dyn FnOnce() + Send>,
}

impl Test {
    /// A plain test (what `#[test]` was).
    pub fn sync(name: impl Into<String>, body: impl FnOnce() + Send + 'static) -> Test {
        Test {
            name: name.into(),
            needs: Vec::new(),
            opt_in: None,
            body: Box::new(body),
        }
    }

    /// An async test, run to completion on a fresh current-thread runtime with IO and time
    /// enabled: exactly what `#[tokio::test]` did.
    pub fn tokio<F: Future<Output = ()>>(
        name: impl Into<String>,
        body: impl FnOnce() -> F + Send + 'static,
    ) -> Test {
        Test::sync(name, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the test")
                .block_on(body())
        })
    }

    /// The tiers this test needs (see the module documentation for what a missing one does).
    pub fn needs(mut self, tiers: &[Tier]) -> Test {
        self.needs.extend_from_slice(tiers);
        self
    }

    /// Ignored unless asked for (`--ignored`, `--include-ignored`, nextest's
    /// `--run-ignored`), whatever the machine: for a test too slow for every run.
    pub fn ignore(mut self, reason: &'static str) -> Test {
        self.opt_in = Some(reason);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A trial name from `module_path!()` and a function name: the module path without the crate
/// name, as libtest names tests (`integration::vm` + `f` → `vm::f`).
pub fn name(module_path: &str, function: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, module)) => format!("{module}::{function}"),
        None => function.to_owned(),
    }
}

/// Lists a module's tests: `KIND FUNCTION [needs(TIER, …)] [ignore("why")]`, comma-separated,
/// where KIND is `sync` (a plain `fn()`) or `tokio` (an `async fn()`, run as `#[tokio::test]`
/// ran it). Evaluates to a `Vec<Test>`.
#[macro_export]
macro_rules! tests {
    ($($kind:ident $function:ident $(needs($($tier:ident),+ $(,)?))? $(ignore($reason:literal))?),* $(,)?) => {
        ::std::vec![$(
            $crate::Test::$kind(
                $crate::name(::std::module_path!(), ::std::stringify!($function)),
                $function,
            )
            $(.needs(&[$($crate::Tier::$tier),+]))?
            $(.ignore($reason))?
        ),*]
    };
}

/// The name of the trial that reports the tiers.
pub const REPORT: &str = "tiers::report";

/// Runs a test binary: parses libtest's command line (as nextest and cargo test pass it),
/// turns every module's tests into trials, adds [`REPORT`], and exits with the outcome.
pub fn run(modules: Vec<Vec<Test>>) -> ! {
    let args = Arguments::from_args();
    let tests: Vec<Test> = modules.into_iter().flatten().collect();
    let mut names = BTreeSet::new();
    for test in &tests {
        assert!(
            names.insert(test.name.clone()),
            "two tests are registered as {}",
            test.name
        );
    }

    // Each tier is looked at once, so every trial of a run sees the same answer.
    let status: Vec<(Tier, Option<String>, bool)> = Tier::ALL
        .iter()
        .map(|&tier| (tier, tier.missing(), tier.required()))
        .collect();
    let missing = |tier: Tier| {
        status
            .iter()
            .find(|(t, _, _)| *t == tier)
            .and_then(|(_, reason, required)| reason.clone().map(|r| (r, *required)))
    };

    let mut report = Report::default();
    let mut trials = Vec::with_capacity(tests.len() + 1);
    for test in tests {
        let gaps: Vec<(Tier, String, bool)> = test
            .needs
            .iter()
            .filter_map(|&tier| missing(tier).map(|(reason, required)| (tier, reason, required)))
            .collect();
        for (tier, _, _) in &gaps {
            report.count(*tier);
        }
        if test.opt_in.is_some() {
            report.opt_in += 1;
        }
        let required = gaps.iter().any(|(_, _, required)| *required);
        let ignored = test.opt_in.is_some() || (!gaps.is_empty() && !required);
        let why: Option<String> = (!gaps.is_empty()).then(|| {
            let reasons: Vec<String> = gaps
                .iter()
                .map(|(tier, reason, required)| {
                    let how = if *required {
                        " (required: BANGER_REQUIRE_PRIVILEGED is set)"
                    } else {
                        ""
                    };
                    format!("needs the {} tier{how}: {reason}", tier.name())
                })
                .collect();
            reasons.join("; ")
        });
        let body = test.body;
        trials.push(
            Trial::test(test.name, move || match why {
                // A missing tier is a failure when it is required, or when an ignored trial
                // is run anyway: either way, with the reason.
                Some(why) => Err(Failed::from(why)),
                None => {
                    body();
                    Ok(())
                }
            })
            .with_ignored_flag(ignored),
        );
    }
    trials.push(Trial::test(REPORT, move || report.print(&status)));
    libtest_mimic::run(&args, trials).exit()
}

/// What the binary's trials need that is missing, counted for [`REPORT`].
#[derive(Default)]
struct Report {
    gated: Vec<(Tier, usize)>,
    opt_in: usize,
}

impl Report {
    fn count(&mut self, tier: Tier) {
        match self.gated.iter_mut().find(|(t, _)| *t == tier) {
            Some((_, n)) => *n += 1,
            None => self.gated.push((tier, 1)),
        }
    }

    fn print(self, status: &[(Tier, Option<String>, bool)]) -> Result<(), Failed> {
        let binary = std::env::args()
            .next()
            .and_then(|path| {
                std::path::Path::new(&path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        // cargo names test binaries NAME-HASH.
        let binary = binary
            .rsplit_once('-')
            .map_or(binary.as_str(), |(name, _)| name);
        let mut failures = Vec::new();
        println!("test tiers of the {binary} binary:");
        for (tier, reason, required) in status {
            let gated = self
                .gated
                .iter()
                .find(|(t, _)| t == tier)
                .map_or(0, |(_, n)| *n);
            match reason {
                None => println!("  {:<12} available", tier.name()),
                Some(_) if gated == 0 => {
                    println!("  {:<12} missing, but no trial here needs it", tier.name())
                }
                Some(reason) if *required => {
                    println!(
                        "  {:<12} MISSING and required: {gated} trials fail: {reason}",
                        tier.name()
                    );
                    failures.push(format!("the {} tier is missing: {reason}", tier.name()));
                }
                Some(reason) => println!(
                    "  {:<12} skipped: {gated} trials ignored: {reason}",
                    tier.name()
                ),
            }
        }
        if self.opt_in > 0 {
            println!(
                "  {:<12} {} trials ignored unless asked for (--ignored)",
                "opt-in", self.opt_in
            );
        }
        if !require_privileged() {
            println!(
                "  (BANGER_REQUIRE_PRIVILEGED=1 turns a missing root, qemu or browser tier into failures)"
            );
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Failed::from(format!(
                "BANGER_REQUIRE_PRIVILEGED is set and {}",
                failures.join("; ")
            )))
        }
    }
}
