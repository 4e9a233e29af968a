//! cloudflow: spec → plan → phases → commands → executor → providers.
pub mod spec;
