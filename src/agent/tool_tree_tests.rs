//! The tree tools against hostile streams and real directories.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

fn file(path: &str, content: &[u8], mode: u32) -> (Header, Vec<u8>) {
    (
        Header {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            size: content.len() as u64,
            mtime_s: 1_600_000_000,
            mtime_ns: 42,
            link: None,
            delete: false,
        },
        content.to_vec(),
    )
}

fn link(path: &str, target: &str) -> (Header, Vec<u8>) {
    (
        Header {
            path: path.into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 0,
            mtime_s: 1_600_000_000,
            mtime_ns: 0,
            link: Some(target.into()),
            delete: false,
        },
        Vec::new(),
    )
}

fn tar(entries: &[(Header, Vec<u8>)]) -> Vec<u8> {
    let mut writer = TarWriter::new(Vec::new());
    for (header, content) in entries {
        writer.append(header, &mut content.as_slice()).unwrap();
    }
    writer.finish().unwrap()
}

fn guest() -> ExtractOptions {
    ExtractOptions {
        limits: Limits::default(),
        allow_escaping_symlinks: true,
        list_paths: true,
    }
}

fn host() -> ExtractOptions {
    ExtractOptions {
        allow_escaping_symlinks: false,
        ..guest()
    }
}

/// Every path under `dir`, for "nothing else was written" checks.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            out.push(
                entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string(),
            );
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_tree_round_trips_with_modes_symlinks_and_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let stream = tar(&[
        file("src/main.rs", b"fn main() {}", 0o644),
        file("run.sh", b"#!/bin/sh\n", 0o755),
        link("latest", "src/main.rs"),
        file("deep/a/b/c.txt", b"c", 0o600),
    ]);
    let summary = extract(stream.as_slice(), &root, &guest()).unwrap();
    assert_eq!((summary.files, summary.symlinks, summary.bytes), (3, 1, 23));
    let meta = fs::metadata(root.join("run.sh")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_600_000_000, 42));
    assert_eq!(
        fs::read_link(root.join("latest")).unwrap(),
        Path::new("src/main.rs")
    );

    // The manifest lists what was written; sending it and extracting elsewhere gives the same.
    let listed = manifest(&root).unwrap();
    assert!(listed.exists);
    let paths: Vec<_> = listed.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["deep/a/b/c.txt", "latest", "run.sh", "src/main.rs"]);
    let mut sent = Vec::new();
    send(&root, None, &mut sent).unwrap();
    let copy = dir.path().join("copy");
    fs::create_dir(&copy).unwrap();
    extract(sent.as_slice(), &copy, &host()).unwrap();
    let mut copied = manifest(&copy).unwrap();
    copied.entries.iter_mut().for_each(|e| e.mtime_ns = 0);
    let mut original = listed;
    original.entries.iter_mut().for_each(|e| e.mtime_ns = 0);
    assert_eq!(copied, original);

    // A missing directory is an empty manifest, not an error.
    assert!(!manifest(&dir.path().join("absent")).unwrap().exists);
}

#[test]
fn deletions_remove_files_and_a_listed_send_marks_missing_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("keep"), b"k").unwrap();
    fs::write(root.join("gone"), b"g").unwrap();
    fs::create_dir(root.join("d")).unwrap();
    let stream = tar(&[
        (Header::deletion("gone"), Vec::new()),
        (Header::deletion("never/was"), Vec::new()),
    ]);
    let summary = extract(stream.as_slice(), root, &guest()).unwrap();
    assert_eq!(summary.deletions, ["gone"]);
    assert_eq!(listing(root), ["d", "keep"]);
    let err = extract(
        tar(&[(Header::deletion("d"), Vec::new())]).as_slice(),
        root,
        &guest(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("deletion of a directory"), "{err}");

    let mut sent = Vec::new();
    send(root, Some(vec!["keep".into(), "gone".into()]), &mut sent).unwrap();
    let mut reader = TarReader::new(sent.as_slice(), Limits::default());
    let first = reader.next_entry().unwrap().unwrap();
    assert_eq!((first.path.as_str(), first.delete), ("keep", false));
    let second = reader.next_entry().unwrap().unwrap();
    assert_eq!((second.path.as_str(), second.delete), ("gone", true));
}

#[test]
fn hostile_paths_are_refused_and_nothing_lands_outside() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    for (entries, expected) in [
        (vec![file("../outside/x", b"x", 0o644)], "'..'"),
        (vec![file("a/../../outside/x", b"x", 0o644)], "'..'"),
        (vec![file("/tmp/abs", b"x", 0o644)], "absolute"),
        (vec![file("", b"x", 0o644)], "empty path"),
        (vec![file(&"n".repeat(300), b"x", 0o644)], "over 255 bytes"),
        (vec![file(".banger-tmp.1.2", b"x", 0o644)], "temporary"),
    ] {
        let err = extract(tar(&entries).as_slice(), &root, &guest()).unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    assert!(listing(&outside).is_empty());
    assert!(listing(&root).is_empty());
}

#[test]
fn nothing_is_written_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    let outside_text = outside.display().to_string();

    // A symlink the stream makes, then a file through it.
    let stream = tar(&[link("evil", &outside_text), file("evil/x", b"x", 0o644)]);
    let err = extract(stream.as_slice(), &root, &guest()).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    // A symlink that was there already, then a file through it (and a deletion through it).
    symlink(&outside, root.join("pre")).unwrap();
    fs::write(outside.join("victim"), b"v").unwrap();
    for entries in [
        vec![file("pre/y", b"y", 0o644)],
        vec![(Header::deletion("pre/victim"), Vec::new())],
    ] {
        let err = extract(tar(&entries).as_slice(), &root, &guest()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }
    // A file over a symlink replaces the link, never writes its target.
    extract(tar(&[file("pre", b"p", 0o644)]).as_slice(), &root, &guest()).unwrap();
    assert!(fs::symlink_metadata(root.join("pre")).unwrap().is_file());
    assert_eq!(listing(&outside), ["victim"]);
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"v");
}

#[test]
fn the_host_refuses_symlinks_out_of_the_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for target in ["/etc/passwd", "../../x", "a/../../../x", "../../../../etc"] {
        let err = extract(tar(&[link("sub/l", target)]).as_slice(), root, &host()).unwrap_err();
        assert!(
            err.to_string().contains("points out of the checkout"),
            "{target}: {err}"
        );
    }
    // Inside the checkout is fine, even climbing first.
    extract(
        tar(&[link("sub/l", "../other"), link("top", "sub/./l")]).as_slice(),
        root,
        &host(),
    )
    .unwrap();
    assert_eq!(listing(root), ["sub", "sub/l", "top"]);
}

#[test]
fn a_directory_in_the_way_is_refused_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("d/inner")).unwrap();
    let err = extract(tar(&[file("d", b"x", 0o644)]).as_slice(), root, &guest()).unwrap_err();
    assert!(err.to_string().contains("directory is in the way"), "{err}");
    assert!(root.join("d/inner").is_dir());
    // No temporary file is left behind.
    assert_eq!(listing(root), ["d", "d/inner"]);
}

#[test]
fn the_tool_command_lines_parse() {
    let parse_strs = |flag: &str, rest: &[&str]| parse(flag, &mut rest.iter().map(OsString::from));
    assert_eq!(
        parse_strs("--tar-receive", &["/work/p"]),
        Ok(Tool::TarReceive {
            dir: "/work/p".into()
        })
    );
    assert_eq!(
        parse_strs("--tar-send", &["/w", "--paths-from-stdin"]),
        Ok(Tool::TarSend {
            dir: "/w".into(),
            paths_from_stdin: true
        })
    );
    assert!(parse_strs("--tree-manifest", &[]).is_err());
    assert!(parse_strs("--tree-manifest", &["rel"]).is_err());
    assert!(parse_strs("--tar-receive", &["/w", "--paths-from-stdin"]).is_err());
}
