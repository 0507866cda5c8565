//! The host side of workspaces on real git checkouts and directories.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

#[test]
fn the_selection_is_tracked_and_untracked_files_not_ignored_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    fs::write(root.join(".gitignore"), "*.log\n").unwrap();
    fs::write(root.join("tracked"), "t").unwrap();
    fs::write(root.join("gone"), "g").unwrap();
    fs::write(root.join("tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("tracked", root.join("link")).unwrap();
    git(root, &["add", "-A"]);
    git(root, &["commit", "-qm", "x"]);
    fs::remove_file(root.join("gone")).unwrap();
    fs::write(root.join("x.log"), "ignored").unwrap();
    fs::write(root.join("untracked"), "u").unwrap();
    fs::create_dir(root.join(".banger-export-1")).unwrap();
    fs::write(root.join(".banger-export-1/plan.json"), "{}").unwrap();

    let sub = root.join("sub");
    fs::create_dir(&sub).unwrap();
    assert_eq!(checkout_root(&sub).unwrap(), root.canonicalize().unwrap());
    let scan = scan(root, None).unwrap();
    let paths: Vec<&str> = scan.entries.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [".gitignore", "link", "tool", "tracked", "untracked"]
    );
    assert_eq!(scan.entries["tool"].mode, 0o755);
    assert_eq!(scan.entries["link"].kind, EntryKind::Symlink);
    assert_eq!(scan.commit.len(), 40);
    assert!(scan.hashed_bytes > 0);

    // With the scan as a base, nothing is hashed again and the tree hash is the same; a
    // changed file is hashed (and changes the hash).
    let base = BaseManifest::new(root, "/work/x", scan.entries.values().cloned().collect());
    let again = super::scan(root, Some(&base)).unwrap();
    assert_eq!(
        (again.hashed_bytes, again.tree_hash()),
        (0, scan.tree_hash())
    );
    fs::write(root.join("tracked"), "changed").unwrap();
    let changed = super::scan(root, Some(&base)).unwrap();
    assert_eq!(changed.hashed_bytes, 7);
    assert_ne!(changed.tree_hash(), scan.tree_hash());

    let err = checkout_root(&std::env::temp_dir().join("surely-not-a-checkout-xyz"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not inside a git checkout"), "{err}");
}

/// Every path under `dir` with its content (symlinks as their target).
fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                out.push((
                    name,
                    format!("-> {}", fs::read_link(&path).unwrap().display()),
                ));
            } else {
                out.push((name, fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn apply_and_unapply_are_idempotent_and_put_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkout");
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(root.join("src/a.txt"), "host a").unwrap();
    fs::write(root.join("deleted.txt"), "host d").unwrap();
    fs::write(root.join("kept.txt"), "kept").unwrap();
    let before = contents(&root);

    let staging = staging_dir(&root, "op1");
    assert!(is_staging_dir(&staging));
    fs::create_dir_all(staging.join("new/src/deep")).unwrap();
    fs::write(staging.join("new/src/a.txt"), "guest a").unwrap();
    fs::write(staging.join("new/src/deep/new.txt"), "guest new").unwrap();
    write_plan(
        &staging,
        &ExportPlan {
            writes: vec!["src/a.txt".into(), "src/deep/new.txt".into()],
            deletes: vec!["deleted.txt".into()],
        },
    )
    .unwrap();
    let outside = |c: Vec<(String, String)>| -> Vec<(String, String)> {
        c.into_iter()
            .filter(|(p, _)| !p.starts_with(".banger-export-"))
            .collect()
    };

    assert_eq!(apply_export(&root, &staging).unwrap(), 3);
    let applied = outside(contents(&root));
    assert_eq!(
        applied,
        [
            ("kept.txt".to_owned(), "kept".to_owned()),
            ("src/a.txt".to_owned(), "guest a".to_owned()),
            ("src/deep/new.txt".to_owned(), "guest new".to_owned()),
        ]
    );
    // A second apply (a crash recovery re-running it) changes nothing.
    assert_eq!(apply_export(&root, &staging).unwrap(), 0);
    assert_eq!(outside(contents(&root)), applied);

    unapply_export(&staging).unwrap();
    unapply_export(&staging).unwrap();
    assert_eq!(outside(contents(&root)), before);
    fs::remove_dir_all(&staging).unwrap();
    // Undoing what never happened (no staging at all) is fine too.
    unapply_export(&staging).unwrap();
    assert_eq!(contents(&root), before);
}

#[test]
fn apply_never_writes_through_a_symlink_in_the_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("checkout");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, root.join("lib")).unwrap();
    let staging = staging_dir(&root, "op2");
    fs::create_dir_all(staging.join("new/lib")).unwrap();
    fs::write(staging.join("new/lib/x"), "x").unwrap();
    write_plan(
        &staging,
        &ExportPlan {
            writes: vec!["lib/x".into()],
            deletes: vec![],
        },
    )
    .unwrap();
    let err = apply_export(&root, &staging).unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}
