//! The [`Deployer`]: what every deploy command shares — state updates, the proxy (start,
//! publish routes and wait until they are live), convergence and the per-replica health gate.
//! The commands themselves are in `bluegreen.rs` (deploy, switch, stop-old, rollback, scale)
//! and `environments.rs`. Every change is recorded in the state before it is made; every
//! command returns once the orchestrator has converged or says what it waited for.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::probe::ProxyClient;
use super::{DEFAULT_ENV, Probe, Task, labels, proxy_config};
use crate::commands::swarm::{SecretRef, ServiceRun};
use crate::error::{Error, Result};
use crate::orchestrator::{Gate, Orchestrator};
use crate::render::Renderer;
use crate::spec::{ServiceSpec, Spec, Strategy};
use crate::state::{ClusterState, Color, ColorRecord, ProxyRecord, ServiceRecord, StateHandle};
use crate::ui::Ui;

/// What a command did, for text and JSON output.
pub struct Outcome {
    pub changed: bool,
    pub message: String,
    pub json: Value,
}

impl Outcome {
    pub(super) fn new(changed: bool, message: String, json: Value) -> Self {
        Outcome {
            changed,
            message,
            json,
        }
    }
}

/// Options of `deploy`.
#[derive(Debug, Clone, Default)]
pub struct DeployOpts {
    pub image: Option<String>,
    pub no_switch: bool,
    pub scale: Option<String>,
    pub force: bool,
}

pub struct Deployer<'a> {
    pub spec: &'a Spec,
    pub state: &'a StateHandle,
    pub orch: &'a dyn Orchestrator,
    pub renderer: &'a Renderer,
    pub ui: &'a Ui,
    pub proxy: ProxyClient,
    /// How long to wait for tasks to converge.
    pub timeout: Duration,
}

pub(super) fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

pub(super) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl<'a> Deployer<'a> {
    pub(super) fn cluster(&self) -> &str {
        &self.spec.name
    }

    pub(super) fn domain(&self) -> &str {
        self.spec.proxy.domain.as_deref().unwrap_or("local")
    }

    pub(super) fn service_spec(&self, name: &str) -> Result<&'a ServiceSpec> {
        self.spec.services.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.spec.services.keys().map(String::as_str).collect();
            Error::Usage(format!(
                "no service {name:?} in the spec {} (services: {})",
                self.spec.path.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// What the state records for `svc` in `env`, if anything.
    pub(super) fn deployed(&self, env: &str, svc: &str) -> Option<ServiceRecord> {
        self.state
            .snapshot()
            .environments
            .get(env)
            .and_then(|e| e.services.get(svc))
            .cloned()
    }

    pub(super) fn record(&self, env: &str, svc: &str) -> Result<ServiceRecord> {
        self.deployed(env, svc).ok_or_else(|| {
            Error::Usage(format!(
                "{svc} is not deployed in environment {env}: run `cloudflow deploy {svc}{}` first",
                if env == DEFAULT_ENV {
                    String::new()
                } else {
                    format!(" --env {env}")
                }
            ))
        })
    }

    pub(super) fn update<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> Result<R> {
        Ok(self.state.update(f)?)
    }

    /// Change the recorded service `svc` in `env` (nothing when it is not recorded).
    fn edit(&self, env: &str, svc: &str, f: impl FnOnce(&mut ServiceRecord)) -> Result<()> {
        self.update(|s| {
            if let Some(r) = s
                .environments
                .get_mut(env)
                .and_then(|e| e.services.get_mut(svc))
            {
                f(r);
            }
        })
    }

    pub(super) fn set_color(
        &self,
        env: &str,
        svc: &str,
        color: Color,
        rec: Option<ColorRecord>,
    ) -> Result<()> {
        self.edit(env, svc, |r| *r.color_mut(color) = rec)
    }

    pub(super) fn run_for(
        &self,
        env: &str,
        svc: &ServiceSpec,
        color: Color,
        image: &str,
        replicas: u32,
        secrets: Vec<SecretRef>,
    ) -> ServiceRun {
        let name = self.orch.workload(env, &svc.name, svc.strategy, color);
        let space = self.orch.env_space(env);
        let (networks, color_label) = match svc.strategy {
            Strategy::BlueGreen => (
                vec![
                    (self.orch.edge_space(), None),
                    (space, Some(svc.name.clone())),
                ],
                color,
            ),
            Strategy::InPlace => (vec![(space, Some(svc.name.clone()))], Color::Blue),
        };
        ServiceRun {
            name,
            image: image.to_string(),
            replicas,
            labels: labels(self.cluster(), env, Some(&svc.name), Some(color_label)),
            env: svc.env.clone(),
            networks,
            secrets,
            port: svc.port,
            health_path: svc.health.path.clone(),
        }
    }

    // ---- secrets -----------------------------------------------------------------------------

    /// Read the service's secret values on this machine, make sure the Docker secrets holding
    /// them exist (created from stdin), and return what the service mounts.
    pub(super) async fn secrets_for(&self, env: &str, svc: &ServiceSpec) -> Result<Vec<SecretRef>> {
        if svc.secrets.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.spec.secret_values(svc)?;
        let salt = self.salt()?;
        let mut refs = Vec::new();
        for (target, value) in values {
            use secrecy::ExposeSecret;
            let name = super::secret_name(&salt, env, &svc.name, &target, value.expose_secret());
            let mut l = labels(self.cluster(), env, Some(&svc.name), None);
            l.insert("cloudflow.secret".into(), target.clone());
            self.orch.ensure_secret(&name, &l, value).await?;
            refs.push(SecretRef { name, target });
        }
        refs.sort();
        Ok(refs)
    }

    /// Remove the service's secrets no service mounts any more (left by a rotation).
    pub(super) async fn prune_secrets(&self, env: &str, svc: &str) -> Result<()> {
        if self
            .spec
            .services
            .get(svc)
            .is_some_and(|s| s.secrets.is_empty())
            && self.state.snapshot().secret_salt.is_none()
        {
            return Ok(());
        }
        self.orch
            .remove_secrets(
                &[
                    ("cloudflow.cluster", self.cluster()),
                    ("cloudflow.env", env),
                    ("cloudflow.service", svc),
                ],
                true,
            )
            .await
    }

    /// The cluster's random salt for secret fingerprints, made on first use.
    fn salt(&self) -> Result<String> {
        if let Some(s) = self.state.snapshot().secret_salt {
            return Ok(s);
        }
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| Error::Other(format!("no randomness for the secret salt: {e}")))?;
        let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.update(|s| s.secret_salt.get_or_insert(fresh).clone())
    }

    // ---- proxy -------------------------------------------------------------------------------

    /// Start the reverse proxy (and the edge network) unless it runs; wait until it serves.
    pub async fn ensure_proxy(&self) -> Result<bool> {
        let image = self.spec.proxy.image.clone().ok_or_else(|| {
            Error::Usage("the spec has no proxy.image: services need a reverse proxy".into())
        })?;
        // A running proxy keeps its published port (moving it would drop traffic).
        let port = self
            .state
            .snapshot()
            .proxy
            .map(|p| p.port)
            .unwrap_or_else(|| self.spec.proxy.port.unwrap_or(80));
        self.orch
            .ensure_space(
                &self.orch.edge_space(),
                &cluster_labels(self.cluster()),
                &Default::default(),
            )
            .await?;
        let generation = self.update(|s| {
            let g = s.proxy.as_ref().map(|p| p.generation).unwrap_or(0) + 1;
            s.proxy = Some(ProxyRecord {
                image: image.clone(),
                port,
                generation: g,
            });
            g
        })?;
        let conf = self.config(generation, &[])?;
        self.ui.info(&format!("proxy: {image} on port {port}"));
        // A manager added since gets the live routes and the certificates they name first:
        // its proxy task starts from them.
        self.sync_proxy_files().await?;
        let created = self.orch.ensure_proxy(&image, port, &conf).await?;
        self.wait_service(
            &self.orch.proxy_workload(),
            self.orch.proxy_replicas(),
            Some(&image),
        )
        .await?;
        if !created {
            self.orch.apply_proxy_config(&conf, &image).await?;
        }
        self.proxy
            .wait_generation(generation, self.timeout)
            .await
            .map_err(Error::Other)?;
        Ok(created)
    }

    /// The proxy configuration for the routes the state implies now.
    pub(super) fn config(&self, generation: u64, probes: &[Probe]) -> Result<String> {
        let state = self.state.snapshot();
        let upstream = |env: &str, svc: &str, color: Color, preview: bool| {
            self.orch.upstream(env, svc, color, preview)
        };
        Ok(proxy_config(
            self.renderer,
            self.orch.proxy_template(),
            &upstream,
            &state,
            self.domain(),
            generation,
            probes,
            self.spec.proxy.https.as_ref().map(|h| h.port),
        )?)
    }

    /// Render the routes the state implies (plus `probes`), reload every proxy, and wait
    /// until each serves the new configuration. Returns how long the reload took to be live.
    pub(super) async fn publish(&self, probes: &[Probe]) -> Result<Duration> {
        if self.state.snapshot().proxy.is_none() {
            self.ensure_proxy().await?;
        }
        let generation = self.update(|s| {
            let p = s.proxy.as_mut().expect("proxy recorded");
            p.generation += 1;
            p.generation
        })?;
        let conf = self.config(generation, probes)?;
        self.orch
            .apply_routes(&super::service_routes(&self.state.snapshot()))
            .await?;
        let image = self
            .state
            .snapshot()
            .proxy
            .map(|p| p.image)
            .unwrap_or_default();
        let start = Instant::now();
        self.orch.apply_proxy_config(&conf, &image).await?;
        self.proxy
            .wait_generation(generation, Duration::from_secs(30))
            .await
            .map_err(Error::Other)?;
        Ok(start.elapsed())
    }

    /// Make `color` the live colour and publish the routes. When the proxy does not take the
    /// new configuration (nginx refused it, a manager failed), the state goes back to the
    /// colour that was live: the state and the proxies keep agreeing.
    ///
    /// The record says a switch is under way (`switch_from`) until the proxies serve the new
    /// colour: a command killed in between leaves that mark for [`Self::finish_interrupted`].
    pub(super) async fn switch_live(&self, env: &str, svc: &str, color: Color) -> Result<Duration> {
        let before = self.record(env, svc)?.live;
        self.edit(env, svc, |r| {
            r.live = color;
            r.switch_from = (before != color).then_some(before);
        })?;
        match self.publish(&[]).await {
            Ok(d) => {
                self.edit(env, svc, |r| r.switch_from = None)?;
                Ok(d)
            }
            Err(e) => {
                if before != color {
                    self.edit(env, svc, |r| {
                        r.live = before;
                        r.switch_from = None;
                    })?;
                    // Managers that did take the new routes get the old ones back (best
                    // effort: the error below is what the user needs to act on).
                    if let Err(again) = self.publish(&[]).await {
                        tracing::debug!(error = %again, "republishing the previous routes failed");
                    }
                }
                Err(e)
            }
        }
    }

    /// Finish what a killed command left half-way: a switch whose routes may not have reached
    /// every proxy. When the new colour still runs its replicas, the switch is published again
    /// (it passed its health gate before the switch began); otherwise traffic goes back to the
    /// colour it came from. Either way the record and the proxies agree again.
    pub async fn finish_interrupted(&self) -> Result<()> {
        type Pending = (String, String, Color, Color, Option<(u32, String)>);
        let pending: Vec<Pending> = self
            .state
            .snapshot()
            .environments
            .iter()
            .flat_map(|(env, e)| {
                e.services.iter().filter_map(move |(name, r)| {
                    let from = r.switch_from?;
                    let live = r.live().map(|c| (c.replicas, c.image.clone()));
                    Some((env.clone(), name.clone(), from, r.live, live))
                })
            })
            .collect();
        for (env, svc, from, to, live) in pending {
            let strategy = self.record(&env, &svc)?.strategy;
            let name = self.orch.workload(&env, &svc, strategy, to);
            let runs = match &live {
                Some((replicas, image)) if *replicas > 0 => self
                    .orch
                    .converge(&name, *replicas, Some(image), Duration::from_secs(60))
                    .await
                    .is_ok(),
                _ => false,
            };
            if let (true, Some((replicas, image))) = (runs, &live) {
                self.ui.info(&format!(
                    "{svc} in {env}: an earlier command was stopped while switching from {from} to {to}; {to} runs {replicas} replica(s) of {image}: finishing the switch"
                ));
            } else {
                self.ui.info(&format!(
                    "{svc} in {env}: an earlier command was stopped while switching from {from} to {to}, and {to} does not run: traffic goes back to {from}"
                ));
                self.edit(&env, &svc, |r| r.live = from)?;
            }
            self.publish(&[]).await?;
            self.edit(&env, &svc, |r| r.switch_from = None)?;
        }
        Ok(())
    }

    // ---- convergence and health --------------------------------------------------------------

    /// Wait until `service` runs exactly `replicas` replicas (of `image`, when given) and no
    /// removed one is still stopping. Returns the running replicas.
    pub async fn wait_service(
        &self,
        service: &str,
        replicas: u32,
        image: Option<&str>,
    ) -> Result<Vec<Task>> {
        self.orch
            .converge(service, replicas, image, self.timeout)
            .await
    }

    /// Probe every replica individually through its own route in the proxy.
    pub(super) async fn gate(
        &self,
        svc: &ServiceSpec,
        service: &str,
        tasks: &[Task],
    ) -> Result<()> {
        let Some(port) = svc.port else {
            return Ok(());
        };
        if self.orch.gate() == Gate::Readiness {
            // Converged already means every replica passed its readiness probe.
            return Ok(());
        }
        let probes: Vec<Probe> = tasks
            .iter()
            .map(|t| Probe {
                id: t.id.chars().take(25).collect(),
                address: t
                    .addresses
                    .get(&self.orch.edge_space())
                    .cloned()
                    .unwrap_or_default(),
                port,
                path: svc.health.path.clone(),
                replica: t.name.clone(),
                node: t.node.clone(),
            })
            .collect();
        if let Some(p) = probes.iter().find(|p| p.address.is_empty()) {
            return Err(Error::Other(format!(
                "{service}: replica {} on {} has no address on {}",
                p.replica,
                p.node,
                self.orch.edge_space()
            )));
        }
        self.ui.info(&format!(
            "{service}: health gate: GET {} on each of {} replica(s)",
            svc.health.path,
            probes.len()
        ));
        self.publish(&probes).await?;
        // A spec'd health path must answer 2xx/3xx; without one, `/` must answer below 500.
        let accept_below = if svc.health.path == "/" { 500 } else { 400 };
        let results = futures::future::join_all(
            probes
                .iter()
                .map(|p| self.proxy.probe(p, accept_below, svc.health.timeout)),
        )
        .await;
        let failures: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "{service}: health gate failed:\n{}",
                failures
                    .iter()
                    .map(|f| format!("  - {f}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )))
        }
    }
}

pub(super) fn cluster_labels(cluster: &str) -> std::collections::BTreeMap<String, String> {
    let mut l = std::collections::BTreeMap::new();
    l.insert("cloudflow.cluster".to_string(), cluster.to_string());
    l
}
