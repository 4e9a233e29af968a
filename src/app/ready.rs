//! New cloud machines are "running" long before they are usable: wait until SSH answers and
//! cloud-init has finished the first boot (`cloud-init status --wait`), bounded by the
//! command's `--timeout`. A machine that has booted once is recorded and not waited for again.

use std::time::{Duration, Instant};

use cloudflow_provider_api::Machine;

use crate::commands;
use crate::error::{Result, collect_hosts};
use crate::exec::{ExecError, Target, for_each_host};
use crate::phase::Ctx;
use crate::wait::{Stop, until};

/// Wait for every running machine not yet recorded as booted. The error names each machine
/// that did not become ready, its address and what it was waiting for. `record` is false
/// for commands that hold no lock (`plan`): they wait but write nothing to the state.
pub async fn wait_booted(
    ctx: &Ctx,
    machines: &[Machine],
    timeout: Duration,
    record: bool,
) -> Result<()> {
    if !ctx.provider.boots_with_cloud_init() {
        return Ok(());
    }
    let state = ctx.state.snapshot();
    let todo: Vec<Target> = machines
        .iter()
        .filter(|m| m.running)
        .filter(|m| !state.hosts.get(&m.name).is_some_and(|h| h.booted))
        .map(Target::from)
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    ctx.ui.info(&format!(
        "waiting for {} new machine(s) to finish booting (SSH, then cloud-init)",
        todo.len()
    ));
    let deadline = Instant::now() + timeout;
    let results = for_each_host(&todo, 16, |t| async move {
        ctx.ui.host(&t.name, "booting");
        let r = wait_one(ctx, t, deadline).await;
        if r.is_ok() {
            ctx.ui.host_done(&t.name, "booted");
        }
        r
    })
    .await;
    let booted = collect_hosts(results)?;
    if !record {
        return Ok(());
    }
    ctx.state.update(|s| {
        for name in &booted {
            s.host(name).booted = true;
        }
    })?;
    Ok(())
}

async fn wait_one(ctx: &Ctx, t: &Target, deadline: Instant) -> Result<String, ExecError> {
    let not_ready = |what: String| ExecError::NotReady {
        host: t.name.clone(),
        address: format!("{}:{}", t.address, t.port),
        what,
    };
    until(Duration::from_secs(2), deadline, || async {
        // Each attempt stays well inside the executor's 20-minute limit per command.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .clamp(1, 15 * 60);
        match ctx
            .exec
            .probe(t, "provision", &commands::cloud_init_wait(left))
            .await
        {
            // sshd not up yet, or cloud-init has not installed the key yet.
            Err(
                e @ (ExecError::Unreachable { .. }
                | ExecError::Auth { .. }
                | ExecError::Session { .. }),
            ) => Err(Stop::NotYet(format!("SSH did not answer ({e})"))),
            Err(e) => Err(Stop::Failed(e)),
            Ok(out) => match boot_status(&out.stdout) {
                Boot::Done => Ok(t.name.clone()),
                Boot::Running => Err(Stop::NotYet("cloud-init was still running".into())),
                Boot::Failed(detail) => Err(Stop::Failed(not_ready(format!(
                    "cloud-init's first boot failed: {detail}"
                )))),
            },
        }
    })
    .await
    .map_err(|e| match e {
        Stop::Failed(e) => e,
        Stop::NotYet(last) => not_ready(format!("not ready before the timeout: {last}")),
    })
}

#[derive(Debug, PartialEq)]
enum Boot {
    Done,
    Running,
    Failed(String),
}

/// `cloud-init status --long` as the wait command prints it.
fn boot_status(out: &str) -> Boot {
    let status = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("status:"))
        .map(str::trim)
        .unwrap_or("");
    match status {
        "done" | "disabled" => Boot::Done,
        "running" | "not run" | "not started" | "" => Boot::Running,
        _ => {
            let detail: Vec<&str> = out
                .lines()
                .skip_while(|l| !l.trim_start().starts_with("detail:"))
                .skip(1)
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(3)
                .collect();
            Boot::Failed(format!("status {status}: {}", detail.join(" ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_init_statuses() {
        assert_eq!(boot_status("status: done\n"), Boot::Done);
        assert_eq!(boot_status("status: running\n"), Boot::Running);
        assert_eq!(boot_status("status: not run\n"), Boot::Running);
        let failed = boot_status(
            "status: error\nboot_status_code: enabled-by-sysvinit\nlast_update: x\ndetail:\n('runcmd', RuntimeError('apt failed'))\n",
        );
        assert_eq!(
            failed,
            Boot::Failed("status error: ('runcmd', RuntimeError('apt failed'))".into())
        );
    }
}
