//! `image.register`: copies an existing root filesystem file into the image store and
//! registers it, optionally naming the kernel it boots with.
//!
//! | step       | intent                     | ensure                                          | undo                                  |
//! |------------|----------------------------|-------------------------------------------------|---------------------------------------|
//! | `stage`    | dir `images/.staging-<op>` | fresh staging dir with the op's marker; clone   | remove the staging dir                |
//! |            |                            | (reflink) or sparse-copy the rootfs into it      |                                       |
//! | `checksum` | —                          | sha256 and size of the staged rootfs            | nothing to undo                       |
//! | `publish`  | dir `images/<name>`        | rename the staging dir to `images/<name>`       | remove `images/<name>` if this op made it |
//!
//! On success `ImageRegistered` (source `register:<path>`) is appended with
//! `OperationSucceeded`. The kernel, when named, is claimed shared for the whole run so that
//! it cannot be removed while an image that names it is being registered.

use std::path::PathBuf;

use banger_events::{Event, Handle, ImageRegistered, OpId, OpKind, Target};
use banger_projections::ImageView;

use super::kernel_import::{undo_publish, undo_staging};
use super::store::{self, dir_handle};
use super::{BoxFuture, OpCx, OpError, OperationKind, Runner, Step, StepError, blocking, names};
use crate::api::ImageRegisterParams;

/// File name of the root filesystem inside an image's directory.
pub const ROOTFS_FILE: &str = "rootfs.ext4";

pub struct ImageRegister;

pub struct State {
    pub name: String,
    pub rootfs: PathBuf,
    pub kernel: Option<String>,
    /// What `ImageRegistered` records as its source (`register:<path>`, `promote:<vm>`).
    pub source: String,
    /// Filled by `checksum`.
    pub sha256: String,
    pub size_bytes: u64,
}

/// The steps; `image.promote` runs the same table (its source file is a VM's root disk).
pub(crate) const STEPS: &[&dyn Step<State>] = &[&Stage, &Checksum, &Publish];

impl OperationKind for ImageRegister {
    const KIND: OpKind = OpKind::ImageRegister;
    type State = State;

    fn steps() -> &'static [&'static dyn Step<State>] {
        STEPS
    }

    fn finish(cx: &OpCx<'_>, state: &State) -> Vec<Event> {
        vec![Event::ImageRegistered(ImageRegistered {
            name: state.name.clone(),
            rootfs_path: cx
                .layout
                .image_dir(&state.name)
                .join(ROOTFS_FILE)
                .display()
                .to_string(),
            kernel: state.kernel.clone(),
            size_bytes: state.size_bytes,
            sha256: state.sha256.clone(),
            source: state.source.clone(),
        })]
    }
}

/// Handles an `image.register` request.
pub async fn run(
    runner: &Runner,
    op_id: OpId,
    params: ImageRegisterParams,
) -> Result<ImageView, OpError> {
    names::validate("image", &params.name).map_err(OpError::InvalidArgument)?;
    if let Some(kernel) = &params.kernel {
        names::validate("kernel", kernel).map_err(OpError::InvalidArgument)?;
    }
    let rootfs = PathBuf::from(&params.rootfs);
    if !rootfs.is_absolute() {
        return Err(OpError::InvalidArgument(format!(
            "rootfs {:?} is not an absolute path; pass the full path of the file",
            params.rootfs
        )));
    }
    let metadata = tokio::fs::metadata(&rootfs).await.map_err(|e| {
        OpError::InvalidArgument(format!("cannot read rootfs {}: {e}", rootfs.display()))
    })?;
    if !metadata.is_file() {
        return Err(OpError::InvalidArgument(format!(
            "rootfs {} is not a regular file; pass an ext4 image file",
            rootfs.display()
        )));
    }
    let target = Target::Image {
        name: params.name.clone(),
    };
    let shared = params
        .kernel
        .iter()
        .map(|name| Target::Kernel { name: name.clone() })
        .collect();
    let claim = runner.claim(op_id, OpKind::ImageRegister, target, shared)?;
    {
        let view = runner.journal().view();
        if view.images.contains_key(&params.name) {
            return Err(OpError::AlreadyExists(format!(
                "an image named {} already exists; delete it first (`banger image delete {}`) or pick another name",
                params.name, params.name
            )));
        }
        if let Some(kernel) = &params.kernel
            && !view.kernels.contains_key(kernel)
        {
            return Err(OpError::NotFound(format!(
                "no kernel named {kernel}; see `banger kernel list`, or import one with `banger kernel import {kernel} --from DIR`"
            )));
        }
    }
    let parameters = serde_json::to_string(&params).unwrap_or_default();
    let state = State {
        name: params.name.clone(),
        source: format!("register:{}", rootfs.display()),
        rootfs,
        kernel: params.kernel.clone(),
        sha256: String::new(),
        size_bytes: 0,
    };
    runner
        .run::<ImageRegister>(&claim, parameters, state)
        .await?;
    runner
        .journal()
        .view()
        .images
        .get(&params.name)
        .cloned()
        .ok_or_else(|| OpError::Internal("the registered image is missing from the views".into()))
}

struct Stage;

impl Step<State> for Stage {
    fn name(&self) -> &'static str {
        "stage"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.image_staging_dir(cx.op_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = cx.layout.image_staging_dir(cx.op_id);
        let op_id = cx.op_id;
        let rootfs = state.rootfs.clone();
        Box::pin(async move {
            let dir = staging.clone();
            let method = blocking("staging the rootfs", move || {
                store::create_marked_dir(&dir, op_id)?;
                store::clone_or_copy(&rootfs, &dir.join(ROOTFS_FILE))
            })
            .await?;
            tracing::debug!(?method, "rootfs staged");
            Ok(vec![dir_handle(&staging)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_staging(
            cx.layout.images_dir(),
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
        let staged = cx.layout.image_staging_dir(cx.op_id).join(ROOTFS_FILE);
        Box::pin(async move {
            let (sha256, size_bytes) =
                blocking("hashing the rootfs", move || store::sha256_file(&staged)).await?;
            state.sha256 = sha256;
            state.size_bytes = size_bytes;
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
        vec![dir_handle(&cx.layout.image_dir(&state.name))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = cx.layout.image_staging_dir(cx.op_id);
        let published = cx.layout.image_dir(&state.name);
        let op_id = cx.op_id;
        Box::pin(async move {
            let dir = published.clone();
            blocking("publishing the image", move || {
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
            cx.layout.images_dir(),
            cx.op_id,
            handles.to_vec(),
        ))
    }
}
