//! `kernel.import`: copies a kernel (an uncompressed `vmlinux`, an initrd when there is one,
//! the modules when there are) from a directory into the kernel store, and registers it.
//!
//! | step       | intent                      | ensure                                        | undo                                   |
//! |------------|-----------------------------|-----------------------------------------------|----------------------------------------|
//! | `stage`    | dir `kernels/.staging-<op>` | fresh staging dir with the op's marker; copy   | remove the staging dir                 |
//! |            |                             | `vmlinux` (extracted from a bzImage when that  |                                        |
//! |            |                             | is what there is), `initrd.img`,               |                                        |
//! |            |                             | `lib/modules/<ver>`, a bundle's `manifest.json`|                                        |
//! | `checksum` | —                           | sha256 of the staged vmlinux, version banner  | nothing to undo                        |
//! | `publish`  | dir `kernels/<name>`        | rename the staging dir to `kernels/<name>`    | remove `kernels/<name>` if this op made it |
//!
//! On success `KernelRegistered` is appended with `OperationSucceeded`. The source directory
//! is only read. What is looked for in it ([`discover`]), first match wins:
//!
//! 1. `manifest.json`: a banger bundle (what `kernel pull` publishes, `tools/kernel-bundle
//!    --keep-dir` writes): its manifest names the files and the release.
//! 2. `metadata.json`: `{"kernel": PATH, "initrd": PATH, "modules": DIR, "version": TEXT}`,
//!    paths relative to the directory, only `kernel` required (what a kernel build script
//!    writes beside its output).
//! 3. By name, in the directory and in its `boot/`: the kernel `vmlinux`, `vmlinux-<ver>`,
//!    else a bzImage `vmlinuz`/`vmlinuz-<ver>` (its ELF is extracted: Firecracker boots only
//!    that); the initrd `initrd.img`, `initrd.img-<ver>`, `initramfs-<ver>`, else exactly one
//!    `initrd*`/`initramfs*`; the modules `lib/modules/<ver>` (the kernel's version, else the
//!    only one).
//!
//! Only regular files and directories are copied; symlinks in a module tree (`build`,
//! `source`, pointing at headers elsewhere) are skipped, never followed.

use std::fs;
use std::path::{Path, PathBuf};

use banger_events::{Event, Handle, KernelRegistered, OpId, OpKind, Target};
use banger_projections::KernelView;

use super::store::{self, dir_handle};
use super::{BoxFuture, OpCx, OpError, OperationKind, Runner, Step, StepError, blocking, names};
use crate::api::KernelImportParams;

/// Marker type of the operation kind.
pub struct KernelImport;

/// What a run of `kernel.import` carries between steps.
pub struct State {
    pub name: String,
    /// The source directory, as given.
    pub from: PathBuf,
    pub vmlinux: PathBuf,
    /// `vmlinux` is a bzImage whose ELF kernel is to be extracted.
    pub compressed: bool,
    pub initrd: Option<PathBuf>,
    /// `lib/modules/<version>` to copy, when there is one.
    pub modules: Option<PathBuf>,
    /// A banger bundle (its `manifest.json`): the whole directory is copied, and these are
    /// its kernel's and initrd's paths in it.
    pub bundle: Option<BundleFiles>,
    /// From the file name (`vmlinux-<version>`) or the metadata, when they say.
    pub version_hint: Option<String>,
    /// Filled by `checksum`.
    pub sha256: String,
    pub version: String,
}

impl State {
    /// The kernel's and the initrd's names in the staged (and published) directory.
    fn staged_names(&self) -> (&str, &str) {
        match &self.bundle {
            Some(bundle) => (&bundle.vmlinux, &bundle.initrd),
            None => ("vmlinux", "initrd.img"),
        }
    }
}

const STEPS: &[&dyn Step<State>] = &[&Stage, &Checksum, &Publish];

impl OperationKind for KernelImport {
    const KIND: OpKind = OpKind::KernelImport;
    type State = State;

    fn steps() -> &'static [&'static dyn Step<State>] {
        STEPS
    }

    fn finish(cx: &OpCx<'_>, state: &State) -> Vec<Event> {
        let dir = cx.layout.kernel_dir(&state.name);
        let (kernel, initrd) = state.staged_names();
        vec![Event::KernelRegistered(KernelRegistered {
            name: state.name.clone(),
            kernel_path: dir.join(kernel).display().to_string(),
            initrd_path: state
                .initrd
                .as_ref()
                .map(|_| dir.join(initrd).display().to_string()),
            version: state.version.clone(),
            sha256: state.sha256.clone(),
            source: format!("import:{}", state.from.display()),
        })]
    }
}

/// Handles a `kernel.import` request: validates it, claims the kernel name, runs the steps.
pub async fn run(
    runner: &Runner,
    op_id: OpId,
    params: KernelImportParams,
) -> Result<KernelView, OpError> {
    names::validate("kernel", &params.name).map_err(OpError::InvalidArgument)?;
    let from = PathBuf::from(&params.from);
    if !from.is_absolute() {
        return Err(OpError::InvalidArgument(format!(
            "kernel source {:?} is not an absolute path; pass the full path of the directory",
            params.from
        )));
    }
    let found = {
        let from = from.clone();
        tokio::task::spawn_blocking(move || discover(&from))
            .await
            .map_err(|e| OpError::Internal(format!("looking for the kernel files failed: {e}")))?
            .map_err(OpError::InvalidArgument)?
    };
    let target = Target::Kernel {
        name: params.name.clone(),
    };
    let claim = runner.claim(op_id, OpKind::KernelImport, target, Vec::new())?;
    if runner.journal().view().kernels.contains_key(&params.name) {
        return Err(OpError::AlreadyExists(format!(
            "a kernel named {} already exists; remove it first (`banger kernel rm {}`) or pick another name",
            params.name, params.name
        )));
    }
    let parameters = serde_json::to_string(&params).unwrap_or_default();
    let state = State {
        name: params.name.clone(),
        from,
        vmlinux: found.vmlinux,
        compressed: found.compressed,
        initrd: found.initrd,
        modules: found.modules,
        bundle: found.bundle,
        version_hint: found.version,
        sha256: String::new(),
        version: String::new(),
    };
    runner
        .run::<KernelImport>(&claim, parameters, state)
        .await?;
    runner
        .journal()
        .view()
        .kernels
        .get(&params.name)
        .cloned()
        .ok_or_else(|| OpError::Internal("the imported kernel is missing from the views".into()))
}

/// The files of a kernel found in a source directory.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub vmlinux: PathBuf,
    /// `vmlinux` is a bzImage (`vmlinuz-*`): the ELF is extracted from it.
    pub compressed: bool,
    pub initrd: Option<PathBuf>,
    pub version: Option<String>,
    /// `lib/modules/<version>`.
    pub modules: Option<PathBuf>,
    /// A banger bundle: copied whole.
    pub bundle: Option<BundleFiles>,
}

/// Where a bundle's manifest says its kernel and initrd are, relative to the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleFiles {
    pub vmlinux: String,
    pub initrd: String,
}

/// `metadata.json` of a kernel directory (see the module documentation).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    kernel: String,
    #[serde(default)]
    initrd: Option<String>,
    #[serde(default)]
    modules: Option<String>,
    #[serde(default)]
    version: Option<String>,
}

/// Looks for a kernel in `from`. The error says what was expected.
pub fn discover(from: &Path) -> Result<Found, String> {
    let metadata = fs::metadata(from)
        .map_err(|e| format!("cannot read kernel source {}: {e}", from.display()))?;
    if !metadata.is_dir() {
        return Err(format!(
            "kernel source {} is not a directory; pass the directory holding vmlinux",
            from.display()
        ));
    }
    if from.join(crate::kernel::MANIFEST_FILE).is_file() {
        return from_bundle(from);
    }
    if from.join("metadata.json").is_file() {
        return from_metadata(from);
    }
    by_name(from)
}

/// A banger bundle: its manifest says everything.
fn from_bundle(from: &Path) -> Result<Found, String> {
    let manifest = crate::kernel::read_manifest(from).map_err(|e| {
        format!(
            "{} has a manifest.json but is not a usable banger bundle: {e}",
            from.display()
        )
    })?;
    let modules = from.join("lib/modules").join(&manifest.version);
    Ok(Found {
        vmlinux: from.join(&manifest.vmlinux.path),
        compressed: false,
        initrd: Some(from.join(&manifest.initrd.path)),
        version: Some(manifest.version.clone()),
        modules: modules.is_dir().then_some(modules),
        bundle: Some(BundleFiles {
            vmlinux: manifest.vmlinux.path.clone(),
            initrd: manifest.initrd.path.clone(),
        }),
    })
}

/// `metadata.json` names the files.
fn from_metadata(from: &Path) -> Result<Found, String> {
    let path = from.join("metadata.json");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let metadata: Metadata = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not kernel metadata ({{\"kernel\": PATH, \"initrd\": PATH, \"modules\": DIR, \"version\": TEXT}}): {e}",
            path.display()
        )
    })?;
    let inside = |relative: &str, what: &str| -> Result<PathBuf, String> {
        let safe =
            crate::kernel::deb::safe_relative_path(Path::new(relative)).map_err(|reason| {
                format!("metadata.json's {what} {relative:?} is refused: {reason}")
            })?;
        Ok(from.join(safe))
    };
    let kernel = inside(&metadata.kernel, "kernel")?;
    if !kernel.is_file() {
        return Err(format!(
            "metadata.json names the kernel {}, which is not a file",
            kernel.display()
        ));
    }
    let initrd = match &metadata.initrd {
        Some(initrd) => {
            let path = inside(initrd, "initrd")?;
            if !path.is_file() {
                return Err(format!(
                    "metadata.json names the initrd {}, which is not a file",
                    path.display()
                ));
            }
            Some(path)
        }
        None => None,
    };
    let modules = match &metadata.modules {
        Some(modules) => {
            let path = inside(modules, "modules")?;
            if !path.is_dir() {
                return Err(format!(
                    "metadata.json names the modules {}, which is not a directory",
                    path.display()
                ));
            }
            Some(path)
        }
        None => None,
    };
    let compressed = is_bzimage_name(&kernel);
    Ok(Found {
        vmlinux: kernel,
        compressed,
        initrd,
        version: metadata.version,
        modules,
        bundle: None,
    })
}

fn is_bzimage_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "vmlinuz" || n.starts_with("vmlinuz-") || n == "bzImage")
}

/// By file names, in `from` and `from/boot`.
fn by_name(from: &Path) -> Result<Found, String> {
    let boot = from.join("boot");
    let dirs = [from, boot.as_path()];
    let one = |prefix: &str, exact: &str| -> Result<Option<(PathBuf, Option<String>)>, String> {
        for dir in dirs {
            if dir.join(exact).is_file() {
                return Ok(Some((dir.join(exact), None)));
            }
        }
        let candidates: Vec<(PathBuf, String)> = dirs
            .iter()
            .flat_map(|dir| prefixed_files(dir, prefix))
            .collect();
        match candidates.as_slice() {
            [] => Ok(None),
            [(path, version)] => Ok(Some((path.clone(), Some(version.clone())))),
            several => {
                let names: Vec<String> = several
                    .iter()
                    .map(|(path, _)| path.display().to_string())
                    .collect();
                Err(format!(
                    "several kernels in {}: {}; point the import at a directory holding just one",
                    from.display(),
                    names.join(", ")
                ))
            }
        }
    };
    let (vmlinux, version, compressed) = match one("vmlinux-", "vmlinux")? {
        Some((path, version)) => (path, version, false),
        None => match one("vmlinuz-", "vmlinuz")? {
            Some((path, version)) => (path, version, true),
            None => {
                return Err(format!(
                    "no kernel in {}: expected a banger bundle (manifest.json), metadata.json, or \
                     vmlinux, vmlinux-<version> or vmlinuz-<version> there or in boot/",
                    from.display()
                ));
            }
        },
    };
    let initrd = find_initrd(&dirs, version.as_deref());
    let modules = find_modules(from, version.as_deref());
    Ok(Found {
        vmlinux,
        compressed,
        initrd,
        version,
        modules,
        bundle: None,
    })
}

/// `initrd.img`, else the version's `initrd.img-<v>`/`initramfs-<v>`, else exactly one
/// `initrd*`/`initramfs*`.
fn find_initrd(dirs: &[&Path], version: Option<&str>) -> Option<PathBuf> {
    for dir in dirs {
        if dir.join("initrd.img").is_file() {
            return Some(dir.join("initrd.img"));
        }
    }
    if let Some(version) = version {
        for dir in dirs {
            for name in [
                format!("initrd.img-{version}"),
                format!("initramfs-{version}"),
            ] {
                if dir.join(&name).is_file() {
                    return Some(dir.join(name));
                }
            }
        }
    }
    let mut all: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|dir| {
            ["initrd", "initramfs"]
                .into_iter()
                .flat_map(move |prefix| prefixed_files(dir, prefix))
        })
        .map(|(path, _)| path)
        .collect();
    all.dedup();
    match all.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

/// `lib/modules/<version>`, else the only directory in `lib/modules`.
fn find_modules(from: &Path, version: Option<&str>) -> Option<PathBuf> {
    let root = from.join("lib/modules");
    if let Some(version) = version
        && root.join(version).is_dir()
    {
        return Some(root.join(version));
    }
    let dirs: Vec<PathBuf> = fs::read_dir(&root)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    match dirs.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

/// Regular files in `dir` whose names start with `prefix`, with the rest of the name, sorted.
fn prefixed_files(dir: &Path, prefix: &str) -> Vec<(PathBuf, String)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(prefix)?.to_owned();
            let path = entry.path();
            (!rest.is_empty() && path.is_file()).then_some((path, rest))
        })
        .collect();
    found.sort();
    found
}

struct Stage;

impl Step<State> for Stage {
    fn name(&self) -> &'static str {
        "stage"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.kernel_staging_dir(cx.op_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = cx.layout.kernel_staging_dir(cx.op_id);
        let op_id = cx.op_id;
        let vmlinux = state.vmlinux.clone();
        let compressed = state.compressed;
        let initrd = state.initrd.clone();
        let modules = state.modules.clone();
        let bundle = state.bundle.is_some().then(|| state.from.clone());
        let version = state.version_hint.clone();
        Box::pin(async move {
            let dir = staging.clone();
            blocking("staging the kernel", move || {
                store::create_marked_dir(&dir, op_id)?;
                if let Some(bundle) = bundle {
                    // A bundle is copied whole: its manifest names every file.
                    return store::copy_tree(&bundle, &dir);
                }
                if compressed {
                    extract_vmlinux(&vmlinux, &dir.join("vmlinux"))?;
                } else {
                    store::clone_or_copy(&vmlinux, &dir.join("vmlinux"))?;
                }
                if let Some(initrd) = initrd {
                    store::clone_or_copy(&initrd, &dir.join("initrd.img"))?;
                }
                if let Some(modules) = modules {
                    let release = version
                        .or_else(|| {
                            modules
                                .file_name()
                                .and_then(|n| n.to_str())
                                .map(str::to_owned)
                        })
                        .unwrap_or_else(|| "unknown".into());
                    store::copy_tree(&modules, &dir.join("lib/modules").join(release))?;
                }
                Ok(())
            })
            .await?;
            Ok(vec![dir_handle(&staging)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_staging(
            cx.layout.kernels_dir(),
            cx.op_id,
            handles.to_vec(),
        ))
    }
}

struct Checksum;

impl Step<State> for Checksum {
    fn name(&self) -> &'static str {
        "checksum"
    }

    fn intent(&self, _: &OpCx<'_>, _: &State) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staged = cx
            .layout
            .kernel_staging_dir(cx.op_id)
            .join(state.staged_names().0);
        Box::pin(async move {
            let (sha256, _, banner) = blocking("hashing the kernel", move || {
                store::sha256_and_find(&staged, b"Linux version ")
            })
            .await?;
            state.sha256 = sha256;
            // The file name says it best; else the first word of the kernel's own banner.
            state.version = state
                .version_hint
                .clone()
                .or_else(|| banner.and_then(|b| b.split_whitespace().next().map(str::to_owned)))
                .unwrap_or_else(|| "unknown".into());
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

struct Publish;

impl Step<State> for Publish {
    fn name(&self) -> &'static str {
        "publish"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.kernel_dir(&state.name))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = cx.layout.kernel_staging_dir(cx.op_id);
        let published = cx.layout.kernel_dir(&state.name);
        let op_id = cx.op_id;
        Box::pin(async move {
            let dir = published.clone();
            blocking("publishing the kernel", move || {
                store::publish(&staging, &dir, op_id)
            })
            .await?;
            Ok(vec![dir_handle(&published)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_publish(
            cx.layout.kernels_dir(),
            cx.op_id,
            handles.to_vec(),
        ))
    }
}

/// Writes the ELF kernel inside the bzImage `bzimage` to `dest` (`crate::kernel::bzimage`:
/// LZ4 payloads; another compression is refused by name).
fn extract_vmlinux(bzimage: &Path, dest: &Path) -> Result<(), StepError> {
    let bytes = fs::read(bzimage)
        .map_err(|e| StepError::io(format!("cannot read {}", bzimage.display()), e))?;
    let vmlinux = crate::kernel::bzimage::extract_vmlinux(&bytes).map_err(|e| {
        StepError::Other(format!(
            "{} is a bzImage whose kernel banger cannot extract ({e}); import the uncompressed vmlinux instead",
            bzimage.display()
        ))
    })?;
    fs::write(dest, vmlinux)
        .map_err(|e| StepError::io(format!("cannot write {}", dest.display()), e))
}

/// Undo of operation `op_id`'s staging step: removes the staging directories named by
/// `handles` (only ones directly inside `store`), half-made ones included.
pub(crate) async fn undo_staging(
    store: PathBuf,
    op_id: OpId,
    handles: Vec<Handle>,
) -> Result<(), StepError> {
    blocking("removing the staging directory", move || {
        for dir in store::dirs_in_store(&handles, &store)? {
            store::remove_staging(&dir, op_id)?;
        }
        Ok(())
    })
    .await
}

/// Undo of a publish step: removes the published directories named by `handles` that carry
/// `op_id`'s marker, leaving any other directory of the same name alone.
pub(crate) async fn undo_publish(
    store: PathBuf,
    op_id: OpId,
    handles: Vec<Handle>,
) -> Result<(), StepError> {
    blocking("removing the published directory", move || {
        for dir in store::dirs_in_store(&handles, &store)? {
            store::remove_if_made_by(&dir, op_id)?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_the_layouts_kernels_come_in() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(discover(root).unwrap_err().contains("no kernel in"));
        fs::create_dir(root.join("boot")).unwrap();
        fs::write(root.join("boot/vmlinux-6.1.0-9-cloud-amd64"), b"k").unwrap();
        fs::write(root.join("boot/initrd.img-6.1.0-9-cloud-amd64"), b"i").unwrap();
        let found = discover(root).unwrap();
        assert_eq!(found.version.as_deref(), Some("6.1.0-9-cloud-amd64"));
        assert_eq!(
            found.initrd,
            Some(root.join("boot/initrd.img-6.1.0-9-cloud-amd64"))
        );

        fs::write(root.join("boot/vmlinux-6.1.0-10-cloud-amd64"), b"k").unwrap();
        assert!(discover(root).unwrap_err().contains("several kernels"));

        fs::write(root.join("vmlinux"), b"k").unwrap();
        let found = discover(root).unwrap();
        assert_eq!(found.vmlinux, root.join("vmlinux"));
        assert_eq!(found.version, None);

        assert!(
            discover(&root.join("vmlinux"))
                .unwrap_err()
                .contains("not a directory")
        );
        assert!(
            discover(&root.join("absent"))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn a_bzimage_an_initramfs_and_modules_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::create_dir_all(root.join("lib/modules/6.6.1-alpine/kernel")).unwrap();
        fs::write(root.join("boot/vmlinuz-6.6.1-alpine"), b"bz").unwrap();
        fs::write(root.join("boot/initramfs-6.6.1-alpine"), b"i").unwrap();
        let found = discover(root).unwrap();
        assert!(found.compressed);
        assert_eq!(found.vmlinux, root.join("boot/vmlinuz-6.6.1-alpine"));
        assert_eq!(found.version.as_deref(), Some("6.6.1-alpine"));
        assert_eq!(found.initrd, Some(root.join("boot/initramfs-6.6.1-alpine")));
        assert_eq!(found.modules, Some(root.join("lib/modules/6.6.1-alpine")));
        // A vmlinux wins over a bzImage.
        fs::write(root.join("vmlinux-6.6.1-alpine"), b"elf").unwrap();
        let found = discover(root).unwrap();
        assert!(!found.compressed);
        assert_eq!(found.vmlinux, root.join("vmlinux-6.6.1-alpine"));
    }

    #[test]
    fn metadata_names_the_files_and_may_not_climb_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("out/modules")).unwrap();
        fs::write(root.join("out/kernel.elf"), b"elf").unwrap();
        fs::write(root.join("out/ramdisk"), b"i").unwrap();
        // Something the name-based search would have taken instead.
        fs::write(root.join("vmlinux"), b"other").unwrap();
        fs::write(
            root.join("metadata.json"),
            r#"{"kernel":"out/kernel.elf","initrd":"out/ramdisk","modules":"out/modules","version":"6.1-custom"}"#,
        )
        .unwrap();
        let found = discover(root).unwrap();
        assert_eq!(found.vmlinux, root.join("out/kernel.elf"));
        assert_eq!(found.initrd, Some(root.join("out/ramdisk")));
        assert_eq!(found.modules, Some(root.join("out/modules")));
        assert_eq!(found.version.as_deref(), Some("6.1-custom"));
        for (text, expected) in [
            (r#"{"kernel":"../etc/passwd"}"#, "climbs out"),
            (r#"{"kernel":"/vmlinuz"}"#, "absolute"),
            (r#"{"kernel":"out/missing"}"#, "not a file"),
            (r#"{"vmlinux":"vmlinux"}"#, "not kernel metadata"),
        ] {
            fs::write(root.join("metadata.json"), text).unwrap();
            let error = discover(root).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(
            discover(&root.join("absent"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
