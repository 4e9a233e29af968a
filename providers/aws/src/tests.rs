use std::time::Duration;

use cloudflow_provider_api::{Machine, Role, SshEndpoint};

use super::*;

fn cfg(managers: u32, workers: u32) -> AwsConfig {
    AwsConfig {
        cluster: "stg".into(),
        region: "eu-west-1".into(),
        instance_type: "t3.medium".into(),
        image: "ami-123".into(),
        managers,
        workers,
        public_key: Ok("ssh-ed25519 AAAA".into()),
        network: NetworkChoice::Auto,
        allowed_cidrs: vec!["203.0.113.0/24".into()],
        proxy_port: 80,
        user_data: "#cloud-config\n".into(),
        ssh_user: "admin".into(),
        ssh_private: false,
        wait: Duration::from_secs(60),
    }
}

fn instance(id: &str, role: Role) -> Machine {
    Machine {
        name: id.into(),
        id: id.into(),
        role,
        ssh: SshEndpoint {
            address: "198.51.100.1".into(),
            port: 22,
            user: "admin".into(),
        },
        running: true,
        private_address: None,
    }
}

fn text(actions: &[ProviderAction]) -> Vec<String> {
    actions.iter().map(|a| a.to_string()).collect()
}

#[test]
fn first_plan_makes_the_network_then_instances_per_role() {
    assert_eq!(
        text(&plan_instances(&cfg(1, 2), &[])),
        [
            "create key-pair cloudflow-stg",
            "create vpc cloudflow-stg (10.77.0.0/16)",
            "create subnet cloudflow-stg (10.77.1.0/24)",
            "create internet-gateway cloudflow-stg",
            "create route-table cloudflow-stg",
            "create security-group cloudflow-stg",
            "create instance manager #1 (manager)",
            "create instance worker #1 (worker)",
            "create instance worker #2 (worker)",
        ]
    );
}

#[test]
fn existing_instances_are_counted_per_role_and_surplus_is_the_newest() {
    let have = [
        instance("i-1", Role::Manager),
        instance("i-2", Role::Worker),
        instance("i-3", Role::Worker),
    ];
    assert!(plan_instances(&cfg(1, 2), &have).is_empty());
    assert_eq!(
        text(&plan_instances(&cfg(1, 4), &have)),
        [
            "create instance worker #3 (worker)",
            "create instance worker #4 (worker)"
        ]
    );
    assert_eq!(
        text(&plan_instances(&cfg(1, 1), &have)),
        ["destroy instance i-3"]
    );
}

#[test]
fn an_existing_vpc_plans_no_network_of_its_own() {
    let mut c = cfg(1, 0);
    c.network = NetworkChoice::Vpc("vpc-1".into());
    assert_eq!(
        text(&plan_instances(&c, &[])),
        [
            "create key-pair cloudflow-stg",
            "create security-group cloudflow-stg",
            "create instance manager #1 (manager)"
        ]
    );
}

#[test]
fn deletion_order_respects_dependencies() {
    let pos = |k: &str| network::DELETE_ORDER.iter().position(|x| *x == k).unwrap();
    // Instances are terminated (and waited for) before any of these; then:
    assert!(
        pos("security-group") < pos("vpc"),
        "a group lives in its VPC"
    );
    assert!(
        pos("route-table") < pos("subnet"),
        "disassociate before the subnet goes"
    );
    assert!(
        pos("internet-gateway") < pos("vpc"),
        "detach the gateway before the VPC"
    );
    assert!(pos("subnet") < pos("vpc"));
}

#[test]
fn client_tokens_fit_ec2s_64_characters_for_every_valid_name() {
    let longest = "a".repeat(40);
    let now = "1764480000123456789";
    for role in [Role::Manager, Role::Worker] {
        let t = client_token(&longest, role, now);
        assert!(t.len() <= 64, "{t} is {} long", t.len());
        assert!(t.ends_with(&format!("-{role}-{now}")), "{t}");
    }
    assert_eq!(client_token("stg", Role::Worker, "1"), "stg-worker-1");
}

#[test]
fn repairs_finish_half_made_networks_and_reconcile_rules() {
    use reconcile::*;
    let c = cfg(1, 0);
    let wanted = wanted_rules(&c, "sg-1");
    let healthy = Seen {
        vpc: Some("vpc-1".into()),
        subnet: Some(("subnet-1".into(), true)),
        gateway: Some(("igw-1".into(), true)),
        route_table: Some(("rtb-1".into(), true, true)),
        group: Some(("sg-1".into(), wanted.clone())),
    };
    assert!(repairs(&c, &healthy).is_empty());
    // A crash after CreateRouteTable / CreateSubnet: no route, no association, no public IPs,
    // the gateway detached; a rule removed behind cloudflow's back and one it no longer wants.
    let mut rules = wanted.clone();
    let ssh = Rule {
        proto: "tcp".into(),
        from: 22,
        to: 22,
        source: Source::Cidr("203.0.113.0/24".into()),
    };
    rules.remove(&ssh);
    let stale = Rule {
        proto: "tcp".into(),
        from: 22,
        to: 22,
        source: Source::Cidr("198.51.100.0/24".into()),
    };
    rules.insert(stale.clone());
    let broken = Seen {
        subnet: Some(("subnet-1".into(), false)),
        gateway: Some(("igw-1".into(), false)),
        route_table: Some(("rtb-1".into(), false, false)),
        group: Some(("sg-1".into(), rules)),
        ..healthy.clone()
    };
    let text: Vec<String> = repairs(&c, &broken)
        .iter()
        .map(|r| r.action("stg").to_string())
        .collect();
    assert_eq!(
        text,
        [
            "update subnet cloudflow-stg: give instances a public address on launch",
            "update internet-gateway cloudflow-stg: attach it to the VPC",
            "update route-table cloudflow-stg: add the default route through the gateway",
            "update route-table cloudflow-stg: associate it with the subnet",
            "update security-group cloudflow-stg: allow tcp 22 from 203.0.113.0/24",
            "update security-group cloudflow-stg: revoke tcp 22 from 198.51.100.0/24",
        ]
    );
    // A user's own VPC is theirs: only the security group is reconciled.
    let own = AwsConfig {
        network: NetworkChoice::Vpc("vpc-9".into()),
        ..c.clone()
    };
    assert!(
        repairs(&own, &broken)
            .iter()
            .all(|r| matches!(r, Repair::Allow { .. } | Repair::Revoke { .. }))
    );
    // Members reach each other on Swarm's ports only through the group itself.
    assert!(
        wanted
            .iter()
            .any(|r| r.to_string() == "udp 4789 from the cluster's members")
    );
    assert_eq!(wanted.len(), 6);
}
