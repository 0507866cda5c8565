//! How the projection views read on a terminal: tables for lists, `key: value` blocks for one
//! item. `--json` bypasses all of this and prints the views as the daemon sent them.
//!
//! The last column of a table says *when*. Live commands show the age (`5m`); an offline
//! replay shows the sequence number instead, so that replaying the same log prints the same
//! bytes whenever it runs.

use std::collections::BTreeMap;

use banger_events::{Handle, Owner, Seq, VmId};

use super::format::{Table, format_age, format_timestamp, or_dash, short_id};
use crate::api::{ImageView, KernelView, OperationView, VmView};
use crate::size::format_bytes;

/// What the "when" column of a table shows.
#[derive(Clone, Copy, Debug)]
pub enum When {
    /// Age relative to this instant (ms since the epoch).
    Age { now_unix_ms: u64 },
    /// The sequence number of the event that made the row.
    Seq,
}

impl When {
    fn header(self) -> &'static str {
        match self {
            When::Age { .. } => "AGE",
            When::Seq => "SEQ",
        }
    }

    fn cell(self, seq: Seq, at_unix_ms: u64) -> String {
        match self {
            When::Age { now_unix_ms } => format_age(at_unix_ms, now_unix_ms),
            When::Seq => seq.to_string(),
        }
    }
}

pub fn vm_table<'a>(vms: impl IntoIterator<Item = &'a VmView>, when: When) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "IMAGE",
        "KERNEL",
        "CPUS",
        "MEMORY",
        "DISK",
        "PID",
        when.header(),
    ]);
    for vm in vms {
        table.row(vec![
            vm.name.clone(),
            vm.state.to_string(),
            vm.spec.image.clone(),
            vm.spec.kernel.clone(),
            vm.spec.vcpus.to_string(),
            format_bytes(vm.spec.memory_mib.saturating_mul(1 << 20)),
            format_bytes(vm.spec.work_disk_mib.saturating_mul(1 << 20)),
            or_dash(vm.process.map(|p| p.pid)),
            when.cell(vm.defined_seq, vm.defined_at_unix_ms),
        ]);
    }
    table
}

pub fn image_table<'a>(images: impl IntoIterator<Item = &'a ImageView>, when: When) -> Table {
    let mut table = Table::new(&["NAME", "SIZE", "KERNEL", "SOURCE", "DIGEST", when.header()]);
    for image in images {
        let (source, digest) = split_source(&image.source);
        table.row(vec![
            image.name.clone(),
            format_bytes(image.size_bytes),
            or_dash(image.kernel.as_deref()),
            source.to_owned(),
            or_dash(digest.map(short_digest).as_deref()),
            when.cell(image.registered_seq, image.registered_at_unix_ms),
        ]);
    }
    table
}

/// An image's source without its digest, and the digest (`sha256:…`) when it records one:
/// `oci:docker.io/library/debian:bookworm@sha256:ab…` is the reference and `sha256:ab…`.
pub fn split_source(source: &str) -> (&str, Option<&str>) {
    match source.rsplit_once('@') {
        Some((rest, digest)) if digest.starts_with("sha256:") => (rest, Some(digest)),
        _ => (source, None),
    }
}

/// `sha256:` and the first 12 hex digits, as `docker images` shows them.
fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

pub fn kernel_table<'a>(kernels: impl IntoIterator<Item = &'a KernelView>, when: When) -> Table {
    let mut table = Table::new(&["NAME", "VERSION", "INITRD", "SOURCE", when.header()]);
    for kernel in kernels {
        table.row(vec![
            kernel.name.clone(),
            or_dash(Some(kernel.version.as_str()).filter(|v| !v.is_empty())),
            if kernel.initrd_path.is_some() {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
            kernel.source.clone(),
            when.cell(kernel.registered_seq, kernel.registered_at_unix_ms),
        ]);
    }
    table
}

/// `(handle, owner, acquired at)` rows; `vms` names the VM owners when known.
pub fn handle_table<'a>(
    handles: impl IntoIterator<Item = (&'a Handle, Owner, Seq)>,
    vms: Option<&BTreeMap<VmId, VmView>>,
) -> Table {
    let mut table = Table::new(&["HANDLE", "OWNER", "SEQ"]);
    for (handle, owner, seq) in handles {
        table.row(vec![
            handle.to_string(),
            owner_text(owner, vms),
            seq.to_string(),
        ]);
    }
    table
}

pub fn operation_table<'a>(ops: impl IntoIterator<Item = &'a OperationView>, when: When) -> Table {
    let mut table = Table::new(&["OP", "KIND", "TARGET", "STATUS", "STEP", when.header()]);
    for op in ops {
        table.row(vec![
            short_id(&op.op_id),
            op.kind.to_string(),
            op.target.to_string(),
            op.status.as_str().to_owned(),
            or_dash(
                op.current_step()
                    .map(|step| format!("{} ({})", step.name, step.status)),
            ),
            when.cell(op.started_seq, op.started_at_unix_ms),
        ]);
    }
    table
}

/// `vm dev`, `op 3f2a19c4`, `daemon`.
pub fn owner_text(owner: Owner, vms: Option<&BTreeMap<VmId, VmView>>) -> String {
    match owner {
        Owner::Vm(id) => match vms.and_then(|vms| vms.get(&id)) {
            Some(vm) => format!("vm {}", vm.name),
            None => format!("vm {}", short_id(&id)),
        },
        Owner::Op(id) => format!("op {}", short_id(&id)),
        Owner::Daemon => "daemon".to_owned(),
    }
}

/// Aligned `key: value` lines.
fn details(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(key, _)| key.len() + 1)
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| format!("{:<width$} {value}\n", format!("{key}:")))
        .collect()
}

fn when_text(seq: Seq, at_unix_ms: u64, now_unix_ms: u64) -> String {
    format!(
        "{} ({} ago, seq {seq})",
        format_timestamp(at_unix_ms),
        format_age(at_unix_ms, now_unix_ms)
    )
}

pub fn vm_details(vm: &VmView, now_unix_ms: u64) -> String {
    let mut pairs = vec![
        ("name", vm.name.clone()),
        ("id", vm.id.to_string()),
        ("state", vm.state.to_string()),
        ("image", vm.spec.image.clone()),
        ("kernel", vm.spec.kernel.clone()),
        (
            "vmm",
            match &vm.backend {
                Some(backend) => format!("{} ({})", backend.vmm, backend.reason),
                None => format!("{} (created before banger recorded a VM's VMM)", vm.vmm()),
            },
        ),
        ("cpus", vm.spec.vcpus.to_string()),
        (
            "memory",
            format_bytes(vm.spec.memory_mib.saturating_mul(1 << 20)),
        ),
        (
            "root disk",
            format_bytes(vm.spec.root_disk_mib.saturating_mul(1 << 20)),
        ),
        (
            "work disk",
            format_bytes(vm.spec.work_disk_mib.saturating_mul(1 << 20)),
        ),
        (
            "process",
            or_dash(
                vm.process
                    .map(|p| format!("pid {} (start tick {})", p.pid, p.start_time_ticks)),
            ),
        ),
        (
            "created",
            when_text(vm.defined_seq, vm.defined_at_unix_ms, now_unix_ms),
        ),
        (
            "changed",
            format!(
                "{} ({} ago)",
                format_timestamp(vm.changed_at_unix_ms),
                format_age(vm.changed_at_unix_ms, now_unix_ms)
            ),
        ),
    ];
    if let Some(key) = &vm.host_key {
        pairs.push((
            "host key",
            format!(
                "{} {} (ssh, recorded at seq {})",
                key.algorithm, key.fingerprint_sha256, key.recorded_seq
            ),
        ));
    }
    if let Some(exit) = &vm.last_exit {
        let how = match (exit.exit_code, exit.signal) {
            (_, Some(signal)) => format!("killed by signal {signal}"),
            (Some(code), None) => format!("exit status {code}"),
            (None, None) => "unknown status".to_owned(),
        };
        pairs.push((
            "last exit",
            format!("pid {} {how} (seq {})", exit.pid, exit.seq),
        ));
    }
    if let Some(workspace) = &vm.workspace {
        let commit = if workspace.commit.is_empty() {
            "no commit".to_owned()
        } else {
            format!(
                "commit {}",
                &workspace.commit[..workspace.commit.len().min(12)]
            )
        };
        pairs.push((
            "workspace",
            format!(
                "{} -> {} ({commit}, tree {}, imported {} ago)",
                workspace.host_path,
                workspace.guest_path,
                &workspace.tree_hash[..workspace.tree_hash.len().min(12)],
                format_age(workspace.imported_at_unix_ms, now_unix_ms)
            ),
        ));
    }
    if vm.found_dead {
        pairs.push((
            "note",
            "its process was gone when bangerd started".to_owned(),
        ));
    }
    details(&pairs)
}

pub fn image_details(image: &ImageView, now_unix_ms: u64) -> String {
    details(&[
        ("name", image.name.clone()),
        (
            "size",
            format!(
                "{} ({} bytes)",
                format_bytes(image.size_bytes),
                image.size_bytes
            ),
        ),
        ("kernel", or_dash(image.kernel.as_deref())),
        ("rootfs", image.rootfs_path.clone()),
        (
            "sha256",
            or_dash(Some(image.sha256.as_str()).filter(|s| !s.is_empty())),
        ),
        ("source", split_source(&image.source).0.to_owned()),
        ("digest", or_dash(split_source(&image.source).1)),
        (
            "registered",
            when_text(
                image.registered_seq,
                image.registered_at_unix_ms,
                now_unix_ms,
            ),
        ),
    ])
}

pub fn kernel_details(kernel: &KernelView, now_unix_ms: u64) -> String {
    details(&[
        ("name", kernel.name.clone()),
        (
            "version",
            or_dash(Some(kernel.version.as_str()).filter(|v| !v.is_empty())),
        ),
        ("kernel", kernel.kernel_path.clone()),
        ("initrd", or_dash(kernel.initrd_path.as_deref())),
        (
            "sha256",
            or_dash(Some(kernel.sha256.as_str()).filter(|s| !s.is_empty())),
        ),
        ("source", kernel.source.clone()),
        (
            "registered",
            when_text(
                kernel.registered_seq,
                kernel.registered_at_unix_ms,
                now_unix_ms,
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_align_their_values() {
        let text = details(&[("name", "k1".into()), ("sha256", "-".into())]);
        assert_eq!(text, "name:   k1\nsha256: -\n");
    }

    #[test]
    fn vm_details_spell_out_sizes_and_the_last_exit() {
        use banger_events::{VmSpec, VmState};
        let vm = VmView {
            id: VmId(0xabc),
            name: "dev".into(),
            spec: VmSpec {
                image: "debian".into(),
                kernel: "k1".into(),
                vcpus: 2,
                memory_mib: 1536,
                root_disk_mib: 4096,
                work_disk_mib: 8192,
            },
            state: VmState::Stopped,
            defined_seq: Seq(3),
            defined_at_unix_ms: 0,
            changed_at_unix_ms: 60_000,
            process: None,
            last_exit: Some(banger_projections::ExitView {
                pid: 42,
                exit_code: None,
                signal: Some(9),
                console_tail: String::new(),
                seq: Seq(9),
                at_unix_ms: 60_000,
            }),
            found_dead: false,
            backend: Some(banger_projections::VmBackend {
                vmm: banger_events::VmmKind::Qemu,
                reason: "auto: no /dev/kvm; QEMU runs it under tcg".into(),
            }),
            workspace: None,
            host_key: Some(banger_projections::HostKeyView {
                algorithm: "ssh-ed25519".into(),
                public_key: "AAAA".into(),
                fingerprint_sha256: "SHA256:abc".into(),
                recorded_seq: Seq(8),
            }),
        };
        let text = vm_details(&vm, 120_000);
        for wanted in [
            "name:      dev\n",
            "vmm:       qemu (auto: no /dev/kvm; QEMU runs it under tcg)\n",
            "id:        0000000000000abc\n",
            "memory:    1.5 GiB\n",
            "work disk: 8 GiB\n",
            "process:   -\n",
            "host key:  ssh-ed25519 SHA256:abc (ssh, recorded at seq 8)\n",
            "created:   1970-01-01T00:00:00.000Z (2m ago, seq 3)\n",
            "last exit: pid 42 killed by signal 9 (seq 9)\n",
        ] {
            assert!(text.contains(wanted), "{wanted:?} in\n{text}");
        }
    }

    #[test]
    fn replayed_tables_show_sequence_numbers() {
        let image = ImageView {
            name: "debian".into(),
            rootfs_path: "/s/images/debian.ext4".into(),
            kernel: None,
            size_bytes: 1 << 30,
            sha256: String::new(),
            source: "register:/tmp/debian.ext4".into(),
            registered_seq: Seq(7),
            registered_at_unix_ms: 1,
        };
        assert_eq!(
            image_table([&image], When::Seq).render(),
            "NAME    SIZE   KERNEL  SOURCE                     DIGEST  SEQ\n\
             debian  1 GiB  -       register:/tmp/debian.ext4  -       7\n"
        );
        let pulled = ImageView {
            source: format!(
                "oci:docker.io/library/debian:bookworm@sha256:{}",
                "ab".repeat(32)
            ),
            ..image
        };
        assert!(
            image_table([&pulled], When::Seq)
                .render()
                .contains("oci:docker.io/library/debian:bookworm  sha256:abababababab  7")
        );
    }
}
