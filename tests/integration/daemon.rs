//! bangerd over its socket: the protocol's edges, the read views, the first write operations,
//! events.follow, and what survives a SIGKILL or a crash in the middle of an operation.
//!
//! Every test starts its own real bangerd on its own temporary root (see `support`).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::Path;

use banger::api::{
    EventsEnd, EventsParams, ImageListResult, ImageView, KernelListResult, KernelView,
    OperationsListResult, PingResult,
};
use banger::rpc::{ClientError, ErrorCode, MAX_REQUEST_BYTES, StreamEvent};
use banger_events::{Envelope, Event, OpId, RecoveryDecision, Seq, Target};
use banger_projections::OpStatus;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::*;

async fn ping(daemon: &Bangerd) -> PingResult {
    daemon
        .client()
        .await
        .call("daemon.ping", &json!({}))
        .await
        .expect("ping")
}

async fn import(daemon: &Bangerd, name: &str, from: &Path) -> Result<KernelView, ClientError> {
    daemon
        .client()
        .await
        .call(
            "kernel.import",
            &json!({"name": name, "from": from.display().to_string()}),
        )
        .await
}

async fn operations(daemon: &Bangerd, all: bool) -> Vec<banger::api::OperationView> {
    let result: OperationsListResult = daemon
        .client()
        .await
        .call("daemon.operations.list", &json!({ "all": all }))
        .await
        .expect("operations list");
    result.operations
}

fn op_id_of(response: &banger::rpc::Response) -> OpId {
    response
        .op_id
        .as_deref()
        .expect("the response carries an op id")
        .parse()
        .expect("the op id parses")
}

// ---- the protocol -----------------------------------------------------------------------------

async fn ping_reports_pid_version_and_a_writable_log() {
    let daemon = Bangerd::start();
    let ping = ping(&daemon).await;
    assert_eq!(ping.pid, daemon.pid());
    assert_eq!(ping.protocol, 1);
    assert_eq!(ping.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(ping.log_health, "writable");
    assert_eq!(
        ping.state_dir,
        daemon.layout().state_dir.display().to_string()
    );
    assert!(ping.last_seq >= Seq(1), "DaemonStarted was recorded");

    // The socket is private: 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&daemon.socket()), 0o600);
    assert_eq!(mode(&daemon.layout().runtime_dir), 0o700);

    let events = all_events(&daemon.socket()).await;
    match &events[0].event {
        Event::DaemonStarted(started) => {
            assert_eq!(started.pid, daemon.pid());
            assert!(!started.boot_id.is_empty());
        }
        other => panic!("first event is {other:?}"),
    }
}

async fn every_request_gets_its_own_op_id() {
    let daemon = Bangerd::start();
    let mut raw = daemon.raw().await;
    let first = raw.call(1, "daemon.ping", json!({})).await;
    let second = raw.call(2, "kernel.list", Value::Null).await;
    assert_eq!((first.id, second.id), (1, 2));
    assert!(first.result.is_some() && second.result.is_some());
    assert_ne!(op_id_of(&first), op_id_of(&second));
    let error = raw.call(3, "kernel.show", json!({"name": "none"})).await;
    op_id_of(&error);
    assert_eq!(error.error.unwrap().code, ErrorCode::NotFound);
}

async fn malformed_requests_get_invalid_argument_and_the_connection_goes_on() {
    let daemon = Bangerd::start();
    let mut raw = daemon.raw().await;

    raw.send_raw(b"{this is not json\n").await;
    let response = raw.recv().await.unwrap();
    let error = response.error.unwrap();
    assert_eq!((response.id, error.code), (0, ErrorCode::InvalidArgument));
    assert!(
        error.message.contains("malformed request"),
        "{}",
        error.message
    );

    // JSON, but not a request: the id is still echoed.
    raw.send_raw(b"{\"v\":1,\"id\":5}\n").await;
    let response = raw.recv().await.unwrap();
    assert_eq!(response.id, 5);
    assert!(response.error.unwrap().message.contains("method"));

    // Another protocol version.
    raw.send_raw(b"{\"v\":2,\"id\":6,\"method\":\"daemon.ping\"}\n")
        .await;
    let response = raw.recv().await.unwrap();
    let error = response.error.unwrap();
    assert_eq!((response.id, error.code), (6, ErrorCode::InvalidArgument));
    assert!(
        error.message.contains("protocol version 2"),
        "{}",
        error.message
    );

    // Bad parameters name the method.
    let response = raw.call(7, "kernel.show", json!({"nom": "x"})).await;
    let error = response.error.unwrap();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(error.message.contains("kernel.show"), "{}", error.message);

    // The same connection still works.
    let response = raw.call(8, "daemon.ping", json!({})).await;
    assert!(response.result.is_some(), "{response:?}");
}

async fn unknown_method_says_which_methods_exist() {
    let daemon = Bangerd::start();
    let error = rpc_error(
        daemon
            .client()
            .await
            .call::<_, Value>("vm.frobnicate", &json!({}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(
        error.message.contains("unknown method \"vm.frobnicate\""),
        "{}",
        error.message
    );
    assert!(error.message.contains("daemon.ping") && error.message.contains("events.follow"));
}

async fn a_request_over_one_mebibyte_is_refused_and_the_daemon_keeps_serving() {
    let daemon = Bangerd::start();
    let mut raw = daemon.raw().await;
    let mut huge = br#"{"v":1,"id":1,"method":"daemon.ping","params":{"pad":""#.to_vec();
    huge.resize(MAX_REQUEST_BYTES + 4096, b'x');
    huge.extend_from_slice(b"\"}}\n");
    // Written from another task: the daemon answers before it has read everything.
    let mut writer = raw.writer;
    let write = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = writer.write_all(&huge).await;
        writer
    });
    raw.writer = write.await.unwrap();
    let response = raw.recv().await.expect("an answer before the close");
    let error = response.error.unwrap();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(
        error.message.contains("request larger than 1 MiB"),
        "{}",
        error.message
    );
    assert!(
        raw.recv().await.is_none(),
        "the connection is closed after the refusal"
    );

    assert_eq!(ping(&daemon).await.pid, daemon.pid());
}

async fn fifty_concurrent_clients_all_get_their_answers() {
    let daemon = Bangerd::start();
    let source = kernel_source(&daemon.root().scratch("k"), "6.1.0-test", false);
    let socket = daemon.socket();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let socket = socket.clone();
        let source = source.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = banger::rpc::Client::connect(&socket).await.unwrap();
            let _: PingResult = client.call("daemon.ping", &json!({})).await.unwrap();
            let name = format!("k{i}");
            let kernel: KernelView = client
                .call(
                    "kernel.import",
                    &json!({"name": name, "from": source.display().to_string()}),
                )
                .await
                .unwrap();
            assert_eq!(kernel.name, name);
            let shown: KernelView = client
                .call("kernel.show", &json!({"name": name}))
                .await
                .unwrap();
            assert_eq!(shown, kernel);
        }));
    }
    for task in tasks {
        task.await.expect("a client failed");
    }
    let list: KernelListResult = daemon
        .client()
        .await
        .call("kernel.list", &json!({}))
        .await
        .unwrap();
    assert_eq!(list.kernels.len(), 50);
    assert_eq!(dir_names(&daemon.layout().kernels_dir()).len(), 50);
}

async fn a_client_that_disconnects_mid_stream_or_mid_request_harms_nothing() {
    let daemon = Bangerd::start();
    // A follower that hangs up after reading one event.
    let mut follower = daemon.raw().await;
    follower
        .send(1, "events.follow", json!({"since": 0, "follow": true}))
        .await;
    assert!(follower.recv().await.unwrap().item.is_some());
    drop(follower);

    // A follower that never reads, and hangs up while idle.
    let mut idle = daemon.raw().await;
    idle.send(1, "events.follow", json!({"since": 1000, "follow": true}))
        .await;
    drop(idle);
    // Both streams notice and end (the daemon logs each at debug level).
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    while daemon.output().matches("follower hung up").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "followers not cleaned up:\n{}",
            daemon.output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // A client that asks for an import and hangs up without waiting: the import still runs
    // to its end. Watch for it through a stream rather than by polling.
    let source = kernel_source(&daemon.root().scratch("k"), "6.1.0-test", true);
    let watcher = banger::rpc::Client::connect(&daemon.socket())
        .await
        .unwrap();
    let mut stream = watcher
        .stream(
            "events.follow",
            &EventsParams {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut impatient = daemon.raw().await;
    impatient
        .send(
            1,
            "kernel.import",
            json!({"name": "abandoned", "from": source.display().to_string()}),
        )
        .await;
    drop(impatient);
    loop {
        match stream.next::<Envelope>().await.unwrap() {
            StreamEvent::Item(envelope) => {
                if let Event::KernelRegistered(registered) = &envelope.event {
                    assert_eq!(registered.name, "abandoned");
                    break;
                }
            }
            StreamEvent::End(end) => panic!("the stream ended: {end}"),
        }
    }
    drop(stream);

    assert_eq!(ping(&daemon).await.pid, daemon.pid());
    let kernel: KernelView = daemon
        .client()
        .await
        .call("kernel.show", &json!({"name": "abandoned"}))
        .await
        .unwrap();
    assert!(kernel.initrd_path.is_some());
}

async fn a_second_daemon_on_the_same_state_dir_is_refused_with_the_first_ones_pid() {
    let daemon = Bangerd::start();
    let output = std::process::Command::new(bangerd_bin())
        .env("BANGER_ROOT", daemon.root().path())
        .output()
        .expect("run a second bangerd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "bangerd is already running for {} (pid {})",
        daemon.layout().state_dir.display(),
        daemon.pid()
    );
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    // The first one is unharmed.
    assert_eq!(ping(&daemon).await.pid, daemon.pid());
}

async fn sigterm_and_daemon_shutdown_stop_cleanly_and_record_it() {
    let mut daemon = Bangerd::start();
    let status = daemon.signal_and_wait(Signal::SIGTERM);
    assert!(status.success(), "{status}; output:\n{}", daemon.output());
    assert!(!daemon.socket().exists(), "the socket is removed");

    daemon.restart();
    let events = all_events(&daemon.socket()).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.name()).collect();
    assert_eq!(
        names,
        ["daemon_started", "daemon_stopped", "daemon_started"]
    );
    match &events[1].event {
        Event::DaemonStopped(stopped) => assert!(stopped.reason.contains("SIGTERM")),
        other => panic!("{other:?}"),
    }

    // A follower is told the daemon is going away; the shutdown request is answered.
    let follower = banger::rpc::Client::connect(&daemon.socket())
        .await
        .unwrap();
    let mut stream = follower
        .stream(
            "events.follow",
            &EventsParams {
                since: Seq(2),
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Once it has delivered an item, the stream is running (not merely requested).
    assert!(matches!(
        stream.next::<Envelope>().await,
        Ok(StreamEvent::Item(envelope)) if envelope.seq == Seq(3)
    ));
    let answer: Value = daemon
        .client()
        .await
        .call("daemon.shutdown", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["pid"], daemon.pid());
    let ended = loop {
        match stream.next::<Envelope>().await {
            Ok(StreamEvent::Item(_)) => continue,
            other => break other,
        }
    };
    match ended {
        Err(ClientError::Rpc(error)) => assert_eq!(error.code, ErrorCode::Unavailable),
        other => panic!("the stream ended with {:?}", other.map(|_| ())),
    }
    assert!(daemon.wait().success());
    daemon.restart();
    let events = all_events(&daemon.socket()).await;
    match &events[3].event {
        Event::DaemonStopped(stopped) => assert!(stopped.reason.contains("daemon.shutdown")),
        other => panic!("{other:?}"),
    }
}

// ---- kernels and images ------------------------------------------------------------------------

async fn kernel_import_stores_and_registers_a_kernel() {
    let daemon = Bangerd::start();
    let source = daemon.root().scratch("debian");
    fs::create_dir_all(source.join("boot")).unwrap();
    let flat = kernel_source(&daemon.root().scratch("flat"), "6.1.0-banner", false);
    fs::copy(
        flat.join("vmlinux"),
        source.join("boot/vmlinux-6.1.0-9-cloud-amd64"),
    )
    .unwrap();
    fs::write(
        source.join("boot/initrd.img-6.1.0-9-cloud-amd64"),
        b"initrd",
    )
    .unwrap();

    let kernel = import(&daemon, "debian-6.1", &source).await.unwrap();
    let dir = daemon.layout().kernels_dir().join("debian-6.1");
    assert_eq!(kernel.name, "debian-6.1");
    assert_eq!(
        kernel.version, "6.1.0-9-cloud-amd64",
        "the file name says the version"
    );
    assert_eq!(
        kernel.kernel_path,
        dir.join("vmlinux").display().to_string()
    );
    assert_eq!(
        kernel.initrd_path.as_deref(),
        Some(dir.join("initrd.img").display().to_string().as_str())
    );
    assert_eq!(kernel.sha256, sha256_hex(&flat.join("vmlinux")));
    assert_eq!(kernel.source, format!("import:{}", source.display()));
    assert_eq!(
        fs::read(dir.join("vmlinux")).unwrap(),
        fs::read(flat.join("vmlinux")).unwrap()
    );
    assert_eq!(fs::read(dir.join("initrd.img")).unwrap(), b"initrd");

    // Without a versioned file name, the kernel's own banner says it.
    let banner = import(&daemon, "flat", &flat).await.unwrap();
    assert_eq!(banner.version, "6.1.0-banner");
    assert_eq!(banner.initrd_path, None);

    let list: KernelListResult = daemon
        .client()
        .await
        .call("kernel.list", &json!({}))
        .await
        .unwrap();
    assert_eq!(list.kernels.len(), 2);
    let shown: KernelView = daemon
        .client()
        .await
        .call("kernel.show", &json!({"name": "debian-6.1"}))
        .await
        .unwrap();
    assert_eq!(shown, kernel);

    let ops = operations(&daemon, true).await;
    assert_eq!(ops.len(), 2);
    let steps: Vec<&str> = ops[0].steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["stage", "checksum", "publish"]);
    assert!(ops.iter().all(|op| op.status == OpStatus::Succeeded));
    assert!(
        operations(&daemon, false).await.is_empty(),
        "nothing in flight"
    );
    assert_eq!(
        dir_names(&daemon.layout().kernels_dir()),
        ["debian-6.1", "flat"]
    );
}

async fn kernel_import_refuses_bad_input_and_leaves_nothing_behind() {
    let daemon = Bangerd::start();
    let source = kernel_source(&daemon.root().scratch("k"), "6.1.0-test", false);
    import(&daemon, "k1", &source).await.unwrap();

    let error = rpc_error(import(&daemon, "k1", &source).await);
    assert_eq!(error.code, ErrorCode::AlreadyExists);
    assert!(
        error.message.contains("banger kernel rm k1"),
        "{}",
        error.message
    );

    for bad in ["../x", "-x", ".hidden", "", "a/b", "sp ace"] {
        let error = rpc_error(import(&daemon, bad, &source).await);
        assert_eq!(
            error.code,
            ErrorCode::InvalidArgument,
            "{bad:?}: {}",
            error.message
        );
        assert!(
            error.message.contains("kernel name"),
            "{bad:?}: {}",
            error.message
        );
    }
    let missing = daemon.root().path().join("nowhere");
    let error = rpc_error(import(&daemon, "k2", &missing).await);
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(
        error.message.contains(&missing.display().to_string()),
        "{}",
        error.message
    );
    let empty = daemon.root().scratch("empty");
    let error = rpc_error(import(&daemon, "k2", &empty).await);
    assert!(error.message.contains("no kernel in"), "{}", error.message);
    let error = rpc_error(import(&daemon, "k2", Path::new("relative/dir")).await);
    assert!(error.message.contains("absolute"), "{}", error.message);

    assert_eq!(dir_names(&daemon.layout().kernels_dir()), ["k1"]);
    let ops = operations(&daemon, true).await;
    assert_eq!(ops.len(), 1, "refused requests start no operation: {ops:?}");
}

async fn register(
    daemon: &Bangerd,
    name: &str,
    rootfs: &Path,
    kernel: Option<&str>,
) -> Result<ImageView, ClientError> {
    daemon
        .client()
        .await
        .call(
            "image.register",
            &json!({"name": name, "rootfs": rootfs.display().to_string(), "kernel": kernel}),
        )
        .await
}

async fn image_register_copies_sparsely_and_refuses_bad_input() {
    let daemon = Bangerd::start();
    let source = kernel_source(&daemon.root().scratch("k"), "6.1.0-test", false);
    import(&daemon, "k1", &source).await.unwrap();
    let size = 16 << 20;
    let rootfs = rootfs_file(&daemon.root().scratch("img").join("rootfs.ext4"), size);

    let image = register(&daemon, "debian", &rootfs, Some("k1"))
        .await
        .unwrap();
    let stored = daemon.layout().images_dir().join("debian/rootfs.ext4");
    assert_eq!(image.rootfs_path, stored.display().to_string());
    assert_eq!(image.kernel.as_deref(), Some("k1"));
    assert_eq!(image.size_bytes, size);
    assert_eq!(image.sha256, sha256_hex(&rootfs));
    assert_eq!(image.source, format!("register:{}", rootfs.display()));
    use std::os::unix::fs::MetadataExt;
    let allocated = fs::metadata(&stored).unwrap().blocks() * 512;
    assert!(
        allocated < 1 << 20,
        "the copy kept the holes: {allocated} bytes allocated"
    );

    let error = rpc_error(register(&daemon, "debian", &rootfs, None).await);
    assert_eq!(error.code, ErrorCode::AlreadyExists);
    for bad in ["../x", "-x", ".x", "x/y"] {
        let error = rpc_error(register(&daemon, bad, &rootfs, None).await);
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{bad}");
    }
    let missing = daemon.root().path().join("missing.ext4");
    let error = rpc_error(register(&daemon, "other", &missing, None).await);
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(error.message.contains("missing.ext4"), "{}", error.message);
    let error = rpc_error(register(&daemon, "other", &daemon.root().scratch("dir"), None).await);
    assert!(
        error.message.contains("not a regular file"),
        "{}",
        error.message
    );
    let error = rpc_error(register(&daemon, "other", &rootfs, Some("nokernel")).await);
    assert_eq!(error.code, ErrorCode::NotFound);
    assert!(
        error.message.contains("banger kernel list"),
        "{}",
        error.message
    );
    assert_eq!(dir_names(&daemon.layout().images_dir()), ["debian"]);

    // The kernel cannot go while an image names it; the image can go, then the kernel.
    let error = rpc_error(
        daemon
            .client()
            .await
            .call::<_, Value>("kernel.remove", &json!({"name": "k1"}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::Busy);
    assert!(error.message.contains("debian"), "{}", error.message);
    let _: Value = daemon
        .client()
        .await
        .call("image.delete", &json!({"name": "debian"}))
        .await
        .unwrap();
    let error = rpc_error(
        daemon
            .client()
            .await
            .call::<_, Value>("image.show", &json!({"name": "debian"}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::NotFound);
    let _: Value = daemon
        .client()
        .await
        .call("kernel.remove", &json!({"name": "k1"}))
        .await
        .unwrap();
    assert!(dir_names(&daemon.layout().images_dir()).is_empty());
    assert!(dir_names(&daemon.layout().kernels_dir()).is_empty());
    let images: ImageListResult = daemon
        .client()
        .await
        .call("image.list", &json!({}))
        .await
        .unwrap();
    assert!(images.images.is_empty());
}

// ---- events.follow -----------------------------------------------------------------------------

async fn events_follow_streams_from_any_seq_without_gap_or_duplicate() {
    let daemon = Bangerd::start();
    let source = kernel_source(&daemon.root().scratch("k"), "6.1.0-test", false);
    import(&daemon, "first", &source).await.unwrap();
    let caught_up = ping(&daemon).await.last_seq;

    // A live follower from the start, on its own connection.
    let follower = banger::rpc::Client::connect(&daemon.socket())
        .await
        .unwrap();
    let mut stream = follower
        .stream(
            "events.follow",
            &EventsParams {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut seen: Vec<Envelope> = Vec::new();
    while seen.last().map(|e| e.seq) != Some(caught_up) {
        match stream.next::<Envelope>().await.unwrap() {
            StreamEvent::Item(envelope) => seen.push(envelope),
            StreamEvent::End(end) => panic!("ended: {end}"),
        }
    }
    // Another client appends while it follows.
    let second = import(&daemon, "second", &source).await.unwrap();
    let last = ping(&daemon).await.last_seq;
    while seen.last().map(|e| e.seq) != Some(last) {
        match stream.next::<Envelope>().await.unwrap() {
            StreamEvent::Item(envelope) => seen.push(envelope),
            StreamEvent::End(end) => panic!("ended: {end}"),
        }
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq.0).collect();
    assert_eq!(
        seqs,
        (1..=last.0).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(&e.event, Event::KernelRegistered(k) if k.name == "second"))
    );
    assert_eq!(second.registered_seq.0 + 1, last.0);

    // A finite stream from the middle ends where the log ended when it was asked.
    let middle = Seq(caught_up.0 - 3);
    let (items, end) = events(
        &daemon.socket(),
        EventsParams {
            since: middle,
            ..Default::default()
        },
    )
    .await;
    let seqs: Vec<u64> = items.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, (middle.0 + 1..=last.0).collect::<Vec<_>>());
    assert_eq!(end, EventsEnd { last_seq: last });
    assert_eq!(items, seen[middle.0 as usize..]);

    // Past the end: nothing, at once.
    let (items, end) = events(
        &daemon.socket(),
        EventsParams {
            since: Seq(last.0 + 10),
            ..Default::default()
        },
    )
    .await;
    assert!(items.is_empty());
    assert_eq!(end.last_seq, last);

    // Filtered by operation: exactly that operation's events.
    let op = seen
        .iter()
        .find(|e| matches!(&e.event, Event::OperationStarted(s) if s.target == Target::Kernel { name: "second".into() }))
        .and_then(|e| e.op_id)
        .unwrap();
    let (items, _) = events(
        &daemon.socket(),
        EventsParams {
            op: Some(op),
            ..Default::default()
        },
    )
    .await;
    let expected: Vec<&Envelope> = seen.iter().filter(|e| e.op_id == Some(op)).collect();
    assert_eq!(items.iter().collect::<Vec<_>>(), expected);
    let names: Vec<&str> = items.iter().map(|e| e.event.name()).collect();
    assert_eq!(
        names,
        [
            "operation_started",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "kernel_registered",
            "operation_succeeded"
        ]
    );

    // Filtered by a VM name no VM ever had: nothing.
    let (items, _) = events(
        &daemon.socket(),
        EventsParams {
            vm: Some("nobody".into()),
            since: Seq(2),
            ..Default::default()
        },
    )
    .await;
    assert!(items.is_empty());
}

// ---- crashes -----------------------------------------------------------------------------------

async fn sigkill_loses_no_acknowledged_operation_and_recovery_cleans_the_rest() {
    let mut daemon = Bangerd::start();
    let source = kernel_source(&daemon.root().scratch("k"), "6.1.0-test", true);
    let socket = daemon.socket();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<(String, OpId)>();
    // Imports one after another, as fast as they are acknowledged, until the daemon dies.
    let importer = tokio::spawn(async move {
        for i in 0.. {
            let Ok(mut raw) = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                RawConn::try_connect(&socket),
            )
            .await
            .unwrap_or(Err(())) else {
                return;
            };
            let name = format!("k{i}");
            let params = json!({"name": name, "from": source.display().to_string()});
            if raw.try_send(1, "kernel.import", params).await.is_err() {
                return;
            }
            match raw.recv().await {
                Some(response) if response.result.is_some() => {
                    let _ = acked_tx.send((name, op_id_of(&response)));
                }
                _ => return,
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 12 {
        acked.push(acked_rx.recv().await.expect("an acknowledged import"));
    }
    daemon.kill();
    importer.await.unwrap();
    while let Ok(late) = acked_rx.try_recv() {
        acked.push(late);
    }

    daemon.restart();
    let events = all_events(&daemon.socket()).await;
    let mut succeeded: HashMap<OpId, bool> = HashMap::new();
    for envelope in &events {
        if let (Some(op), Event::OperationSucceeded(_)) = (envelope.op_id, &envelope.event) {
            succeeded.insert(op, true);
        }
    }
    let kernels: KernelListResult = daemon
        .client()
        .await
        .call("kernel.list", &json!({}))
        .await
        .unwrap();
    let registered: BTreeSet<String> = kernels.kernels.iter().map(|k| k.name.clone()).collect();
    for (name, op) in &acked {
        assert!(
            succeeded.contains_key(op),
            "acknowledged {name} ({op}) lost its success"
        );
        assert!(
            registered.contains(name),
            "acknowledged {name} is not registered"
        );
    }
    // The import in flight at the kill was finished or rolled back: nothing unfinished, and
    // the store holds exactly the registered kernels.
    assert!(operations(&daemon, false).await.is_empty());
    let on_disk: BTreeSet<String> = dir_names(&daemon.layout().kernels_dir())
        .into_iter()
        .collect();
    assert_eq!(on_disk, registered);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

/// Crashes (aborts) bangerd at a failpoint during an operation, restarts it, and returns the
/// daemon and the operation as recovery left it.
async fn crash_and_recover(
    failpoint: &str,
    setup: impl AsyncFnOnce(&Bangerd),
    request: (&str, Value),
) -> (Bangerd, banger::api::OperationView, Vec<Envelope>) {
    let mut daemon = Bangerd::start();
    setup(&daemon).await;
    daemon.kill();
    daemon.restart_with(&[("BANGER_FAILPOINT", failpoint)]);
    let result = daemon
        .client()
        .await
        .call::<_, Value>(request.0, &request.1)
        .await;
    assert!(
        matches!(result, Err(ClientError::Closed | ClientError::Io(_))),
        "the daemon should have died at {failpoint}: {result:?}"
    );
    let status = daemon.wait();
    assert!(!status.success(), "aborted at the failpoint: {status}");
    daemon.restart();
    let ops = operations(&daemon, true).await;
    let op = ops.last().expect("the interrupted operation").clone();
    let (events, _) = events(
        &daemon.socket(),
        EventsParams {
            op: Some(op.op_id),
            ..Default::default()
        },
    )
    .await;
    (daemon, op, events)
}

async fn a_crash_in_the_middle_of_kernel_import_is_rolled_back_at_restart() {
    for (point, before_undo) in [
        ("kernel.import:stage:after", "stage"),
        ("kernel.import:publish:before", "publish"),
        ("kernel.import:publish:after", "publish"),
    ] {
        let source_dir = tempfile::tempdir().unwrap();
        let source = kernel_source(source_dir.path(), "6.1.0-test", true);
        let (daemon, op, events) = crash_and_recover(
            point,
            async |_| {},
            (
                "kernel.import",
                json!({"name": "k1", "from": source.display().to_string()}),
            ),
        )
        .await;
        assert_eq!(op.status, OpStatus::RolledBack, "{point}: {op:?}");
        assert_eq!(op.recovery, Some(RecoveryDecision::RollBack), "{point}");
        assert!(
            dir_names(&daemon.layout().kernels_dir()).is_empty(),
            "{point}: leftovers"
        );
        let names: Vec<&str> = events.iter().map(|e| e.event.name()).collect();
        let decided = names
            .iter()
            .position(|n| *n == "recovery_decided")
            .expect(point);
        assert_eq!(
            names.last(),
            Some(&"operation_rolled_back"),
            "{point}: {names:?}"
        );
        assert!(
            names[decided..].contains(&"undo_succeeded"),
            "{point}: {names:?}"
        );
        match &events[decided + 1].event {
            Event::UndoStarted(undo) => assert_eq!(undo.step, before_undo, "{point}"),
            other => panic!("{point}: {other:?}"),
        }
        // Every recovery event carries the original op id.
        assert!(events.iter().all(|e| e.op_id == Some(op.op_id)));
        let error = rpc_error(
            daemon
                .client()
                .await
                .call::<_, Value>("kernel.show", &json!({"name": "k1"}))
                .await,
        );
        assert_eq!(error.code, ErrorCode::NotFound, "{point}");
        // The name is free again.
        import(&daemon, "k1", &source).await.unwrap();
    }
}

async fn a_crash_in_the_middle_of_an_undo_is_resumed_at_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let source = kernel_source(scratch.path(), "6.1.0-test", false);
    let (daemon, op, events) = crash_and_recover(
        "kernel.import:publish:error,kernel.import:stage:undo-before",
        async |_| {},
        (
            "kernel.import",
            json!({"name": "k1", "from": source.display().to_string()}),
        ),
    )
    .await;
    assert_eq!(op.status, OpStatus::RolledBack, "{op:?}");
    assert_eq!(op.recovery, Some(RecoveryDecision::ResumeUndo));
    let names: Vec<&str> = events.iter().map(|e| e.event.name()).collect();
    let decided = names.iter().position(|n| *n == "recovery_decided").unwrap();
    // Before the crash: publish failed; its undo and checksum's ran; stage's undo started.
    // After: only stage's undo is left, and it runs again (undos are idempotent).
    assert_eq!(
        &names[..decided],
        [
            "operation_started",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_succeeded",
            "step_started",
            "step_failed",
            "undo_started",
            "undo_succeeded",
            "undo_started",
            "undo_succeeded",
            "undo_started",
        ]
    );
    assert_eq!(
        &names[decided..],
        [
            "recovery_decided",
            "undo_started",
            "undo_succeeded",
            "operation_rolled_back"
        ]
    );
    match &events[decided + 1].event {
        Event::UndoStarted(undo) => assert_eq!(undo.step, "stage"),
        other => panic!("{other:?}"),
    }
    assert!(dir_names(&daemon.layout().kernels_dir()).is_empty());
}

async fn a_crash_in_the_middle_of_image_register_is_rolled_back_at_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let rootfs = rootfs_file(&scratch.path().join("rootfs.ext4"), 8 << 20);
    let (daemon, op, _) = crash_and_recover(
        "image.register:checksum:before",
        async |_| {},
        (
            "image.register",
            json!({"name": "img", "rootfs": rootfs.display().to_string()}),
        ),
    )
    .await;
    assert_eq!(op.status, OpStatus::RolledBack);
    assert!(dir_names(&daemon.layout().images_dir()).is_empty());
}

async fn a_crash_in_the_middle_of_kernel_remove_is_rolled_forward_at_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let source = kernel_source(scratch.path(), "6.1.0-test", false);
    let (daemon, op, events) = crash_and_recover(
        "kernel.remove:delete:before",
        async |daemon| {
            import(daemon, "k1", &source).await.unwrap();
        },
        ("kernel.remove", json!({"name": "k1"})),
    )
    .await;
    assert_eq!(op.status, OpStatus::Succeeded, "{op:?}");
    assert_eq!(op.recovery, Some(RecoveryDecision::RollForward));
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.event, Event::KernelRemoved(k) if k.name == "k1"))
    );
    assert!(dir_names(&daemon.layout().kernels_dir()).is_empty());
    let list: KernelListResult = daemon
        .client()
        .await
        .call("kernel.list", &json!({}))
        .await
        .unwrap();
    assert!(list.kernels.is_empty());
}

async fn a_failed_step_rolls_back_and_a_failed_undo_leaves_a_stuck_operation_that_blocks() {
    let daemon = Bangerd::start_with(&[(
        "BANGER_FAILPOINT",
        "kernel.import:publish:error,image.register:publish:error,image.register:stage:undo-error",
    )]);
    let source = kernel_source(&daemon.root().scratch("k"), "6.1.0-test", false);
    let error = rpc_error(import(&daemon, "k1", &source).await);
    assert_eq!(error.code, ErrorCode::OperationFailed);
    assert!(error.message.contains("step publish"), "{}", error.message);
    assert!(error.message.contains("rolled back"), "{}", error.message);
    let ops = operations(&daemon, true).await;
    assert_eq!(ops[0].status, OpStatus::RolledBack);
    assert!(dir_names(&daemon.layout().kernels_dir()).is_empty());

    let rootfs = rootfs_file(&daemon.root().scratch("img").join("rootfs.ext4"), 1 << 20);
    let error = rpc_error(register(&daemon, "img", &rootfs, None).await);
    assert_eq!(error.code, ErrorCode::OperationFailed);
    assert!(error.message.contains("stuck"), "{}", error.message);
    let stuck = operations(&daemon, false).await;
    assert_eq!(
        stuck.len(),
        1,
        "the stuck operation is listed as unresolved"
    );
    assert_eq!(stuck[0].status, OpStatus::Stuck);
    assert_eq!(
        stuck[0].current_step().map(|s| s.name.as_str()),
        Some("stage")
    );

    // Any later operation on that image is refused, naming the stuck one.
    let error = rpc_error(register(&daemon, "img", &rootfs, None).await);
    assert_eq!(error.code, ErrorCode::Busy);
    assert!(
        error.message.contains(&stuck[0].op_id.to_string()),
        "{}",
        error.message
    );
    assert!(error.message.contains("stuck"), "{}", error.message);
}

async fn a_corrupt_log_is_served_read_only_and_every_write_is_refused() {
    use banger_events::{EventLog, RedbLog, frame};
    let root = TestRoot::new();
    let layout = root.layout();
    fs::create_dir_all(&layout.state_dir).unwrap();
    {
        let log = RedbLog::open(layout.log_path()).unwrap();
        let good = Envelope {
            seq: Seq(1),
            event_id: banger_events::EventId(1),
            op_id: None,
            cause: None,
            at_unix_ms: 1,
            schema_version: banger_events::SCHEMA_VERSION,
            event: Event::KernelRemoved(banger_events::KernelRemoved { name: "old".into() }),
        };
        let mut bad = frame::encode(&Envelope {
            seq: Seq(2),
            ..good.clone()
        });
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        log.commit(&[(Seq(1), frame::encode(&good)), (Seq(2), bad)], None)
            .unwrap();
    }
    let mut daemon = Bangerd::start_on(root);
    let ping = ping(&daemon).await;
    assert!(
        ping.log_health.starts_with("read-only"),
        "{}",
        ping.log_health
    );
    assert!(ping.log_health.contains("seq 2"), "{}", ping.log_health);
    let _: KernelListResult = daemon
        .client()
        .await
        .call("kernel.list", &json!({}))
        .await
        .unwrap();
    let source = kernel_source(&daemon.root().scratch("k"), "6.1.0-test", false);
    let error = rpc_error(import(&daemon, "k1", &source).await);
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert!(error.message.contains("read-only"), "{}", error.message);
    assert!(dir_names(&daemon.layout().kernels_dir()).is_empty());
    // It still stops cleanly.
    assert!(daemon.signal_and_wait(Signal::SIGTERM).success());
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio ping_reports_pid_version_and_a_writable_log,
        tokio every_request_gets_its_own_op_id,
        tokio malformed_requests_get_invalid_argument_and_the_connection_goes_on,
        tokio unknown_method_says_which_methods_exist,
        tokio a_request_over_one_mebibyte_is_refused_and_the_daemon_keeps_serving,
        tokio fifty_concurrent_clients_all_get_their_answers,
        tokio a_client_that_disconnects_mid_stream_or_mid_request_harms_nothing,
        tokio a_second_daemon_on_the_same_state_dir_is_refused_with_the_first_ones_pid,
        tokio sigterm_and_daemon_shutdown_stop_cleanly_and_record_it,
        tokio kernel_import_stores_and_registers_a_kernel,
        tokio kernel_import_refuses_bad_input_and_leaves_nothing_behind,
        tokio image_register_copies_sparsely_and_refuses_bad_input,
        tokio events_follow_streams_from_any_seq_without_gap_or_duplicate,
        tokio sigkill_loses_no_acknowledged_operation_and_recovery_cleans_the_rest,
        tokio a_crash_in_the_middle_of_kernel_import_is_rolled_back_at_restart,
        tokio a_crash_in_the_middle_of_an_undo_is_resumed_at_restart,
        tokio a_crash_in_the_middle_of_image_register_is_rolled_back_at_restart,
        tokio a_crash_in_the_middle_of_kernel_remove_is_rolled_forward_at_restart,
        tokio a_failed_step_rolls_back_and_a_failed_undo_leaves_a_stuck_operation_that_blocks,
        tokio a_corrupt_log_is_served_read_only_and_every_write_is_refused,
    ]
}
