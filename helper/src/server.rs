//! The helper's socket server: accepts connections, checks the caller, validates, dispatches.
//!
//! This module owns the order in which a request is handled, which is the security argument
//! of the helper:
//!
//! 1. the frame is read with its size checked first ([`crate::protocol::read_frame`]);
//! 2. the caller's uid comes from SO_PEERCRED (never from the request) and must be in the
//!    allow-list, otherwise the answer is `refused` and nothing else happens;
//! 3. every argument is checked by [`crate::validate`];
//! 4. only then does [`crate::net::Host`] touch the host;
//! 5. the answer is one frame, followed, for a request that hands over sockets, by the
//!    descriptors ([`crate::fds`]); the helper's own copies close right after.
//!
//! Invariants: the helper knows nothing about VMs or events; a bad frame costs only its own
//! connection (the helper keeps serving others); privileged operations run one at a time, so
//! two concurrent "ensure" requests cannot race each other into a half-made bridge or tap.
//!
//! Anyone on the host may connect (the socket is 0666), so connections are bounded: callers
//! on the allow-list share [`ALLOWED_CONNECTIONS`] slots and everybody else
//! [`OTHER_CONNECTIONS`], so that a user who may not use the helper cannot starve one who may.
//! A frame must arrive within [`FRAME_TIMEOUT`] ([`REFUSED_FRAME_TIMEOUT`] for callers not on
//! the list, whose connection closes after its one refusal): an idle or dribbling connection
//! gives its slot back.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Semaphore};

use crate::jail::JailConfig;
use crate::net::{Host, OpError};
use crate::networks::Networks;
use crate::protocol::{
    self, ErrorKind, FrameError, PROTOCOL_VERSION, Request, RequestFrame, Response,
};
use crate::validate;

/// What the server is told at startup.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    /// Uids allowed to make requests (checked with SO_PEERCRED).
    pub allowed_uids: Vec<u32>,
    /// The network each allowed uid may have (see [`crate::networks`]).
    pub networks: Networks,
    /// What Firecracker launches run (see [`crate::jail`]); `None` refuses them.
    pub jail: Option<JailConfig>,
}

/// Connections open at once from callers on the allow-list.
pub const ALLOWED_CONNECTIONS: usize = 64;
/// Connections open at once from everybody else (each gets one refusal, then is closed).
pub const OTHER_CONNECTIONS: usize = 8;
/// How long a connection may wait for, or take to send, its next request.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(60);
/// The same for a caller not on the allow-list.
pub const REFUSED_FRAME_TIMEOUT: Duration = Duration::from_secs(2);

struct State {
    allowed_uids: Vec<u32>,
    networks: Networks,
    allowed_slots: Arc<Semaphore>,
    other_slots: Arc<Semaphore>,
    /// The lock serialises privileged operations; see the module invariants.
    host: Mutex<Host>,
    jail: Option<JailConfig>,
}

/// A bound, not yet serving helper.
pub struct Server {
    listener: UnixListener,
    socket: PathBuf,
    state: Arc<State>,
}

impl Server {
    /// Prepares the socket (parent directory, stale file), binds it and opens netlink.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let socket = config.socket;
        if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        remove_stale_socket(&socket).await?;
        let listener = UnixListener::bind(&socket)?;
        // Anyone may connect; who may *ask* is decided per request by SO_PEERCRED, which
        // cannot be forged, unlike a file mode that an installer may get wrong.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        let host = Host::connect()?;
        Ok(Server {
            listener,
            socket,
            state: Arc::new(State {
                allowed_uids: config.allowed_uids,
                networks: config.networks,
                allowed_slots: Arc::new(Semaphore::new(ALLOWED_CONNECTIONS)),
                other_slots: Arc::new(Semaphore::new(OTHER_CONNECTIONS)),
                host: Mutex::new(host),
                jail: config.jail,
            }),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serves until `shutdown` completes, then removes the socket.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => admit(stream, &self.state),
                    // Running out of descriptors and the like is transient for a server:
                    // log it and keep accepting rather than leave bangerd without a helper.
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        };
        if let Err(e) = std::fs::remove_file(&self.socket) {
            tracing::warn!(socket = %self.socket.display(), error = %e, "could not remove the socket");
        }
        result
    }
}

/// Removes a socket left by a helper that died, but never a live helper's socket or a file
/// that is not a socket.
async fn remove_stale_socket(socket: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; remove it or choose another --socket path",
                socket.display()
            ),
        ));
    }
    if UnixStream::connect(socket).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another banger-helper is already serving {}; stop it first",
                socket.display()
            ),
        ));
    }
    std::fs::remove_file(socket)
}

/// Gives a new connection a slot of its caller's class and serves it, or closes it at once
/// when that class has none left.
fn admit(stream: UnixStream, state: &Arc<State>) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "SO_PEERCRED failed; closing the connection");
            return;
        }
    };
    let allowed = state.allowed_uids.contains(&uid);
    let slots = if allowed {
        &state.allowed_slots
    } else {
        &state.other_slots
    };
    let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
        tracing::warn!(
            uid,
            allowed,
            "too many connections open; closing a new one without reading it"
        );
        return;
    };
    let state = Arc::clone(state);
    tokio::spawn(async move {
        handle_connection(stream, uid, allowed, state).await;
        drop(slot);
    });
}

async fn handle_connection(mut stream: UnixStream, uid: u32, allowed: bool, state: Arc<State>) {
    let timeout = if allowed {
        FRAME_TIMEOUT
    } else {
        REFUSED_FRAME_TIMEOUT
    };
    loop {
        let read = tokio::time::timeout(timeout, protocol::read_frame(&mut stream)).await;
        let body = match read {
            Err(_) => {
                tracing::info!(
                    uid,
                    ?timeout,
                    "no request within the timeout; closing the connection"
                );
                return;
            }
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => return,
            Ok(Err(FrameError::Io(e))) => {
                tracing::warn!(uid, error = %e, "reading a request failed; closing the connection");
                return;
            }
            Ok(Err(e)) => {
                protocol_error(
                    &mut stream,
                    uid,
                    format!("The request frame is malformed: {e}."),
                )
                .await;
                return;
            }
        };
        // Strict: unknown or duplicate fields anywhere are refused, naming the field.
        let frame: RequestFrame = match protocol::decode_request(&body) {
            Ok(frame) => frame,
            Err(e) => {
                protocol_error(
                    &mut stream,
                    uid,
                    format!("The request is not a valid banger-helper request: {e}."),
                )
                .await;
                return;
            }
        };
        // A launch's frame is followed by the console's descriptor: always taken off the
        // stream, even for a request about to be refused, so the next frame starts where it
        // should.
        let mut passed = Vec::new();
        if matches!(frame.request, Request::LaunchFirecracker { .. }) && frame.v != PROTOCOL_VERSION
        {
            // Whether a descriptor follows is this version's rule; another version's frame
            // leaves the stream at no known boundary.
            protocol_error(
                &mut stream,
                uid,
                format!(
                    "This banger-helper speaks protocol version {PROTOCOL_VERSION}, but the request uses version {}. Install matching banger and banger-helper binaries (`banger system install`).",
                    frame.v
                ),
            )
            .await;
            return;
        }
        if matches!(frame.request, Request::LaunchFirecracker { .. }) {
            match tokio::time::timeout(timeout, crate::fds::recv_fds(&stream)).await {
                Ok(Ok(fds)) => passed = fds,
                Ok(Err(e)) => {
                    protocol_error(
                        &mut stream,
                        uid,
                        format!("The console descriptor did not follow the launch request: {e}."),
                    )
                    .await;
                    return;
                }
                Err(_) => {
                    protocol_error(
                        &mut stream,
                        uid,
                        "The console descriptor did not follow the launch request in time.".into(),
                    )
                    .await;
                    return;
                }
            }
        }
        let op = frame.request.op_name();
        // The arguments are logged too: the helper's log is the audit trail of what root did.
        let request = format!("{:?}", frame.request);
        let Reply { response, fds } =
            handle_request(&state, uid, frame, passed, || asker_gone(&stream)).await;
        match &response {
            Response::Error { kind, message } => {
                tracing::info!(uid, op, %request, outcome = kind.as_str(), detail = %message, "request")
            }
            _ => tracing::info!(uid, op, %request, outcome = "ok", "request"),
        }
        if let Err(e) = protocol::write_json(&mut stream, &response).await {
            tracing::warn!(uid, error = %e, "writing a response failed; closing the connection");
            return;
        }
        if !fds.is_empty()
            && let Err(e) = crate::fds::send_fds(&stream, &fds).await
        {
            tracing::warn!(uid, error = %e, "passing the descriptors failed; closing the connection");
            return;
        }
        // The caller has its copies; the helper keeps none (a bound port stays the caller's).
        drop(fds);
        if !allowed {
            // One refusal is all such a caller gets; its slot goes back at once.
            return;
        }
    }
}

/// Answers a frame that could not be understood; the caller closes the connection after,
/// because the stream can no longer be trusted to be at a frame boundary.
async fn protocol_error(stream: &mut UnixStream, uid: u32, message: String) {
    tracing::info!(uid, op = "?", outcome = "protocol", detail = %message, "request");
    let response = Response::Error {
        kind: ErrorKind::Protocol,
        message,
    };
    // Best effort: the peer may already be gone.
    let _ = protocol::write_json(stream, &response).await;
}

fn refused(message: String) -> Response {
    Response::Error {
        kind: ErrorKind::Refused,
        message,
    }
}

/// An answer, and the descriptors that follow it ([`Response::DnsSockets`],
/// [`Response::TapFd`] and [`Response::KvmFd`] have them).
struct Reply {
    response: Response,
    fds: Vec<std::os::fd::OwnedFd>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply {
            response,
            fds: Vec::new(),
        }
    }
}

/// Whether the peer has closed its end: its request is then not carried out (see
/// [`handle_request`]). Asked with a zero-timeout poll, which reports a hang-up without
/// reading anything.
fn asker_gone(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;

    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// Answers one request. A privileged operation runs under the host lock, and only while its
/// asker is still connected, checked under that lock: a bangerd that died after sending a
/// request is succeeded by one whose crash recovery undoes what the dead one intended, and
/// that undo must not be overtaken by the dead one's request, still queued here. Checked under
/// the lock, a request either ran before the undo (which then removes its effect) or finds its
/// asker gone (the old bangerd died before the new one could start) and does nothing.
async fn handle_request(
    state: &State,
    uid: u32,
    frame: RequestFrame,
    passed: Vec<std::os::fd::OwnedFd>,
    asker_gone: impl Fn() -> bool,
) -> Reply {
    if !state.allowed_uids.contains(&uid) {
        return refused(format!(
            "uid {uid} is not allowed to use banger-helper. Start banger-helper with `--allow-uid {uid}` (`banger system install` does this for the user who owns banger)."
        )).into();
    }
    if frame.v != PROTOCOL_VERSION && frame.request != Request::Version {
        return Response::Error {
            kind: ErrorKind::Protocol,
            message: format!(
                "This banger-helper speaks protocol version {PROTOCOL_VERSION}, but the request uses version {}. Install matching banger and banger-helper binaries (`banger system install`).",
                frame.v
            ),
        }
        .into();
    }
    if let Err(invalid) = validate::request(&frame.request) {
        return refused(invalid.0).into();
    }
    if frame.request == Request::Version {
        return Response::Version {
            version: PROTOCOL_VERSION,
        }
        .into();
    }
    // The caller may name only its own networks and bridges: checked before the host lock.
    if let Err(message) = authorize(&state.networks, uid, &frame.request) {
        return refused(message).into();
    }
    if let Some(reply) = handle_jail_request(state, uid, &frame.request, passed, &asker_gone).await
    {
        return reply;
    }
    let host = state.host.lock().await;
    if asker_gone() {
        return Response::Error {
            kind: ErrorKind::Refused,
            message: "The asker hung up before its request could run; nothing was done.".into(),
        }
        .into();
    }
    let result = match &frame.request {
        Request::Version => Ok(Response::Version {
            version: PROTOCOL_VERSION,
        }),
        Request::Networks => host
            .network_states(&state.networks.of(uid))
            .await
            .map(|networks| Response::Networks { networks }),
        Request::EnsureNetwork { spec } => match validate::network_spec(spec) {
            Ok(subnet) => host
                .ensure_network(spec, subnet, &state.networks)
                .await
                .map(|()| Response::Done),
            Err(invalid) => return refused(invalid.0).into(),
        },
        Request::EnsureTap { tap, bridge } => host
            .ensure_tap(tap, bridge, uid)
            .await
            .map(|()| Response::Done),
        Request::DeleteTap { tap } => host.delete_tap(tap, uid).await.map(|()| Response::Done),
        Request::ListTaps => host
            .list_taps(uid)
            .await
            .map(|taps| Response::Taps { taps }),
        Request::RemoveNetwork { bridge } => host
            .remove_network(bridge, &state.networks)
            .await
            .map(|()| Response::Done),
        // The one request whose answer carries descriptors.
        Request::BindDns {
            bridge,
            address,
            port,
        } => {
            return match host.bind_dns(bridge, *address, *port).await {
                Ok(fds) => Reply {
                    response: Response::DnsSockets,
                    fds,
                },
                Err(e) => op_error(e).into(),
            };
        }
        // Like BindDns, an answer carrying a descriptor.
        Request::OpenTap { tap } => {
            return match host.open_tap(tap, uid).await {
                Ok(fd) => Reply {
                    response: Response::TapFd,
                    fds: vec![fd],
                },
                Err(e) => op_error(e).into(),
            };
        }
        // No state and no lock: the device is opened and checked, nothing else.
        Request::OpenKvm => {
            return match crate::kvm::open_kvm() {
                Ok(fd) => Reply {
                    response: Response::KvmFd,
                    fds: vec![fd],
                },
                Err(e) => op_error(OpError::Failed(format!(
                    "Opening {} failed: {e}.",
                    crate::kvm::KVM_DEVICE
                )))
                .into(),
            };
        }
        Request::LaunchFirecracker { .. }
        | Request::KillVmm { .. }
        | Request::RemoveJail { .. }
        | Request::Jail => {
            unreachable!("answered by handle_jail_request")
        }
        Request::RouteDns { bridge, address } => {
            host.route_dns(bridge, *address)
                .await
                .map(|skipped| match skipped {
                    None => Response::Done,
                    Some(reason) => Response::Skipped { reason },
                })
        }
    };
    result.unwrap_or_else(op_error).into()
}

/// Answers the jail requests ([`crate::jail`]); `None` for any other request. They run on the
/// blocking pool (the launch waits for the jailer), under the host lock like every privileged
/// operation, and only while the asker is still connected.
async fn handle_jail_request(
    state: &State,
    uid: u32,
    request: &Request,
    mut passed: Vec<std::os::fd::OwnedFd>,
    asker_gone: &impl Fn() -> bool,
) -> Option<Reply> {
    if *request == Request::Jail {
        return Some(
            Response::Jail {
                jail: state.jail.as_ref().map(|jail| crate::protocol::JailState {
                    jailer: jail.jailer().to_path_buf(),
                    firecracker: jail.firecracker().to_path_buf(),
                    dir: jail.dir().to_path_buf(),
                }),
            }
            .into(),
        );
    }
    if !matches!(
        request,
        Request::LaunchFirecracker { .. } | Request::KillVmm { .. } | Request::RemoveJail { .. }
    ) {
        return None;
    }
    let Some(jail) = state.jail.clone() else {
        return Some(refused(
            "This banger-helper launches no Firecracker: start it with --jailer, --firecracker and --jail-dir (`banger system install --jailer …`).".into(),
        ).into());
    };
    let gid = match request {
        Request::LaunchFirecracker { .. } => match caller_gid(uid) {
            Ok(gid) => gid,
            Err(message) => return Some(refused(message).into()),
        },
        _ => 0,
    };
    let console = match (request, passed.pop(), passed.is_empty()) {
        (Request::LaunchFirecracker { .. }, Some(fd), true) => Some(fd),
        (Request::LaunchFirecracker { .. }, _, _) => {
            return Some(
                refused("A launch takes exactly one descriptor: the console log.".into()).into(),
            );
        }
        _ => None,
    };
    let _host = state.host.lock().await;
    if asker_gone() {
        return Some(
            Response::Error {
                kind: ErrorKind::Refused,
                message: "The asker hung up before its request could run; nothing was done.".into(),
            }
            .into(),
        );
    }
    let request = request.clone();
    let result = tokio::task::spawn_blocking(move || match request {
        Request::LaunchFirecracker { vm } => {
            let console = console.expect("checked above");
            jail.launch(uid, gid, &vm, console)
                .map(|launched| Response::Launched {
                    pid: launched.pid,
                    start_time_ticks: launched.start_time_ticks,
                    root: launched.root,
                })
        }
        Request::KillVmm {
            vm,
            pid,
            start_time_ticks,
        } => jail
            .kill(uid, &vm, pid, start_time_ticks)
            .map(|()| Response::Done),
        Request::RemoveJail { vm } => jail.remove(uid, &vm).map(|()| Response::Done),
        _ => unreachable!("only jail requests get here"),
    })
    .await
    .unwrap_or_else(|e| Err(OpError::Failed(format!("the request panicked: {e}"))));
    Some(result.unwrap_or_else(op_error).into())
}

/// The primary group of `uid` from the user database: what its jailed VMM runs as. A uid with
/// no entry (a bare service uid) gets the group of the same number, as `useradd` would make.
fn caller_gid(uid: u32) -> Result<u32, String> {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => Ok(user.gid.as_raw()),
        Ok(None) => Ok(uid),
        Err(e) => Err(format!("cannot look uid {uid} up: {e}")),
    }
}

/// Whether `uid` may make `request` as far as networks go: a network spec must be exactly one
/// the helper's configuration gives `uid`, and a bridge one of `uid`'s bridges. Taps are
/// checked by owner under the host lock ([`Host`]), where the kernel says who owns them.
fn authorize(networks: &Networks, uid: u32, request: &Request) -> Result<(), String> {
    match request {
        Request::EnsureNetwork { spec } => networks.check_spec(uid, spec),
        Request::EnsureTap { bridge, .. }
        | Request::RemoveNetwork { bridge }
        | Request::BindDns { bridge, .. }
        | Request::RouteDns { bridge, .. } => networks.check_bridge(uid, bridge),
        Request::Version
        | Request::Networks
        | Request::DeleteTap { .. }
        | Request::OpenTap { .. }
        | Request::OpenKvm
        | Request::ListTaps
        | Request::LaunchFirecracker { .. }
        | Request::KillVmm { .. }
        | Request::RemoveJail { .. }
        | Request::Jail => Ok(()),
    }
}

fn op_error(e: OpError) -> Response {
    match e {
        OpError::Refused(message) => Response::Error {
            kind: ErrorKind::Refused,
            message,
        },
        OpError::Failed(message) => Response::Error {
            kind: ErrorKind::Failed,
            message,
        },
    }
}
