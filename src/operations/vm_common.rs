//! What the VM operations share: the services they run against ([`VmHost`]), the boot state
//! of `vm.create` and `vm.start` ([`BootState`]), the network allocation, and the four boot
//! steps both kinds run (`launch-vmm`, `configure`, `instance-start`, `wait-for-agent`).
//! They drive the VM's own backend (`OpCx::vmm`, the one its log records). Step names are
//! schema: `launch-vmm` was `launch-firecracker` before QEMU, and logs that say so still
//! recover ([`super::Step::former_names`]).
//!
//! | step                 | intent                      | ensure                                           | undo                                                  |
//! |----------------------|-----------------------------|--------------------------------------------------|-------------------------------------------------------|
//! | `launch-vmm`         | socket `api.sock`, and the  | spawn the VMM (own process group) unless the one | SIGKILL the recorded process (pid + start time), and  |
//! |                      | agent's: `vsock.sock`       | recorded in the state still runs (QEMU: with its | any process the backend launched for the intended     |
//! |                      | (Firecracker) or            | whole machine, stopped: `-S`); produces          | socket (`--api-sock` / `-qmp unix:…`: a crash before  |
//! |                      | `agent.sock` (QEMU)         | `Process{pid,start_time_ticks}` + both sockets   | `StepSucceeded`); remove the sockets                  |
//! | `configure`          | —                           | Firecracker: machine config, boot source (kernel | nothing (the VMM dies with `launch-vmm`'s undo)        |
//! |                      |                             | command line carries the guest IP), root + work  |                                                       |
//! |                      |                             | drive, vsock. QEMU: check QMP and the command    |                                                       |
//! |                      |                             | line are this spec's                             |                                                       |
//! | `instance-start`     | —                           | InstanceStart / `cont` (a running one is fine)   | nothing                                               |
//! | `wait-for-agent`     | —                           | agent connect (vsock, or bangerd's serial        | nothing                                               |
//! |                      |                             | session) + hello + health, retried until the     |                                                       |
//! |                      |                             | boot timeout; fails at once if the VMM died      |                                                       |
//!
//! Invariants:
//! - Undo acts only inside the VMs directory (`vms/`): a socket path anywhere else in a
//!   handle is refused, whatever the log says.
//! - A process is only ever signalled when its start time matches the record (or, for a crash
//!   before the pid was recorded, when its command line names this VM's API socket).
//! - Network allocations are unique among VMs: an address is in use while the ledger holds it
//!   (a VM owns it), while an unresolved operation's step recorded it, or while an `allocate`
//!   step of this process has handed it out and not yet seen its operation end.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_events::{Handle, Journal, OpId, VmId, VmSpec, VmmKind};
use banger_projections::{ProcessRef, Projections};

use super::{BoxFuture, OpCx, Step, StepError, tap_fill};
use crate::agent::boot::{GuestBootArgs, HaltAction, Ipv4Cidr};
use crate::agent::client::AgentClient;
use crate::agent::protocol::MIN_PROTOCOL_VERSION;
use crate::config::Config;
use crate::host::backends::Backends;
use crate::host::guest_agent::{AgentEndpoint, AgentLinks};
use crate::host::network::{GuestSubnet, host_name_servers, interface_exists, tap_name};
use crate::host::process::Liveness;
use crate::host::vmm::{
    AgentTransport, CONSOLE_TAIL_BYTES, DriveSpec, LaunchSpec, Launched, NetSpec, Vmm, VsockSpec,
    console_tail,
};
use crate::paths::Layout;

/// The first vsock context id a guest may have (0–2 are reserved).
pub const FIRST_GUEST_CID: u32 = 3;

/// The services VM operations run against, shared by every VM request of one daemon.
pub struct VmHost {
    /// Every VMM backend; a VM uses the one its log records.
    pub backends: Arc<Backends>,
    /// bangerd's connections to guest agents.
    pub agents: Arc<AgentLinks>,
    pub config: Config,
    pub journal: Arc<Journal<Projections>>,
    pub layout: Layout,
    /// Names of VMs whose `vm.create` is between its checks and its end. The claim table keys
    /// on the whole target (id and name), so two creates of one name would not collide there.
    creating: Mutex<HashSet<String>>,
    /// Allocations handed out by `allocate` steps of operations still running here.
    reserved: Mutex<HashMap<OpId, Allocation>>,
    /// Spare taps handed out by `allocate` steps of operations still running here.
    reserved_taps: Mutex<HashMap<OpId, String>>,
    /// What the latest boot of each VM said about ssh (`vm show` prints it).
    pub ssh: super::vm_ssh::SshStatuses,
}

impl VmHost {
    pub fn new(
        backends: Arc<Backends>,
        agents: Arc<AgentLinks>,
        config: Config,
        journal: Arc<Journal<Projections>>,
        layout: Layout,
    ) -> VmHost {
        VmHost {
            backends,
            agents,
            config,
            journal,
            layout,
            creating: Mutex::default(),
            reserved: Mutex::default(),
            reserved_taps: Mutex::default(),
            ssh: Default::default(),
        }
    }

    /// Reserves `name` for a create; `None` when another create of that name is running.
    pub fn reserve_name(self: &Arc<Self>, name: &str) -> Option<NameReservation> {
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if !creating.insert(name.to_owned()) {
            return None;
        }
        Some(NameReservation {
            host: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Forgets the allocation operation `op_id` made: its operation has ended, so the log
    /// (the ledger after success, nothing after a rollback) now says whether it is in use.
    pub fn release_reservation(&self, op_id: OpId) {
        self.reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&op_id);
        self.reserved_taps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&op_id);
    }

    /// Takes a spare tap from the pool for `op_id` (the same one again when asked twice), or
    /// `None` when the pool is empty.
    ///
    /// The view and the reservations are never locked together (see the lock order in
    /// docs/ARCHITECTURE.md): a spare is picked from a copy of the view, reserved, then checked
    /// against a fresh view, and given back to try again if someone took it meanwhile.
    pub fn take_spare_tap(&self, op_id: OpId) -> Option<String> {
        if let Some(tap) = self.lock_reserved_taps().get(&op_id) {
            return Some(tap.clone());
        }
        for _ in 0..OPTIMISTIC_TRIES {
            let free = tap_fill::free_taps(&self.journal.view(), &HashSet::new());
            let tap = {
                let mut reserved = self.lock_reserved_taps();
                if let Some(tap) = reserved.get(&op_id) {
                    return Some(tap.clone());
                }
                let taken: HashSet<&String> = reserved.values().collect();
                let tap = free.into_iter().find(|tap| !taken.contains(tap))?;
                reserved.insert(op_id, tap.clone());
                tap
            };
            if tap_fill::free_taps(&self.journal.view(), &HashSet::new()).contains(&tap) {
                return Some(tap);
            }
            self.lock_reserved_taps().remove(&op_id);
        }
        None
    }

    /// The spare taps creates of this process have taken and not yet given back or kept.
    pub fn reserved_taps(&self) -> HashSet<String> {
        self.lock_reserved_taps().values().cloned().collect()
    }

    fn lock_reserved_taps(&self) -> std::sync::MutexGuard<'_, HashMap<OpId, String>> {
        // Every mutation is a single insert or remove, so a poisoned map is still whole.
        self.reserved_taps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_reserved(&self) -> std::sync::MutexGuard<'_, HashMap<OpId, Allocation>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks the lowest free guest IP (with its MAC) and vsock CID, and reserves them for
    /// `op_id`. Free means: not in the ledger, not recorded by any unresolved operation's
    /// step, and not reserved by another operation of this process.
    ///
    /// As with spare taps, the view and the reservations are never locked together: the pick
    /// is made from a copy of the view and the reservations, then checked against a fresh view
    /// (an operation that ended in between is in it, since it gives its reservation back only
    /// after its last event is folded).
    pub fn allocate(&self, op_id: OpId, subnet: GuestSubnet) -> Result<Allocation, StepError> {
        if let Some(existing) = self.lock_reserved().get(&op_id) {
            return Ok(*existing);
        }
        for _ in 0..OPTIMISTIC_TRIES {
            let (mut ips, mut cids) = self.allocations_in_log();
            let allocation = {
                let mut reserved = self.lock_reserved();
                if let Some(existing) = reserved.get(&op_id) {
                    return Ok(*existing);
                }
                for allocation in reserved.values() {
                    ips.insert(allocation.ip);
                    cids.insert(allocation.cid);
                }
                let ip = subnet
                    .guest_addresses()
                    .map(|address| address.octets())
                    .find(|ip| !ips.contains(ip))
                    .ok_or_else(|| {
                        StepError::Other(format!(
                            "no free guest IP left in {subnet} ({} VMs hold its addresses); delete a VM first, or give banger a larger subnet (network.gateway, and banger-helper's --network)",
                            ips.len()
                        ))
                    })?;
                let cid = (FIRST_GUEST_CID..)
                    .find(|cid| !cids.contains(cid))
                    .ok_or_else(|| StepError::Other("no free vsock CID".into()))?;
                let allocation = Allocation {
                    ip,
                    mac: mac_for(ip),
                    cid,
                };
                reserved.insert(op_id, allocation);
                allocation
            };
            let (ips, cids) = self.allocations_in_log();
            if !ips.contains(&allocation.ip) && !cids.contains(&allocation.cid) {
                return Ok(allocation);
            }
            self.lock_reserved().remove(&op_id);
        }
        Err(StepError::Other(
            "the guest network allocation kept changing under this create; retry".into(),
        ))
    }

    /// The guest IPs and vsock CIDs the log holds: in the ledger, or recorded by a step of an
    /// unresolved operation.
    fn allocations_in_log(&self) -> (BTreeSet<[u8; 4]>, BTreeSet<u32>) {
        let mut ips = BTreeSet::new();
        let mut cids = BTreeSet::new();
        let mut note = |handle: &Handle| match handle {
            Handle::Ip { addr } => {
                ips.insert(*addr);
            }
            Handle::VsockCid { cid } => {
                cids.insert(*cid);
            }
            _ => {}
        };
        let view = self.journal.view();
        view.handles.keys().for_each(&mut note);
        for op in view.unresolved() {
            for step in &op.steps {
                step.produced.iter().chain(&step.intent).for_each(&mut note);
            }
        }
        (ips, cids)
    }
}

/// How often an optimistic pick (a spare tap, an allocation) is retried when the log changed
/// under it. Each retry reads a fresh view, so running out takes a storm of concurrent changes.
const OPTIMISTIC_TRIES: usize = 16;

/// A name held by a running create; dropping it frees the name.
pub struct NameReservation {
    host: Arc<VmHost>,
    name: String,
}

impl Drop for NameReservation {
    fn drop(&mut self) {
        self.host
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

/// A VM's place on the guest network and on vsock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    pub cid: u32,
}

impl Allocation {
    pub fn handles(&self) -> Vec<Handle> {
        vec![
            Handle::Ip { addr: self.ip },
            Handle::Mac { addr: self.mac },
            Handle::VsockCid { cid: self.cid },
        ]
    }

    /// The allocation among `handles` (a VM's ledger entries, a step's output).
    pub fn from_handles<'a>(handles: impl IntoIterator<Item = &'a Handle>) -> Option<Allocation> {
        let (mut ip, mut mac, mut cid) = (None, None, None);
        for handle in handles {
            match handle {
                Handle::Ip { addr } => ip = Some(*addr),
                Handle::Mac { addr } => mac = Some(*addr),
                Handle::VsockCid { cid: c } => cid = Some(*c),
                _ => {}
            }
        }
        Some(Allocation {
            ip: ip?,
            mac: mac?,
            cid: cid?,
        })
    }
}

/// `02:fc:` (locally administered, unicast) followed by the four bytes of the IP, so the MAC
/// says which guest it is.
pub fn mac_for(ip: [u8; 4]) -> [u8; 6] {
    [0x02, 0xfc, ip[0], ip[1], ip[2], ip[3]]
}

/// `aa:bb:cc:dd:ee:ff`, as Firecracker's `guest_mac` wants it.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The kernel command line of VM `name` at `ip` on backend `vmm`: the serial console, then
/// what the guest's side of the boot contract reads (`banger_agent::boot::GuestBootArgs`:
/// hostname, eth0's address, gateway and DNS, the work disk, how to halt), and the legacy
/// `ip=` form, which kernels with `IP_PNP` would apply themselves.
///
/// A Firecracker guest halts by rebooting (Firecracker has no ACPI power-off and ends when its
/// guest reboots, with `reboot=k`); QEMU's microvm powers off through ACPI.
pub fn boot_args(
    name: &str,
    ip: [u8; 4],
    vmm: VmmKind,
    dns: &[Ipv4Addr],
    subnet: GuestSubnet,
) -> String {
    let [a, b, c, d] = ip;
    let gateway = subnet.gateway;
    let netmask = subnet.netmask();
    let contract = GuestBootArgs {
        hostname: Some(name.to_owned()),
        ip: Some(Ipv4Cidr {
            address: Ipv4Addr::from(ip),
            prefix_len: subnet.prefix_len,
        }),
        gateway: Some(gateway),
        dns: dns.to_vec(),
        work_device: Some(WORK_DISK_DEVICE.to_owned()),
        halt: match vmm {
            VmmKind::Firecracker => HaltAction::Reboot,
            VmmKind::Qemu => HaltAction::PowerOff,
        },
        ..GuestBootArgs::default()
    };
    format!(
        "console=ttyS0 reboot=k panic=1 pci=off {} ip={a}.{b}.{c}.{d}::{gateway}:{netmask}::eth0:off",
        contract.to_kernel_args()
    )
}

/// The guest's name for the work disk: the second virtio block device (the root is first).
pub const WORK_DISK_DEVICE: &str = "/dev/vdb";

/// What `vm.create` and `vm.start` carry from step to step.
pub struct BootState {
    pub host: Arc<VmHost>,
    pub vm_id: VmId,
    pub name: String,
    pub spec: VmSpec,
    /// The VMM backend: what create chose (and records), or what the log records (start).
    pub vmm: VmmKind,
    /// Why that backend (what create records beside it).
    pub vmm_reason: String,
    /// The image's rootfs (create clones it).
    pub image_rootfs: PathBuf,
    pub kernel_path: PathBuf,
    pub initrd_path: Option<PathBuf>,
    /// Filled by `allocate` (create), or from the ledger (start).
    pub allocation: Option<Allocation>,
    /// The host tap the guest's eth0 is plugged into; filled by `network`.
    pub tap: Option<String>,
    /// The guest's name servers (`banger.dns=`), decided by `network`
    /// ([`crate::host::network::GuestNetwork::guest_name_servers`]); empty until then, which
    /// gives the host's.
    pub dns: Vec<Ipv4Addr>,
    /// Filled by `launch-vmm`.
    pub launched: Option<Launched>,
    /// The VMM child this process spawned: handed to the supervisor when the operation ends
    /// well, so that its exit status is seen.
    pub child: Option<tokio::process::Child>,
    /// Filled by `ssh-setup` when the guest presented a host key the VM has none recorded
    /// for: recorded with the operation's success.
    pub host_key: Option<banger_events::VmHostKeyRecorded>,
}

impl BootState {
    /// What `vmm` is told to run; the guest agent is reached over the transport the backend
    /// gives the guest (vsock for Firecracker, a virtio-serial port for QEMU).
    pub fn launch_spec(
        &self,
        layout: &Layout,
        vmm: &dyn Vmm,
        subnet: GuestSubnet,
    ) -> Result<LaunchSpec, StepError> {
        let transport = vmm.agent_transport();
        let allocation = self
            .allocation
            .ok_or_else(|| StepError::Other("the VM has no IP and vsock CID allocated".into()))?;
        let vcpus = u8::try_from(self.spec.vcpus)
            .map_err(|_| StepError::Other(format!("{} vCPUs is too many", self.spec.vcpus)))?;
        let mem_mib = u32::try_from(self.spec.memory_mib).map_err(|_| {
            StepError::Other(format!(
                "{} MiB of memory is too much",
                self.spec.memory_mib
            ))
        })?;
        Ok(LaunchSpec {
            id: self.vm_id.to_string(),
            api_socket: layout.vm_api_socket(self.vm_id),
            console_log: layout.vm_console_log(self.vm_id),
            vmm_log: Some(layout.vm_vmm_log(self.vm_id, vmm.name())),
            vcpus,
            mem_mib,
            kernel: self.kernel_path.clone(),
            initrd: self.initrd_path.clone(),
            boot_args: boot_args(
                &self.name,
                allocation.ip,
                self.vmm,
                &self.name_servers(subnet),
                subnet,
            ),
            drives: vec![
                DriveSpec {
                    id: "rootfs".into(),
                    path: layout.vm_root_disk(self.vm_id),
                    root: true,
                    read_only: false,
                },
                DriveSpec {
                    id: "work".into(),
                    path: layout.vm_work_disk(self.vm_id),
                    root: false,
                    read_only: false,
                },
            ],
            net: Some(NetSpec {
                tap: self
                    .tap
                    .clone()
                    .ok_or_else(|| StepError::Other("the VM has no tap yet".into()))?,
                mac: Some(format_mac(allocation.mac)),
            }),
            vsock: (transport == AgentTransport::Vsock).then(|| VsockSpec {
                cid: allocation.cid,
                uds_path: layout.vm_vsock_socket(self.vm_id),
            }),
            agent_serial: (transport == AgentTransport::VirtioSerial)
                .then(|| layout.vm_agent_socket(self.vm_id)),
        })
    }

    fn name_servers(&self, subnet: GuestSubnet) -> Vec<Ipv4Addr> {
        if self.dns.is_empty() {
            host_name_servers(&subnet.gateway)
        } else {
            self.dns.clone()
        }
    }

    fn launched(&self) -> Result<&Launched, StepError> {
        self.launched
            .as_ref()
            .ok_or_else(|| StepError::Other("no VMM process was launched".into()))
    }
}

/// The VM a VM operation targets.
pub fn target_vm(cx: &OpCx<'_>) -> Result<VmId, StepError> {
    match cx.target {
        banger_events::Target::Vm { vm_id, .. } => Ok(*vm_id),
        other => Err(StepError::Other(format!("{other} is not a VM"))),
    }
}

pub fn socket_handle(path: &Path) -> Handle {
    Handle::Socket {
        path: path.display().to_string(),
    }
}

pub fn file_handle(path: &Path) -> Handle {
    Handle::File {
        path: path.display().to_string(),
    }
}

/// `path` from a handle, when it lies inside the VMs directory; an error otherwise, so that a
/// damaged log cannot aim an undo elsewhere.
pub fn path_in_vms(layout: &Layout, path: &str) -> Result<PathBuf, StepError> {
    let path = PathBuf::from(path);
    let vms = layout.vms_dir();
    if path.starts_with(&vms)
        && path
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir))
        && path != vms
    {
        Ok(path)
    } else {
        Err(StepError::Other(format!(
            "refusing to touch {}: it is not inside {}",
            path.display(),
            vms.display()
        )))
    }
}

/// Removes a file; a missing one is fine.
pub fn remove_file_if_present(path: &Path) -> Result<(), StepError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StepError::io(
            format!("cannot remove {}", path.display()),
            error,
        )),
    }
}

/// The VMM the log records for VM `vm_id`: its process (pid and start time) and the control
/// socket every VMM of the VM is given (its path derives from the VM id alone).
pub fn recorded_vmm(layout: &Layout, vm_id: VmId, process: ProcessRef) -> Launched {
    Launched {
        pid: process.pid,
        start_time_ticks: process.start_time_ticks,
        api_socket: layout.vm_api_socket(vm_id),
    }
}

/// Kills `vm` through the backend; a process already dead, or whose pid was reused, is fine.
pub async fn kill_vmm(vmm: &dyn Vmm, vm: &Launched) -> Result<(), StepError> {
    vmm.kill(vm)
        .await
        .map(drop)
        .map_err(|error| StepError::Other(format!("cannot kill VMM process {}: {error}", vm.pid)))
}

/// Undoes a launch from its handles: kills the recorded process, then any process the
/// backend started for a recorded socket (a crash before the pid reached the log), then
/// removes the sockets.
pub async fn undo_launch(cx: &OpCx<'_>, handles: &[Handle]) -> Result<(), StepError> {
    let vm_id = target_vm(cx)?;
    for handle in handles {
        if let Handle::Process {
            pid,
            start_time_ticks,
        } = handle
        {
            let process = ProcessRef {
                pid: *pid,
                start_time_ticks: *start_time_ticks,
            };
            kill_vmm(cx.vmm, &recorded_vmm(cx.layout, vm_id, process)).await?;
        }
    }
    for handle in handles {
        if let Handle::Socket { path } = handle {
            let path = path_in_vms(cx.layout, path)?;
            for orphan in cx.vmm.launched_for(&path).await {
                kill_vmm(cx.vmm, &orphan).await?;
            }
            remove_file_if_present(&path)?;
            // The fake firecracker's guest agent listens beside the vsock socket.
            let mut guest = path.clone().into_os_string();
            guest.push(".guest");
            remove_file_if_present(Path::new(&guest))?;
        }
    }
    Ok(())
}

/// `network`: the VM's tap exists on the bridge. The tap is a spare from the pool when
/// `allocate` found one (it exists already, so the root helper is not asked), else the VM's
/// own `bt<vm id>`, made now. `vm.create` removes its own tap when it rolls back (a spare
/// stays in the pool: the ledger still gives it to the daemon); `vm.start` leaves the tap on
/// undo, because the VM owns its tap from create to delete.
pub struct Network {
    pub remove_on_undo: bool,
}

impl Step<BootState> for Network {
    fn name(&self) -> &'static str {
        "network"
    }

    fn intent(&self, _: &OpCx<'_>, state: &BootState) -> Vec<Handle> {
        vec![Handle::Tap {
            name: state.tap.clone().unwrap_or_else(|| tap_name(state.vm_id)),
        }]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut BootState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let tap = state.tap.clone().unwrap_or_else(|| tap_name(state.vm_id));
            // A tap that exists was made by banger (a spare, or this VM's own from an earlier
            // attempt or boot); one that does not (a host reboot) is made again.
            if !interface_exists(&tap) {
                cx.network
                    .ensure_tap(&tap)
                    .await
                    .map_err(|error| StepError::Other(error.to_string()))?;
            }
            state.tap = Some(tap.clone());
            // The bridge exists now: bangerd's DNS server can serve on its address.
            state.dns = cx.network.guest_name_servers().await;
            Ok(vec![Handle::Tap { name: tap }])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            if !self.remove_on_undo {
                return Ok(());
            }
            // Only the VM's own tap: a spare goes back to the pool as it is.
            let own = tap_name(target_vm(cx)?);
            let own: Vec<Handle> = handles
                .iter()
                .filter(|handle| matches!(handle, Handle::Tap { name } if *name == own))
                .cloned()
                .collect();
            release_taps(cx, &own).await
        })
    }
}

/// Removes every tap `handles` names (absent ones are fine).
pub async fn release_taps(cx: &OpCx<'_>, handles: &[Handle]) -> Result<(), StepError> {
    for handle in handles {
        if let Handle::Tap { name } = handle {
            cx.network
                .release_tap(name)
                .await
                .map_err(|error| StepError::Other(error.to_string()))?;
        }
    }
    Ok(())
}

pub struct LaunchVmm;

impl Step<BootState> for LaunchVmm {
    fn name(&self) -> &'static str {
        "launch-vmm"
    }

    /// Its name before QEMU joined Firecracker.
    fn former_names(&self) -> &'static [&'static str] {
        &["launch-firecracker"]
    }

    fn intent(&self, cx: &OpCx<'_>, state: &BootState) -> Vec<Handle> {
        let agent_socket = agent_endpoint(cx.layout, state.vm_id, cx.vmm.agent_transport());
        vec![
            socket_handle(&cx.layout.vm_api_socket(state.vm_id)),
            socket_handle(agent_socket.socket()),
        ]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut BootState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let produced = |launched: &Launched| {
                let mut handles = vec![Handle::Process {
                    pid: launched.pid,
                    start_time_ticks: launched.start_time_ticks,
                }];
                handles.extend(self.intent(cx, state));
                handles
            };
            if let Some(launched) = &state.launched
                && launched.liveness().ok() == Some(Liveness::Alive)
            {
                return Ok(produced(launched));
            }
            let spec = state.launch_spec(cx.layout, cx.vmm, cx.network.guest_subnet())?;
            let spawned = cx
                .vmm
                .spawn(&spec)
                .await
                .map_err(|e| StepError::Other(e.to_string()))?;
            let handles = produced(&spawned.launched);
            state.launched = Some(spawned.launched);
            state.child = spawned.child;
            Ok(handles)
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_launch(cx, handles))
    }
}

pub struct Configure;

impl Step<BootState> for Configure {
    fn name(&self) -> &'static str {
        "configure"
    }

    fn intent(&self, _: &OpCx<'_>, _: &BootState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut BootState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let spec = state.launch_spec(cx.layout, cx.vmm, cx.network.guest_subnet())?;
            let launched = state.launched()?;
            cx.vmm
                .configure(launched, &spec)
                .await
                .map_err(|e| StepError::Other(e.to_string()))?;
            Ok(Vec::new())
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

pub struct InstanceStart;

impl Step<BootState> for InstanceStart {
    fn name(&self) -> &'static str {
        "instance-start"
    }

    fn intent(&self, _: &OpCx<'_>, _: &BootState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut BootState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let launched = state.launched()?;
            cx.vmm
                .start(launched)
                .await
                .map_err(|e| StepError::Other(e.to_string()))?;
            Ok(Vec::new())
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

pub struct WaitForAgent;

impl Step<BootState> for WaitForAgent {
    fn name(&self) -> &'static str {
        "wait-for-agent"
    }

    fn intent(&self, _: &OpCx<'_>, _: &BootState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut BootState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let launched = state.launched()?.clone();
            let timeout = state.host.config.boot_timeout;
            let endpoint = agent_endpoint(cx.layout, state.vm_id, cx.vmm.agent_transport());
            let console = cx.layout.vm_console_log(state.vm_id);
            wait_for_agent(cx.agents, &launched, &endpoint, &console, timeout).await?;
            Ok(Vec::new())
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Where the agent of VM `vm_id` is reached when its backend gives the guest `transport`.
pub fn agent_endpoint(layout: &Layout, vm_id: VmId, transport: AgentTransport) -> AgentEndpoint {
    AgentEndpoint {
        transport,
        vsock_socket: layout.vm_vsock_socket(vm_id),
        serial_socket: layout.vm_agent_socket(vm_id),
    }
}

/// Polls the guest agent until it says hello and reports its health, the VMM dies, or
/// `timeout` passes.
pub async fn wait_for_agent(
    agents: &AgentLinks,
    launched: &Launched,
    endpoint: &AgentEndpoint,
    console: &Path,
    timeout: Duration,
) -> Result<(), StepError> {
    let deadline = Instant::now() + timeout;
    // A serial session waits for the guest's agent to open its port, which is the boot
    // itself: give one attempt most of the boot, while the VMM is watched alongside. A vsock
    // connect fails fast until the guest listens, so it is retried often.
    let attempt_timeout = match endpoint.transport {
        AgentTransport::Vsock => Duration::from_secs(2),
        AgentTransport::VirtioSerial => Duration::from_secs(10),
    };
    loop {
        if launched.liveness().map(Liveness::is_dead).unwrap_or(false) {
            return Err(StepError::Other(format!(
                "the VMM (pid {}) exited while the guest booted; console tail:\n{}",
                launched.pid,
                console_tail(console, CONSOLE_TAIL_BYTES)
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = attempt_timeout.min(left).max(Duration::from_millis(100));
        let attempt = async {
            let stream = agents
                .connect(endpoint, budget)
                .await
                .map_err(|e| e.to_string())?;
            let mut client = AgentClient::handshake_as(stream, "bangerd", MIN_PROTOCOL_VERSION)
                .await
                .map_err(|e| e.to_string())?;
            client.health().await.map_err(|e| e.to_string())
        };
        let vmm_died = async {
            while !launched.liveness().map(Liveness::is_dead).unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let last_error = tokio::select! {
            answered = tokio::time::timeout(budget + Duration::from_secs(3), attempt) => match answered {
                Ok(Ok(_health)) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => format!("the agent did not answer within {} ms", budget.as_millis()),
            },
            () = vmm_died => continue,
        };
        if Instant::now() >= deadline {
            return Err(StepError::Other(format!(
                "the guest agent did not answer within {} ms (last error: {last_error}); console tail:\n{}",
                timeout.as_millis(),
                console_tail(console, CONSOLE_TAIL_BYTES)
            )));
        }
        // Polling a socket that appears when the guest is up: a short pause between tries.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
