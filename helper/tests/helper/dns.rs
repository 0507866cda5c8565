//! The DNS requests against a real helper: `bind_dns` binds port 53 on the bridge's own
//! address and nowhere else, and the sockets it passes over the unix socket work in the
//! caller (they answer traffic sent inside the helper's namespace); `route_dns` does nothing
//! outside the host's network namespace and says why.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use banger_helper::{DnsRoute, HelperError};
use serde_json::json;

use super::{Helper, frame, raw_exchange, runtime, spec};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// Runs `work` on a thread inside the helper's network namespace.
fn in_namespace<T: Send + 'static>(
    helper: &Helper,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let namespace = std::fs::File::open(format!("/proc/{}/ns/net", helper.pid()))
        .expect("open the helper's network namespace");
    std::thread::spawn(move || {
        nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the helper's network namespace");
        work()
    })
    .join()
    .expect("the thread in the namespace")
}

fn dns_sockets_are_bound_on_the_bridge_address_only_and_work_in_the_caller() {
    let helper = Helper::start_with(&[0], &["0:banger0:10.77.0.1/24", "0:banger7:10.78.0.1/24"]);
    let client = helper.client();
    let rt = runtime();

    // No bridge yet: nothing to bind on.
    let error = rt
        .block_on(client.bind_dns("banger0", GATEWAY, 53))
        .unwrap_err();
    assert!(
        matches!(&error, HelperError::Failed { message } if message.contains("does not exist")),
        "{error}"
    );
    rt.block_on(client.ensure_network(&spec("banger0", [10, 77, 0, 1], 24)))
        .expect("ensure_network");

    // An address the bridge does not carry, even inside its subnet, is refused by the host
    // check; another port by validation, on the server too (a raw frame skips the client's).
    let error = rt
        .block_on(client.bind_dns("banger0", Ipv4Addr::new(10, 77, 0, 2), 53))
        .unwrap_err();
    assert!(
        matches!(&error, HelperError::Refused { message } if message.contains("is not an address of bridge banger0") && message.contains("10.77.0.1")),
        "{error}"
    );
    for port in [54, 0, 22, 5353] {
        let request = json!({"v": 4, "request": {"op": "bind_dns", "bridge": "banger0", "address": "10.77.0.1", "port": port}});
        let answer = raw_exchange(&helper.socket, &frame(request.to_string().as_bytes()))
            .expect("an answer");
        assert_eq!(answer["kind"], "refused", "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("only the DNS port 53"),
            "{answer}"
        );
    }
    let loopback = json!({"v": 4, "request": {"op": "bind_dns", "bridge": "banger0", "address": "127.0.0.1", "port": 53}});
    let answer = raw_exchange(&helper.socket, &frame(loopback.to_string().as_bytes())).unwrap();
    assert_eq!(answer["kind"], "refused", "{answer}");
    // An interface that is not a bridge, under a bridge's name.
    helper.ns_ok(&[
        "ip", "link", "add", "banger7", "type", "veth", "peer", "name", "other7",
    ]);
    helper.ns_ok(&["ip", "addr", "add", "10.78.0.1/24", "dev", "banger7"]);
    let error = rt
        .block_on(client.bind_dns("banger7", Ipv4Addr::new(10, 78, 0, 1), 53))
        .unwrap_err();
    assert!(
        matches!(&error, HelperError::Refused { message } if message.contains("not a bridge")),
        "{error}"
    );
    assert!(
        helper
            .ns_ok(&["ss", "-lnuH", "sport = :53"])
            .trim()
            .is_empty(),
        "no refused request bound anything"
    );

    // The real thing: sockets bound on the gateway, usable here though they live in the
    // helper's namespace, and the helper keeps no copy.
    let sockets = rt
        .block_on(client.bind_dns("banger0", GATEWAY, 53))
        .expect("bind_dns");
    let at = SocketAddr::from((GATEWAY, 53));
    assert_eq!(sockets.udp.local_addr().unwrap(), at);
    assert_eq!(sockets.tcp.local_addr().unwrap(), at);
    let helper_fds = helper.ns_ok(&["ss", "-lnupH", "sport = :53"]);
    assert!(
        !helper_fds.contains(&format!("pid={},", helper.pid())),
        "the helper closed its copies: {helper_fds}"
    );

    // Traffic to an address of this host goes through loopback, down in a new namespace.
    helper.ns_ok(&["ip", "link", "set", "lo", "up"]);
    let sender = in_namespace(&helper, move || {
        let socket = UdpSocket::bind("10.77.0.1:0").expect("bind a sender");
        socket.send_to(b"query", at).expect("send to port 53");
        let mut tcp = TcpStream::connect_timeout(&at, Duration::from_secs(5)).expect("connect");
        tcp.write_all(b"over tcp").unwrap();
        socket.local_addr().unwrap()
    });
    sockets
        .udp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let (len, from) = sockets
        .udp
        .recv_from(&mut buf)
        .expect("the datagram arrives");
    assert_eq!((&buf[..len], from), (&b"query"[..], sender));
    let (mut accepted, _) = sockets.tcp.accept().expect("the connection is accepted");
    let mut text = String::new();
    accepted.read_to_string(&mut text).unwrap();
    assert_eq!(text, "over tcp");

    // While bangerd holds the port, another bind fails, naming the way to find the holder;
    // once it lets go, the port is free again.
    let error = rt
        .block_on(client.bind_dns("banger0", GATEWAY, 53))
        .unwrap_err();
    assert!(
        matches!(&error, HelperError::Failed { message } if message.contains("in use") && message.contains("ss -lnp")),
        "{error}"
    );
    drop(sockets);
    drop(accepted);
    rt.block_on(client.bind_dns("banger0", GATEWAY, 53))
        .expect("bind_dns after the first sockets closed");

    // Not in the host's namespace: resolved's links are not these, so nothing is routed (on
    // a host without systemd-resolved, that is the reason given first).
    match rt.block_on(client.route_dns("banger0", GATEWAY)).unwrap() {
        DnsRoute::Skipped { reason } => assert!(
            reason.contains("network namespace")
                || reason.contains("systemd-resolved is not running"),
            "{reason}"
        ),
        DnsRoute::Routed => panic!("routed from a test namespace"),
    }
    let error = rt
        .block_on(client.route_dns("banger0", Ipv4Addr::new(10, 77, 0, 9)))
        .unwrap_err();
    assert!(matches!(error, HelperError::Refused { .. }), "{error}");
    assert!(helper.log_text().contains("bind_dns"), "the helper logs it");
}

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync dns_sockets_are_bound_on_the_bridge_address_only_and_work_in_the_caller needs(Root),
    ]
}
