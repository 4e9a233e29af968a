//! `kubeconfig`: a kubeconfig for kubectl from the provider's hand-off (endpoint, CA, auth).

use std::sync::Arc;

use base64::Engine;
use cloudflow_provider_api::{KubeAuth, KubeEndpoint};
use serde_json::json;

use super::{Report, open};
use crate::cli::Cli;
use crate::error::{Error, Result};
use crate::ui::Ui;

/// The kubeconfig document. The token is written only when `show_token` asks for it; otherwise
/// kubectl gets its tokens from the exec plugin.
pub fn document(cluster: &str, ep: &KubeEndpoint, show_token: bool) -> Result<serde_json::Value> {
    let user = match (&ep.auth, show_token) {
        (KubeAuth::Token(t), true) => json!({"token": t.expose()}),
        (KubeAuth::Exec { .. }, true) => {
            return Err(Error::Usage(
                "--show-token: CLOUDFLOW_GKE_TOKEN is not set, so there is no token to show; \
                 without --show-token, kubectl gets tokens from gke-gcloud-auth-plugin"
                    .into(),
            ));
        }
        (
            KubeAuth::Exec {
                command,
                args,
                install_hint,
            },
            false,
        ) => json!({"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": command, "args": args, "installHint": install_hint,
            "provideClusterInfo": true, "interactiveMode": "IfAvailable"}}),
        (KubeAuth::Token(_), false) => json!({"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "gke-gcloud-auth-plugin", "args": [],
            "installHint": "Install gke-gcloud-auth-plugin: `gcloud components install gke-gcloud-auth-plugin` (or pass --show-token to write CLOUDFLOW_GKE_TOKEN instead)",
            "provideClusterInfo": true, "interactiveMode": "IfAvailable"}}),
    };
    let name = format!("cloudflow-{cluster}");
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": ep.server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&ep.ca_pem)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }))
}

pub async fn kubeconfig(cli: &Cli, show_token: bool, ui: Arc<Ui>) -> Result<Report> {
    let s = open(cli, ui, false, false).await?;
    let ctx = &s.ctx;
    let Some(ep) = ctx.provider.kubernetes().await? else {
        return Err(Error::Other(format!(
            "cluster {} has no Kubernetes API yet: the {} provider makes none until `up` creates the cluster",
            ctx.spec.name,
            ctx.provider.kind()
        )));
    };
    let doc = document(&ctx.spec.name, &ep, show_token)?;
    let text = serde_saphyr::to_string(&doc)
        .map_err(|e| Error::Other(format!("could not write the kubeconfig: {e}")))?;
    Ok(Report { json: doc, text })
}
