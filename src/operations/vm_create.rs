//! `vm.create`: defines a VM from an image and a kernel, gives it disks, a network place and a
//! VMM, and boots it until its guest agent answers.
//!
//! | step                 | intent                                  | ensure                                              | undo                                   |
//! |----------------------|-----------------------------------------|-----------------------------------------------------|----------------------------------------|
//! | `allocate`           | —                                       | lowest free guest IP in 172.30.0.0/24 (not .0/.1/.255), MAC `02:fc:<ip>`, lowest free vsock CID ≥ 3, a spare tap from the pool if there is one (see [`super::tap_fill`]); produces `Ip`, `Mac`, `VsockCid` (and `Tap`) | nothing on the host (the ledger only gets them on success; a spare stays the daemon's) |
//! | `prepare-rootfs`     | dir `vms/<id>`, file `vms/<id>/root.ext4` | the VM directory (with this op's marker), the image rootfs cloned (reflink) or sparse-copied into it | remove `vms/<id>` if this op's marker is in it |
//! | `prepare-work-disk`  | file `vms/<id>/work.ext4`               | sparse file of `work_disk_mib`, `mkfs.ext4 -q -F -L work` (lazy init) | remove the file |
//! | `network`            | the spare tap, or `bt<vm id>`           | the tap exists: a spare does; else banger-helper makes it, owned by this user, on the bridge (the bridge and NAT are ensured first) | remove the VM's own tap (banger-helper); a spare stays in the pool |
//! | `launch-vmm`         | sockets `api.sock`, `vsock.sock`        | see [`super::vm_common`]                            | kill the VMM, remove the sockets        |
//! | `configure`          | —                                       | see [`super::vm_common`]                            | nothing                                 |
//! | `instance-start`     | —                                       | see [`super::vm_common`]                            | nothing                                 |
//! | `wait-for-agent`     | —                                       | see [`super::vm_common`]                            | nothing                                 |
//! | `ssh-setup`          | —                                       | best effort: banger's key in, the host key learned; see [`super::vm_ssh`] | nothing                 |
//!
//! Domain events: `VmDefined` (state `creating`) and `VmBackendChosen` (the VMM chosen before
//! the request was accepted: `--vmm`, else the config's `vm.vmm`, `auto` by default) go in the
//! commit of `OperationStarted`, so the VM is listed while it is being created, its name is
//! visibly taken, and its backend is known to every later step and to crash recovery; `HandleAcquired`
//! (IP, MAC, CID, tap, VMM process, VM directory, all owned by the VM), `VmHostKeyRecorded`
//! (the guest's ssh host key, when `ssh-setup` learned one) and `VmStateChanged` → `running`
//! go with `OperationSucceeded`; `VmRemoved` goes with `OperationRolledBack`, in a
//! live rollback and in crash recovery alike (recovery rolls creates back).
//!
//! Networking: the tap is made by the root helper (`banger-helper`); without it, create
//! fails at `network` with an error that says how to start the helper, and rolls back.

use std::path::PathBuf;
use std::sync::Arc;

use banger_events::{
    Event, Handle, HandleAcquired, OpId, OpKind, Owner, Target, VmBackendChosen, VmDefined, VmId,
    VmRemoved, VmSpec, VmState, VmStateChanged, VmmKind,
};

use super::store::{self, dir_handle};
use super::vm_common::{
    BootState, Configure, InstanceStart, LaunchVmm, NameReservation, Network, VmHost, WaitForAgent,
    file_handle, path_in_vms, remove_file_if_present,
};
use super::vm_ssh::SshSetup;
use super::{BoxFuture, Claim, OpCx, OpError, OperationKind, Runner, Step, StepError, blocking};
use crate::api::{VmCreateParams, VmName};
use crate::host::disk::make_work_disk;

const MIB: u64 = 1024 * 1024;

pub struct VmCreate;

const STEPS: &[&dyn Step<BootState>] = &[
    &Allocate,
    &PrepareRootfs,
    &PrepareWorkDisk,
    &Network {
        remove_on_undo: true,
    },
    &LaunchVmm,
    &Configure,
    &InstanceStart,
    &WaitForAgent,
    &SshSetup,
];

impl OperationKind for VmCreate {
    const KIND: OpKind = OpKind::VmCreate;
    type State = BootState;

    fn steps() -> &'static [&'static dyn Step<BootState>] {
        STEPS
    }

    fn vmm(state: &BootState) -> Option<VmmKind> {
        Some(state.vmm)
    }

    fn start_events(_: &OpCx<'_>, state: &BootState) -> Vec<Event> {
        vec![
            Event::VmDefined(VmDefined {
                vm_id: state.vm_id,
                name: state.name.clone(),
                spec: state.spec.clone(),
            }),
            Event::VmBackendChosen(VmBackendChosen {
                vm_id: state.vm_id,
                vmm: state.vmm,
                reason: state.vmm_reason.clone(),
            }),
        ]
    }

    fn finish(cx: &OpCx<'_>, state: &BootState) -> Vec<Event> {
        let owner = Owner::Vm(state.vm_id);
        let mut handles = state.allocation.map(|a| a.handles()).unwrap_or_default();
        handles.push(dir_handle(&cx.layout.vm_dir(state.vm_id)));
        if let Some(tap) = &state.tap {
            handles.push(Handle::Tap { name: tap.clone() });
        }
        if let Some(launched) = &state.launched {
            handles.push(Handle::Process {
                pid: launched.pid,
                start_time_ticks: launched.start_time_ticks,
            });
        }
        let mut events: Vec<Event> = handles
            .into_iter()
            .map(|handle| Event::HandleAcquired(HandleAcquired { owner, handle }))
            .collect();
        if let Some(key) = &state.host_key {
            events.push(Event::VmHostKeyRecorded(key.clone()));
        }
        events.push(Event::VmStateChanged(VmStateChanged {
            vm_id: state.vm_id,
            from: VmState::Creating,
            to: VmState::Running,
        }));
        events
    }

    fn rolled_back_events(target: &Target) -> Vec<Event> {
        match target {
            Target::Vm { vm_id, .. } => vec![Event::VmRemoved(VmRemoved { vm_id: *vm_id })],
            _ => Vec::new(),
        }
    }
}

/// A create that passed its checks and holds its target: ready to run.
pub struct Prepared {
    pub op_id: OpId,
    pub vm_id: VmId,
    pub name: String,
    claim: Claim,
    _name: NameReservation,
    parameters: String,
    state: BootState,
}

/// Checks a `vm.create` request and claims its target. Nothing is recorded yet: a refused
/// request leaves no trace in the log.
pub fn prepare(
    runner: &Runner,
    host: &Arc<VmHost>,
    op_id: OpId,
    vm_id: VmId,
    params: &VmCreateParams,
) -> Result<Prepared, OpError> {
    let name = VmName::parse(&params.name)
        .map_err(|e| OpError::InvalidArgument(e.to_string()))?
        .to_string();
    let vcpus = params.vcpus.unwrap_or(host.config.vm.vcpus);
    let memory_mib = params.memory_mib.unwrap_or(host.config.vm.memory_mib);
    let work_disk_mib = params.work_disk_mib.unwrap_or(host.config.vm.work_disk_mib);
    check_shape(vcpus, memory_mib, work_disk_mib)?;
    // Decided before anything is claimed or recorded: a host that can run no VMM refuses
    // the request with the reasons and leaves no trace. It looks at the host (binaries,
    // /dev/kvm), so no view is held meanwhile.
    let requested = params.vmm.unwrap_or(host.config.vm.vmm);
    let backend = host
        .backends
        .choose(requested)
        .map_err(OpError::Unavailable)?;
    let reservation = host.reserve_name(&name).ok_or_else(|| {
        OpError::AlreadyExists(format!(
            "a VM named {name} is being created right now; pick another name"
        ))
    })?;
    let target = Target::Vm {
        vm_id,
        name: name.clone(),
    };
    // The kernel is the request's, else the image's default, else the configured default
    // (`kernels.default`); which one decides what to claim.
    let kernel_wanted = params.kernel.clone().or_else(|| {
        runner
            .journal()
            .view()
            .images
            .get(&params.image)
            .map(|image| kernel_of(image, &host.config))
    });
    // Shared claims on the image and the kernel: neither can be deleted while this create
    // copies and boots them (a delete that started first makes this one `busy`).
    let mut shared = vec![Target::Image {
        name: params.image.clone(),
    }];
    shared.extend(
        kernel_wanted
            .iter()
            .map(|name| Target::Kernel { name: name.clone() }),
    );
    let claim = runner.claim(op_id, OpKind::VmCreate, target, shared)?;
    let view = runner.journal().view();
    if view.vm_by_name(&name).is_some() {
        return Err(OpError::AlreadyExists(format!(
            "a VM named {name} already exists; pick another name, or delete it first (`banger vm delete {name}`)"
        )));
    }
    let image = view.images.get(&params.image).ok_or_else(|| {
        OpError::NotFound(format!(
            "no image named {}; pull it with `banger image pull {}` (see `banger image list --available`), or register one with `banger image register {} --rootfs FILE`",
            params.image, params.image, params.image
        ))
    })?;
    let kernel_name = params
        .kernel
        .clone()
        .unwrap_or_else(|| kernel_of(image, &host.config));
    if Some(&kernel_name) != kernel_wanted.as_ref() {
        // The image was replaced between the first look and the claim.
        return Err(OpError::Busy(format!(
            "image {} changed while this create was starting; retry",
            params.image
        )));
    }
    let kernel = view.kernels.get(&kernel_name).ok_or_else(|| {
        OpError::NotFound(format!(
            "no kernel named {kernel_name}; pull it with `banger kernel pull {kernel_name}` (see `banger kernel list --available`), or import one with `banger kernel import {kernel_name} --from DIR`"
        ))
    })?;
    let spec = VmSpec {
        image: params.image.clone(),
        kernel: kernel_name.clone(),
        vcpus,
        memory_mib,
        root_disk_mib: image.size_bytes.div_ceil(MIB),
        work_disk_mib,
    };
    let state = BootState {
        host: host.clone(),
        vm_id,
        name: name.clone(),
        spec,
        vmm: backend.vmm,
        vmm_reason: backend.reason.clone(),
        image_rootfs: PathBuf::from(&image.rootfs_path),
        kernel_path: PathBuf::from(&kernel.kernel_path),
        initrd_path: kernel.initrd_path.as_ref().map(PathBuf::from),
        allocation: None,
        tap: None,
        dns: Vec::new(),
        launched: None,
        child: None,
        host_key: None,
    };
    drop(view);
    let parameters = serde_json::json!({
        "vm_id": vm_id,
        "name": name,
        "image": params.image,
        "kernel": kernel_name,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "work_disk_mib": work_disk_mib,
        "vmm": backend.vmm,
    })
    .to_string();
    Ok(Prepared {
        op_id,
        vm_id,
        name,
        claim,
        _name: reservation,
        parameters,
        state,
    })
}

/// The kernel a VM of `image` boots when its request names none: the image's, else the
/// configured default (`kernels.default`, the catalog's Debian 12 cloud kernel).
pub fn kernel_of(image: &banger_projections::ImageView, config: &crate::config::Config) -> String {
    image
        .kernel
        .clone()
        .unwrap_or_else(|| config.kernels.default.clone())
}

/// Runs a prepared create to its end. Returns the final state (its VMM child, for the
/// supervisor).
pub async fn execute(runner: &Runner, prepared: Prepared) -> Result<BootState, OpError> {
    let Prepared {
        op_id,
        claim,
        parameters,
        state,
        _name,
        ..
    } = prepared;
    let host = state.host.clone();
    let result = runner.run::<VmCreate>(&claim, parameters, state).await;
    host.release_reservation(op_id);
    result
}

/// The limits a VM's shape must respect (Firecracker's, and common sense).
pub fn check_shape(vcpus: u32, memory_mib: u64, work_disk_mib: u64) -> Result<(), OpError> {
    if vcpus == 0 || vcpus > 32 {
        return Err(OpError::InvalidArgument(format!(
            "{vcpus} vCPUs: use 1 to 32"
        )));
    }
    if !(128..=u64::from(u32::MAX)).contains(&memory_mib) {
        return Err(OpError::InvalidArgument(format!(
            "{memory_mib} MiB of memory: use at least 128 MiB"
        )));
    }
    if work_disk_mib < 16 {
        return Err(OpError::InvalidArgument(format!(
            "a {work_disk_mib} MiB work disk is too small for ext4; use at least 16 MiB"
        )));
    }
    Ok(())
}

struct Allocate;

impl Step<BootState> for Allocate {
    fn name(&self) -> &'static str {
        "allocate"
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
            let allocation = match state.allocation {
                Some(allocation) => allocation,
                None => state.host.allocate(cx.op_id, cx.network.guest_subnet())?,
            };
            state.allocation = Some(allocation);
            if state.tap.is_none() {
                state.tap = state.host.take_spare_tap(cx.op_id);
            }
            let mut handles = allocation.handles();
            // A spare tap is named here, so that a crash leaves the log saying which one this
            // create had taken (it stays the daemon's until the create succeeds).
            if let Some(tap) = &state.tap {
                handles.push(Handle::Tap { name: tap.clone() });
            }
            Ok(handles)
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        // Nothing on the host: the addresses were only ever in this operation's record.
        Box::pin(async { Ok(()) })
    }
}

struct PrepareRootfs;

impl Step<BootState> for PrepareRootfs {
    fn name(&self) -> &'static str {
        "prepare-rootfs"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &BootState) -> Vec<Handle> {
        vec![
            dir_handle(&cx.layout.vm_dir(state.vm_id)),
            file_handle(&cx.layout.vm_root_disk(state.vm_id)),
        ]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut BootState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let dir = cx.layout.vm_dir(state.vm_id);
        let root = cx.layout.vm_root_disk(state.vm_id);
        let image = state.image_rootfs.clone();
        let op_id = cx.op_id;
        let handles = self.intent(cx, state);
        Box::pin(async move {
            blocking("cloning the root disk", move || {
                // The directory is named by a fresh VM id: only this operation ever made it.
                if store::marker_of(&dir) != Some(op_id) {
                    store::create_marked_dir(&dir, op_id)?;
                }
                store::clone_or_copy(&image, &root).map(drop)
            })
            .await?;
            Ok(handles)
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            for handle in handles {
                if let Handle::Directory { path } = handle {
                    let dir = path_in_vms(cx.layout, path)?;
                    let op_id = cx.op_id;
                    blocking("removing the VM directory", move || {
                        store::remove_if_made_by(&dir, op_id)
                    })
                    .await?;
                }
            }
            Ok(())
        })
    }
}

struct PrepareWorkDisk;

impl Step<BootState> for PrepareWorkDisk {
    fn name(&self) -> &'static str {
        "prepare-work-disk"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &BootState) -> Vec<Handle> {
        vec![file_handle(&cx.layout.vm_work_disk(state.vm_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut BootState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let path = cx.layout.vm_work_disk(state.vm_id);
        let bytes = state.spec.work_disk_mib.saturating_mul(MIB);
        let handles = self.intent(cx, state);
        Box::pin(async move {
            blocking("making the work disk", move || {
                make_work_disk(&path, bytes).map_err(StepError::from)
            })
            .await?;
            Ok(handles)
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            for handle in handles {
                if let Handle::File { path } = handle {
                    remove_file_if_present(&path_in_vms(cx.layout, path)?)?;
                }
            }
            Ok(())
        })
    }
}

/// The step invariants of the VM operations, on a real directory: every host-touching step's
/// `ensure` run twice equals once, every `undo` run twice equals once, and undoing what never
/// happened (from the intent) succeeds and changes nothing.
#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use banger_events::{JournalOptions, MemoryLog, OpId, Target};

    use super::*;
    use crate::config::Config;
    use crate::host::process::processes_with_argument;
    use crate::operations::vm_common::undo_launch;
    use crate::operations::vm_stop::{StopState, VmStop};
    use crate::paths::Layout;

    /// A log written before the launch step was renamed names it `launch-firecracker`: its
    /// recovery must still find the step (and so undo what it launched).
    #[test]
    fn the_launch_step_is_found_by_its_former_name() {
        use crate::operations::{OperationKind, find_step};
        for name in ["launch-vmm", "launch-firecracker"] {
            let create = find_step::<VmCreate>(name).map(|step| step.name());
            let start = find_step::<super::super::vm_start::VmStart>(name).map(|step| step.name());
            assert_eq!(
                (create, start),
                (Some("launch-vmm"), Some("launch-vmm")),
                "{name}"
            );
        }
        assert!(find_step::<VmCreate>("launch-qemu").is_none());
        let names: Vec<&str> = VmCreate::steps().iter().map(|step| step.name()).collect();
        assert!(names.contains(&"launch-vmm"), "{names:?}");
    }

    fn snapshot(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                out.push(path.display().to_string());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    fn boot_state(layout: &Layout, image: &Path) -> BootState {
        let journal =
            banger_events::Journal::open(Arc::new(MemoryLog::new()), JournalOptions::default())
                .expect("a journal in memory");
        let host = Arc::new(VmHost::new(
            Arc::new(crate::host::backends::Backends::firecracker_at(
                "/nonexistent/firecracker",
            )),
            Arc::new(crate::host::guest_agent::AgentLinks::new()),
            Config::default(),
            Arc::new(journal),
            layout.clone(),
        ));
        BootState {
            host,
            vm_id: VmId(0x42),
            name: "dev".into(),
            spec: crate::operations::testing::small_spec("k"),
            vmm: banger_events::VmmKind::Firecracker,
            vmm_reason: String::new(),
            image_rootfs: image.to_path_buf(),
            kernel_path: PathBuf::from("/nonexistent/vmlinux"),
            initrd_path: None,
            allocation: None,
            tap: None,
            dns: Vec::new(),
            launched: None,
            child: None,
            host_key: None,
        }
    }

    #[tokio::test]
    async fn create_steps_before_the_vmm_are_idempotent_and_undo_tolerates_absence() {
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(&dir.path().join("root"));
        fs::create_dir_all(layout.vms_dir()).unwrap();
        let image = dir.path().join("rootfs.ext4");
        fs::write(&image, vec![7u8; 64 * 1024]).unwrap();
        let target = Target::Vm {
            vm_id: VmId(0x42),
            name: "dev".into(),
        };
        let cx = OpCx {
            op_id: OpId(0xabc),
            kind: OpKind::VmCreate,
            target: &target,
            layout: &layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        let mut state = boot_state(&layout, &image);
        let before = snapshot(&layout.state_dir);
        // `network` needs the root helper: tests/integration's network tests run it.
        let host_steps: [&dyn Step<BootState>; 3] = [&Allocate, &PrepareRootfs, &PrepareWorkDisk];
        let mut done = Vec::new();
        for step in host_steps {
            let first = step.ensure(&cx, &mut state).await.unwrap();
            let second = step.ensure(&cx, &mut state).await.unwrap();
            assert_eq!(first, second, "{}", step.name());
            done.push((step, first));
        }
        assert_eq!(
            state.allocation.map(|a| a.ip),
            Some([172, 30, 0, 2]),
            "the first free address"
        );
        assert!(layout.vm_root_disk(VmId(0x42)).exists());
        let work = layout.vm_work_disk(VmId(0x42));
        assert_eq!(fs::metadata(&work).unwrap().len(), 32 << 20);
        crate::host::disk::run_tool("e2fsck", &["-f", "-n"], &work)
            .expect("a clean ext4 work disk");
        for (step, handles) in done.iter().rev() {
            step.undo(&cx, handles).await.unwrap();
            step.undo(&cx, handles).await.unwrap();
        }
        assert_eq!(snapshot(&layout.state_dir), before, "undo left traces");
        // Undo from the intents alone, when nothing happened.
        for step in STEPS.iter().rev() {
            let intent = step.intent(&cx, &state);
            step.undo(&cx, &intent).await.unwrap();
        }
        assert_eq!(snapshot(&layout.state_dir), before);
        // An undo never reaches outside the VMs directory, whatever the log says.
        let outside = [Handle::File {
            path: image.display().to_string(),
        }];
        assert!(PrepareWorkDisk.undo(&cx, &outside).await.is_err());
        assert!(image.exists());
    }

    #[tokio::test]
    async fn a_vmm_launched_before_its_pid_was_recorded_is_found_by_its_socket_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(&dir.path().join("r"));
        let vm_id = VmId(0x43);
        fs::create_dir_all(layout.vm_dir(vm_id)).unwrap();
        let api = layout.vm_api_socket(vm_id);
        fs::write(&api, b"").unwrap();
        // A stand-in VMM: its command line carries `--api-sock <path>` as firecracker's does.
        let mut child = tokio::process::Command::new("/bin/sh")
            // Two commands, so that the shell does not exec sleep and keep its arguments.
            .args(["-c", "sleep 60; exit 0", "sh", "--api-sock"])
            .arg(&api)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        // The command line is the shell's once it has exec'd: poll for it, with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while serving(&api).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the stand-in never ran"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The shell itself; a child it forked may briefly carry the same command line too,
        // before it execs `sleep`.
        assert!(serving(&api).iter().any(|(found, _)| *found == pid));
        let intent = [socket(&api), socket(&layout.vm_vsock_socket(vm_id))];
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let target = Target::Vm {
            vm_id,
            name: "dev".into(),
        };
        let cx = OpCx {
            op_id: OpId(0x5),
            kind: OpKind::VmCreate,
            target: &target,
            layout: &layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        undo_launch(&cx, &intent).await.unwrap();
        undo_launch(&cx, &intent).await.unwrap();
        let status = child.wait().await.unwrap();
        assert!(!status.success(), "pid {pid} was killed");
        assert!(!api.exists());
        assert!(serving(&api).is_empty());
    }

    /// Processes whose command line passes `--api-sock <api>`, as firecracker's does.
    fn serving(api: &Path) -> Vec<(u32, u64)> {
        processes_with_argument("--api-sock", api.as_os_str())
    }

    fn socket(path: &Path) -> Handle {
        Handle::Socket {
            path: path.display().to_string(),
        }
    }

    #[tokio::test]
    async fn stop_steps_on_a_vm_without_a_process_do_nothing_twice() {
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(&dir.path().join("r"));
        let vm_id = VmId(0x44);
        fs::create_dir_all(layout.vm_dir(vm_id)).unwrap();
        fs::write(layout.vm_api_socket(vm_id), b"").unwrap();
        let target = Target::Vm {
            vm_id,
            name: "dev".into(),
        };
        let cx = OpCx {
            op_id: OpId(0x1),
            kind: OpKind::VmStop,
            target: &target,
            layout: &layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        let state = StopState {
            vm_id,
            name: "dev".into(),
            from: VmState::Running,
            process: None,
            stop_timeout_ms: 10,
            reason: Some("idle".into()),
            tap: None,
        };
        // Recovery rebuilds the state from the parameters alone.
        let mut state = VmStop::resume_state(&target, &state.parameters()).expect("resumable");
        for step in VmStop::steps() {
            assert!(step.ensure(&cx, &mut state).await.unwrap().is_empty());
            assert!(step.ensure(&cx, &mut state).await.unwrap().is_empty());
            step.undo(&cx, &[]).await.unwrap();
        }
        assert!(!layout.vm_api_socket(vm_id).exists());
        assert!(layout.vm_dir(vm_id).exists(), "stop keeps the disks");
    }

    /// A create between its checks and its first recorded event (its VM not yet `creating` in
    /// the views) holds its image and kernel: a delete of either in that window is `busy`
    /// instead of pulling them from under the boot. Once the create is gone, they can go.
    #[tokio::test]
    async fn a_create_in_its_checks_holds_its_image_and_kernel() {
        use banger_events::{Event, ImageRegistered, KernelRegistered, NewEvent};

        use crate::api::VmCreateParams;
        use crate::operations::{Failpoints, Runner, image_delete, kernel_remove};

        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(&dir.path().join("root"));
        fs::create_dir_all(layout.image_dir("img")).unwrap();
        fs::create_dir_all(layout.kernel_dir("k")).unwrap();
        let journal = crate::operations::testing::memory_journal();
        journal
            .append(vec![
                NewEvent::new(Event::KernelRegistered(KernelRegistered {
                    name: "k".into(),
                    kernel_path: layout.kernel_dir("k").join("vmlinux").display().to_string(),
                    initrd_path: None,
                    version: "6.1".into(),
                    sha256: String::new(),
                    source: "test".into(),
                })),
                NewEvent::new(Event::ImageRegistered(ImageRegistered {
                    name: "img".into(),
                    rootfs_path: layout
                        .image_dir("img")
                        .join("rootfs.ext4")
                        .display()
                        .to_string(),
                    kernel: Some("k".into()),
                    size_bytes: 1 << 20,
                    sha256: String::new(),
                    source: "test".into(),
                })),
            ])
            .await
            .unwrap();
        let runner = Runner::new(
            journal.clone(),
            layout.clone(),
            Arc::new(crate::host::network::GuestNetwork::unreachable_for_tests()),
            Arc::new(crate::host::backends::Backends::firecracker_at(
                "/nonexistent/firecracker",
            )),
            Arc::new(crate::host::guest_agent::AgentLinks::new()),
            Failpoints::none(),
        );
        let host = Arc::new(VmHost::new(
            Arc::new(crate::host::backends::Backends::firecracker_at(
                "/nonexistent/firecracker",
            )),
            Arc::new(crate::host::guest_agent::AgentLinks::new()),
            Config::default(),
            journal.clone(),
            layout.clone(),
        ));
        let params: VmCreateParams = serde_json::from_value(serde_json::json!({
            "name": "dev", "image": "img"
        }))
        .unwrap();
        let prepared = prepare(&runner, &host, OpId(1), VmId(0x42), &params).unwrap();
        assert!(
            journal.view().vm_by_name("dev").is_none(),
            "nothing recorded yet"
        );

        let image = image_delete::run(&runner, OpId(2), "img".into()).await;
        assert!(
            matches!(&image, Err(OpError::Busy(m)) if m.contains("image img is busy")),
            "{image:?}"
        );
        let kernel = kernel_remove::run(&runner, OpId(3), "k".into()).await;
        assert!(
            matches!(&kernel, Err(OpError::Busy(m)) if m.contains("kernel k is busy")),
            "{kernel:?}"
        );
        assert!(layout.image_dir("img").exists() && layout.kernel_dir("k").exists());

        drop(prepared);
        image_delete::run(&runner, OpId(4), "img".into())
            .await
            .expect("the image can go once no create holds it");
        kernel_remove::run(&runner, OpId(5), "k".into())
            .await
            .expect("and so can the kernel");
    }
}
