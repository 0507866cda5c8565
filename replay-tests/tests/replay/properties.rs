//! Seeded property tests of the fold, its snapshots and the journal.

use std::sync::Arc;

use banger_events::*;
use banger_projections::{Projections, plan_recovery};
use banger_replay_tests::Rng;
use banger_replay_tests::*;
use proptest::prelude::*;

use crate::common::*;

/// Cut points to try in a log of `len` events: every one in a short log, about 40 in a long.
fn cuts(len: usize) -> impl Iterator<Item = usize> {
    let step = (len / 40).max(1);
    (0..=len).step_by(step).chain(std::iter::once(len))
}

/// fold(prefix) continued with the rest equals fold(all), at every cut.
fn fold_of_prefix_then_rest_equals_fold_of_all() {
    check(
        "fold_of_prefix_then_rest_equals_fold_of_all",
        1,
        48,
        gen_config(30),
        |(seed, config)| {
            let log = generate(seed, &config);
            let all = log.envelopes();
            let full: Projections = fold(all);
            for cut in cuts(all.len()) {
                let mut state: Projections = fold(&all[..cut]);
                for envelope in &all[cut..] {
                    state.apply(envelope);
                }
                prop_assert_eq!(&state, &full, "cut at {}", cut);
            }
            Ok(())
        },
    );
}

/// A snapshot taken at any cut (encoded, decoded) plus the tail equals the full replay; so
/// does the JSON form, which `banger events replay` prints and reads.
fn snapshot_or_json_at_any_cut_plus_tail_equals_full_replay() {
    check(
        "snapshot_or_json_at_any_cut_plus_tail_equals_full_replay",
        2,
        48,
        gen_config(30),
        |(seed, config)| {
            let log = generate(seed, &config);
            let all = log.envelopes();
            let full: Projections = fold(all);
            for cut in cuts(all.len()) {
                let head: Projections = fold(&all[..cut]);
                let bytes = head.encode_snapshot();
                let Some(mut from_snapshot) = Projections::decode_snapshot(&bytes) else {
                    return Err(TestCaseError::fail(format!(
                        "snapshot at cut {cut} does not decode"
                    )));
                };
                prop_assert_eq!(&from_snapshot, &head, "snapshot round trip at cut {}", cut);
                let json = serde_json::to_string(&head).map_err(|e| {
                    TestCaseError::fail(format!("cut {cut}: state does not serialize: {e}"))
                })?;
                let mut from_json: Projections = serde_json::from_str(&json).map_err(|e| {
                    TestCaseError::fail(format!("cut {cut}: JSON does not read back: {e}"))
                })?;
                for envelope in &all[cut..] {
                    from_snapshot.apply(envelope);
                    from_json.apply(envelope);
                }
                prop_assert_eq!(&from_snapshot, &full, "snapshot at cut {} + tail", cut);
                prop_assert_eq!(&from_json, &full, "JSON at cut {} + tail", cut);
                check_queries(&from_snapshot)?;
            }
            Ok(())
        },
    );
}

/// Any generated valid log folds without panic, and the projection agrees with the
/// generator's own, independent model of what the log did: which operations are in flight or
/// stuck, each idle VM's name, state, spec, VMM process and handles, the images and kernels.
fn generated_logs_fold_and_agree_with_the_generator_model() {
    check(
        "generated_logs_fold_and_agree_with_the_generator_model",
        3,
        96,
        gen_config(40),
        |(seed, config)| {
            let generated = generate_detailed(seed, &config);
            let state: Projections = fold(generated.log.envelopes());
            check_queries(&state)?;
            let in_flight = state.in_flight().map(|op| op.op_id).collect();
            prop_assert_eq!(&generated.in_flight, &in_flight, "operations in flight");
            let stuck = state.stuck().map(|op| op.op_id).collect();
            prop_assert_eq!(&generated.stuck, &stuck, "stuck operations");
            for (vm_id, model) in &generated.idle_vms {
                let Some(vm) = state.vms.get(vm_id) else {
                    return Err(TestCaseError::fail(format!("vm {vm_id} missing")));
                };
                prop_assert_eq!(&vm.name, &model.name);
                prop_assert_eq!(vm.state, model.state, "state of vm {}", vm_id);
                prop_assert_eq!(&vm.spec, &model.spec, "spec of vm {}", vm_id);
                prop_assert_eq!(
                    vm.process.map(|p| p.handle()),
                    model.process.clone(),
                    "process of vm {}",
                    vm_id
                );
                let held = state
                    .handles_of(Owner::Vm(*vm_id))
                    .map(|(h, _)| h.clone())
                    .collect();
                prop_assert_eq!(&model.handles, &held, "handles of vm {}", vm_id);
            }
            for vm_id in state.vms.keys() {
                prop_assert!(
                    generated.idle_vms.contains_key(vm_id) || generated.busy_vms.contains(vm_id),
                    "vm {} exists in the projection only",
                    vm_id
                );
            }
            let images = state
                .images
                .keys()
                .filter(|n| !generated.busy_names.contains(&format!("image:{n}")))
                .cloned()
                .collect();
            prop_assert_eq!(&generated.idle_images, &images, "images");
            let kernels = state
                .kernels
                .keys()
                .filter(|n| !generated.busy_names.contains(&format!("kernel:{n}")))
                .cloned()
                .collect();
            prop_assert_eq!(&generated.idle_kernels, &kernels, "kernels");
            Ok(())
        },
    );
}

/// Events in nonsense order, about unknown operations and VMs, fold without panic; the
/// state still snapshots, serializes and plans, and its queries agree with its maps.
fn junk_sequences_fold_without_panic() {
    check(
        "junk_sequences_fold_without_panic",
        4,
        128,
        (any::<u64>(), 1usize..300),
        |(seed, len)| {
            let events = junk(seed, len);
            let mut state = Projections::default();
            for envelope in &events {
                state.apply(envelope);
                check_queries(&state)?;
            }
            let decoded = Projections::decode_snapshot(&state.encode_snapshot());
            prop_assert_eq!(decoded.as_ref(), Some(&state));
            let json = serde_json::to_string(&state)
                .map_err(|e| TestCaseError::fail(format!("does not serialize: {e}")))?;
            let back: Projections = serde_json::from_str(&json)
                .map_err(|e| TestCaseError::fail(format!("JSON does not read back: {e}")))?;
            prop_assert_eq!(&back, &state);
            let _ = plan_recovery(&state);
            Ok(())
        },
    );
}

/// A journal over a real redb file with frequent snapshots, written in batches of random size
/// and reopened, shows the same view as a rebuild from scratch and as a fold of the envelopes
/// its appends returned; reopening loads a snapshot and replays only the tail.
fn journal_over_redb_reopens_to_the_same_view_as_a_rebuild() {
    check(
        "journal_over_redb_reopens_to_the_same_view_as_a_rebuild",
        5,
        10,
        (gen_config(14), 1u64..=16, any::<u64>()),
        |((seed, config), snapshot_every, batch_seed)| {
            let log = generate(seed, &config);
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let path = dir.path().join("events.redb");
            let mut batches = Rng::new(batch_seed);
            let mut written = Vec::new();
            {
                let redb = RedbLog::open(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let journal = open_journal(Arc::new(redb), snapshot_every);
                let mut rest: Vec<NewEvent> = log
                    .envelopes()
                    .iter()
                    .map(|e| NewEvent {
                        op_id: e.op_id,
                        cause: e.cause,
                        event: e.event.clone(),
                    })
                    .collect();
                while !rest.is_empty() {
                    let take = (1 + batches.below(6) as usize).min(rest.len());
                    let batch: Vec<NewEvent> = rest.drain(..take).collect();
                    let appended = journal
                        .append_blocking(batch)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    written.extend(appended);
                }
                let expected: Projections = fold(&written);
                prop_assert_eq!(&*journal.view(), &expected, "live view");
                journal.close();
            }
            let expected: Projections = fold(&written);
            let redb = RedbLog::open(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let rebuilt = rebuild::<Projections>(&redb)
                .map_err(|e| TestCaseError::fail(format!("rebuild: {e}")))?;
            prop_assert_eq!(&rebuilt, &expected, "rebuild from scratch");
            let journal = open_journal(Arc::new(redb), snapshot_every);
            prop_assert_eq!(&*journal.view(), &expected, "view after reopening");
            prop_assert_eq!(journal.health(), Health::Writable);
            let report = journal.open_report().clone();
            prop_assert_eq!(report.last_seq, Seq(written.len() as u64));
            if written.len() as u64 >= snapshot_every {
                let Some(snapshot) = report.snapshot_seq else {
                    return Err(TestCaseError::fail(format!(
                        "no snapshot after {} events with snapshot_every_events {}",
                        written.len(),
                        snapshot_every
                    )));
                };
                prop_assert_eq!(
                    report.replayed,
                    written.len() as u64 - snapshot.0,
                    "only the tail after the snapshot is replayed"
                );
            }
            prop_assert_eq!(
                journal
                    .verify_all()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?,
                written.len() as u64
            );
            Ok(())
        },
    );
}

/// The generator keeps producing every situation the other properties rely on: successes,
/// rollbacks, stuck operations, crashes recovered each way, unfinished operations, old-layout
/// events, VMs found dead or exiting on their own. (A generator that quietly stopped making
/// one of them would make the properties above vacuous.)
fn the_generator_covers_every_situation() {
    use std::collections::BTreeMap;
    let seed = seed_from_env("BANGER_PROPTEST_SEED", DEFAULT_SEED);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut rng = Rng::new(seed);
    for i in 0..160 {
        // Half with the defaults, half crashing often (host reboots find VMs dead).
        let config = GenConfig {
            crash_per_mille: if i % 2 == 0 { 6 } else { 25 },
            ..GenConfig::default()
        };
        let log = generate(rng.next_u64(), &config);
        let state: Projections = fold(log.envelopes());
        for op in state.operations.values() {
            *counts.entry(format!("status {}", op.status)).or_default() += 1;
            *counts.entry(format!("kind {}", op.kind)).or_default() += 1;
            if let Some(decision) = op.recovery {
                *counts.entry(format!("recovery {decision:?}")).or_default() += 1;
            }
        }
        for envelope in log.envelopes() {
            *counts
                .entry(format!("event {}", envelope.event.name()))
                .or_default() += 1;
        }
    }
    println!("{counts:#?}");
    let mut expected: Vec<String> = [
        "status running",
        "status rolling_back",
        "status succeeded",
        "status rolled_back",
        "status stuck",
        "recovery RollBack",
        "recovery RollForward",
        "recovery ResumeUndo",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for kind in [
        OpKind::VmCreate,
        OpKind::VmStart,
        OpKind::VmStop,
        OpKind::VmKill,
        OpKind::VmDelete,
        OpKind::VmSet,
        OpKind::ImagePull,
        OpKind::ImageRegister,
        OpKind::ImageDelete,
        OpKind::KernelImport,
        OpKind::KernelPull,
        OpKind::KernelRemove,
        OpKind::ImageCachePrune,
    ] {
        expected.push(format!("kind {kind}"));
    }
    for kind in Event::KNOWN_KINDS {
        if let Some(name) = Event::kind_name(*kind) {
            expected.push(format!("event {name}"));
        }
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "the generator never produced: {missing:?}"
    );
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync fold_of_prefix_then_rest_equals_fold_of_all,
        sync snapshot_or_json_at_any_cut_plus_tail_equals_full_replay,
        sync generated_logs_fold_and_agree_with_the_generator_model,
        sync junk_sequences_fold_without_panic,
        sync journal_over_redb_reopens_to_the_same_view_as_a_rebuild,
        sync the_generator_covers_every_situation,
    ]
}
