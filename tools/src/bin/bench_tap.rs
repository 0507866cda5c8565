//! bench-tap: what it costs a VM's launch that banger-helper opens its tap (`open_tap`, the
//! descriptor passed over the helper's socket, as an unprivileged bangerd gets QEMU's) instead
//! of the VMM opening `/dev/net/tun` itself by the tap's name (what a VMM running as root, or
//! Firecracker, does), measured side by side in the same run on the same tap.
//!
//! A real banger-helper runs in a network namespace of its own (nothing touches the host's
//! network); it makes the network and one tap owned by this user. Then, `--rounds` times each,
//! alternating:
//! - direct: open `/dev/net/tun` and `TUNSETIFF` the tap (inside the namespace), close;
//! - helper: `open_tap` through the helper (connect, frame, SCM_RIGHTS, the client's
//!   `TUNGETIFF` check), close.
//!
//! Run as root: `cargo build --release -p banger --bins -p banger-tools --bin bench-tap &&
//! target/release/bench-tap` (banger-helper is taken from the directory of this binary).

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Instant;

use banger_helper::HelperClient;
use banger_helper::sandbox::Sandbox;
use banger_tools::stats::{Summary, us};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark a tap opened by banger-helper against one opened directly")]
struct Args {
    /// Opens per way.
    #[arg(long, default_value_t = 2000)]
    rounds: usize,
}

const TAP: &str = "bt7a9";

fn main() {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let helper_bin = bin_dir.join("banger-helper");
    assert!(
        helper_bin.exists(),
        "banger-helper not found next to bench-tap: build banger's programs first"
    );
    let dir = tempfile::Builder::new()
        .prefix("bench-tap-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let sandbox = Sandbox::start(&helper_bin, dir.path(), Stdio::null()).expect("start the helper");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = HelperClient::new(sandbox.socket());
    runtime
        .block_on(client.ensure_network(&banger_helper::networks::default_network()))
        .expect("ensure_network");
    runtime
        .block_on(client.ensure_tap(TAP, "banger0"))
        .expect("ensure_tap");

    // This thread joins the namespace, so that `/dev/net/tun` attaches to the sandbox's tap.
    let namespace = sandbox.namespace().expect("the sandbox's namespace");
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");

    let mut direct = Vec::with_capacity(args.rounds);
    let mut helper = Vec::with_capacity(args.rounds);
    // The helper closes its own copy of a passed descriptor just after sending it; until it
    // has, the tap is still attached and a direct open is refused (EBUSY): such attempts are
    // retried and not timed.
    let mut busy = 0;
    for _ in 0..args.rounds {
        let fd = loop {
            let started = Instant::now();
            match open_directly(TAP) {
                Ok(fd) => {
                    direct.push(started.elapsed());
                    break fd;
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    busy += 1;
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                Err(e) => panic!("open the tap directly: {e}"),
            }
        };
        drop(fd);
        let started = Instant::now();
        let fd = runtime
            .block_on(client.open_tap(TAP))
            .expect("open the tap through banger-helper");
        helper.push(started.elapsed());
        drop(fd);
    }
    let direct = Summary::of(&mut direct);
    let helper = Summary::of(&mut helper);
    println!(
        "bench-tap: {} opens of tap {TAP} each way, alternating ({busy} direct attempts found the helper's copy still open and were retried, untimed)",
        args.rounds
    );
    print_row("direct (/dev/net/tun + TUNSETIFF)", &direct);
    print_row("banger-helper open_tap (fd passed)", &helper);
    println!(
        "ratio p50: {:.1}x; what the helper adds to a VM's launch: {} at p50, {} at p99",
        helper.p50.as_secs_f64() / direct.p50.as_secs_f64(),
        us(helper.p50.saturating_sub(direct.p50)),
        us(helper.p99.saturating_sub(direct.p99)),
    );
}

fn print_row(what: &str, summary: &Summary) {
    println!(
        "  {what:<38} p50 {:>10}  p99 {:>10}  max {:>10}",
        us(summary.p50),
        us(summary.p99),
        us(summary.max)
    );
}

/// What a VMM opening its tap by name does (Firecracker's `Tap::open_named`).
fn open_directly(name: &str) -> std::io::Result<OwnedFd> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: an open /dev/net/tun and a valid ifreq for the call.
    if unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(tun))
}
