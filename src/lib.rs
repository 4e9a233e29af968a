//! cloudflow: spec → plan → phases → commands → executor → providers.
pub mod commands;
pub mod facts;
pub mod render;
pub mod spec;
pub mod state;
pub mod exec;
pub mod plan;
pub mod error;
pub mod phase;
pub mod ui;
pub mod app;
pub mod cli;
