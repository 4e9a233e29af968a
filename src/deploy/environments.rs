//! Environments: create (record + network), destroy (routes, services, network, record),
//! and gc (every environment past its TTL).

use std::time::Duration;

use serde_json::json;

use super::flow::{Deployer, Outcome, now, rfc3339};
use super::{DEFAULT_ENV, labels, valid_env_name};
use crate::error::{Error, Result};
use crate::state::EnvRecord;

impl Deployer<'_> {
    // ---- environments ------------------------------------------------------------------------

    pub(super) fn env_record(&self, env: &str) -> Option<EnvRecord> {
        self.state.snapshot().environments.get(env).cloned()
    }

    /// Make sure `env` exists: `default` is created on first use; others need `env create`.
    pub(super) async fn require_env(&self, env: &str) -> Result<()> {
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
        self.ensure_env_space(env).await
    }

    /// The environment's space (Swarm: network; Kubernetes: namespace), labelled, with its
    /// expiry as an annotation.
    async fn ensure_env_space(&self, env: &str) -> Result<()> {
        let mut annotations = std::collections::BTreeMap::new();
        if let Some(x) = self.env_record(env).and_then(|e| e.expires) {
            annotations.insert("cloudflow.expires".to_string(), x);
        }
        self.orch
            .ensure_space(
                &self.orch.env_space(env),
                &labels(self.cluster(), env, None, None),
                &annotations,
            )
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
            self.ensure_env_space(env).await?;
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
        if let Err(e) = self.ensure_env_space(env).await {
            // Nothing was made (e.g. the namespace is someone else's): forget the record.
            self.update(|s| s.environments.remove(env))?;
            return Err(e);
        }
        Ok(Outcome::new(
            true,
            format!(
                "environment {env} created ({}, expires {}); deploy into it with `cloudflow deploy SERVICE --env {env}`",
                self.orch.env_space(env),
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
        self.orch.remove_spaces(&filter).await?;
        self.orch.remove_secrets(&filter, false).await?;
        self.update(|s| s.environments.remove(env))?;
        Ok(Outcome::new(
            true,
            format!(
                "environment {env} destroyed: {} service(s) and {} removed",
                services.len(),
                self.orch.env_space(env)
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
}
