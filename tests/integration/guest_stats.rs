//! `vm.stats` and `vm.ports` through the real bangerd and CLI, with the fake firecracker: the
//! guest agent runs on the host (in the root's test network namespace), so its `--stats` and
//! `--ports` tools read this machine's `/proc` as seen from that namespace. That lets a test
//! open the listeners the tool must find, and serve HTTP and HTTPS on the VM's own address
//! (added to the namespace's loopback) for the probe to detect, all through the real paths.
//!
//! The same in a real guest is `real_guest_stats.rs`.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Command, Output};
use std::sync::Arc;

use banger::api::{PortProtocol, PortScope, VmPortsResult, VmShowResult, VmStatsResult, WebScheme};
use banger::rpc::ErrorCode;
use banger_events::Handle;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::guest::Guest;
use super::support::{TestNetwork, rpc_error};

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio stats_report_the_guest_and_what_it_costs_the_host needs(Root),
        tokio ports_merge_families_name_their_processes_and_detect_web_servers needs(Root),
        tokio stats_and_ports_of_a_vm_that_is_not_running_say_so needs(Root),
    ]
}

/// Runs `banger ARGS` on this root. On a blocking thread: the test's servers are tasks of
/// this (single-threaded) runtime, and must go on answering the probes the command causes.
async fn cli(guest: &Guest, args: &[&str]) -> Output {
    let mut command = Command::new(BANGER);
    command
        .args(args)
        .env("BANGER_ROOT", guest.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1");
    tokio::task::spawn_blocking(move || command.output().expect("run banger"))
        .await
        .expect("the CLI's thread")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "banger failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn stats_report_the_guest_and_what_it_costs_the_host() {
    let guest = Guest::start().await;
    let stats: VmStatsResult =
        serde_json::from_value(guest.call("vm.stats", json!({"name": "dev"})).await)
            .expect("a stats result");
    assert_eq!(stats.name, "dev");
    let g = &stats.guest;
    assert!(g.cpu.count >= 1, "{g:?}");
    assert!((0.0..=100.0).contains(&g.cpu.busy_percent), "{g:?}");
    assert!(g.memory.total_bytes > 0 && g.memory.used_bytes <= g.memory.total_bytes);
    assert!(g.uptime_secs > 0.0 && g.processes > 1, "{g:?}");
    assert_eq!(g.disks[0].mount, "/");
    assert!(g.disks[0].used_bytes > 0, "{g:?}");

    // The host's side: the fake firecracker's process, and the VM's two disk files at the
    // sizes the VM was created with (the image's 64 MiB root, a 64 MiB work disk).
    let shown: VmShowResult =
        serde_json::from_value(guest.call("vm.show", json!({"name": "dev"})).await).unwrap();
    let vmm = shown.vm.process.expect("a running VM has a VMM");
    let host = &stats.host;
    assert_eq!(host.vmm_pid, vmm.pid);
    assert!(
        host.vmm_rss_bytes > 0 && host.vmm_cpu_secs >= 0.0,
        "{host:?}"
    );
    let roles: Vec<&str> = host.disks.iter().map(|d| d.role.as_str()).collect();
    assert_eq!(roles, ["root", "work"]);
    for disk in &host.disks {
        assert_eq!(disk.apparent_bytes, 64 << 20, "{disk:?}");
        assert!(disk.allocated_bytes <= disk.apparent_bytes, "{disk:?}");
    }

    // The CLI: a text block for people, the same result for machines.
    let text = stdout_of(&cli(&guest, &["vm", "stats", "dev"]).await);
    for expected in ["vm:", "cpu:", "memory:", "uptime:", "vmm:", "MOUNT", "root"] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    let json: VmStatsResult = serde_json::from_str(&stdout_of(
        &cli(&guest, &["vm", "stats", "dev", "--json"]).await,
    ))
    .expect("vm stats --json is the result");
    assert_eq!(json.host.vmm_pid, vmm.pid);
}

/// The VM's address on the bridge.
fn guest_ip(shown: &VmShowResult) -> Ipv4Addr {
    shown
        .handles
        .iter()
        .find_map(|entry| match entry.handle {
            Handle::Ip { addr } => Some(Ipv4Addr::from(addr)),
            _ => None,
        })
        .expect("a VM has an address")
}

/// Binds a TCP listener in the test network (where bangerd and the fake's agent run).
fn bind_in(network: &TestNetwork, address: &str) -> TcpListener {
    let namespace = network.namespace();
    let address = address.to_owned();
    std::thread::spawn(move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the test network namespace");
        TcpListener::bind(&address).unwrap_or_else(|e| panic!("bind {address}: {e}"))
    })
    .join()
    .expect("the binding thread")
}

/// Serves `HTTP/1.0 200` on every connection.
fn serve_http(listener: TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
            });
        }
    });
}

/// Serves TLS with a fresh self-signed certificate.
#[allow(deprecated)] // ring's provider: see `registry::install_crypto_provider`.
fn serve_https(listener: TcpListener) {
    let certified = rcgen::generate_simple_self_signed(vec!["dev.vm".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut buf = [0u8; 64];
                    let _ = tls.read(&mut buf).await;
                }
            });
        }
    });
}

async fn ports_merge_families_name_their_processes_and_detect_web_servers() {
    let guest = Guest::start().await;
    let network = guest.daemon.root().network().expect("a test network");
    let shown: VmShowResult =
        serde_json::from_value(guest.call("vm.show", json!({"name": "dev"})).await).unwrap();
    let ip = guest_ip(&shown);
    // The VM's address is the fake guest's: put it on the namespace's loopback, so what
    // listens there answers bangerd's probes as a real guest would.
    network.run("ip", &["link", "set", "lo", "up"]);
    network.run("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]);

    let http = bind_in(network, &format!("{ip}:0"));
    let http_port = http.local_addr().unwrap().port();
    let https = bind_in(network, &format!("{ip}:0"));
    let https_port = https.local_addr().unwrap().port();
    // A silent listener on every address: probed, answers nothing.
    let silent = bind_in(network, "0.0.0.0:0");
    let silent_port = silent.local_addr().unwrap().port();
    // One guest-local service on both loopbacks: one row, never probed.
    let local_v4 = bind_in(network, "127.0.0.1:0");
    let local_port = local_v4.local_addr().unwrap().port();
    let local_v6 = bind_in(network, &format!("[::1]:{local_port}"));
    serve_http(http);
    serve_https(https);
    serve_http(local_v4);

    let ports: VmPortsResult =
        serde_json::from_value(guest.call("vm.ports", json!({"name": "dev"})).await)
            .expect("a ports result");
    assert_eq!(ports.guest_ip, Some(ip));
    let row = |port: u16| {
        ports
            .ports
            .iter()
            .find(|row| row.port == port && row.protocol == PortProtocol::Tcp)
            .unwrap_or_else(|| panic!("port {port} in {:#?}", ports.ports))
    };
    let me = std::process::id();
    let web = row(http_port);
    assert_eq!(web.scope, PortScope::Guest);
    assert_eq!(web.web, Some(WebScheme::Http));
    assert_eq!(
        web.url.as_deref(),
        Some(format!("http://{ip}:{http_port}/").as_str())
    );
    assert!(web.processes.iter().any(|p| p.pid == me), "{web:?}");
    let tls = row(https_port);
    assert_eq!(tls.web, Some(WebScheme::Https));
    assert_eq!(
        tls.url.as_deref(),
        Some(format!("https://{ip}:{https_port}/").as_str())
    );
    let quiet = row(silent_port);
    assert_eq!((quiet.scope, quiet.web), (PortScope::Any, None));
    let local = row(local_port);
    assert_eq!(local.scope, PortScope::GuestLocal);
    assert_eq!(
        local.addresses,
        [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        ],
        "one row for both loopbacks"
    );
    assert_eq!(local.web, None, "guest-local ports are not probed");
    assert_eq!(
        ports
            .ports
            .iter()
            .filter(|r| r.port == local_port && r.protocol == PortProtocol::Tcp)
            .count(),
        1
    );
    let sorted: Vec<u16> = ports.ports.iter().map(|r| r.port).collect();
    assert!(sorted.is_sorted(), "{sorted:?}");

    // The CLI's table has the URL; --json is the result.
    let text = stdout_of(&cli(&guest, &["vm", "ports", "dev"]).await);
    assert!(
        text.contains(&format!("http://{ip}:{http_port}/")) && text.contains("guest-local"),
        "{text}"
    );
    let json: VmPortsResult = serde_json::from_str(&stdout_of(
        &cli(&guest, &["vm", "ports", "dev", "--json"]).await,
    ))
    .expect("vm ports --json is the result");
    assert!(json.ports.iter().any(|r| r.port == https_port));
    drop((silent, local_v6));
}

async fn stats_and_ports_of_a_vm_that_is_not_running_say_so() {
    let guest = Guest::start().await;
    let mut client = guest.client().await;
    for method in ["vm.stats", "vm.ports"] {
        let error = rpc_error(
            client
                .call::<_, Value>(method, &json!({"name": "ghost"}))
                .await,
        );
        assert_eq!(error.code, ErrorCode::NotFound, "{method}: {error}");
        let error = rpc_error(
            client
                .call::<_, Value>(method, &json!({"name": "dev", "extra": 1}))
                .await,
        );
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{method}: {error}");
    }
    guest.call("vm.stop", json!({"name": "dev"})).await;
    for method in ["vm.stats", "vm.ports"] {
        let error = rpc_error(
            client
                .call::<_, Value>(method, &json!({"name": "dev"}))
                .await,
        );
        assert_eq!(error.code, ErrorCode::NotRunning, "{method}: {error}");
        assert!(error.message.contains("banger vm start dev"), "{error}");
    }
    let run = cli(&guest, &["vm", "stats", "dev"]).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[not_running]"), "{stderr}");
}
