//! Blue-green deploy, switch, stop-old, rollback, scale and environments. Every change is
//! recorded in the state before it is made; every command returns once the orchestrator has
//! converged (tasks running and healthy, removed tasks gone) or says what it waited for.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::probe::ProxyClient;
use super::{
    DEFAULT_ENV, EDGE_NETWORK, Probe, Task, color_service, convergence, env_network, labels,
    proxy_config, resolve_replicas, service_name, valid_env_name,
};
use crate::commands::swarm::{PROXY_SERVICE, ServiceRun};
use crate::error::{Error, Result};
use crate::orchestrator::Orchestrator;
use crate::render::Renderer;
use crate::spec::{ServiceSpec, Spec, Strategy};
use crate::state::{
    ClusterState, Color, ColorRecord, EnvRecord, ProxyRecord, ServiceRecord, StateHandle,
};
use crate::ui::Ui;

/// What a command did, for text and JSON output.
pub struct Outcome {
    pub changed: bool,
    pub message: String,
    pub json: Value,
}

impl Outcome {
    fn new(changed: bool, message: String, json: Value) -> Self {
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

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl<'a> Deployer<'a> {
    fn cluster(&self) -> &str {
        &self.spec.name
    }

    fn domain(&self) -> &str {
        self.spec.proxy.domain.as_deref().unwrap_or("local")
    }

    fn service_spec(&self, name: &str) -> Result<&'a ServiceSpec> {
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

    fn record(&self, env: &str, svc: &str) -> Result<ServiceRecord> {
        self.state
            .snapshot()
            .environments
            .get(env)
            .and_then(|e| e.services.get(svc))
            .cloned()
            .ok_or_else(|| {
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

    fn update<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> Result<R> {
        Ok(self.state.update(f)?)
    }

    fn set_color(
        &self,
        env: &str,
        svc: &str,
        color: Color,
        rec: Option<ColorRecord>,
    ) -> Result<()> {
        self.update(|s| {
            if let Some(r) = s
                .environments
                .get_mut(env)
                .and_then(|e| e.services.get_mut(svc))
            {
                *r.color_mut(color) = rec;
            }
        })
    }

    fn set_live(&self, env: &str, svc: &str, color: Color) -> Result<()> {
        self.update(|s| {
            if let Some(r) = s
                .environments
                .get_mut(env)
                .and_then(|e| e.services.get_mut(svc))
            {
                r.live = color;
            }
        })
    }

    fn run_for(
        &self,
        env: &str,
        svc: &ServiceSpec,
        color: Color,
        image: &str,
        replicas: u32,
    ) -> ServiceRun {
        let (name, networks, color_label) = match svc.strategy {
            Strategy::BlueGreen => (
                color_service(env, &svc.name, color),
                vec![
                    (EDGE_NETWORK.to_string(), None),
                    (env_network(env), Some(svc.name.clone())),
                ],
                color,
            ),
            Strategy::InPlace => (
                super::inplace_service(env, &svc.name),
                vec![(env_network(env), Some(svc.name.clone()))],
                Color::Blue,
            ),
        };
        ServiceRun {
            name,
            image: image.to_string(),
            replicas,
            labels: labels(self.cluster(), env, Some(&svc.name), Some(color_label)),
            env: svc.env.clone(),
            networks,
        }
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
            .ensure_network(EDGE_NETWORK, &cluster_labels(self.cluster()))
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
        self.ui
            .info(&format!("proxy: {image} on port {port} of every manager"));
        let created = self.orch.ensure_proxy(&image, port, &conf).await?;
        let managers = self.proxy.endpoints.len() as u32;
        self.wait_service(PROXY_SERVICE, managers, Some(&image))
            .await?;
        if !created {
            self.orch.apply_proxy_config(&conf).await?;
        }
        self.proxy
            .wait_generation(generation, self.timeout)
            .await
            .map_err(Error::Other)?;
        Ok(created)
    }

    /// The proxy configuration for the routes the state implies now.
    fn config(&self, generation: u64, probes: &[Probe]) -> Result<String> {
        let state = self.state.snapshot();
        Ok(proxy_config(
            self.renderer,
            &state,
            self.domain(),
            generation,
            probes,
        )?)
    }

    /// Render the routes the state implies (plus `probes`), reload every proxy, and wait
    /// until each serves the new configuration. Returns how long the reload took to be live.
    async fn publish(&self, probes: &[Probe]) -> Result<Duration> {
        if self.state.snapshot().proxy.is_none() {
            self.ensure_proxy().await?;
        }
        let generation = self.update(|s| {
            let p = s.proxy.as_mut().expect("proxy recorded");
            p.generation += 1;
            p.generation
        })?;
        let conf = self.config(generation, probes)?;
        let start = Instant::now();
        self.orch.apply_proxy_config(&conf).await?;
        self.proxy
            .wait_generation(generation, Duration::from_secs(30))
            .await
            .map_err(Error::Other)?;
        Ok(start.elapsed())
    }

    // ---- convergence and health --------------------------------------------------------------

    /// Wait until `service` runs exactly `replicas` tasks (of `image`, when given) and no
    /// removed task is still stopping. Returns the running tasks.
    pub async fn wait_service(
        &self,
        service: &str,
        replicas: u32,
        image: Option<&str>,
    ) -> Result<Vec<Task>> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let tasks = self.orch.tasks(service).await?;
            let c = convergence(&tasks, replicas, image);
            if c.done {
                return Ok(tasks
                    .into_iter()
                    .filter(|t| t.desired == "running" && t.state == "running")
                    .collect());
            }
            let failed = tasks
                .iter()
                .filter(|t| ["failed", "rejected"].contains(&t.state.as_str()))
                .filter(|t| image.is_none_or(|i| t.image == i))
                .count() as u32;
            let failing = c.running == 0 && failed >= replicas + 3;
            if Instant::now() >= deadline || failing {
                return Err(Error::Other(format!(
                    "{service}: gave up {} waiting for {replicas} replica(s) running{}: {} running, {} still stopping{}",
                    if failing {
                        format!("after {failed} failed task(s)")
                    } else {
                        format!("after {}s", self.timeout.as_secs())
                    },
                    image.map(|i| format!(" {i}")).unwrap_or_default(),
                    c.running,
                    c.stopping,
                    c.last_error
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Probe every replica individually through its own route in the proxy.
    async fn gate(&self, svc: &ServiceSpec, service: &str, tasks: &[Task]) -> Result<()> {
        let Some(port) = svc.port else {
            return Ok(());
        };
        let probes: Vec<Probe> = tasks
            .iter()
            .map(|t| Probe {
                id: t.id.chars().take(25).collect(),
                address: t.addresses.get(EDGE_NETWORK).cloned().unwrap_or_default(),
                port,
                path: svc.health.path.clone(),
                replica: t.name.clone(),
                node: t.node.clone(),
            })
            .collect();
        if let Some(p) = probes.iter().find(|p| p.address.is_empty()) {
            return Err(Error::Other(format!(
                "{service}: replica {} on {} has no address on {EDGE_NETWORK}",
                p.replica, p.node
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

    // ---- environments ------------------------------------------------------------------------

    fn env_record(&self, env: &str) -> Option<EnvRecord> {
        self.state.snapshot().environments.get(env).cloned()
    }

    /// Make sure `env` exists: `default` is created on first use; others need `env create`.
    async fn require_env(&self, env: &str) -> Result<()> {
        if self.env_record(env).is_none() {
            if env != DEFAULT_ENV {
                return Err(Error::Usage(format!(
                    "no environment {env:?}: create it with `cloudflow env create {env} --ttl 1h`"
                )));
            }
            self.update(|s| {
                s.environments.insert(
                    env.to_string(),
                    EnvRecord {
                        created: rfc3339(now()),
                        expires: None,
                        services: Default::default(),
                    },
                )
            })?;
        }
        self.orch
            .ensure_network(&env_network(env), &labels(self.cluster(), env, None, None))
            .await
    }

    pub async fn env_create(&self, env: &str, ttl: Option<Duration>) -> Result<Outcome> {
        if !valid_env_name(env) {
            return Err(Error::Usage(format!(
                "invalid environment name {env:?}: 1-{} lowercase letters, digits and '-', starting with a letter",
                super::MAX_ENV_NAME
            )));
        }
        let created_at = now();
        let expires =
            ttl.map(|t| rfc3339(created_at + chrono::Duration::from_std(t).unwrap_or_default()));
        if let Some(e) = self.env_record(env) {
            self.orch
                .ensure_network(&env_network(env), &labels(self.cluster(), env, None, None))
                .await?;
            return Ok(Outcome::new(
                false,
                format!(
                    "environment {env} already exists (created {}, expires {}): no changes",
                    e.created,
                    e.expires.as_deref().unwrap_or("never")
                ),
                json!({"name": env, "created": e.created, "expires": e.expires, "changed": false}),
            ));
        }
        self.update(|s| {
            s.environments.insert(
                env.to_string(),
                EnvRecord {
                    created: rfc3339(created_at),
                    expires: expires.clone(),
                    services: Default::default(),
                },
            )
        })?;
        self.orch
            .ensure_network(&env_network(env), &labels(self.cluster(), env, None, None))
            .await?;
        Ok(Outcome::new(
            true,
            format!(
                "environment {env} created (network {}, expires {}); deploy into it with `cloudflow deploy SERVICE --env {env}`",
                env_network(env),
                expires.as_deref().unwrap_or("never")
            ),
            json!({"name": env, "created": rfc3339(created_at), "expires": expires, "changed": true}),
        ))
    }

    /// Remove an environment: routes first, then its services (waiting for their tasks to
    /// let go of the network), then its network, then its record.
    pub async fn env_destroy(&self, env: &str) -> Result<Outcome> {
        if env == DEFAULT_ENV {
            return Err(Error::Usage(
                "the default environment cannot be destroyed (`down` removes everything)".into(),
            ));
        }
        let filter = [
            ("cloudflow.cluster", self.cluster()),
            ("cloudflow.env", env),
        ];
        let known = self.env_record(env).is_some();
        let services = self.orch.services(&filter).await?;
        if !known && services.is_empty() {
            return Err(Error::Other(format!(
                "no environment {env:?} (see `cloudflow env list`)"
            )));
        }
        self.ui.info(&format!("env {env}: removing routes"));
        self.update(|s| {
            if let Some(e) = s.environments.get_mut(env) {
                e.services.clear();
            }
        })?;
        if self.state.snapshot().proxy.is_some() {
            self.publish(&[]).await?;
        }
        self.ui.info(&format!(
            "env {env}: removing {} service(s)",
            services.len()
        ));
        self.orch.remove_services(&services).await?;
        for s in &services {
            self.wait_service(s, 0, None).await?;
        }
        self.orch.remove_networks(&filter).await?;
        self.update(|s| s.environments.remove(env))?;
        Ok(Outcome::new(
            true,
            format!(
                "environment {env} destroyed: {} service(s) and its network removed",
                services.len()
            ),
            json!({"name": env, "removed_services": services, "changed": true}),
        ))
    }

    /// Destroy every environment past its TTL.
    pub async fn env_gc(&self) -> Result<Outcome> {
        let t = now();
        let expired: Vec<String> = self
            .state
            .snapshot()
            .environments
            .iter()
            .filter(|(_, e)| {
                e.expires
                    .as_deref()
                    .and_then(|x| chrono::DateTime::parse_from_rfc3339(x).ok())
                    .is_some_and(|x| x < t)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for env in &expired {
            self.ui.info(&format!("env gc: {env} is past its TTL"));
            self.env_destroy(env).await?;
        }
        let message = if expired.is_empty() {
            "env gc: no environment is past its TTL: no changes".to_string()
        } else {
            format!("env gc: destroyed {}", expired.join(", "))
        };
        Ok(Outcome::new(
            !expired.is_empty(),
            message,
            json!({"destroyed": expired, "changed": !expired.is_empty()}),
        ))
    }

    // ---- deploy ------------------------------------------------------------------------------

    pub async fn deploy(&self, env: &str, svc_name: &str, opts: &DeployOpts) -> Result<Outcome> {
        let svc = self.service_spec(svc_name)?;
        self.require_env(env).await?;
        if let Some(expired) = self
            .env_record(env)
            .and_then(|e| e.expires)
            .filter(|x| chrono::DateTime::parse_from_rfc3339(x).is_ok_and(|t| t < now()))
        {
            self.ui.info(&format!(
                "warning: environment {env} expired at {expired}; the next `env gc` removes it"
            ));
        }
        let image = opts.image.clone().unwrap_or_else(|| svc.image.clone());
        if svc.strategy == Strategy::BlueGreen && self.state.snapshot().proxy.is_none() {
            // Routed services join the proxy's edge network: it must exist first.
            self.ensure_proxy().await?;
        }
        match svc.strategy {
            Strategy::BlueGreen => self.deploy_blue_green(env, svc, &image, opts).await,
            Strategy::InPlace => self.deploy_in_place(env, svc, &image, opts).await,
        }
    }

    async fn deploy_blue_green(
        &self,
        env: &str,
        svc: &ServiceSpec,
        image: &str,
        opts: &DeployOpts,
    ) -> Result<Outcome> {
        let existing = self
            .env_record(env)
            .and_then(|e| e.services.get(&svc.name).cloned())
            .filter(|r| r.live().is_some());
        let (color, replicas, prev, note) = match &existing {
            None => {
                let (n, note) = self.size(svc, opts.scale.as_deref(), svc.replicas)?;
                (Color::Blue, n, None, note)
            }
            Some(r) => {
                let live = r.live().expect("filtered");
                if live.image == image && !opts.force {
                    return Ok(Outcome::new(
                        false,
                        format!(
                            "{} in {env}: {image} is already live ({}, {} replica(s)): no changes (--force redeploys)",
                            svc.name, r.live, live.replicas
                        ),
                        json!({"service": svc.name, "env": env, "color": r.live, "image": image, "changed": false}),
                    ));
                }
                let (n, note) = self.size(svc, opts.scale.as_deref(), live.replicas)?;
                (r.live.other(), n, r.color(r.live.other()).cloned(), note)
            }
        };
        if let Some(n) = &note {
            self.ui.info(n);
        }
        let first = existing.is_none();
        let name = color_service(env, &svc.name, color);
        // Record before creating: a crash leaves a record `down`/`env destroy` can act on.
        self.update(|s| {
            let e = s.environments.get_mut(env).expect("env exists");
            let r = e
                .services
                .entry(svc.name.clone())
                .or_insert_with(|| ServiceRecord {
                    strategy: svc.strategy,
                    port: svc.port,
                    health_path: svc.health.path.clone(),
                    live: color,
                    blue: None,
                    green: None,
                });
            r.port = svc.port;
            r.health_path = svc.health.path.clone();
            *r.color_mut(color) = Some(ColorRecord {
                image: image.to_string(),
                replicas,
            });
        })?;
        self.ui.info(&format!(
            "{} in {env}: starting {color} with {image} ({replicas} replica(s))",
            svc.name
        ));
        let started = Instant::now();
        let result = async {
            self.orch
                .remove_services(std::slice::from_ref(&name))
                .await?;
            self.wait_service(&name, 0, None).await?;
            self.orch
                .create_service(&self.run_for(env, svc, color, image, replicas))
                .await?;
            let tasks = self.wait_service(&name, replicas, Some(image)).await?;
            self.gate(svc, &name, &tasks).await
        }
        .await;
        if let Err(e) = result {
            self.ui.info(&format!(
                "{} in {env}: {color} failed; putting things back",
                svc.name
            ));
            let restore = self.restore(env, svc, color, prev, first).await;
            let kept = match &existing {
                Some(r) => format!(
                    "traffic stays on {} ({})",
                    r.live,
                    r.live().map(|c| c.image.as_str()).unwrap_or("")
                ),
                None => "nothing was routed".to_string(),
            };
            return Err(Error::Other(format!(
                "deploy of {image} to {} in {env} failed; {kept}{}\n{e}",
                svc.name,
                match restore {
                    Ok(()) => String::new(),
                    Err(r) => format!(" (restoring the {color} colour also failed: {r})"),
                }
            )));
        }
        let healthy_after = started.elapsed();
        let host = format!("{}-{env}.{}", svc.name, self.domain());
        let preview = format!("{}-{env}-preview.{}", svc.name, self.domain());
        if first || !opts.no_switch {
            self.set_live(env, &svc.name, color)?;
            let switch = self.publish(&[]).await?;
            let message = if first {
                format!(
                    "{} in {env}: {image} is live ({color}, {replicas} replica(s)) at {host}",
                    svc.name
                )
            } else {
                format!(
                    "{} in {env}: switched to {color} ({image}, {replicas} replica(s)) at {host}; the old colour stays at {preview} until `cloudflow stop-old {}`",
                    svc.name, svc.name
                )
            };
            return Ok(Outcome::new(
                true,
                message,
                json!({"service": svc.name, "env": env, "color": color, "image": image, "replicas": replicas,
                       "switched": !first, "host": host, "healthy_seconds": healthy_after.as_secs_f64(),
                       "switch_seconds": switch.as_secs_f64(), "note": note, "changed": true}),
            ));
        }
        self.publish(&[]).await?;
        Ok(Outcome::new(
            true,
            format!(
                "{} in {env}: {color} runs {image} ({replicas} replica(s)) at {preview}; `cloudflow switch {}` sends traffic to it",
                svc.name, svc.name
            ),
            json!({"service": svc.name, "env": env, "color": color, "image": image, "replicas": replicas,
                   "switched": false, "preview": preview, "note": note, "changed": true}),
        ))
    }

    /// Undo a failed deploy: remove the new colour and bring back what that slot had.
    async fn restore(
        &self,
        env: &str,
        svc: &ServiceSpec,
        color: Color,
        prev: Option<ColorRecord>,
        first: bool,
    ) -> Result<()> {
        let name = color_service(env, &svc.name, color);
        self.orch
            .remove_services(std::slice::from_ref(&name))
            .await?;
        if first {
            self.update(|s| {
                if let Some(e) = s.environments.get_mut(env) {
                    e.services.remove(&svc.name);
                }
            })?;
        } else {
            self.set_color(env, &svc.name, color, prev.clone())?;
            if let Some(p) = &prev {
                self.wait_service(&name, 0, None).await?;
                self.orch
                    .create_service(&self.run_for(env, svc, color, &p.image, p.replicas))
                    .await?;
                self.wait_service(&name, p.replicas, Some(&p.image)).await?;
            }
        }
        self.publish(&[]).await?;
        Ok(())
    }

    async fn deploy_in_place(
        &self,
        env: &str,
        svc: &ServiceSpec,
        image: &str,
        opts: &DeployOpts,
    ) -> Result<Outcome> {
        let name = super::inplace_service(env, &svc.name);
        let existing = self
            .env_record(env)
            .and_then(|e| e.services.get(&svc.name).cloned())
            .and_then(|r| r.blue);
        let current = existing
            .as_ref()
            .map(|c| c.replicas)
            .unwrap_or(svc.replicas);
        let (replicas, note) = self.size(svc, opts.scale.as_deref(), current)?;
        if let Some(c) = &existing
            && c.image == image
            && c.replicas == replicas
            && !opts.force
        {
            return Ok(Outcome::new(
                false,
                format!(
                    "{} in {env}: {image} already runs ({replicas} replica(s)): no changes",
                    svc.name
                ),
                json!({"service": svc.name, "env": env, "image": image, "changed": false}),
            ));
        }
        self.update(|s| {
            let e = s.environments.get_mut(env).expect("env exists");
            e.services.insert(
                svc.name.clone(),
                ServiceRecord {
                    strategy: Strategy::InPlace,
                    port: svc.port,
                    health_path: svc.health.path.clone(),
                    live: Color::Blue,
                    blue: Some(ColorRecord {
                        image: image.to_string(),
                        replicas,
                    }),
                    green: None,
                },
            );
        })?;
        let run = self.run_for(env, svc, Color::Blue, image, replicas);
        let exists = !self.orch.tasks(&name).await?.is_empty()
            || self
                .orch
                .services(&[
                    ("cloudflow.cluster", self.cluster()),
                    ("cloudflow.env", env),
                ])
                .await?
                .contains(&name);
        self.ui.info(&format!(
            "{} in {env}: {} {image} in place ({replicas} replica(s))",
            svc.name,
            if exists { "updating to" } else { "starting" }
        ));
        if exists {
            let old_env: Vec<String> = svc.env.keys().cloned().collect();
            self.orch.update_service(&run, &old_env).await?;
        } else {
            self.orch.create_service(&run).await?;
        }
        self.wait_service(&name, replicas, Some(image)).await?;
        Ok(Outcome::new(
            true,
            format!(
                "{} in {env}: {image} runs in place ({replicas} replica(s))",
                svc.name
            ),
            json!({"service": svc.name, "env": env, "image": image, "replicas": replicas, "note": note, "changed": true}),
        ))
    }

    fn size(
        &self,
        svc: &ServiceSpec,
        size: Option<&str>,
        current: u32,
    ) -> Result<(u32, Option<String>)> {
        match size {
            None => Ok((current, None)),
            Some(s) => resolve_replicas(s, current, svc.min_replicas, svc.max_replicas)
                .map_err(Error::Usage),
        }
    }

    // ---- switch, stop-old, rollback, scale ---------------------------------------------------

    /// Send traffic to the colour waiting at the preview host (after gating it again).
    pub async fn switch(&self, env: &str, svc_name: &str) -> Result<Outcome> {
        let svc = self.service_spec(svc_name)?;
        let r = self.record(env, svc_name)?;
        let to = r.live.other();
        let Some(other) = r.preview().cloned() else {
            return Err(Error::Other(format!(
                "{svc_name} in {env}: nothing waits at the preview host to switch to (deploy with --no-switch first, or `rollback`)"
            )));
        };
        self.activate(env, svc, to, &other).await?;
        let switch = Instant::now();
        self.set_live(env, svc_name, to)?;
        self.publish(&[]).await?;
        Ok(Outcome::new(
            true,
            format!(
                "{svc_name} in {env}: switched to {to} ({}); {} stays at the preview host",
                other.image, r.live
            ),
            json!({"service": svc_name, "env": env, "color": to, "image": other.image, "replicas": other.replicas,
                   "switch_seconds": switch.elapsed().as_secs_f64(), "changed": true}),
        ))
    }

    /// Bring `color` to `rec.replicas` running and healthy tasks.
    async fn activate(
        &self,
        env: &str,
        svc: &ServiceSpec,
        color: Color,
        rec: &ColorRecord,
    ) -> Result<()> {
        let name = color_service(env, &svc.name, color);
        self.orch.scale_service(&name, rec.replicas).await?;
        let tasks = self
            .wait_service(&name, rec.replicas, Some(&rec.image))
            .await?;
        if let Err(e) = self.gate(svc, &name, &tasks).await {
            self.publish(&[]).await.ok();
            return Err(e);
        }
        Ok(())
    }

    /// Scale the old colour to 0 (kept for `rollback`); the preview host answers 503.
    pub async fn stop_old(&self, env: &str, svc_name: &str) -> Result<Outcome> {
        let r = self.record(env, svc_name)?;
        let old = r.live.other();
        let Some(rec) = r.preview().cloned() else {
            return Ok(Outcome::new(
                false,
                format!(
                    "{svc_name} in {env}: only the live colour ({}) runs: no changes",
                    r.live
                ),
                json!({"service": svc_name, "env": env, "changed": false}),
            ));
        };
        self.set_color(
            env,
            svc_name,
            old,
            Some(ColorRecord {
                image: rec.image.clone(),
                replicas: 0,
            }),
        )?;
        self.publish(&[]).await?;
        let name = color_service(env, svc_name, old);
        self.orch.scale_service(&name, 0).await?;
        self.wait_service(&name, 0, None).await?;
        Ok(Outcome::new(
            true,
            format!(
                "{svc_name} in {env}: {old} ({}) stopped ({} replica(s) removed); `cloudflow rollback {svc_name}` brings it back",
                rec.image, rec.replicas
            ),
            json!({"service": svc_name, "env": env, "stopped": old, "image": rec.image, "changed": true}),
        ))
    }

    /// Bring the other colour back at the live replica count, gate it, and switch to it.
    pub async fn rollback(&self, env: &str, svc_name: &str) -> Result<Outcome> {
        let svc = self.service_spec(svc_name)?;
        let r = self.record(env, svc_name)?;
        let to = r.live.other();
        let live = r.live().cloned().expect("deployed");
        let Some(target) = r.color(to).cloned() else {
            return Err(Error::Other(format!(
                "{svc_name} in {env}: nothing to roll back to: only {} has ever been deployed",
                r.live
            )));
        };
        let target = ColorRecord {
            image: target.image,
            replicas: live.replicas,
        };
        self.ui.info(&format!(
            "{svc_name} in {env}: bringing {to} ({}) back at {} replica(s)",
            target.image, target.replicas
        ));
        self.set_color(env, svc_name, to, Some(target.clone()))?;
        self.activate(env, svc, to, &target).await?;
        self.set_live(env, svc_name, to)?;
        let switch = self.publish(&[]).await?;
        Ok(Outcome::new(
            true,
            format!(
                "{svc_name} in {env}: rolled back to {to} ({}); {} ({}) stays at the preview host until `cloudflow stop-old {svc_name}`",
                target.image, r.live, live.image
            ),
            json!({"service": svc_name, "env": env, "color": to, "image": target.image, "replicas": target.replicas,
                   "switch_seconds": switch.as_secs_f64(), "changed": true}),
        ))
    }

    /// Scale the live colour: relative to its desired replicas now, clamped by the spec.
    pub async fn scale(&self, env: &str, svc_name: &str, size: &str) -> Result<Outcome> {
        let r = self.record(env, svc_name)?;
        let live = r.live().cloned().expect("deployed");
        let (min, max) = self
            .spec
            .services
            .get(svc_name)
            .map(|s| (s.min_replicas, s.max_replicas))
            .unwrap_or((0, u32::MAX));
        let (n, note) = resolve_replicas(size, live.replicas, min, max).map_err(Error::Usage)?;
        if let Some(note) = &note {
            self.ui.info(note);
        }
        let from = live.replicas;
        if n == from {
            return Ok(Outcome::new(
                false,
                format!(
                    "{svc_name} in {env}: {n} replica(s) already: no changes{}",
                    note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
                ),
                json!({"service": svc_name, "env": env, "replicas": n, "note": note, "changed": false}),
            ));
        }
        let name = service_name(env, svc_name, r.strategy, r.live);
        self.set_color(
            env,
            svc_name,
            r.live,
            Some(ColorRecord {
                image: live.image.clone(),
                replicas: n,
            }),
        )?;
        self.orch.scale_service(&name, n).await?;
        let tasks = self.wait_service(&name, n, Some(&live.image)).await?;
        if n > from
            && let Some(svc) = self.spec.services.get(svc_name)
            && r.strategy == Strategy::BlueGreen
        {
            self.gate(svc, &name, &tasks).await?;
            self.publish(&[]).await?;
        }
        Ok(Outcome::new(
            true,
            format!(
                "{svc_name} in {env}: {} {from} → {n} replica(s){}",
                r.live,
                note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            json!({"service": svc_name, "env": env, "color": r.live, "from": from, "replicas": n, "note": note, "changed": true}),
        ))
    }

    /// Everything deployed goes: services, networks, proxy (bare-metal `down`).
    pub async fn teardown(&self) -> Result<()> {
        let filter = [("cloudflow.cluster", self.cluster())];
        let services = self.orch.services(&filter).await?;
        self.orch.remove_services(&services).await?;
        self.orch.remove_proxy().await?;
        for s in &services {
            self.wait_service(s, 0, None).await?;
        }
        self.orch.remove_networks(&filter).await?;
        self.update(|s| {
            s.environments.clear();
            s.proxy = None;
        })?;
        Ok(())
    }
}

fn cluster_labels(cluster: &str) -> std::collections::BTreeMap<String, String> {
    let mut l = std::collections::BTreeMap::new();
    l.insert("cloudflow.cluster".to_string(), cluster.to_string());
    l
}
