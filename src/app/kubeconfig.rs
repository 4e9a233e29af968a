//! `kubeconfig`: a kubeconfig for kubectl from the provider's hand-off (endpoint, CA, auth).

use std::sync::Arc;

use serde_json::json;

use super::{Report, open};
use crate::cli::Cli;
use crate::error::{Error, Result};
use crate::orchestrator::kubeconfig_document;
use crate::ui::Ui;

pub async fn kubeconfig(cli: &Cli, show_token: bool, ui: Arc<Ui>) -> Result<Report> {
    let s = open(cli, ui, false, false).await?;
    let ctx = &s.ctx;
    if let Some(own) = &ctx.spec.kubernetes.kubeconfig {
        return Ok(Report {
            json: json!({"kubeconfig": own, "context": ctx.spec.kubernetes.context}),
            text: format!(
                "cluster {} is reached through your own kubeconfig: {}\n",
                ctx.spec.name,
                own.display()
            ),
        });
    }
    if ctx.spec.kubernetes.k3s_artifacts.is_some() {
        let path = &ctx.k3s_kubeconfig;
        if !path.exists() {
            return Err(Error::Other(format!(
                "cluster {}: k3s is not installed yet (no {}): run `up` first",
                ctx.spec.name,
                path.display()
            )));
        }
        // It holds the cluster's admin credentials: printed only when asked for.
        if !show_token {
            return Ok(Report {
                json: json!({"kubeconfig": path}),
                text: format!(
                    "the k3s kubeconfig is {} (0600; it holds the cluster's admin credentials): \
                     KUBECONFIG={} kubectl get nodes — or pass --show-token to print it\n",
                    path.display(),
                    path.display()
                ),
            });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Other(format!("cannot read {}: {e}", path.display())))?;
        let doc: serde_json::Value = serde_saphyr::from_str(&text)
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        return Ok(Report { json: doc, text });
    }
    let Some(ep) = ctx.provider.kubernetes().await? else {
        return Err(Error::Other(format!(
            "cluster {} has no Kubernetes API yet: the {} provider makes none until `up` creates the cluster",
            ctx.spec.name,
            ctx.provider.kind()
        )));
    };
    let doc = kubeconfig_document(&ctx.spec.name, &ep, show_token)?;
    let text = serde_saphyr::to_string(&doc)
        .map_err(|e| Error::Other(format!("could not write the kubeconfig: {e}")))?;
    Ok(Report { json: doc, text })
}
