//! `kernel.import`: copies a kernel (an uncompressed `vmlinux`, and an initrd when there is
//! one) from a directory into the kernel store, and registers it.
//!
//! | step       | intent                      | ensure                                        | undo                                   |
//! |------------|-----------------------------|-----------------------------------------------|----------------------------------------|
//! | `stage`    | dir `kernels/.staging-<op>` | fresh staging dir with the op's marker; copy   | remove the staging dir                 |
//! |            |                             | `vmlinux` (+ `initrd.img`) into it             |                                        |
//! | `checksum` | —                           | sha256 of the staged vmlinux, version banner  | nothing to undo                        |
//! | `publish`  | dir `kernels/<name>`        | rename the staging dir to `kernels/<name>`    | remove `kernels/<name>` if this op made it |
//!
//! On success `KernelRegistered` is appended with `OperationSucceeded`. The source directory
//! is only read. What is looked for in it: `vmlinux`, else exactly one `boot/vmlinux-<version>`;
//! and `initrd.img`, else `boot/initrd.img-<version>` (the same version), else exactly one
//! `boot/initrd.img-*`.

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
    pub initrd: Option<PathBuf>,
    /// From the file name (`vmlinux-<version>`), when it says.
    pub version_hint: Option<String>,
    /// Filled by `checksum`.
    pub sha256: String,
    pub version: String,
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
        vec![Event::KernelRegistered(KernelRegistered {
            name: state.name.clone(),
            kernel_path: dir.join("vmlinux").display().to_string(),
            initrd_path: state
                .initrd
                .as_ref()
                .map(|_| dir.join("initrd.img").display().to_string()),
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
        initrd: found.initrd,
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
    pub initrd: Option<PathBuf>,
    pub version: Option<String>,
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
    let boot = from.join("boot");
    let (vmlinux, version) = if from.join("vmlinux").is_file() {
        (from.join("vmlinux"), None)
    } else {
        let candidates = prefixed_files(&boot, "vmlinux-");
        match candidates.as_slice() {
            [] => {
                return Err(format!(
                    "no kernel in {}: expected {}/vmlinux or {}/boot/vmlinux-<version> (an uncompressed ELF kernel)",
                    from.display(),
                    from.display(),
                    from.display()
                ));
            }
            [(path, version)] => (path.clone(), Some(version.clone())),
            several => {
                let names: Vec<String> = several
                    .iter()
                    .map(|(_, v)| format!("vmlinux-{v}"))
                    .collect();
                return Err(format!(
                    "several kernels in {}: {}; point the import at a directory holding just one",
                    boot.display(),
                    names.join(", ")
                ));
            }
        }
    };
    let initrd = if from.join("initrd.img").is_file() {
        Some(from.join("initrd.img"))
    } else if let Some(matching) = version
        .as_ref()
        .map(|v| boot.join(format!("initrd.img-{v}")))
        .filter(|p| p.is_file())
    {
        Some(matching)
    } else {
        match prefixed_files(&boot, "initrd.img-").as_slice() {
            [(path, _)] => Some(path.clone()),
            _ => None,
        }
    };
    Ok(Found {
        vmlinux,
        initrd,
        version,
    })
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
        let initrd = state.initrd.clone();
        Box::pin(async move {
            let dir = staging.clone();
            blocking("staging the kernel", move || {
                store::create_marked_dir(&dir, op_id)?;
                store::clone_or_copy(&vmlinux, &dir.join("vmlinux"))?;
                if let Some(initrd) = initrd {
                    store::clone_or_copy(&initrd, &dir.join("initrd.img"))?;
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
        Box::pin(undo_staging(cx.layout.kernels_dir(), handles.to_vec()))
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
        let staged = cx.layout.kernel_staging_dir(cx.op_id).join("vmlinux");
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

/// Undo of a staging step: removes the staging directories named by `handles` (only ones
/// directly inside `store`).
pub(crate) async fn undo_staging(store: PathBuf, handles: Vec<Handle>) -> Result<(), StepError> {
    blocking("removing the staging directory", move || {
        for dir in store::dirs_in_store(&handles, &store)? {
            store::remove_dir_if_present(&dir)?;
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
}
