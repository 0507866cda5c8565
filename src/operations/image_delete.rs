//! `image.delete`: deletes an image's files and forgets it. Like `kernel.remove`, crash
//! recovery rolls it forward.
//!
//! | step        | intent                      | ensure                                          | undo                          |
//! |-------------|-----------------------------|-------------------------------------------------|-------------------------------|
//! | `unpublish` | dir `images/.removing-<op>` | rename `images/<name>` aside (gone already: ok)  | rename it back if still aside |
//! | `delete`    | —                           | remove the aside directory                      | nothing left to undo          |
//!
//! On success `ImageRemoved` is appended with `OperationSucceeded`. Refused (`busy`) while a
//! VM was created from the image.

use banger_events::{Event, Handle, ImageRemoved, OpId, OpKind, Target};

use super::kernel_remove::undo_move_aside;
use super::store::{self, dir_handle};
use super::{
    BoxFuture, OpCx, OpError, OperationKind, ResumeError, Runner, Step, StepError, blocking, names,
};

pub struct ImageDelete;

pub struct State {
    pub name: String,
}

impl State {
    /// The state of a deletion from its recorded target, for roll-forward.
    pub fn from_target(target: &Target) -> Result<State, ResumeError> {
        let wrong = |expected: String| ResumeError::WrongTarget {
            target: target.to_string(),
            expected,
        };
        match target {
            Target::Image { name } => match names::validate("image", name) {
                Ok(()) => Ok(State { name: name.clone() }),
                Err(error) => Err(wrong(format!("a image with a valid name ({error})"))),
            },
            _ => Err(wrong("a image".to_owned())),
        }
    }
}

const STEPS: &[&dyn Step<State>] = &[&Unpublish, &Delete];

impl OperationKind for ImageDelete {
    const KIND: OpKind = OpKind::ImageDelete;
    type State = State;

    fn steps() -> &'static [&'static dyn Step<State>] {
        STEPS
    }

    fn finish(_: &OpCx<'_>, state: &State) -> Vec<Event> {
        vec![Event::ImageRemoved(ImageRemoved {
            name: state.name.clone(),
        })]
    }

    fn resume_state(target: &Target, _: &str) -> Result<State, ResumeError> {
        State::from_target(target)
    }
}

/// Handles an `image.delete` request.
pub async fn run(runner: &Runner, op_id: OpId, name: String) -> Result<(), OpError> {
    names::validate("image", &name).map_err(OpError::InvalidArgument)?;
    let target = Target::Image { name: name.clone() };
    let claim = runner.claim(op_id, OpKind::ImageDelete, target, Vec::new())?;
    {
        let view = runner.journal().view();
        if !view.images.contains_key(&name) {
            return Err(OpError::NotFound(format!(
                "no image named {name}; see `banger image list`"
            )));
        }
        let users: Vec<&str> = view
            .vms
            .values()
            .filter(|vm| vm.spec.image == name)
            .map(|vm| vm.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(OpError::Busy(format!(
                "image {name} is used by VM(s) {}; delete those first (`banger vm delete {}`)",
                users.join(", "),
                users.join(" ")
            )));
        }
    }
    let parameters = serde_json::json!({ "name": name }).to_string();
    runner
        .run::<ImageDelete>(&claim, parameters, State { name })
        .await?;
    Ok(())
}

struct Unpublish;

impl Step<State> for Unpublish {
    fn name(&self) -> &'static str {
        "unpublish"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.image_removal_dir(cx.op_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let published = cx.layout.image_dir(&state.name);
        let aside = cx.layout.image_removal_dir(cx.op_id);
        Box::pin(async move {
            let dir = aside.clone();
            blocking("moving the image aside", move || {
                store::move_aside(&published, &dir)
            })
            .await?;
            Ok(vec![dir_handle(&aside)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        let published = match cx.target {
            Target::Image { name } if names::validate("image", name).is_ok() => {
                Some(cx.layout.image_dir(name))
            }
            _ => None,
        };
        Box::pin(undo_move_aside(
            cx.layout.images_dir(),
            published,
            handles.to_vec(),
        ))
    }
}

struct Delete;

impl Step<State> for Delete {
    fn name(&self) -> &'static str {
        "delete"
    }

    fn intent(&self, _: &OpCx<'_>, _: &State) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        _: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let aside = cx.layout.image_removal_dir(cx.op_id);
        Box::pin(async move {
            blocking("deleting the image files", move || {
                store::remove_dir_if_present(&aside)
            })
            .await?;
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
