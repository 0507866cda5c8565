//! Projections: placeholder until written.
