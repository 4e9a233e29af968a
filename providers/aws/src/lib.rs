//! AWS provider: EC2 instances that bootstrap themselves with cloud-init, reconciled by tags.
//!
//! Every resource carries `cloudflow:cluster=<name>` (instances also `cloudflow:role`) and is
//! named in the journal before the call that creates it. What exists is always read back by
//! tag — never from memory — so a second `up` creates nothing and a crash leaks nothing.
//! Describe/poll calls filter by tag and batch ids: their count does not grow per instance.

mod errors;
mod network;
pub mod reconcile;

use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification,
};
use base64::Engine;
use cloudflow_provider_api::{
    DestroyReport, Journal, Machine, Progress, Provider, ProviderAction, ProviderError, Resource,
    Role, SshEndpoint,
};

pub use errors::field_error;
use errors::{api, journal_err};
pub use network::NetworkChoice;

pub const TAG_CLUSTER: &str = "cloudflow:cluster";
pub const TAG_ROLE: &str = "cloudflow:role";

/// What the spec asks of AWS.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub cluster: String,
    pub region: String,
    pub instance_type: String,
    /// An AMI id (`ami-…`) or a name filter resolved at plan time (newest match).
    pub image: String,
    pub managers: u32,
    pub workers: u32,
    /// OpenSSH public key line, imported as the cluster's key pair (or why it could not be
    /// read: only importing the key pair needs it, so `down` works without the key file).
    pub public_key: Result<String, String>,
    pub network: NetworkChoice,
    pub allowed_cidrs: Vec<String>,
    pub proxy_port: u16,
    /// Rendered cloud-init user-data (plain text; base64-encoded here).
    pub user_data: String,
    /// The SSH user of the image (`admin` on Debian AMIs, `ubuntu` on Ubuntu).
    pub ssh_user: String,
    /// Reach instances at their private addresses (cloudflow runs inside the VPC) rather
    /// than their public ones.
    pub ssh_private: bool,
    /// How long to wait for instances to run or terminate.
    pub wait: Duration,
}

impl AwsConfig {
    pub fn key_name(&self) -> String {
        format!("cloudflow-{}", self.cluster)
    }

    fn wanted(&self, role: Role) -> u32 {
        match role {
            Role::Manager => self.managers,
            Role::Worker => self.workers,
        }
    }
}

pub struct Aws {
    cfg: AwsConfig,
    client: Client,
    region_checked: tokio::sync::OnceCell<()>,
}

pub(crate) fn tags(
    cluster: &str,
    kind: ResourceType,
    role: Option<Role>,
    name: &str,
) -> TagSpecification {
    let mut spec = TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(TAG_CLUSTER).value(cluster).build())
        .tags(Tag::builder().key("Name").value(name).build());
    if let Some(role) = role {
        spec = spec.tags(Tag::builder().key(TAG_ROLE).value(role.to_string()).build());
    }
    spec.build()
}

pub(crate) fn cluster_filter(cluster: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{TAG_CLUSTER}"))
        .values(cluster)
        .build()
}

fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

impl Aws {
    /// Build a client from the standard chain (env, profile, SSO, IMDS) for the spec's region.
    /// `AWS_ENDPOINT_URL` is honoured by the SDK itself (tests, private endpoints).
    pub async fn connect(cfg: AwsConfig) -> Result<Self, ProviderError> {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()))
            .load()
            .await;
        Ok(Aws {
            client: Client::new(&shared),
            cfg,
            region_checked: tokio::sync::OnceCell::new(),
        })
    }

    pub fn config(&self) -> &AwsConfig {
        &self.cfg
    }

    /// Live instances (pending or running) of the cluster: one call, filtered by tag.
    async fn instances(&self) -> Result<Vec<Instance>, ProviderError> {
        self.check_region().await?;
        let state = Filter::builder()
            .name("instance-state-name")
            .values("pending")
            .values("running")
            .build();
        let mut pages = self
            .client
            .describe_instances()
            .filters(cluster_filter(&self.cfg.cluster))
            .filters(state)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api("DescribeInstances", e))?;
            out.extend(
                page.reservations()
                    .iter()
                    .flat_map(|r| r.instances().iter().cloned()),
            );
        }
        out.sort_by_key(|i| {
            (
                i.launch_time().map(|t| t.secs()),
                i.instance_id().map(str::to_string),
            )
        });
        Ok(out)
    }

    fn machine(&self, i: &Instance) -> Machine {
        let role = match tag(i, TAG_ROLE) {
            Some("manager") => Role::Manager,
            _ => Role::Worker,
        };
        let private = i.private_ip_address().map(str::to_string);
        let address = if self.cfg.ssh_private {
            private.clone()
        } else {
            i.public_ip_address()
                .map(str::to_string)
                .or(private.clone())
        }
        .unwrap_or_default();
        Machine {
            name: i.instance_id().unwrap_or_default().to_string(),
            id: i.instance_id().unwrap_or_default().to_string(),
            role,
            ssh: SshEndpoint {
                address,
                port: 22,
                user: self.cfg.ssh_user.clone(),
            },
            running: i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running),
            private_address: private,
        }
    }

    /// Check the region, instance type and image before creating anything; each failure names
    /// its spec field. Returns the AMI id (a name filter resolves to the newest match).
    /// Once per command, before anything else: the region must exist. Names the spec field.
    async fn check_region(&self) -> Result<(), ProviderError> {
        self.region_checked
            .get_or_try_init(|| async {
                // The first call is region-scoped: a failure that is not about credentials or the
                // network is the region's.
                let regions = match self
                    .client
                    .describe_regions()
                    .all_regions(true)
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        let err = api("DescribeRegions", e);
                        let msg = err.to_string();
                        if msg.contains("credentials") || msg.contains("cannot reach") {
                            return Err(err);
                        }
                        return Err(field_error(
                            "provider.aws.region",
                            format!("{} is not usable: {msg}", self.cfg.region),
                        ));
                    }
                };
                if !regions
                    .regions()
                    .iter()
                    .any(|r| r.region_name() == Some(self.cfg.region.as_str()))
                {
                    return Err(field_error(
                        "provider.aws.region",
                        format!("{} is not an EC2 region", self.cfg.region),
                    ));
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    async fn preflight(&self) -> Result<String, ProviderError> {
        self.check_region().await?;
        let types = self
            .client
            .describe_instance_types()
            .instance_types(InstanceType::from(self.cfg.instance_type.as_str()))
            .send()
            .await;
        let known = match types {
            Ok(out) => !out.instance_types().is_empty(),
            Err(e) if errors::code(&e).is_some_and(|c| c.starts_with("InvalidInstanceType")) => {
                false
            }
            Err(e) => return Err(api("DescribeInstanceTypes", e)),
        };
        if !known {
            return Err(field_error(
                "provider.aws.instance_type",
                format!(
                    "{} does not exist in {}",
                    self.cfg.instance_type, self.cfg.region
                ),
            ));
        }
        self.resolve_image().await
    }

    async fn resolve_image(&self) -> Result<String, ProviderError> {
        let image = &self.cfg.image;
        let req = self.client.describe_images();
        let req = if image.starts_with("ami-") {
            req.image_ids(image)
        } else {
            req.filters(Filter::builder().name("name").values(image).build())
        };
        let images = match req.send().await {
            Ok(out) => out.images().to_vec(),
            Err(e) if errors::code(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => Vec::new(),
            Err(e) => return Err(api("DescribeImages", e)),
        };
        images
            .iter()
            .max_by_key(|i| i.creation_date().unwrap_or_default().to_string())
            .and_then(|i| i.image_id().map(str::to_string))
            .ok_or_else(|| {
                field_error(
                    "provider.aws.image",
                    format!("no image {image} in {}", self.cfg.region),
                )
            })
    }

    async fn ensure_key_pair(&self, journal: &dyn Journal) -> Result<(), ProviderError> {
        let name = self.cfg.key_name();
        let found = self
            .client
            .describe_key_pairs()
            .filters(cluster_filter(&self.cfg.cluster))
            .send()
            .await
            .map_err(|e| api("DescribeKeyPairs", e))?;
        if found
            .key_pairs()
            .iter()
            .any(|k| k.key_name() == Some(name.as_str()))
        {
            return Ok(());
        }
        let public_key = self
            .cfg
            .public_key
            .as_ref()
            .map_err(|e| ProviderError::Spec {
                field: "provider.aws.ssh_key".into(),
                message: e.clone(),
            })?;
        let res = Resource::new("key-pair", &name);
        journal.intend(&res).map_err(|e| journal_err(&res, e))?;
        self.client
            .import_key_pair()
            .key_name(&name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(
                public_key.trim().as_bytes(),
            ))
            .tag_specifications(tags(&self.cfg.cluster, ResourceType::KeyPair, None, &name))
            .send()
            .await
            .map_err(|e| api("ImportKeyPair", e))?;
        journal.created(&res)
    }

    /// One RunInstances per role for what is missing; waits until all of them run.
    async fn run_role(
        &self,
        role: Role,
        count: u32,
        image: &str,
        net: &network::Network,
        journal: &dyn Journal,
    ) -> Result<Vec<String>, ProviderError> {
        // A token per batch: named in the journal first, so a crash after the call is traceable.
        let token = client_token(&self.cfg.cluster, role, &chrono_like_now());
        let res = Resource::new("instances", format!("{role}:{count}:{token}"));
        journal.intend(&res).map_err(|e| journal_err(&res, e))?;
        let name = format!("cf-{}-{role}", self.cfg.cluster);
        let out = self
            .client
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::from(self.cfg.instance_type.as_str()))
            .min_count(count as i32)
            .max_count(count as i32)
            .key_name(self.cfg.key_name())
            .subnet_id(&net.subnet)
            .security_group_ids(&net.security_group)
            .user_data(base64::engine::general_purpose::STANDARD.encode(&self.cfg.user_data))
            .client_token(&token)
            .tag_specifications(tags(
                &self.cfg.cluster,
                ResourceType::Instance,
                Some(role),
                &name,
            ))
            .send()
            .await
            .map_err(|e| api("RunInstances", e))?;
        crate::fault::pause_if("after-run-instances");
        journal.created(&res)?;
        Ok(out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect())
    }

    async fn wait_running(&self, ids: Vec<String>) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .wait_until_instance_running()
            .set_instance_ids(Some(ids))
            .wait(self.cfg.wait)
            .await
            .map_err(|e| ProviderError::Api {
                provider: "aws",
                action: "wait for instances to run".into(),
                message: e.to_string(),
            })?;
        Ok(())
    }

    async fn terminate(
        &self,
        ids: Vec<String>,
        journal: &dyn Journal,
    ) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .terminate_instances()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| api("TerminateInstances", e))?;
        self.client
            .wait_until_instance_terminated()
            .set_instance_ids(Some(ids.clone()))
            .wait(self.cfg.wait)
            .await
            .map_err(|e| ProviderError::Api {
                provider: "aws",
                action: "wait for instances to terminate".into(),
                message: e.to_string(),
            })?;
        for id in ids {
            journal.removed(&Resource::new("instance", id))?;
        }
        Ok(())
    }
}

/// Seconds and nanos since the epoch: unique enough for a client token per batch.
fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}{:09}", d.as_secs(), d.subsec_nanos())
}

/// EC2 takes client tokens of at most 64 characters: the cluster name (up to 40) is cut to
/// leave room for the role and the time.
pub fn client_token(cluster: &str, role: Role, now: &str) -> String {
    let keep = 64 - (now.len() + role.to_string().len() + 2);
    let cluster: String = cluster.chars().take(keep.min(cluster.len())).collect();
    let token = format!("{cluster}-{role}-{now}");
    token.chars().take(64).collect()
}

/// Pure: what `create` would do given the live instances.
pub fn plan_instances(cfg: &AwsConfig, existing: &[Machine]) -> Vec<ProviderAction> {
    let mut actions = Vec::new();
    if existing.is_empty() {
        for (kind, name) in network::planned(cfg) {
            actions.push(ProviderAction::Create {
                resource: Resource::new(kind, name),
                role: None,
            });
        }
    }
    for role in [Role::Manager, Role::Worker] {
        let have: Vec<&Machine> = existing.iter().filter(|m| m.role == role).collect();
        let want = cfg.wanted(role) as usize;
        for i in have.len()..want {
            actions.push(ProviderAction::Create {
                resource: Resource::new("instance", format!("{role} #{}", i + 1)),
                role: Some(role),
            });
        }
        // Newest first beyond the wanted count.
        for m in have.iter().rev().take(have.len().saturating_sub(want)) {
            actions.push(ProviderAction::Destroy {
                resource: Resource::new("instance", &m.name),
            });
        }
    }
    actions
}

#[async_trait::async_trait]
impl Provider for Aws {
    fn kind(&self) -> &'static str {
        "aws"
    }

    fn owns_machines(&self) -> bool {
        true
    }

    async fn list(&self) -> Result<Vec<Machine>, ProviderError> {
        Ok(self
            .instances()
            .await?
            .iter()
            .map(|i| self.machine(i))
            .collect())
    }

    fn plan(&self, existing: &[Machine]) -> Vec<ProviderAction> {
        plan_instances(&self.cfg, existing)
    }

    async fn drift(&self) -> Result<Vec<ProviderAction>, ProviderError> {
        self.check_region().await?;
        let seen = reconcile::inspect(&self.client, &self.cfg).await?;
        Ok(reconcile::repairs(&self.cfg, &seen)
            .iter()
            .map(|r| r.action(&self.cfg.cluster))
            .collect())
    }

    fn boots_with_cloud_init(&self) -> bool {
        true
    }

    async fn create(
        &self,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        progress.step("aws: checking region, instance type and image");
        let image = self.preflight().await?;
        self.ensure_key_pair(journal).await?;
        let net = network::ensure(&self.client, &self.cfg, journal, progress).await?;
        let existing = self.list().await?;
        let mut started = Vec::new();
        let mut surplus = Vec::new();
        for role in [Role::Manager, Role::Worker] {
            let have: Vec<&Machine> = existing.iter().filter(|m| m.role == role).collect();
            let want = self.cfg.wanted(role) as usize;
            if have.len() < want {
                let n = (want - have.len()) as u32;
                progress.step(&format!(
                    "aws: starting {n} {role} instance(s) ({}, {image})",
                    self.cfg.instance_type
                ));
                started.extend(self.run_role(role, n, &image, &net, journal).await?);
            } else {
                surplus.extend(
                    have.iter()
                        .rev()
                        .take(have.len() - want)
                        .map(|m| m.name.clone()),
                );
            }
        }
        if !surplus.is_empty() {
            progress.step(&format!(
                "aws: terminating {} surplus instance(s)",
                surplus.len()
            ));
            self.terminate(surplus, journal).await?;
        }
        let mut pending: Vec<String> = self
            .list()
            .await?
            .into_iter()
            .filter(|m| !m.running)
            .map(|m| m.id)
            .chain(started)
            .collect();
        pending.sort();
        pending.dedup();
        if !pending.is_empty() {
            progress.step(&format!(
                "aws: waiting for {} instance(s) to run",
                pending.len()
            ));
            self.wait_running(pending).await?;
        }
        self.list().await
    }

    async fn destroy(
        &self,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<DestroyReport, ProviderError> {
        let ids: Vec<String> = self
            .instances()
            .await?
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        progress.step(&format!("aws: terminating {} instance(s)", ids.len()));
        self.terminate(ids.clone(), journal).await?;
        let mut report = DestroyReport {
            removed: ids
                .into_iter()
                .map(|i| Resource::new("instance", i))
                .collect(),
            left: vec![],
        };
        network::destroy(&self.client, &self.cfg, journal, progress, &mut report).await;
        // Verify by tag: say what is left and why rather than forget it.
        network::leftovers(&self.client, &self.cfg, &mut report).await?;
        if !self.instances().await?.is_empty() {
            report.left.push((
                Resource::new("instance", "*"),
                "instances still running after termination".into(),
            ));
        }
        Ok(report)
    }

    async fn scale_workers(
        &self,
        count: u32,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        let scaled = Aws {
            cfg: AwsConfig {
                workers: count,
                ..self.cfg.clone()
            },
            client: self.client.clone(),
            region_checked: self.region_checked.clone(),
        };
        scaled.create(journal, progress).await
    }
}

mod fault {
    /// Test hook: `CLOUDFLOW_FAULT_PAUSE=<point>` sleeps at that point so a test can kill the
    /// process there (crash-recovery tests). Inert unless the variable names the point.
    pub fn pause_if(point: &str) {
        if std::env::var("CLOUDFLOW_FAULT_PAUSE").is_ok_and(|p| p == point) {
            eprintln!("fault: paused at {point}");
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

#[cfg(test)]
mod tests;
