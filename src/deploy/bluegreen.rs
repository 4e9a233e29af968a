//! Blue-green: deploy (gate, switch, restore on failure), in-place updates, switch,
//! stop-old, rollback, scale, and the teardown `down` runs on bare metal.

use std::time::Instant;

use serde_json::json;

use super::flow::{DeployOpts, Deployer, Outcome, now};
use super::resolve_replicas;
use crate::error::{Error, Result};
use crate::spec::{ServiceSpec, Strategy};
use crate::state::{Color, ColorRecord, ServiceRecord};

impl Deployer<'_> {
    // ---- deploy ------------------------------------------------------------------------------

    pub async fn deploy(&self, env: &str, svc_name: &str, opts: &DeployOpts) -> Result<Outcome> {
        let svc = self.service_spec(svc_name)?;
        // Every secret readable before anything changes (an unset variable is a spec error).
        self.spec.secret_values(svc)?;
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

    pub(super) async fn deploy_blue_green(
        &self,
        env: &str,
        svc: &ServiceSpec,
        image: &str,
        opts: &DeployOpts,
    ) -> Result<Outcome> {
        let existing = self.deployed(env, &svc.name).filter(|r| r.live().is_some());
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
        let name = self.orch.workload(env, &svc.name, svc.strategy, color);
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
                    switch_from: None,
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
            let secrets = self.secrets_for(env, svc).await?;
            self.orch
                .create_service(&self.run_for(env, svc, color, image, replicas, secrets))
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
        self.prune_secrets(env, &svc.name).await?;
        let host = format!("{}-{env}.{}", svc.name, self.domain());
        let preview = format!("{}-{env}-preview.{}", svc.name, self.domain());
        if first || !opts.no_switch {
            self.ui.info(&format!(
                "{} in {env}: {color} healthy ({replicas} replica(s)); switching traffic to it",
                svc.name
            ));
            let switch = self.switch_live(env, &svc.name, color).await?;
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
    pub(super) async fn restore(
        &self,
        env: &str,
        svc: &ServiceSpec,
        color: Color,
        prev: Option<ColorRecord>,
        first: bool,
    ) -> Result<()> {
        let name = self.orch.workload(env, &svc.name, svc.strategy, color);
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
                let secrets = self.secrets_for(env, svc).await?;
                self.orch
                    .create_service(&self.run_for(env, svc, color, &p.image, p.replicas, secrets))
                    .await?;
                self.wait_service(&name, p.replicas, Some(&p.image)).await?;
            }
        }
        self.publish(&[]).await?;
        Ok(())
    }

    pub(super) async fn deploy_in_place(
        &self,
        env: &str,
        svc: &ServiceSpec,
        image: &str,
        opts: &DeployOpts,
    ) -> Result<Outcome> {
        let name = self
            .orch
            .workload(env, &svc.name, Strategy::InPlace, Color::Blue);
        let existing = self.deployed(env, &svc.name).and_then(|r| r.blue);
        let current = existing
            .as_ref()
            .map(|c| c.replicas)
            .unwrap_or(svc.replicas);
        let (replicas, note) = self.size(svc, opts.scale.as_deref(), current)?;
        // What runs, not what the spec said last time: variables and secrets removed from
        // the spec go, a changed secret value is a change.
        let live = self.orch.inspect_service(&name).await?;
        let secrets = self.secrets_for(env, svc).await?;
        if let Some(c) = &existing
            && c.image == image
            && c.replicas == replicas
            && live
                .as_ref()
                .is_some_and(|l| l.env == svc.env && l.secrets == secrets)
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
                    switch_from: None,
                },
            );
        })?;
        let run = self.run_for(env, svc, Color::Blue, image, replicas, secrets);
        let exists = live.is_some();
        self.ui.info(&format!(
            "{} in {env}: {} {image} in place ({replicas} replica(s))",
            svc.name,
            if exists { "updating to" } else { "starting" }
        ));
        if let Some(live) = &live {
            self.orch.update_service(&run, live).await?;
        } else {
            self.orch.create_service(&run).await?;
        }
        self.wait_service(&name, replicas, Some(image)).await?;
        self.prune_secrets(env, &svc.name).await?;
        Ok(Outcome::new(
            true,
            format!(
                "{} in {env}: {image} runs in place ({replicas} replica(s))",
                svc.name
            ),
            json!({"service": svc.name, "env": env, "image": image, "replicas": replicas, "note": note, "changed": true}),
        ))
    }

    pub(super) fn size(
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
        self.switch_live(env, svc_name, to).await?;
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
    pub(super) async fn activate(
        &self,
        env: &str,
        svc: &ServiceSpec,
        color: Color,
        rec: &ColorRecord,
    ) -> Result<()> {
        let name = self.orch.workload(env, &svc.name, svc.strategy, color);
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
        let name = self.orch.workload(env, svc_name, Strategy::BlueGreen, old);
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
        let before = r.color(to).cloned();
        self.set_color(env, svc_name, to, Some(target.clone()))?;
        if let Err(e) = self.activate(env, svc, to, &target).await {
            // A failed gate puts things back as they were: the colour at its old count.
            self.set_color(env, svc_name, to, before.clone())?;
            if let Some(b) = &before {
                let name = self.orch.workload(env, svc_name, Strategy::BlueGreen, to);
                self.orch.scale_service(&name, b.replicas).await?;
                self.wait_service(&name, b.replicas, None).await?;
            }
            // The preview host says again what it said before (e.g. "stopped").
            self.publish(&[]).await?;
            return Err(e);
        }
        let switch = self.switch_live(env, svc_name, to).await?;
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
        let name = self.orch.workload(env, svc_name, r.strategy, r.live);
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
        let routed = self
            .spec
            .services
            .get(svc_name)
            .filter(|_| r.strategy == Strategy::BlueGreen);
        let settled = async {
            let tasks = self.wait_service(&name, n, Some(&live.image)).await?;
            if n > from
                && let Some(svc) = routed
            {
                self.gate(svc, &name, &tasks).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = settled {
            if n < from {
                return Err(e);
            }
            // New replicas that never ran or failed their probe: things go back as they were,
            // the previous replica count in the orchestrator and in the state.
            self.ui.info(&format!(
                "{svc_name} in {env}: new replica(s) did not become healthy; back to {from}"
            ));
            self.orch.scale_service(&name, from).await?;
            self.set_color(env, svc_name, r.live, Some(live.clone()))?;
            // Swarm picks which tasks go: check the ones it kept, and say so if one of them
            // is not healthy either.
            let kept = self.wait_service(&name, from, None).await?;
            let kept_health = match routed {
                Some(svc) => match self.gate(svc, &name, &kept).await {
                    Ok(()) => String::new(),
                    Err(k) => format!(" (and not all of them answer healthy now: {k})"),
                },
                None => String::new(),
            };
            self.publish(&[]).await?;
            return Err(Error::Other(format!(
                "{svc_name} in {env}: scaling {from} → {n} failed; {from} replica(s) kept{kept_health}\n{e}"
            )));
        }
        if n > from && r.strategy == Strategy::BlueGreen {
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
        self.orch.remove_spaces(&filter).await?;
        self.orch.remove_secrets(&filter, false).await?;
        self.update(|s| {
            s.environments.clear();
            s.proxy = None;
        })?;
        Ok(())
    }
}
