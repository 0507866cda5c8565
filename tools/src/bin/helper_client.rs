//! helper-client: one request to banger-helper, as the user who runs it, and its answer as
//! one line of JSON on stdout (an error: `{"error": "..."}` and exit status 1).
//!
//! For looking at a deployed helper the way bangerd sees it (which networks it gives this
//! user, whether it makes them, whether it hands over taps and `/dev/kvm`), and for the tests
//! that run banger-helper under a real systemd, where no bangerd of the test's own asks.
//!
//! ```text
//! helper-client [--socket PATH] version | networks | ensure-network | list-taps
//!                               | ensure-tap TAP | open-tap TAP | delete-tap TAP
//!                               | open-kvm | remove-network | route-dns
//!                               | jail | launch-firecracker VM CONSOLE
//!                               | kill-vmm VM PID START_TIME_TICKS | remove-jail VM
//! ```
//!
//! `launch-firecracker` passes CONSOLE (a file this user owns, opened for appending) as the
//! VMM's output, as bangerd passes a VM's console log.
//!
//! `ensure-network`, `ensure-tap` and `remove-network` take this user's first configured
//! network (what `networks` lists). `open-tap` and `open-kvm` report what arrived: the
//! interface the descriptor is attached to, or that it is KVM's device.

use std::process::ExitCode;

use banger_helper::HelperClient;
use serde_json::{Value, json};

const DEFAULT_SOCKET: &str = "/run/banger/helper.sock";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let socket = match args.iter().position(|a| a == "--socket") {
        Some(at) if at + 1 < args.len() => {
            let socket = args.remove(at + 1);
            args.remove(at);
            socket
        }
        Some(_) => return fail("--socket needs a path"),
        None => DEFAULT_SOCKET.to_owned(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e.to_string()),
    };
    let client = HelperClient::new(socket);
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match runtime.block_on(request(&client, &words)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

fn fail(error: &str) -> ExitCode {
    println!("{}", json!({ "error": error }));
    ExitCode::FAILURE
}

async fn request(client: &HelperClient, words: &[&str]) -> Result<Value, String> {
    let text = |e: banger_helper::HelperError| e.to_string();
    // This user's network, as the helper's configuration gives it.
    let network = async || -> Result<banger_helper::NetworkSpec, String> {
        let networks = client.networks().await.map_err(text)?;
        networks
            .into_iter()
            .next()
            .map(|state| state.spec)
            .ok_or_else(|| "banger-helper gives this user no network".to_owned())
    };
    match words {
        ["version"] => Ok(json!({ "version": client.version().await.map_err(text)? })),
        ["networks"] => {
            let networks = client.networks().await.map_err(text)?;
            Ok(json!({ "networks": networks.iter().map(|state| json!({
                "bridge": state.spec.bridge,
                "gateway": state.spec.gateway.to_string(),
                "prefix_len": state.spec.prefix_len,
                "bridge_exists": state.bridge,
                "nat": state.nat,
            })).collect::<Vec<_>>() }))
        }
        ["ensure-network"] => {
            let spec = network().await?;
            client.ensure_network(&spec).await.map_err(text)?;
            Ok(json!({ "ensured": spec.bridge }))
        }
        ["remove-network"] => {
            let spec = network().await?;
            client.remove_network(&spec.bridge).await.map_err(text)?;
            Ok(json!({ "removed": spec.bridge }))
        }
        ["list-taps"] => Ok(json!({ "taps": client.list_taps().await.map_err(text)? })),
        ["ensure-tap", tap] => {
            let spec = network().await?;
            client.ensure_tap(tap, &spec.bridge).await.map_err(text)?;
            Ok(json!({ "tap": tap, "bridge": spec.bridge }))
        }
        ["delete-tap", tap] => {
            client.delete_tap(tap).await.map_err(text)?;
            Ok(json!({ "deleted": tap }))
        }
        // The client checks what arrives (TUNGETIFF names the tap; KVM answers its API
        // version): an answer here means the descriptor is what it claims.
        ["open-tap", tap] => {
            client.open_tap(tap).await.map_err(text)?;
            Ok(json!({ "opened": tap }))
        }
        ["open-kvm"] => {
            client.open_kvm().await.map_err(text)?;
            Ok(json!({ "opened": banger_helper::kvm::KVM_DEVICE }))
        }
        ["route-dns"] => {
            let spec = network().await?;
            let route = client
                .route_dns(&spec.bridge, spec.gateway)
                .await
                .map_err(text)?;
            Ok(json!({ "route_dns": format!("{route:?}") }))
        }
        ["jail"] => {
            let jail = client.jail().await.map_err(text)?;
            Ok(json!({ "jail": jail.map(|jail| json!({
                "jailer": jail.jailer,
                "firecracker": jail.firecracker,
                "dir": jail.dir,
            })) }))
        }
        ["launch-firecracker", vm, console] => {
            let console = std::fs::OpenOptions::new()
                .append(true)
                .open(console)
                .map_err(|e| format!("cannot open {console}: {e}"))?;
            let launched = client
                .launch_firecracker(vm, &console)
                .await
                .map_err(text)?;
            Ok(json!({
                "pid": launched.pid,
                "start_time_ticks": launched.start_time_ticks,
                "root": launched.root,
            }))
        }
        ["kill-vmm", vm, pid, ticks] => {
            let pid = pid
                .parse()
                .map_err(|_| format!("pid {pid:?} is not a number"))?;
            let ticks = ticks
                .parse()
                .map_err(|_| format!("start time {ticks:?} is not a number"))?;
            client.kill_vmm(vm, pid, ticks).await.map_err(text)?;
            Ok(json!({ "killed": pid }))
        }
        ["remove-jail", vm] => {
            client.remove_jail(vm).await.map_err(text)?;
            Ok(json!({ "removed": vm }))
        }
        _ => Err(format!(
            "unknown request {words:?}: version, networks, ensure-network, remove-network, \
             list-taps, ensure-tap TAP, delete-tap TAP, open-tap TAP, open-kvm, route-dns, jail, \
             launch-firecracker VM CONSOLE, kill-vmm VM PID START_TIME_TICKS, remove-jail VM"
        )),
    }
}
