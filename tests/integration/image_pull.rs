//! `image pull` (and the catalog, the blob cache and the image verbs around it) through the
//! real bangerd and the real CLI, against real registries on loopback: Debian's
//! `docker-registry` for honest images, the scripted [`StaticRegistry`] for what no honest
//! registry serves (wrong digests and sizes, a body that pauses while the test kills bangerd
//! or prunes the cache) and for bundles over plain HTTP.
//!
//! Every image that comes out is checked with e2fsprogs (`e2fsck -fn`, `debugfs`), never with
//! banger's own reader; every refusal is checked to leave nothing behind: no image, nothing
//! under `images/` (no staging directory), the operation rolled back, and a blob cache whose
//! every file hashes to its name with no temporary file left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use banger::api::{
    ImageListResult, ImageProgress, ImagePullResult, OperationsListResult, PullItem, PullOutcome,
};
use banger::image::agent::{AGENT_UNIT, AGENT_UNIT_LINK, AGENT_UNIT_PATH};
use banger::paths::Layout;
use banger::registry::{BlobState, Digest, PullProgress};
use banger::rpc::{ClientError, ErrorCode, StreamEvent};
use banger_events::OpKind;
use banger_projections::OpStatus;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::registry::support::{
    Body, Gate, Layer, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Push, Route, StaticRegistry, TestRegistry,
    UmociImage, noise, tar_with,
};
use crate::support::{Bangerd, TestRoot, dir_names, rpc_error};

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync a_faithful_multi_layer_image_pulls_through_the_cli_and_again_from_the_cache,
        tokio a_systemd_image_gets_the_agent_unit_and_a_busybox_one_does_not,
        tokio on_a_terminal_a_pull_draws_a_bar_in_place_and_leaves_only_lines,
        sync an_umoci_image_keeps_ownership_devices_and_deletions needs(Root),
        tokio a_dot_dot_entry_is_refused_and_leaves_nothing,
        tokio a_write_through_an_absolute_symlinked_parent_is_refused,
        tokio a_write_through_a_relative_symlinked_parent_is_refused,
        tokio a_hardlink_outside_the_root_is_refused,
        tokio a_hardlink_to_a_missing_path_is_refused,
        tokio a_whiteout_of_dot_dot_is_refused,
        tokio a_whiteout_outside_the_root_is_refused,
        tokio a_name_over_255_bytes_is_refused,
        tokio a_name_with_a_nul_byte_is_refused,
        tokio a_path_deeper_than_the_kernel_allows_is_refused,
        tokio a_layer_whose_digest_does_not_match_is_refused,
        tokio a_layer_whose_size_does_not_match_is_refused,
        tokio a_truncated_gzip_layer_is_refused,
        tokio a_corrupt_gzip_layer_is_refused,
        tokio a_truncated_zstd_layer_is_refused,
        tokio a_corrupt_zstd_layer_is_refused,
        tokio content_beyond_the_maximum_image_size_is_refused,
        tokio a_kill_during_a_download_is_rolled_back_and_the_cache_stays_sound,
        tokio two_pulls_of_one_image_at_once_download_once_and_the_second_waits,
        tokio a_prune_during_a_pull_corrupts_nothing,
        tokio a_kill_between_the_steps_of_a_prune_is_rolled_forward,
        tokio catalog_bundles_pull_and_bad_downloads_leave_nothing,
        sync vm_create_pulls_a_catalog_image_first_and_names_the_missing_kernel,
        sync vm_create_pulls_an_oci_reference_it_is_given,
    ]
}

// ---- fixtures ----------------------------------------------------------------------------------

/// A root whose config trusts `insecure` registries over plain HTTP and builds small images;
/// `images` goes into the `[images]` section.
fn root_for(insecure: &[String], images: &str) -> TestRoot {
    let root = TestRoot::new();
    let config = root.layout().config_dir;
    fs::create_dir_all(&config).unwrap();
    let hosts: Vec<String> = insecure.iter().map(|h| format!("{h:?}")).collect();
    fs::write(
        config.join("config.toml"),
        format!(
            "[registry]\ninsecure = [{}]\n\n[images]\nheadroom = \"8MiB\"\n{images}\n",
            hosts.join(", ")
        ),
    )
    .unwrap();
    root
}

/// A bangerd on the host's network (the registries listen on its loopback) that can reach no
/// helper: pulls need none.
fn daemon_for(insecure: &[String], images: &str) -> Bangerd {
    Bangerd::start_on_host_network(root_for(insecure, images))
}

/// Pulls through the daemon, collecting the progress items; the result or the error.
async fn pull(
    daemon: &Bangerd,
    params: Value,
) -> (Vec<PullItem>, Result<ImagePullResult, ClientError>) {
    let client = daemon.client().await;
    let mut stream = client
        .stream("image.pull", &params)
        .await
        .expect("start image.pull");
    let mut items = Vec::new();
    loop {
        match stream.next::<PullItem>().await {
            Ok(StreamEvent::Item(item)) => items.push(item),
            Ok(StreamEvent::End(value)) => {
                let result = serde_json::from_value(value).expect("an image.pull result");
                return (items, Ok(result));
            }
            Err(error) => return (items, Err(error)),
        }
    }
}

async fn pull_ok(daemon: &Bangerd, params: Value) -> (Vec<PullItem>, ImagePullResult) {
    let (items, result) = pull(daemon, params.clone()).await;
    match result {
        Ok(result) => (items, result),
        Err(error) => panic!("pull {params} failed: {error}\n{}", daemon.output()),
    }
}

/// Pulls `reference`, which must be refused with a message containing `needle`, and checks
/// that the refusal left nothing behind.
async fn refused(daemon: &Bangerd, reference: &str, needle: &str) {
    let (_, result) = pull(daemon, json!({"reference": reference, "name": "img"})).await;
    let error = rpc_error(result);
    assert_eq!(error.code, ErrorCode::OperationFailed, "{error}");
    assert!(
        error.message.contains(needle),
        "the refusal should say {needle:?}: {error}"
    );
    assert!(
        error.message.contains("rolled back"),
        "the refusal should say it was rolled back: {error}"
    );
    nothing_left(daemon).await;
}

/// No image, nothing in `images/`, every `image.pull` rolled back, and a sound cache.
async fn nothing_left(daemon: &Bangerd) {
    let mut client = daemon.client().await;
    let images: ImageListResult = client.call("image.list", &json!({})).await.unwrap();
    assert!(images.images.is_empty(), "{:?}", images.images);
    let layout = daemon.layout();
    assert_eq!(dir_names(&layout.images_dir()), Vec::<String>::new());
    let ops: OperationsListResult = client
        .call("daemon.operations.list", &json!({"all": true}))
        .await
        .unwrap();
    for op in ops
        .operations
        .iter()
        .filter(|op| op.kind == OpKind::ImagePull)
    {
        assert_eq!(op.status, OpStatus::RolledBack, "{op:?}");
    }
    cache_is_sound(&layout);
}

/// Every cached blob hashes to its name, and no temporary or aside file is left.
fn cache_is_sound(layout: &Layout) -> Vec<String> {
    let cache = layout.oci_cache_dir();
    let blobs = cache.join("blobs/sha256");
    let mut names = Vec::new();
    for name in dir_names(&blobs) {
        let bytes = fs::read(blobs.join(&name)).unwrap();
        let actual: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(actual, name, "cached blob {name} does not hash to its name");
        names.push(name);
    }
    assert_eq!(
        dir_names(&cache.join("tmp")),
        Vec::<String>::new(),
        "temporary downloads left in the cache"
    );
    let asides: Vec<String> = dir_names(&layout.cache_dir)
        .into_iter()
        .filter(|n| n.contains("pruning"))
        .collect();
    assert!(asides.is_empty(), "prune leftovers: {asides:?}");
    names
}

fn rootfs_of(layout: &Layout, name: &str) -> PathBuf {
    layout.image_dir(name).join("rootfs.ext4")
}

fn e2fsck_clean(image: &Path) {
    let output = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("e2fsck (e2fsprogs) must be installed");
    assert!(
        output.status.success(),
        "e2fsck -fn {}:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn debugfs(image: &Path, request: &str) -> String {
    let output = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) must be installed");
    assert!(output.status.success(), "debugfs {request} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stat(image: &Path, path: &str) -> String {
    let text = debugfs(image, &format!("stat \"{path}\""));
    assert!(text.contains("Inode:"), "no inode at {path}: {text}");
    text
}

fn exists(image: &Path, path: &str) -> bool {
    debugfs(image, &format!("stat \"{path}\"")).contains("Inode:")
}

fn cat(image: &Path, path: &str) -> Vec<u8> {
    Command::new("debugfs")
        .args(["-R", &format!("cat \"{path}\"")])
        .arg(image)
        .output()
        .unwrap()
        .stdout
}

/// The value of a `Name: value` field in debugfs stat output.
fn field<'a>(stat: &'a str, name: &str) -> &'a str {
    let at = stat
        .find(&format!("{name}:"))
        .unwrap_or_else(|| panic!("no {name} in {stat}"));
    stat[at + name.len() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
}

/// The agent is at the boot contract's path, executable, root's, and the one bangerd embeds.
fn agent_is_in(image: &Path) {
    let path = banger_agent::boot::AGENT_PATH_IN_IMAGE;
    let agent = stat(image, path);
    assert_eq!(field(&agent, "Mode"), "0755", "{agent}");
    assert_eq!(field(&agent, "User"), "0", "{agent}");
    assert!(agent.contains("Type: regular"), "{agent}");
    assert!(
        cat(image, path) == banger::static_agent::BYTES,
        "the agent in the image is not bangerd's"
    );
}

/// A layer written entry by entry, with header fields as given (hostile ones included).
struct TarLayer {
    builder: tar::Builder<Vec<u8>>,
}

impl TarLayer {
    fn new() -> TarLayer {
        TarLayer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn raw(
        &mut self,
        kind: tar::EntryType,
        path: &[u8],
        link: &[u8],
        mode: u32,
        owner: (u64, u64),
        data: &[u8],
        pax: &[(&str, &[u8])],
    ) -> &mut Self {
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().copied())
                .unwrap();
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner.0.min(0o7777777));
        header.set_gid(owner.1.min(0o7777777));
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        {
            let ustar = header.as_ustar_mut().unwrap();
            ustar.name = [0; 100];
            ustar.name[..path.len()].copy_from_slice(path);
            ustar.linkname = [0; 100];
            ustar.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    fn dir(&mut self, path: &str, mode: u32, owner: (u64, u64)) -> &mut Self {
        self.raw(
            tar::EntryType::Directory,
            path.as_bytes(),
            b"",
            mode,
            owner,
            b"",
            &[],
        )
    }

    fn file(&mut self, path: &str, mode: u32, owner: (u64, u64), data: &[u8]) -> &mut Self {
        self.raw(
            tar::EntryType::Regular,
            path.as_bytes(),
            b"",
            mode,
            owner,
            data,
            &[],
        )
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            tar::EntryType::Symlink,
            path.as_bytes(),
            target.as_bytes(),
            0o777,
            (0, 0),
            b"",
            &[],
        )
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            tar::EntryType::Link,
            path.as_bytes(),
            target.as_bytes(),
            0o755,
            (0, 0),
            b"",
            &[],
        )
    }

    fn device(&mut self, kind: tar::EntryType, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(0o660);
        header.set_uid(0);
        header.set_gid(6);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        header.set_path(path).unwrap();
        header.set_cksum();
        self.builder.append(&header, std::io::empty()).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

/// `security.capability` granting CAP_NET_RAW (as setcap writes it).
const CAP_NET_RAW: &[u8] = &[
    0x00, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Three layers with everything an image can hold: owners (one above 65535), setuid, setgid
/// and sticky bits, hard links (one across layers), symlinks, devices, a fifo, xattrs, a
/// deletion and an opaque directory.
fn faithful_layers() -> Vec<Layer> {
    let mut base = TarLayer::new();
    base.dir("etc", 0o755, (0, 0))
        .file("etc/os-release", 0o644, (0, 0), b"ID=banger-test\n")
        .file("etc/obsolete", 0o644, (0, 0), b"deleted by layer 2\n")
        .dir("home/user", 0o750, (1000, 1000))
        .file("home/user/notes", 0o640, (1000, 1000), b"mine\n")
        .raw(
            tar::EntryType::Regular,
            b"srv/big-uid",
            b"",
            0o600,
            (70000, 70001),
            b"owned by a high id\n",
            &[("uid", b"70000"), ("gid", b"70001")],
        )
        .file("usr/bin/su", 0o4755, (0, 0), b"setuid\n")
        .dir("var/mail", 0o2775, (0, 8))
        .dir("tmp", 0o1777, (0, 0))
        .file("usr/bin/tool", 0o755, (0, 0), &noise(11, 300_000))
        .hardlink("usr/bin/tool-link", "usr/bin/tool")
        .symlink("usr/bin/vi", "tool")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .device(tar::EntryType::Char, "dev/null", 1, 3)
        .device(tar::EntryType::Block, "dev/vda", 254, 0)
        .raw(
            tar::EntryType::Fifo,
            b"run/fifo",
            b"",
            0o600,
            (0, 0),
            b"",
            &[],
        )
        .raw(
            tar::EntryType::Regular,
            b"usr/bin/ping",
            b"",
            0o755,
            (0, 0),
            b"ping\n",
            &[
                ("SCHILY.xattr.security.capability", CAP_NET_RAW),
                ("SCHILY.xattr.user.comment", b"hello"),
            ],
        )
        .file("opaque/a", 0o644, (0, 0), b"a\n")
        .file("opaque/b", 0o644, (0, 0), b"b\n");
    let mut second = TarLayer::new();
    second
        .file("etc/.wh.obsolete", 0o644, (0, 0), b"")
        .file("opaque/.wh..wh..opq", 0o644, (0, 0), b"")
        .file("opaque/c", 0o644, (0, 0), b"c\n")
        .file(
            "etc/os-release",
            0o644,
            (0, 0),
            b"ID=banger-test\nVERSION=2\n",
        );
    let mut third = TarLayer::new();
    third.hardlink("usr/bin/tool-link2", "usr/bin/tool");
    vec![
        Layer::gzip(&base.bytes()),
        Layer::zstd(&second.bytes()),
        Layer::uncompressed(&third.bytes()),
    ]
}

fn check_faithful(image: &Path) {
    e2fsck_clean(image);
    let big = stat(image, "/srv/big-uid");
    assert_eq!(
        (field(&big, "User"), field(&big, "Group")),
        ("70000", "70001"),
        "{big}"
    );
    assert_eq!(field(&stat(image, "/usr/bin/su"), "Mode"), "04755");
    let mail = stat(image, "/var/mail");
    assert_eq!(
        (field(&mail, "Mode"), field(&mail, "Group")),
        ("02775", "8")
    );
    assert_eq!(field(&stat(image, "/tmp"), "Mode"), "01777");
    let home = stat(image, "/home/user");
    assert_eq!(
        (field(&home, "Mode"), field(&home, "User")),
        ("0750", "1000")
    );
    let tool = stat(image, "/usr/bin/tool");
    assert_eq!(field(&tool, "Links"), "3", "{tool}");
    let inode = field(&tool, "Inode");
    for link in ["/usr/bin/tool-link", "/usr/bin/tool-link2"] {
        assert_eq!(field(&stat(image, link), "Inode"), inode, "{link}");
    }
    assert_eq!(cat(image, "/usr/bin/tool"), noise(11, 300_000));
    let vi = stat(image, "/usr/bin/vi");
    assert!(
        vi.contains("Type: symlink") && vi.contains("\"tool\""),
        "{vi}"
    );
    assert!(stat(image, "/etc/localtime").contains("/usr/share/zoneinfo/UTC"));
    let null = stat(image, "/dev/null");
    assert!(
        null.contains("Type: character special") && null.contains("01:03"),
        "{null}"
    );
    let vda = stat(image, "/dev/vda");
    assert!(vda.contains("Type: block special"), "{vda}");
    assert!(stat(image, "/run/fifo").contains("Type: FIFO"));
    let xattrs = debugfs(image, "ea_list /usr/bin/ping");
    assert!(
        xattrs.contains("security.capability") && xattrs.contains("user.comment"),
        "{xattrs}"
    );
    assert!(!exists(image, "/etc/obsolete"), "the whiteout was ignored");
    assert!(!exists(image, "/opaque/a") && !exists(image, "/opaque/b"));
    assert_eq!(cat(image, "/opaque/c"), b"c\n");
    assert_eq!(
        cat(image, "/etc/os-release"),
        b"ID=banger-test\nVERSION=2\n"
    );
    agent_is_in(image);
    assert!(
        !exists(image, AGENT_UNIT_PATH),
        "no systemd here, so no unit"
    );
}

/// `banger ARGS` with the root's environment (the CLI starts bangerd itself).
fn banger(root: &TestRoot, args: &[&str]) -> std::process::Output {
    Command::new(BANGER)
        .args(args)
        .envs(root.envs())
        .env_remove("BANGER_NO_AUTOSTART")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run banger {args:?}: {e}"))
}

fn banger_ok(root: &TestRoot, args: &[&str]) -> (String, String) {
    let output = banger(root, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "banger {args:?} failed ({}):\n{stdout}{stderr}",
        output.status
    );
    (stdout, stderr)
}

// ---- faithful images ---------------------------------------------------------------------------

fn a_faithful_multi_layer_image_pulls_through_the_cli_and_again_from_the_cache() {
    let registry = TestRegistry::start();
    let pushed = registry.push_image("banger/faithful:1", &faithful_layers(), "amd64");
    let root = root_for(&[registry.host()], "");

    // --json: every progress item, then the result, one JSON object per line.
    let (stdout, _) = banger_ok(
        &root,
        &[
            "image",
            "pull",
            &pushed.reference,
            "--name",
            "faithful",
            "--json",
        ],
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (result, items) = lines.split_last().expect("output");
    let items: Vec<PullItem> = items
        .iter()
        .map(|v| serde_json::from_value(v.clone()).expect("a progress item"))
        .collect();
    let result: ImagePullResult = serde_json::from_value(result.clone()).expect("the result");
    assert_eq!(result.outcome, PullOutcome::Pulled);
    assert_eq!(result.downloaded_blobs, 4, "config and three layers");
    assert_eq!(result.digest, pushed.manifest_digest.to_string());
    assert_eq!(
        result.image.source,
        format!("oci:{}@{}", pushed.reference, pushed.manifest_digest)
    );
    assert_eq!(result.image.kernel.as_deref(), Some("debian-12-cloud"));
    assert!(items.iter().any(|i| matches!(
        i,
        PullItem::Registry(PullProgress::Blob(b)) if b.state == BlobState::Downloaded
    )));
    for index in 0..3 {
        assert!(
            items.iter().any(|i| matches!(
                i,
                PullItem::Image(ImageProgress::Flatten { index: x, layers: 3, done_bytes, total_bytes })
                    if *x == index && done_bytes == total_bytes
            )),
            "no flatten of layer {index}: {items:?}"
        );
    }
    assert!(items.contains(&PullItem::Image(ImageProgress::Agent { systemd: false })));

    let layout = root.layout();
    let image = rootfs_of(&layout, "faithful");
    check_faithful(&image);
    assert_eq!(
        fs::read(layout.image_dir("faithful").join("manifest.json")).unwrap(),
        registry
            .get_manifest(&pushed.repository, &pushed.manifest_digest.to_string())
            .0,
        "the image keeps its manifest as pulled"
    );
    assert_eq!(cache_is_sound(&layout).len(), 4);

    // Tables show the source and the digest.
    let (list, _) = banger_ok(&root, &["image", "list"]);
    let short = &pushed.manifest_digest.hex()[..12];
    assert!(
        list.contains("faithful") && list.contains(&format!("sha256:{short}")),
        "{list}"
    );
    let (show, _) = banger_ok(&root, &["image", "show", "faithful"]);
    assert!(
        show.contains(&format!("digest:     {}", pushed.manifest_digest)),
        "{show}"
    );

    // Again: up to date, nothing downloaded, plain lines.
    let gets = registry.blob_gets(4);
    let (again, _) = banger_ok(
        &root,
        &["image", "pull", &pushed.reference, "--name", "faithful"],
    );
    assert!(again.contains("already pulled and up to date"), "{again}");
    // Deleted and pulled again: built again from the cache, still no blob downloaded.
    banger_ok(&root, &["image", "delete", "faithful"]);
    let (stdout, stderr) = banger_ok(
        &root,
        &["image", "pull", &pushed.reference, "--name", "faithful"],
    );
    assert!(
        stdout.starts_with("pulled faithful") && stdout.contains("downloaded 0 blob(s)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("cached") && !stderr.contains("\r"),
        "plain progress lines off a terminal: {stderr}"
    );
    assert_eq!(
        registry.blob_gets(gets),
        gets,
        "the second pull fetched a blob"
    );
    check_faithful(&rootfs_of(&layout, "faithful"));

    // The cache prune line, dry and for real.
    let (dry, _) = banger_ok(&root, &["image", "cache", "prune", "--dry-run"]);
    let cache_dir = layout.oci_cache_dir();
    assert!(
        dry.starts_with("would free ")
            && dry
                .trim_end()
                .ends_with(&format!("across 4 blob(s) in {}", cache_dir.display())),
        "{dry}"
    );
    let (freed, _) = banger_ok(&root, &["image", "cache", "prune"]);
    assert!(
        freed.starts_with("freed ") && freed.lines().count() == 1,
        "{freed}"
    );
    assert!(cache_is_sound(&layout).is_empty());
    // The prune is an operation (the dry run is not): in `banger ops` and `banger events`.
    let (ops, _) = banger_ok(&root, &["ops", "--all"]);
    let prunes: Vec<&str> = ops
        .lines()
        .filter(|l| l.contains("image.cache.prune"))
        .collect();
    assert!(
        prunes.len() == 1 && prunes[0].contains("image cache") && prunes[0].contains("succeeded"),
        "{ops}"
    );
    let op = prunes[0].split_whitespace().next().unwrap();
    let (events, _) = banger_ok(&root, &["events", "--op", op]);
    for wanted in [
        "operation_started",
        "image.cache.prune image cache",
        "rename-aside",
        "delete-aside",
        "image_cache_pruned",
        "across 4 blob(s)",
        "operation_succeeded",
    ] {
        assert!(events.contains(wanted), "no {wanted:?} in:\n{events}");
    }
    // The image does not need the cache.
    check_faithful(&rootfs_of(&layout, "faithful"));
}

async fn a_systemd_image_gets_the_agent_unit_and_a_busybox_one_does_not() {
    let registry = TestRegistry::start();
    // Debian's merged /usr: /sbin -> usr/sbin, /usr/sbin/init -> ../lib/systemd/systemd.
    let mut debian = TarLayer::new();
    debian
        .file("usr/lib/systemd/systemd", 0o755, (0, 0), b"systemd\n")
        .symlink("usr/sbin/init", "../lib/systemd/systemd")
        .symlink("sbin", "usr/sbin")
        .symlink("lib", "usr/lib")
        .dir("etc/systemd/system", 0o755, (0, 0));
    let systemd = registry.push_image("banger/systemd:1", &[Layer::gzip(&debian.bytes())], "amd64");
    let mut busybox = TarLayer::new();
    busybox
        .file("bin/busybox", 0o755, (0, 0), b"busybox\n")
        .symlink("sbin/init", "../bin/busybox");
    let plain = registry.push_image(
        "banger/busybox:1",
        &[Layer::gzip(&busybox.bytes())],
        "amd64",
    );
    let daemon = daemon_for(&[registry.host()], "");

    let (items, result) = pull_ok(&daemon, json!({"reference": systemd.reference})).await;
    assert_eq!(result.image.name, "systemd-1");
    assert!(items.contains(&PullItem::Image(ImageProgress::Agent { systemd: true })));
    let image = rootfs_of(&daemon.layout(), "systemd-1");
    e2fsck_clean(&image);
    agent_is_in(&image);
    assert_eq!(cat(&image, AGENT_UNIT_PATH), AGENT_UNIT.as_bytes());
    assert_eq!(field(&stat(&image, AGENT_UNIT_PATH), "Mode"), "0644");
    let link = stat(&image, AGENT_UNIT_LINK);
    assert!(
        link.contains("Type: symlink") && link.contains("../banger-agent.service"),
        "{link}"
    );
    // The image's own directories keep what the image said.
    assert_eq!(field(&stat(&image, "/etc/systemd/system"), "Mode"), "0755");

    let (items, _) = pull_ok(&daemon, json!({"reference": plain.reference, "name": "bb"})).await;
    assert!(items.contains(&PullItem::Image(ImageProgress::Agent { systemd: false })));
    let image = rootfs_of(&daemon.layout(), "bb");
    e2fsck_clean(&image);
    agent_is_in(&image);
    assert!(!exists(&image, AGENT_UNIT_PATH));
}

fn an_umoci_image_keeps_ownership_devices_and_deletions() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let registry = TestRegistry::start();
    let mut image = UmociImage::new();
    image
        .layer(|rootfs| {
            fs::create_dir_all(rootfs.join("etc")).unwrap();
            fs::write(rootfs.join("etc/obsolete"), "going\n").unwrap();
            fs::create_dir_all(rootfs.join("srv")).unwrap();
            fs::write(rootfs.join("srv/high"), "high\n").unwrap();
            nix::unistd::chown(
                &rootfs.join("srv/high"),
                Some(nix::unistd::Uid::from_raw(70000)),
                Some(nix::unistd::Gid::from_raw(70000)),
            )
            .unwrap();
            fs::write(rootfs.join("srv/su"), "su\n").unwrap();
            fs::set_permissions(rootfs.join("srv/su"), fs::Permissions::from_mode(0o4755)).unwrap();
            fs::hard_link(rootfs.join("srv/su"), rootfs.join("srv/su2")).unwrap();
            symlink("su", rootfs.join("srv/link")).unwrap();
            // What setcap writes, and a user xattr: umoci carries both into the layer.
            set_xattr(&rootfs.join("srv/su"), "security.capability", CAP_NET_RAW);
            set_xattr(&rootfs.join("srv/high"), "user.comment", b"hello");
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &rootfs.join("srv/high"),
                &nix::sys::time::TimeSpec::new(1_600_000_000, 0),
                &nix::sys::time::TimeSpec::new(1_600_000_000, 0),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
            fs::create_dir_all(rootfs.join("dev")).unwrap();
            nix::sys::stat::mknod(
                &rootfs.join("dev/null"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            nix::unistd::mkfifo(
                &rootfs.join("srv/fifo"),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .unwrap();
        })
        .layer(|rootfs| {
            fs::remove_file(rootfs.join("etc/obsolete")).unwrap();
            fs::write(rootfs.join("etc/motd"), "layer two\n").unwrap();
        });
    let pushed = image.push(&registry, "banger/umoci:1", Push::OciGzip);
    let root = root_for(&[registry.host()], "");
    banger_ok(
        &root,
        &["image", "pull", &pushed.reference, "--name", "umoci"],
    );
    let image = rootfs_of(&root.layout(), "umoci");
    e2fsck_clean(&image);
    let high = stat(&image, "/srv/high");
    assert_eq!(
        (field(&high, "User"), field(&high, "Group")),
        ("70000", "70000")
    );
    assert!(high.contains("mtime: 0x5f5e1000"), "{high}");
    let su = stat(&image, "/srv/su");
    assert_eq!((field(&su, "Mode"), field(&su, "Links")), ("04755", "2"));
    let caps = debugfs(&image, "ea_get /srv/su security.capability");
    let expected: String = CAP_NET_RAW.iter().map(|b| format!("{b:02x} ")).collect();
    assert!(
        caps.replace('\n', " ").contains(expected.trim()),
        "security.capability of /srv/su: {caps}"
    );
    let comment = debugfs(&image, "ea_get /srv/high user.comment");
    assert!(comment.contains("hello"), "{comment}");
    assert!(stat(&image, "/srv/link").contains("Type: symlink"));
    assert!(stat(&image, "/dev/null").contains("Type: character special"));
    assert!(stat(&image, "/srv/fifo").contains("Type: FIFO"));
    assert!(!exists(&image, "/etc/obsolete"));
    assert_eq!(cat(&image, "/etc/motd"), b"layer two\n");
    agent_is_in(&image);
}

/// Sets extended attribute `name` of `path` (not following a symlink), as setfattr would.
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "lsetxattr: {}", std::io::Error::last_os_error());
}

/// On a terminal the progress is a bar redrawn in place (`\r`, erase line), erased before each
/// line that reports something finished and at the end: what stays on the screen is lines.
async fn on_a_terminal_a_pull_draws_a_bar_in_place_and_leaves_only_lines() {
    let registry = TestRegistry::start();
    let pushed = registry.push_image(
        "banger/bar:1",
        &[
            Layer::gzip(&tar_with(&[("usr/lib/one", &noise(11, 3 << 20))])),
            Layer::gzip(&tar_with(&[("usr/lib/two", &noise(12, 3 << 20))])),
        ],
        "amd64",
    );
    let daemon = daemon_for(&[registry.host()], "");
    let mut screen = crate::tty::Screen::spawn(
        daemon.root().path(),
        &["image", "pull", &pushed.reference, "--name", "bar"],
        24,
        120,
    );
    let status = screen.exit().await;
    let text = screen.text();
    assert!(status.success(), "{text:?}");
    const ERASE: &str = "\r\x1b[2K";
    let draws: Vec<&str> = text
        .split(ERASE)
        .skip(1)
        .map(|frame| frame.lines().next().unwrap_or(""))
        .collect();
    assert!(
        draws
            .iter()
            .any(|d| d.starts_with("downloading [") && d.contains('%') && d.contains("layers)")),
        "a download bar was drawn: {text:?}"
    );
    assert!(
        draws
            .iter()
            .any(|d| d.starts_with("building ext4 [") && d.contains("layer ")),
        "an ext4 bar was drawn: {text:?}"
    );
    // Every bar is erased before the next line is printed: after the last erase, no bar.
    let last = text.rsplit(ERASE).next().unwrap();
    assert!(
        !last.contains('['),
        "the bar stayed on the screen: {last:?}"
    );
    assert!(text.contains("pulled bar"), "{text:?}");
    // Nothing of the bar went to the log or the result: it is the terminal's only.
    let (show, _) = banger_ok(daemon.root(), &["image", "show", "bar"]);
    assert!(!show.contains('%'), "{show}");
}

// ---- hostile images ----------------------------------------------------------------------------

/// Pushes `layers` to a fresh registry and insists the pull is refused saying `needle`.
async fn hostile(layers: &[Layer], needle: &str) {
    let registry = TestRegistry::start();
    let pushed = registry.push_image("hostile/img:1", layers, "amd64");
    let daemon = daemon_for(&[registry.host()], "");
    refused(&daemon, &pushed.reference, needle).await;
}

fn one(layer: TarLayer) -> Vec<Layer> {
    vec![Layer::gzip(&layer.bytes())]
}

async fn a_dot_dot_entry_is_refused_and_leaves_nothing() {
    let mut layer = TarLayer::new();
    layer
        .file("etc/ok", 0o644, (0, 0), b"ok\n")
        .file("../escape", 0o644, (0, 0), b"out\n");
    hostile(&one(layer), "`..` component").await;
}

async fn a_write_through_an_absolute_symlinked_parent_is_refused() {
    let mut layer = TarLayer::new();
    layer
        .symlink("etc", "/tmp")
        .file("etc/passwd", 0o644, (0, 0), b"root::0:0::/:/bin/sh\n");
    hostile(&one(layer), "is a symbolic link").await;
}

async fn a_write_through_a_relative_symlinked_parent_is_refused() {
    let mut layer = TarLayer::new();
    layer
        .dir("a", 0o755, (0, 0))
        .symlink("a/up", "../../..")
        .file("a/up/x", 0o644, (0, 0), b"x\n");
    hostile(&one(layer), "is a symbolic link").await;
}

async fn a_hardlink_outside_the_root_is_refused() {
    let mut layer = TarLayer::new();
    layer
        .file("etc/ok", 0o644, (0, 0), b"ok\n")
        .hardlink("etc/shadow", "../../etc/shadow");
    hostile(&one(layer), "`..` component").await;
}

async fn a_hardlink_to_a_missing_path_is_refused() {
    let mut layer = TarLayer::new();
    layer.hardlink("etc/shadow", "etc/not-yet");
    hostile(&one(layer), "does not exist").await;
}

async fn a_whiteout_of_dot_dot_is_refused() {
    let mut layer = TarLayer::new();
    layer
        .dir("dir", 0o755, (0, 0))
        .file("dir/.wh...", 0o644, (0, 0), b"");
    hostile(&one(layer), "whiteout").await;
}

async fn a_whiteout_outside_the_root_is_refused() {
    let mut layer = TarLayer::new();
    layer
        .file("etc/ok", 0o644, (0, 0), b"ok\n")
        .file("../.wh.etc", 0o644, (0, 0), b"");
    hostile(&one(layer), "`..` component").await;
}

/// A regular file whose PAX `path` is `path`: how a long or odd name reaches a layer.
fn pax_named(path: &[u8]) -> Vec<Layer> {
    let mut layer = TarLayer::new();
    layer.file("etc/ok", 0o644, (0, 0), b"ok\n").raw(
        tar::EntryType::Regular,
        b"placeholder",
        b"",
        0o644,
        (0, 0),
        b"x",
        &[("path", path)],
    );
    one(layer)
}

async fn a_name_over_255_bytes_is_refused() {
    let name = format!("etc/{}", "n".repeat(256));
    hostile(&pax_named(name.as_bytes()), "255 bytes").await;
}

async fn a_name_with_a_nul_byte_is_refused() {
    hostile(&pax_named(b"etc/pass\0wd"), "NUL byte").await;
}

async fn a_path_deeper_than_the_kernel_allows_is_refused() {
    // 4100 bytes: past PATH_MAX, though every component is short.
    let deep = "abcdefg/".repeat(512) + "file";
    hostile(&pax_named(deep.as_bytes()), "PATH_MAX").await;
}

/// A scripted registry serving `image` whose layer blob is replaced by `served`.
async fn tampered(served: Vec<u8>, needle: &str) {
    let server = StaticRegistry::start().await;
    let layer = Layer::gzip(&tar_with(&[("etc/motd", b"genuine\n")]));
    server.serve_image("tamper/img", "1", std::slice::from_ref(&layer));
    server.route(
        &format!("/v2/tamper/img/blobs/{}", layer.digest()),
        Route::ok("application/octet-stream", Body::Full(served)),
    );
    let daemon = daemon_for(&[server.host()], "");
    refused(&daemon, &format!("{}/tamper/img:1", server.host()), needle).await;
    assert!(server.blob_gets() >= 1);
}

async fn a_layer_whose_digest_does_not_match_is_refused() {
    let genuine = Layer::gzip(&tar_with(&[("etc/motd", b"genuine\n")]));
    let mut forged = genuine.bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0xff;
    tampered(forged, "sha256").await;
}

async fn a_layer_whose_size_does_not_match_is_refused() {
    let genuine = Layer::gzip(&tar_with(&[("etc/motd", b"genuine\n")]));
    let mut longer = genuine.bytes.clone();
    longer.extend_from_slice(&[0u8; 100]);
    tampered(longer, "bytes").await;
}

async fn a_truncated_gzip_layer_is_refused() {
    let tar = tar_with(&[("usr/bin/tool", &noise(3, 200_000))]);
    let whole = Layer::gzip(&tar).bytes;
    let cut = whole[..whole.len() / 2].to_vec();
    let registry = TestRegistry::start();
    let pushed = registry.push_image(
        "hostile/cut:1",
        &[Layer::raw(OCI_LAYER_GZIP, cut, Digest::of(&tar))],
        "amd64",
    );
    let daemon = daemon_for(&[registry.host()], "");
    refused(&daemon, &pushed.reference, "layer 0").await;
}

/// A layer of text (compressible, so a flipped byte lands in coded data, not a stored block)
/// and random bytes: what the stream corruption tests start from.
fn layer_tar() -> Vec<u8> {
    let text: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("line {i} of a configuration file\n").into_bytes())
        .collect();
    tar_with(&[
        ("etc/big.conf", &text),
        ("usr/bin/tool", &noise(5, 100_000)),
    ])
}

/// Pushes one layer of `media_type` whose bytes are `bytes` (already damaged) and insists the
/// pull is refused naming the layer, leaving nothing.
async fn damaged(media_type: &str, bytes: Vec<u8>, tar: &[u8], repo_tag: &str) {
    let registry = TestRegistry::start();
    let pushed = registry.push_image(
        repo_tag,
        &[Layer::raw(media_type, bytes, Digest::of(tar))],
        "amd64",
    );
    let daemon = daemon_for(&[registry.host()], "");
    refused(&daemon, &pushed.reference, "layer 0").await;
}

/// Flips one byte a third of the way in: inside the compressed data, past the header.
fn flipped(mut bytes: Vec<u8>) -> Vec<u8> {
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    bytes
}

async fn a_corrupt_gzip_layer_is_refused() {
    let tar = layer_tar();
    let corrupt = flipped(Layer::gzip(&tar).bytes);
    damaged(OCI_LAYER_GZIP, corrupt, &tar, "hostile/gzbad:1").await;
}

async fn a_truncated_zstd_layer_is_refused() {
    let tar = layer_tar();
    let whole = Layer::zstd(&tar).bytes;
    let cut = whole[..whole.len() / 2].to_vec();
    damaged(OCI_LAYER_ZSTD, cut, &tar, "hostile/zcut:1").await;
}

async fn a_corrupt_zstd_layer_is_refused() {
    let tar = layer_tar();
    let corrupt = flipped(Layer::zstd(&tar).bytes);
    damaged(OCI_LAYER_ZSTD, corrupt, &tar, "hostile/zbad:1").await;
}

async fn content_beyond_the_maximum_image_size_is_refused() {
    // 48 MiB of zeros gzip to about 50 KiB: a small download, a large expansion.
    let tar = tar_with(&[("big", &vec![0u8; 48 << 20])]);
    let registry = TestRegistry::start();
    let pushed = registry.push_image("hostile/bomb:1", &[Layer::gzip(&tar)], "amd64");
    let daemon = daemon_for(&[registry.host()], "max_size = \"32MiB\"");
    refused(&daemon, &pushed.reference, "maximum image size").await;
}

// ---- crashes, concurrency, prune ---------------------------------------------------------------

/// Waits (with a deadline) until the gated body is half sent.
async fn reached(gate: &Gate, daemon: &Bangerd) {
    if tokio::time::timeout(Duration::from_secs(60), gate.reached())
        .await
        .is_err()
    {
        panic!(
            "the pull never reached the gated layer; bangerd's output:\n{}",
            daemon.output()
        );
    }
}

/// A scripted registry whose one layer's body stops after its first MiB until `gate` opens.
async fn gated_image(server: &StaticRegistry, repository: &str) -> (Gate, Layer) {
    let layer = Layer::gzip(&tar_with(&[("payload", &noise(5, 3 << 20))]));
    server.serve_image(repository, "1", std::slice::from_ref(&layer));
    let gate = Gate::default();
    let (first, rest) = layer.bytes.split_at(1 << 20);
    server.route(
        &format!("/v2/{repository}/blobs/{}", layer.digest()),
        Route::ok(
            "application/octet-stream",
            Body::Gated {
                first: first.to_vec(),
                gate: gate.clone(),
                rest: rest.to_vec(),
            },
        ),
    );
    (gate, layer)
}

async fn a_kill_during_a_download_is_rolled_back_and_the_cache_stays_sound() {
    let server = StaticRegistry::start().await;
    let (gate, layer) = gated_image(&server, "slow/img").await;
    let mut daemon = daemon_for(&[server.host()], "");
    let reference = format!("{}/slow/img:1", server.host());
    let client = daemon.client().await;
    let stream = client
        .stream("image.pull", &json!({"reference": reference}))
        .await
        .unwrap();
    reached(&gate, &daemon).await;
    // The download is in flight: its temporary file is in the cache, the operation at fetch.
    let layout = daemon.layout();
    assert_eq!(dir_names(&layout.oci_cache_dir().join("tmp")).len(), 1);
    let ops: OperationsListResult = daemon
        .client()
        .await
        .call("daemon.operations.list", &json!({}))
        .await
        .unwrap();
    let op = ops.operations.first().expect("the pull is in flight");
    assert_eq!(op.kind, OpKind::ImagePull);
    assert_eq!(op.current_step().map(|s| s.name.as_str()), Some("fetch"));
    assert!(layout.image_staging_dir(op.op_id).exists());

    daemon.kill();
    drop(stream);
    daemon.restart();
    nothing_left(&daemon).await;
    let ops: OperationsListResult = daemon
        .client()
        .await
        .call("daemon.operations.list", &json!({"all": true}))
        .await
        .unwrap();
    let pull_op = ops
        .operations
        .iter()
        .find(|o| o.kind == OpKind::ImagePull)
        .unwrap();
    assert_eq!(pull_op.status, OpStatus::RolledBack);
    assert_eq!(
        pull_op.recovery,
        Some(banger_events::RecoveryDecision::RollBack)
    );
    assert!(
        !layout
            .oci_cache_dir()
            .join("blobs/sha256")
            .join(layer.digest().hex())
            .exists(),
        "the half-downloaded layer is not in the cache"
    );

    // The same pull afterwards completes.
    server.route(
        &format!("/v2/slow/img/blobs/{}", layer.digest()),
        Route::ok("application/octet-stream", Body::Full(layer.bytes.clone())),
    );
    let (_, result) = pull_ok(&daemon, json!({"reference": reference})).await;
    assert_eq!(result.outcome, PullOutcome::Pulled);
    e2fsck_clean(&rootfs_of(&layout, "img-1"));
    assert_eq!(cache_is_sound(&layout).len(), 2);
}

async fn two_pulls_of_one_image_at_once_download_once_and_the_second_waits() {
    let server = StaticRegistry::start().await;
    let (gate, _) = gated_image(&server, "shared/img").await;
    let daemon = daemon_for(&[server.host()], "");
    let reference = format!("{}/shared/img:1", server.host());
    let first = {
        let client = daemon.client().await;
        let params = json!({"reference": reference});
        tokio::spawn(async move {
            let mut stream = client.stream("image.pull", &params).await.unwrap();
            loop {
                match stream.next::<PullItem>().await.unwrap() {
                    StreamEvent::Item(_) => {}
                    StreamEvent::End(value) => {
                        return serde_json::from_value::<ImagePullResult>(value).unwrap();
                    }
                }
            }
        })
    };
    reached(&gate, &daemon).await;
    let client = daemon.client().await;
    let mut second = client
        .stream("image.pull", &json!({"reference": reference}))
        .await
        .unwrap();
    match second.next::<PullItem>().await.unwrap() {
        StreamEvent::Item(PullItem::Image(ImageProgress::Waiting { name })) => {
            assert_eq!(name, "img-1")
        }
        _ => panic!("the second pull should say it waits"),
    }
    gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.outcome, PullOutcome::Pulled);
    let second = loop {
        match second.next::<PullItem>().await.unwrap() {
            StreamEvent::Item(_) => {}
            StreamEvent::End(value) => {
                break serde_json::from_value::<ImagePullResult>(value).unwrap();
            }
        }
    };
    assert_eq!(second.outcome, PullOutcome::AlreadyPulled);
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.image, first.image);
    assert_eq!(server.blob_gets(), 2, "config and layer, once each");
    // One operation: the second pull changed nothing.
    let ops: OperationsListResult = daemon
        .client()
        .await
        .call("daemon.operations.list", &json!({"all": true}))
        .await
        .unwrap();
    assert_eq!(
        ops.operations
            .iter()
            .filter(|o| o.kind == OpKind::ImagePull)
            .count(),
        1
    );
}

async fn a_prune_during_a_pull_corrupts_nothing() {
    let server = StaticRegistry::start().await;
    let (gate, _) = gated_image(&server, "pruned/img").await;
    let daemon = daemon_for(&[server.host()], "");
    let reference = format!("{}/pruned/img:1", server.host());
    let puller = {
        let client = daemon.client().await;
        let params = json!({"reference": reference});
        tokio::spawn(async move {
            let mut stream = client.stream("image.pull", &params).await.unwrap();
            loop {
                match stream.next::<PullItem>().await {
                    Ok(StreamEvent::Item(_)) => {}
                    Ok(StreamEvent::End(value)) => {
                        return Ok(serde_json::from_value::<ImagePullResult>(value).unwrap());
                    }
                    Err(error) => return Err(error),
                }
            }
        })
    };
    reached(&gate, &daemon).await;
    let pruned: Value = daemon
        .client()
        .await
        .call("image.cache.prune", &json!({}))
        .await
        .unwrap();
    assert_eq!(pruned["blobs"], 1, "the config blob was cached: {pruned}");
    gate.open();
    let result = tokio::time::timeout(Duration::from_secs(60), puller)
        .await
        .expect("the pull ends")
        .unwrap()
        .unwrap_or_else(|e| panic!("the pull failed after a prune: {e}\n{}", daemon.output()));
    assert_eq!(result.outcome, PullOutcome::Pulled);
    let layout = daemon.layout();
    e2fsck_clean(&rootfs_of(&layout, "img-1"));
    agent_is_in(&rootfs_of(&layout, "img-1"));
    // What the prune moved aside is gone; nothing half-written got a blob's name.
    cache_is_sound(&layout);
}

/// bangerd killed between the two steps of a prune (the cache set aside, the copy not yet
/// deleted): the restarted daemon rolls the prune forward, and the cache is sound and holds
/// no blob from before it; the aside copy an older build's crashed prune left goes too, and
/// the image pulled before does not need the cache.
async fn a_kill_between_the_steps_of_a_prune_is_rolled_forward() {
    let server = StaticRegistry::start().await;
    let layer = Layer::gzip(&tar_with(&[("payload", &noise(6, 200_000))]));
    server.serve_image("kept/img", "1", std::slice::from_ref(&layer));
    let mut daemon = daemon_for(&[server.host()], "");
    let reference = format!("{}/kept/img:1", server.host());
    pull_ok(&daemon, json!({"reference": reference})).await;
    let layout = daemon.layout();
    assert_eq!(cache_is_sound(&layout).len(), 2, "config and layer cached");
    let older = layout.cache_dir.join(".oci.pruning-4242-17");
    fs::create_dir_all(older.join("blobs/sha256")).unwrap();
    fs::write(older.join("blobs/sha256").join("c".repeat(64)), [7u8; 500]).unwrap();

    daemon.kill();
    daemon.restart_with(&[(
        "BANGER_FAILPOINT",
        "image.cache.prune:rename-aside:succeeded",
    )]);
    let result = daemon
        .client()
        .await
        .call::<_, Value>("image.cache.prune", &json!({}))
        .await;
    assert!(
        matches!(result, Err(ClientError::Closed | ClientError::Io(_))),
        "bangerd should have died between the steps: {result:?}"
    );
    assert!(!daemon.wait().success(), "aborted at the failpoint");
    // Set aside and recreated, not yet deleted.
    let asides: Vec<String> = dir_names(&layout.cache_dir)
        .into_iter()
        .filter(|n| n.starts_with(".oci.pruning-") && *n != ".oci.pruning-4242-17")
        .collect();
    assert_eq!(asides.len(), 1, "{asides:?}");
    assert_eq!(dir_names(&layout.oci_cache_dir()), Vec::<String>::new());

    daemon.restart();
    let ops: OperationsListResult = daemon
        .client()
        .await
        .call("daemon.operations.list", &json!({"all": true}))
        .await
        .unwrap();
    let prune = ops
        .operations
        .iter()
        .find(|o| o.kind == OpKind::ImageCachePrune)
        .expect("the prune is an operation");
    assert_eq!(prune.status, OpStatus::Succeeded, "{prune:?}");
    assert_eq!(
        prune.recovery,
        Some(banger_events::RecoveryDecision::RollForward)
    );
    assert_eq!(prune.target, banger_events::Target::ImageCache);
    let steps: Vec<(&str, banger_projections::StepStatus)> = prune
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.status))
        .collect();
    assert_eq!(
        steps,
        [
            ("rename-aside", banger_projections::StepStatus::Succeeded),
            ("delete-aside", banger_projections::StepStatus::Succeeded),
        ]
    );
    // The resumed delete counted what it deleted: the set-aside cache and the older copy.
    let (events, _) = crate::support::events(
        &daemon.socket(),
        banger::api::EventsParams {
            op: Some(prune.op_id),
            ..Default::default()
        },
    )
    .await;
    let pruned: Vec<&banger_events::ImageCachePruned> = events
        .iter()
        .filter_map(|e| match &e.event {
            banger_events::Event::ImageCachePruned(p) => Some(p),
            _ => None,
        })
        .collect();
    assert!(
        matches!(pruned.as_slice(), [p] if p.blobs == 3 && p.bytes > 200_000),
        "{pruned:?}"
    );
    assert!(
        cache_is_sound(&layout).is_empty(),
        "no blob from before the prune"
    );
    let images: ImageListResult = daemon
        .client()
        .await
        .call("image.list", &json!({}))
        .await
        .unwrap();
    assert_eq!(images.images.len(), 1);
    e2fsck_clean(&rootfs_of(&layout, "img-1"));
}

// ---- catalog bundles ---------------------------------------------------------------------------

async fn catalog_bundles_pull_and_bad_downloads_leave_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    // A real image, packed as the catalog ships one.
    let rootfs = scratch.path().join("rootfs.ext4");
    banger::image::flatten_layers(
        [tar_with(&[("etc/motd", b"from a bundle\n")])]
            .iter()
            .map(|t| t.as_slice()),
        &rootfs,
        banger::image::FlattenOptions {
            headroom_bytes: 4 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let packed = banger::image::bundle::pack(
        &rootfs,
        banger::image::bundle::BundleManifest {
            format: 1,
            name: "dev".into(),
            kernel: Some("k".into()),
            source: "test".into(),
            rootfs: banger::image::bundle::FileSum {
                size: 0,
                sha256: String::new(),
            },
        },
        &scratch.path().join("out"),
    )
    .unwrap();
    let bytes = fs::read(&packed.path).unwrap();
    let file = packed
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let server = StaticRegistry::start().await;
    server.route(
        &format!("/bundles/{file}"),
        Route::ok("application/zstd", Body::Full(bytes.clone())),
    );
    server.route(
        "/bundles/cut.tar.zst",
        Route::ok(
            "application/zstd",
            Body::Truncated {
                declared: bytes.len(),
                bytes: bytes[..bytes.len() / 2].to_vec(),
            },
        ),
    );
    let url = |path: &str| format!("http://{}/bundles/{path}", server.host());
    let entry = |name: &str, url: String, sha256: &str| {
        json!({"name": name, "kernel": "k", "description": "test",
               "source": {"kind": "bundle", "url": url, "sha256": sha256, "size_bytes": bytes.len()}})
    };
    let catalog = scratch.path().join("images.json");
    fs::write(
        &catalog,
        serde_json::to_vec(&json!({"format": 1, "images": [
            entry("dev", url(&file), &packed.sha256),
            entry("forged", url(&file), &"0".repeat(64)),
            entry("cut", url("cut.tar.zst"), &packed.sha256),
        ]}))
        .unwrap(),
    )
    .unwrap();
    let daemon = daemon_for(
        &[],
        &format!("catalog = {:?}", catalog.display().to_string()),
    );

    let (items, result) = pull_ok(&daemon, json!({"reference": "dev"})).await;
    assert!(items.iter().any(|i| matches!(
        i,
        PullItem::Image(ImageProgress::Download { done_bytes, total_bytes }) if done_bytes == total_bytes
    )));
    assert_eq!(
        result.image.source,
        format!("catalog:dev@sha256:{}", packed.sha256)
    );
    assert_eq!(result.image.sha256, packed.manifest.rootfs.sha256);
    assert_eq!(result.image.kernel.as_deref(), Some("k"));
    let layout = daemon.layout();
    assert_eq!(
        fs::read(rootfs_of(&layout, "dev")).unwrap(),
        fs::read(&rootfs).unwrap()
    );
    let catalog: banger::api::ImageCatalogResult = daemon
        .client()
        .await
        .call("image.catalog", &json!({}))
        .await
        .unwrap();
    let state = |name: &str| {
        catalog
            .entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.state.clone())
    };
    assert_eq!(state("dev").as_deref(), Some("pulled"));
    assert_eq!(state("cut").as_deref(), Some("available"));
    assert_eq!(state("debian").as_deref(), Some("available"));

    for (name, needle) in [("forged", "sha256"), ("cut", "truncated")] {
        let (_, result) = pull(&daemon, json!({"reference": name})).await;
        let error = rpc_error(result);
        assert_eq!(error.code, ErrorCode::OperationFailed, "{error}");
        assert!(error.message.contains(needle), "{name}: {error}");
        assert_eq!(
            dir_names(&layout.images_dir()),
            ["dev"],
            "{name} left something"
        );
    }
}

// ---- vm create pulls its image -----------------------------------------------------------------

fn vm_create_pulls_a_catalog_image_first_and_names_the_missing_kernel() {
    let registry = TestRegistry::start();
    let pushed = registry.push_image(
        "banger/tiny:1",
        &[Layer::gzip(&tar_with(&[("etc/motd", b"tiny\n")]))],
        "amd64",
    );
    let scratch = tempfile::tempdir().unwrap();
    let catalog = scratch.path().join("images.json");
    fs::write(
        &catalog,
        serde_json::to_vec(&json!({"format": 1, "default_image": "tiny", "images": [
            {"name": "tiny", "kernel": "tiny-kernel",
             "source": {"kind": "oci", "reference": pushed.reference}}
        ]}))
        .unwrap(),
    )
    .unwrap();
    let root = root_for(
        &[registry.host()],
        &format!("catalog = {:?}", catalog.display().to_string()),
    );
    // No --image: the catalog's default, pulled first; the kernel it names is not here.
    let output = banger(&root, &["vm", "create", "dev"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stdout.contains("pulled tiny"), "{stdout}{stderr}");
    assert!(stderr.contains("layer 1/1"), "progress on stderr: {stderr}");
    assert!(
        stderr.contains("banger kernel pull tiny-kernel"),
        "the error names the way out: {stderr}"
    );
    let (list, _) = banger_ok(&root, &["image", "list", "--available"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("tiny"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("(default)") && row.contains("pulled"), "{row}");
    // The second time, the image is there: no pull, the same clear error.
    let output = banger(&root, &["vm", "create", "dev", "--image", "tiny"]);
    assert!(!String::from_utf8_lossy(&output.stdout).contains("pulled"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("banger kernel pull tiny-kernel"));
}

fn vm_create_pulls_an_oci_reference_it_is_given() {
    let registry = TestRegistry::start();
    let pushed = registry.push_image(
        "team/tool:2",
        &[Layer::gzip(&tar_with(&[("etc/motd", b"tool\n")]))],
        "amd64",
    );
    let root = root_for(&[registry.host()], "");
    // An OCI reference no image is named after: pulled first, with its progress on stderr;
    // the create then goes on and stops at the kernel it is told to use, which is not here.
    let output = banger(
        &root,
        &[
            "vm",
            "create",
            "dev",
            "--image",
            &pushed.reference,
            "--kernel",
            "nokernel",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("pulled tool-2") && stdout.contains(&pushed.reference),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("layer 1/1"), "progress on stderr: {stderr}");
    assert!(
        stderr.contains("nokernel"),
        "the error names the kernel: {stderr}"
    );
    let (show, _) = banger_ok(&root, &["image", "show", "tool-2", "--json"]);
    let image: Value = serde_json::from_str(&show).unwrap();
    let source = image["source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with(&format!("oci:{}@sha256:", pushed.reference)),
        "{image}"
    );
    e2fsck_clean(&rootfs_of(&root.layout(), "tool-2"));
    // Asked again, nothing is downloaded: the image is already there and up to date.
    let gets = registry.blob_gets(0);
    let output = banger(
        &root,
        &[
            "vm",
            "create",
            "dev",
            "--image",
            &pushed.reference,
            "--kernel",
            "nokernel",
        ],
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("already pulled"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(registry.blob_gets(0), gets, "no blob fetched twice");
}
