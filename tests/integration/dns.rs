//! `NAME.vm` through the real bangerd: it serves DNS on the bridge's address in the test's
//! network namespace (made by the real banger-helper), gives its guests that address as
//! their name server, answers a VM's name with its address for as long as the VM exists, and
//! NXDOMAIN after a delete; it serves again as soon as it restarts; and when port 53 is taken
//! it says so and boots guests with the host's resolvers instead.
//!
//! Queries are real DNS packets sent from a thread inside the namespace, over UDP and TCP.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use banger::api::{DnsRouting, DnsStatusResult, VmCreateResult, VmResult};
use banger_events::Handle;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{Value, json};

use super::network::{lab, network, restart};
use super::support::{Bangerd, TestNetwork};

const BRIDGE_DNS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    Ipv4Addr::new(172, 30, 0, 1),
    53,
));

/// Runs `work` on a thread inside the test network namespace.
fn in_namespace<T: Send + 'static>(
    net: &TestNetwork,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let namespace = net.namespace();
    std::thread::spawn(move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the test network namespace");
        work()
    })
    .join()
    .expect("the thread in the namespace")
}

fn query(name: &str, record_type: RecordType) -> Vec<u8> {
    let mut message = Message::new(0x4242, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message.to_vec().unwrap()
}

/// Asks the bridge's address over UDP, from inside the namespace.
fn ask_udp(net: &TestNetwork, name: &str, record_type: RecordType) -> Message {
    let packet = query(name, record_type);
    let reply = in_namespace(net, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket.send_to(&packet, BRIDGE_DNS).expect("send the query");
        let mut buf = vec![0u8; 4096];
        let (len, from) = socket
            .recv_from(&mut buf)
            .expect("an answer from the bridge");
        assert_eq!(from, BRIDGE_DNS);
        buf.truncate(len);
        buf
    });
    Message::from_vec(&reply).expect("the answer decodes")
}

/// Asks over TCP.
fn ask_tcp(net: &TestNetwork, name: &str, record_type: RecordType) -> Message {
    let packet = query(name, record_type);
    let reply = in_namespace(net, move || {
        let mut stream =
            TcpStream::connect_timeout(&BRIDGE_DNS, Duration::from_secs(10)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&packet);
        stream.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).expect("an answer over TCP");
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).unwrap();
        reply
    });
    Message::from_vec(&reply).expect("the answer decodes")
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

async fn ip_of(daemon: &Bangerd, name: &str) -> Ipv4Addr {
    let shown: banger::api::VmShowResult = daemon
        .client()
        .await
        .call("vm.show", &json!({"name": name}))
        .await
        .expect("vm.show");
    shown
        .handles
        .iter()
        .find_map(|entry| match entry.handle {
            Handle::Ip { addr } => Some(Ipv4Addr::from(addr)),
            _ => None,
        })
        .expect("the VM holds an address")
}

async fn dns_status(daemon: &Bangerd) -> DnsStatusResult {
    daemon
        .client()
        .await
        .call("dns.status", &json!({}))
        .await
        .expect("dns.status")
}

async fn call(daemon: &Bangerd, method: &str, name: &str) {
    let _: Value = daemon
        .client()
        .await
        .call(method, &json!({"name": name}))
        .await
        .unwrap_or_else(|e| panic!("{method} {name}: {e}\n{}", daemon.output()));
}

async fn create(daemon: &Bangerd, name: &str) -> VmCreateResult {
    daemon
        .client()
        .await
        .call("vm.create", &json!({"name": name, "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create {name}: {e}\n{}", daemon.output()))
}

fn console(daemon: &Bangerd, vm: &VmCreateResult) -> String {
    std::fs::read_to_string(daemon.layout().vm_console_log(vm.vm_id)).unwrap_or_default()
}

async fn vm_names_resolve_on_the_bridge_while_the_vm_exists_and_not_after_delete() {
    let mut daemon = lab(&[]).await;
    let net = network(&daemon);
    // Traffic to the host's own addresses goes through loopback, down in a new namespace.
    net.run("ip", &["link", "set", "lo", "up"]);
    let before = dns_status(&daemon).await;
    assert!(!before.serving && before.error.is_none(), "{before:?}");

    let created: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create: {e}\n{}", daemon.output()));
    let dev = ip_of(&daemon, "dev").await;
    // The guest was told to ask the bridge.
    let console_text = console(&daemon, &created);
    assert!(
        console_text.contains("banger.dns=172.30.0.1 "),
        "{console_text}"
    );

    let status = dns_status(&daemon).await;
    assert!(status.serving, "{status:?}\n{}", daemon.output());
    assert_eq!(status.address, "172.30.0.1");
    assert_eq!(
        status.bound_by.as_deref(),
        Some("bangerd"),
        "root binds itself"
    );
    // The helper runs in the test's namespace, where systemd-resolved's links are not.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let routing = loop {
        if let Some(routing) = dns_status(&daemon).await.host_routing {
            break routing;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "routing never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // (Where systemd-resolved does not run, that is the reason given first.)
    assert!(
        matches!(&routing, DnsRouting::Skipped { reason }
            if reason.contains("namespace") || reason.contains("systemd-resolved is not running")),
        "{routing:?}"
    );

    for name in ["dev.vm.", "DEV.vm", "dev.VM."] {
        let reply = ask_udp(net, name, RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert_eq!(addresses(&reply), [dev], "{name}");
    }
    assert_eq!(addresses(&ask_tcp(net, "dev.vm.", RecordType::A)), [dev]);
    let aaaa = ask_udp(net, "dev.vm.", RecordType::AAAA);
    assert_eq!(
        (aaaa.metadata.response_code, aaaa.answers.len()),
        (ResponseCode::NoError, 0)
    );
    let unknown = ask_udp(net, "nope.vm.", RecordType::A);
    assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain);

    // Stopped, the VM keeps its address, and its name keeps answering it.
    let _: VmResult = daemon
        .client()
        .await
        .call("vm.stop", &json!({"name": "dev"}))
        .await
        .expect("vm.stop");
    assert_eq!(addresses(&ask_udp(net, "dev.vm.", RecordType::A)), [dev]);

    // A second VM, then bangerd killed and started again: it serves at once, before any
    // VM boots (guests booted earlier point at it).
    create(&daemon, "two").await;
    let two = ip_of(&daemon, "two").await;
    restart(&mut daemon, &[]);
    let net = network(&daemon);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !dns_status(&daemon).await.serving {
        assert!(
            std::time::Instant::now() < deadline,
            "not serving after a restart\n{}",
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(addresses(&ask_udp(net, "two.vm.", RecordType::A)), [two]);
    assert_eq!(addresses(&ask_tcp(net, "dev.vm.", RecordType::A)), [dev]);

    // Deleted: NXDOMAIN, over both transports.
    call(&daemon, "vm.delete", "dev").await;
    let gone = ask_udp(net, "dev.vm.", RecordType::A);
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
    assert!(gone.answers.is_empty());
    let gone = ask_tcp(net, "dev.vm.", RecordType::A);
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(addresses(&ask_udp(net, "two.vm.", RecordType::A)), [two]);
    call(&daemon, "vm.delete", "two").await;
}

async fn with_port_53_taken_guests_get_the_host_resolvers_and_the_reason_is_reported() {
    let daemon = lab(&[]).await;
    let net = network(&daemon);
    // Someone else's DNS server on every address of the namespace, as dnsmasq would be.
    let squatter = in_namespace(net, || UdpSocket::bind("0.0.0.0:53").expect("take port 53"));

    let created: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create despite port 53: {e}\n{}", daemon.output()));
    let status = dns_status(&daemon).await;
    assert!(!status.serving, "{status:?}");
    let error = status.error.expect("the reason is kept");
    assert!(
        error.contains("172.30.0.1:53") && error.contains("ss -lnp"),
        "{error}"
    );
    assert!(
        daemon.output().contains("cannot serve on the bridge"),
        "{}",
        daemon.output()
    );
    // The guest got the host's resolvers, as before bangerd answered DNS.
    let host_servers: Vec<String> =
        banger::host::network::host_name_servers(&Ipv4Addr::new(172, 30, 0, 1))
            .iter()
            .map(Ipv4Addr::to_string)
            .collect();
    let console_text = console(&daemon, &created);
    assert!(
        console_text.contains(&format!("banger.dns={} ", host_servers.join(","))),
        "{console_text}"
    );

    // Once the port is free, the next boot starts the server.
    drop(squatter);
    create(&daemon, "two").await;
    assert!(dns_status(&daemon).await.serving);
    call(&daemon, "vm.delete", "dev").await;
    call(&daemon, "vm.delete", "two").await;
}

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio vm_names_resolve_on_the_bridge_while_the_vm_exists_and_not_after_delete needs(Root),
        tokio with_port_53_taken_guests_get_the_host_resolvers_and_the_reason_is_reported needs(Root),
    ]
}
