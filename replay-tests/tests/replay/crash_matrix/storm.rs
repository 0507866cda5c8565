//! Crash storms: SIGKILL at arbitrary moments, not at step boundaries.
//!
//! The matrix aborts bangerd at chosen failpoints, one operation at a time. A storm instead
//! fires several requests at once — VM lifecycle, kernel and image operations — (so two or
//! more operations are in flight when the daemon dies, and the daemon's own `tap.fill` runs in
//! the background after creates and restarts), lets them run for a random while, and SIGKILLs
//! bangerd wherever it happens to be — in the middle of a step, between an intent and its
//! effect, inside a group commit, while a VMM boots. Sometimes it kills the restarted daemon
//! again while it is still recovering. Then it restarts bangerd for good and checks what the
//! matrix checks (every operation ended; the views match the host — processes, directories,
//! taps, the bridge and NAT, allocations as the VMMs received them, no stale sockets; nothing
//! leaked; no acknowledged event lost), plus that every request a client saw answered with
//! success is still a succeeded operation, and goes on to the next round on the same root, so
//! rounds build on each other's debris.
//!
//! In about one round in three, the daemon of the round also has an injected step error
//! (`BANGER_FAILPOINT=KIND:STEP:error`), so live rollbacks — and failures of operations that
//! cannot be rolled back, like a delete that already killed its VMM — mix with the kills.
//!
//! Randomness comes from one seed, printed at the start and in every failure with the command
//! that replays it: `BANGER_CRASH_SEED=N` replays a storm (timing still varies, so a replay is
//! a strong hint, not a guarantee), `BANGER_CRASH_ROUNDS` sets the number of rounds (default
//! 12). Without `BANGER_CRASH_SEED` each run draws a new seed, so CI explores.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::lab::{Daemon, Inputs};
use super::{OpStatus, VmState, World, call_ok, check_acknowledged, check_host, teardown, world};
use banger::rpc::Response;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// splitmix64: small, seedable, and good enough to pick requests and delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const VMS: [&str; 3] = ["vm0", "vm1", "vm2"];

/// Steps a round may make fail (`KIND:STEP:error`): a live rollback, or for the kinds that
/// roll forward, a failure after part of the work is done.
const STEP_ERRORS: &[&str] = &[
    "vm.create:prepare-work-disk",
    "vm.create:network",
    "vm.create:configure",
    "vm.create:wait-for-agent",
    "vm.start:network",
    "vm.start:instance-start",
    "vm.start:wait-for-agent",
    "vm.stop:shutdown",
    "vm.stop:release-sockets",
    "vm.kill:release-sockets",
    "vm.delete:release-tap",
    "vm.delete:remove-files",
    "vm.set:resize-work-disk",
    "kernel.import:publish",
    "kernel.remove:delete",
    "image.register:checksum",
    "image.delete:delete",
    // The daemon's own pool fills, after creates and at startup.
    "tap.fill:make-taps",
];

/// One request of the workload. Two in three are about a VM, mostly one that the VM's
/// current state allows (so that operations really run when the kill comes); one in three
/// registers or removes the second kernel or image (which `img2` needs `k2` for, so some are
/// refused, and some deletes find their target in use). One in five is anything at all,
/// because a refusal must change nothing either.
fn pick_request(rng: &mut Rng, inputs: &Inputs, world: &World) -> (&'static str, Value) {
    let vm = VMS[rng.below(VMS.len() as u64) as usize];
    let state = world.vms.vms.iter().find(|v| v.name == vm).map(|v| v.state);
    let name = json!({"name": vm});
    let choice = if rng.below(5) == 0 {
        rng.below(11)
    } else if rng.below(3) == 0 {
        7 + rng.below(4)
    } else {
        match state {
            None => 0,
            Some(VmState::Running) => [1, 3, 4, 5][rng.below(4) as usize],
            Some(_) => [2, 5, 6][rng.below(3) as usize],
        }
    };
    match choice {
        0 => ("vm.create", json!({"name": vm, "image": "img"})),
        1 => ("vm.stop", name),
        2 => ("vm.start", name),
        3 => ("vm.restart", name),
        4 => ("vm.kill", name),
        5 => ("vm.delete", name),
        6 => ("vm.set", json!({"name": vm, "vcpus": 1 + rng.below(2)})),
        7 => (
            "kernel.import",
            json!({"name": "k2", "from": inputs.kernel_dir.display().to_string()}),
        ),
        8 => ("kernel.remove", json!({"name": "k2"})),
        9 => (
            "image.register",
            json!({"name": "img2", "rootfs": inputs.rootfs.display().to_string(), "kernel": "k2"}),
        ),
        _ => ("image.delete", json!({"name": "img2"})),
    }
}

/// A request a client saw answered with success, with the op id the daemon gave it.
#[derive(Clone, Debug)]
struct Acked {
    method: &'static str,
    target: String,
    op_id: String,
}

/// Sends one request on a fresh connection and returns the op id of a successful answer
/// (`None` for a refusal, an error, or no answer because the daemon died).
async fn ask(socket: std::path::PathBuf, method: &'static str, params: Value) -> Option<String> {
    let stream = tokio::net::UnixStream::connect(&socket).await.ok()?;
    let (read, mut write) = stream.into_split();
    let line = json!({"v": 1, "id": 1, "method": method, "params": params});
    let mut bytes = serde_json::to_vec(&line).ok()?;
    bytes.push(b'\n');
    write.write_all(&bytes).await.ok()?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await.ok()?;
    let response: Response = serde_json::from_str(&answer).ok()?;
    if response.error.is_some() || response.result.is_none() {
        return None;
    }
    response.op_id
}

/// Every request a client saw succeed is a succeeded operation after recovery: recovery
/// never undoes what was acknowledged. (A `vm.restart` answers with its stop's op id, and a
/// restart of a stopped VM runs no stop: then no operation has that id, which is no loss.)
fn check_acked_succeeded(world: &World, acked: &[Acked]) -> Result<(), String> {
    for ack in acked {
        let view = world
            .ops
            .operations
            .iter()
            .find(|view| view.op_id.to_string() == ack.op_id);
        match view {
            Some(view) if view.status == OpStatus::Succeeded => {}
            None if ack.method == "vm.restart" => {}
            Some(view) => {
                return Err(format!(
                    "{} {} was answered with success (op {}), but the operation is {} after recovery",
                    ack.method, ack.target, ack.op_id, view.status
                ));
            }
            None => {
                return Err(format!(
                    "{} {} was answered with success (op {}), but no such operation is left",
                    ack.method, ack.target, ack.op_id
                ));
            }
        }
    }
    Ok(())
}

/// Check 1 for a storm: every operation ended (succeeded or rolled back; nothing stuck, as no
/// undo is made to fail), and no VM is left in a transitional state.
fn check_all_ended(world: &World) -> Result<(), String> {
    for view in &world.ops.operations {
        if !matches!(view.status, OpStatus::Succeeded | OpStatus::RolledBack) {
            return Err(format!(
                "operation {} ({}) is {} after recovery: {view:?}",
                view.op_id, view.kind, view.status
            ));
        }
    }
    Ok(())
}

async fn storm(seed: u64, rounds: u32) -> Result<(), String> {
    let inputs = Inputs::new();
    let mut rng = Rng(seed);
    let mut daemon = Daemon::new();
    daemon.start_ready(None);
    call_ok(
        &daemon,
        "kernel.import",
        json!({"name": "k", "from": inputs.kernel_dir.display().to_string()}),
    )
    .await;
    call_ok(
        &daemon,
        "image.register",
        json!({"name": "img", "rootfs": inputs.rootfs.display().to_string(), "kernel": "k"}),
    )
    .await;
    let mut acknowledged = daemon.events().await;
    for round in 1..=rounds {
        // Some rounds run on a daemon with a step that fails when it is reached.
        let step_error = (rng.below(3) == 0).then(|| {
            format!(
                "{}:error",
                STEP_ERRORS[rng.below(STEP_ERRORS.len() as u64) as usize]
            )
        });
        if let Some(failpoint) = &step_error {
            daemon.kill();
            daemon.start_ready(Some(failpoint));
            acknowledged = daemon.events().await;
        }
        let last = acknowledged.last().map_or(1, |e| e.seq.0);
        let follower = daemon.follow_from(last).await;
        let before = world(&daemon).await;
        let requests: Vec<(&str, Value)> = (0..2 + rng.below(3))
            .map(|_| pick_request(&mut rng, &inputs, &before))
            .collect();
        let socket = daemon.layout().socket_path();
        let asked: Vec<_> = requests
            .iter()
            .map(|(method, params)| {
                let (socket, method, params) = (socket.clone(), *method, params.clone());
                let target = params["name"].as_str().unwrap_or("?").to_owned();
                // A request cut off by the kill gets no answer; one answered with success is
                // acknowledged, and must stay succeeded whatever recovery does.
                tokio::spawn(async move {
                    ask(socket, method, params).await.map(|op_id| Acked {
                        method,
                        target,
                        op_id,
                    })
                })
            })
            .collect();
        // Not a synchronisation: the kill's random moment, drawn from the seed.
        let delay_ms = rng.below(400);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.kill();
        let mut acked = Vec::new();
        for answer in asked {
            // Every answer is in or its connection is closed now: the daemon is dead.
            if let Some(ack) = answer.await.map_err(|e| format!("a client: {e}"))? {
                acked.push(ack);
            }
        }
        let followed = follower.await.map_err(|e| format!("the follower: {e}"))?;
        acknowledged.extend(followed.into_iter().filter(|e| e.seq.0 > last));

        // Sometimes the restarted daemon dies too, in the middle of its recovery.
        let recovery_kill_ms = (rng.below(3) == 0).then(|| rng.below(40));
        if let Some(ms) = recovery_kill_ms {
            daemon.spawn(None);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            daemon.kill();
        }
        daemon.start_ready(None);
        let world = world(&daemon).await;
        let step_error_text = step_error
            .as_ref()
            .map(|f| format!(" (failing {f})"))
            .unwrap_or_default();
        let story = || {
            let asked: Vec<String> = requests
                .iter()
                .map(|(method, params)| {
                    format!("{method} {}", params["name"].as_str().unwrap_or("?"))
                })
                .collect();
            format!(
                "crash storm seed {seed}, round {round}: [{}]{step_error_text}, killed after {delay_ms} ms{}",
                asked.join(", "),
                recovery_kill_ms
                    .map(|ms| format!(", and again {ms} ms into recovery"))
                    .unwrap_or_default()
            )
        };
        let checked = async {
            check_all_ended(&world)?;
            check_acked_succeeded(&world, &acked)?;
            check_host(&daemon, &world).await?;
            check_acknowledged(&daemon, &acknowledged).await
        };
        if let Err(error) = checked.await {
            return Err(format!(
                "{}: {error}\n{}\nbangerd's output:\n{}",
                story(),
                replay(seed, round),
                daemon.output()
            ));
        }
        let mut kinds: Vec<String> = world
            .ops
            .operations
            .iter()
            .map(|op| op.kind.to_string())
            .collect();
        kinds.sort();
        kinds.dedup();
        println!(
            "{}: {} acknowledged, {} operations ({}), {} VMs ({})",
            story(),
            acked.len(),
            world.ops.operations.len(),
            kinds.join(" "),
            world.vms.vms.len(),
            world
                .vms
                .vms
                .iter()
                .map(|vm| format!("{} {:?}", vm.name, vm.state))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Everything this round acknowledged, read back from the log itself.
        acknowledged = daemon.events().await;
    }
    let world = world(&daemon).await;
    teardown(&mut daemon, &world)
        .await
        .map_err(|error| format!("crash storm seed {seed}: {error}\n{}", replay(seed, rounds)))
}

/// Exactly how to run a storm again up to round `round` (rounds build on each other, so a
/// failure in round R needs rounds 1..=R).
fn replay(seed: u64, round: u32) -> String {
    format!(
        "replay it with:\n  sudo BANGER_CRASH_SEED={seed} BANGER_CRASH_ROUNDS={round} cargo nextest run -p banger-replay-tests -E 'test(crash_storm)'\nor:\n  sudo BANGER_CRASH_SEED={seed} BANGER_CRASH_ROUNDS={round} cargo test -p banger-replay-tests --test replay -- crash_storm"
    )
}

fn crash_storm_sigkill_at_arbitrary_moments_with_operations_in_flight() {
    super::lab::binaries();
    let seed = std::env::var("BANGER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let rounds = std::env::var("BANGER_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    println!("crash storm: seed {seed} (BANGER_CRASH_SEED={seed} replays it), {rounds} rounds");
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(story) = runtime.block_on(storm(seed, rounds)) {
        panic!("crash storm seed {seed} FAILED\n{story}");
    }
    println!("crash storm: {rounds} rounds in {:?}", started.elapsed());
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync crash_storm_sigkill_at_arbitrary_moments_with_operations_in_flight needs(Root),
    ]
}
