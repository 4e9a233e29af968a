//! Bare-metal provider: an inventory of SSH hosts that cloudflow did not create.
//!
//! It creates nothing and destroys nothing: `list` is the inventory, and `down` is left to the
//! core, which undoes its bootstrap on each host over SSH (`owns_machines` is false).

use cloudflow_provider_api::{
    DestroyReport, Journal, Machine, Progress, Provider, ProviderAction, ProviderError, Role,
    SshEndpoint,
};

/// One inventory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub address: String,
    pub port: u16,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct BareMetal {
    pub user: String,
    pub hosts: Vec<Host>,
}

impl BareMetal {
    /// A machine is named by its address, or by `address:port` where several hosts share an
    /// address (containers or NAT behind one IP): SSH sessions, facts and state are keyed by
    /// the name, so two such hosts must never share one.
    fn machines(&self) -> Vec<Machine> {
        let shared = |a: &str| self.hosts.iter().filter(|o| o.address == a).count() > 1;
        self.hosts
            .iter()
            .map(|h| Machine {
                name: if shared(&h.address) {
                    format!("{}:{}", h.address, h.port)
                } else {
                    h.address.clone()
                },
                id: format!("{}:{}", h.address, h.port),
                role: h.role,
                ssh: SshEndpoint {
                    address: h.address.clone(),
                    port: h.port,
                    user: self.user.clone(),
                },
                running: true,
                private_address: None,
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Provider for BareMetal {
    fn kind(&self) -> &'static str {
        "bare-metal"
    }

    fn owns_machines(&self) -> bool {
        false
    }

    async fn list(&self) -> Result<Vec<Machine>, ProviderError> {
        Ok(self.machines())
    }

    fn plan(&self, _existing: &[Machine]) -> Vec<ProviderAction> {
        Vec::new()
    }

    async fn create(
        &self,
        _journal: &dyn Journal,
        _progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        Ok(self.machines())
    }

    async fn destroy(
        &self,
        _journal: &dyn Journal,
        _progress: &dyn Progress,
    ) -> Result<DestroyReport, ProviderError> {
        Ok(DestroyReport::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_becomes_machines_in_order() {
        let bm = BareMetal {
            user: "root".into(),
            hosts: vec![
                Host {
                    address: "10.0.0.5".into(),
                    port: 22,
                    role: Role::Manager,
                },
                Host {
                    address: "10.0.0.6".into(),
                    port: 2222,
                    role: Role::Worker,
                },
            ],
        };
        let m = bm.machines();
        assert_eq!(m[0].name, "10.0.0.5");
        assert_eq!(m[0].role, Role::Manager);
        assert_eq!(m[1].ssh.port, 2222);
        assert_eq!(m[1].id, "10.0.0.6:2222");
        assert!(bm.plan(&m).is_empty());
        assert!(!bm.owns_machines());
    }

    #[test]
    fn hosts_sharing_an_address_get_names_with_their_port() {
        let host = |port| Host {
            address: "10.0.0.5".into(),
            port,
            role: Role::Worker,
        };
        let bm = BareMetal {
            user: "root".into(),
            hosts: vec![
                host(22),
                host(2222),
                Host {
                    address: "10.0.0.6".into(),
                    port: 22,
                    role: Role::Manager,
                },
            ],
        };
        let names: Vec<String> = bm.machines().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["10.0.0.5:22", "10.0.0.5:2222", "10.0.0.6"]);
    }
}
