//! `kernel.remove`: deletes a kernel's files and forgets it. Crash recovery rolls it forward:
//! once started, a removal is finished rather than undone.
//!
//! | step        | intent                       | ensure                                          | undo                          |
//! |-------------|------------------------------|-------------------------------------------------|-------------------------------|
//! | `unpublish` | dir `kernels/.removing-<op>` | rename `kernels/<name>` aside (gone already: ok) | rename it back if still aside |
//! | `delete`    | —                            | remove the aside directory                      | nothing left to undo          |
//!
//! On success `KernelRemoved` is appended with `OperationSucceeded`. Moving aside first makes
//! the name disappear from the store in one rename, so a half-deleted kernel is never found
//! under its name.

use std::path::PathBuf;

use banger_events::{Event, Handle, KernelRemoved, OpId, OpKind, Target};

use super::store::{self, dir_handle};
use super::{
    BoxFuture, OpCx, OpError, OperationKind, ResumeError, Runner, Step, StepError, blocking, names,
};

pub struct KernelRemove;

/// What a removal needs: only the name, so recovery can rebuild it from the target.
pub struct State {
    pub name: String,
}

impl State {
    /// The state of a removal from its recorded target, for roll-forward.
    pub fn from_target(target: &Target) -> Result<State, ResumeError> {
        let wrong = |expected: String| ResumeError::WrongTarget {
            target: target.to_string(),
            expected,
        };
        match target {
            Target::Kernel { name } => match names::validate("kernel", name) {
                Ok(()) => Ok(State { name: name.clone() }),
                Err(error) => Err(wrong(format!("a kernel with a valid name ({error})"))),
            },
            _ => Err(wrong("a kernel".to_owned())),
        }
    }
}

const STEPS: &[&dyn Step<State>] = &[&Unpublish, &Delete];

impl OperationKind for KernelRemove {
    const KIND: OpKind = OpKind::KernelRemove;
    type State = State;

    fn steps() -> &'static [&'static dyn Step<State>] {
        STEPS
    }

    fn finish(_: &OpCx<'_>, state: &State) -> Vec<Event> {
        vec![Event::KernelRemoved(KernelRemoved {
            name: state.name.clone(),
        })]
    }

    fn resume_state(target: &Target, _: &str) -> Result<State, ResumeError> {
        State::from_target(target)
    }
}

/// Handles a `kernel.remove` request.
pub async fn run(runner: &Runner, op_id: OpId, name: String) -> Result<(), OpError> {
    names::validate("kernel", &name).map_err(OpError::InvalidArgument)?;
    let target = Target::Kernel { name: name.clone() };
    let claim = runner.claim(op_id, OpKind::KernelRemove, target, Vec::new())?;
    {
        let view = runner.journal().view();
        if !view.kernels.contains_key(&name) {
            return Err(OpError::NotFound(format!(
                "no kernel named {name}; see `banger kernel list`"
            )));
        }
        let users: Vec<&str> = view
            .images
            .values()
            .filter(|image| image.kernel.as_deref() == Some(name.as_str()))
            .map(|image| image.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(OpError::Busy(format!(
                "kernel {name} is used by image(s) {}; delete those first (`banger image delete {}`)",
                users.join(", "),
                users.join(" ")
            )));
        }
        // A VM boots the kernel its spec names, which need not be its image's default.
        let vms: Vec<&str> = view
            .vms
            .values()
            .filter(|vm| vm.spec.kernel == name)
            .map(|vm| vm.name.as_str())
            .collect();
        if !vms.is_empty() {
            return Err(OpError::Busy(format!(
                "kernel {name} is booted by VM(s) {}; delete those first (`banger vm delete {}`)",
                vms.join(", "),
                vms.join(" ")
            )));
        }
    }
    let parameters = serde_json::json!({ "name": name }).to_string();
    runner
        .run::<KernelRemove>(&claim, parameters, State { name })
        .await?;
    Ok(())
}

struct Unpublish;

impl Step<State> for Unpublish {
    fn name(&self) -> &'static str {
        "unpublish"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.kernel_removal_dir(cx.op_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let published = cx.layout.kernel_dir(&state.name);
        let aside = cx.layout.kernel_removal_dir(cx.op_id);
        Box::pin(async move {
            let dir = aside.clone();
            blocking("moving the kernel aside", move || {
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
        let store_dir = cx.layout.kernels_dir();
        let published = match cx.target {
            Target::Kernel { name } if names::validate("kernel", name).is_ok() => {
                Some(cx.layout.kernel_dir(name))
            }
            _ => None,
        };
        let handles = handles.to_vec();
        Box::pin(undo_move_aside(store_dir, published, handles))
    }
}

/// Undo of an unpublish step: moves each aside directory named by `handles` back to
/// `published`.
pub(crate) async fn undo_move_aside(
    store_dir: PathBuf,
    published: Option<PathBuf>,
    handles: Vec<Handle>,
) -> Result<(), StepError> {
    let Some(published) = published else {
        return Err(StepError::Other(
            "the operation's target is not a store entry; nothing can be moved back".into(),
        ));
    };
    blocking("moving back", move || {
        for aside in store::dirs_in_store(&handles, &store_dir)? {
            store::move_back(&aside, &published)?;
        }
        Ok(())
    })
    .await
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
        let aside = cx.layout.kernel_removal_dir(cx.op_id);
        Box::pin(async move {
            blocking("deleting the kernel files", move || {
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
        // Deleted files cannot come back; what remains aside is put back by `unpublish`'s undo.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use banger_events::{Event, KernelRegistered, NewEvent, VmDefined, VmId};

    use super::*;
    use crate::operations::testing;
    use crate::paths::Layout;

    /// A VM may boot a kernel that no image names (`vm create --kernel`): removing that kernel
    /// is refused while the VM exists, naming it.
    #[tokio::test]
    async fn a_kernel_a_vm_boots_directly_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let layout = Layout::rooted(&root);
        std::fs::create_dir_all(layout.kernel_dir("k2")).unwrap();
        let journal = testing::memory_journal();
        journal
            .append(vec![
                NewEvent::new(Event::KernelRegistered(KernelRegistered {
                    name: "k2".into(),
                    kernel_path: "/k2/vmlinux".into(),
                    initrd_path: None,
                    version: "6.1".into(),
                    sha256: String::new(),
                    source: "test".into(),
                })),
                NewEvent::new(Event::VmDefined(VmDefined {
                    vm_id: VmId(7),
                    name: "dev".into(),
                    spec: testing::small_spec("k2"),
                })),
            ])
            .await
            .unwrap();
        let runner = testing::runner(journal, &root);
        let refused = run(&runner, OpId(1), "k2".into()).await;
        assert!(
            matches!(&refused, Err(OpError::Busy(m)) if m.contains("booted by VM(s) dev")),
            "{refused:?}"
        );
        assert!(layout.kernel_dir("k2").exists());
    }
}
