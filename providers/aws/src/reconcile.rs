//! Reconcile, do not trust: what the cluster's network resources look like now (read back by
//! tag), what the spec wants of them, and the repairs in between — a route or association a
//! crash never made, a subnet without public IPs on launch, a gateway left detached, a
//! security-group rule removed behind cloudflow's back or no longer wanted.
//!
//! [`repairs`] is pure over what [`inspect`] read; `plan` shows the repairs as updates and
//! `up` applies them with [`apply`].

use std::collections::BTreeSet;
use std::fmt;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{AttributeBooleanValue, IpPermission, IpRange, UserIdGroupPair};
use cloudflow_provider_api::{ProviderAction, ProviderError, Resource};

use super::errors::api;
use super::network::NetworkChoice;
use super::{AwsConfig, cluster_filter};

/// Where an ingress rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cidr(String),
    /// Members of a security group (the cluster's own: its instances).
    Group(String),
}

/// One ingress rule, normalized (one port range, one source).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub proto: String,
    pub from: i32,
    pub to: i32,
    pub source: Source,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = if self.from == self.to {
            self.from.to_string()
        } else {
            format!("{}-{}", self.from, self.to)
        };
        match &self.source {
            Source::Cidr(c) => write!(f, "{} {ports} from {c}", self.proto),
            Source::Group(_) => write!(f, "{} {ports} from the cluster's members", self.proto),
        }
    }
}

/// SSH and the proxy port from `allowed_cidrs`; Swarm's ports (2377/tcp, 7946/tcp+udp,
/// 4789/udp) from members only.
pub fn wanted_rules(cfg: &AwsConfig, group: &str) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for cidr in &cfg.allowed_cidrs {
        for port in [22, i32::from(cfg.proxy_port)] {
            out.insert(Rule {
                proto: "tcp".into(),
                from: port,
                to: port,
                source: Source::Cidr(cidr.clone()),
            });
        }
    }
    for (proto, port) in [("tcp", 2377), ("tcp", 7946), ("udp", 7946), ("udp", 4789)] {
        out.insert(Rule {
            proto: proto.into(),
            from: port,
            to: port,
            source: Source::Group(group.to_string()),
        });
    }
    out
}

/// The rules a security group has, one per source.
pub fn rules_of(perms: &[IpPermission]) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for p in perms {
        let proto = p.ip_protocol().unwrap_or("-1").to_string();
        let (from, to) = (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1));
        for r in p.ip_ranges() {
            if let Some(c) = r.cidr_ip() {
                out.insert(Rule {
                    proto: proto.clone(),
                    from,
                    to,
                    source: Source::Cidr(c.to_string()),
                });
            }
        }
        for g in p.user_id_group_pairs() {
            if let Some(id) = g.group_id() {
                out.insert(Rule {
                    proto: proto.clone(),
                    from,
                    to,
                    source: Source::Group(id.to_string()),
                });
            }
        }
    }
    out
}

fn permission(rule: &Rule) -> IpPermission {
    let b = IpPermission::builder()
        .ip_protocol(&rule.proto)
        .from_port(rule.from)
        .to_port(rule.to);
    match &rule.source {
        Source::Cidr(c) => b.ip_ranges(IpRange::builder().cidr_ip(c).build()),
        Source::Group(g) => b.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).build()),
    }
    .build()
}

/// What [`inspect`] found of the cluster's network (ids where the resource exists).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub vpc: Option<String>,
    /// The subnet cloudflow made, and whether it gives instances a public address.
    pub subnet: Option<(String, bool)>,
    /// The gateway, and whether it is attached to the VPC.
    pub gateway: Option<(String, bool)>,
    /// The route table, whether it has the default route, and whether it is associated with
    /// the subnet.
    pub route_table: Option<(String, bool, bool)>,
    /// The security group and its ingress rules.
    pub group: Option<(String, BTreeSet<Rule>)>,
}

/// One repair `up` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    PublicIpOnLaunch {
        subnet: String,
    },
    AttachGateway {
        gateway: String,
        vpc: String,
    },
    DefaultRoute {
        route_table: String,
        gateway: String,
    },
    Associate {
        route_table: String,
        subnet: String,
    },
    Allow {
        group: String,
        rule: Rule,
    },
    Revoke {
        group: String,
        rule: Rule,
    },
}

impl Repair {
    /// As `plan` shows it.
    pub fn action(&self, cluster: &str) -> ProviderAction {
        let name = format!("cloudflow-{cluster}");
        let (kind, change) = match self {
            Repair::PublicIpOnLaunch { .. } => (
                "subnet",
                "give instances a public address on launch".to_string(),
            ),
            Repair::AttachGateway { .. } => ("internet-gateway", "attach it to the VPC".into()),
            Repair::DefaultRoute { .. } => (
                "route-table",
                "add the default route through the gateway".into(),
            ),
            Repair::Associate { .. } => ("route-table", "associate it with the subnet".into()),
            Repair::Allow { rule, .. } => ("security-group", format!("allow {rule}")),
            Repair::Revoke { rule, .. } => ("security-group", format!("revoke {rule}")),
        };
        ProviderAction::Update {
            resource: Resource::new(kind, name),
            change,
        }
    }
}

/// Pure: the repairs that bring what was seen to what `cfg` wants. Only resources cloudflow
/// made (tagged with the cluster) are touched; a `vpc:`/subnet id the user brought is theirs,
/// except for the security group, which is always cloudflow's own.
pub fn repairs(cfg: &AwsConfig, seen: &Seen) -> Vec<Repair> {
    let mut out = Vec::new();
    if cfg.network == NetworkChoice::Auto {
        if let Some((subnet, false)) = &seen.subnet {
            out.push(Repair::PublicIpOnLaunch {
                subnet: subnet.clone(),
            });
        }
        if let (Some((gateway, false)), Some(vpc)) = (&seen.gateway, &seen.vpc) {
            out.push(Repair::AttachGateway {
                gateway: gateway.clone(),
                vpc: vpc.clone(),
            });
        }
        if let Some((rt, has_route, associated)) = &seen.route_table {
            if let (false, Some((gateway, _))) = (has_route, &seen.gateway) {
                out.push(Repair::DefaultRoute {
                    route_table: rt.clone(),
                    gateway: gateway.clone(),
                });
            }
            if let (false, Some((subnet, _))) = (associated, &seen.subnet) {
                out.push(Repair::Associate {
                    route_table: rt.clone(),
                    subnet: subnet.clone(),
                });
            }
        }
    }
    if let Some((group, have)) = &seen.group {
        let want = wanted_rules(cfg, group);
        for rule in want.difference(have) {
            out.push(Repair::Allow {
                group: group.clone(),
                rule: rule.clone(),
            });
        }
        for rule in have.difference(&want) {
            out.push(Repair::Revoke {
                group: group.clone(),
                rule: rule.clone(),
            });
        }
    }
    out
}

/// Read the cluster's network resources by tag.
pub async fn inspect(client: &Client, cfg: &AwsConfig) -> Result<Seen, ProviderError> {
    let c = &cfg.cluster;
    let mut seen = Seen::default();
    if cfg.network == NetworkChoice::Auto {
        let vpcs = client
            .describe_vpcs()
            .filters(cluster_filter(c))
            .send()
            .await
            .map_err(|e| api("DescribeVpcs", e))?;
        seen.vpc = vpcs
            .vpcs()
            .first()
            .and_then(|v| v.vpc_id())
            .map(str::to_string);
        let subnets = client
            .describe_subnets()
            .filters(cluster_filter(c))
            .send()
            .await
            .map_err(|e| api("DescribeSubnets", e))?;
        seen.subnet = subnets.subnets().first().map(|s| {
            (
                s.subnet_id().unwrap_or_default().to_string(),
                s.map_public_ip_on_launch().unwrap_or(false),
            )
        });
        let gateways = client
            .describe_internet_gateways()
            .filters(cluster_filter(c))
            .send()
            .await
            .map_err(|e| api("DescribeInternetGateways", e))?;
        seen.gateway = gateways.internet_gateways().first().map(|g| {
            let attached = g
                .attachments()
                .iter()
                .any(|a| a.vpc_id().is_some() && a.vpc_id() == seen.vpc.as_deref());
            (
                g.internet_gateway_id().unwrap_or_default().to_string(),
                attached,
            )
        });
        let tables = client
            .describe_route_tables()
            .filters(cluster_filter(c))
            .send()
            .await
            .map_err(|e| api("DescribeRouteTables", e))?;
        seen.route_table = tables.route_tables().first().map(|rt| {
            let gateway = seen.gateway.as_ref().map(|g| g.0.as_str());
            let has_route = rt.routes().iter().any(|r| {
                r.destination_cidr_block() == Some("0.0.0.0/0")
                    && gateway.is_some()
                    && r.gateway_id() == gateway
            });
            let subnet = seen.subnet.as_ref().map(|s| s.0.as_str());
            let associated = rt
                .associations()
                .iter()
                .any(|a| subnet.is_some() && a.subnet_id() == subnet);
            (
                rt.route_table_id().unwrap_or_default().to_string(),
                has_route,
                associated,
            )
        });
    }
    let groups = client
        .describe_security_groups()
        .filters(cluster_filter(c))
        .send()
        .await
        .map_err(|e| api("DescribeSecurityGroups", e))?;
    seen.group = groups.security_groups().first().map(|g| {
        (
            g.group_id().unwrap_or_default().to_string(),
            rules_of(g.ip_permissions()),
        )
    });
    Ok(seen)
}

/// Make the repairs: rules go in one authorize and one revoke call.
pub async fn apply(client: &Client, repairs: &[Repair]) -> Result<(), ProviderError> {
    let mut allow: Vec<(&str, IpPermission)> = Vec::new();
    let mut revoke: Vec<(&str, IpPermission)> = Vec::new();
    for r in repairs {
        match r {
            Repair::PublicIpOnLaunch { subnet } => {
                client
                    .modify_subnet_attribute()
                    .subnet_id(subnet)
                    .map_public_ip_on_launch(AttributeBooleanValue::builder().value(true).build())
                    .send()
                    .await
                    .map_err(|e| api("ModifySubnetAttribute", e))?;
            }
            Repair::AttachGateway { gateway, vpc } => {
                client
                    .attach_internet_gateway()
                    .internet_gateway_id(gateway)
                    .vpc_id(vpc)
                    .send()
                    .await
                    .map_err(|e| api("AttachInternetGateway", e))?;
            }
            Repair::DefaultRoute {
                route_table,
                gateway,
            } => {
                client
                    .create_route()
                    .route_table_id(route_table)
                    .destination_cidr_block("0.0.0.0/0")
                    .gateway_id(gateway)
                    .send()
                    .await
                    .map_err(|e| api("CreateRoute", e))?;
            }
            Repair::Associate {
                route_table,
                subnet,
            } => {
                client
                    .associate_route_table()
                    .route_table_id(route_table)
                    .subnet_id(subnet)
                    .send()
                    .await
                    .map_err(|e| api("AssociateRouteTable", e))?;
            }
            Repair::Allow { group, rule } => allow.push((group, permission(rule))),
            Repair::Revoke { group, rule } => revoke.push((group, permission(rule))),
        }
    }
    if let Some((group, _)) = allow.first() {
        client
            .authorize_security_group_ingress()
            .group_id(*group)
            .set_ip_permissions(Some(allow.iter().map(|(_, p)| p.clone()).collect()))
            .send()
            .await
            .map_err(|e| api("AuthorizeSecurityGroupIngress", e))?;
    }
    if let Some((group, _)) = revoke.first() {
        client
            .revoke_security_group_ingress()
            .group_id(*group)
            .set_ip_permissions(Some(revoke.iter().map(|(_, p)| p.clone()).collect()))
            .send()
            .await
            .map_err(|e| api("RevokeSecurityGroupIngress", e))?;
    }
    Ok(())
}
