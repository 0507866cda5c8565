//! Builds the guest agent as a static binary for the crate to embed (`src/static_agent.rs`).
//!
//! Every image bangerd pulls and every kernel bundle it makes carries the agent (the boot
//! contract in docs/ARCHITECTURE.md), and a guest's libc, if it has one at all, is not the
//! host's: the agent must be static. Embedding it in bangerd means `cargo install --path .`
//! is the whole installation — no second build step, nothing to find at run time.
//!
//! The agent package (`src/agent`) is built by a nested cargo, for the same target with
//! `+crt-static`, into a target directory of its own under `OUT_DIR` (so it never waits for
//! the outer build's lock, and is rebuilt incrementally when the agent changes).
//! `BANGER_STATIC_AGENT=/path` uses a static agent built elsewhere instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dest = out_dir.join("banger-agent-static");
    println!("cargo:rerun-if-env-changed=BANGER_STATIC_AGENT");
    let built = match env::var_os("BANGER_STATIC_AGENT").filter(|v| !v.is_empty()) {
        Some(prebuilt) => {
            println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
            PathBuf::from(prebuilt)
        }
        None => build_agent(&manifest_dir, &out_dir),
    };
    let bytes = std::fs::read(&built)
        .unwrap_or_else(|e| panic!("cannot read the static agent {}: {e}", built.display()));
    if let Some(problem) = not_static(&bytes) {
        panic!(
            "{} cannot go into guests: {problem}; banger needs a static guest agent",
            built.display()
        );
    }
    std::fs::write(&dest, &bytes)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
    println!(
        "cargo:rustc-env=BANGER_STATIC_AGENT_PATH={}",
        dest.display()
    );
}

/// Builds `banger-guest-agent` statically; returns the binary's path.
fn build_agent(manifest_dir: &Path, out_dir: &Path) -> PathBuf {
    for watched in ["src/agent", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(watched).display()
        );
    }
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let target_dir = out_dir.join("agent-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .args(["--package", "banger-agent", "--bin", "banger-guest-agent"])
        .args(["--target", &target, "--release", "--locked", "--offline"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // `--target` keeps these flags off build scripts and proc macros, which must stay
        // ordinary dynamic host programs. Debug info would make the agent ten times larger.
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        // The outer build's settings are not the agent's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PRIMARY_PACKAGE");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the static guest agent: {e}"));
    assert!(
        status.success(),
        "building the static guest agent (banger-guest-agent for {target}) failed ({status}); \
         a static glibc (libc6-dev) is needed, or set BANGER_STATIC_AGENT to a static agent"
    );
    target_dir
        .join(&target)
        .join("release")
        .join("banger-guest-agent")
}

/// Why an ELF file is not a static executable, if it is not one: a dynamically linked one
/// names its loader in a PT_INTERP program header.
fn not_static(bytes: &[u8]) -> Option<String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Some("it is not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Some("it is not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word) as usize
    };
    let (table, entry_size, entries) = (u64_at(32), u16_at(54), u16_at(56));
    for index in 0..entries {
        let at = table + index * entry_size;
        if at + 4 > bytes.len() {
            return Some("its program headers are cut short".into());
        }
        let kind = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        if kind == PT_INTERP {
            return Some("it is dynamically linked (it has an ELF interpreter)".into());
        }
    }
    None
}
