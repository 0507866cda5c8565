//! banger-helper: the narrow root helper (bridge, taps, NAT, jailer launch, loop devices).
//!
//! Its request set, validation and server arrive with the "Root helper and host plumbing"
//! issue. Until then bangerd asks it for nothing; this crate exists so the workspace layout is
//! the one ARCHITECTURE.md describes.
