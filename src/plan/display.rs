//! How a plan reads in a terminal.

use std::fmt;

use super::{PhaseName, Plan, Step};

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Provider(a) => write!(f, "{a}"),
            Step::WriteFile { path, .. } => write!(f, "write {path}"),
            Step::InstallDocker => f.write_str("install docker (distribution packages)"),
            Step::WriteDaemonJson {
                added_insecure,
                added_mirrors,
                created_file,
                ..
            } => {
                let mut parts = Vec::new();
                if !added_insecure.is_empty() {
                    parts.push(format!(
                        "insecure-registries += {}",
                        added_insecure.join(", ")
                    ));
                }
                if !added_mirrors.is_empty() {
                    parts.push(format!("registry-mirrors += {}", added_mirrors.join(", ")));
                }
                let verb = if *created_file {
                    "create"
                } else {
                    "merge into"
                };
                write!(f, "{verb} /etc/docker/daemon.json ({})", parts.join("; "))
            }
            Step::StartDocker => f.write_str("start dockerd"),
            Step::RestartDocker => f.write_str("restart dockerd (its settings changed)"),
            Step::RegistryLogin { server, username } => {
                write!(f, "docker login {server} as {username}")
            }
            Step::SwarmInit => f.write_str("swarm init (first manager)"),
            Step::SwarmJoin { role, via } => write!(f, "join the swarm as {role} via {via}"),
            Step::SwarmLeave => f.write_str("leave the swarm"),
            Step::K3sInstall { role, changes } => {
                write!(f, "k3s {role}: {}", changes.join(", "))
            }
            Step::K3sKubeconfig => {
                f.write_str("fetch the kubeconfig from the first server into the state directory")
            }
            Step::K3sUninstall => f.write_str("stop k3s and remove what cloudflow installed"),
            Step::StartProxy { image, port } => {
                write!(f, "start the reverse proxy ({image}) on port {port}")
            }
            Step::DeployService {
                service,
                image,
                replace: false,
            } => write!(f, "deploy {service} ({image}) in the default environment"),
            Step::DeployService {
                service,
                image,
                replace: true,
            } => write!(
                f,
                "deploy {service} ({image}) again: the state says it runs, the swarm has no such service"
            ),
            Step::RemoveDeployments { services } => write!(
                f,
                "remove deployed services ({}), their networks and the proxy",
                services.join(", ")
            ),
            Step::RegistryLogout { server } => write!(f, "docker logout {server}"),
            Step::RestoreDaemonJson { content: Some(_) } => {
                f.write_str("take cloudflow's registry settings out of /etc/docker/daemon.json")
            }
            Step::RestoreDaemonJson { content: None } => {
                f.write_str("remove /etc/docker/daemon.json (cloudflow created it)")
            }
            Step::RemoveFiles { paths } => write!(f, "remove {}", paths.join(", ")),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.actions.is_empty() {
            writeln!(f, "cluster {}: no changes", self.cluster)?;
        } else {
            writeln!(
                f,
                "cluster {}: {} change(s)",
                self.cluster,
                self.actions.len()
            )?;
        }
        // Phases in the order their actions run (`down` plans them in reverse).
        let mut phases: Vec<PhaseName> = Vec::new();
        for a in &self.actions {
            if !phases.contains(&a.phase) {
                phases.push(a.phase);
            }
        }
        for phase in phases {
            let actions: Vec<_> = self.for_phase(phase).collect();
            if actions.is_empty() {
                continue;
            }
            writeln!(f, "  {phase}")?;
            for a in actions {
                let forecast = a
                    .host
                    .as_ref()
                    .is_some_and(|h| self.forecast_hosts.contains(h))
                    && phase != PhaseName::Provision;
                match &a.host {
                    Some(h) => write!(f, "    {h}: {}", a.step)?,
                    None => write!(f, "    {}", a.step)?,
                }
                writeln!(
                    f,
                    "{}",
                    if forecast {
                        "  (forecast: host not reachable yet)"
                    } else {
                        ""
                    }
                )?;
            }
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}
