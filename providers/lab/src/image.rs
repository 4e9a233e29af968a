//! The lab host image: a Debian root filesystem made with `debootstrap` from this machine's own
//! apt mirror and suite, imported with `docker import` (nothing can be pulled from a hub here).

use std::path::Path;
use std::process::Command;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use cloudflow_provider_api::{Progress, ProviderError};
use futures::StreamExt;

/// Bump the suffix when the package list changes, so old images are not reused.
pub const DEFAULT_IMAGE: &str = "cloudflow-lab-host:v1";
const PACKAGES: &str = "openssh-server,ca-certificates,iproute2,procps,gnupg";

fn missing(message: impl Into<String>, hint: impl Into<String>) -> ProviderError {
    ProviderError::Missing {
        provider: "lab",
        message: message.into(),
        hint: hint.into(),
    }
}

/// Make sure `image` exists locally; build it when it is the default image.
pub async fn ensure(
    docker: &Docker,
    image: &str,
    progress: &dyn Progress,
) -> Result<(), ProviderError> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    if image != DEFAULT_IMAGE {
        return Err(missing(
            format!("lab host image {image} does not exist locally"),
            format!(
                "build it, or remove `image:` from the spec to let cloudflow build {DEFAULT_IMAGE}"
            ),
        ));
    }
    build(docker, image, progress).await
}

async fn build(docker: &Docker, image: &str, progress: &dyn Progress) -> Result<(), ProviderError> {
    let debootstrap = which("debootstrap").ok_or_else(|| {
        missing(
            format!(
                "building the lab host image {image} needs debootstrap, which is not installed"
            ),
            "apt-get install -y debootstrap",
        )
    })?;
    let sources = read_apt_sources();
    let mirror = apt_mirror_from_sources(&sources).ok_or_else(|| {
        missing(
            "no Debian mirror found in this machine's apt sources (/etc/apt/sources.list*)",
            "configure apt on this machine, or build the image yourself and set provider.lab.image",
        )
    })?;
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let suite = host_suite(&os_release).unwrap_or_else(|| "bookworm".to_string());

    let tmp = tempfile::Builder::new()
        .prefix("cloudflow-lab-rootfs")
        .tempdir_in("/var/tmp")
        .map_err(|e| {
            missing(
                format!("cannot make a build directory in /var/tmp: {e}"),
                "free some disk space",
            )
        })?;
    let rootfs = tmp.path().join("rootfs");
    progress.step(&format!(
        "building lab host image {image}: debootstrap {suite} from {mirror} (about 2 minutes, once)"
    ));
    let out = tokio::process::Command::new(&debootstrap)
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            &suite,
        ])
        .arg(&rootfs)
        .arg(&mirror)
        .output()
        .await
        .map_err(|e| {
            missing(
                format!("cannot run debootstrap: {e}"),
                "run cloudflow as root",
            )
        })?;
    if !out.status.success() {
        return Err(missing(
            format!(
                "debootstrap {suite} failed ({}): {}",
                out.status,
                tail(&out.stderr, &out.stdout)
            ),
            "check that this machine's apt mirror is reachable and that cloudflow runs as root",
        ));
    }
    // Keep images small and apt quiet about the build host's caches.
    let _ = std::fs::remove_dir_all(rootfs.join("var/cache/apt/archives"));
    let tarball = tmp.path().join("rootfs.tar");
    progress.step(&format!("importing {image}"));
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .map_err(|e| missing(format!("cannot run tar: {e}"), "apt-get install -y tar"))?;
    if !status.success() {
        return Err(missing(
            format!("tar of the lab rootfs failed ({status})"),
            "check free disk space in /var/tmp",
        ));
    }
    import(docker, image, &tarball).await
}

async fn import(docker: &Docker, image: &str, tarball: &Path) -> Result<(), ProviderError> {
    let (repo, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    let bytes = tokio::fs::read(tarball).await.map_err(|e| {
        missing(
            format!("cannot read {}: {e}", tarball.display()),
            "check /var/tmp",
        )
    })?;
    let opts = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .build();
    let mut stream = docker.create_image(Some(opts), Some(bollard::body_full(bytes.into())), None);
    while let Some(item) = stream.next().await {
        item.map_err(|e| ProviderError::Api {
            provider: "lab",
            action: format!("import {image}"),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.is_empty() { stdout } else { stderr };
    let s = String::from_utf8_lossy(text);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn read_apt_sources() -> String {
    let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "list" || ext == "sources" {
                text.push('\n');
                text.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
            }
        }
    }
    text
}

/// The first Debian mirror in apt sources, one-line (`deb URL suite ...`) or deb822 (`URIs:`)
/// style; security and updates archives are skipped. Pure, for tests.
pub fn apt_mirror_from_sources(text: &str) -> Option<String> {
    let usable = |u: &str| {
        (u.starts_with("http://") || u.starts_with("https://")) && !u.contains("security")
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("deb ") {
            let url = rest.split_whitespace().find(|w| !w.starts_with('['))?;
            if usable(url) {
                return Some(url.trim_end_matches('/').to_string());
            }
        } else if let Some(rest) = line.strip_prefix("URIs:")
            && let Some(url) = rest.split_whitespace().find(|u| usable(u))
        {
            return Some(url.trim_end_matches('/').to_string());
        }
    }
    None
}

/// The host's own release codename from /etc/os-release. Pure, for tests.
pub fn host_suite(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_skips_security() {
        let text = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n\nTypes: deb\nURIs: http://mirror.example/debian/\n";
        assert_eq!(
            apt_mirror_from_sources(text).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn mirror_from_one_line_sources_with_options() {
        let text = "# comment\ndeb [arch=amd64] https://m.example/debian bookworm main\n";
        assert_eq!(
            apt_mirror_from_sources(text).as_deref(),
            Some("https://m.example/debian")
        );
        assert_eq!(apt_mirror_from_sources("deb cdrom:/ x main\n"), None);
    }

    #[test]
    fn suite_from_os_release() {
        assert_eq!(
            host_suite("ID=debian\nVERSION_CODENAME=trixie\n").as_deref(),
            Some("trixie")
        );
        assert_eq!(host_suite("ID=debian\n"), None);
    }
}
