//! HTTPS on the proxy: certificates from an ACME CA (HTTP-01) or from the spec's files,
//! installed where the proxy reads them (Swarm: every manager, keys 0600; Kubernetes: the
//! Secret its pods mount; never in output or the state) and put live like any route change
//! (Swarm: `nginx -t`, then a graceful reload; Kubernetes: a readiness-gated rollout).
//!
//! ACME: one certificate per environment holding every host name routed in it (live and
//! preview). No order while a certificate covering them has more than [`RENEW_DAYS`] left;
//! `certs renew` orders anyway. The ACME account's credentials are kept with the proxy
//! (`acme-account-<hash>.json`: 0600 on the managers, or a Kubernetes Secret), so the
//! account is reused by whoever runs cloudflow next.

use std::collections::BTreeMap;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use secrecy::SecretString;
use serde_json::json;
use sha2::Digest;

use super::flow::Deployer;
use crate::error::{Error, Result};
use crate::orchestrator::ProxyFile;
use crate::spec::{AcmeSpec, CertSource};
use crate::state::CertRecord;

/// Renew when fewer days than this are left.
pub const RENEW_DAYS: i64 = 30;

/// Where the ACME account's credentials are kept on the managers: per CA directory (a new
/// directory in the spec means a new account there), beside the configuration — not under
/// `acme/`, which the proxy serves.
fn account_file(directory: &str) -> String {
    format!("acme-account-{}.json", &fingerprint(directory)[..12])
}

/// One call to the CA, bounded by `proxy.https.acme.timeout`: instant-acme's HTTP client has
/// no timeout of its own, and a CA that takes the connection and never answers would hold the
/// command (and the cluster's lock) forever.
async fn bounded<T, E: std::fmt::Display>(
    timeout: std::time::Duration,
    call: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the CA did not answer within {} (proxy.https.acme.timeout)",
            humantime::format_duration(timeout)
        )),
    }
}

/// What the CA said no to (recorded, so that the next order waits), inside what failed here
/// (the cluster, the spec's files: reported, not recorded).
type FromCa<T> = std::result::Result<T, Error>;

/// A certificate about to go live.
struct NewCert {
    name: String,
    record: CertRecord,
    chain: String,
    key: SecretString,
}

/// The HTTP-01 challenge of every authorization of `order` not yet valid: its answer as a
/// file for the proxy (`acme/TOKEN`), and with `set_ready` the CA told to look. Every error
/// is the CA's.
async fn walk_challenges(
    order: &mut instant_acme::Order,
    timeout: std::time::Duration,
    problem: &(dyn Fn(&str, String) -> Error + Sync),
    set_ready: bool,
) -> std::result::Result<Vec<ProxyFile>, Error> {
    let mut answers = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(a) = bounded(timeout, async { Ok::<_, String>(authzs.next().await) })
        .await
        .map_err(|e| problem("an authorization", e))?
    {
        let mut a = a.map_err(|e| problem("an authorization", e.to_string()))?;
        if a.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| problem("HTTP-01", "the CA offers no HTTP-01 challenge".into()))?;
        answers.push(ProxyFile {
            path: format!("acme/{}", ch.token),
            content: SecretString::from(ch.key_authorization().as_str().to_string()),
            private: false,
        });
        if set_ready {
            bounded(timeout, ch.set_ready())
                .await
                .map_err(|e| problem("answering the challenge", e))?;
        }
    }
    Ok(answers)
}

/// How a step of the order for `hosts` failed at the CA, as the user reads it.
fn order_problem<'a>(acme: &'a AcmeSpec, hosts: &[String]) -> impl Fn(&str, String) -> Error + 'a {
    let names = hosts.join(", ");
    move |what: &str, e: String| {
        Error::Other(format!(
            "ACME: {what} for {names} at {} failed: {e}; traffic is served as before",
            acme.directory
        ))
    }
}

/// The value of a call to the CA, or return its failure as the CA's (`Ok(Err(…))`).
macro_rules! ca {
    ($call:expr, $problem:expr) => {
        match $call.await {
            Ok(v) => v,
            Err(e) => return Ok(Err($problem(e))),
        }
    };
}

/// One certificate `certs` shows.
pub fn cert_rows(certs: &BTreeMap<String, CertRecord>) -> Vec<serde_json::Value> {
    certs
        .iter()
        .map(|(name, c)| {
            json!({"name": name, "hosts": c.hosts, "not_after": c.not_after, "days_left": c.days_left(),
                   "serial": c.serial, "source": c.source})
        })
        .collect()
}

/// Expiry (RFC 3339) and serial (hex) of the first certificate of a PEM chain.
fn inspect(chain_pem: &str) -> std::result::Result<(String, String), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .ok_or("an expiry out of range")?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok((not_after, cert.raw_serial_as_string()))
}

/// A certificate file and its key belong together: checked before anything goes live (on
/// Kubernetes a mismatch would only show as proxy pods that never become Ready). The error
/// never quotes the key.
fn check_key_pair(chain_pem: &str, key: &SecretString) -> std::result::Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use secrecy::ExposeSecret;
    let certs = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key.expose_secret().as_bytes())
        .map_err(|_| "the key file holds no PEM private key".to_string())?;
    rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::aws_lc_rs::default_provider())
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the key file's key does not belong to this certificate".to_string()
            }
            _ => "the key file's key is of a kind the proxy cannot use".to_string(),
        })
}

fn fingerprint(pem: &str) -> String {
    hex(&sha2::Sha256::digest(pem.as_bytes()))
}

/// The two files of a certificate under the proxy's directory.
fn cert_files(base: &str) -> Vec<String> {
    vec![format!("tls/{base}.crt"), format!("tls/{base}.key")]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Host names that need a certificate, per environment (every routed host).
fn wanted(state: &crate::state::ClusterState, domain: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (env, e) in &state.environments {
        for (svc, r) in &e.services {
            if r.strategy == crate::spec::Strategy::BlueGreen && r.port.is_some() {
                let hosts = out.entry(env.clone()).or_default();
                hosts.push(format!("{svc}-{env}.{domain}"));
                hosts.push(format!("{svc}-{env}-preview.{domain}"));
            }
        }
    }
    out
}

/// A recorded certificate nothing needs any more.
fn is_stale(
    name: &str,
    source: &CertSource,
    state: &crate::state::ClusterState,
    domain: &str,
) -> bool {
    match (source, name.split_once('-')) {
        (CertSource::Acme(_), Some(("env", env))) => !wanted(state, domain).contains_key(env),
        (CertSource::Files(files), Some(("file", n))) => n
            .parse::<usize>()
            .map_or(true, |n| n == 0 || n > files.len()),
        _ => true,
    }
}

/// One thing [`Deployer::ensure_certs`] would do, as `plan` shows it.
pub struct CertWork {
    pub line: String,
    /// False for an order that waits after a failed one (shown, not done until it is due).
    pub due: bool,
}

/// What [`Deployer::ensure_certs`] would do, one line each (pure: the spec, its files and the
/// record): a routed host without a certificate, one expiring within [`RENEW_DAYS`], a
/// certificate file that changed, one of a gone environment, or every one once `proxy.https`
/// is gone from the spec; an order that waits after a failed one says until when.
pub fn cert_work(spec: &crate::spec::Spec, state: &crate::state::ClusterState) -> Vec<CertWork> {
    let due = |line: String| CertWork { line, due: true };
    let Some(https) = &spec.proxy.https else {
        return state
            .certs
            .keys()
            .map(|n| {
                due(format!(
                    "https: remove certificate {n} (the spec has no proxy.https)"
                ))
            })
            .collect();
    };
    let domain = spec.proxy.domain.as_deref().unwrap_or_default();
    let mut work: Vec<CertWork> = state
        .certs
        .keys()
        .filter(|n| is_stale(n, &https.source, state, domain))
        .map(|n| {
            due(format!(
                "https: remove certificate {n} (nothing routed needs it)"
            ))
        })
        .collect();
    match &https.source {
        CertSource::Files(files) => {
            for (i, f) in files.iter().enumerate() {
                let name = format!("file-{}", i + 1);
                let known = state.certs.get(&name);
                let changed = std::fs::read_to_string(&f.cert_file)
                    .map(|c| known.is_none_or(|k| k.fingerprint != fingerprint(&c)))
                    .unwrap_or(true);
                if changed {
                    let what = if known.is_some() { "changed" } else { "new" };
                    work.push(due(format!(
                        "https: install certificate {name} from {} ({what})",
                        f.cert_file.display()
                    )));
                }
            }
        }
        CertSource::Acme(acme) => {
            for (env, hosts) in wanted(state, domain) {
                let name = format!("env-{env}");
                let before = work.len();
                match state.certs.get(&name) {
                    Some(c) if !hosts.iter().all(|h| c.covers(h)) => work.push(due(format!(
                        "https: order certificate {name} from {} (new names: {})",
                        acme.directory,
                        hosts
                            .iter()
                            .filter(|h| !c.covers(h))
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                    Some(c) if c.days_left() <= RENEW_DAYS => work.push(due(format!(
                        "https: renew certificate {name} from {} ({} days left)",
                        acme.directory,
                        c.days_left()
                    ))),
                    Some(_) => {}
                    None => work.push(due(format!(
                        "https: order certificate {name} from {} for {}",
                        acme.directory,
                        hosts.join(", ")
                    ))),
                }
                if work.len() > before
                    && let Some(wait) = waiting(state, &name)
                {
                    work.pop();
                    work.push(CertWork {
                        line: wait,
                        due: false,
                    });
                }
            }
        }
    }
    work
}

/// Whether [`Deployer::ensure_certs`] has anything to do now (see [`cert_work`]).
pub fn needs_certs(spec: &crate::spec::Spec, state: &crate::state::ClusterState) -> bool {
    cert_work(spec, state).iter().any(|w| w.due)
}

/// When the order of `name` waits after a failed one: the line that says until when.
fn waiting(state: &crate::state::ClusterState, name: &str) -> Option<String> {
    let f = state.cert_failures.get(name)?;
    let retry = f.retry_at();
    (chrono::Utc::now() < retry).then(|| {
        format!(
            "https: certificate {name}: {} failed order(s), the last at {}; the next order waits until {} (`certs renew` orders now): {}",
            f.attempts,
            f.at,
            retry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            f.error
        )
    })
}

impl Deployer<'_> {
    fn wanted_hosts(&self) -> BTreeMap<String, Vec<String>> {
        wanted(&self.state.snapshot(), self.domain())
    }

    /// Make sure every routed host has a valid certificate (ordering or installing what is
    /// missing, renewing what expires within [`RENEW_DAYS`], everything with `force`); each
    /// goes live with the routes. Returns the certificates installed. Nothing without
    /// `proxy.https`.
    pub async fn ensure_certs(&self, force: bool) -> Result<Vec<String>> {
        self.ensure_certs_saying(force, true).await
    }

    /// [`Self::ensure_certs`] for `serve`'s timer: an order that waits after a failed one is
    /// not said at every tick (the failure was said when it happened).
    pub async fn ensure_certs_quietly(&self) -> Result<Vec<String>> {
        self.ensure_certs_saying(false, false).await
    }

    async fn ensure_certs_saying(&self, force: bool, say_waits: bool) -> Result<Vec<String>> {
        let Some(https) = &self.spec.proxy.https else {
            self.remove_all_certs().await?;
            return Ok(Vec::new());
        };
        let work = cert_work(self.spec, &self.state.snapshot());
        for w in work.iter().filter(|w| !w.due && !force) {
            if say_waits {
                self.ui.info(&w.line);
            } else {
                tracing::debug!("{}", w.line);
            }
        }
        if !force && !work.iter().any(|w| w.due) {
            return Ok(Vec::new());
        }
        // The proxy listens on the HTTPS port and answers ACME challenges before anything is
        // ordered (a proxy made before `proxy.https` was set gets both now).
        self.orch.ensure_https_port().await?;
        self.publish(&[]).await?;
        let installed = match &https.source {
            CertSource::Files(files) => self.install_files(files, force).await?,
            CertSource::Acme(acme) => self.order_missing(acme, force).await?,
        };
        // Certificates nothing needs any more go too: of environments that are gone, of files
        // no longer listed, or from the source the spec no longer uses.
        let state = self.state.snapshot();
        let stale: Vec<(String, CertRecord)> = state
            .certs
            .iter()
            .filter(|(n, _)| is_stale(n, &https.source, &state, self.domain()))
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        let wanted = self.wanted_hosts();
        if state.cert_failures.keys().any(|n| {
            n.strip_prefix("env-")
                .is_none_or(|e| !wanted.contains_key(e))
        }) {
            self.update(|s| {
                s.cert_failures.retain(|n, _| {
                    n.strip_prefix("env-")
                        .is_some_and(|e| wanted.contains_key(e))
                })
            })?;
        }
        if !stale.is_empty() {
            self.update(|s| {
                for (n, _) in &stale {
                    s.certs.remove(n);
                }
            })?;
            self.publish(&[]).await?;
            let files: Vec<String> = stale
                .iter()
                .flat_map(|(n, c)| cert_files(&c.file_base(n)))
                .collect();
            self.orch.remove_proxy_files(&files).await?;
        }
        Ok(installed)
    }

    /// `proxy.https` is gone from the spec: the records go, the routes stop naming the
    /// certificates (plain HTTP again, no 301), then their files go. The proxy's HTTPS port
    /// stays published (moving a running proxy's ports restarts it); nginx no longer listens
    /// there.
    async fn remove_all_certs(&self) -> Result<()> {
        let state = self.state.snapshot();
        if !state.cert_failures.is_empty() {
            self.update(|s| s.cert_failures.clear())?;
        }
        let gone: Vec<(String, CertRecord)> = state.certs.into_iter().collect();
        if gone.is_empty() {
            return Ok(());
        }
        self.update(|s| s.certs.clear())?;
        self.publish(&[]).await?;
        let files: Vec<String> = gone
            .iter()
            .flat_map(|(n, c)| cert_files(&c.file_base(n)))
            .collect();
        self.orch.remove_proxy_files(&files).await?;
        self.ui.info(&format!(
            "https: certificate(s) {} removed (the spec has no proxy.https)",
            gone.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(())
    }

    /// Every place the proxy runs has its live routes, the installed certificates' files
    /// and the ACME account: a manager added since gets copies from one that has them, so
    /// its proxy task starts with the routes the others serve.
    pub async fn sync_proxy_files(&self) -> Result<()> {
        let state = self.state.snapshot();
        let mut paths: Vec<String> = state
            .certs
            .iter()
            .flat_map(|(n, c)| cert_files(&c.file_base(n)))
            .collect();
        if let Some(https) = &self.spec.proxy.https
            && let CertSource::Acme(acme) = &https.source
        {
            paths.push(account_file(&acme.directory));
        }
        for (host, path) in self.orch.sync_proxy_files(&paths).await? {
            self.ui.info(&format!(
                "proxy: {path} copied to {host} (a manager without it)"
            ));
        }
        Ok(())
    }

    /// Put certificates live, all at once: new files beside the old ones, the records, then
    /// the routes (Swarm: tested by nginx and reloaded gracefully; Kubernetes: one rollout).
    /// When the proxy refuses, the records and the routes go back to the previous
    /// certificates and the new files are removed.
    async fn put_live(&self, certs: &[NewCert]) -> Result<()> {
        if certs.is_empty() {
            return Ok(());
        }
        let files: Vec<ProxyFile> = certs
            .iter()
            .flat_map(|c| {
                let base = c.record.file_base(&c.name);
                [
                    ProxyFile {
                        path: format!("tls/{base}.key"),
                        content: c.key.clone(),
                        private: true,
                    },
                    ProxyFile {
                        path: format!("tls/{base}.crt"),
                        content: SecretString::from(c.chain.clone()),
                        private: false,
                    },
                ]
            })
            .collect();
        self.orch.write_proxy_files(&files).await?;
        let before = self.state.snapshot().certs;
        self.update(|s| {
            for c in certs {
                s.certs.insert(c.name.clone(), c.record.clone());
            }
        })?;
        // Files this batch wrote that no previous record names (a certificate installed
        // again has the same files as before: those stay on a revert).
        let new_files: Vec<String> = certs
            .iter()
            .filter(|c| {
                before
                    .get(&c.name)
                    .is_none_or(|p| p.file_base(&c.name) != c.record.file_base(&c.name))
            })
            .flat_map(|c| cert_files(&c.record.file_base(&c.name)))
            .collect();
        if let Err(e) = self.publish(&[]).await {
            self.update(|s| {
                for c in certs {
                    match before.get(&c.name) {
                        Some(p) => s.certs.insert(c.name.clone(), p.clone()),
                        None => s.certs.remove(&c.name),
                    };
                }
            })?;
            if let Err(again) = self.publish(&[]).await {
                tracing::warn!("https: republishing the previous routes failed: {again}");
            }
            let _ = self.orch.remove_proxy_files(&new_files).await;
            return Err(e);
        }
        let old_files: Vec<String> = certs
            .iter()
            .filter_map(|c| {
                let p = before.get(&c.name)?;
                (p.file_base(&c.name) != c.record.file_base(&c.name))
                    .then(|| cert_files(&p.file_base(&c.name)))
            })
            .flatten()
            .collect();
        // Live now: files nothing names any more are only worth a warning if they stay.
        if !old_files.is_empty()
            && let Err(e) = self.orch.remove_proxy_files(&old_files).await
        {
            tracing::warn!("https: removing the replaced certificates' files failed: {e}");
        }
        Ok(())
    }

    async fn install_files(
        &self,
        files: &[crate::spec::CertFiles],
        force: bool,
    ) -> Result<Vec<String>> {
        let mut new = Vec::new();
        let mut said = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let name = format!("file-{}", i + 1);
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| Error::Usage(format!("cannot read {}: {e}", p.display())))
            };
            let chain = read(&f.cert_file)?;
            let key = SecretString::from(read(&f.key_file)?);
            let fp = fingerprint(&chain);
            let known = self.state.snapshot().certs.get(&name).cloned();
            if !force && known.as_ref().is_some_and(|k| k.fingerprint == fp) {
                continue;
            }
            let (not_after, serial) = inspect(&chain)
                .map_err(|e| Error::Usage(format!("{}: {e}", f.cert_file.display())))?;
            check_key_pair(&chain, &key).map_err(|e| {
                Error::Usage(format!(
                    "{} and {}: {e}",
                    f.cert_file.display(),
                    f.key_file.display()
                ))
            })?;
            said.push(format!(
                "https: certificate {name} from {} installed ({}; expires {not_after})",
                f.cert_file.display(),
                f.hosts.join(", ")
            ));
            new.push(NewCert {
                record: CertRecord {
                    hosts: f.hosts.clone(),
                    not_after,
                    serial,
                    source: "file".into(),
                    fingerprint: fp,
                },
                name,
                chain,
                key,
            });
        }
        self.put_live(&new).await?;
        for line in said {
            self.ui.info(&line);
        }
        Ok(new.into_iter().map(|c| c.name).collect())
    }

    /// A failed order of `name` is recorded, so that the next one waits.
    fn record_failure(&self, name: &str, error: &str) -> Result<()> {
        let error: String = error.chars().take(400).collect();
        self.update(|s| {
            let attempts = s.cert_failures.get(name).map_or(0, |f| f.attempts) + 1;
            s.cert_failures.insert(
                name.to_string(),
                crate::state::CertFailure {
                    at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    attempts,
                    error,
                },
            );
        })
    }

    /// Every certificate that is due, ordered together: the orders are opened, all their
    /// challenge answers put in place at once (one rollout on Kubernetes, whatever the number
    /// of environments), each order validated and finalized, and the certificates put live
    /// at once. One order's failure does not stop the others'.
    async fn order_missing(&self, acme: &AcmeSpec, force: bool) -> Result<Vec<String>> {
        let mut failed: Vec<String> = Vec::new();
        let due: Vec<(String, Vec<String>)> = self
            .wanted_hosts()
            .into_iter()
            .filter_map(|(env, hosts)| {
                let name = format!("env-{env}");
                let state = self.state.snapshot();
                let fresh = state.certs.get(&name).is_some_and(|c| {
                    hosts.iter().all(|h| c.covers(h)) && c.days_left() > RENEW_DAYS
                });
                // A waiting order was said above.
                (force || (!fresh && waiting(&state, &name).is_none())).then_some((name, hosts))
            })
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // No account (the CA unreachable, or refusing): every order that was due failed. A
        // failure here (reading the saved account, trusting ca_file) is not recorded.
        let account = match self.acme_account(acme).await? {
            Ok(a) => a,
            Err(e) => {
                let names: Vec<&str> = due
                    .iter()
                    .flat_map(|(_, h)| h)
                    .map(String::as_str)
                    .collect();
                let e = format!(
                    "{e}: no certificate for {}; traffic is served as before",
                    names.join(", ")
                );
                for (name, _) in &due {
                    self.record_failure(name, &e)?;
                }
                return Err(Error::Other(e));
            }
        };
        // Recorded, so that the next order waits; the failures are reported together.
        let fail = |name: &str, e: Error, failed: &mut Vec<String>| -> Result<()> {
            self.record_failure(name, &e.to_string())?;
            failed.push(e.to_string());
            Ok(())
        };
        let mut open = Vec::new();
        let mut answers = Vec::new();
        for (name, hosts) in due {
            self.ui.info(&format!(
                "https: ordering a certificate for {} from {}",
                hosts.join(", "),
                acme.directory
            ));
            match self.open_order(&account, acme, &hosts).await? {
                Ok((order, tokens)) => {
                    answers.extend(tokens);
                    open.push((name, hosts, order));
                }
                Err(e) => fail(&name, e, &mut failed)?,
            }
        }
        let paths: Vec<String> = answers.iter().map(|f| f.path.clone()).collect();
        let fetched = async {
            // Failing to put the answers in place is this cluster's failure, not the CA's.
            if !answers.is_empty() {
                self.orch.write_proxy_files(&answers).await?;
            }
            let mut got = Vec::new();
            for (name, hosts, mut order) in open {
                match self.finish_order(&mut order, acme, &hosts).await? {
                    Ok((chain, key)) => got.push((name, hosts, chain, key)),
                    Err(e) => fail(&name, e, &mut failed)?,
                }
            }
            Ok::<_, Error>(got)
        }
        .await;
        // Challenge answers go on every path (a failed removal is only worth a warning).
        if !paths.is_empty()
            && let Err(e) = self.orch.remove_proxy_files(&paths).await
        {
            tracing::warn!("https: removing ACME challenge files failed: {e}");
        }
        // A failure here (ours, not the CA's) still says which orders the CA refused.
        let with_refused = |e: Error, failed: &[String]| -> Error {
            if failed.is_empty() {
                e
            } else {
                Error::Other(format!(
                    "{e}\n(the CA also refused, recorded: {})",
                    failed.join("; ")
                ))
            }
        };
        let fetched = fetched.map_err(|e| with_refused(e, &failed))?;
        let mut new = Vec::new();
        let mut said = Vec::new();
        for (name, hosts, chain, key) in fetched {
            let (not_after, serial) = match inspect(&chain) {
                Ok(x) => x,
                Err(e) => {
                    let e = Error::Other(format!("the CA at {} sent {e}", acme.directory));
                    fail(&name, e, &mut failed)?;
                    continue;
                }
            };
            said.push(format!(
                "https: certificate {name} installed (serial {serial}, expires {not_after})"
            ));
            new.push(NewCert {
                record: CertRecord {
                    hosts,
                    not_after,
                    serial,
                    source: "acme".into(),
                    fingerprint: fingerprint(&chain),
                },
                name,
                chain,
                key,
            });
        }
        self.put_live(&new)
            .await
            .map_err(|e| with_refused(e, &failed))?;
        let installed: Vec<String> = new.into_iter().map(|c| c.name).collect();
        if installed
            .iter()
            .any(|n| self.state.snapshot().cert_failures.contains_key(n))
        {
            self.update(|s| {
                for n in &installed {
                    s.cert_failures.remove(n);
                }
            })?;
        }
        for line in said {
            self.ui.info(&line);
        }
        match failed.len() {
            0 => Ok(installed),
            1 => Err(Error::Other(failed.remove(0))),
            n => Err(Error::Other(format!(
                "{n} certificate orders failed{}:\n  - {}",
                if installed.is_empty() {
                    String::new()
                } else {
                    format!(" ({} installed)", installed.join(", "))
                },
                failed.join("\n  - ")
            ))),
        }
    }

    /// The cluster's ACME account: from the managers, or registered now and kept there.
    async fn acme_account(&self, acme: &AcmeSpec) -> Result<FromCa<Account>> {
        let problem = |what: &'static str| {
            move |e: String| Error::Other(format!("ACME: {what} at {} failed: {e}", acme.directory))
        };
        // Trusting `ca_file` is this machine's business, not the CA's.
        let builder = || match &acme.ca_file {
            Some(ca) => Account::builder_with_root(ca).map_err(|e| {
                Error::Usage(format!("proxy.https.acme.ca_file {}: {e}", ca.display()))
            }),
            None => Account::builder()
                .map_err(|e| Error::Other(format!("ACME: starting the client: {e}"))),
        };
        let file = account_file(&acme.directory);
        if let Some(saved) = self.orch.read_proxy_file(&file).await? {
            let creds: AccountCredentials = serde_json::from_str(&saved).map_err(|e| {
                Error::Other(format!(
                    "ACME: the saved account ({file}, kept with the proxy) is unreadable: {e}"
                ))
            })?;
            let account = ca!(
                bounded(acme.timeout, builder()?.from_credentials(creds)),
                problem("loading the saved account")
            );
            return Ok(Ok(account));
        }
        let contact: Vec<String> = acme.email.iter().map(|e| format!("mailto:{e}")).collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, creds) = ca!(
            bounded(
                acme.timeout,
                builder()?.create(
                    &NewAccount {
                        contact: &contact,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    acme.directory.clone(),
                    None,
                ),
            ),
            problem("registering an account")
        );
        let saved = serde_json::to_string(&creds).expect("credentials serialise");
        self.orch
            .write_proxy_files(&[ProxyFile {
                path: file,
                content: SecretString::from(saved),
                private: true,
            }])
            .await?;
        self.ui.info(&format!(
            "https: ACME account registered at {} (kept with the cluster's proxy)",
            acme.directory
        ));
        Ok(Ok(account))
    }

    /// Open an order for `hosts` over HTTP-01: the order, and the answers to its challenges
    /// (as files for the proxy, `acme/TOKEN`) that must be in place before the CA looks.
    async fn open_order(
        &self,
        account: &Account,
        acme: &AcmeSpec,
        hosts: &[String],
    ) -> Result<FromCa<(instant_acme::Order, Vec<ProxyFile>)>> {
        let problem = order_problem(acme, hosts);
        let ids: Vec<Identifier> = hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
        let mut order = ca!(
            bounded(acme.timeout, account.new_order(&NewOrder::new(&ids))),
            |e| problem("the order", e)
        );
        let answers = match walk_challenges(&mut order, acme.timeout, &problem, false).await {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok((order, answers)))
    }

    /// With the answers in place: tell the CA to look, wait for validation, finalize, and
    /// fetch the chain (with its new private key).
    async fn finish_order(
        &self,
        order: &mut instant_acme::Order,
        acme: &AcmeSpec,
        hosts: &[String],
    ) -> Result<FromCa<(String, SecretString)>> {
        let problem = order_problem(acme, hosts);
        let timeout = acme.timeout;
        // Polls retry for up to 30 s (RetryPolicy's default) on top of one request's bound.
        let polling = timeout + std::time::Duration::from_secs(30);
        if let Err(e) = walk_challenges(order, timeout, &problem, true).await {
            return Ok(Err(e));
        }
        let status = ca!(
            bounded(polling, order.poll_ready(&RetryPolicy::default())),
            |e| problem("waiting for validation", e)
        );
        if status != OrderStatus::Ready {
            // The challenges' problem documents say why.
            let mut why = Vec::new();
            let mut authzs = order.authorizations();
            while let Ok(Some(Ok(a))) =
                bounded(timeout, async { Ok::<_, String>(authzs.next().await) }).await
            {
                let host = format!("{:?}", a.identifier());
                for c in &a.challenges {
                    if let Some(e) = &c.error {
                        why.push(format!("{host}: {e}"));
                    }
                }
            }
            return Ok(Err(problem(
                "validation",
                format!("the order is {status:?}: {}", why.join("; ")),
            )));
        }
        let key = ca!(bounded(timeout, order.finalize()), |e| problem(
            "finalizing",
            e
        ));
        let chain = ca!(
            bounded(polling, order.poll_certificate(&RetryPolicy::default())),
            |e| problem("fetching the certificate", e)
        );
        Ok(Ok((chain, SecretString::from(key))))
    }

    /// `certs renew`: order or install every certificate again.
    pub async fn renew_certs(&self) -> Result<Vec<String>> {
        if self.spec.proxy.https.is_none() {
            return Err(Error::Usage(
                "the spec has no proxy.https: there are no certificates to renew".into(),
            ));
        }
        self.ensure_certs(true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl_pair(dir: &std::path::Path, name: &str) -> (String, SecretString) {
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args([
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ])
            .args(["-days", "2", "-subj", "/CN=pair"])
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        (
            read(&format!("{name}.pem")),
            SecretString::from(read(&format!("{name}.key"))),
        )
    }

    #[test]
    fn a_certificate_and_a_key_that_do_not_belong_together_are_refused_without_quoting_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = openssl_pair(dir.path(), "a");
        let (_, key_b) = openssl_pair(dir.path(), "b");
        assert_eq!(check_key_pair(&cert_a, &key_a), Ok(()));
        let e = check_key_pair(&cert_a, &key_b).unwrap_err();
        assert_eq!(e, "the key file's key does not belong to this certificate");
        let e = check_key_pair(&cert_a, &SecretString::from("not a key".to_string())).unwrap_err();
        assert_eq!(e, "the key file holds no PEM private key");
        assert!(check_key_pair("nothing", &key_a).is_err());
    }
}
