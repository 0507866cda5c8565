//! Shared helpers for the replay tests.
