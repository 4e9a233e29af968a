//! The shared store: etcd, for teams running cloudflow from several machines at once.
//!
//! Keys, under the URL's prefix: `<prefix>/<cluster>/state/<sub-key>` (see [`super::flat`])
//! and `<prefix>/<cluster>/lock`. The record's revision is the `meta` key's mod revision;
//! every write is one transaction conditional on it and, while this process holds the lock, on
//! the lock key still belonging to this process's lease (a holder whose lease expired, or whose
//! lock was forced away, cannot write).
//!
//! The lock is a key attached to a lease of [`LEASE_TTL`] seconds, kept alive while the command
//! runs; its value names the holder. A holder that dies loses it when the lease expires.
//!
//! [`super::StateStore`] is synchronous (the provider journal calls it from anywhere); the
//! client runs on a small runtime of its own, and calls wait on a channel, so this works from
//! inside the command's runtime without blocking it as a whole.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};

use super::{Flat, Holder, LockInfo, StateError, StateLock, StateStore, Stored};

/// Seconds a dead holder keeps the lock at most.
pub const LEASE_TTL: i64 = 10;
/// How long one etcd request may take before the command gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// etcd refuses transactions with more operations than its `--max-txn-ops` (128 by default).
const MAX_TXN_OPS: usize = 120;

/// Where the TLS files and credentials come from: the URL's query, else these variables.
const ENV: &[(&str, &str)] = &[
    ("ca", "CLOUDFLOW_ETCD_CA"),
    ("cert", "CLOUDFLOW_ETCD_CERT"),
    ("key", "CLOUDFLOW_ETCD_KEY"),
    ("user", "CLOUDFLOW_ETCD_USER"),
    ("password", "CLOUDFLOW_ETCD_PASSWORD"),
];

pub struct Etcd {
    shared: Arc<Shared>,
}

struct Shared {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    /// `etcd://h1:2379,h2:2379/prefix`: no query, no credentials.
    location: String,
    endpoints: String,
    prefix: String,
    /// Clusters whose lock this process holds, with the lease that holds it.
    held: Mutex<HashMap<String, i64>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this may run inside the command's runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?ca=FILE&cert=FILE&key=FILE&user=NAME&password=...]`
struct Url {
    endpoints: Vec<String>,
    prefix: String,
    params: HashMap<String, String>,
}

fn parse(url: &str) -> Result<Url, StateError> {
    let bad = |why: &str| StateError::Url {
        url: super::redact_url(url),
        why: why.to_string(),
    };
    let rest = url
        .strip_prefix("etcd://")
        .or_else(|| url.strip_prefix("etcds://"))
        .ok_or_else(|| bad("expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let endpoints: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if endpoints.is_empty() {
        return Err(bad(
            "no endpoint: expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
        ));
    }
    for e in &endpoints {
        if e.contains('@') {
            return Err(bad(
                "credentials go in ?user=NAME or CLOUDFLOW_ETCD_USER / CLOUDFLOW_ETCD_PASSWORD, not in the host part",
            ));
        }
        if !e.contains(':') {
            return Err(bad(&format!(
                "endpoint {e:?} has no port (etcd listens on 2379)"
            )));
        }
    }
    let path = path.trim_matches('/');
    let prefix = if path.is_empty() {
        "/cloudflow".to_string()
    } else {
        format!("/{path}")
    };
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if !ENV.iter().any(|(name, _)| *name == k) {
            return Err(bad(&format!(
                "unknown parameter {k:?} (known: ca, cert, key, user, password)"
            )));
        }
        params.insert(k.into_owned(), v.into_owned());
    }
    for (name, var) in ENV {
        if !params.contains_key(*name)
            && let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            params.insert((*name).to_string(), v);
        }
    }
    Ok(Url {
        endpoints,
        prefix,
        params,
    })
}

impl Etcd {
    pub fn open(url: &str) -> Result<Self, StateError> {
        let u = parse(url)?;
        let tls = url.starts_with("etcds://") || u.params.contains_key("ca");
        let location = format!(
            "{}://{}{}",
            if tls { "etcds" } else { "etcd" },
            u.endpoints.join(","),
            u.prefix
        );
        let store_err = |message: String| StateError::Store {
            location: location.clone(),
            message,
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let Some(user) = u.params.get("user") {
            let password = u.params.get("password").cloned().unwrap_or_default();
            options = options.with_user(user.clone(), password);
        }
        if tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = u.params.get("ca") {
                let pem = std::fs::read(ca)
                    .map_err(|e| store_err(format!("cannot read the etcd CA file {ca}: {e}")))?;
                t = t.ca_certificate(Certificate::from_pem(pem));
            }
            match (u.params.get("cert"), u.params.get("key")) {
                (Some(c), Some(k)) => {
                    let cert = std::fs::read(c).map_err(|e| {
                        store_err(format!("cannot read the etcd client certificate {c}: {e}"))
                    })?;
                    let key = std::fs::read(k).map_err(|e| {
                        store_err(format!("cannot read the etcd client key {k}: {e}"))
                    })?;
                    t = t.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => {
                    return Err(store_err(
                        "a client certificate needs both cert and key (or CLOUDFLOW_ETCD_CERT and CLOUDFLOW_ETCD_KEY)"
                            .into(),
                    ));
                }
            }
            options = options.with_tls(t);
        }
        let scheme = if tls { "https" } else { "http" };
        let endpoints: Vec<String> = u
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cloudflow-etcd")
            .enable_all()
            .build()
            .map_err(|e| store_err(format!("cannot start the etcd client: {e}")))?;
        let joined = u.endpoints.join(",");
        let connected = run_on(&rt, {
            let joined = joined.clone();
            async move {
                let mut client = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    Client::connect(endpoints, Some(options)),
                )
                .await
                .map_err(|_| format!("cannot reach etcd at {joined}: no answer"))?
                .map_err(|e| unreachable(&joined, &e))?;
                // The channel connects lazily: one request proves an endpoint answers.
                tokio::time::timeout(REQUEST_TIMEOUT, client.status())
                    .await
                    .map_err(|_| format!("cannot reach etcd at {joined}: no answer"))?
                    .map_err(|e| unreachable(&joined, &e))?;
                Ok::<_, String>(client)
            }
        });
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                // Dropping a runtime blocks, which panics inside the command's runtime.
                rt.shutdown_background();
                return Err(store_err(e));
            }
        };
        Ok(Etcd {
            shared: Arc::new(Shared {
                rt: Some(rt),
                client,
                location,
                endpoints: joined,
                prefix: u.prefix,
                held: Mutex::new(HashMap::new()),
            }),
        })
    }
}

fn unreachable(endpoints: &str, e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::TransportError(_) => {
            format!("cannot reach etcd at {endpoints}: {e}")
        }
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                tonic_code::Unavailable | tonic_code::DeadlineExceeded
            ) =>
        {
            format!("cannot reach etcd at {endpoints}: {}", s.message())
        }
        etcd_client::Error::GRpcStatus(s) => format!("etcd at {endpoints}: {}", s.message()),
        other => format!("etcd at {endpoints}: {other}"),
    }
}

mod tonic_code {
    pub use tonic::Code::{DeadlineExceeded, Unavailable};
}

/// Run `fut` on the store's runtime and wait for it from this (synchronous) caller.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the etcd runtime answers")
}

impl Shared {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("runtime lives as long as the store")
    }

    fn err(&self, message: String) -> StateError {
        StateError::Store {
            location: self.location.clone(),
            message,
        }
    }

    /// One etcd request, bounded by [`REQUEST_TIMEOUT`], errors naming the endpoints.
    fn call<T: Send + 'static, F>(
        &self,
        f: impl FnOnce(Client) -> F + Send + 'static,
    ) -> Result<T, StateError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let client = self.client.clone();
        let endpoints = self.endpoints.clone();
        run_on(self.rt(), async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, f(client)).await {
                Ok(r) => r.map_err(|e| unreachable(&endpoints, &e)),
                Err(_) => Err(format!(
                    "cannot reach etcd at {endpoints}: no answer in {}s",
                    REQUEST_TIMEOUT.as_secs()
                )),
            }
        })
        .map_err(|m| self.err(m))
    }

    fn state_prefix(&self, cluster: &str) -> String {
        format!("{}/{cluster}/state/", self.prefix)
    }

    fn lock_key(&self, cluster: &str) -> String {
        format!("{}/{cluster}/lock", self.prefix)
    }

    fn held_lease(&self, cluster: &str) -> Option<i64> {
        self.held.lock().unwrap().get(cluster).copied()
    }

    /// The conditions every write of `cluster` carries.
    fn guards(&self, cluster: &str, rev: i64) -> Vec<Compare> {
        let meta = format!("{}{}", self.state_prefix(cluster), super::flat::META);
        let mut when = vec![if rev == 0 {
            Compare::version(meta, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(meta, CompareOp::Equal, rev)
        }];
        if let Some(lease) = self.held_lease(cluster) {
            when.push(Compare::lease(
                self.lock_key(cluster),
                CompareOp::Equal,
                lease,
            ));
        }
        when
    }

    /// Why a guarded transaction did not apply.
    fn why_refused(&self, cluster: &str, rev: i64) -> StateError {
        let why = match (self.lock_info(cluster), self.held_lease(cluster)) {
            (Ok(info), Some(lease)) if info.as_ref().map(|(_, l)| *l) != Some(lease) => {
                match info {
                    Some((i, _)) => format!(
                        "this command's lock was lost (its lease expired or it was released with --force); {i} holds it now"
                    ),
                    None => "this command's lock was lost (its lease expired or it was released with --force)".into(),
                }
            }
            _ => format!("the record is no longer at revision {rev}; another writer changed it"),
        };
        StateError::Conflict {
            cluster: cluster.to_string(),
            location: self.location.clone(),
            why,
        }
    }

    fn lock_info(&self, cluster: &str) -> Result<Option<(LockInfo, i64)>, StateError> {
        let key = self.lock_key(cluster);
        let found = self.call(move |mut c| async move {
            let r = c.get(key, None).await?;
            let Some(kv) = r.kvs().first() else {
                return Ok(None);
            };
            let lease = kv.lease();
            let value = kv.value().to_vec();
            let left = if lease != 0 {
                Some(c.lease_time_to_live(lease, None).await?.ttl())
            } else {
                None
            };
            Ok(Some((value, lease, left)))
        })?;
        let Some((value, lease, left)) = found else {
            return Ok(None);
        };
        let holder: Holder = serde_json::from_slice(&value).map_err(|e| {
            self.err(format!(
                "the lock of cluster {cluster} names no readable holder: {e}"
            ))
        })?;
        Ok(Some((
            LockInfo {
                holder,
                lease_left_secs: left,
            },
            lease,
        )))
    }
}

/// Keeps the lease alive while the command runs; dropping it releases the lock.
struct EtcdLock {
    shared: Arc<Shared>,
    cluster: String,
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        self.keeper.abort();
        self.shared.held.lock().unwrap().remove(&self.cluster);
        let lease = self.lease;
        // Revoking deletes the lock key at once; if etcd is gone, the lease expires anyway.
        let _ = self
            .shared
            .call(move |mut c| async move { c.lease_revoke(lease).await.map(|_| ()) });
    }
}

async fn keep_alive(mut client: Client, lease: i64, cluster: String) {
    let period = Duration::from_secs((LEASE_TTL / 3).max(1) as u64);
    loop {
        match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match stream.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => {
                        tracing::error!(
                            "the lock of cluster {cluster} expired (its etcd lease is gone): the next state write will fail"
                        );
                        return;
                    }
                    _ => break,
                }
                tokio::time::sleep(period).await;
            },
            Err(e) => tracing::warn!("etcd: cannot renew the lock's lease: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl StateStore for Etcd {
    fn location(&self) -> String {
        self.shared.location.clone()
    }

    fn load_flat(&self, cluster: &str) -> Result<Option<Stored>, StateError> {
        let prefix = self.shared.state_prefix(cluster);
        let p = prefix.clone();
        let kvs = self.shared.call(move |mut c| async move {
            let r = c.get(p, Some(GetOptions::new().with_prefix())).await?;
            Ok(r.kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
                .collect::<Vec<_>>())
        })?;
        let mut flat = Flat::new();
        let mut rev = 0;
        for (k, v, mod_rev) in kvs {
            let k = String::from_utf8_lossy(&k);
            let Some(sub) = k.strip_prefix(&prefix) else {
                continue;
            };
            if sub == super::flat::META {
                rev = mod_rev;
            }
            let v = String::from_utf8(v)
                .map_err(|e| self.shared.err(format!("key {k} is not UTF-8: {e}")))?;
            flat.insert(sub.to_string(), v);
        }
        if rev == 0 {
            return Ok(None);
        }
        Ok(Some(Stored { flat, rev }))
    }

    fn commit(
        &self,
        cluster: &str,
        rev: i64,
        puts: &[(String, String)],
        deletes: &[String],
    ) -> Result<i64, StateError> {
        let prefix = self.shared.state_prefix(cluster);
        if rev == 0 {
            // A new record starts from nothing: keys an unfinished earlier write of a record
            // (no `meta` yet) left behind are not adopted. (Its own transaction: etcd refuses
            // a delete range and a put of the same key in one.)
            let when = self.shared.guards(cluster, 0);
            let p = prefix.clone();
            let ok = self.shared.call(move |mut c| async move {
                let r = c
                    .txn(Txn::new().when(when).and_then(vec![TxnOp::delete(
                        p,
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )]))
                    .await?;
                Ok(r.succeeded())
            })?;
            if !ok {
                return Err(self.shared.why_refused(cluster, rev));
            }
        }
        let mut ops: Vec<TxnOp> = deletes
            .iter()
            .map(|k| TxnOp::delete(format!("{prefix}{k}"), None))
            .collect();
        let mut meta = None;
        for (k, v) in puts {
            let op = TxnOp::put(format!("{prefix}{k}"), v.as_str(), None);
            if k == super::flat::META {
                meta = Some(op);
            } else {
                ops.push(op);
            }
        }
        // The record's revision is `meta`'s: it goes last, after any earlier chunks. Up to
        // MAX_TXN_OPS keys a write is one transaction. A larger one (an import, or a first
        // record, of a fleet past a hundred hosts) is written in chunks, each conditional on
        // the record still being at `rev` and on the lock; readers see the new `meta` only
        // once all its keys are there.
        let meta = meta.ok_or_else(|| self.shared.err("a write without its meta key".into()))?;
        let mut chunks: Vec<Vec<TxnOp>> = ops.chunks(MAX_TXN_OPS).map(|c| c.to_vec()).collect();
        match chunks.last_mut() {
            Some(last) if last.len() < MAX_TXN_OPS => last.push(meta),
            _ => chunks.push(vec![meta]),
        }
        let mut new_rev = rev;
        for chunk in chunks {
            let when = self.shared.guards(cluster, rev);
            let (ok, header_rev) = self.shared.call(move |mut c| async move {
                let r = c.txn(Txn::new().when(when).and_then(chunk)).await?;
                Ok((r.succeeded(), r.header().map(|h| h.revision()).unwrap_or(0)))
            })?;
            if !ok {
                return Err(self.shared.why_refused(cluster, rev));
            }
            new_rev = header_rev;
        }
        Ok(new_rev)
    }

    fn delete(&self, cluster: &str, rev: i64) -> Result<(), StateError> {
        let when = self.shared.guards(cluster, rev);
        let prefix = self.shared.state_prefix(cluster);
        let ok = self.shared.call(move |mut c| async move {
            let r = c
                .txn(Txn::new().when(when).and_then(vec![TxnOp::delete(
                    prefix,
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )]))
                .await?;
            Ok(r.succeeded())
        })?;
        if ok {
            Ok(())
        } else {
            Err(self.shared.why_refused(cluster, rev))
        }
    }

    fn lock(
        &self,
        cluster: &str,
        holder: &Holder,
        wait: Option<Duration>,
        waiting: &dyn Fn(&LockInfo),
    ) -> Result<StateLock, StateError> {
        let key = self.shared.lock_key(cluster);
        let value = serde_json::to_string(holder).expect("a holder serialises");
        let start = Instant::now();
        let mut told: Option<Holder> = None;
        loop {
            let (k, v) = (key.clone(), value.clone());
            let taken = self.shared.call(move |mut c| async move {
                let lease = c.lease_grant(LEASE_TTL, None).await?.id();
                let r = c
                    .txn(
                        Txn::new()
                            .when(vec![Compare::version(k.clone(), CompareOp::Equal, 0)])
                            .and_then(vec![TxnOp::put(
                                k,
                                v,
                                Some(PutOptions::new().with_lease(lease)),
                            )]),
                    )
                    .await?;
                if r.succeeded() {
                    Ok(Some(lease))
                } else {
                    // Unused: it expires by itself if this fails.
                    let _ = c.lease_revoke(lease).await;
                    Ok(None)
                }
            })?;
            if let Some(lease) = taken {
                self.shared
                    .held
                    .lock()
                    .unwrap()
                    .insert(cluster.to_string(), lease);
                let keeper = self.shared.rt().spawn(keep_alive(
                    self.shared.client.clone(),
                    lease,
                    cluster.to_string(),
                ));
                return Ok(StateLock::new(EtcdLock {
                    shared: self.shared.clone(),
                    cluster: cluster.to_string(),
                    lease,
                    keeper,
                }));
            }
            // Held: by whom (it may have been released in between: then try again).
            let Some((info, _)) = self.shared.lock_info(cluster)? else {
                continue;
            };
            match wait {
                Some(w) if start.elapsed() < w => {
                    if told.as_ref() != Some(&info.holder) {
                        waiting(&info);
                        told = Some(info.holder.clone());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                _ => {
                    return Err(StateError::Locked {
                        cluster: cluster.to_string(),
                        location: self.shared.location.clone(),
                        holder: Box::new(info),
                        waited: super::embedded::waited(wait, start),
                    });
                }
            }
        }
    }

    fn lock_info(&self, cluster: &str) -> Result<Option<LockInfo>, StateError> {
        Ok(self.shared.lock_info(cluster)?.map(|(i, _)| i))
    }

    fn force_release(&self, cluster: &str) -> Result<Option<LockInfo>, StateError> {
        let Some((info, lease)) = self.shared.lock_info(cluster)? else {
            return Ok(None);
        };
        let key = self.shared.lock_key(cluster);
        self.shared.call(move |mut c| async move {
            // Only the lock that was read: if someone took it since, leave theirs alone.
            c.txn(
                Txn::new()
                    .when(vec![Compare::lease(key.clone(), CompareOp::Equal, lease)])
                    .and_then(vec![TxnOp::delete(key, None)]),
            )
            .await?;
            if lease != 0 {
                let _ = c.lease_revoke(lease).await;
            }
            Ok(())
        })?;
        Ok(Some(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_endpoints_and_prefix_and_never_echo_a_password() {
        let u = parse("etcd://e1:2379,e2:2379/teams/prod?user=ops&password=hunter2").unwrap();
        assert_eq!(u.endpoints, ["e1:2379", "e2:2379"]);
        assert_eq!(u.prefix, "/teams/prod");
        assert_eq!(u.params["password"], "hunter2");
        assert_eq!(parse("etcd://e1:2379").unwrap().prefix, "/cloudflow");
        let e = parse("etcd://e1:2379/p?password=hunter2&colour=blue")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("unknown parameter") && !e.contains("hunter2"),
            "{e}"
        );
        let e = parse("etcd://ops:hunter2@e1:2379/p")
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("hunter2") && !e.contains("ops:"), "{e}");
        assert!(parse("etcd:///p").is_err());
        assert!(parse("etcd://e1/p").is_err());
    }
}
