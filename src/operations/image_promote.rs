//! `image.promote`: a stopped VM's root disk becomes a new image, recorded like a pull. The
//! VM stays as it was.
//!
//! The steps are `image.register`'s (see [`super::image_register`]), from the VM's
//! `vms/<id>/root.ext4`:
//!
//! | step       | intent                     | ensure                                           | undo                                  |
//! |------------|----------------------------|--------------------------------------------------|---------------------------------------|
//! | `stage`    | dir `images/.staging-<op>` | fresh staging dir with the op's marker; clone    | remove the staging dir                |
//! |            |                            | (reflink) or sparse-copy the VM's root disk into it |                                    |
//! | `checksum` | —                          | sha256 and size of the staged rootfs             | nothing to undo                       |
//! | `publish`  | dir `images/<name>`        | rename the staging dir to `images/<name>`        | remove `images/<name>` if this op made it |
//!
//! On success `ImageRegistered` (source `promote:<vm name>`, the VM's kernel) is appended
//! with `OperationSucceeded`. Crash recovery rolls it back, like a register. The VM is held
//! by a shared claim for the whole run, so it cannot be started, changed or deleted while
//! its disk is copied; a VM that is not stopped is refused (`wrong_state`).

use banger_events::{OpId, OpKind, Target, VmState};
use banger_projections::ImageView;
use serde::{Deserialize, Serialize};

use super::image_register::State;
use super::{OpCx, OpError, OperationKind, Runner, Step, names};

pub struct ImagePromote;

impl OperationKind for ImagePromote {
    const KIND: OpKind = OpKind::ImagePromote;
    type State = State;

    fn steps() -> &'static [&'static dyn Step<State>] {
        super::image_register::STEPS
    }

    fn finish(cx: &OpCx<'_>, state: &State) -> Vec<banger_events::Event> {
        <super::image_register::ImageRegister as OperationKind>::finish(cx, state)
    }
}

/// `image.promote`'s parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePromoteParams {
    /// The stopped VM whose root disk becomes the image.
    pub vm: String,
    /// The new image's name.
    pub name: String,
}

/// Handles an `image.promote` request.
pub async fn run(
    runner: &Runner,
    op_id: OpId,
    params: ImagePromoteParams,
) -> Result<ImageView, OpError> {
    names::validate("image", &params.name).map_err(OpError::InvalidArgument)?;
    let vm_id = super::vm_stop::vm_id_by_name(runner, &params.vm)?;
    let target = Target::Image {
        name: params.name.clone(),
    };
    let vm_target = Target::Vm {
        vm_id,
        name: params.vm.clone(),
    };
    let claim = runner.claim(op_id, OpKind::ImagePromote, target, vec![vm_target])?;
    let state = {
        let view = runner.journal().view();
        if view.images.contains_key(&params.name) {
            return Err(OpError::AlreadyExists(format!(
                "an image named {} already exists; delete it first (`banger image delete {}`) or pick another name",
                params.name, params.name
            )));
        }
        let vm = view.vms.get(&vm_id).ok_or_else(|| {
            OpError::NotFound(format!("no VM named {}; see `banger vm list`", params.vm))
        })?;
        if vm.state != VmState::Stopped {
            return Err(OpError::WrongState(format!(
                "vm {} is {}; only a stopped VM's disk can become an image (its guest may be writing to it): `banger vm stop {}` first",
                params.vm, vm.state, params.vm
            )));
        }
        State {
            name: params.name.clone(),
            rootfs: runner.layout().vm_root_disk(vm_id),
            kernel: Some(vm.spec.kernel.clone()),
            source: format!("promote:{}", params.vm),
            sha256: String::new(),
            size_bytes: 0,
        }
    };
    let parameters = serde_json::to_string(&params).unwrap_or_default();
    runner
        .run::<ImagePromote>(&claim, parameters, state)
        .await?;
    runner
        .journal()
        .view()
        .images
        .get(&params.name)
        .cloned()
        .ok_or_else(|| OpError::Internal("the promoted image is missing from the views".into()))
}
