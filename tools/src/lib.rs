//! Developer tools.
