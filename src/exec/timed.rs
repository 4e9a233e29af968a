//! Where the time goes: every command an executor runs, with its host, phase, step, start and
//! duration (`up --timings`). Wraps any executor; costs one lock and one push per command.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{ExecError, Executor, Output, Sink, Target};
use crate::commands::Cmd;

#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub host: String,
    pub phase: String,
    pub step: String,
    /// Seconds since the command (the executor) began.
    pub start: f64,
    pub seconds: f64,
    pub ok: bool,
}

/// The record the wrapper fills and `up` reports.
#[derive(Clone)]
pub struct Timings {
    started: Instant,
    steps: Arc<Mutex<Vec<StepTiming>>>,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            started: Instant::now(),
            steps: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl Timings {
    pub fn steps(&self) -> Vec<StepTiming> {
        self.steps.lock().unwrap().clone()
    }

    fn record(&self, target: &Target, phase: &str, cmd: &Cmd, began: Instant, ok: bool) {
        self.steps.lock().unwrap().push(StepTiming {
            host: target.name.clone(),
            phase: phase.to_string(),
            step: cmd.step.clone(),
            start: began.duration_since(self.started).as_secs_f64(),
            seconds: began.elapsed().as_secs_f64(),
            ok,
        });
    }

    /// Seconds since the command began.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }
}

pub struct Timed {
    pub inner: Arc<dyn Executor>,
    pub timings: Timings,
}

#[async_trait::async_trait]
impl Executor for Timed {
    async fn run(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        let began = Instant::now();
        let r = self.inner.run(target, phase, cmd).await;
        self.timings.record(target, phase, cmd, began, r.is_ok());
        r
    }

    async fn probe(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        let began = Instant::now();
        let r = self.inner.probe(target, phase, cmd).await;
        self.timings.record(
            target,
            phase,
            cmd,
            began,
            r.as_ref().is_ok_and(|o| o.code == 0),
        );
        r
    }

    async fn stream(
        &self,
        target: &Target,
        phase: &str,
        cmd: &Cmd,
        sink: Sink,
    ) -> Result<i32, ExecError> {
        self.inner.stream(target, phase, cmd, sink).await
    }
}
