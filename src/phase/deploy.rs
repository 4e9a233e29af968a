//! Proxy and deploy: the reverse proxy on the managers, then the spec's services in the
//! `default` environment (first deploy: one colour, no switch). Both go through
//! [`crate::deploy::Deployer`], like the `deploy` command. Undo (bare metal): everything
//! cloudflow deployed goes before the swarm does.

use std::time::Duration;

use cloudflow_provider_api::Role;

use super::{Ctx, Phase};
use crate::deploy::flow::DeployOpts;
use crate::deploy::probe::ProxyClient;
use crate::deploy::{DEFAULT_ENV, Deployer};
use crate::error::{Error, Result};
use crate::exec::Target;
use crate::orchestrator::{Expose, KubeSource, Kubernetes, Orchestrator, Swarm};
use crate::plan::{PhaseName, Plan, Step};

/// How long `up` waits for deployed tasks to converge.
const UP_TIMEOUT: Duration = Duration::from_secs(600);

/// The swarm as cloudflow formed it: managers it joined (or initialised), the first leading.
pub fn swarm(ctx: &Ctx) -> Result<Swarm> {
    let state = ctx.state.snapshot();
    let managers: Vec<Target> = ctx
        .machines()
        .iter()
        .filter(|m| m.role == Role::Manager)
        .filter(|m| {
            state
                .hosts
                .get(&m.name)
                .is_some_and(|h| h.swarm == Some(Role::Manager))
        })
        .map(Target::from)
        .collect();
    let leader = managers.first().cloned().ok_or_else(|| {
        Error::Other(format!(
            "cluster {}: no swarm manager formed by cloudflow is running: run `cloudflow -f {} up --yes` first",
            ctx.spec.name,
            ctx.spec.path.display()
        ))
    })?;
    Ok(Swarm {
        exec: ctx.exec.clone(),
        leader,
        managers,
        cluster: ctx.spec.name.clone(),
        https_port: ctx.spec.proxy.https.as_ref().map(|h| h.port),
    })
}

/// The orchestrator the spec names, reached the way the cluster is: Swarm through a manager
/// cloudflow formed (over SSH); Kubernetes through the spec's kubeconfig or the provider's
/// hand-off (GKE: endpoint, CA, token source).
pub async fn orchestrator(ctx: &Ctx) -> Result<Box<dyn Orchestrator>> {
    match ctx.spec.orchestrator {
        crate::spec::Orchestrator::Swarm => Ok(Box::new(swarm(ctx)?)),
        crate::spec::Orchestrator::Kubernetes => Ok(Box::new(kubernetes(ctx).await?)),
    }
}

pub async fn kubernetes(ctx: &Ctx) -> Result<Kubernetes> {
    let mut k = connect_kubernetes(ctx).await?;
    k.https_port = ctx.spec.proxy.https.as_ref().map(|h| h.port);
    Ok(k)
}

async fn connect_kubernetes(ctx: &Ctx) -> Result<Kubernetes> {
    if let Some(path) = &ctx.spec.kubernetes.kubeconfig {
        return Kubernetes::connect(
            &ctx.spec.name,
            KubeSource::Kubeconfig {
                path,
                context: ctx.spec.kubernetes.context.as_deref(),
            },
            Expose::LoadBalancer,
            2,
        )
        .await;
    }
    if ctx.spec.kubernetes.k3s_artifacts.is_some() {
        // k3s that cloudflow installed: the kubeconfig it fetched; the proxy on a host port.
        if !ctx.k3s_kubeconfig.exists() {
            return Err(Error::Other(format!(
                "cluster {}: k3s is not installed yet (no {}): run `cloudflow -f {} up --yes` first",
                ctx.spec.name,
                ctx.k3s_kubeconfig.display(),
                ctx.spec.path.display()
            )));
        }
        let managers = ctx
            .machines()
            .iter()
            .filter(|m| m.role == Role::Manager)
            .count()
            .max(1) as u32;
        return Kubernetes::connect(
            &ctx.spec.name,
            KubeSource::Kubeconfig {
                path: &ctx.k3s_kubeconfig,
                context: None,
            },
            Expose::HostPort,
            managers,
        )
        .await;
    }
    let Some(ep) = ctx.provider.kubernetes().await? else {
        return Err(Error::Other(format!(
            "cluster {}: no Kubernetes API to talk to yet: run `cloudflow -f {} up --yes` first",
            ctx.spec.name,
            ctx.spec.path.display()
        )));
    };
    Kubernetes::connect(
        &ctx.spec.name,
        KubeSource::Endpoint(&ep),
        Expose::LoadBalancer,
        2,
    )
    .await
}

/// A deployer over `orch` for this context.
pub fn deployer<'a>(ctx: &'a Ctx, orch: &'a dyn Orchestrator, timeout: Duration) -> Deployer<'a> {
    Deployer {
        spec: &ctx.spec,
        state: &ctx.state,
        orch,
        renderer: &ctx.renderer,
        ui: ctx.ui.as_ref(),
        proxy: ProxyClient::new(ctx.spec.proxy.port.unwrap_or(80), orch.proxy_endpoints()),
        timeout,
    }
}

pub struct Proxy;

#[async_trait::async_trait]
impl Phase for Proxy {
    fn name(&self) -> PhaseName {
        PhaseName::Proxy
    }

    async fn run(&self, ctx: &Ctx, _plan: &Plan) -> Result<()> {
        let orch = orchestrator(ctx).await?;
        let created = deployer(ctx, orch.as_ref(), UP_TIMEOUT)
            .ensure_proxy()
            .await?;
        ctx.ui.info(if created {
            "proxy: started"
        } else {
            "proxy: already running; configuration reloaded"
        });
        Ok(())
    }

    async fn undo(&self, _ctx: &Ctx, _plan: &Plan) -> Result<()> {
        // The deploy phase's undo removes the proxy with everything else deployed.
        Ok(())
    }
}

pub struct Deploy;

#[async_trait::async_trait]
impl Phase for Deploy {
    fn name(&self) -> PhaseName {
        PhaseName::Deploy
    }

    async fn run(&self, ctx: &Ctx, plan: &Plan) -> Result<()> {
        let orch = orchestrator(ctx).await?;
        let d = deployer(ctx, orch.as_ref(), UP_TIMEOUT);
        d.finish_interrupted().await?;
        for a in plan.for_phase(PhaseName::Deploy) {
            if let Step::DeployService {
                service,
                image,
                replace,
            } = &a.step
            {
                let opts = DeployOpts {
                    image: Some(image.clone()),
                    force: *replace,
                    ..Default::default()
                };
                let out = d.deploy(DEFAULT_ENV, service, &opts).await?;
                ctx.ui.info(&out.message);
            }
        }
        d.ensure_certs(false).await?;
        Ok(())
    }

    async fn undo(&self, ctx: &Ctx, plan: &Plan) -> Result<()> {
        if !plan
            .for_phase(PhaseName::Deploy)
            .any(|a| matches!(a.step, Step::RemoveDeployments { .. }))
        {
            return Ok(());
        }
        let orch = orchestrator(ctx).await?;
        ctx.ui
            .info("removing deployed services, their spaces and the proxy");
        deployer(ctx, orch.as_ref(), UP_TIMEOUT).teardown().await
    }
}
