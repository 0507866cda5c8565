//! How the guest agent is built: lean (none of the daemon's dependencies) and, by
//! `tools/build-agent.sh`, static.
//!
//! `static_build` builds a release binary for an explicit target, which takes minutes, so it
//! is ignored by default; CI runs it explicitly:
//! `cargo nextest run -p banger-agent --run-ignored only -E 'test(static_build)'`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use banger_agent::AgentClient;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The repository's root (this package lives in `src/agent`).
fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("src/agent has two ancestors")
        .to_path_buf()
}

/// Crates of banger's daemon (or banger itself) that must never be compiled into a guest.
const DAEMON_ONLY_CRATES: &[&str] = &[
    "banger",
    "banger-events",
    "banger-helper",
    "banger-projections",
    "redb",
    "rtnetlink",
    "netlink-packet-route",
    "clap",
    "toml",
    "sha2",
    // What tracing-subscriber's EnvFilter brings; the agent filters with `Targets`.
    "regex-automata",
    "matchers",
];

/// tokio features bangerd uses and the agent does not.
const DAEMON_ONLY_TOKIO_FEATURES: &[&str] = &["fs", "time"];

/// `cargo tree` of this package's normal dependencies, as `(name, features)`, resolved as its
/// own build resolves them (so the workspace's other members do not add features).
fn dependency_tree() -> Vec<(String, Vec<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--locked",
            "--package",
            "banger-agent",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p} [{f}]",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?.to_owned();
            let features = line
                .rsplit_once('[')
                .and_then(|(_, rest)| rest.strip_suffix(']').or(rest.strip_suffix("] (*)")))
                .unwrap_or_default()
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect();
            Some((name, features))
        })
        .collect()
}

#[test]
fn dependencies_stay_lean() {
    let tree = dependency_tree();
    let names: Vec<&str> = tree.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"banger-agent"), "{names:?}");
    // Guards against a parse that finds nothing, which would pass everything below.
    assert!(
        names.contains(&"tokio") && names.contains(&"serde"),
        "{names:?}"
    );
    for forbidden in DAEMON_ONLY_CRATES {
        assert!(
            !names.contains(forbidden),
            "the guest agent depends on {forbidden}: {names:?}"
        );
    }
    for (_, features) in tree.iter().filter(|(name, _)| name == "tokio") {
        assert!(features.iter().any(|f| f == "process"), "{features:?}");
        for forbidden in DAEMON_ONLY_TOKIO_FEATURES {
            assert!(
                !features.iter().any(|f| f == forbidden),
                "the guest agent compiles tokio's {forbidden:?} feature: {features:?}"
            );
        }
    }
}

/// Whether the ELF file `bytes` has a PT_INTERP program header, i.e. names a dynamic loader.
/// Panics when `bytes` is not a 64-bit little-endian ELF file (what x86_64 Linux runs).
fn has_interpreter(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    assert!(
        bytes.len() >= 64 && &bytes[..4] == b"\x7fELF",
        "not an ELF file"
    );
    assert_eq!(bytes[4], 2, "not a 64-bit ELF file");
    assert_eq!(bytes[5], 1, "not a little-endian ELF file");
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let phoff = usize::try_from(u64_at(0x20)).unwrap();
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    assert!(phnum > 0, "no program headers: not an executable");
    assert!(
        phoff + phentsize * phnum <= bytes.len(),
        "program headers past the end of the file"
    );
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP)
}

#[test]
fn the_interpreter_check_sees_a_dynamic_binary() {
    // This test binary is linked dynamically, like everything cargo builds by default: the
    // check must say so, or static_build's verdict would mean nothing.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(has_interpreter(&me));
}

#[test]
#[ignore = "builds a release binary for an explicit target (minutes); CI runs it with --run-ignored"]
fn static_build() {
    let script = repository_root().join("tools/build-agent.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .expect("run tools/build-agent.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "build-agent.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints the binary's path")
            .trim(),
    );
    assert_eq!(
        binary.file_name().and_then(|n| n.to_str()),
        Some("banger-guest-agent")
    );
    let bytes = std::fs::read(&binary).expect("read the static agent");
    assert!(
        !has_interpreter(&bytes),
        "{} has an ELF interpreter: it is not static",
        binary.display()
    );

    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("run the static agent");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("banger-agent {}\n", banger_agent::AGENT_VERSION)
    );

    // It does not only start: it serves, as it would in a guest.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(serves_a_health_request(&binary));
}

async fn serves_a_health_request(binary: &Path) {
    const DEADLINE: Duration = Duration::from_secs(30);
    let dir = tempfile::Builder::new()
        .prefix("banger-agent-static-")
        .tempdir_in("/tmp")
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let mut child = tokio::process::Command::new(binary)
        .arg(format!("--listen=unix:{}", socket.display()))
        .arg("--cid=7")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the static agent");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    tokio::time::timeout(DEADLINE, stdout.read_line(&mut line))
        .await
        .expect("the agent says it is ready in time")
        .unwrap();
    assert_eq!(
        line,
        format!("banger-agent ready on unix:{}\n", socket.display())
    );
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut client = tokio::time::timeout(DEADLINE, AgentClient::handshake(stream, "static_build"))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let health = tokio::time::timeout(DEADLINE, client.health())
        .await
        .expect("health in time")
        .expect("health");
    assert_eq!(health.cid, Some(7));
    assert_eq!(health.agent_version, banger_agent::AGENT_VERSION);
}
