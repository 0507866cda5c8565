//! The crash matrix's laboratory: the real binaries (built here when missing or stale), a
//! bangerd on a throwaway `BANGER_ROOT` that can be crashed and restarted, and the fixture
//! inputs (a kernel directory and a sparse rootfs file) every case of a test shares.
//!
//! Nothing here sleeps to synchronise: waiting polls a condition with a deadline and fails
//! with the daemon's own output when the deadline passes.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use banger::api::EventsParams;
use banger::paths::Layout;
use banger::rpc::{Client, ClientError, StreamEvent};
use banger_events::Envelope;
use banger_helper::sandbox::Sandbox;

use super::registry_support::{Layer, TestRegistry, noise, tar_with};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// How long anything may take before a case fails (a loaded 2-core machine running several
/// cases at once is slow; a healthy step takes milliseconds).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The binaries a case runs.
pub struct Binaries {
    pub bangerd: PathBuf,
    pub agent: PathBuf,
    pub fake_firecracker: PathBuf,
    pub helper: PathBuf,
}

/// Builds (once per test process) `bangerd`, `banger-agent`, `banger-helper` and
/// `fake-firecracker` into the target directory this test binary lives in; cargo rebuilds
/// only what is stale.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let profile_dir = banger_helper::sandbox::build_workspace_binaries(
            Path::new(env!("CARGO_MANIFEST_DIR")),
            &[
                &["-p", "banger", "--bins"],
                &["-p", "banger-tools", "--bin", "fake-firecracker"],
            ],
        )
        .expect("build the binaries the crash matrix runs");
        Binaries {
            bangerd: profile_dir.join("bangerd"),
            agent: profile_dir.join("banger-agent"),
            fake_firecracker: profile_dir.join("fake-firecracker"),
            helper: profile_dir.join("banger-helper"),
        }
    })
}

/// A real banger-helper in a network namespace of its own (which dies with it). Every start
/// of a case's bangerd joins the namespace, so taps live and leak there, never on the host.
/// Its socket is outside the case's root, so it is not one of the root's processes.
pub struct Network {
    sandbox: Sandbox,
    _dir: tempfile::TempDir,
}

impl Network {
    pub fn start() -> Network {
        let dir = tempfile::Builder::new()
            .prefix("bcm-net-")
            .tempdir_in("/tmp")
            .expect("a temporary directory");
        let sandbox = Sandbox::start(&binaries().helper, dir.path(), Stdio::null())
            .unwrap_or_else(|e| panic!("start banger-helper in a network namespace: {e}"));
        Network { sandbox, _dir: dir }
    }

    /// Makes `command` run in the namespace and talk to the helper.
    fn join(&self, command: &mut Command) {
        self.sandbox
            .join(command)
            .expect("join the network namespace");
    }

    /// The banger taps (`bt…`) in the namespace, sorted.
    pub fn taps(&self) -> Vec<String> {
        self.sandbox.taps().expect("list the taps")
    }

    /// Runs `program args` in the namespace; returns its stdout, or why it failed.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let output = self.sandbox.run(program, args).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Inputs shared by the cases of one test: a kernel source directory, a sparse rootfs, a
/// kernel catalog file naming a small bundle that a local HTTP server serves (for
/// `kernel.pull`; reachable from a bangerd in this host's network namespace, which is where
/// the kernel columns run theirs), and for `image.pull`, a real registry on loopback holding a
/// two-layer image.
pub struct Inputs {
    _dir: tempfile::TempDir,
    pub kernel_dir: PathBuf,
    pub rootfs: PathBuf,
    /// A catalog file (`[kernels] catalog`) with the bundle `pulled`.
    pub kernel_catalog: PathBuf,
    _server: banger_test_harness::http::FileServer,
    registry: Option<(TestRegistry, String)>,
}

impl Inputs {
    pub fn new() -> Inputs {
        let dir = tempfile::Builder::new()
            .prefix("bcm-in-")
            .tempdir_in("/tmp")
            .expect("a temporary directory");
        let kernel_dir = dir.path().join("kernel");
        std::fs::create_dir_all(&kernel_dir).expect("create the kernel source");
        let mut vmlinux = b"\x7fELF".to_vec();
        vmlinux.extend_from_slice(&[0u8; 4096]);
        vmlinux.extend_from_slice(b"Linux version 6.1.0-test (test@banger) #1 SMP\0");
        vmlinux.extend_from_slice(&[0u8; 1024]);
        std::fs::write(kernel_dir.join("vmlinux"), &vmlinux).expect("write vmlinux");
        let rootfs = dir.path().join("rootfs.ext4");
        {
            use std::io::{Seek, SeekFrom, Write};
            let size: u64 = 4 << 20;
            let mut file = std::fs::File::create(&rootfs).expect("create the rootfs");
            file.write_all(b"rootfs head").expect("write");
            file.seek(SeekFrom::Start(size - 11)).expect("seek");
            file.write_all(b"rootfs tail").expect("write");
        }
        let server = banger_test_harness::http::FileServer::start();
        let tarball = small_bundle_tarball(dir.path(), &vmlinux);
        let bytes = std::fs::read(&tarball.path).expect("read the tarball");
        server.serve(
            "/pulled.tar.zst",
            banger_test_harness::http::Reply::bytes(bytes),
        );
        let kernel_catalog = dir.path().join("kernels.json");
        let catalog = serde_json::json!({"format": 1, "kernels": [{
            "name": "pulled", "kind": "bundle", "version": "6.1.0-test", "arch": "x86_64",
            "tarball_url": server.url("/pulled.tar.zst"), "tarball_sha256": tarball.sha256,
            "size_bytes": tarball.size, "description": "the crash matrix's bundle"
        }]});
        std::fs::write(&kernel_catalog, catalog.to_string()).expect("write the catalog");
        Inputs {
            _dir: dir,
            kernel_dir,
            rootfs,
            kernel_catalog,
            _server: server,
            registry: None,
        }
    }

    /// [`Inputs::new`], and a registry holding `crash/img:1`: two layers (one deleting what
    /// the other made), so the pull downloads, flattens and injects the agent.
    pub fn with_registry() -> Inputs {
        let registry = TestRegistry::start();
        let first = tar_with(&[("etc/motd", b"crash matrix\n"), ("etc/gone", b"x\n")]);
        let second = tar_with(&[("etc/.wh.gone", b""), ("usr/bin/tool", &noise(9, 100_000))]);
        let pushed = registry.push_image(
            "crash/img:1",
            &[Layer::gzip(&first), Layer::zstd(&second)],
            "amd64",
        );
        let mut inputs = Inputs::new();
        inputs.registry = Some((registry, pushed.reference));
        inputs
    }

    /// The pushed image's reference.
    pub fn image_reference(&self) -> &str {
        &self
            .registry
            .as_ref()
            .expect("a column that pulls has a registry")
            .1
    }

    /// What a case's config.toml adds for these inputs: the kernel catalog, and the
    /// registry (reached over plain HTTP) with small images.
    pub fn config(&self) -> String {
        let kernels = format!(
            "\n[kernels]\ncatalog = \"{}\"\n",
            self.kernel_catalog.display()
        );
        match &self.registry {
            Some((registry, _)) => format!(
                "{kernels}\n[registry]\ninsecure = [{:?}]\n\n[images]\nheadroom = \"4MiB\"\n",
                registry.host()
            ),
            None => kernels,
        }
    }
}

/// The aside copy [`older_prune_leftover`] makes, beside the blob cache.
pub const OLDER_PRUNE_LEFTOVER: &str = ".oci.pruning-4242-17";

/// Leaves beside `layout`'s blob cache what a prune of an older build (named by pid and
/// time, not by an operation) left when it was killed: an aside copy holding one blob. The
/// next prune must delete it.
pub fn older_prune_leftover(layout: &banger::paths::Layout) {
    let blobs = layout
        .oci_cache_dir()
        .with_file_name(OLDER_PRUNE_LEFTOVER)
        .join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("create the older aside copy");
    std::fs::write(blobs.join("c".repeat(64)), [7u8; 500]).expect("write its blob");
}

/// A small bundle (the fixture's vmlinux, a fake bzImage and initrd) packed as the catalog
/// ships bundles.
fn small_bundle_tarball(dir: &Path, vmlinux: &[u8]) -> banger::kernel::PackedBundle {
    use banger::kernel::{BundleFile, BundleManifest, BundleSource};
    use sha2::Digest;
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).expect("create the bundle");
    let file = |name: &str, bytes: &[u8]| {
        std::fs::write(bundle.join(name), bytes).expect("write a bundle file");
        BundleFile {
            path: name.to_owned(),
            sha256: sha2::Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            size: bytes.len() as u64,
        }
    };
    let manifest = BundleManifest {
        format: 1,
        version: "6.1.0-test".into(),
        arch: "x86_64".into(),
        source: BundleSource::DebianPackage {
            package: "linux-image-6.1.0-test".into(),
            version: "6.1.0-test-1".into(),
            sha256: "00".repeat(32),
            url: None,
        },
        vmlinux: file("vmlinux", vmlinux),
        bzimage: file("vmlinuz", b"bzImage"),
        initrd: file("initrd.img", b"initrd"),
        config: None,
        modules: vec![],
        modules_missing: vec![],
        agent_sha256: "11".repeat(32),
        firecracker_min_version: "1.8.0".into(),
    };
    std::fs::write(
        bundle.join("manifest.json"),
        serde_json::to_vec(&manifest).expect("encode the manifest"),
    )
    .expect("write the manifest");
    banger::kernel::pack_bundle(&bundle, "pulled", &dir.join("dist")).expect("pack the bundle")
}

/// How a start of bangerd ended up.
#[derive(Debug)]
pub enum Started {
    /// It answers on its socket.
    Ready,
    /// It exited before answering (a failpoint hit during crash recovery).
    Exited(ExitStatus),
}

/// A bangerd on its own `BANGER_ROOT`, started and crashed as a case needs. Dropping it
/// SIGKILLs the daemon and every process whose command line names the root (VMMs and their
/// agents outlive bangerd by design), then removes the root.
pub struct Daemon {
    root: tempfile::TempDir,
    child: Option<Child>,
    starts: usize,
    /// The test network, for a daemon that runs VMs; `None` for one that only handles
    /// kernels and images (which needs no root).
    pub network: Option<Network>,
}

impl Daemon {
    /// A fresh root with a small config (64 MiB work disks, short timeouts) and a test
    /// network (root only); nothing runs yet.
    pub fn new() -> Daemon {
        Self::with_network(true)
    }

    /// As [`Daemon::new`]; without a network when `network` is false: then bangerd may not
    /// reach or start any helper (`BANGER_NO_AUTOSTART`, a helper socket that does not exist),
    /// so nothing can touch the host's network.
    pub fn with_network(network: bool) -> Daemon {
        // Short paths: a unix socket path must fit in 107 bytes.
        let root = tempfile::Builder::new()
            .prefix("bcm-")
            .tempdir_in("/tmp")
            .expect("a temporary BANGER_ROOT");
        let layout = Layout::rooted(root.path());
        std::fs::create_dir_all(&layout.config_dir).expect("create the config dir");
        std::fs::write(
            layout.config_dir.join("config.toml"),
            "[vm]\nvcpus = 1\nmemory = \"256M\"\nwork_disk = \"64M\"\n\n[timeouts]\nboot = \"10s\"\nstop = \"5s\"\n",
        )
        .expect("write the config");
        Daemon {
            root,
            child: None,
            starts: 0,
            network: network.then(Network::start),
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Appends `text` to the config.toml the next start reads.
    pub fn add_config(&self, text: &str) {
        use std::io::Write;
        let path = self.layout().config_dir.join("config.toml");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open the config");
        file.write_all(text.as_bytes())
            .expect("append to the config");
    }

    pub fn layout(&self) -> Layout {
        Layout::rooted(self.root.path())
    }

    /// Starts bangerd with `failpoint` (or none) and waits until it answers or exits.
    pub fn start(&mut self, failpoint: Option<&str>) -> Started {
        self.spawn(failpoint);
        self.wait_started()
    }

    /// Starts bangerd with `failpoint` (or none) and returns at once: it may still be
    /// recovering when the caller kills it.
    pub fn spawn(&mut self, failpoint: Option<&str>) {
        assert!(self.child.is_none(), "start while a bangerd runs");
        let bins = binaries();
        self.starts += 1;
        let output = std::fs::File::create(self.output_path()).expect("create the output file");
        let mut command = Command::new(&bins.bangerd);
        command
            .env("BANGER_ROOT", self.root.path())
            .env("BANGER_LOG", "debug")
            .env("BANGER_FIRECRACKER", &bins.fake_firecracker)
            .env("BANGER_FAKE_AGENT", &bins.agent)
            .env_remove("BANGER_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(output);
        if let Some(failpoint) = failpoint {
            command.env("BANGER_FAILPOINT", failpoint);
        }
        match &self.network {
            Some(network) => network.join(&mut command),
            None => {
                command.env("BANGER_NO_AUTOSTART", "1").env(
                    "BANGER_HELPER_SOCKET",
                    self.root.path().join("no-helper.sock"),
                );
            }
        }
        // SAFETY: setrlimit is async-signal-safe. A failpoint aborts bangerd on purpose;
        // it must not leave a core file wherever the test runs.
        unsafe {
            command.pre_exec(|| {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("start bangerd"));
    }

    /// Waits until the bangerd just spawned answers or exits.
    pub fn wait_started(&mut self) -> Started {
        let socket = self.layout().socket_path();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Started::Exited(status);
            }
            // A stale socket of a killed daemon refuses connections until the new one
            // replaces it, so a successful connect means this daemon listens.
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Started::Ready;
            }
            assert!(
                Instant::now() < deadline,
                "bangerd did not answer within {DEADLINE:?}; its output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts bangerd and insists that it answers.
    pub fn start_ready(&mut self, failpoint: Option<&str>) {
        match self.start(failpoint) {
            Started::Ready => {}
            Started::Exited(status) => panic!(
                "bangerd exited ({status}) before answering; its output:\n{}",
                self.output()
            ),
        }
    }

    /// Waits (with the deadline) for bangerd to exit on its own, and reaps it.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        let mut child = self.child.take().expect("bangerd is not running");
        loop {
            if let Some(status) = child.try_wait().expect("wait for bangerd") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "bangerd did not exit within {DEADLINE:?}; its output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Asks bangerd to stop cleanly and waits for it.
    pub async fn shutdown(&mut self) {
        let _: Value = self
            .call("daemon.shutdown", serde_json::json!({}))
            .await
            .expect("daemon.shutdown");
        let status = self.wait_exit().await;
        assert!(status.success(), "bangerd stopped with {status}");
    }

    /// SIGKILLs bangerd (if it runs) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn output_path(&self) -> PathBuf {
        self.root
            .path()
            .join(format!("bangerd-{}.stderr", self.starts))
    }

    /// What every start so far wrote to stderr, the latest last.
    pub fn output(&self) -> String {
        let mut all = String::new();
        for start in 1..=self.starts {
            let path = self.root.path().join(format!("bangerd-{start}.stderr"));
            all.push_str(&format!("---- start {start} ----\n"));
            all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        all
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.layout().socket_path())
            .await
            .expect("connect to bangerd")
    }

    pub async fn call<R: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<R, ClientError> {
        self.client().await.call(method, &params).await
    }

    /// Every event in the log, read through the daemon.
    pub async fn events(&self) -> Vec<Envelope> {
        let mut stream = self
            .client()
            .await
            .stream("events.follow", &EventsParams::default())
            .await
            .expect("start events.follow");
        let mut items = Vec::new();
        loop {
            match stream.next::<Envelope>().await.expect("read events") {
                StreamEvent::Item(envelope) => items.push(envelope),
                StreamEvent::End(_) => return items,
            }
        }
    }

    /// Follows the log from after `since - 1` until the daemon goes away, returning the
    /// envelopes it was sent. Returns once the subscription is live (it has delivered the
    /// event at `since`), so that nothing appended afterwards can be missed.
    pub async fn follow_from(&self, since: u64) -> tokio::task::JoinHandle<Vec<Envelope>> {
        let params = EventsParams {
            since: banger_events::Seq(since.saturating_sub(1)),
            follow: true,
            ..EventsParams::default()
        };
        let mut stream = self
            .client()
            .await
            .stream("events.follow", &params)
            .await
            .expect("start events.follow");
        let first = match stream
            .next::<Envelope>()
            .await
            .expect("first followed event")
        {
            StreamEvent::Item(envelope) => envelope,
            StreamEvent::End(end) => panic!("events.follow ended at once: {end}"),
        };
        tokio::spawn(async move {
            let mut items = vec![first];
            while let Ok(StreamEvent::Item(envelope)) = stream.next::<Envelope>().await {
                items.push(envelope);
            }
            items
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        for (pid, _) in processes_mentioning(self.root.path()) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Pids (with their process group) of live processes whose command line mentions `path`.
pub fn processes_mentioning(path: &Path) -> Vec<(u32, i32)> {
    let needle = path.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        match banger::host::process::proc_stat(pid) {
            Ok(Some(stat)) if stat.state != 'Z' && stat.state != 'X' => {
                found.push((pid, stat.pgrp))
            }
            _ => {}
        }
    }
    found
}

/// True when `status` is death by SIGABRT (a failpoint's `abort`).
pub fn aborted(status: &ExitStatus) -> bool {
    status.signal() == Some(libc::SIGABRT)
}

/// The names in a directory (empty when it does not exist), sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
