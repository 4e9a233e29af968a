//! The recording executor: remembers every command instead of running it, and answers with
//! canned output per step. For tests and dry runs.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{ExecError, Executor, Output, Target};
use crate::commands::Cmd;

#[derive(Default)]
pub struct Recording {
    /// `(host, step, command line, had stdin)` in the order they ran.
    pub log: Mutex<Vec<(String, String, String, bool)>>,
    /// Canned output by `(host, step)`, then by step; default: success, no output.
    pub answers: Mutex<HashMap<(String, String), Output>>,
}

impl Recording {
    pub fn answer(&self, host: &str, step: &str, out: Output) {
        self.answers
            .lock()
            .unwrap()
            .insert((host.to_string(), step.to_string()), out);
    }

    pub fn steps(&self, host: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.0 == host)
            .map(|l| l.1.clone())
            .collect()
    }

    fn output(&self, target: &Target, cmd: &Cmd) -> Output {
        self.log.lock().unwrap().push((
            target.name.clone(),
            cmd.step.clone(),
            cmd.command_line(),
            cmd.stdin.is_some(),
        ));
        let answers = self.answers.lock().unwrap();
        answers
            .get(&(target.name.clone(), cmd.step.clone()))
            .or_else(|| answers.get(&(String::new(), cmd.step.clone())))
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Executor for Recording {
    async fn run(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        let out = self.output(target, cmd);
        if out.code != 0 {
            return Err(ExecError::failed(target, phase, cmd, &out));
        }
        Ok(out)
    }

    async fn probe(&self, target: &Target, _phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        Ok(self.output(target, cmd))
    }
}
