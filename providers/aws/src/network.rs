//! The cluster's network: VPC, subnet, internet gateway, route table (when `vpc: auto`) and
//! its security group. Created in dependency order, deleted in the reverse one — each
//! deletion finished before the next starts (moto does not enforce the order; AWS does).

use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, ResourceType};
use backon::{ConstantBuilder, Retryable};
use cloudflow_provider_api::{DestroyReport, Journal, Progress, ProviderError, Resource};

use super::errors::{api, journal_err};
use super::{AwsConfig, cluster_filter, reconcile, tags};

/// Where instances go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkChoice {
    /// cloudflow makes a VPC, subnet, gateway and route for the cluster.
    Auto,
    /// An existing VPC: its first subnet is used.
    Vpc(String),
    /// An existing subnet.
    Subnet(String),
}

pub struct Network {
    pub subnet: String,
    pub security_group: String,
}

const VPC_CIDR: &str = "10.77.0.0/16";
const SUBNET_CIDR: &str = "10.77.1.0/24";

/// Resource kinds in deletion order: each only once nothing depends on it any more.
pub const DELETE_ORDER: [&str; 6] = [
    "security-group",
    "key-pair",
    "route-table",
    "internet-gateway",
    "subnet",
    "vpc",
];

/// Pure: what `ensure` creates on a first run (for `plan`).
pub fn planned(cfg: &AwsConfig) -> Vec<(&'static str, String)> {
    let name = format!("cloudflow-{}", cfg.cluster);
    let mut out = vec![("key-pair", name.clone())];
    if cfg.network == NetworkChoice::Auto {
        out.extend([
            ("vpc", format!("{name} ({VPC_CIDR})")),
            ("subnet", format!("{name} ({SUBNET_CIDR})")),
            ("internet-gateway", name.clone()),
            ("route-table", name.clone()),
        ]);
    }
    out.push(("security-group", name));
    out
}

async fn record<F, Fut, T>(
    journal: &dyn Journal,
    kind: &str,
    name: &str,
    create: F,
) -> Result<T, ProviderError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let res = Resource::new(kind, name);
    journal.intend(&res).map_err(|e| journal_err(&res, e))?;
    let out = create().await?;
    journal.created(&res)?;
    Ok(out)
}

pub async fn ensure(
    client: &Client,
    cfg: &AwsConfig,
    journal: &dyn Journal,
    progress: &dyn Progress,
) -> Result<Network, ProviderError> {
    let c = &cfg.cluster;
    let name = format!("cloudflow-{c}");
    let (vpc, subnet) = match &cfg.network {
        NetworkChoice::Auto => {
            let found = client
                .describe_vpcs()
                .filters(cluster_filter(c))
                .send()
                .await
                .map_err(|e| api("DescribeVpcs", e))?;
            let vpc = match found.vpcs().first().and_then(|v| v.vpc_id()) {
                Some(id) => id.to_string(),
                None => {
                    progress.step("aws: creating VPC");
                    record(journal, "vpc", &name, || async {
                        let out = client
                            .create_vpc()
                            .cidr_block(VPC_CIDR)
                            .tag_specifications(tags(c, ResourceType::Vpc, None, &name))
                            .send()
                            .await
                            .map_err(|e| api("CreateVpc", e))?;
                        Ok(out
                            .vpc()
                            .and_then(|v| v.vpc_id())
                            .unwrap_or_default()
                            .to_string())
                    })
                    .await?
                }
            };
            let found = client
                .describe_subnets()
                .filters(cluster_filter(c))
                .send()
                .await
                .map_err(|e| api("DescribeSubnets", e))?;
            let subnet = match found.subnets().first().and_then(|s| s.subnet_id()) {
                Some(id) => id.to_string(),
                None => {
                    record(journal, "subnet", &name, || async {
                        let out = client
                            .create_subnet()
                            .vpc_id(&vpc)
                            .cidr_block(SUBNET_CIDR)
                            .tag_specifications(tags(c, ResourceType::Subnet, None, &name))
                            .send()
                            .await
                            .map_err(|e| api("CreateSubnet", e))?;
                        Ok(out
                            .subnet()
                            .and_then(|s| s.subnet_id())
                            .unwrap_or_default()
                            .to_string())
                    })
                    .await?
                }
            };
            let found = client
                .describe_internet_gateways()
                .filters(cluster_filter(c))
                .send()
                .await
                .map_err(|e| api("DescribeInternetGateways", e))?;
            if found.internet_gateways().is_empty() {
                record(journal, "internet-gateway", &name, || async {
                    let out = client
                        .create_internet_gateway()
                        .tag_specifications(tags(c, ResourceType::InternetGateway, None, &name))
                        .send()
                        .await
                        .map_err(|e| api("CreateInternetGateway", e))?;
                    Ok(out
                        .internet_gateway()
                        .and_then(|g| g.internet_gateway_id())
                        .unwrap_or_default()
                        .to_string())
                })
                .await?;
            }
            let found = client
                .describe_route_tables()
                .filters(cluster_filter(c))
                .send()
                .await
                .map_err(|e| api("DescribeRouteTables", e))?;
            if found.route_tables().is_empty() {
                record(journal, "route-table", &name, || async {
                    let out = client
                        .create_route_table()
                        .vpc_id(&vpc)
                        .tag_specifications(tags(c, ResourceType::RouteTable, None, &name))
                        .send()
                        .await
                        .map_err(|e| api("CreateRouteTable", e))?;
                    Ok(out
                        .route_table()
                        .and_then(|r| r.route_table_id())
                        .unwrap_or_default()
                        .to_string())
                })
                .await?;
            }
            (vpc, subnet)
        }
        NetworkChoice::Vpc(vpc) => {
            let found = client
                .describe_subnets()
                .filters(Filter::builder().name("vpc-id").values(vpc).build())
                .send()
                .await
                .map_err(|e| api("DescribeSubnets", e))?;
            let subnet = found
                .subnets()
                .first()
                .and_then(|s| s.subnet_id())
                .ok_or_else(|| {
                    super::field_error(
                        "provider.aws.vpc",
                        format!("{vpc} has no subnet (or does not exist)"),
                    )
                })?;
            (vpc.clone(), subnet.to_string())
        }
        NetworkChoice::Subnet(subnet) => {
            let found = client.describe_subnets().subnet_ids(subnet).send().await;
            let vpc = found
                .ok()
                .and_then(|o| {
                    o.subnets()
                        .first()
                        .and_then(|s| s.vpc_id())
                        .map(str::to_string)
                })
                .ok_or_else(|| {
                    super::field_error(
                        "provider.aws.vpc",
                        format!("subnet {subnet} does not exist"),
                    )
                })?;
            (vpc, subnet.clone())
        }
    };
    let security_group = ensure_security_group(client, cfg, &vpc, journal).await?;
    // What exists is only half the job: finish what a crash left half-made (the gateway's
    // attachment, the route and its association, public IPs on launch) and bring the
    // security group's rules to what the spec says now.
    let fixes = reconcile::repairs(cfg, &reconcile::inspect(client, cfg).await?);
    if !fixes.is_empty() {
        progress.step(&format!(
            "aws: {} network change(s): {}",
            fixes.len(),
            fixes
                .iter()
                .map(|f| f.action(c).to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ));
        reconcile::apply(client, &fixes).await?;
    }
    Ok(Network {
        subnet,
        security_group,
    })
}

/// The cluster's security group (its rules are reconciled by `reconcile`).
async fn ensure_security_group(
    client: &Client,
    cfg: &AwsConfig,
    vpc: &str,
    journal: &dyn Journal,
) -> Result<String, ProviderError> {
    let c = &cfg.cluster;
    let name = format!("cloudflow-{c}");
    let found = client
        .describe_security_groups()
        .filters(cluster_filter(c))
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .send()
        .await
        .map_err(|e| api("DescribeSecurityGroups", e))?;
    if let Some(id) = found.security_groups().first().and_then(|g| g.group_id()) {
        return Ok(id.to_string());
    }
    let id = record(journal, "security-group", &name, || async {
        let out = client
            .create_security_group()
            .group_name(&name)
            .description(format!("cloudflow cluster {c}"))
            .vpc_id(vpc)
            .tag_specifications(tags(c, ResourceType::SecurityGroup, None, &name))
            .send()
            .await
            .map_err(|e| api("CreateSecurityGroup", e))?;
        Ok(out.group_id().unwrap_or_default().to_string())
    })
    .await?;
    Ok(id)
}

/// Delete every tagged network resource in [`DELETE_ORDER`]; failures go into the report.
pub async fn destroy(
    client: &Client,
    cfg: &AwsConfig,
    journal: &dyn Journal,
    progress: &dyn Progress,
    report: &mut DestroyReport,
) {
    let c = &cfg.cluster;
    for kind in DELETE_ORDER {
        progress.step(&format!("aws: deleting {kind}"));
        let result = match kind {
            "security-group" => delete_security_groups(client, c).await,
            "key-pair" => delete_key_pairs(client, c).await,
            "route-table" => delete_route_tables(client, c).await,
            "internet-gateway" => delete_gateways(client, c).await,
            "subnet" => delete_subnets(client, c).await,
            _ => delete_vpcs(client, c).await,
        };
        match result {
            Ok(ids) => {
                for id in ids {
                    let _ = journal.removed(&Resource::new(kind, format!("cloudflow-{c}")));
                    report.removed.push(Resource::new(kind, id));
                }
            }
            Err(e) => report
                .left
                .push((Resource::new(kind, format!("cloudflow-{c}")), e.to_string())),
        }
    }
}

/// A security group can stay "in use" for a little while after its instances terminate.
fn retry_in_use() -> ConstantBuilder {
    ConstantBuilder::default()
        .with_delay(Duration::from_secs(5))
        .with_max_times(24)
}

fn in_use(e: &ProviderError) -> bool {
    e.to_string().contains("DependencyViolation")
}

async fn delete_security_groups(client: &Client, c: &str) -> Result<Vec<String>, ProviderError> {
    let found = client
        .describe_security_groups()
        .filters(cluster_filter(c))
        .send()
        .await
        .map_err(|e| api("DescribeSecurityGroups", e))?;
    let mut ids = Vec::new();
    for g in found.security_groups() {
        let id = g.group_id().unwrap_or_default().to_string();
        (|| async {
            client
                .delete_security_group()
                .group_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| api("DeleteSecurityGroup", e))
        })
        .retry(retry_in_use())
        .when(in_use)
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

async fn delete_key_pairs(client: &Client, c: &str) -> Result<Vec<String>, ProviderError> {
    let found = client
        .describe_key_pairs()
        .filters(cluster_filter(c))
        .send()
        .await
        .map_err(|e| api("DescribeKeyPairs", e))?;
    let mut ids = Vec::new();
    for k in found.key_pairs() {
        let name = k.key_name().unwrap_or_default().to_string();
        client
            .delete_key_pair()
            .key_name(&name)
            .send()
            .await
            .map_err(|e| api("DeleteKeyPair", e))?;
        ids.push(name);
    }
    Ok(ids)
}

async fn delete_route_tables(client: &Client, c: &str) -> Result<Vec<String>, ProviderError> {
    let found = client
        .describe_route_tables()
        .filters(cluster_filter(c))
        .send()
        .await
        .map_err(|e| api("DescribeRouteTables", e))?;
    let mut ids = Vec::new();
    for rt in found.route_tables() {
        for a in rt.associations().iter().filter(|a| a.main() != Some(true)) {
            if let Some(assoc) = a.route_table_association_id() {
                client
                    .disassociate_route_table()
                    .association_id(assoc)
                    .send()
                    .await
                    .map_err(|e| api("DisassociateRouteTable", e))?;
            }
        }
        let id = rt.route_table_id().unwrap_or_default().to_string();
        client
            .delete_route_table()
            .route_table_id(&id)
            .send()
            .await
            .map_err(|e| api("DeleteRouteTable", e))?;
        ids.push(id);
    }
    Ok(ids)
}

async fn delete_gateways(client: &Client, c: &str) -> Result<Vec<String>, ProviderError> {
    let found = client
        .describe_internet_gateways()
        .filters(cluster_filter(c))
        .send()
        .await
        .map_err(|e| api("DescribeInternetGateways", e))?;
    let mut ids = Vec::new();
    for g in found.internet_gateways() {
        let id = g.internet_gateway_id().unwrap_or_default().to_string();
        for a in g.attachments() {
            if let Some(vpc) = a.vpc_id() {
                client
                    .detach_internet_gateway()
                    .internet_gateway_id(&id)
                    .vpc_id(vpc)
                    .send()
                    .await
                    .map_err(|e| api("DetachInternetGateway", e))?;
            }
        }
        client
            .delete_internet_gateway()
            .internet_gateway_id(&id)
            .send()
            .await
            .map_err(|e| api("DeleteInternetGateway", e))?;
        ids.push(id);
    }
    Ok(ids)
}

async fn delete_subnets(client: &Client, c: &str) -> Result<Vec<String>, ProviderError> {
    let found = client
        .describe_subnets()
        .filters(cluster_filter(c))
        .send()
        .await
        .map_err(|e| api("DescribeSubnets", e))?;
    let mut ids = Vec::new();
    for s in found.subnets() {
        let id = s.subnet_id().unwrap_or_default().to_string();
        client
            .delete_subnet()
            .subnet_id(&id)
            .send()
            .await
            .map_err(|e| api("DeleteSubnet", e))?;
        ids.push(id);
    }
    Ok(ids)
}

async fn delete_vpcs(client: &Client, c: &str) -> Result<Vec<String>, ProviderError> {
    let found = client
        .describe_vpcs()
        .filters(cluster_filter(c))
        .send()
        .await
        .map_err(|e| api("DescribeVpcs", e))?;
    let mut ids = Vec::new();
    for v in found.vpcs() {
        let id = v.vpc_id().unwrap_or_default().to_string();
        client
            .delete_vpc()
            .vpc_id(&id)
            .send()
            .await
            .map_err(|e| api("DeleteVpc", e))?;
        ids.push(id);
    }
    Ok(ids)
}

/// Anything still tagged with the cluster after `destroy`.
pub async fn leftovers(
    client: &Client,
    cfg: &AwsConfig,
    report: &mut DestroyReport,
) -> Result<(), ProviderError> {
    let c = &cfg.cluster;
    let f = || cluster_filter(c);
    let mut left: Vec<(&str, String)> = Vec::new();
    let sgs = client
        .describe_security_groups()
        .filters(f())
        .send()
        .await
        .map_err(|e| api("DescribeSecurityGroups", e))?;
    left.extend(sgs.security_groups().iter().map(|g| {
        (
            "security-group",
            g.group_id().unwrap_or_default().to_string(),
        )
    }));
    let keys = client
        .describe_key_pairs()
        .filters(f())
        .send()
        .await
        .map_err(|e| api("DescribeKeyPairs", e))?;
    left.extend(
        keys.key_pairs()
            .iter()
            .map(|k| ("key-pair", k.key_name().unwrap_or_default().to_string())),
    );
    let subnets = client
        .describe_subnets()
        .filters(f())
        .send()
        .await
        .map_err(|e| api("DescribeSubnets", e))?;
    left.extend(
        subnets
            .subnets()
            .iter()
            .map(|s| ("subnet", s.subnet_id().unwrap_or_default().to_string())),
    );
    let vpcs = client
        .describe_vpcs()
        .filters(f())
        .send()
        .await
        .map_err(|e| api("DescribeVpcs", e))?;
    left.extend(
        vpcs.vpcs()
            .iter()
            .map(|v| ("vpc", v.vpc_id().unwrap_or_default().to_string())),
    );
    for (kind, id) in left {
        if !report.left.iter().any(|(r, _)| r.kind == kind) {
            report.left.push((
                Resource::new(kind, id),
                "still tagged with the cluster after down".into(),
            ));
        }
    }
    Ok(())
}
