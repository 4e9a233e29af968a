//! The top-level error: every module's error, and the exit code it maps to.

use crate::exec::ExecError;
use crate::plan::PlanError;
use crate::render::RenderError;
use crate::spec::SpecError;
use crate::state::StateError;
use cloudflow_provider_api::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Boxed: a spec error carries the source for its snippet, and every `Result` pays for
    /// the largest variant.
    #[error(transparent)]
    Spec(Box<SpecError>),
    /// Bad usage that clap cannot see (e.g. no terminal to confirm on).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Boxed like `Spec`: it carries host, step, command and stderr tail.
    #[error(transparent)]
    Exec(Box<ExecError>),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Several hosts failed; each keeps its own message.
    #[error("{} host(s) failed:\n{}", .0.len(), .0.iter().map(|e| format!("- {e}")).collect::<Vec<_>>().join("\n"))]
    Hosts(Vec<ExecError>),
    #[error("{0}")]
    Other(String),
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        Error::Spec(Box::new(e))
    }
}

impl From<ExecError> for Error {
    fn from(e: ExecError) -> Self {
        Error::Exec(Box::new(e))
    }
}

impl Error {
    /// 2 for bad usage or a bad spec, 1 for everything that went wrong at run time.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Spec(_) | Error::Usage(_) | Error::Render(_) => 2,
            Error::State(StateError::Url { .. }) => 2,
            Error::Provider(ProviderError::Spec { .. }) => 2,
            _ => 1,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Error::Spec(_) => "spec",
            Error::Usage(_) => "usage",
            Error::State(StateError::Locked { .. }) => "locked",
            Error::State(_) => "state",
            Error::Provider(_) => "provider",
            Error::Exec(_) | Error::Hosts(_) => "remote",
            Error::Plan(_) => "plan",
            Error::Render(_) => "template",
            Error::Other(_) => "runtime",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turn per-host results into one error listing every failed host.
pub fn collect_hosts<T>(results: Vec<Result<T, ExecError>>) -> Result<Vec<T>> {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => failed.push(e),
        }
    }
    match failed.len() {
        0 => Ok(ok),
        1 => Err(Error::from(failed.remove(0))),
        _ => Err(Error::Hosts(failed)),
    }
}

/// An error with its chain of sources, one `: ` apart (for messages from library errors).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
