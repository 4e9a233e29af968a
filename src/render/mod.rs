//! Templates: embedded in the binary, each overridable by a file of the same name in the
//! directory the spec's `templates:` names.

use std::path::Path;

use tera::{Context, Tera};

/// Every template cloudflow ships, by name.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("facts.sh", include_str!("../../templates/facts.sh.tera")),
    (
        "install-docker.sh",
        include_str!("../../templates/install-docker.sh.tera"),
    ),
    (
        "start-docker.sh",
        include_str!("../../templates/start-docker.sh.tera"),
    ),
    (
        "docker-proxy.conf",
        include_str!("../../templates/docker-proxy.conf.tera"),
    ),
    (
        "docker-proxy.env",
        include_str!("../../templates/docker-proxy.env.tera"),
    ),
    (
        "apt-proxy.conf",
        include_str!("../../templates/apt-proxy.conf.tera"),
    ),
    (
        "cloud-init.yaml",
        include_str!("../../templates/cloud-init.yaml.tera"),
    ),
    (
        "nginx-routes.conf",
        include_str!("../../templates/nginx-routes.conf.tera"),
    ),
    (
        "nginx-routes-kubernetes.conf",
        include_str!("../../templates/nginx-routes-kubernetes.conf.tera"),
    ),
    (
        "status-page.html",
        include_str!("../../templates/status-page.html.tera"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template (embedded or override) failed to parse or render.
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
}

/// `{{ v | sh }}`: one shell word that `sh` reads back as exactly `v` (single-quoted).
pub fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// `{{ v | systemd }}`: the inside of a double-quoted systemd value (`Environment="K=…"`) that
/// systemd reads back as exactly `v`: specifiers (`%`) doubled, `\` and `"` escaped.
pub fn systemd_quote(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
}

fn filter(
    f: fn(&str) -> String,
) -> impl Fn(&tera::Value, &std::collections::HashMap<String, tera::Value>) -> tera::Result<tera::Value>
+ Sync
+ Send {
    move |v, _| match v {
        tera::Value::String(s) => Ok(tera::Value::String(f(s))),
        other => Ok(tera::Value::String(f(&other.to_string()))),
    }
}

pub struct Renderer {
    tera: Tera,
}

fn describe(e: &tera::Error) -> String {
    crate::error::chain(e)
}

impl Renderer {
    /// The embedded templates, with `<dir>/<name>.tera` taking precedence where it exists.
    pub fn new(override_dir: Option<&Path>) -> Result<Self, RenderError> {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![]);
        tera.register_filter("sh", filter(sh_quote));
        tera.register_filter("systemd", filter(systemd_quote));
        for (name, body) in EMBEDDED {
            let custom = override_dir
                .map(|d| d.join(format!("{name}.tera")))
                .filter(|p| p.is_file());
            let body = match &custom {
                Some(p) => std::fs::read_to_string(p).map_err(|e| RenderError::Template {
                    name: p.display().to_string(),
                    message: e.to_string(),
                })?,
                None => body.to_string(),
            };
            tera.add_raw_template(name, &body)
                .map_err(|e| RenderError::Template {
                    name: custom
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| name.to_string()),
                    message: describe(&e),
                })?;
        }
        Ok(Renderer { tera })
    }

    pub fn render(&self, name: &str, ctx: &Context) -> Result<String, RenderError> {
        self.tera
            .render(name, ctx)
            .map_err(|e| RenderError::Template {
                name: name.to_string(),
                message: describe(&e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_directory_replaces_one_template_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("apt-proxy.conf.tera"),
            "custom {{ http_proxy }}\n",
        )
        .unwrap();
        let r = Renderer::new(Some(dir.path())).unwrap();
        let mut ctx = Context::new();
        ctx.insert("http_proxy", "http://p:1");
        assert_eq!(
            r.render("apt-proxy.conf", &ctx).unwrap(),
            "custom http://p:1\n"
        );
        ctx.insert("https_proxy", "http://p:1");
        ctx.insert("no_proxy", "");
        assert!(
            r.render("docker-proxy.env", &ctx)
                .unwrap()
                .contains("HTTP_PROXY='http://p:1'")
        );
    }

    #[test]
    fn a_broken_override_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("facts.sh.tera"), "{% if %}").unwrap();
        let e = Renderer::new(Some(dir.path())).err().unwrap().to_string();
        assert!(e.contains("facts.sh.tera"), "{e}");
    }
}
