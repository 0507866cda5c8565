//! Tests of the flatten against the real e2fsprogs: every image is checked with `e2fsck -fn`
//! and read back with `debugfs`, never with this module's own code. Layers are built with the
//! `tar` crate (hostile ones by writing header fields directly).
//!
//! An optional tier mounts images with a real kernel (`mount -o loop,ro`): it runs only when
//! `BANGER_TEST_MOUNT=1` and the tests run as root, and says so when skipped.

use std::fs;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A layer under construction.
struct Layer {
    builder: ::tar::Builder<Vec<u8>>,
}

#[derive(Clone, Copy)]
struct Attr {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

const ROOT_0755: Attr = Attr {
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtime: 1_700_000_000,
};

fn attr(mode: u32, uid: u64, gid: u64) -> Attr {
    Attr {
        mode,
        uid,
        gid,
        mtime: 1_700_000_000,
    }
}

impl Layer {
    fn new() -> Self {
        Layer {
            builder: ::tar::Builder::new(Vec::new()),
        }
    }

    /// Appends one entry with its path, link name and numeric fields written as given (no
    /// checks), preceded by PAX records when `pax` is not empty.
    #[allow(clippy::too_many_arguments)]
    fn raw(
        &mut self,
        kind: ::tar::EntryType,
        path: &[u8],
        link: &[u8],
        attr: Attr,
        data: &[u8],
        pax: &[(&str, &[u8])],
    ) -> &mut Self {
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().copied())
                .unwrap();
        }
        let mut header = ::tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(attr.mode);
        // Ids past the octal field's range go through PAX (set by the caller); keep the header
        // field valid.
        header.set_uid(attr.uid.min(0o7777777));
        header.set_gid(attr.gid.min(0o7777777));
        header.set_mtime(attr.mtime);
        header.set_size(data.len() as u64);
        {
            let ustar = header.as_ustar_mut().unwrap();
            let name_len = path.len().min(100);
            ustar.name = [0; 100];
            ustar.name[..name_len].copy_from_slice(&path[..name_len]);
            let link_len = link.len().min(100);
            ustar.linkname = [0; 100];
            ustar.linkname[..link_len].copy_from_slice(&link[..link_len]);
        }
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    fn dir(&mut self, path: &str, attr: Attr) -> &mut Self {
        self.raw(
            ::tar::EntryType::Directory,
            path.as_bytes(),
            b"",
            attr,
            b"",
            &[],
        )
    }

    fn file(&mut self, path: &str, attr: Attr, data: &[u8]) -> &mut Self {
        self.raw(
            ::tar::EntryType::Regular,
            path.as_bytes(),
            b"",
            attr,
            data,
            &[],
        )
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let pax: Vec<(&str, &[u8])> = if target.len() > 100 {
            vec![("linkpath", target.as_bytes())]
        } else {
            vec![]
        };
        self.raw(
            ::tar::EntryType::Symlink,
            path.as_bytes(),
            target.as_bytes(),
            attr(0o777, 0, 0),
            b"",
            &pax,
        )
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            ::tar::EntryType::Link,
            path.as_bytes(),
            target.as_bytes(),
            ROOT_0755,
            b"",
            &[],
        )
    }

    fn whiteout(&mut self, path: &str) -> &mut Self {
        self.file(path, attr(0o644, 0, 0), b"")
    }

    fn device(&mut self, kind: ::tar::EntryType, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut header = ::tar::Header::new_ustar();
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
        self.builder.append(&header, io::empty()).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

struct Built {
    dir: tempfile::TempDir,
    image: PathBuf,
    summary: ImageSummary,
}

fn options() -> FlattenOptions {
    FlattenOptions {
        headroom_bytes: 16 << 20,
        sync: false,
        ..FlattenOptions::default()
    }
}

fn build(layers: Vec<Vec<u8>>) -> Built {
    build_with(layers, options())
}

fn build_with(layers: Vec<Vec<u8>>, options: FlattenOptions) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.ext4");
    let summary = flatten_layers(layers.into_iter().map(Cursor::new), &image, options)
        .unwrap_or_else(|e| panic!("flatten failed: {e}"));
    e2fsck_clean(&image);
    Built {
        dir,
        image,
        summary,
    }
}

/// Flattens layers that must be refused; checks that nothing is left in the output directory.
fn refuse(layers: Vec<Vec<u8>>) -> FlattenError {
    refuse_with(layers, options())
}

fn refuse_with(layers: Vec<Vec<u8>>, options: FlattenOptions) -> FlattenError {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.ext4");
    let error = flatten_layers(layers.into_iter().map(Cursor::new), &image, options)
        .expect_err("the flatten should have been refused");
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind after {error}: {left:?}");
    error
}

fn refusal(error: FlattenError) -> Refusal {
    match error {
        FlattenError::Refused { reason, .. } => reason,
        other => panic!("expected a refusal, got: {other}"),
    }
}

fn e2fsck_clean(image: &Path) {
    let output = Command::new("e2fsck")
        .args(["-fn"])
        .arg(image)
        .output()
        .expect("e2fsck (e2fsprogs) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "e2fsck -fn found problems:\n{text}"
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

/// `debugfs stat` of a path, as one string.
fn stat(image: &Path, path: &str) -> String {
    let text = debugfs(image, &format!("stat \"{path}\""));
    assert!(text.contains("Inode:"), "no inode at {path}: {text}");
    text
}

fn cat(image: &Path, path: &str) -> Vec<u8> {
    let output = Command::new("debugfs")
        .args(["-R", &format!("cat \"{path}\"")])
        .arg(image)
        .output()
        .unwrap();
    output.stdout
}

fn exists(image: &Path, path: &str) -> bool {
    debugfs(image, &format!("stat \"{path}\"")).contains("Inode:")
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

/// bangerd runs a flatten on a blocking thread of its runtime.
#[test]
fn the_builder_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<ImageBuilder>();
    assert_send::<FlattenError>();
}

#[test]
fn regular_files_and_directories_pass_e2fsck() {
    let mut layer = Layer::new();
    layer
        .dir("etc", ROOT_0755)
        .file("etc/hostname", attr(0o644, 0, 0), b"banger\n")
        .file("etc/empty", attr(0o600, 0, 0), b"")
        .dir("usr/share/doc", ROOT_0755)
        .file(
            "usr/share/doc/two-blocks",
            attr(0o644, 0, 0),
            &vec![b'x'; 4097],
        );
    let built = build(vec![layer.bytes()]);
    assert_eq!(cat(&built.image, "/etc/hostname"), b"banger\n");
    assert_eq!(
        cat(&built.image, "/usr/share/doc/two-blocks"),
        vec![b'x'; 4097]
    );
    let empty = stat(&built.image, "/etc/empty");
    assert_eq!(field(&empty, "Size"), "0");
    assert!(exists(&built.image, "/lost+found"));
    // The implicit parent `usr` got the default directory mode.
    assert_eq!(field(&stat(&built.image, "/usr"), "Mode"), "0755");
    assert!(built.summary.size_bytes >= 16 << 20);
    drop(built.dir);
}

/// The inode number of a path.
fn inode(image: &Path, path: &str) -> u64 {
    field(&stat(image, path), "Inode").parse().unwrap()
}

/// debugfs prints ids as signed 32-bit numbers.
fn id_field(stat: &str, name: &str) -> u32 {
    field(stat, name).parse::<i64>().unwrap() as u32
}

fn mtime_field(stat: &str) -> &str {
    let at = stat.find(" mtime: ").expect("mtime line");
    stat[at + 8..].split_whitespace().next().unwrap()
}

const CAPABILITY_NET_RAW: &[u8] = &[
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// One layer with every kind of inode, owners past 16 and 32767 bits, special mode bits,
/// xattrs in the inode and in a block, and times before 1970, past 2038 and with nanoseconds.
fn every_kind_layer() -> Vec<u8> {
    let mut layer = Layer::new();
    layer
        .dir("bin", ROOT_0755)
        .file("bin/su", attr(0o4755, 0, 0), b"su")
        .file("bin/wall", attr(0o2755, 0, 5), b"wall")
        .dir("tmp", attr(0o1777, 0, 0))
        .file("home/user/notes", attr(0o640, 1000, 1000), b"notes")
        .file("home/sub/file", attr(0o600, 100_000, 100_001), b"subuid")
        .raw(
            ::tar::EntryType::Regular,
            b"home/huge/file",
            b"",
            attr(0o600, 0, 0),
            b"huge ids",
            &[("uid", b"4000000000"), ("gid", b"3000000000")],
        )
        .symlink("bin/sh", "dash")
        .symlink("bin/long", &"l".repeat(100))
        .hardlink("bin/su-again", "bin/su")
        .device(::tar::EntryType::Char, "dev/null", 1, 3)
        .device(::tar::EntryType::Block, "dev/nvme", 259, 70_000)
        .raw(
            ::tar::EntryType::Fifo,
            b"run/initctl",
            b"",
            attr(0o600, 0, 0),
            b"",
            &[],
        )
        .raw(
            ::tar::EntryType::Regular,
            b"bin/ping",
            b"",
            attr(0o755, 0, 0),
            b"ping",
            &[
                ("SCHILY.xattr.security.capability", CAPABILITY_NET_RAW),
                ("SCHILY.xattr.user.comment", b"hello"),
                ("mtime", b"1700000000.123456789"),
            ],
        )
        .raw(
            ::tar::EntryType::Regular,
            b"many-xattrs",
            b"",
            attr(0o644, 0, 0),
            b"",
            &[
                ("SCHILY.xattr.user.a", &[b'a'; 40]),
                ("SCHILY.xattr.user.b", &[b'b'; 40]),
                ("SCHILY.xattr.trusted.c", &[b'c'; 40]),
                ("SCHILY.xattr.user.d", &[b'd'; 40]),
            ],
        )
        .raw(
            ::tar::EntryType::Regular,
            b"before-1970",
            b"",
            attr(0o644, 0, 0),
            b"",
            &[("mtime", b"-100")],
        )
        .raw(
            ::tar::EntryType::Regular,
            b"after-2038",
            b"",
            attr(0o644, 0, 0),
            b"",
            &[("mtime", b"4102444800.5")],
        );
    layer.bytes()
}

#[test]
fn every_inode_kind_keeps_its_owner_mode_and_time() {
    let built = build(vec![every_kind_layer()]);
    let image = &built.image;

    let su = stat(image, "/bin/su");
    assert_eq!(field(&su, "Mode"), "04755");
    assert_eq!(field(&su, "Links"), "2");
    assert_eq!(inode(image, "/bin/su"), inode(image, "/bin/su-again"));
    assert_eq!(cat(image, "/bin/su-again"), b"su");
    let wall = stat(image, "/bin/wall");
    assert_eq!(field(&wall, "Mode"), "02755");
    assert_eq!(id_field(&wall, "Group"), 5);
    assert_eq!(field(&stat(image, "/tmp"), "Mode"), "01777");

    let notes = stat(image, "/home/user/notes");
    assert_eq!(
        (id_field(&notes, "User"), id_field(&notes, "Group")),
        (1000, 1000)
    );
    assert_eq!(field(&notes, "Mode"), "0640");
    let sub = stat(image, "/home/sub/file");
    assert_eq!(
        (id_field(&sub, "User"), id_field(&sub, "Group")),
        (100_000, 100_001)
    );
    let huge = stat(image, "/home/huge/file");
    assert_eq!(
        (id_field(&huge, "User"), id_field(&huge, "Group")),
        (4_000_000_000, 3_000_000_000)
    );
    assert_eq!(mtime_field(&notes), "0x6553f100:00000000");

    let sh = stat(image, "/bin/sh");
    assert!(sh.contains("Type: symlink"), "{sh}");
    assert!(sh.contains("Fast link dest: \"dash\""), "{sh}");
    let long = stat(image, "/bin/long");
    assert!(long.contains("Type: symlink"), "{long}");
    assert_eq!(field(&long, "Size"), "100");
    assert_eq!(cat(image, "/bin/long"), "l".repeat(100).as_bytes());

    let null = stat(image, "/dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    assert_eq!(id_field(&null, "Group"), 6);
    assert_eq!(field(&null, "Mode"), "0660");
    let nvme = stat(image, "/dev/nvme");
    assert!(nvme.contains("Type: block special"), "{nvme}");
    assert!(nvme.contains("major/minor number: 259:70000"), "{nvme}");
    assert!(stat(image, "/run/initctl").contains("Type: FIFO"));

    let ping = stat(image, "/bin/ping");
    assert!(
        ping.contains("security.capability (20) = 01 00 00 02 00 20 00 00"),
        "{ping}"
    );
    assert!(ping.contains("user.comment (5) = \"hello\""), "{ping}");
    // Nanoseconds are stored shifted left by two (the low bits are epoch bits).
    assert_eq!(
        mtime_field(&ping),
        format!("0x6553f100:{:08x}", 123_456_789u32 << 2)
    );
    assert_eq!(field(&ping, "File ACL"), "0", "both fit in the inode");
    let many = stat(image, "/many-xattrs");
    assert_ne!(
        field(&many, "File ACL"),
        "0",
        "four 40-byte values do not fit in the inode: an xattr block is expected\n{many}"
    );
    let listed = debugfs(image, "ea_list /many-xattrs");
    for name in [
        "user.a (40)",
        "user.b (40)",
        "user.d (40)",
        "trusted.c (40)",
    ] {
        assert!(listed.contains(name), "{name} missing from {listed}");
    }

    assert_eq!(
        mtime_field(&stat(image, "/before-1970")),
        "0xffffff9c:00000000"
    );
    let after = stat(image, "/after-2038");
    assert_eq!(
        mtime_field(&after),
        format!("0xf4865700:{:08x}", (500_000_000u32 << 2) | 1)
    );
    assert!(after.contains("2100"), "{after}");
}

#[test]
fn posix_acls_are_stored_in_ext4_form() {
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 6, 1234),
        (4, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    let mut layer = Layer::new();
    layer.raw(
        ::tar::EntryType::Regular,
        b"shared",
        b"",
        attr(0o664, 0, 0),
        b"",
        &[("SCHILY.xattr.system.posix_acl_access", &acl)],
    );
    let built = build(vec![layer.bytes()]);
    // debugfs shows the stored form: version 1, 4-byte entries for the owner, group, mask and
    // other, an 8-byte one (with the id, 1234 = 0x4d2) for the named user.
    let listed = debugfs(&built.image, "ea_list /shared");
    assert!(
        listed.contains(
            "system.posix_acl_access (28) = 01 00 00 00 01 00 06 00 02 00 06 00 d2 04 00 00 \
             04 00 04 00 10 00 06 00 20 00 04 00"
        ),
        "{listed}"
    );
}

#[test]
fn later_layers_delete_replace_and_hide_with_whiteouts_and_opaque_directories() {
    let mut base = Layer::new();
    base.dir("etc", ROOT_0755)
        .file("etc/deleted", attr(0o644, 0, 0), b"old")
        .file("etc/replaced", attr(0o644, 0, 0), b"old contents")
        .file("etc/kept", attr(0o644, 0, 0), b"kept")
        .dir("opt/app", ROOT_0755)
        .file("opt/app/lower-1", attr(0o644, 0, 0), b"1")
        .dir("opt/app/lower-dir", ROOT_0755)
        .file("opt/app/lower-dir/deep", attr(0o644, 0, 0), b"deep")
        .dir("var/log", ROOT_0755)
        .file("var/log/syslog", attr(0o640, 0, 4), &vec![b's'; 10_000])
        .file("usr/bin/tool", attr(0o755, 0, 0), b"tool")
        .hardlink("usr/bin/tool-alias", "usr/bin/tool")
        .dir("d", ROOT_0755)
        .file("d/lower", attr(0o644, 0, 0), b"lower");

    let mut upper = Layer::new();
    upper
        .whiteout("etc/.wh.deleted")
        .file("etc/replaced", attr(0o600, 7, 7), b"new")
        // Added before the opaque marker, in the same layer: must survive it.
        .file("opt/app/same-layer-before", attr(0o644, 0, 0), b"before")
        .whiteout("opt/app/.wh..wh..opq")
        .file("opt/app/same-layer-after", attr(0o644, 0, 0), b"after")
        .whiteout("var/.wh.log")
        .whiteout("usr/bin/.wh.tool")
        // A directory whited out by the layer that also fills it: only the lower part goes.
        .file("d/upper", attr(0o644, 0, 0), b"upper")
        .whiteout(".wh.d")
        .whiteout("etc/.wh.never-existed")
        .whiteout("no-such-dir/.wh.x")
        // A whiteout of an entry its own layer added hides nothing.
        .file("etc/same-layer", attr(0o644, 0, 0), b"same")
        .whiteout("etc/.wh.same-layer");

    let mut top = Layer::new();
    top.file("etc/deleted", attr(0o644, 0, 0), b"back again")
        .dir("var/log", attr(0o755, 0, 0));

    let built = build(vec![base.bytes(), upper.bytes(), top.bytes()]);
    let image = &built.image;
    assert_eq!(cat(image, "/etc/deleted"), b"back again");
    assert_eq!(cat(image, "/etc/replaced"), b"new");
    let replaced = stat(image, "/etc/replaced");
    assert_eq!(
        (field(&replaced, "Mode"), id_field(&replaced, "User")),
        ("0600", 7)
    );
    assert_eq!(cat(image, "/etc/kept"), b"kept");
    assert!(exists(image, "/etc/same-layer"));

    assert!(!exists(image, "/opt/app/lower-1"));
    assert!(!exists(image, "/opt/app/lower-dir"));
    assert_eq!(cat(image, "/opt/app/same-layer-before"), b"before");
    assert_eq!(cat(image, "/opt/app/same-layer-after"), b"after");

    assert!(exists(image, "/var/log"));
    assert!(!exists(image, "/var/log/syslog"));

    assert!(!exists(image, "/usr/bin/tool"));
    let alias = stat(image, "/usr/bin/tool-alias");
    assert_eq!(field(&alias, "Links"), "1");
    assert_eq!(cat(image, "/usr/bin/tool-alias"), b"tool");

    assert!(!exists(image, "/d/lower"));
    assert_eq!(cat(image, "/d/upper"), b"upper");
    assert!(!exists(image, "/no-such-dir"));
}

#[test]
fn freed_blocks_are_reused_and_zeroed() {
    let secret = vec![0xA5u8; 64 << 10];
    let mut base = Layer::new();
    base.file("big-secret", attr(0o600, 0, 0), &secret);
    let mut upper = Layer::new();
    upper.whiteout(".wh.big-secret");
    let built = build(vec![base.bytes(), upper.bytes()]);
    assert!(!exists(&built.image, "/big-secret"));
    // The deleted file's bytes are nowhere in the image.
    let bytes = fs::read(&built.image).unwrap();
    assert!(
        !bytes.windows(4096).any(|w| w == &secret[..4096]),
        "deleted data still in the image"
    );
}

#[test]
fn absolute_and_dot_slash_paths_land_inside_the_image() {
    let mut layer = Layer::new();
    layer
        .file("/etc/absolute", attr(0o644, 0, 0), b"abs")
        .file("./etc/dotted", attr(0o644, 0, 0), b"dot")
        .file("etc//double//slash", attr(0o644, 0, 0), b"dbl")
        .dir("./", attr(0o700, 0, 0));
    let built = build(vec![layer.bytes()]);
    assert_eq!(cat(&built.image, "/etc/absolute"), b"abs");
    assert_eq!(cat(&built.image, "/etc/dotted"), b"dot");
    assert_eq!(cat(&built.image, "/etc/double/slash"), b"dbl");
    // `./` restates the root.
    assert_eq!(field(&stat(&built.image, "/"), "Mode"), "0700");
}

#[test]
fn a_dot_dot_component_is_refused() {
    let mut layer = Layer::new();
    layer.file("usr/../../etc/passwd", attr(0o644, 0, 0), b"x");
    assert_eq!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::DotDotComponent
    );
}

#[test]
fn a_write_through_an_absolute_symlink_parent_is_refused() {
    let mut base = Layer::new();
    base.symlink("lib", "/usr/lib");
    let mut upper = Layer::new();
    upper.file("lib/libevil.so", attr(0o755, 0, 0), b"x");
    assert!(matches!(
        refusal(refuse(vec![base.bytes(), upper.bytes()])),
        Refusal::SymlinkParent { parent } if parent == "/lib"
    ));
}

#[test]
fn a_write_through_a_relative_symlink_parent_is_refused() {
    let mut layer = Layer::new();
    layer.dir("a", ROOT_0755).symlink("a/up", "../../..").file(
        "a/up/etc/shadow",
        attr(0o600, 0, 0),
        b"x",
    );
    assert!(matches!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::SymlinkParent { parent } if parent == "/a/up"
    ));
}

#[test]
fn a_symlink_leaf_is_replaced_not_followed() {
    let mut base = Layer::new();
    base.file("target", attr(0o644, 0, 0), b"target")
        .symlink("link", "target");
    let mut upper = Layer::new();
    upper.file("link", attr(0o644, 0, 0), b"replaces the link");
    let built = build(vec![base.bytes(), upper.bytes()]);
    assert_eq!(cat(&built.image, "/target"), b"target");
    assert!(stat(&built.image, "/link").contains("Type: regular"));
}

#[test]
fn a_hard_link_outside_the_root_is_refused() {
    let mut layer = Layer::new();
    layer.hardlink("passwd", "../../etc/passwd");
    assert_eq!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::DotDotComponent
    );
}

#[test]
fn a_hard_link_to_a_missing_path_is_refused() {
    let mut layer = Layer::new();
    layer
        .hardlink("early", "later")
        .file("later", attr(0o644, 0, 0), b"x");
    assert!(matches!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::HardlinkTargetMissing { target } if target == "later"
    ));
}

#[test]
fn a_hard_link_to_a_directory_is_refused() {
    let mut layer = Layer::new();
    layer.dir("etc", ROOT_0755).hardlink("etc2", "etc");
    assert!(matches!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::HardlinkToDirectory { .. }
    ));
}

#[test]
fn a_hard_link_through_a_symlink_parent_is_refused() {
    let mut layer = Layer::new();
    layer
        .file("real/file", attr(0o644, 0, 0), b"x")
        .symlink("via", "real")
        .hardlink("alias", "via/file");
    assert!(matches!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::SymlinkParent { .. }
    ));
}

#[test]
fn a_whiteout_naming_dot_dot_is_refused() {
    let mut layer = Layer::new();
    layer.whiteout("etc/.wh...");
    assert_eq!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::InvalidWhiteout
    );
    let mut layer = Layer::new();
    layer.whiteout("etc/.wh..");
    assert_eq!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::InvalidWhiteout
    );
}

#[test]
fn a_whiteout_outside_the_root_is_refused() {
    let mut layer = Layer::new();
    layer.whiteout("../.wh.etc");
    assert_eq!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::DotDotComponent
    );
}

#[test]
fn a_whiteout_under_a_symlink_is_refused() {
    let mut base = Layer::new();
    base.dir("real", ROOT_0755)
        .file("real/file", attr(0o644, 0, 0), b"x")
        .symlink("via", "real");
    let mut upper = Layer::new();
    upper.whiteout("via/.wh.file");
    assert!(matches!(
        refusal(refuse(vec![base.bytes(), upper.bytes()])),
        Refusal::SymlinkParent { .. }
    ));
}

#[test]
fn a_name_over_255_bytes_is_refused() {
    let name = "n".repeat(256);
    let mut layer = Layer::new();
    layer.raw(
        ::tar::EntryType::Regular,
        b"placeholder",
        b"",
        attr(0o644, 0, 0),
        b"",
        &[("path", name.as_bytes())],
    );
    assert_eq!(refusal(refuse(vec![layer.bytes()])), Refusal::NameTooLong);
}

#[test]
fn a_name_with_a_nul_byte_is_refused() {
    let mut layer = Layer::new();
    layer.raw(
        ::tar::EntryType::Regular,
        b"placeholder",
        b"",
        attr(0o644, 0, 0),
        b"",
        &[("path", b"etc/pass\0wd")],
    );
    assert_eq!(refusal(refuse(vec![layer.bytes()])), Refusal::NulInName);
}

#[test]
fn a_name_with_a_newline_is_refused() {
    let mut layer = Layer::new();
    layer.file("etc/evil\nname", attr(0o644, 0, 0), b"x");
    assert_eq!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::ControlCharacterInName
    );
}

#[test]
fn a_path_longer_than_path_max_is_refused() {
    let deep = "abcdefg/".repeat(512) + "file"; // 4100 bytes
    let mut layer = Layer::new();
    layer.raw(
        ::tar::EntryType::Regular,
        b"placeholder",
        b"",
        attr(0o644, 0, 0),
        b"",
        &[("path", deep.as_bytes())],
    );
    assert_eq!(refusal(refuse(vec![layer.bytes()])), Refusal::PathTooLong);
    // Just under the limit is fine.
    let deep = "abcdefg/".repeat(510) + "file";
    let mut layer = Layer::new();
    layer.raw(
        ::tar::EntryType::Regular,
        b"placeholder",
        b"",
        attr(0o644, 0, 0),
        b"deep",
        &[("path", deep.as_bytes())],
    );
    let built = build(vec![layer.bytes()]);
    assert_eq!(cat(&built.image, &format!("/{deep}")), b"deep");
}

fn two_files() -> Vec<u8> {
    let mut layer = Layer::new();
    layer
        .file("first", attr(0o644, 0, 0), &vec![b'1'; 3000])
        .file("second", attr(0o644, 0, 0), &vec![b'2'; 3000]);
    layer.bytes()
}

#[test]
fn a_stream_cut_inside_file_data_is_refused() {
    let mut layer = two_files();
    layer.truncate(512 + 1000);
    assert!(matches!(
        refuse(vec![layer]),
        FlattenError::CorruptTar { layer: 0, .. }
    ));
}

/// umoci's `insert` writes layers without the end-of-archive marker, and Go's reader (Docker,
/// containerd) takes the end of the stream after an entry as the end of the archive.
#[test]
fn a_stream_that_ends_after_an_entry_without_the_marker_is_accepted() {
    let mut layer = two_files();
    // Two entries of a 512-byte header and 3000 bytes padded to 3072: the end of the second
    // is at 7168, where the marker starts.
    layer.truncate(7168);
    let built = build(vec![layer]);
    assert_eq!(cat(&built.image, "/first"), vec![b'1'; 3000]);
    assert_eq!(cat(&built.image, "/second"), vec![b'2'; 3000]);
}

#[test]
fn a_stream_that_ends_after_an_extended_header_is_refused() {
    let mut layer = Layer::new();
    let long = format!("{}/file", "d".repeat(200));
    layer.raw(
        ::tar::EntryType::Regular,
        long.as_bytes(),
        b"",
        attr(0o644, 0, 0),
        b"data",
        &[("path", long.as_bytes())],
    );
    let mut bytes = layer.bytes();
    // The PAX header and its one-block record come first: cut right after them, before the
    // entry they describe.
    bytes.truncate(1024);
    let error = refuse(vec![bytes]);
    assert!(
        matches!(&error, FlattenError::CorruptTar { detail, .. } if detail.contains("extended header")),
        "{error}"
    );
}

#[test]
fn a_corrupt_header_is_refused() {
    let mut layer = two_files();
    layer[3584 + 10] ^= 0x40; // a byte of the second entry's name
    let error = refuse(vec![layer]);
    assert!(
        matches!(&error, FlattenError::CorruptTar { detail, .. } if detail.contains("checksum")),
        "{error}"
    );
}

#[test]
fn a_failing_layer_stream_is_reported_and_leaves_nothing() {
    struct Failing(Cursor<Vec<u8>>);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.position() >= 2048 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "gzip: invalid checksum",
                ));
            }
            let len = buf.len().min(512);
            self.0.read(&mut buf[..len])
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.ext4");
    let mut builder = ImageBuilder::create(&image, options()).unwrap();
    builder.apply_layer(Cursor::new(two_files())).unwrap();
    let error = builder
        .apply_layer(Failing(Cursor::new(two_files())))
        .unwrap_err();
    assert!(
        matches!(error, FlattenError::ReadLayer { layer: 1, .. }),
        "{error}"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(builder.finish().is_err());
}

/// A tar stream with one regular file of `size` bytes whose content is produced on the fly:
/// zeros, except `marker(n)` at the start of every 128 MiB.
fn big_file_layer(path: &str, size: u64) -> impl Read {
    let mut header = ::tar::Header::new_gnu();
    header.set_entry_type(::tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_size(size);
    header.set_path(path).unwrap();
    header.set_cksum();
    struct Content {
        at: u64,
        size: u64,
    }
    impl Read for Content {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let len = (buf.len() as u64).min(self.size - self.at) as usize;
            buf[..len].fill(0);
            // Markers live at multiples of 128 MiB; a read never straddles one (reads are
            // smaller and aligned by the reader's buffering), but check every position anyway.
            let chunk = 128u64 << 20;
            let first = self.at.div_ceil(chunk) * chunk;
            let mut mark = first;
            while mark + 16 <= self.at + len as u64 && mark < self.size {
                let offset = (mark - self.at) as usize;
                buf[offset..offset + 16].copy_from_slice(&marker(mark / chunk));
                mark += chunk;
            }
            self.at += len as u64;
            Ok(len)
        }
    }
    let padding = (512 - size % 512) % 512;
    Cursor::new(header.as_bytes().to_vec())
        .chain(Content { at: 0, size })
        .chain(io::repeat(0).take(padding + 1024))
}

fn marker(n: u64) -> [u8; 16] {
    let mut bytes = *b"MARKER-00000000!";
    bytes[7..15].copy_from_slice(format!("{n:08}").as_bytes());
    bytes
}

#[test]
fn content_beyond_the_maximum_image_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.ext4");
    let options = FlattenOptions {
        max_image_bytes: 64 << 20,
        ..options()
    };
    let error = flatten_layers([big_file_layer("huge", 100 << 20)], &image, options).unwrap_err();
    assert!(matches!(error, FlattenError::TooLarge { max_bytes } if max_bytes == 64 << 20));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_existing_output_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.ext4");
    fs::write(&image, b"the user's file").unwrap();
    let error = flatten_layers([Cursor::new(two_files())], &image, options()).unwrap_err();
    assert!(
        matches!(error, FlattenError::OutputExists { .. }),
        "{error}"
    );
    assert_eq!(fs::read(&image).unwrap(), b"the user's file");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn invalid_symlinks_devices_and_ids_are_refused() {
    let mut layer = Layer::new();
    layer.symlink("empty", "");
    assert_eq!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::EmptySymlinkTarget
    );

    let mut layer = Layer::new();
    layer.raw(
        ::tar::EntryType::Regular,
        b"id",
        b"",
        attr(0o644, 0, 0),
        b"",
        &[("uid", b"4294967296")],
    );
    assert_eq!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::IdOutOfRange(1 << 32)
    );

    let mut layer = Layer::new();
    layer.device(::tar::EntryType::Char, "dev/odd", 4096, 0);
    assert!(matches!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::DeviceNumberOutOfRange { major: 4096, .. }
    ));

    let mut layer = Layer::new();
    layer.raw(
        ::tar::EntryType::Regular,
        b"x",
        b"",
        attr(0o644, 0, 0),
        b"",
        &[("SCHILY.xattr.system.data", b"inline")],
    );
    assert!(matches!(
        refusal(refuse(vec![layer.bytes()])),
        Refusal::XattrNamespace { .. }
    ));
}

#[test]
fn a_layer_that_is_empty_or_only_an_end_marker_is_fine() {
    let built = build(vec![Vec::new(), vec![0u8; 10240]]);
    assert!(exists(&built.image, "/lost+found"));
}

#[test]
fn a_directory_with_20000_entries_spans_many_blocks() {
    let mut layer = Layer::new();
    layer.dir("big", ROOT_0755);
    for i in 0..20_000 {
        layer.file(
            &format!("big/entry-with-a-longish-name-{i:05}"),
            attr(0o644, 0, 0),
            if i % 1000 == 0 { b"content" } else { b"" },
        );
    }
    let built = build(vec![layer.bytes()]);
    let listing = debugfs(&built.image, "ls -p /big");
    let names = listing.lines().filter(|line| line.starts_with('/')).count();
    assert_eq!(names, 20_002, "20000 entries plus . and ..");
    let dir = stat(&built.image, "/big");
    let size: u64 = field(&dir, "Size").parse().unwrap();
    assert!(size > 100 * 4096, "a multi-block directory: {size}");
    assert_eq!(
        cat(&built.image, "/big/entry-with-a-longish-name-19000"),
        b"content"
    );
}

#[test]
fn a_directory_with_more_than_65000_subdirectories_counts_one_link() {
    let mut layer = Layer::new();
    layer.dir("many", ROOT_0755);
    for i in 0..65_001 {
        layer.dir(&format!("many/{i}"), ROOT_0755);
    }
    let built = build(vec![layer.bytes()]);
    assert_eq!(field(&stat(&built.image, "/many"), "Links"), "1");
    assert_eq!(field(&stat(&built.image, "/many/65000"), "Links"), "2");
}

#[test]
fn a_multi_gib_file_gets_an_extent_tree_and_its_bytes_land_where_debugfs_says() {
    let size = (4u64 << 30) + (512 << 20) + 123;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.ext4");
    flatten_layers([big_file_layer("big", size)], &image, options()).unwrap();
    e2fsck_clean(&image);
    let big = stat(&image, "/big");
    assert_eq!(field(&big, "Size"), size.to_string());
    // More than four extents (128 MiB each at most): the inode holds an index, and the
    // leaves live in an extent tree block.
    assert!(big.contains("(ETB0)"), "no extent tree block:\n{big}");
    let mut file = fs::File::open(&image).unwrap();
    let chunk_blocks = (128u64 << 20) / 4096;
    for n in 0..size.div_ceil(128 << 20) {
        let mapped = debugfs(&image, &format!("bmap /big {}", n * chunk_blocks));
        let physical: u64 = mapped.trim().parse().unwrap_or_else(|_| panic!("{mapped}"));
        let mut bytes = [0u8; 16];
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(physical * 4096)).unwrap();
        file.read_exact(&mut bytes).unwrap();
        assert_eq!(bytes, marker(n), "chunk {n} at block {physical}");
    }
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
    let len = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (len >= 0).then(|| {
        buf.truncate(len as usize);
        buf
    })
}

/// The optional real-kernel tier: mounts an image read-write through a loop device, reads
/// everything back through the VFS, changes it, and has e2fsck check the result.
#[test]
fn a_real_kernel_mounts_the_image_read_write_and_keeps_it_consistent() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if std::env::var_os("BANGER_TEST_MOUNT").is_none() || !nix::unistd::geteuid().is_root() {
        eprintln!(
            "skipped: set BANGER_TEST_MOUNT=1 and run as root to mount images with the kernel"
        );
        return;
    }
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 6, 1234),
        (4, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    let mut extra = Layer::new();
    extra.raw(
        ::tar::EntryType::Regular,
        b"shared",
        b"",
        attr(0o664, 0, 0),
        b"",
        &[("SCHILY.xattr.system.posix_acl_access", &acl)],
    );
    extra.dir("big", ROOT_0755);
    for i in 0..3000 {
        extra.file(&format!("big/f{i:04}"), attr(0o644, 0, 0), b"x");
    }
    let built = build(vec![every_kind_layer(), extra.bytes()]);
    let mountpoint = built.dir.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let status = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&built.image)
        .arg(&mountpoint)
        .status()
        .unwrap();
    assert!(status.success(), "mount failed");
    let mounted = Mounted(mountpoint.clone());
    let at = |path: &str| mountpoint.join(path);

    let su = fs::symlink_metadata(at("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(su.nlink(), 2);
    assert_eq!(
        su.ino(),
        fs::symlink_metadata(at("bin/su-again")).unwrap().ino()
    );
    let huge = fs::symlink_metadata(at("home/huge/file")).unwrap();
    assert_eq!((huge.uid(), huge.gid()), (4_000_000_000, 3_000_000_000));
    assert_eq!(fs::read(at("home/huge/file")).unwrap(), b"huge ids");
    assert_eq!(
        fs::read_link(at("bin/long")).unwrap(),
        PathBuf::from("l".repeat(100))
    );
    assert_eq!(fs::read_link(at("bin/sh")).unwrap(), PathBuf::from("dash"));
    let nvme = fs::symlink_metadata(at("dev/nvme")).unwrap();
    let rdev = nvme.rdev();
    assert_eq!(
        (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)),
        (259, 70_000)
    );
    let ping = fs::symlink_metadata(at("bin/ping")).unwrap();
    assert_eq!(
        (ping.mtime(), ping.mtime_nsec()),
        (1_700_000_000, 123_456_789)
    );
    assert_eq!(
        lgetxattr(&at("bin/ping"), "security.capability").as_deref(),
        Some(CAPABILITY_NET_RAW)
    );
    assert_eq!(
        lgetxattr(&at("many-xattrs"), "trusted.c").as_deref(),
        Some(&[b'c'; 40][..])
    );
    // The kernel converts ext4's ACL form back: the layer's bytes must come out unchanged.
    assert_eq!(
        lgetxattr(&at("shared"), "system.posix_acl_access").as_deref(),
        Some(&acl[..])
    );
    assert_eq!(fs::read_dir(at("big")).unwrap().count(), 3000);
    assert_eq!(
        fs::symlink_metadata(at("before-1970")).unwrap().mtime(),
        -100
    );
    assert_eq!(
        fs::symlink_metadata(at("after-2038")).unwrap().mtime(),
        4_102_444_800
    );

    // Writes: into the multi-block linear directory, a new tree, a removal, a rename.
    for i in 0..500 {
        fs::write(at(&format!("big/new{i}")), vec![b'n'; 5000]).unwrap();
    }
    fs::create_dir_all(at("new/deeper")).unwrap();
    fs::write(at("new/deeper/file"), vec![7u8; 3 << 20]).unwrap();
    fs::remove_file(at("big/f0000")).unwrap();
    fs::rename(at("bin/wall"), at("new/wall")).unwrap();
    drop(mounted);

    e2fsck_clean(&built.image);
    assert_eq!(cat(&built.image, "/new/deeper/file"), vec![7u8; 3 << 20]);
    assert!(!exists(&built.image, "/big/f0000"));
    assert!(exists(&built.image, "/big/new499"));
}
