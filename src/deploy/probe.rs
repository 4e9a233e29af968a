//! HTTP to the proxy: health probes of single replicas (through the per-task routes) and
//! the reload marker (`/_cloudflow/generation`), sent to every manager's published port.

use std::time::{Duration, Instant};

use reqwest::header::HOST;

use super::Probe;
use crate::wait::{Stop, until};

pub const PROBE_HOST: &str = "cloudflow-probe";

pub struct ProxyClient {
    http: reqwest::Client,
    pub port: u16,
    /// `(name, address)` of every manager the proxy listens on.
    pub endpoints: Vec<(String, String)>,
}

impl ProxyClient {
    pub fn new(port: u16, endpoints: Vec<(String, String)>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(6))
            .connect_timeout(Duration::from_secs(3))
            .no_proxy()
            .build()
            .expect("HTTP client");
        ProxyClient {
            http,
            port,
            endpoints,
        }
    }

    /// GET `path` from the proxy at `address` with `Host: host`: status and body.
    pub async fn get(
        &self,
        address: &str,
        host: &str,
        path: &str,
    ) -> Result<(u16, String), String> {
        let url = format!("http://{address}:{}{path}", self.port);
        let resp = self
            .http
            .get(&url)
            .header(HOST, host)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::error::chain(&e)))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok((status, body))
    }

    /// Wait until every proxy serves configuration `generation`.
    pub async fn wait_generation(&self, generation: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for (name, address) in &self.endpoints {
            until(Duration::from_millis(25), deadline, || async {
                match self
                    .get(address, PROBE_HOST, "/_cloudflow/generation")
                    .await
                {
                    Ok((200, body)) if body.trim() == generation.to_string() => Ok(()),
                    Ok((status, body)) => Err(Stop::<()>::NotYet(format!(
                        "answered {status}: {}",
                        first_line(&body)
                    ))),
                    Err(e) => Err(Stop::NotYet(e)),
                }
            })
            .await
            .map_err(|e| {
                let last = match e {
                    Stop::NotYet(l) => l,
                    Stop::Failed(()) => String::new(),
                };
                format!(
                    "the proxy on {name} ({address}:{}) did not load configuration {generation} within {}s; last: {last}",
                    self.port,
                    timeout.as_secs()
                )
            })?;
        }
        Ok(())
    }

    /// Probe one replica until it is healthy or `timeout` passes; the error says how it failed.
    pub async fn probe(
        &self,
        p: &Probe,
        accept_below: u16,
        timeout: Duration,
    ) -> Result<(), String> {
        let (_, address) = self
            .endpoints
            .first()
            .ok_or_else(|| "no manager runs the proxy".to_string())?;
        let deadline = Instant::now() + timeout;
        let path = format!("/_cloudflow/probe/{}", p.id);
        until(Duration::from_millis(500), deadline, || async {
            Err(Stop::<()>::NotYet(
                match self.get(address, PROBE_HOST, &path).await {
                    Ok((s, _)) if s < accept_below && s != 502 && s != 504 => return Ok(()),
                    Ok((502 | 504, _)) => format!(
                        "did not answer on {}:{} (the proxy got no response)",
                        p.address, p.port
                    ),
                    Ok((s, body)) => format!("GET {} answered {s}: {}", p.path, first_line(&body)),
                    Err(e) => format!("the proxy could not be asked: {e}"),
                },
            ))
        })
        .await
        .map_err(|e| {
            let failure = match e {
                Stop::NotYet(f) => f,
                Stop::Failed(()) => String::new(),
            };
            format!(
                "replica {} on node {} ({}:{}) failed its health check for {}s: {failure}",
                p.replica,
                p.node,
                p.address,
                p.port,
                timeout.as_secs()
            )
        })
    }
}

fn first_line(s: &str) -> String {
    let l = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    l.chars().take(200).collect()
}
