//! The real helper refuses every request that is not exactly a request of its protocol: an
//! unknown field in any request kind (or in the frame, or in the network spec), a positional
//! array, another protocol version, an oversized frame. Each is sent at a moment when the
//! well-formed request *would* change the host, and the host is checked unchanged after the
//! refusal; the well-formed request is then sent and must work, so a refusal can only be due to
//! what was added.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Helper, assert_closed, frame, raw_exchange, read_raw_response};

const MAX_FRAME_BYTES: usize = banger_helper::protocol::MAX_FRAME_BYTES;

/// What the host looks like, as far as these requests can change it.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    links: Vec<String>,
    nft_table: bool,
}

fn host_state(helper: &Helper) -> HostState {
    let mut links = helper.link_names();
    links.sort();
    HostState {
        links,
        nft_table: helper.nft_table().is_some(),
    }
}

fn send(helper: &Helper, body: &Value) -> Value {
    raw_exchange(&helper.socket, &frame(body.to_string().as_bytes()))
        .unwrap_or_else(|| panic!("no answer to {body}"))
}

/// Sends `body` on a connection of its own and expects a `protocol` refusal whose message
/// contains `expected`, the connection closed after it, and the host unchanged.
fn assert_refused(helper: &Helper, body: &[u8], expected: &str) {
    assert_refused_then(helper, body, expected, Then::Closes);
}

/// What becomes of the connection after a refusal.
#[derive(PartialEq)]
enum Then {
    /// An undecodable frame: the stream can no longer be trusted to be at a frame boundary.
    Closes,
    /// A well-formed request of another version: the connection may carry on.
    StaysOpen,
}

fn assert_refused_then(helper: &Helper, body: &[u8], expected: &str, then: Then) {
    let before = host_state(helper);
    let mut stream = StdUnixStream::connect(&helper.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The helper may close before it has read everything (oversized frames).
    let _ = std::io::Write::write_all(&mut stream, body);
    let shown = String::from_utf8_lossy(&body[4..body.len().min(200)]).into_owned();
    let answer = read_raw_response(&mut stream).unwrap_or_else(|| panic!("no answer to {shown}"));
    assert_eq!(answer["result"], "error", "{shown}: {answer}");
    assert_eq!(answer["kind"], "protocol", "{shown}: {answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(message.contains(expected), "{shown}: {message}");
    if then == Then::Closes {
        assert_closed(&mut stream);
    } else {
        let version = frame(br#"{"v":4,"request":{"op":"version"}}"#);
        std::io::Write::write_all(&mut stream, &version).unwrap();
        let answer = read_raw_response(&mut stream).expect("the connection still serves");
        assert_eq!(answer["version"], 4, "{answer}");
    }
    assert_eq!(host_state(helper), before, "{shown} changed the host");
}

/// `request` with `name: value` added.
fn with(request: &Value, name: &str, value: Value) -> Value {
    let mut request = request.clone();
    request
        .as_object_mut()
        .unwrap()
        .insert(name.to_owned(), value);
    request
}

/// Refuses `request` (a valid request of the current protocol) in every wrong shape: an
/// unknown field inside it, in the frame around it, a field of another kind, as a positional
/// array, with another protocol version, and padded past the frame limit.
fn assert_every_distortion_refused(helper: &Helper, request: &Value) {
    let op = request["op"].as_str().unwrap();
    for stranger in ["x", "uid", "argv", "tap", "bridge", "spec", "port"] {
        if request.get(stranger).is_some() {
            continue;
        }
        let body = json!({"v": 4, "request": with(request, stranger, json!("bt2"))});
        assert_refused(
            helper,
            &frame(body.to_string().as_bytes()),
            &format!("unknown field `{stranger}`"),
        );
    }
    let body = json!({"v": 4, "request": request, "uid": 0});
    assert_refused(
        helper,
        &frame(body.to_string().as_bytes()),
        "unknown field `uid`",
    );
    // The same request by position: `["delete_tap","bt1"]`.
    let mut positional = vec![json!(op)];
    positional.extend(
        request
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "op")
            .map(|(_, v)| v.clone()),
    );
    let body = json!({"v": 4, "request": positional});
    assert_refused(
        helper,
        &frame(body.to_string().as_bytes()),
        "expected a JSON object",
    );
    if op != "version" {
        let body = json!({"v": 5, "request": request});
        assert_refused_then(
            helper,
            &frame(body.to_string().as_bytes()),
            "the request uses version 5",
            // A launch's frame is followed by a descriptor in this version; after another
            // version's, the stream is at no known boundary.
            if op == "launch_firecracker" {
                Then::Closes
            } else {
                Then::StaysOpen
            },
        );
        // Another version's request with an unknown field: refused either way, never run.
        let body = json!({"v": 5, "request": with(request, "x", json!(1))});
        assert_refused(
            helper,
            &frame(body.to_string().as_bytes()),
            "unknown field `x`",
        );
    }
    // A valid request padded with whitespace to one byte over the limit: refused on the
    // length prefix alone, whatever the body.
    let mut padded = json!({"v": 4, "request": request}).to_string().into_bytes();
    padded.resize(MAX_FRAME_BYTES + 1, b' ');
    assert_refused(helper, &frame(&padded), "larger than");
}

/// Sends the valid `request`, padded to exactly the frame limit (the largest frame the helper
/// reads), and returns the answer.
fn send_at_the_limit(helper: &Helper, request: &Value) -> Value {
    let mut padded = json!({"v": 4, "request": request}).to_string().into_bytes();
    padded.resize(MAX_FRAME_BYTES, b' ');
    raw_exchange(&helper.socket, &frame(&padded))
        .unwrap_or_else(|| panic!("no answer to {request} at the limit"))
}

fn every_request_kind_refuses_unknown_fields_and_changes_nothing() {
    let helper = Helper::start_with(&[0], &["0:banger0:10.77.0.1/24"]);
    let done = json!({"result": "done"});

    let version = json!({"op": "version"});
    assert_every_distortion_refused(&helper, &version);
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": version})),
        json!({"result": "version", "version": 4})
    );

    let spec = json!({"bridge": "banger0", "gateway": "10.77.0.1", "prefix_len": 24});
    let ensure_network = json!({"op": "ensure_network", "spec": spec});
    assert_every_distortion_refused(&helper, &ensure_network);
    // And inside the network spec.
    let body = json!({"v": 4, "request": {"op": "ensure_network", "spec": with(&spec, "nat", json!(false))}});
    assert_refused(
        &helper,
        &frame(body.to_string().as_bytes()),
        "unknown field `nat`",
    );
    assert!(
        helper.link("banger0").is_none() && helper.nft_table().is_none(),
        "nothing was made"
    );
    assert_eq!(send_at_the_limit(&helper, &ensure_network), done);
    assert!(helper.link("banger0").is_some() && helper.nft_table().is_some());

    let ensure_tap = json!({"op": "ensure_tap", "tap": "bt1", "bridge": "banger0"});
    assert_every_distortion_refused(&helper, &ensure_tap);
    assert!(helper.link("bt1").is_none(), "no tap was made");
    assert_eq!(send(&helper, &json!({"v": 4, "request": ensure_tap})), done);
    assert!(helper.link("bt1").is_some());

    let networks = json!({"op": "networks"});
    assert_every_distortion_refused(&helper, &networks);
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": networks})),
        json!({"result": "networks", "networks": [{"spec": spec, "bridge": true, "nat": true}]})
    );

    let list_taps = json!({"op": "list_taps"});
    assert_every_distortion_refused(&helper, &list_taps);
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": list_taps})),
        json!({"result": "taps", "taps": ["bt1"]})
    );

    // The DNS requests act only on the bridge's own address. Their sockets follow the frame
    // and close with this connection.
    let bind_dns =
        json!({"op": "bind_dns", "bridge": "banger0", "address": "10.77.0.1", "port": 53});
    assert_every_distortion_refused(&helper, &bind_dns);
    assert!(
        helper
            .ns_ok(&["ss", "-lnuH", "sport = :53"])
            .trim()
            .is_empty(),
        "nothing listens on port 53"
    );
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": bind_dns})),
        json!({"result": "dns_sockets"})
    );
    let route_dns = json!({"op": "route_dns", "bridge": "banger0", "address": "10.77.0.1"});
    assert_every_distortion_refused(&helper, &route_dns);
    let routed = send(&helper, &json!({"v": 4, "request": route_dns}));
    assert_eq!(routed["result"], "skipped", "{routed}");

    // Its answer is a frame and the tap's descriptor, which closes with this connection.
    let open_tap = json!({"op": "open_tap", "tap": "bt1"});
    assert_every_distortion_refused(&helper, &open_tap);
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": open_tap})),
        json!({"result": "tap_fd"})
    );

    // Its answer is a frame and /dev/kvm's descriptor (where the host has KVM).
    let open_kvm = json!({"op": "open_kvm"});
    assert_every_distortion_refused(&helper, &open_kvm);
    let expected = if std::path::Path::new("/dev/kvm").exists() {
        json!({"result": "kvm_fd"})
    } else {
        json!({"result": "error", "kind": "failed",
               "message": "Opening /dev/kvm failed: No such file or directory (os error 2)."})
    };
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": open_kvm})),
        expected
    );

    // The jail requests: this helper has no --jailer, so the well-formed ones are refused
    // saying so (a real launch, whose frame a descriptor follows, is the jailed tests').
    let jail = json!({"op": "jail"});
    assert_every_distortion_refused(&helper, &jail);
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": jail})),
        json!({"result": "jail", "jail": null})
    );
    let launch = json!({"op": "launch_firecracker", "vm": "0123456789abcdef"});
    assert_every_distortion_refused(&helper, &launch);
    for request in [
        json!({"op": "kill_vmm", "vm": "0123456789abcdef", "pid": 1, "start_time_ticks": 1}),
        json!({"op": "remove_jail", "vm": "0123456789abcdef"}),
    ] {
        assert_every_distortion_refused(&helper, &request);
        let answer = send(&helper, &json!({"v": 4, "request": request}));
        assert_eq!(answer["kind"], "refused", "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("launches no Firecracker"),
            "{answer}"
        );
    }

    let delete_tap = json!({"op": "delete_tap", "tap": "bt1"});
    assert_every_distortion_refused(&helper, &delete_tap);
    assert!(helper.link("bt1").is_some(), "the tap is still there");
    assert_eq!(send(&helper, &json!({"v": 4, "request": delete_tap})), done);
    assert!(helper.link("bt1").is_none());

    let remove_network = json!({"op": "remove_network", "bridge": "banger0"});
    assert_every_distortion_refused(&helper, &remove_network);
    assert!(
        helper.link("banger0").is_some() && helper.nft_table().is_some(),
        "the network is still there"
    );
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": remove_network})),
        done
    );
    assert!(helper.link("banger0").is_none() && helper.nft_table().is_none());

    // Dozens of refusals later, the helper still serves.
    assert_eq!(
        send(&helper, &json!({"v": 4, "request": {"op": "version"}})),
        json!({"result": "version", "version": 4})
    );
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync every_request_kind_refuses_unknown_fields_and_changes_nothing needs(Root),
    ]
}
