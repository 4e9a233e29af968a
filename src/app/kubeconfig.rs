//! `kubeconfig`: a kubeconfig for kubectl from the provider's hand-off (endpoint, CA, auth).

use std::sync::Arc;

use super::{Report, open};
use crate::cli::Cli;
use crate::error::{Error, Result};
use crate::orchestrator::kubeconfig_document;
use crate::ui::Ui;

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
    let doc = kubeconfig_document(&ctx.spec.name, &ep, show_token)?;
    let text = serde_saphyr::to_string(&doc)
        .map_err(|e| Error::Other(format!("could not write the kubeconfig: {e}")))?;
    Ok(Report { json: doc, text })
}
