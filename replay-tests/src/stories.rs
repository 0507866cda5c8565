//! The stories behind the golden logs, written with [`Scenario`].
//!
//! These functions are only run when the golden files are blessed (`BANGER_BLESS=1`); the
//! normal test reads the checked-in bytes and never calls them. Changing a story therefore
//! changes nothing until someone blesses on purpose — and a bless that changes the expected
//! projection of an *unchanged* frame file is exactly what review must catch.

use banger_events::*;

use crate::*;

/// A golden story: its file stem in `golden/`, what it is about, and its log.
pub struct Story {
    pub name: &'static str,
    pub about: &'static str,
    pub log: Scenario,
    /// How many events the `.redb` file's snapshot covers; `None`: the first half. A story
    /// picks the point when its snapshot must hold something in particular (a crash's state).
    pub snapshot_after: Option<usize>,
}

/// Every golden story, in a stable order.
pub fn all() -> Vec<Story> {
    let (rare, rare_crash) = rare_operations();
    vec![
        Story {
            name: "vm-lifecycle",
            about: "vm create → start → stop → set → a failed start rolled back → delete, plus \
                    a second VM whose VMM is killed and restarted; daemon stopped cleanly",
            log: vm_lifecycle(),
            snapshot_after: None,
        },
        Story {
            name: "images-and-kernels",
            about: "image register in the old ImageRegisteredV1 layout, kernel import and a \
                    failed kernel pull, image pull, image delete, cache prune, and a pull whose \
                    undo failed (stuck)",
            log: images_and_kernels(),
            snapshot_after: None,
        },
        Story {
            name: "crash-mid-create",
            about: "a crash recovered after a host reboot, then a second crash that leaves a vm \
                    create, an image pull, a vm stop and a half-undone vm start unfinished, and \
                    one stuck operation",
            log: crash_mid_create(),
            snapshot_after: None,
        },
        Story {
            name: "rare-operations",
            about: "a tap pool fill and a stuck one, a vm restart, an image promote, a stop and \
                    a kill whose parameters are the bare JSON of older builds and a stop.v1 \
                    resume payload, a delete that fails and leaves its VM failed; a crash (the \
                    redb snapshot's point) with two rollbacks begun and an image delete running, \
                    which the next daemon finishes (resume_undo, roll_forward); the stuck fill \
                    retried, a teardown; then a crash that leaves a stop (bare parameters) and a \
                    delete (stop.v1) to roll forward",
            log: rare,
            snapshot_after: Some(rare_crash),
        },
        Story {
            name: "vmm-backends",
            about: "VMs on either VMM: one created on QEMU because KVM cannot run a stock guest \
                    (auto), one on Firecracker as asked (--vmm), both started; a VM defined \
                    before backends were recorded (no VmBackendChosen: Firecracker)",
            log: vmm_backends(),
            snapshot_after: None,
        },
        Story {
            name: "image-cache-prune",
            about: "image cache prune as an operation on the image cache: one that succeeds \
                    and records what it freed, one whose delete fails and is rolled back, one \
                    a crash interrupts between its steps and the next daemon rolls forward, \
                    and one the log ends in (rolled forward by the plan)",
            log: image_cache_prune(),
            snapshot_after: None,
        },
        Story {
            name: "workspaces",
            about: "a checkout imported into a running VM (send, record-manifest, \
                    WorkspaceImported), an unchanged re-import, an export of guest changes \
                    (fetch, apply, record-manifest, WorkspaceExported), an export whose apply \
                    failed and was rolled back (the checkout's files put back), and an import \
                    the log ends in (rolled back by the plan)",
            log: workspaces(),
            snapshot_after: None,
        },
        Story {
            name: "repaired-log",
            about: "a log whose tail was lost to damage and repaired (`banger events repair`): \
                    a vm create whose end was lost, the repair's LogRepaired at the first lost \
                    seq, the next daemon rolling the create back, and the orphan it left \
                    (a VM directory) found and removed",
            log: repaired_log(),
            snapshot_after: None,
        },
        Story {
            name: "vm-host-keys",
            about: "a boot records the guest's ssh host key with its success, a later boot \
                    with the same key records nothing, a VM without sshd has none, a deleted VM \
                    takes its key with it",
            log: vm_host_keys(),
            snapshot_after: None,
        },
    ]
}

/// `image.cache.prune` as its step table records it: `rename-aside` with the aside copy
/// (named from the op id, beside the cache) as intent and output, then `delete-aside`, and
/// `ImageCachePruned` in the commit of `OperationSucceeded`.
fn image_cache_prune() -> Scenario {
    let mut s = Scenario::new();
    s.daemon_started("4c0ffee0-1b2c-4d3e-8f40-5a6b7c8d9e0f", 1_204);
    let aside = |op: OpId| dir(&format!("/home/u/.cache/banger/.oci.pruning-{op}"));

    let done = OpId(0x4c01);
    s.start_op(done, OpKind::ImageCachePrune, Target::ImageCache, "{}");
    s.step(done, "rename-aside", vec![aside(done)]);
    s.step(done, "delete-aside", vec![]);
    s.in_op(
        done,
        Event::ImageCachePruned(ImageCachePruned {
            bytes: 1_288_490_189,
            blobs: 47,
        }),
    );
    s.succeed(done);

    // The deletion fails; the undo of `rename-aside` deletes the aside copy.
    let failed = OpId(0x4c02);
    s.start_op(failed, OpKind::ImageCachePrune, Target::ImageCache, "{}");
    s.step(failed, "rename-aside", vec![aside(failed)]);
    s.step_started(failed, "delete-aside", vec![]);
    s.step_failed(
        failed,
        "delete-aside",
        "injected by failpoint image.cache.prune:delete-aside:error",
    );
    s.undo(failed, "delete-aside");
    s.undo(failed, "rename-aside");
    s.roll_back(
        failed,
        "step delete-aside failed: injected by failpoint image.cache.prune:delete-aside:error",
    );

    // Killed between its steps; the next daemon finishes it.
    let crashed = OpId(0x4c03);
    s.start_op(crashed, OpKind::ImageCachePrune, Target::ImageCache, "{}");
    s.step(crashed, "rename-aside", vec![aside(crashed)]);
    s.daemon_started("4c0ffee0-1b2c-4d3e-8f40-5a6b7c8d9e0f", 1_388);
    s.recovery_decided(
        crashed,
        RecoveryDecision::RollForward,
        "bangerd stopped during step rename-aside",
    );
    s.step(crashed, "delete-aside", vec![]);
    s.in_op(
        crashed,
        Event::ImageCachePruned(ImageCachePruned {
            bytes: 52_428_800,
            blobs: 3,
        }),
    );
    s.succeed(crashed);

    // Killed after setting the cache aside: the log ends here, and the plan rolls it forward.
    let open = OpId(0x4c04);
    s.start_op(open, OpKind::ImageCachePrune, Target::ImageCache, "{}");
    s.step_started(open, "rename-aside", vec![aside(open)]);
    s
}

/// Workspaces as their step tables record them.
fn workspaces() -> Scenario {
    let mut s = Scenario::new();
    s.daemon_started("3e7a1b2c-4d5e-4f60-8a7b-9c0d1e2f3a4b", 2_112);
    let net = Net::new(0);
    create_vm(&mut s, OpId(0x3e01), WEB, "dev", &net);
    start_vm(&mut s, OpId(0x3e02), WEB, "dev", process(42_424, 3_000_000));
    let manifest = |op: OpId| {
        file(&format!(
            "/home/u/.local/state/banger/vms/{WEB}/workspace-{op}.json"
        ))
    };
    let staging = |op: OpId| dir(&format!("/home/u/src/app/.banger-export-{op}"));
    let target = vm_target(WEB, "dev");
    let params = r#"{"force":false,"guest_path":"/work/app","host_path":"/home/u/src/app"}"#;
    let imported = |files, bytes, tree: &str| {
        Event::WorkspaceImported(WorkspaceImported {
            vm_id: WEB,
            host_path: "/home/u/src/app".into(),
            guest_path: "/work/app".into(),
            commit: "5f0c6e1d2a3b4c5d6e7f80912a3b4c5d6e7f8091".into(),
            tree_hash: tree.into(),
            files,
            bytes,
        })
    };

    let import = OpId(0x3e03);
    s.start_op(import, OpKind::WorkspaceImport, target.clone(), params);
    s.step(import, "send", vec![]);
    s.step(import, "record-manifest", vec![manifest(import)]);
    s.in_op(import, imported(9_870, 104_203_776, &"1a".repeat(32)));
    s.succeed(import);

    // Nothing changed: nothing sent, the same tree.
    let again = OpId(0x3e04);
    s.start_op(again, OpKind::WorkspaceImport, target.clone(), params);
    s.step(again, "send", vec![]);
    s.step(again, "record-manifest", vec![manifest(again)]);
    s.in_op(again, imported(0, 0, &"1a".repeat(32)));
    s.succeed(again);

    let export = OpId(0x3e05);
    let export_params = r#"{"force":false,"guest_path":"/work/app","host_path":"/home/u/src/app"}"#;
    s.start_op(
        export,
        OpKind::WorkspaceExport,
        target.clone(),
        export_params,
    );
    s.step(export, "fetch", vec![staging(export)]);
    s.step(export, "apply", vec![staging(export)]);
    s.step(export, "record-manifest", vec![manifest(export)]);
    s.in_op(
        export,
        Event::WorkspaceExported(WorkspaceExported {
            vm_id: WEB,
            host_path: "/home/u/src/app".into(),
            guest_path: "/work/app".into(),
            files_written: 3,
            tree_hash: "2b".repeat(32),
        }),
    );
    s.succeed(export);

    // The apply fails half-way: its undo puts the checkout's files back, then the staging goes.
    let failed = OpId(0x3e06);
    s.start_op(
        failed,
        OpKind::WorkspaceExport,
        target.clone(),
        export_params,
    );
    s.step(failed, "fetch", vec![staging(failed)]);
    s.step_started(failed, "apply", vec![staging(failed)]);
    s.step_failed(
        failed,
        "apply",
        "src/a.txt: a directory is in the way in the checkout",
    );
    s.undo(failed, "apply");
    s.undo(failed, "fetch");
    s.roll_back(
        failed,
        "step apply failed: src/a.txt: a directory is in the way in the checkout",
    );

    // Killed while sending: the log ends here, and the plan rolls it back.
    let open = OpId(0x3e07);
    s.start_op(open, OpKind::WorkspaceImport, target, params);
    s.step(open, "send", vec![]);
    s.step_started(open, "record-manifest", vec![manifest(open)]);
    s
}

/// Backends as `vm.create` records them: `VmBackendChosen` in the commit of the create's
/// start, beside `VmDefined`.
fn vmm_backends() -> Scenario {
    let mut s = Scenario::new();
    s.daemon_started("0b1f7c1e-5a2d-4c3b-8e9f-aa10bb20cc30", 4_040);
    let qemu_net = Net::new(0);
    let fc_net = Net::new(1);
    let old_net = Net::new(2);

    // Defined by a build that recorded no backend: it runs on Firecracker.
    create_vm(&mut s, OpId(0x0e01), API, "old", &old_net);

    let create = OpId(0x0e02);
    s.start_op(
        create,
        OpKind::VmCreate,
        vm_target(WEB, "tcg"),
        r#"{"name":"tcg","image":"debian-12","kernel":"6.1"}"#,
    );
    s.vm_defined(Some(create), WEB, "tcg", spec("debian-12", "6.1"));
    s.vm_backend(
        Some(create),
        WEB,
        VmmKind::Qemu,
        "auto: KVM here is backed by PVM (/sys/module/kvm_pvm is loaded), which cannot run a \
         stock guest kernel; QEMU runs it under TCG",
    );
    finish_create(&mut s, create, WEB, &qemu_net);

    let create = OpId(0x0e03);
    s.start_op(
        create,
        OpKind::VmCreate,
        vm_target(DB, "fc"),
        r#"{"name":"fc","image":"debian-12","kernel":"6.1","vmm":"firecracker"}"#,
    );
    s.vm_defined(Some(create), DB, "fc", spec("debian-12", "6.1"));
    s.vm_backend(
        Some(create),
        DB,
        VmmKind::Firecracker,
        "asked for with --vmm",
    );
    finish_create(&mut s, create, DB, &fc_net);

    start_vm(&mut s, OpId(0x0e04), WEB, "tcg", process(31_337, 2_000_000));
    start_vm(&mut s, OpId(0x0e05), DB, "fc", process(31_400, 2_000_100));
    s
}

/// ssh host keys as boots record them: a create whose `ssh-setup` step saw the guest's key
/// records it (`VmHostKeyRecorded`) in the commit of its success; a later start that sees
/// the same key records nothing, and a VM whose image has no sshd never gets one; a deleted
/// VM takes its key with it.
fn vm_host_keys() -> Scenario {
    let mut s = Scenario::new();
    s.daemon_started("5e1f0c2a-77d4-4b0e-9c1a-2f3e4d5c6b7a", 5_050);
    let web_net = Net::new(0);
    let db_net = Net::new(1);
    create_vm(&mut s, OpId(0x0f01), WEB, "web", &web_net);
    create_vm(&mut s, OpId(0x0f02), DB, "plain", &db_net);
    let key = VmHostKeyRecorded {
        vm_id: WEB,
        algorithm: "ssh-ed25519".into(),
        public_key: "AAAAC3NzaC1lZDI1NTE5AAAAIKx8yn6Ob0i3ZRaHrXbM2Vl6m+Ej2m8cQWQ+a0b1c2d3".into(),
        fingerprint_sha256: "SHA256:Jd8w0m3bCkqv2bT9yQ8mZ5s1lO0v7uXhY3nA4pR6cE8".into(),
    };
    boot_with_ssh(
        &mut s,
        OpId(0x0f03),
        WEB,
        "web",
        process(41_000, 3_000_000),
        Some(key.clone()),
    );
    boot_with_ssh(
        &mut s,
        OpId(0x0f04),
        DB,
        "plain",
        process(41_100, 3_000_100),
        None,
    );
    // The same key at the next boot is not recorded again.
    s.push(
        None,
        Event::VmExited(VmExited {
            vm_id: WEB,
            pid: 41_000,
            exit_code: Some(0),
            signal: None,
            console_tail: "reboot: Power down".into(),
        }),
    );
    s.vm_state(None, WEB, VmState::Running, VmState::Stopped);
    boot_with_ssh(
        &mut s,
        OpId(0x0f05),
        WEB,
        "web",
        process(41_200, 3_000_200),
        None,
    );
    // Deleted: its key goes with it.
    let delete = OpId(0x0f06);
    s.start_op(
        delete,
        OpKind::VmDelete,
        vm_target(DB, "plain"),
        r#"{"name":"plain"}"#,
    );
    s.vm_state(Some(delete), DB, VmState::Running, VmState::Deleting);
    s.step(delete, "kill", vec![]);
    s.vm_removed(Some(delete), DB);
    s.succeed(delete);
    s
}

/// A `vm.start` whose `ssh-setup` step ran after `wait-for-agent`; `key`: the host key it
/// records with its success.
fn boot_with_ssh(
    s: &mut Scenario,
    op: OpId,
    vm: VmId,
    name: &str,
    pid: Handle,
    key: Option<VmHostKeyRecorded>,
) {
    s.start_op(
        op,
        OpKind::VmStart,
        vm_target(vm, name),
        &format!(r#"{{"name":"{name}"}}"#),
    );
    s.vm_state(Some(op), vm, VmState::Stopped, VmState::Starting);
    s.step_started(op, "launch-vmm", vec![api_socket(vm)]);
    s.step_succeeded(op, "launch-vmm", vec![api_socket(vm), pid.clone()]);
    s.acquire(Some(op), Owner::Vm(vm), pid);
    s.step(op, "wait-for-agent", vec![]);
    s.step(op, "ssh-setup", vec![]);
    if let Some(key) = key {
        s.push(Some(op), Event::VmHostKeyRecorded(key));
    }
    s.vm_state(Some(op), vm, VmState::Starting, VmState::Running);
    s.succeed(op);
}

/// The steps of a successful `vm.create` after its start events.
fn finish_create(s: &mut Scenario, op: OpId, vm: VmId, net: &Net) {
    let root = file(&format!("{}/root.ext4", vm_dir(vm)));
    let work = file(&format!("{}/work.ext4", vm_dir(vm)));
    s.step(op, "prepare-rootfs", vec![root.clone()]);
    s.acquire(Some(op), Owner::Vm(vm), root);
    s.step(op, "prepare-work-disk", vec![work.clone()]);
    s.acquire(Some(op), Owner::Vm(vm), work);
    s.step(op, "network", net.all());
    for handle in net.all() {
        s.acquire(Some(op), Owner::Vm(vm), handle);
    }
    s.vm_state(Some(op), vm, VmState::Creating, VmState::Stopped);
    s.succeed(op);
}

const WEB: VmId = VmId(0x57eb_0001);
const DB: VmId = VmId(0xdb00_0002);
const API: VmId = VmId(0xa91_0003);

fn vm_dir(vm: VmId) -> String {
    format!("/var/lib/banger/vms/{vm}")
}

fn api_socket(vm: VmId) -> Handle {
    socket(&format!("/run/user/1000/banger/vms/{vm}/firecracker.sock"))
}

struct Net {
    tap: Handle,
    ip: Handle,
    mac: Handle,
    cid: Handle,
}

impl Net {
    fn new(n: u8) -> Net {
        Net {
            tap: tap(&format!("bgtap{n}")),
            ip: ip([10, 77, 0, 2 + n]),
            mac: mac([0x06, 0xbe, 0x60, 0, 0, n]),
            cid: cid(3 + u32::from(n)),
        }
    }

    fn all(&self) -> Vec<Handle> {
        vec![
            self.tap.clone(),
            self.ip.clone(),
            self.mac.clone(),
            self.cid.clone(),
        ]
    }
}

/// A whole successful `vm.create`: defined, disks, network, stopped.
fn create_vm(s: &mut Scenario, op: OpId, vm: VmId, name: &str, net: &Net) {
    s.start_op(
        op,
        OpKind::VmCreate,
        vm_target(vm, name),
        &format!(r#"{{"name":"{name}","image":"debian-12","kernel":"6.1","vcpus":2}}"#),
    );
    s.vm_defined(Some(op), vm, name, spec("debian-12", "6.1"));
    let root = file(&format!("{}/root.ext4", vm_dir(vm)));
    let work = file(&format!("{}/work.ext4", vm_dir(vm)));
    s.step(op, "prepare-rootfs", vec![root.clone()]);
    s.acquire(Some(op), Owner::Vm(vm), root);
    s.step(op, "prepare-work-disk", vec![work.clone()]);
    s.acquire(Some(op), Owner::Vm(vm), work);
    s.step(op, "network", net.all());
    for handle in net.all() {
        s.acquire(Some(op), Owner::Vm(vm), handle);
    }
    s.vm_state(Some(op), vm, VmState::Creating, VmState::Stopped);
    s.succeed(op);
}

/// A whole successful `vm.start`, launching `pid`.
fn start_vm(s: &mut Scenario, op: OpId, vm: VmId, name: &str, pid: Handle) {
    s.start_op(
        op,
        OpKind::VmStart,
        vm_target(vm, name),
        &format!(r#"{{"name":"{name}"}}"#),
    );
    s.vm_state(Some(op), vm, VmState::Stopped, VmState::Starting);
    s.step_started(op, "launch-vmm", vec![api_socket(vm)]);
    s.step_succeeded(op, "launch-vmm", vec![api_socket(vm), pid.clone()]);
    s.acquire(Some(op), Owner::Vm(vm), pid);
    s.step(op, "wait-for-agent", vec![]);
    s.vm_state(Some(op), vm, VmState::Starting, VmState::Running);
    s.succeed(op);
}

fn vm_lifecycle() -> Scenario {
    let mut s = Scenario::new();
    s.daemon_started("4f1c2a9e-0b7d-4e55-9a43-1f2e3d4c5b6a", 812);
    s.acquire(
        None,
        Owner::Daemon,
        socket("/run/user/1000/banger/bangerd.sock"),
    );
    let web_net = Net::new(0);
    let db_net = Net::new(1);

    create_vm(&mut s, OpId(0x0c01), WEB, "web", &web_net);
    let first_vmm = process(23_811, 1_048_576);
    start_vm(&mut s, OpId(0x0c02), WEB, "web", first_vmm.clone());

    // Stop: graceful shutdown, the VMM exits, the process handle goes with it.
    let stop = OpId(0x0c03);
    s.start_op(
        stop,
        OpKind::VmStop,
        vm_target(WEB, "web"),
        r#"{"name":"web"}"#,
    );
    s.vm_state(Some(stop), WEB, VmState::Running, VmState::Stopping);
    s.step(stop, "sync-workspace", vec![]);
    s.step(stop, "shutdown", vec![]);
    s.release(Some(stop), first_vmm);
    s.vm_state(Some(stop), WEB, VmState::Stopping, VmState::Stopped);
    s.succeed(stop);

    // Resize the stopped VM.
    let set = OpId(0x0c0a);
    s.start_op(
        set,
        OpKind::VmSet,
        vm_target(WEB, "web"),
        r#"{"name":"web","vcpus":4,"memory_mib":2048,"root_disk_mib":8192}"#,
    );
    s.step(
        set,
        "resize-root-disk",
        vec![file(&format!("{}/root.ext4", vm_dir(WEB)))],
    );
    s.in_op(
        set,
        Event::VmChanged(VmChanged {
            vm_id: WEB,
            spec: VmSpec {
                vcpus: 4,
                memory_mib: 2048,
                root_disk_mib: 8192,
                ..spec("debian-12", "6.1")
            },
        }),
    );
    s.succeed(set);

    // A second start whose guest agent never answers: rolled back, the VMM killed.
    let second_vmm = process(24_007, 1_049_900);
    let retry = OpId(0x0c04);
    s.start_op(
        retry,
        OpKind::VmStart,
        vm_target(WEB, "web"),
        r#"{"name":"web"}"#,
    );
    s.vm_state(Some(retry), WEB, VmState::Stopped, VmState::Starting);
    s.step_started(retry, "launch-vmm", vec![api_socket(WEB)]);
    s.step_succeeded(
        retry,
        "launch-vmm",
        vec![api_socket(WEB), second_vmm.clone()],
    );
    s.acquire(Some(retry), Owner::Vm(WEB), second_vmm.clone());
    s.step_started(retry, "wait-for-agent", vec![]);
    s.step_failed(
        retry,
        "wait-for-agent",
        "guest agent did not answer within 30000 ms",
    );
    s.undo(retry, "wait-for-agent");
    s.undo_started(retry, "launch-vmm");
    s.release(Some(retry), second_vmm);
    s.undo_succeeded(retry, "launch-vmm");
    s.vm_state(Some(retry), WEB, VmState::Starting, VmState::Stopped);
    s.roll_back(retry, "step wait-for-agent failed");

    // A second VM, created and left running.
    create_vm(&mut s, OpId(0x0c05), DB, "db", &db_net);
    start_vm(&mut s, OpId(0x0c06), DB, "db", process(24_100, 1_050_000));

    // Delete web: disks, then network, then the record.
    let delete = OpId(0x0c07);
    s.start_op(
        delete,
        OpKind::VmDelete,
        vm_target(WEB, "web"),
        r#"{"name":"web"}"#,
    );
    s.vm_state(Some(delete), WEB, VmState::Stopped, VmState::Deleting);
    let disks = vec![
        file(&format!("{}/root.ext4", vm_dir(WEB))),
        file(&format!("{}/work.ext4", vm_dir(WEB))),
    ];
    s.step_started(delete, "remove-disks", disks.clone());
    s.step_succeeded(delete, "remove-disks", vec![]);
    for disk in disks {
        s.release(Some(delete), disk);
    }
    s.step_started(delete, "release-network", web_net.all());
    s.step_succeeded(delete, "release-network", vec![]);
    for handle in web_net.all() {
        s.release(Some(delete), handle);
    }
    s.vm_removed(Some(delete), WEB);
    s.succeed(delete);

    // The db VM's VMM dies on its own; the user restarts nothing. Then a clean shutdown.
    s.fact(Event::VmExited(VmExited {
        vm_id: DB,
        pid: 24_100,
        exit_code: None,
        signal: Some(9),
        console_tail: "[   42.000000] Out of memory: Killed process 1 (systemd)".into(),
    }));
    s.vm_state(None, DB, VmState::Running, VmState::Stopped);
    start_vm(&mut s, OpId(0x0c08), DB, "db", process(25_000, 1_060_000));
    s.daemon_stopped("SIGTERM");
    s
}

fn images_and_kernels() -> Scenario {
    let mut s = Scenario::new();
    s.daemon_started("9d8c7b6a-5f4e-4d3c-8b2a-0f1e2d3c4b5a", 640);

    // image.register, recorded in the layout older logs used (kind 40).
    let register = OpId(0x1a01);
    let alpine = "/var/lib/banger/images/alpine-3.20.ext4";
    s.start_op(
        register,
        OpKind::ImageRegister,
        Target::Image {
            name: "alpine-3.20".into(),
        },
        r#"{"name":"alpine-3.20","path":"/home/dev/alpine.ext4"}"#,
    );
    s.step(register, "copy-rootfs", vec![file(alpine)]);
    s.in_op(
        register,
        Event::ImageRegisteredV1(ImageRegisteredV1 {
            name: "alpine-3.20".into(),
            rootfs_path: alpine.into(),
            size_bytes: 268_435_456,
        }),
    );
    s.succeed(register);

    // kernel.import.
    let import = OpId(0x1a02);
    s.start_op(
        import,
        OpKind::KernelImport,
        Target::Kernel { name: "6.1".into() },
        r#"{"from":"/home/dev/kernels/6.1"}"#,
    );
    s.step(
        import,
        "copy-kernel",
        vec![dir("/var/lib/banger/kernels/6.1")],
    );
    s.in_op(
        import,
        Event::KernelRegistered(KernelRegistered {
            name: "6.1".into(),
            kernel_path: "/var/lib/banger/kernels/6.1/vmlinux".into(),
            initrd_path: Some("/var/lib/banger/kernels/6.1/initrd.img".into()),
            version: "6.1.0-31-cloud-amd64".into(),
            sha256: "5e".repeat(32),
            source: "import:/home/dev/kernels/6.1".into(),
        }),
    );
    s.succeed(import);

    // kernel.pull whose download fails its checksum: rolled back.
    let pull_kernel = OpId(0x1a03);
    let part = file("/var/lib/banger/kernels/6.6.tar.zst.part");
    s.start_op(
        pull_kernel,
        OpKind::KernelPull,
        Target::Kernel { name: "6.6".into() },
        r#"{"name":"6.6"}"#,
    );
    s.step_started(pull_kernel, "download", vec![part.clone()]);
    s.step_failed(
        pull_kernel,
        "download",
        "sha256 mismatch: expected 0f3a…, got 77c1…",
    );
    s.undo(pull_kernel, "download");
    s.roll_back(pull_kernel, "step download failed");

    // image.pull from an OCI registry.
    let pull = OpId(0x1a04);
    let debian = "/var/lib/banger/images/debian-12.ext4";
    s.start_op(
        pull,
        OpKind::ImagePull,
        Target::Image {
            name: "debian-12".into(),
        },
        r#"{"ref":"127.0.0.1:5000/debian:12"}"#,
    );
    s.step(pull, "resolve-manifest", vec![]);
    s.step(
        pull,
        "fetch-layers",
        vec![dir("/var/cache/banger/oci/blobs/sha256")],
    );
    s.step_started(pull, "build-rootfs", vec![file(debian)]);
    s.step_succeeded(
        pull,
        "build-rootfs",
        vec![file(debian), loop_device("/dev/loop7")],
    );
    s.in_op(
        pull,
        Event::ImageRegistered(ImageRegistered {
            name: "debian-12".into(),
            rootfs_path: debian.into(),
            kernel: Some("6.1".into()),
            size_bytes: 1_073_741_824,
            sha256: "d3".repeat(32),
            source: format!("oci:127.0.0.1:5000/debian:12@sha256:{}", "a1".repeat(32)),
        }),
    );
    s.succeed(pull);

    // image.delete (rolls forward) and image.cache.prune.
    let delete = OpId(0x1a05);
    s.start_op(
        delete,
        OpKind::ImageDelete,
        Target::Image {
            name: "alpine-3.20".into(),
        },
        r#"{"name":"alpine-3.20"}"#,
    );
    s.step(delete, "remove-rootfs", vec![]);
    s.in_op(
        delete,
        Event::ImageRemoved(ImageRemoved {
            name: "alpine-3.20".into(),
        }),
    );
    s.succeed(delete);

    let prune = OpId(0x1a06);
    let aside = dir("/var/cache/banger/oci/blobs.prune-1a06");
    s.start_op(
        prune,
        OpKind::ImageCachePrune,
        Target::Host,
        r#"{"dry_run":false}"#,
    );
    s.step(prune, "rename-aside", vec![aside]);
    s.step(prune, "delete-aside", vec![]);
    s.succeed(prune);

    // An image pull whose build fails and whose undo cannot detach the loop device: stuck.
    let stuck = OpId(0x1a07);
    let fedora = "/var/lib/banger/images/fedora-40.ext4";
    s.start_op(
        stuck,
        OpKind::ImagePull,
        Target::Image {
            name: "fedora-40".into(),
        },
        r#"{"ref":"127.0.0.1:5000/fedora:40"}"#,
    );
    s.step(stuck, "resolve-manifest", vec![]);
    s.step_started(
        stuck,
        "build-rootfs",
        vec![file(fedora), loop_device("/dev/loop9")],
    );
    s.step_failed(stuck, "build-rootfs", "mkfs.ext4 exited with status 1");
    s.undo_started(stuck, "build-rootfs");
    s.undo_failed(
        stuck,
        "build-rootfs",
        "losetup -d /dev/loop9: device or resource busy",
    );
    s.stuck(
        stuck,
        "build-rootfs",
        "losetup -d /dev/loop9: device or resource busy",
    );

    // A kernel removed, and an orphan tap found and removed.
    let remove = OpId(0x1a08);
    s.start_op(
        remove,
        OpKind::KernelRemove,
        Target::Kernel { name: "6.1".into() },
        r#"{"name":"6.1"}"#,
    );
    s.step(remove, "remove-files", vec![]);
    s.in_op(
        remove,
        Event::KernelRemoved(KernelRemoved { name: "6.1".into() }),
    );
    s.succeed(remove);
    s.fact(Event::OrphanFound(OrphanFound {
        handle: tap("bgtap9"),
        action: "removed".into(),
    }));
    s
}

fn repaired_log() -> Scenario {
    let mut s = Scenario::new();
    s.daemon_started("0badc0de-1111-4222-8333-444444444444", 612);
    let web_net = Net::new(0);
    create_vm(&mut s, OpId(0x3e01), WEB, "web", &web_net);

    // A create of db, whose later events were on the damaged pages: the intact prefix ends
    // with its disks prepared.
    let create = OpId(0x3e02);
    s.start_op(
        create,
        OpKind::VmCreate,
        vm_target(DB, "db"),
        r#"{"name":"db","image":"debian-12","kernel":"6.1","vcpus":2}"#,
    );
    s.vm_defined(Some(create), DB, "db", spec("debian-12", "6.1"));
    let root = file(&format!("{}/root.ext4", vm_dir(DB)));
    s.step(create, "prepare-rootfs", vec![root.clone()]);
    s.acquire(Some(create), Owner::Vm(DB), root);
    // --- events from here on were lost; the repair records what it could tell ---
    let first_lost = Seq(s.last_seq().0 + 1);
    s.fact(Event::LogRepaired(LogRepaired {
        first_lost_seq: first_lost,
        last_stored_seq: Some(Seq(first_lost.0 + 17)),
        reason: format!("event log is corrupt at seq {first_lost}: damaged frame: crc32 mismatch"),
        backup_path: "/var/lib/banger/events.redb.damaged-20260428T193257Z".into(),
    }));
    s.daemon_started("0badc0de-1111-4222-8333-444444444444", 640);
    s.recovery_decided(
        create,
        RecoveryDecision::RollBack,
        "daemon restarted with vm.create in flight",
    );
    s.undo(create, "prepare-rootfs");
    s.roll_back(create, "recovered after a crash");
    s.in_op(create, Event::VmRemoved(VmRemoved { vm_id: DB }));
    // A VM directory the lost events had made, which nothing in the log names any more.
    s.fact(Event::OrphanFound(OrphanFound {
        handle: dir(&vm_dir(API)),
        action: "removed by `banger doctor --fix`".into(),
    }));
    s
}

fn crash_mid_create() -> Scenario {
    let mut s = Scenario::new();
    s.daemon_started("00000000-1111-4222-8333-444444444444", 501);
    let web_net = Net::new(0);
    let db_net = Net::new(1);
    let api_net = Net::new(2);
    create_vm(&mut s, OpId(0x2c01), WEB, "web", &web_net);
    create_vm(&mut s, OpId(0x2c02), DB, "db", &db_net);
    start_vm(&mut s, OpId(0x2c03), WEB, "web", process(31_000, 2_000_000));

    // First crash: a db start had launched its VMM; the host rebooted.
    let db_start = OpId(0x2c04);
    let lost_vmm = process(31_500, 2_100_000);
    s.start_op(
        db_start,
        OpKind::VmStart,
        vm_target(DB, "db"),
        r#"{"name":"db"}"#,
    );
    s.vm_state(Some(db_start), DB, VmState::Stopped, VmState::Starting);
    s.step_started(db_start, "launch-vmm", vec![api_socket(DB)]);
    s.step_succeeded(
        db_start,
        "launch-vmm",
        vec![api_socket(DB), lost_vmm.clone()],
    );
    s.step_started(db_start, "wait-for-agent", vec![]);
    // --- crash; host reboot ---
    s.daemon_started("55555555-6666-4777-8888-999999999999", 498);
    s.fact(Event::VmFoundDead(VmFoundDead {
        vm_id: WEB,
        pid: 31_000,
        start_time_ticks: 2_000_000,
    }));
    s.vm_state(None, WEB, VmState::Running, VmState::Stopped);
    s.recovery_decided(
        db_start,
        RecoveryDecision::RollBack,
        "daemon restarted with vm.start in flight",
    );
    s.undo(db_start, "wait-for-agent");
    s.undo_started(db_start, "launch-vmm");
    s.release(Some(db_start), lost_vmm);
    s.undo_succeeded(db_start, "launch-vmm");
    s.vm_state(Some(db_start), DB, VmState::Starting, VmState::Stopped);
    s.roll_back(db_start, "recovered after a crash");

    // Start web again, so that a stop can be interrupted.
    start_vm(&mut s, OpId(0x2c05), WEB, "web", process(1_200, 4_000));

    // An earlier kernel pull that got stuck stays stuck across everything.
    let stuck = OpId(0x2c06);
    s.start_op(
        stuck,
        OpKind::KernelPull,
        Target::Kernel {
            name: "6.12".into(),
        },
        r#"{"name":"6.12"}"#,
    );
    s.step_started(stuck, "extract", vec![dir("/var/lib/banger/kernels/6.12")]);
    s.step_failed(
        stuck,
        "extract",
        "unsafe symlink in bundle: vmlinux -> /etc/shadow",
    );
    s.undo_started(stuck, "extract");
    s.undo_failed(stuck, "extract", "rmdir: directory not empty");
    s.stuck(stuck, "extract", "rmdir: directory not empty");

    // Four operations interleave, then the daemon dies.
    let create = OpId(0x2c07);
    let pull = OpId(0x2c08);
    let stop = OpId(0x2c09);
    let start_db = OpId(0x2c0a);
    s.start_op(
        create,
        OpKind::VmCreate,
        vm_target(API, "api"),
        r#"{"name":"api","image":"debian-12","kernel":"6.1","vcpus":4}"#,
    );
    s.vm_defined(Some(create), API, "api", spec("debian-12", "6.1"));
    s.start_op(
        pull,
        OpKind::ImagePull,
        Target::Image {
            name: "alpine-3.20".into(),
        },
        r#"{"ref":"127.0.0.1:5000/alpine:3.20"}"#,
    );
    let api_root = file(&format!("{}/root.ext4", vm_dir(API)));
    let api_work = file(&format!("{}/work.ext4", vm_dir(API)));
    s.step(create, "prepare-rootfs", vec![api_root.clone()]);
    s.acquire(Some(create), Owner::Vm(API), api_root);
    s.step(pull, "resolve-manifest", vec![]);
    // These parameters are no resume payload (this story predates them): bangerd's recovery
    // would leave this stop stuck, naming the decode error. The plan here does not look.
    s.start_op(
        stop,
        OpKind::VmStop,
        vm_target(WEB, "web"),
        r#"{"name":"web"}"#,
    );
    s.vm_state(Some(stop), WEB, VmState::Running, VmState::Stopping);
    s.step(create, "prepare-work-disk", vec![api_work.clone()]);
    s.acquire(Some(create), Owner::Vm(API), api_work);
    s.step_started(
        pull,
        "fetch-layers",
        vec![dir("/var/cache/banger/oci/blobs/sha256")],
    );
    s.step(stop, "sync-workspace", vec![]);
    // A db start that failed and was half-way through its undo.
    let db_vmm = process(1_300, 4_400);
    s.start_op(
        start_db,
        OpKind::VmStart,
        vm_target(DB, "db"),
        r#"{"name":"db"}"#,
    );
    s.vm_state(Some(start_db), DB, VmState::Stopped, VmState::Starting);
    s.step_started(start_db, "launch-vmm", vec![api_socket(DB)]);
    s.step_succeeded(start_db, "launch-vmm", vec![api_socket(DB), db_vmm.clone()]);
    s.acquire(Some(start_db), Owner::Vm(DB), db_vmm);
    s.step_started(start_db, "wait-for-agent", vec![]);
    s.step_failed(
        start_db,
        "wait-for-agent",
        "guest agent did not answer within 30000 ms",
    );
    s.undo(start_db, "wait-for-agent");
    s.undo_started(start_db, "launch-vmm");
    s.step_started(stop, "shutdown", vec![]);
    s.step_started(create, "network", api_net.all());
    // --- crash: nothing after this ---
    s
}

/// The `vm.stop`/`vm.kill`/`vm.delete` parameters this build writes: a `stop.v1` payload.
fn stop_v1(
    vm_id: VmId,
    name: &str,
    from: VmState,
    vmm: Option<(u32, u64)>,
    tap: Option<&str>,
) -> String {
    ResumePayload::StopV1(StopResumeV1 {
        vm_id,
        name: name.into(),
        from,
        process: vmm.map(|(pid, start_time_ticks)| RecordedProcess {
            pid,
            start_time_ticks,
        }),
        stop_timeout_ms: 0,
        reason: None,
        tap: tap.map(str::to_owned),
    })
    .encode()
}

/// The log, and how many of its events come before its first crash.
fn rare_operations() -> (Scenario, usize) {
    let mut s = Scenario::new();
    let boot = "3b1d5f00-7c2e-4a19-9e84-6d0c2b1a5f3e";
    s.daemon_started(boot, 700);

    // tap.fill: two spare taps, the daemon's once made (in the commit that ends the fill).
    let fill = OpId(0x3d01);
    let spares = [tap("bt1f2e3d4c"), tap("bt5b6a7988")];
    s.start_op(
        fill,
        OpKind::TapFill,
        Target::Host,
        r#"{"taps":["bt1f2e3d4c","bt5b6a7988"]}"#,
    );
    s.step(fill, "make-taps", spares.to_vec());
    for spare in &spares {
        s.acquire(Some(fill), Owner::Daemon, spare.clone());
    }
    s.succeed(fill);

    // A second fill, whose helper stops answering: its undo fails too, so it is stuck (and
    // blocks the host target) until `banger ops retry`, after the crash below.
    let stuck_fill = OpId(0x3d11);
    let lost = tap("bt9c8d7e6f");
    s.start_op(
        stuck_fill,
        OpKind::TapFill,
        Target::Host,
        r#"{"taps":["bt9c8d7e6f"]}"#,
    );
    s.step_started(stuck_fill, "make-taps", vec![lost]);
    s.step_failed(
        stuck_fill,
        "make-taps",
        "banger-helper did not answer within 5000 ms",
    );
    s.undo_started(stuck_fill, "make-taps");
    s.undo_failed(
        stuck_fill,
        "make-taps",
        "banger-helper did not answer within 5000 ms",
    );
    s.stuck(
        stuck_fill,
        "make-taps",
        "banger-helper did not answer within 5000 ms",
    );

    let web_net = Net::new(0);
    let db_net = Net::new(1);
    let api_net = Net::new(2);
    create_vm(&mut s, OpId(0x3d02), WEB, "web", &web_net);
    let first_vmm = process(41_000, 5_000_000);
    start_vm(&mut s, OpId(0x3d03), WEB, "web", first_vmm.clone());

    // vm.restart, recorded as one operation: the VMM is replaced.
    let restart = OpId(0x3d04);
    let second_vmm = process(41_200, 5_010_000);
    s.start_op(
        restart,
        OpKind::VmRestart,
        vm_target(WEB, "web"),
        r#"{"name":"web"}"#,
    );
    s.vm_state(Some(restart), WEB, VmState::Running, VmState::Stopping);
    s.step(restart, "shutdown", vec![]);
    s.release(Some(restart), first_vmm);
    s.vm_state(Some(restart), WEB, VmState::Stopping, VmState::Stopped);
    s.vm_state(Some(restart), WEB, VmState::Stopped, VmState::Starting);
    s.step_started(restart, "launch-vmm", vec![api_socket(WEB)]);
    s.step_succeeded(
        restart,
        "launch-vmm",
        vec![api_socket(WEB), second_vmm.clone()],
    );
    s.acquire(Some(restart), Owner::Vm(WEB), second_vmm.clone());
    s.step(restart, "wait-for-agent", vec![]);
    s.vm_state(Some(restart), WEB, VmState::Starting, VmState::Running);
    s.succeed(restart);

    // vm.stop whose parameters are the bare stop state builds before resume payloads wrote.
    let stop = OpId(0x3d05);
    s.start_op(
        stop,
        OpKind::VmStop,
        vm_target(WEB, "web"),
        r#"{"vm_id":"0000000057eb0001","name":"web","from":"running","process":{"pid":41200,"start_time_ticks":5010000},"stop_timeout_ms":30000,"reason":null,"tap":"bgtap0"}"#,
    );
    s.vm_state(Some(stop), WEB, VmState::Running, VmState::Stopping);
    s.step(stop, "sync-guest", vec![]);
    s.step(stop, "shutdown", vec![]);
    s.step(stop, "release-sockets", vec![]);
    s.release(Some(stop), second_vmm);
    s.vm_state(Some(stop), WEB, VmState::Stopping, VmState::Stopped);
    s.succeed(stop);

    // image.promote: the stopped VM's root disk becomes an image; the loop device it is read
    // through belongs to the operation while it runs.
    let promote = OpId(0x3d06);
    let golden = "/var/lib/banger/images/web-golden.ext4";
    let lo = loop_device("/dev/loop3");
    s.start_op(
        promote,
        OpKind::ImagePromote,
        Target::Image {
            name: "web-golden".into(),
        },
        r#"{"vm":"web","name":"web-golden"}"#,
    );
    s.step(promote, "attach-root-disk", vec![lo.clone()]);
    s.acquire(Some(promote), Owner::Op(promote), lo.clone());
    s.step(promote, "copy-rootfs", vec![file(golden)]);
    s.step(promote, "detach-root-disk", vec![]);
    s.release(Some(promote), lo);
    s.in_op(
        promote,
        Event::ImageRegistered(ImageRegistered {
            name: "web-golden".into(),
            rootfs_path: golden.into(),
            kernel: Some("6.1".into()),
            size_bytes: 2_147_483_648,
            sha256: "7c".repeat(32),
            source: "promote:vm/web".into(),
        }),
    );
    s.succeed(promote);

    // db: created, started, killed (stop.v1 parameters).
    create_vm(&mut s, OpId(0x3d07), DB, "db", &db_net);
    let db_vmm = process(42_000, 5_100_000);
    start_vm(&mut s, OpId(0x3d08), DB, "db", db_vmm.clone());
    let kill = OpId(0x3d09);
    s.start_op(
        kill,
        OpKind::VmKill,
        vm_target(DB, "db"),
        &stop_v1(
            DB,
            "db",
            VmState::Running,
            Some((42_000, 5_100_000)),
            Some("bgtap1"),
        ),
    );
    s.vm_state(Some(kill), DB, VmState::Running, VmState::Stopping);
    s.step(kill, "kill", vec![]);
    s.step(kill, "release-sockets", vec![]);
    s.release(Some(kill), db_vmm);
    s.vm_state(Some(kill), DB, VmState::Stopping, VmState::Stopped);
    s.succeed(kill);

    // A delete of db whose files cannot be removed: a delete cannot be undone, so the VM is
    // left failed; its tap, removed by then, is released by the reconcile that follows.
    let delete = OpId(0x3d0a);
    s.start_op(
        delete,
        OpKind::VmDelete,
        vm_target(DB, "db"),
        &stop_v1(DB, "db", VmState::Stopped, None, Some("bgtap1")),
    );
    s.vm_state(Some(delete), DB, VmState::Stopped, VmState::Deleting);
    s.step(delete, "kill", vec![]);
    s.step(delete, "release-tap", vec![db_net.tap.clone()]);
    s.step_started(delete, "remove-files", vec![dir(&vm_dir(DB))]);
    s.step_failed(
        delete,
        "remove-files",
        "cannot remove /var/lib/banger/vms/00000000db000002/work.ext4: device or resource busy",
    );
    s.undo(delete, "remove-files");
    s.undo(delete, "release-tap");
    s.undo(delete, "kill");
    s.vm_state(Some(delete), DB, VmState::Deleting, VmState::Failed);
    s.roll_back(delete, "step remove-files failed");
    s.release(None, db_net.tap.clone());

    // A start of web that fails, and bangerd dies half-way through undoing it.
    let start = OpId(0x3d0b);
    let third_vmm = process(41_400, 5_300_000);
    s.start_op(
        start,
        OpKind::VmStart,
        vm_target(WEB, "web"),
        r#"{"name":"web"}"#,
    );
    s.vm_state(Some(start), WEB, VmState::Stopped, VmState::Starting);
    s.step_started(start, "launch-vmm", vec![api_socket(WEB)]);
    s.step_succeeded(
        start,
        "launch-vmm",
        vec![api_socket(WEB), third_vmm.clone()],
    );
    s.acquire(Some(start), Owner::Vm(WEB), third_vmm.clone());
    s.step_started(start, "wait-for-agent", vec![]);
    s.step_failed(
        start,
        "wait-for-agent",
        "guest agent did not answer within 30000 ms",
    );
    s.undo(start, "wait-for-agent");
    s.undo_started(start, "launch-vmm");
    // Meanwhile the promoted image is being deleted, and a kernel import has just failed.
    let delete_image = OpId(0x3d13);
    let aside = dir("/var/lib/banger/images/.removing-0000000000003d13");
    s.start_op(
        delete_image,
        OpKind::ImageDelete,
        Target::Image {
            name: "web-golden".into(),
        },
        r#"{"name":"web-golden"}"#,
    );
    s.step_started(delete_image, "unpublish", vec![aside.clone()]);
    let import = OpId(0x3d12);
    s.start_op(
        import,
        OpKind::KernelImport,
        Target::Kernel { name: "6.6".into() },
        r#"{"from":"/home/dev/kernels/6.6"}"#,
    );
    s.step_started(
        import,
        "copy-kernel",
        vec![dir("/var/lib/banger/kernels/.import-0000000000003d12")],
    );
    s.step_failed(
        import,
        "copy-kernel",
        "read /home/dev/kernels/6.6/vmlinux: input/output error",
    );
    // --- crash; same host. The next daemon finishes the undos it finds begun and the
    // delete, in the order they started ---
    let crash = s.len();
    s.daemon_started(boot, 733);
    s.recovery_decided(
        start,
        RecoveryDecision::ResumeUndo,
        "bangerd stopped during step launch-vmm",
    );
    s.undo_started(start, "launch-vmm");
    s.release(Some(start), third_vmm);
    s.undo_succeeded(start, "launch-vmm");
    s.vm_state(Some(start), WEB, VmState::Starting, VmState::Stopped);
    s.roll_back(
        start,
        "bangerd stopped during step launch-vmm; rolled back at restart",
    );
    s.recovery_decided(
        delete_image,
        RecoveryDecision::RollForward,
        "bangerd stopped during step unpublish",
    );
    s.step(delete_image, "unpublish", vec![aside]);
    s.step(delete_image, "delete", vec![]);
    s.in_op(
        delete_image,
        Event::ImageRemoved(ImageRemoved {
            name: "web-golden".into(),
        }),
    );
    s.succeed(delete_image);
    s.recovery_decided(
        import,
        RecoveryDecision::ResumeUndo,
        "bangerd stopped during step copy-kernel",
    );
    s.undo(import, "copy-kernel");
    s.roll_back(
        import,
        "bangerd stopped during step copy-kernel; rolled back at restart",
    );
    // The helper answers again: `banger ops retry` rolls the stuck fill back.
    s.undo(stuck_fill, "make-taps");
    s.roll_back(
        stuck_fill,
        "step make-taps failed: banger-helper did not answer within 5000 ms; rolled back by \
         `banger ops retry`",
    );

    // teardown: the spare taps go; the daemon stops cleanly, and a new one starts.
    let teardown = OpId(0x3d0c);
    s.start_op(
        teardown,
        OpKind::Teardown,
        Target::Host,
        r#"{"spares":true}"#,
    );
    s.step(teardown, "remove-spare-taps", spares.to_vec());
    for spare in &spares {
        s.release(Some(teardown), spare.clone());
    }
    s.succeed(teardown);
    s.daemon_stopped("SIGTERM");
    s.daemon_started(boot, 760);

    // api, created and running; then a stop of it (bare parameters, as an idle stop of an
    // older build wrote them) and another delete of the failed db (stop.v1) are in flight
    // when bangerd dies. Both roll forward.
    create_vm(&mut s, OpId(0x3d0d), API, "api", &api_net);
    start_vm(&mut s, OpId(0x3d0e), API, "api", process(43_000, 5_200_000));
    let stop_api = OpId(0x3d0f);
    s.start_op(
        stop_api,
        OpKind::VmStop,
        vm_target(API, "api"),
        r#"{"vm_id":"000000000a910003","name":"api","from":"running","process":{"pid":43000,"start_time_ticks":5200000},"stop_timeout_ms":30000,"reason":"idle for 1800 s (idle_stop_after is 1800 s)","tap":"bgtap2"}"#,
    );
    s.vm_state(Some(stop_api), API, VmState::Running, VmState::Stopping);
    let delete_again = OpId(0x3d10);
    s.start_op(
        delete_again,
        OpKind::VmDelete,
        vm_target(DB, "db"),
        &stop_v1(DB, "db", VmState::Failed, None, None),
    );
    s.vm_state(Some(delete_again), DB, VmState::Failed, VmState::Deleting);
    s.step(stop_api, "sync-guest", vec![]);
    s.step(delete_again, "kill", vec![]);
    s.step_started(stop_api, "shutdown", vec![]);
    s.step_started(delete_again, "release-tap", vec![tap("btdb000002")]);
    // --- crash: nothing after this ---
    (s, crash)
}
