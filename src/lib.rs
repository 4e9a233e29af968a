//! cloudflow: spec → plan → phases → commands → executor → providers.
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
pub mod size;
pub mod spec;
pub mod state;
pub mod ui;
