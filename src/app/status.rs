//! `status`: the nodes as the provider and the swarm's leader see them.

use std::sync::Arc;

use cloudflow_provider_api::Role;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Report, open};
use crate::cli::Cli;
use crate::commands;
use crate::error::Result;
use crate::exec::Target;
use crate::ui::Ui;

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub role: Role,
    /// ready, down, not-joined, stopped, unknown (leader unreachable).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<String>,
}

/// One line of `docker node ls --format '{{json .}}'`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeLine {
    hostname: String,
    status: String,
    #[serde(default)]
    manager_status: String,
}

pub async fn status(cli: &Cli, ui: Arc<Ui>) -> Result<Report> {
    let s = open(cli, ui, false, false).await?;
    let ctx = &s.ctx;
    let machines = ctx.provider.list().await?;
    *ctx.machines.lock().unwrap() = machines.clone();
    let state = ctx.state.snapshot();
    let hostname = |name: &str| {
        state
            .hosts
            .get(name)
            .and_then(|h| h.hostname.clone())
            .unwrap_or_else(|| name.to_string())
    };

    // Ask a manager cloudflow put in the swarm, else any manager.
    let leader = machines
        .iter()
        .filter(|m| m.running && m.role == Role::Manager)
        .max_by_key(|m| {
            state
                .hosts
                .get(&m.name)
                .is_some_and(|h| h.swarm == Some(Role::Manager))
        });
    let mut error = None;
    let mut nodes: Vec<NodeLine> = Vec::new();
    if let Some(l) = leader {
        match ctx
            .exec
            .probe(&Target::from(l), "status", &commands::node_ls())
            .await
        {
            Ok(out) if out.code == 0 => {
                nodes = out
                    .stdout
                    .lines()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect();
            }
            Ok(_) => {} // not a swarm manager (yet): every node is not-joined
            Err(e) => error = Some(e.to_string()),
        }
    }
    let statuses: Vec<NodeStatus> = machines
        .iter()
        .map(|m| {
            let node = nodes.iter().find(|n| n.hostname == hostname(&m.name));
            let status = if !m.running {
                "stopped".to_string()
            } else if error.is_some() {
                "unknown".to_string()
            } else {
                node.map(|n| n.status.to_lowercase())
                    .unwrap_or_else(|| "not-joined".into())
            };
            NodeStatus {
                name: m.name.clone(),
                address: m.ssh.address.clone(),
                role: m.role,
                status,
                manager_status: node
                    .map(|n| n.manager_status.to_lowercase())
                    .filter(|s| !s.is_empty()),
            }
        })
        .collect();
    let mut text = format!(
        "cluster {} ({}): {} node(s)\n",
        ctx.spec.name,
        ctx.provider.kind(),
        statuses.len()
    );
    text.push_str(&format!(
        "  {:<20} {:<16} {:<8} {}\n",
        "NAME", "ADDRESS", "ROLE", "STATUS"
    ));
    for n in &statuses {
        let extra = n
            .manager_status
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        text.push_str(&format!(
            "  {:<20} {:<16} {:<8} {}{extra}\n",
            n.name,
            n.address,
            n.role.to_string(),
            n.status
        ));
    }
    if let Some(p) = &state.proxy {
        text.push_str(&format!(
            "proxy: {} on port {} of every manager (routes <service>-<env>.{})\n",
            p.image,
            p.port,
            ctx.spec.proxy.domain.as_deref().unwrap_or("-")
        ));
    }
    let environments = crate::deploy::env_list(&state);
    for e in environments.iter().filter(|e| {
        e["services"].as_array().is_some_and(|s| !s.is_empty())
            || e["name"] != crate::deploy::DEFAULT_ENV
    }) {
        text.push_str(&format!(
            "env {}: {}\n",
            e["name"].as_str().unwrap_or(""),
            crate::deploy::services_line(e)
        ));
    }
    if let Some(e) = &error {
        text.push_str(&format!("warning: could not ask the swarm: {e}\n"));
    }
    let managed = ctx.provider.managed_cluster().await?;
    if let Some(mc) = &managed {
        text = managed_text(mc);
    } else if ctx.provider.kind() == "gke" {
        text = format!(
            "cluster {} (gke): does not exist (yet); `up` creates it\n",
            ctx.spec.name
        );
    }
    let mut nodes = serde_json::to_value(&statuses).unwrap_or_default();
    let mut kube = None;
    let reachable = ctx.spec.kubernetes.kubeconfig.is_some()
        || ctx.k3s_kubeconfig.exists()
        || managed.as_ref().is_some_and(|m| m.status == "RUNNING");
    if ctx.spec.orchestrator == crate::spec::Orchestrator::Kubernetes && reachable {
        if managed.is_none() && ctx.spec.kubernetes.kubeconfig.is_some() {
            text = format!("cluster {} (Kubernetes, existing)\n", ctx.spec.name);
        }
        // The cluster's API unreachable is a warning, like an unreachable swarm leader.
        let asked = async { crate::phase::deploy::kubernetes(ctx).await?.status().await };
        match asked.await {
            Ok(k) => {
                text.push_str(&kube_text(&k));
                nodes = json!(k.nodes);
                kube = Some(k);
            }
            Err(e) => {
                text.push_str(&format!("warning: could not ask the Kubernetes API: {e}\n"));
                error = Some(e.to_string());
            }
        }
    }
    Ok(Report {
        json: json!({"cluster": ctx.spec.name, "provider": ctx.provider.kind(), "nodes": nodes,
                     "managed": managed,
                     "namespaces": kube.as_ref().map(|k| &k.namespaces),
                     "workloads": kube.as_ref().map(|k| &k.workloads),
                     "proxy": state.proxy.as_ref().map(|p| json!({"image": p.image, "port": p.port})),
                     "environments": environments, "error": error}),
        text,
    })
}

/// A managed cluster (GKE): the cluster and its node pools, as the provider's API reports them.
fn managed_text(mc: &cloudflow_provider_api::ManagedCluster) -> String {
    let mut text = format!(
        "cluster {} (gke, {}): {}, Kubernetes {}, {} node(s)\n",
        mc.name, mc.location, mc.status, mc.version, mc.nodes
    );
    text.push_str(&format!(
        "  {:<16} {:<16} {:>5} {:<12} {:<10} {}\n",
        "POOL", "MACHINE TYPE", "SIZE", "AUTOSCALING", "STATUS", "VERSION"
    ));
    for p in &mc.pools {
        let auto = p
            .autoscaling
            .map(|(min, max)| format!("{min}..{max}"))
            .unwrap_or_else(|| "off".into());
        let spot = if p.spot { " (spot)" } else { "" };
        text.push_str(&format!(
            "  {:<16} {:<16} {:>5} {:<12} {:<10} {}{spot}\n",
            p.name, p.machine_type, p.size, auto, p.status, p.version
        ));
    }
    text
}

/// Nodes, namespaces and workloads as the Kubernetes API reports them.
fn kube_text(k: &crate::orchestrator::KubeStatus) -> String {
    let mut text = format!("  {} node(s)\n", k.nodes.len());
    text.push_str(&format!(
        "  {:<20} {:<16} {:<8} {}\n",
        "NODE", "ADDRESS", "ROLE", "STATUS"
    ));
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    for n in &k.nodes {
        text.push_str(&format!(
            "  {:<20} {:<16} {:<8} {}\n",
            s(&n["name"]),
            s(&n["address"]),
            s(&n["role"]),
            s(&n["status"])
        ));
    }
    if !k.namespaces.is_empty() {
        text.push_str(&format!("  namespaces: {}\n", k.namespaces.join(", ")));
    }
    if !k.workloads.is_empty() {
        text.push_str(&format!(
            "  {:<28} {:<8} {:<32} {}\n",
            "WORKLOAD", "COLOUR", "IMAGE", "READY"
        ));
        for w in &k.workloads {
            text.push_str(&format!(
                "  {:<28} {:<8} {:<32} {}/{}\n",
                format!("{}/{}", s(&w["namespace"]), s(&w["name"])),
                s(&w["color"]),
                s(&w["image"]),
                w["ready"],
                w["replicas"]
            ));
        }
    }
    text
}
