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
        public_key: "ssh-ed25519 AAAA".into(),
        network: NetworkChoice::Auto,
        allowed_cidrs: vec!["203.0.113.0/24".into()],
        proxy_port: 80,
        user_data: "#cloud-config\n".into(),
        ssh_user: "admin".into(),
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
