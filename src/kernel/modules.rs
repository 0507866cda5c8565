//! The kernel modules a microVM needs, found in a kernel package and put in load order.
//!
//! A Debian kernel package carries no `modules.dep` (`depmod` makes it when the package is
//! installed), so dependencies are read from each module's own `.modinfo` section
//! (`depends=`), which is what `depmod` reads too. Modules are named as the kernel names them
//! (`virtio_rng`, although the file is `virtio-rng.ko`).
//!
//! Invariants: the load order puts every module after all of its dependencies, and is
//! deterministic (the wanted modules in the order [`MICROVM_MODULES`] lists them, each
//! dependency first in the order its `depends=` names them); a wanted module the kernel has
//! built in needs no file; a required module, or a dependency of a chosen module, that the
//! package has neither as a file nor built in is an error naming it.

use std::collections::{BTreeMap, BTreeSet};

use super::KernelError;

/// Whether the guest cannot boot as banger expects without a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Missing from the package (and not built in): the conversion fails.
    Required,
    /// Loaded when the package has it: useful, not essential.
    Optional,
}

/// The modules banger's initrd loads, in this order (dependencies are added before each).
///
/// - virtio_mmio: the transport of Firecracker's and QEMU microvm's devices, found through
///   ACPI (Firecracker 1.8+); virtio_pci for VMMs that use PCI (harmless without one).
/// - virtio_blk (the root and work disks), virtio_net (eth0), virtio_console (the agent's
///   virtio-serial port where there is no vsock), vsock with its virtio transport (the agent's
///   channel under Firecracker).
/// - virtio_rng: entropy early in boot; button and evdev: the ACPI power button, which is how
///   QEMU asks the guest to power off (`system_powerdown`).
pub const MICROVM_MODULES: &[(&str, Need)] = &[
    ("virtio_mmio", Need::Required),
    ("virtio_pci", Need::Optional),
    ("virtio_blk", Need::Required),
    ("virtio_net", Need::Required),
    ("virtio_console", Need::Required),
    ("virtio_rng", Need::Optional),
    ("vsock", Need::Required),
    ("vmw_vsock_virtio_transport", Need::Required),
    ("button", Need::Optional),
    ("evdev", Need::Optional),
];

/// A module file of the package, with what its `.modinfo` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleFile {
    /// The kernel's name for it (`virtio_rng`).
    pub name: String,
    /// Its path under `lib/modules/<release>/` (`kernel/drivers/char/hw_random/virtio-rng.ko`).
    pub path: String,
    /// The modules it needs loaded first, by name.
    pub depends: Vec<String>,
    /// The release it was built for (the first word of `vermagic=`).
    pub release: Option<String>,
}

/// The kernel's name for a module file or a `modules.builtin` line: the file name without
/// `.ko`, with `-` read as `_`.
pub fn module_name_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file).replace('-', "_")
}

/// Reads the `.modinfo` section of a module (an ELF64 little-endian relocatable object).
pub fn read_modinfo(path: &str, ko: &[u8]) -> Result<ModuleFile, KernelError> {
    let bad = |reason: &str| KernelError::Module {
        module: path.to_owned(),
        reason: reason.to_owned(),
    };
    let section = elf_section(ko, ".modinfo").map_err(|e| bad(&e))?;
    let mut name = None;
    let mut depends = Vec::new();
    let mut release = None;
    for field in section.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        match field.split_once('=') {
            Some(("name", value)) => name = Some(value.to_owned()),
            Some(("depends", value)) => {
                depends = value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| d.replace('-', "_"))
                    .collect();
            }
            Some(("vermagic", value)) => {
                release = value.split_whitespace().next().map(str::to_owned);
            }
            _ => {}
        }
    }
    Ok(ModuleFile {
        name: name.unwrap_or_else(|| module_name_of_path(path)),
        path: path.to_owned(),
        depends,
        release,
    })
}

/// The bytes of the named section of an ELF64 little-endian file, bounds-checked.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Result<&'a [u8], String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| -> Result<usize, String> {
        elf.get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| "truncated ELF header".to_owned())
    };
    let u32_at = |at: usize| -> Result<usize, String> {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "truncated ELF section header".to_owned())
    };
    let u64_at = |at: usize| -> Result<usize, String> {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| "truncated ELF section header".to_owned())
    };
    let section_headers = u64_at(0x28)?;
    let entry_size = u16_at(0x3a)?;
    let count = u16_at(0x3c)?;
    let names_index = u16_at(0x3e)?;
    if entry_size < 64 || names_index >= count {
        return Err("malformed ELF section table".into());
    }
    let header = |index: usize| -> Result<(usize, usize, usize), String> {
        let at = index
            .checked_mul(entry_size)
            .and_then(|offset| offset.checked_add(section_headers))
            .ok_or("malformed ELF section table")?;
        Ok((u32_at(at)?, u64_at(at + 0x18)?, u64_at(at + 0x20)?))
    };
    let bytes_of = |offset: usize, size: usize| -> Result<&'a [u8], String> {
        offset
            .checked_add(size)
            .and_then(|end| elf.get(offset..end))
            .ok_or_else(|| "an ELF section lies past the end of the file".to_owned())
    };
    let (_, names_offset, names_size) = header(names_index)?;
    let names = bytes_of(names_offset, names_size)?;
    for index in 0..count {
        let (name_at, offset, size) = header(index)?;
        let name = names
            .get(name_at..)
            .and_then(|rest| rest.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == wanted.as_bytes() {
            return bytes_of(offset, size);
        }
    }
    Err(format!("no {wanted} section: not a kernel module"))
}

/// The modules to load, in order: each wanted module of [`MICROVM_MODULES`] (or `wanted`)
/// that is available, after its dependencies. `builtin` holds the names the kernel has built
/// in. Returns the files in load order and the names of optional modules left out.
pub fn load_order<'a>(
    files: &'a BTreeMap<String, ModuleFile>,
    builtin: &BTreeSet<String>,
    wanted: &[(&str, Need)],
) -> Result<(Vec<&'a ModuleFile>, Vec<String>), KernelError> {
    let mut order = Vec::new();
    let mut placed = BTreeSet::new();
    let mut skipped = Vec::new();
    for (name, need) in wanted {
        if builtin.contains(*name) {
            continue;
        }
        if !files.contains_key(*name) {
            match need {
                Need::Required => {
                    return Err(KernelError::MissingModule {
                        module: (*name).to_owned(),
                        needed_by: None,
                    });
                }
                Need::Optional => {
                    skipped.push((*name).to_owned());
                    continue;
                }
            }
        }
        place(
            name,
            None,
            files,
            builtin,
            &mut placed,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok((order, skipped))
}

/// Depth-first: dependencies are placed before the module; `visiting` catches cycles.
fn place<'a>(
    name: &str,
    needed_by: Option<&str>,
    files: &'a BTreeMap<String, ModuleFile>,
    builtin: &BTreeSet<String>,
    placed: &mut BTreeSet<String>,
    visiting: &mut Vec<String>,
    order: &mut Vec<&'a ModuleFile>,
) -> Result<(), KernelError> {
    if placed.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if visiting.iter().any(|v| v == name) {
        return Err(KernelError::Module {
            module: name.to_owned(),
            reason: format!("its dependencies form a cycle: {}", visiting.join(" → ")),
        });
    }
    let file = files.get(name).ok_or_else(|| KernelError::MissingModule {
        module: name.to_owned(),
        needed_by: needed_by.map(str::to_owned),
    })?;
    visiting.push(name.to_owned());
    for dependency in &file.depends {
        place(
            dependency,
            Some(name),
            files,
            builtin,
            placed,
            visiting,
            order,
        )?;
    }
    visiting.pop();
    placed.insert(name.to_owned());
    order.push(file);
    Ok(())
}

/// `modules.dep` in depmod's format (`kernel/a.ko: kernel/b.ko kernel/c.ko`, every module
/// followed by all it needs, nearest first), for the chosen modules: what `modprobe` reads in
/// a guest that has kmod.
pub fn modules_dep(order: &[&ModuleFile]) -> String {
    let by_name: BTreeMap<&str, &ModuleFile> =
        order.iter().map(|m| (m.name.as_str(), *m)).collect();
    let mut text = String::new();
    for module in order {
        let mut all = Vec::new();
        let mut stack: Vec<&str> = module.depends.iter().map(String::as_str).collect();
        stack.reverse();
        while let Some(name) = stack.pop() {
            let Some(dependency) = by_name.get(name) else {
                continue; // built in
            };
            if !all.contains(&dependency.path.as_str()) {
                all.push(dependency.path.as_str());
                stack.extend(dependency.depends.iter().rev().map(String::as_str));
            }
        }
        text.push_str(&module.path);
        text.push(':');
        for path in all {
            text.push(' ');
            text.push_str(path);
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 relocatable object whose only sections are `.modinfo` (with `fields`)
    /// and the section name table: enough for [`read_modinfo`].
    pub(crate) fn fake_module(fields: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for field in fields {
            modinfo.extend_from_slice(field.as_bytes());
            modinfo.push(0);
        }
        let names = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[0x10] = 1; // ET_REL
        elf[0x12] = 0x3e;
        let modinfo_at = elf.len();
        elf.extend_from_slice(&modinfo);
        let names_at = elf.len();
        elf.extend_from_slice(&names);
        let headers_at = elf.len();
        let section = |name: u32, offset: usize, size: usize| {
            let mut header = vec![0u8; 64];
            header[..4].copy_from_slice(&name.to_le_bytes());
            header[4..8].copy_from_slice(&1u32.to_le_bytes());
            header[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            header[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            header
        };
        elf.extend_from_slice(&[0u8; 64]);
        elf.extend_from_slice(&section(1, modinfo_at, modinfo.len()));
        elf.extend_from_slice(&section(10, names_at, names.len()));
        elf[0x28..0x30].copy_from_slice(&(headers_at as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    fn module(name: &str, depends: &[&str]) -> (String, ModuleFile) {
        (
            name.to_owned(),
            ModuleFile {
                name: name.to_owned(),
                path: format!("kernel/{name}.ko"),
                depends: depends.iter().map(|d| (*d).to_owned()).collect(),
                release: None,
            },
        )
    }

    #[test]
    fn modinfo_is_read_from_the_section() {
        let ko = fake_module(&[
            "license=GPL",
            "depends=virtio,virtio_ring",
            "name=virtio_rng",
            "vermagic=6.1.0-57-cloud-amd64 SMP mod_unload modversions ",
        ]);
        let info = read_modinfo("kernel/drivers/char/hw_random/virtio-rng.ko", &ko).unwrap();
        assert_eq!(info.name, "virtio_rng");
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        let info = read_modinfo("kernel/x/no-name.ko", &fake_module(&["depends="])).unwrap();
        assert_eq!(info.name, "no_name");
        assert!(info.depends.is_empty());
    }

    #[test]
    fn files_that_are_not_modules_are_refused() {
        for (bytes, expected) in [
            (b"not elf at all".to_vec(), "not an ELF file"),
            (
                {
                    let mut elf = fake_module(&["name=x"]);
                    elf.truncate(100);
                    elf
                },
                "truncated",
            ),
            (
                {
                    let mut elf = fake_module(&["name=x"]);
                    // Point the section table far past the end.
                    elf[0x28..0x30].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
                    elf
                },
                "",
            ),
        ] {
            let error = read_modinfo("kernel/x.ko", &bytes).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn dependencies_load_first_in_a_stable_order() {
        let files: BTreeMap<_, _> = [
            module("virtio_ring", &[]),
            module("virtio", &["virtio_ring"]),
            module("virtio_mmio", &["virtio", "virtio_ring"]),
            module("virtio_blk", &["virtio", "virtio_ring"]),
            module("failover", &[]),
            module("net_failover", &["failover"]),
            module("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            module("virtio_console", &["virtio", "virtio_ring"]),
            module("vsock", &[]),
            module("vmw_vsock_virtio_transport_common", &["vsock"]),
            module(
                "vmw_vsock_virtio_transport",
                &[
                    "virtio",
                    "vmw_vsock_virtio_transport_common",
                    "virtio_ring",
                    "vsock",
                ],
            ),
            module("evdev", &[]),
        ]
        .into_iter()
        .collect();
        let builtin = BTreeSet::from(["button".to_owned()]);
        let (order, skipped) = load_order(&files, &builtin, MICROVM_MODULES).unwrap();
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_console",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "evdev",
            ]
        );
        assert_eq!(skipped, ["virtio_pci", "virtio_rng"]);
        let dep = modules_dep(&order);
        assert!(
            dep.starts_with("kernel/virtio_ring.ko:\nkernel/virtio.ko: kernel/virtio_ring.ko\n"),
            "{dep}"
        );
        assert!(
            dep.contains(
                "kernel/virtio_net.ko: kernel/virtio_ring.ko kernel/virtio.ko \
                 kernel/net_failover.ko kernel/failover.ko\n"
            ),
            "{dep}"
        );
    }

    #[test]
    fn missing_modules_are_named() {
        let files: BTreeMap<_, _> = [module("virtio_mmio", &["virtio"])].into_iter().collect();
        let error = load_order(&files, &BTreeSet::new(), &[("virtio_mmio", Need::Required)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("virtio") && error.contains("needed by virtio_mmio"),
            "{error}"
        );
        let error = load_order(&files, &BTreeSet::new(), &[("virtio_blk", Need::Required)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("virtio_blk"), "{error}");
        // A built-in dependency needs no file.
        let builtin = BTreeSet::from(["virtio".to_owned()]);
        let (order, _) = load_order(&files, &builtin, &[("virtio_mmio", Need::Required)]).unwrap();
        assert_eq!(order.len(), 1);
    }

    #[test]
    fn dependency_cycles_are_refused() {
        let files: BTreeMap<_, _> = [module("a", &["b"]), module("b", &["a"])]
            .into_iter()
            .collect();
        let error = load_order(&files, &BTreeSet::new(), &[("a", Need::Required)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("cycle"), "{error}");
    }
}
