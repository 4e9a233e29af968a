//! cloudflow: spec → plan → phases → commands → executor → providers.

// Spec errors carry their source text for the miette snippet, and remote errors the
// command and its stderr tail: both are large, and both are the cold path.
#![allow(clippy::result_large_err)]
pub mod app;
pub mod cli;
pub mod commands;
pub mod deploy;
pub mod error;
pub mod exec;
pub mod facts;
pub mod orchestrator;
pub mod phase;
pub mod plan;
pub mod render;
pub mod serve;
pub mod size;
pub mod spec;
pub mod state;
pub mod ui;
pub mod wait;
