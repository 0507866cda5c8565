//! The handle ledger: which owner holds each host resource (tap, IP, MAC, vsock CID, loop
//! device, pid, socket, file, directory).
//!
//! What changes it:
//! - `HandleAcquired` records (or transfers) ownership: a handle has exactly one owner, so a
//!   second acquisition moves it (an operation handing a tap over to its VM, for example).
//! - `HandleReleased` removes it; releasing what is not held is a no-op.
//! - `VmRemoved` releases everything the VM held.
//! - When a VM's VMM process is known to be gone (exit, found dead, stopped, its start undone),
//!   the `Process` handle the VM held for it is released too (see [`crate::vms`]): a dead pid
//!   belongs to nobody, and may soon be another process's.
//!
//! An operation's own handles (`Owner::Op`) are not released when it finishes: the daemon
//! hands them to the VM (a second `HandleAcquired`) or releases them. Any left behind are
//! leaks, which `Projections::handles_of(Owner::Op(id))` lists.
//!
//! Invariant: the private by-owner index holds exactly the ledger's entries, grouped by owner.
//! No IO: this is bookkeeping over what the log says, never a look at the host.

use std::collections::BTreeMap;

use banger_events::{Handle, OpId, Owner, Seq, VmId};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::Projections;

/// Who holds one handle, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct HandleView {
    pub owner: Owner,
    pub acquired_seq: Seq,
}

/// One ledger line, the form handles take in JSON (a structured handle cannot be a JSON key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleEntry {
    pub handle: Handle,
    pub owner: Owner,
    pub acquired_seq: Seq,
}

/// [`Owner`] with an order, to key the by-owner index. `Owner` itself is persisted schema and
/// is left as the events crate defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum OwnerKey {
    Vm(VmId),
    Op(OpId),
    Daemon,
}

impl From<Owner> for OwnerKey {
    fn from(owner: Owner) -> Self {
        match owner {
            Owner::Vm(id) => OwnerKey::Vm(id),
            Owner::Op(id) => OwnerKey::Op(id),
            Owner::Daemon => OwnerKey::Daemon,
        }
    }
}

impl Projections {
    pub(crate) fn acquire_handle(&mut self, seq: Seq, owner: Owner, handle: &Handle) {
        // A transfer: drop the previous owner's claim first so both indexes stay exact.
        if self.handles.contains_key(handle) {
            self.release_handle(handle);
        }
        self.handles.insert(
            handle.clone(),
            HandleView {
                owner,
                acquired_seq: seq,
            },
        );
        self.index
            .by_owner
            .entry(owner.into())
            .or_default()
            .insert(handle.clone());
        if let (Owner::Vm(vm_id), Handle::Process { .. }) = (owner, handle) {
            self.set_vm_process(vm_id, handle);
        }
    }

    /// Removes `handle` from the ledger. When it was the VMM process of the VM that owned it,
    /// that VM no longer has a process.
    pub(crate) fn release_handle(&mut self, handle: &Handle) {
        let Some(view) = self.handles.remove(handle) else {
            return;
        };
        let key = OwnerKey::from(view.owner);
        if let Some(set) = self.index.by_owner.get_mut(&key) {
            set.remove(handle);
            if set.is_empty() {
                self.index.by_owner.remove(&key);
            }
        }
        if let Owner::Vm(vm_id) = view.owner {
            self.forget_vm_process_if(vm_id, handle);
        }
    }

    /// Releases every handle `owner` holds.
    pub(crate) fn release_all_of(&mut self, owner: Owner) {
        let Some(held) = self.index.by_owner.remove(&owner.into()) else {
            return;
        };
        for handle in held {
            self.handles.remove(&handle);
        }
    }
}

/// Serde helpers that write the ledger as a list of [`HandleEntry`] and read it back.
pub(crate) mod as_entries {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        handles: &BTreeMap<Handle, HandleView>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a> {
            handle: &'a Handle,
            owner: Owner,
            acquired_seq: Seq,
        }
        serializer.collect_seq(handles.iter().map(|(handle, view)| Entry {
            handle,
            owner: view.owner,
            acquired_seq: view.acquired_seq,
        }))
    }

    pub fn serialize_ref<S: serde::Serializer>(
        handles: &&BTreeMap<Handle, HandleView>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serialize(handles, serializer)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<Handle, HandleView>, D::Error> {
        let entries = Vec::<HandleEntry>::deserialize(deserializer)?;
        Ok(entries
            .into_iter()
            .map(|entry| {
                (
                    entry.handle,
                    HandleView {
                        owner: entry.owner,
                        acquired_seq: entry.acquired_seq,
                    },
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::*;
    use banger_events::*;

    fn acquired(owner: Owner, handle: Handle) -> Event {
        Event::HandleAcquired(HandleAcquired { owner, handle })
    }

    fn released(handle: Handle) -> Event {
        Event::HandleReleased(HandleReleased { handle })
    }

    #[test]
    fn acquire_records_owner_and_seq() {
        let mut log = Log::new();
        let seq = log.push(None, acquired(Owner::Daemon, tap("tap0")));
        let state = log.fold();
        let view = &state.handles[&tap("tap0")];
        assert_eq!(view.owner, Owner::Daemon);
        assert_eq!(view.acquired_seq, seq);
        let held: Vec<_> = state.handles_of(Owner::Daemon).map(|(h, _)| h).collect();
        assert_eq!(held, vec![&tap("tap0")]);
    }

    #[test]
    fn acquire_again_transfers_ownership() {
        let mut log = Log::new();
        log.push(None, acquired(Owner::Op(OpId(1)), tap("tap0")));
        let seq = log.push(None, acquired(Owner::Vm(VmId(2)), tap("tap0")));
        let state = log.fold();
        assert_eq!(state.handles[&tap("tap0")].owner, Owner::Vm(VmId(2)));
        assert_eq!(state.handles[&tap("tap0")].acquired_seq, seq);
        assert_eq!(state.handles_of(Owner::Op(OpId(1))).count(), 0);
        assert_eq!(state.handles_of(Owner::Vm(VmId(2))).count(), 1);
    }

    #[test]
    fn release_removes_and_releasing_twice_is_harmless() {
        let mut log = Log::new();
        log.push(None, acquired(Owner::Daemon, tap("tap0")));
        log.push(None, acquired(Owner::Daemon, file("/f")));
        log.push(None, released(tap("tap0")));
        log.push(None, released(tap("tap0")));
        log.push(None, released(tap("never-held")));
        let state = log.fold();
        assert_eq!(state.handles.len(), 1);
        assert!(state.handles.contains_key(&file("/f")));
        assert_eq!(state.handles_of(Owner::Daemon).count(), 1);
    }

    #[test]
    fn vm_removed_releases_only_that_vms_handles() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "one");
        log.create_vm(OpId(2), VmId(2), "two");
        for (vm, name) in [(VmId(1), "tap1"), (VmId(2), "tap2")] {
            log.push(None, acquired(Owner::Vm(vm), tap(name)));
        }
        log.push(
            None,
            acquired(
                Owner::Vm(VmId(1)),
                Handle::Ip {
                    addr: [10, 0, 0, 2],
                },
            ),
        );
        log.push(None, acquired(Owner::Daemon, tap("pool0")));
        log.push(None, Event::VmRemoved(VmRemoved { vm_id: VmId(1) }));
        let state = log.fold();
        let left: Vec<_> = state.handles.keys().cloned().collect();
        assert_eq!(left, vec![tap("pool0"), tap("tap2")]);
        assert_eq!(state.handles_of(Owner::Vm(VmId(1))).count(), 0);
    }

    #[test]
    fn handles_of_an_owner_without_handles_is_empty() {
        let state = Log::new().fold();
        assert_eq!(state.handles_of(Owner::Daemon).count(), 0);
    }
}
