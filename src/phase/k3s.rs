//! Cluster phase on Kubernetes machines: install k3s over SSH from the spec's artifacts
//! directory (hosts may have no internet), start the first server, join the other servers
//! and the agents with its token, fetch its kubeconfig, and wait until every node is Ready.
//! Undo (bare metal): stop k3s and remove what cloudflow installed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudflow_provider_api::Role;
use sha2::Digest;

use super::Ctx;
use crate::commands::k3s::{self, K3sRole};
use crate::error::{Error, Result, collect_hosts};
use crate::exec::{ExecError, Target, for_each_host};
use crate::facts::Init;
use crate::plan::{PhaseName, Plan, Step};

const PHASE: &str = "cluster";

/// The artifacts directory as cloudflow uses it: the binary, the airgap images, and what the
/// images marker on a host says once both are in place.
pub struct K3sArtifacts {
    pub binary: PathBuf,
    pub binary_sha: String,
    pub images: Vec<PathBuf>,
    pub marker: String,
}

fn sha256_file(p: &Path) -> Result<String> {
    let bytes =
        std::fs::read(p).map_err(|e| Error::Usage(format!("cannot read {}: {e}", p.display())))?;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Read `kubernetes.k3s.artifacts`: `k3s` (the binary) and `k3s-airgap-images-*.tar*`.
pub fn k3s_artifacts(dir: &Path) -> Result<K3sArtifacts> {
    let binary = dir.join("k3s");
    if !binary.is_file() {
        return Err(Error::Usage(format!(
            "kubernetes.k3s.artifacts {}: no `k3s` binary there; put the k3s binary and \
             k3s-airgap-images-amd64.tar.zst from a k3s release in it (the hosts may have no internet)",
            dir.display()
        )));
    }
    let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Usage(format!("kubernetes.k3s.artifacts {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("k3s-airgap-images") && n.contains(".tar"))
        })
        .collect();
    images.sort();
    let binary_sha = sha256_file(&binary)?;
    let mut marker = format!("k3s {binary_sha}\n");
    for i in &images {
        marker.push_str(&format!(
            "{} {}\n",
            i.file_name().unwrap_or_default().to_string_lossy(),
            sha256_file(i)?
        ));
    }
    Ok(K3sArtifacts {
        binary,
        binary_sha,
        images,
        marker,
    })
}

/// What the servers' certificate is valid for: every manager's node address and the address
/// cloudflow reaches it on (a cloud instance's public address).
pub fn k3s_sans(machines: &[cloudflow_provider_api::Machine]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in machines.iter().filter(|m| m.role == Role::Manager) {
        for a in [node_ip(&Target::from(m)), m.ssh.address.clone()] {
            if !a.is_empty() && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// The address a node registers with (and others reach it on).
pub fn node_ip(t: &Target) -> String {
    super::bootstrap::advertise_ip(t)
}

fn init_of(ctx: &Ctx, host: &str) -> Init {
    ctx.facts_of(host).map(|f| f.init).unwrap_or(Init::None)
}

pub async fn run(ctx: &Ctx, plan: &Plan) -> Result<()> {
    let installs: Vec<(String, K3sRole, Vec<String>)> = plan
        .for_phase(PhaseName::Cluster)
        .filter_map(|a| match &a.step {
            Step::K3sInstall { role, changes } => Some((a.host.clone()?, *role, changes.clone())),
            _ => None,
        })
        .collect();
    let fetch = plan
        .for_phase(PhaseName::Cluster)
        .any(|a| a.step == Step::K3sKubeconfig);
    if installs.is_empty() && !fetch {
        return Ok(());
    }
    let dir =
        ctx.spec.kubernetes.k3s_artifacts.clone().ok_or_else(|| {
            Error::Usage("kubernetes.k3s.artifacts is not set in the spec".into())
        })?;
    let artifacts = k3s_artifacts(&dir)?;
    let machines = ctx.machines();
    let first = machines
        .iter()
        .find(|m| m.role == Role::Manager)
        .ok_or_else(|| Error::Other("no manager to run the first k3s server on".into()))?;
    let first_t = Target::from(first);
    let first_ip = node_ip(&first_t);
    let sans = k3s_sans(&machines);
    let password = {
        use secrecy::ExposeSecret;
        ctx.password.as_ref().map(|p| p.expose_secret().to_string())
    };
    let missing = |h: &str| ExecError::Local(format!("host {h} is not a known machine"));

    // 1. Binary, images and files, on every host that needs them, in parallel.
    let binary = if installs
        .iter()
        .any(|i| i.2.iter().any(|c| c.starts_with("install the k3s binary")))
    {
        Some(std::fs::read(&artifacts.binary).map_err(|e| {
            Error::Usage(format!("cannot read {}: {e}", artifacts.binary.display()))
        })?)
    } else {
        None
    };
    let results = for_each_host(&installs, ctx.concurrency, |(host, role, changes)| {
        let binary = binary.as_ref();
        let artifacts = &artifacts;
        let (first_ip, sans, password) = (&first_ip, &sans, &password);
        async move {
            let t = ctx.target(host).ok_or_else(|| missing(host))?;
            ctx.ui
                .host(host, &format!("k3s {role}: {}", changes.join(", ")));
            if let Some(b) = binary.filter(|_| {
                changes
                    .iter()
                    .any(|c| c.starts_with("install the k3s binary"))
            }) {
                ctx.exec
                    .run(&t, PHASE, &k3s::upload("k3s-binary", k3s::BIN, b, "755"))
                    .await?;
            }
            if changes.iter().any(|c| c == "copy the airgap images") {
                for image in &artifacts.images {
                    let bytes = std::fs::read(image).map_err(|e| {
                        ExecError::Local(format!("cannot read {}: {e}", image.display()))
                    })?;
                    let name = image.file_name().unwrap_or_default().to_string_lossy();
                    ctx.exec
                        .run(
                            &t,
                            PHASE,
                            &k3s::upload(
                                "k3s-images",
                                &format!("{}/{name}", k3s::IMAGES_DIR),
                                &bytes,
                                "644",
                            ),
                        )
                        .await?;
                }
                ctx.exec
                    .run(
                        &t,
                        PHASE,
                        &k3s::upload(
                            "k3s-images-marker",
                            k3s::IMAGES_MARKER,
                            artifacts.marker.as_bytes(),
                            "644",
                        ),
                    )
                    .await?;
            }
            let files = k3s::files(
                *role,
                &node_ip(&t),
                first_ip,
                sans,
                &ctx.spec.registry,
                password.as_deref(),
                &ctx.spec.proxy,
            );
            for (path, content) in files {
                ctx.exec
                    .run(
                        &t,
                        PHASE,
                        &k3s::upload("k3s-file", path, content.as_bytes(), "600"),
                    )
                    .await?;
            }
            Ok::<_, ExecError>(())
        }
    })
    .await;
    collect_hosts(results)?;

    // 2. The first server.
    if installs.iter().any(|i| i.1 == K3sRole::ServerInit) {
        ctx.exec
            .run(
                &first_t,
                PHASE,
                &k3s::start(K3sRole::ServerInit, init_of(ctx, &first.name)),
            )
            .await?;
    }
    ctx.exec
        .run(&first_t, PHASE, &k3s::wait_server(120))
        .await?;
    ctx.ui.host_done(&first.name, "k3s server running");

    // 3. The others join with its token (a secret: on stdin into a 0600 file, never argv).
    let joiners: Vec<&(String, K3sRole, Vec<String>)> = installs
        .iter()
        .filter(|i| i.1 != K3sRole::ServerInit)
        .collect();
    if !joiners.is_empty() {
        let token = ctx.exec.run(&first_t, PHASE, &k3s::read_token()).await?;
        let token = token.stdout.trim().to_string();
        let results = for_each_host(&joiners, ctx.concurrency, |(host, role, _)| {
            let token = &token;
            async move {
                let t = ctx.target(host).ok_or_else(|| missing(host))?;
                ctx.exec
                    .run(
                        &t,
                        PHASE,
                        &k3s::upload("k3s-token", k3s::TOKEN_FILE, token.as_bytes(), "600"),
                    )
                    .await?;
                ctx.exec
                    .run(&t, PHASE, &k3s::start(*role, init_of(ctx, host)))
                    .await?;
                ctx.ui.host_done(host, &format!("k3s {role} started"));
                Ok::<_, ExecError>(())
            }
        })
        .await;
        collect_hosts(results)?;
    }

    // 4. The kubeconfig, pointed at the first server where cloudflow reaches it (its SSH
    //    address: on a cloud, the public one), kept 0600 beside the state.
    let out = ctx
        .exec
        .run(&first_t, PHASE, &k3s::read_kubeconfig())
        .await?;
    write_private(
        &ctx.k3s_kubeconfig,
        &k3s::rewrite_kubeconfig(&out.stdout, &first_t.address),
    )?;

    // 5. Every host a Ready node.
    let names: Vec<String> = machines
        .iter()
        .map(|m| {
            ctx.facts_of(&m.name)
                .map(|f| f.hostname)
                .unwrap_or_else(|| m.name.clone())
        })
        .collect();
    let k = super::deploy::kubernetes(ctx).await?;
    k.wait_nodes(&names, Duration::from_secs(180)).await?;
    ctx.ui.info(&format!("k3s: {} node(s) Ready", names.len()));
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Other(format!("cannot create {}: {e}", dir.display())))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}

/// `down` on hosts cloudflow did not make: stop k3s and remove it, then forget the kubeconfig.
pub async fn undo(ctx: &Ctx, plan: &Plan) -> Result<()> {
    let hosts: Vec<String> = plan
        .for_phase(PhaseName::Cluster)
        .filter(|a| a.step == Step::K3sUninstall)
        .filter_map(|a| a.host.clone())
        .collect();
    let results = for_each_host(&hosts, ctx.concurrency, |host| async move {
        let t = ctx
            .target(host)
            .ok_or_else(|| ExecError::Local(format!("host {host} is not a known machine")))?;
        ctx.exec.run(&t, PHASE, &k3s::uninstall()).await?;
        ctx.ui.host_done(host, "k3s removed");
        Ok::<_, ExecError>(())
    })
    .await;
    collect_hosts(results)?;
    let _ = std::fs::remove_file(&ctx.k3s_kubeconfig);
    Ok(())
}
