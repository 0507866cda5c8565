//! `image.cache.prune`: empties the OCI blob cache that image pulls share
//! (`registry::cache`). Crash recovery rolls it forward: once started, a prune is finished
//! rather than undone.
//!
//! | step           | intent                                      | ensure                                                                                              | undo                                  |
//! |----------------|---------------------------------------------|-----------------------------------------------------------------------------------------------------|---------------------------------------|
//! | `rename-aside` | dir `<cache parent>/.oci.pruning-<op>`      | rename the cache to that name and create it again, empty (0700); done when the aside exists already; a missing cache: nothing | delete the aside dir if it is still there |
//! | `delete-aside` | —                                           | tally, then delete every aside copy beside the cache: this prune's, and any an older build or an earlier crash left | nothing left to undo                  |
//!
//! It targets [`Target::ImageCache`]: two prunes never run at once, and an unresolved one
//! blocks the next (`busy`). Pulls take no claim on the cache and a prune waits for none: a
//! pull in flight keeps its open blobs and never publishes into the new, empty cache a path
//! the prune moved (the invariants of `registry::cache`), so a prune needs no exclusion from
//! pulls. On success `ImageCachePruned` (bytes and blobs deleted) is appended with
//! `OperationSucceeded`, and the same counts go back to the caller as a
//! [`PruneSummary`]. `--dry-run` is no operation: it tallies and changes nothing
//! (`BlobCache::prune_dry_run`).
//!
//! Why the undo of `rename-aside` deletes the aside copy instead of moving it back: undo runs
//! only when a step failed in a live run (or such a rollback is resumed or retried), never for
//! a crash (that rolls forward). By then the cache was recreated at once and pulls may have
//! stored new blobs in it, so moving the old copy back would mean merging two trees; it would
//! bring back exactly what the user asked to free; and when it is the deletion that failed,
//! part of the copy is gone anyway. The blobs are only a cache — any pull downloads and
//! verifies again what it lacks — so finishing the deletion loses nothing that matters, and
//! the undo stays one idempotent, absence-tolerant act on a path named by the op id (checked
//! to be an aside copy beside the cache, whatever the log says). If the deletion keeps
//! failing (permissions, say), the undo fails the same way and the prune is stuck, shown by
//! `banger ops`, until the cause is dealt with and `banger ops retry` deletes the copy.

use std::path::PathBuf;

use banger_events::{Event, Handle, ImageCachePruned, OpId, OpKind, Target};

use super::store::dir_handle;
use super::{
    BoxFuture, OpCx, OpError, OperationKind, ResumeError, Runner, Step, StepError, blocking,
};
use crate::registry::PruneSummary;
use crate::registry::cache;

pub struct ImageCachePrune;

/// What a prune carries: what its `delete-aside` step deleted, once it ran in this attempt.
#[derive(Debug, Default)]
pub struct State {
    pub freed: Option<PruneSummary>,
}

const STEPS: &[&dyn Step<State>] = &[&RenameAside, &DeleteAside];

impl OperationKind for ImageCachePrune {
    const KIND: OpKind = OpKind::ImageCachePrune;
    type State = State;

    fn steps() -> &'static [&'static dyn Step<State>] {
        STEPS
    }

    /// What this attempt deleted. A prune rolled forward after its `delete-aside` step had
    /// finished deleted nothing in this attempt and records no counts (it cannot know them).
    fn finish(_: &OpCx<'_>, state: &State) -> Vec<Event> {
        state
            .freed
            .iter()
            .map(|freed| {
                Event::ImageCachePruned(ImageCachePruned {
                    bytes: freed.bytes,
                    blobs: freed.blobs,
                })
            })
            .collect()
    }

    fn after_failure(_: &Target) -> String {
        "whatever it had set aside was deleted, and the cache holds what pulls stored since (a \
         cache only: nothing an image needs)"
            .to_owned()
    }

    /// A prune needs nothing from its request: every path derives from the layout and the op
    /// id.
    fn resume_state(target: &Target, _: &str) -> Result<State, ResumeError> {
        match target {
            Target::ImageCache => Ok(State::default()),
            other => Err(ResumeError::WrongTarget {
                target: other.to_string(),
                expected: Target::ImageCache.to_string(),
            }),
        }
    }
}

/// Handles an `image.cache.prune` request that is not a dry run: what it deleted.
pub async fn run(runner: &Runner, op_id: OpId) -> Result<PruneSummary, OpError> {
    let claim = runner.claim(
        op_id,
        OpKind::ImageCachePrune,
        Target::ImageCache,
        Vec::new(),
    )?;
    let state = runner
        .run::<ImageCachePrune>(&claim, "{}".to_owned(), State::default())
        .await?;
    Ok(state.freed.unwrap_or_else(|| PruneSummary {
        bytes: 0,
        blobs: 0,
        dir: runner.layout().oci_cache_dir(),
        dry_run: false,
    }))
}

/// Where prune `op_id` sets the cache aside.
fn aside_of(cx: &OpCx<'_>) -> Result<PathBuf, StepError> {
    cache::prune_aside(&cx.layout.oci_cache_dir(), &cx.op_id.to_string())
        .map_err(|error| StepError::Other(error.to_string()))
}

fn step_error(error: cache::CacheError) -> StepError {
    let what = format!("blob cache {}", error.path.display());
    StepError::io(what, error.source)
}

struct RenameAside;

impl Step<State> for RenameAside {
    fn name(&self) -> &'static str {
        "rename-aside"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        // A cache without a usable name cannot be set aside; `ensure` says why.
        aside_of(cx)
            .map(|aside| vec![dir_handle(&aside)])
            .unwrap_or_default()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        _: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let dir = cx.layout.oci_cache_dir();
        let aside = aside_of(cx);
        Box::pin(async move {
            let aside = aside?;
            let handles = vec![dir_handle(&aside)];
            blocking("setting the blob cache aside", move || {
                cache::set_aside(&dir, &aside).map_err(step_error)
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
        let dir = cx.layout.oci_cache_dir();
        let handles = handles.to_vec();
        Box::pin(blocking(
            "deleting the blob cache's aside copy",
            move || {
                for handle in &handles {
                    let aside = match handle {
                        Handle::Directory { path } => PathBuf::from(path),
                        other => {
                            return Err(StepError::Other(format!(
                                "unexpected handle {other} for a prune step"
                            )));
                        }
                    };
                    if !cache::is_prune_aside(&dir, &aside) {
                        return Err(StepError::Other(format!(
                            "refusing to undo {}: it is not an aside copy of the blob cache {}",
                            aside.display(),
                            dir.display()
                        )));
                    }
                    super::store::remove_dir_if_present(&aside)?;
                }
                Ok(())
            },
        ))
    }
}

struct DeleteAside;

impl Step<State> for DeleteAside {
    fn name(&self) -> &'static str {
        "delete-aside"
    }

    fn intent(&self, _: &OpCx<'_>, _: &State) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let dir = cx.layout.oci_cache_dir();
        Box::pin(async move {
            let freed = blocking("deleting the blob cache's aside copies", move || {
                cache::delete_asides(&dir).map_err(step_error)
            })
            .await?;
            // Run twice (a roll-forward over a finished delete), the second run finds nothing:
            // what was freed is the sum.
            let total = match state.freed.take() {
                Some(earlier) => PruneSummary {
                    bytes: earlier.bytes + freed.bytes,
                    blobs: earlier.blobs + freed.blobs,
                    ..freed
                },
                None => freed,
            };
            state.freed = Some(total);
            Ok(Vec::new())
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        // Deleted files cannot come back; what remains aside goes with `rename-aside`'s undo.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use banger_events::{
        NewEvent, OperationStarted, RecoveryDecision, Seq, StepStarted, StepSucceeded,
    };
    use banger_projections::OpStatus;

    use super::*;
    use crate::operations::{recovery, testing};
    use crate::paths::Layout;

    /// A cache with two blobs (3000 bytes) and a temporary file, and beside it the aside copy
    /// an older build's crashed prune left (one blob of 500 bytes).
    fn filled_cache(layout: &Layout) -> PathBuf {
        let dir = layout.oci_cache_dir();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::create_dir_all(dir.join("tmp")).unwrap();
        fs::write(dir.join("blobs/sha256").join("a".repeat(64)), [1u8; 1000]).unwrap();
        fs::write(dir.join("blobs/sha256").join("b".repeat(64)), [2u8; 2000]).unwrap();
        fs::write(dir.join("tmp/x.partial"), [3u8; 10]).unwrap();
        let old = dir.with_file_name(".oci.pruning-4242-17");
        fs::create_dir_all(old.join("blobs/sha256")).unwrap();
        fs::write(old.join("blobs/sha256").join("c".repeat(64)), [4u8; 500]).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The events of operation `op_id`, as `name` or `name step`.
    fn recorded(runner: &Runner, op_id: OpId) -> Vec<String> {
        let journal = runner.journal();
        journal
            .read(Seq(1), journal.last_seq(), 1000)
            .expect("read")
            .iter()
            .filter(|e| e.op_id == Some(op_id))
            .map(|e| match &e.event {
                Event::OperationStarted(s) => format!("started {} on {}", s.kind, s.target),
                Event::StepStarted(s) => format!("start {} {:?}", s.step, s.intent),
                Event::StepSucceeded(s) => format!("ok {} {:?}", s.step, s.produced),
                Event::ImageCachePruned(p) => format!("pruned {} bytes {} blobs", p.bytes, p.blobs),
                other => other.name().to_owned(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_prune_is_an_operation_whose_steps_are_in_the_log() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(root.path());
        let dir = filled_cache(&layout);
        let runner = testing::runner(testing::memory_journal(), root.path());
        let summary = run(&runner, OpId(0x51)).await.unwrap();
        assert_eq!(
            (summary.bytes, summary.blobs, summary.dry_run),
            (3510, 3, false)
        );
        assert_eq!(summary.dir, dir);
        // Empty, private, and nothing beside it.
        assert_eq!(names(&dir), Vec::<String>::new());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(names(&layout.cache_dir), ["oci"]);
        let aside = dir.with_file_name(format!(".oci.pruning-{}", OpId(0x51)));
        let aside = format!("{:?}", vec![dir_handle(&aside)]);
        assert_eq!(
            recorded(&runner, OpId(0x51)),
            [
                "started image.cache.prune on image cache".to_owned(),
                format!("start rename-aside {aside}"),
                format!("ok rename-aside {aside}"),
                "start delete-aside []".to_owned(),
                "ok delete-aside []".to_owned(),
                "pruned 3510 bytes 3 blobs".to_owned(),
                "operation_succeeded".to_owned(),
            ]
        );
        let (kind, status) = {
            let view = runner.journal().view();
            let op = &view.operations[&OpId(0x51)];
            (op.kind, op.status)
        };
        assert_eq!(
            (kind, status),
            (OpKind::ImageCachePrune, OpStatus::Succeeded)
        );

        // Again, on the empty cache: an operation that frees nothing; and on no cache at all.
        let again = run(&runner, OpId(0x52)).await.unwrap();
        assert_eq!((again.bytes, again.blobs), (0, 0));
        fs::remove_dir(&dir).unwrap();
        let missing = run(&runner, OpId(0x53)).await.unwrap();
        assert_eq!((missing.bytes, missing.blobs), (0, 0));
        assert!(!dir.exists(), "a missing cache is not created");
    }

    #[tokio::test]
    async fn a_second_prune_is_busy_while_one_holds_the_cache() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(root.path());
        let dir = filled_cache(&layout);
        let runner = testing::runner(testing::memory_journal(), root.path());
        let first = runner
            .claim(OpId(1), OpKind::ImageCachePrune, Target::ImageCache, vec![])
            .unwrap();
        let busy = run(&runner, OpId(2)).await;
        assert!(
            matches!(&busy, Err(OpError::Busy(m)) if m.contains("image cache is busy")),
            "{busy:?}"
        );
        assert_eq!(
            names(&dir),
            ["blobs", "tmp"],
            "the refused prune touched nothing"
        );
        // A pull (its image's target) and a tap fill (the host's) do not contend with it.
        let _pull = runner
            .claim(
                OpId(3),
                OpKind::ImagePull,
                Target::Image { name: "img".into() },
                vec![],
            )
            .unwrap();
        let _fill = runner
            .claim(OpId(4), OpKind::TapFill, Target::Host, vec![])
            .unwrap();
        drop(first);
        run(&runner, OpId(5)).await.unwrap();
    }

    /// Each step's ensure twice is once; undo twice is once; undo of what never happened
    /// removes nothing; undo refuses paths that are no aside copy of the cache.
    #[tokio::test]
    async fn steps_are_idempotent_and_undo_deletes_only_the_aside_copy() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(root.path());
        let dir = filled_cache(&layout);
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let target = Target::ImageCache;
        let cx = OpCx {
            op_id: OpId(0xabc),
            kind: OpKind::ImageCachePrune,
            target: &target,
            layout: &layout,
            network: &network,
            vmm: &testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        let mut state = State::default();
        let aside = dir.with_file_name(format!(".oci.pruning-{}", OpId(0xabc)));

        // Undo from the intent, nothing done yet: nothing goes.
        let intent = RenameAside.intent(&cx, &state);
        assert_eq!(intent, vec![dir_handle(&aside)]);
        RenameAside.undo(&cx, &intent).await.unwrap();
        assert_eq!(names(&dir), ["blobs", "tmp"]);

        let first = RenameAside.ensure(&cx, &mut state).await.unwrap();
        // A pull stores a blob in the new cache between the two runs: the second run keeps it.
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("blobs/sha256").join("d".repeat(64)), [5u8; 7]).unwrap();
        let second = RenameAside.ensure(&cx, &mut state).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(names(&aside), ["blobs", "tmp"]);
        assert_eq!(names(&dir.join("blobs/sha256")), ["d".repeat(64)]);

        // Refused: the cache itself, its parent, a sibling that is no aside copy, not a dir.
        for wrong in [
            dir_handle(&dir),
            dir_handle(&layout.cache_dir),
            dir_handle(&dir.with_file_name(".oci.pruning-")),
            dir_handle(&dir.with_file_name("other")),
            dir_handle(Path::new("/tmp/.oci.pruning-1")),
            Handle::Tap { name: "bt1".into() },
        ] {
            let refused = RenameAside.undo(&cx, std::slice::from_ref(&wrong)).await;
            assert!(refused.is_err(), "{wrong:?}");
        }
        assert!(aside.exists());
        RenameAside.undo(&cx, &first).await.unwrap();
        RenameAside.undo(&cx, &first).await.unwrap();
        assert!(!aside.exists());
        assert_eq!(names(&dir.join("blobs/sha256")), ["d".repeat(64)]);

        // Delete twice: the old scheme's leftover goes the first time, the second finds nothing.
        DeleteAside.ensure(&cx, &mut state).await.unwrap();
        let freed = state.freed.clone().unwrap();
        assert_eq!((freed.bytes, freed.blobs), (500, 1));
        DeleteAside.ensure(&cx, &mut state).await.unwrap();
        assert_eq!(state.freed.as_ref().map(|f| f.bytes), Some(500));
        assert_eq!(names(&layout.cache_dir), ["oci"]);
        DeleteAside.undo(&cx, &[]).await.unwrap();
    }

    /// A crash between the steps (set aside, not yet deleted): recovery rolls the prune
    /// forward, deletes the aside copy and records what it freed.
    #[tokio::test]
    async fn a_prune_interrupted_between_its_steps_is_rolled_forward() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(root.path());
        let dir = filled_cache(&layout);
        let runner = testing::runner(testing::memory_journal(), root.path());
        const OP: OpId = OpId(0x77);
        let aside = cache::prune_aside(&dir, &OP.to_string()).unwrap();
        cache::set_aside(&dir, &aside).unwrap();
        let handles = vec![dir_handle(&aside)];
        runner
            .journal()
            .append(vec![
                NewEvent::in_op(
                    OP,
                    Event::OperationStarted(OperationStarted {
                        kind: OpKind::ImageCachePrune,
                        target: Target::ImageCache,
                        parameters: "{}".into(),
                    }),
                ),
                NewEvent::in_op(
                    OP,
                    Event::StepStarted(StepStarted {
                        step: "rename-aside".into(),
                        intent: handles.clone(),
                    }),
                ),
                NewEvent::in_op(
                    OP,
                    Event::StepSucceeded(StepSucceeded {
                        step: "rename-aside".into(),
                        produced: handles,
                    }),
                ),
            ])
            .await
            .unwrap();
        let report = recovery::recover(&runner).await.unwrap();
        assert_eq!(
            report,
            [recovery::Recovered {
                op_id: OP,
                kind: OpKind::ImageCachePrune,
                decision: RecoveryDecision::RollForward,
                outcome: recovery::Outcome::Succeeded,
            }]
        );
        assert_eq!(names(&layout.cache_dir), ["oci"]);
        assert_eq!(names(&dir), Vec::<String>::new());
        let events = recorded(&runner, OP);
        assert_eq!(
            events[events.len() - 4..],
            [
                "start delete-aside []".to_owned(),
                "ok delete-aside []".to_owned(),
                "pruned 3510 bytes 3 blobs".to_owned(),
                "operation_succeeded".to_owned(),
            ]
        );
    }
}
