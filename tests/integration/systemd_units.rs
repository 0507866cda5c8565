//! `banger system install` under a real systemd: the units run, not only parse.
//!
//! systemd is not PID 1 where the tests run, so `system.rs` checks the units with
//! `systemd-analyze` alone. Here a Debian with systemd as its init (the real-guest tests' root,
//! built with debootstrap) boots as a container (`systemd-nspawn -b`, a network namespace of its
//! own, this build's binaries bound read-only at `/opt/banger`, nftables bound in from the
//! host), and inside it, as root: `banger system install --owner dev`. Then systemd, not the
//! test, starts the services: bangerd as `dev` with no capabilities, banger-helper as root
//! with exactly CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, no new privileges and a seccomp
//! filter; the helper makes the owner's bridge and NAT from inside its sandbox; `doctor` as the
//! owner passes the helper, network and posture checks; `systemd-analyze security` scores the
//! running units; `status`, `restart` (new processes) and `uninstall` (services gone, and the
//! bridge and nftables table with them) do what they say.
//!
//! The container has no CA certificates: bangerd must start without them (it did not, once).
//! It runs systemd-resolved (from Debian's package, downloaded once into the test cache), to
//! which the helper routes `.vm` names from inside its sandbox (which it could not, once).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::guest_images::{GuestRoot, root_tarball};

/// The owner inside the container.
const OWNER: &str = "dev";
const OWNER_UID: u32 = 61031;

/// Where the container sees this build's binaries.
const BIN_DIR: &str = "/opt/banger";
/// And `helper-client` (tools), which asks banger-helper what bangerd would.
const HELPER_CLIENT: &str = "/opt/banger-tools/helper-client";
/// The project's fake jailer and fake firecracker, for an install with `--jailer`.
const FAKE_JAILER: &str = "/opt/banger-tools/fake-jailer";
const FAKE_FIRECRACKER: &str = "/opt/banger-tools/fake-firecracker";

/// How long the container's systemd may take to boot, and a unit to settle.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync installed_units_run_under_a_real_systemd_with_the_privileges_they_declare needs(Root),
        sync the_real_jailer_runs_firecracker_from_inside_the_installed_helper_unit needs(Root, Firecracker),
    ]
}

/// A booted container; powered off (then killed) when dropped.
struct Container {
    nspawn: Child,
    leader: u32,
    root: tempfile::TempDir,
    log: PathBuf,
}

impl Container {
    /// Boots the systemd root in a container of its own, with `binds` (host path, container
    /// path) read-only.
    fn boot(binds: &[(PathBuf, PathBuf)]) -> Container {
        let nspawn = ["/usr/bin/systemd-nspawn", "/bin/systemd-nspawn"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .unwrap_or_else(|| {
                panic!(
                    "systemd-nspawn is missing: install it (`apt-get install systemd-container`; CI does)"
                )
            });
        let root = tempfile::Builder::new()
            .prefix("banger-systemd-")
            .tempdir_in("/var/tmp")
            .expect("a directory for the container");
        must(
            Command::new("tar")
                .args(["--numeric-owner", "-xf"])
                .arg(root_tarball(GuestRoot::Systemd))
                .arg("-C")
                .arg(root.path()),
            "unpack the systemd root",
        );
        // systemd-resolved, which the root lacks (Debian 12 ships it apart from systemd):
        // the helper routes `.vm` names to bangerd through it. Copied in keeping the root's
        // merged /usr (/lib is a link to usr/lib, which a plain unpack would replace).
        let resolved = tempfile::tempdir().unwrap();
        must(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(systemd_resolved_deb())
                .arg(resolved.path()),
            "unpack systemd-resolved",
        );
        must(
            Command::new("sh").arg("-c").arg(format!(
                "tar -C '{}' -cf - . | tar -C '{}' -xf - --keep-directory-symlink",
                resolved.path().display(),
                root.path().display()
            )),
            "copy systemd-resolved into the root",
        );
        must(
            Command::new("chroot").arg(root.path()).args([
                "systemctl",
                "enable",
                "systemd-resolved",
            ]),
            "enable systemd-resolved",
        );
        must(
            Command::new("chroot").arg(root.path()).args([
                "useradd",
                "--create-home",
                "--uid",
                &OWNER_UID.to_string(),
                "--shell",
                "/bin/sh",
                OWNER,
            ]),
            "add the owner",
        );
        let log = root.path().with_extension("console.log");
        let mut command = Command::new(nspawn);
        command
            // No systemd on the host to register with or to make a scope for the container.
            .args(["--register=no", "--keep-unit", "--quiet", "--boot"])
            .args(["--private-network", "--console=pipe"])
            // Its own name: nspawn keeps per-machine state under /run by it, and containers
            // of parallel tests must not share it.
            .arg(format!(
                "--machine={}",
                root.path()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_lowercase()
            ))
            .arg(format!("--directory={}", root.path().display()));
        for (host, inside) in binds {
            command.arg(format!("--bind-ro={}:{}", host.display(), inside.display()));
        }
        let nspawn = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("stderr")).unwrap())
            .spawn()
            .expect("start systemd-nspawn");
        let mut container = Container {
            leader: 0,
            nspawn,
            root,
            log,
        };
        let until = Instant::now() + BOOT_DEADLINE;
        loop {
            if let Ok(Some(status)) = container.nspawn.try_wait() {
                panic!(
                    "systemd-nspawn exited ({status}): {}",
                    container.output_so_far()
                );
            }
            if container.leader == 0 {
                container.leader = child_named(container.nspawn.id(), "systemd").unwrap_or(0);
            }
            if container.leader != 0 {
                let state = container.run(&["systemctl", "is-system-running"]);
                let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
                if state == "running" || state == "degraded" {
                    break;
                }
            }
            assert!(
                Instant::now() < until,
                "the container's systemd did not finish booting: {}",
                container.output_so_far()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        container
    }

    fn output_so_far(&self) -> String {
        format!(
            "{}\n--- systemd-nspawn's stderr\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default()
        )
    }

    /// `argv` inside the container (all its namespaces), as root.
    fn run(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// `argv` inside the container as root; it must succeed; its stdout.
    fn ok(&self, argv: &[&str]) -> String {
        let output = self.run(argv);
        assert!(output.status.success(), "{argv:?}: {}", shown(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `argv` inside the container as the owner, with the owner's home.
    fn as_owner(&self, argv: &[&str]) -> Output {
        let uid = OWNER_UID.to_string();
        let mut full = vec![
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--init-groups",
            "env",
            "HOME=/home/dev",
        ];
        full.extend_from_slice(argv);
        self.run(&full)
    }

    /// Waits until the installed bangerd answers the owner's CLI (its unit is active from the
    /// moment it runs, a little before it listens).
    fn wait_for_bangerd(&self, banger: &str) {
        let until = Instant::now() + SETTLE_DEADLINE;
        loop {
            let list = self.as_owner(&[banger, "vm", "list"]);
            if list.status.success() {
                return;
            }
            assert!(
                Instant::now() < until,
                "bangerd does not answer: {}\n{}",
                shown(&list),
                self.ok(&["journalctl", "--no-pager", "-u", "bangerd.service"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `helper-client WORDS` as the owner: its answer, which must not be an error.
    fn helper_client(&self, words: &[&str]) -> serde_json::Value {
        let mut argv = vec![HELPER_CLIENT];
        argv.extend_from_slice(words);
        let output = self.as_owner(&argv);
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("helper-client {words:?}: {e}: {}", shown(&output)));
        assert!(
            output.status.success(),
            "helper-client {words:?}: {answer}\n{}\n--- the console log\n{}",
            self.ok(&["journalctl", "--no-pager", "-u", "banger-helper.service"]),
            std::fs::read_to_string(self.root.path().join("home/dev/console.log"))
                .unwrap_or_default()
        );
        answer
    }

    /// Installs with a jailer and launches a Firecracker for the owner through it: the VMM runs
    /// as the owner in its jail; then kills it through the helper and checks the jail is gone.
    /// The jail's root, as the host sees it, while the VMM ran.
    fn launch_and_kill_through_the_jailer(&self, banger: &str, jailer: &str, firecracker: &str) {
        self.ok(&[
            banger,
            "system",
            "install",
            "--owner",
            OWNER,
            "--jailer",
            jailer,
            "--firecracker",
            firecracker,
        ]);
        self.wait_for_bangerd(banger);
        let jail = self.helper_client(&["jail"]);
        assert_eq!(jail["jail"]["jailer"], jailer, "{jail}");
        let console = "/home/dev/console.log";
        assert!(self.as_owner(&["touch", console]).status.success());
        let vm = "00000000000000ab";
        let launched = self.helper_client(&["launch-firecracker", vm, console]);
        let pid = launched["pid"].as_u64().expect("a pid") as u32;
        let ticks = launched["start_time_ticks"].as_u64().expect("a start time");
        let owner = format!("{OWNER_UID}\t{OWNER_UID}\t{OWNER_UID}\t{OWNER_UID}");
        assert_eq!(self.status(pid, "Uid:"), owner, "the VMM runs as the owner");
        let jail_root = self.root.path().join(
            Path::new(launched["root"].as_str().expect("the jail's root"))
                .strip_prefix("/")
                .unwrap(),
        );
        assert!(jail_root.is_dir(), "{launched}");
        // The VMM serves its API in the jail (a Firecracker that cannot set itself up under
        // the unit's restrictions dies right after it starts).
        // Through a short link: the path under the container's root is past a socket
        // address's 108 bytes.
        let short = tempfile::tempdir_in("/tmp").unwrap();
        std::os::unix::fs::symlink(&jail_root, short.path().join("j")).unwrap();
        let api = short
            .path()
            .join("j")
            .join(banger_helper::protocol::JAIL_API_SOCKET);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let until = Instant::now() + SETTLE_DEADLINE;
        let info = loop {
            let answer = runtime.block_on(
                banger::host::firecracker::FirecrackerClient::new(&api).request(
                    banger::host::firecracker::Method::Get,
                    "/",
                    None,
                ),
            );
            match answer {
                Ok(raw) => break String::from_utf8_lossy(&raw.body).into_owned(),
                Err(error) => assert!(
                    Instant::now() < until && self.host_pid(pid) != 0,
                    "the jailed VMM does not answer on {} ({error}): {}",
                    api.display(),
                    std::fs::read_to_string(self.root.path().join("home/dev/console.log"))
                        .unwrap_or_default()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(info.contains("\"id\""), "GET / answered {info}");
        self.helper_client(&["kill-vmm", vm, &pid.to_string(), &ticks.to_string()]);
        assert_eq!(self.host_pid(pid), 0, "the VMM is gone");
        assert!(!jail_root.exists(), "the jail is gone");
        self.ok(&[banger, "system", "uninstall", "--purge"]);
        assert!(
            !self.root.path().join("var/lib/banger-jail").exists(),
            "the jail directory install made is gone"
        );
    }

    /// A unit's main process, once it has one that runs the program (not systemd's fork
    /// still setting up the sandbox).
    fn main_pid(&self, unit: &str, program: &str) -> u32 {
        let until = Instant::now() + SETTLE_DEADLINE;
        loop {
            let pid: u32 = self
                .ok(&["systemctl", "show", "--property=MainPID", "--value", unit])
                .trim()
                .parse()
                .unwrap_or(0);
            let exe =
                std::fs::read_link(format!("/proc/{}/exe", self.host_pid(pid))).unwrap_or_default();
            if pid != 0 && exe.ends_with(program) {
                return pid;
            }
            assert!(
                Instant::now() < until,
                "{unit} has no running {program}: {}",
                self.ok(&["systemctl", "status", "--no-pager", unit])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The host's pid of the container's `pid` (the container has a pid namespace of its
    /// own): the process in the leader's subtree whose innermost pid is `pid`.
    fn host_pid(&self, pid: u32) -> u32 {
        if pid == 0 {
            return 0;
        }
        banger::host::process::all_pids()
            .into_iter()
            .find(|host| {
                status_field(*host, "NSpid:").is_some_and(|ids| {
                    let ids: Vec<&str> = ids.split_whitespace().collect();
                    ids.len() > 1 && ids.last() == Some(&pid.to_string().as_str())
                }) && same_pid_namespace(*host, self.leader)
            })
            .unwrap_or(0)
    }

    /// A line of `/proc/PID/status` of the container's `pid`.
    fn status(&self, pid: u32, field: &str) -> String {
        status_field(self.host_pid(pid), field)
            .unwrap_or_else(|| panic!("no {field} for pid {pid} in the container"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM asks nspawn to power the container off (SIGRTMIN+3 to its systemd).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.nspawn.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                let _ = std::fs::remove_file(self.log.with_extension("stderr"));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let _ = self.root.path();
    }
}

/// Debian 12's systemd-resolved package, downloaded once into the test cache (`apt-get
/// download`; the same release as the root's systemd).
fn systemd_resolved_deb() -> PathBuf {
    let cache = crate::guest_images::cache_dir();
    let _lock = crate::guest_images::CacheLock::take(&cache.join(".resolved.lock"));
    crate::qemu::cached_deb(
        &cache,
        "systemd-resolved",
        &format!("put the .deb in {}", cache.display()),
    )
}

fn must(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(output.status.success(), "{what}: {}", shown(&output));
}

fn shown(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .map(|value| value.trim().to_owned())
}

fn same_pid_namespace(a: u32, b: u32) -> bool {
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    ns(a).is_some() && ns(a) == ns(b)
}

/// The first child of `parent`, or its child's, whose command is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    let mut frontier = vec![parent];
    for _ in 0..3 {
        let mut next = Vec::new();
        for pid in banger::host::process::all_pids() {
            let Some(ppid) = status_field(pid, "PPid:").and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if frontier.contains(&ppid) {
                if status_field(pid, "Name:").as_deref() == Some(comm) {
                    return Some(pid);
                }
                next.push(pid);
            }
        }
        frontier = next;
    }
    None
}

/// nftables from the host (the systemd root has none), with the libraries it needs that the
/// root lacks: both are Debian 12.
fn nft_binds(root_has: impl Fn(&Path) -> bool) -> Vec<(PathBuf, PathBuf)> {
    let nft = ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("nft is missing: install nftables (CI does)");
    let mut binds = vec![(nft.clone(), PathBuf::from("/usr/sbin/nft"))];
    let ldd = Command::new("ldd").arg(&nft).output().expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let Some(path) = line
            .split("=>")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        let library = PathBuf::from(path);
        // Debian 12 has merged /usr: /lib/x86_64-linux-gnu is /usr/lib/x86_64-linux-gnu.
        let inside = Path::new("/usr").join(
            library
                .strip_prefix("/usr")
                .unwrap_or(&library)
                .strip_prefix("/")
                .unwrap(),
        );
        if !root_has(&inside) {
            binds.push((library.canonicalize().unwrap(), inside));
        }
    }
    binds
}

/// Capability numbers (`linux/capability.h`).
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;

/// The bits of a capability set (`CapBnd:` and the like) by capability number.
fn capabilities(mask: &str) -> Vec<u32> {
    let mask = u64::from_str_radix(mask, 16).expect("a capability mask");
    (0..64).filter(|bit| mask & (1 << bit) != 0).collect()
}

/// What every container here gets: nftables, this build's binaries, `helper-client`, the
/// fake jailer and firecracker, and `/dev/kvm` where the host has one (whether it does).
fn standard_binds() -> (Vec<(PathBuf, PathBuf)>, bool) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_banger"))
        .parent()
        .unwrap()
        .to_path_buf();
    // Which libraries the root lacks is known from the tarball's contents.
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(root_tarball(GuestRoot::Systemd))
        .output()
        .expect("list the systemd root");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut binds = nft_binds(|inside| {
        let relative = inside.strip_prefix("/").unwrap().display().to_string();
        listing
            .lines()
            .any(|entry| entry.trim_start_matches("./") == relative)
    });
    binds.push((bin_dir, PathBuf::from(BIN_DIR)));
    binds.push((
        crate::support::workspace_binary("banger-tools", "helper-client"),
        PathBuf::from(HELPER_CLIENT),
    ));
    binds.push((
        crate::support::workspace_binary("banger-tools", "fake-jailer"),
        PathBuf::from(FAKE_JAILER),
    ));
    binds.push((
        crate::firecracker::fake_binary().to_path_buf(),
        PathBuf::from(FAKE_FIRECRACKER),
    ));
    // KVM's device, for the helper to open for the owner (if this host has one).
    let kvm = Path::new("/dev/kvm").exists();
    if kvm {
        binds.push((PathBuf::from("/dev/kvm"), PathBuf::from("/dev/kvm")));
    }
    (binds, kvm)
}

fn installed_units_run_under_a_real_systemd_with_the_privileges_they_declare() {
    let (binds, kvm) = standard_binds();
    let container = Container::boot(&binds);
    let banger = format!("{BIN_DIR}/banger");

    // No CA certificates here: bangerd must start all the same.
    assert!(!container.root.path().join("etc/ssl/certs").exists());

    let install = container.ok(&[&banger, "system", "install", "--owner", OWNER]);
    assert!(
        install.contains("started banger-helper.service and bangerd.service"),
        "{install}"
    );
    let helper = container.main_pid("banger-helper.service", "banger-helper");
    let bangerd = container.main_pid("bangerd.service", "bangerd");

    // banger-helper: root, exactly the two capabilities it uses, no new privileges, seccomp.
    assert!(container.status(helper, "Uid:").starts_with("0\t"));
    let helper_caps = capabilities(&container.status(helper, "CapBnd:"));
    assert_eq!(
        helper_caps,
        vec![CAP_NET_BIND_SERVICE, CAP_NET_ADMIN],
        "banger-helper's bounding set"
    );
    assert_eq!(container.status(helper, "NoNewPrivs:"), "1");
    assert_eq!(
        container.status(helper, "Seccomp:"),
        "2",
        "a seccomp filter"
    );
    // bangerd: the owner, no capabilities at all.
    let owner = format!("{OWNER_UID}\t{OWNER_UID}\t{OWNER_UID}\t{OWNER_UID}");
    assert_eq!(container.status(bangerd, "Uid:"), owner);
    assert_eq!(container.status(bangerd, "CapBnd:"), "0000000000000000");
    assert_eq!(container.status(bangerd, "NoNewPrivs:"), "1");

    container.wait_for_bangerd(&banger);

    // The owner's view: bangerd answers, and the helper, from inside its sandbox, made the
    // owner's bridge and its NAT in banger's nftables table.
    let doctor = container.as_owner(&[&banger, "doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", shown(&doctor)));
    for name in ["orphans", "network", "posture"] {
        let check = crate::doctor::check_named(&report, name);
        assert_eq!(check["status"], "ok", "{name}: {check}");
    }
    // What bangerd asks of the helper for a VM, asked as the owner: the helper makes the
    // bridge, the NAT and a tap the owner owns, and hands the tap (and /dev/kvm) over, all from
    // inside its sandbox.
    let helper_client = |words: &[&str]| container.helper_client(words);
    let networks = helper_client(&["networks"]);
    assert_eq!(networks["networks"][0]["bridge"], "banger0", "{networks}");
    helper_client(&["ensure-network"]);
    helper_client(&["ensure-tap", "bt7"]);
    helper_client(&["open-tap", "bt7"]);
    let links = container.ok(&["ip", "-br", "link", "show", "master", "banger0"]);
    assert!(links.starts_with("bt7"), "{links}");
    let tap = container.ok(&["cat", "/sys/class/net/bt7/owner"]);
    assert_eq!(tap.trim(), OWNER_UID.to_string());
    let table = container.ok(&["nft", "list", "table", "ip", "banger"]);
    assert!(table.contains("masquerade"), "{table}");
    // `.vm` names routed to bangerd's address on the bridge, told to systemd-resolved by the
    // helper from inside its sandbox (which once could not tell its network namespace from
    // another one there).
    let routed = helper_client(&["route-dns"]);
    assert_eq!(routed["route_dns"], "Routed", "{routed}");
    let link = container.ok(&["resolvectl", "status", "--no-pager", "banger0"]);
    assert!(
        link.contains("DNS Servers: 172.30.0.1") && link.contains("DNS Domain: ~vm"),
        "{link}"
    );
    if kvm {
        helper_client(&["open-kvm"]);
    }
    helper_client(&["delete-tap", "bt7"]);

    // systemd's own judgement of the running units.
    let security = container.ok(&[
        "systemd-analyze",
        "security",
        "--no-pager",
        "banger-helper.service",
        "bangerd.service",
    ]);
    for line in security.lines().filter(|l| l.contains("Overall exposure")) {
        println!("{line}");
    }

    let status = container.ok(&[&banger, "system", "status"]);
    assert!(
        status.contains("banger-helper.service") && status.contains("active (running)"),
        "{status}"
    );
    container.ok(&[&banger, "system", "restart"]);
    let helper_again = container.main_pid("banger-helper.service", "banger-helper");
    let bangerd_again = container.main_pid("bangerd.service", "bangerd");
    container.wait_for_bangerd(&banger);
    assert_ne!(
        (helper_again, bangerd_again),
        (helper, bangerd),
        "restart starts new processes"
    );

    // A tap left behind (as a VM killed with its bangerd would leave one): uninstall removes
    // it with the bridge and the table.
    helper_client(&["ensure-tap", "bt8"]);
    let uninstall = container.ok(&[&banger, "system", "uninstall"]);
    println!("{uninstall}");
    assert!(uninstall.contains("removed tap bt8"), "{uninstall}");
    assert!(
        uninstall.contains("removed the bridge banger0"),
        "{uninstall}"
    );
    for unit in ["banger-helper.service", "bangerd.service"] {
        let state = container.run(&["systemctl", "is-active", unit]);
        assert!(
            !state.status.success(),
            "{unit} still runs: {}",
            shown(&state)
        );
        assert!(
            !container
                .root
                .path()
                .join("etc/systemd/system")
                .join(unit)
                .exists(),
            "{unit} is still installed"
        );
    }
    let bridge = container.run(&["ip", "link", "show", "banger0"]);
    assert!(!bridge.status.success(), "the bridge is still there");
    let table = container.run(&["nft", "list", "table", "ip", "banger"]);
    assert!(
        !table.status.success(),
        "banger's nftables table is still there"
    );
    // The state stays (no --purge)...
    let state = container.root.path().join("home/dev/.local/state/banger");
    assert!(state.join("events.redb").is_file());
    // ... until an uninstall with --purge, after a reinstall.
    container.ok(&[&banger, "system", "install", "--owner", OWNER]);
    container.wait_for_bangerd(&banger);
    let purge = container.ok(&[&banger, "system", "uninstall", "--purge"]);
    assert!(
        purge.contains("removed /home/dev/.local/state/banger"),
        "{purge}"
    );
    assert!(!state.exists(), "{purge}");
    assert!(
        !container
            .root
            .path()
            .join("home/dev/.config/banger")
            .exists(),
        "{purge}"
    );
    assert!(
        container.root.path().join("home/dev").is_dir(),
        "the home stays"
    );

    // With a jailer, the helper's unit keeps what the jailer needs (its mount namespace,
    // device nodes, chroot, uid change) and the jail directory writable: the helper launches
    // a Firecracker for the owner from inside it, and kills it.
    container.launch_and_kill_through_the_jailer(&banger, FAKE_JAILER, FAKE_FIRECRACKER);
}

/// The Firecracker tier: the real jailer and Firecracker (`BANGER_FIRECRACKER`, the jailer
/// beside it or at `BANGER_JAILER`) launched by the installed helper from inside its unit's
/// sandbox (the jailer's chroot, cgroup, device nodes and uid change under systemd's
/// restrictions), then killed.
fn the_real_jailer_runs_firecracker_from_inside_the_installed_helper_unit() {
    let (firecracker, jailer) = crate::jailed::real_firecracker_and_jailer();
    let (mut binds, _) = standard_binds();
    binds.push((firecracker, PathBuf::from("/opt/firecracker/firecracker")));
    binds.push((jailer, PathBuf::from("/opt/firecracker/jailer")));
    let container = Container::boot(&binds);
    let banger = format!("{BIN_DIR}/banger");
    container.launch_and_kill_through_the_jailer(
        &banger,
        "/opt/firecracker/jailer",
        "/opt/firecracker/firecracker",
    );
}
