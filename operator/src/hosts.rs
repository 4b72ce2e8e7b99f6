//! Host names: the production branch answers on `{webspace}.{domain}` and `spec.domains`; any
//! other branch on `{label}.{webspace}.{domain}`, or `{label}--{webspace}.{domain}` in the flat
//! style (one `*.{domain}` certificate covers it).

use slipway_api::Webspace;
use slipway_api::names::branch_label;

/// How preview hosts are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostStyle {
    /// `{label}.{webspace}.{domain}`.
    #[default]
    Nested,
    /// `{label}--{webspace}.{domain}`.
    Flat,
}

/// Settings that shape host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    /// The platform's domain, e.g. `localhost` or `apps.example.com`.
    pub domain: String,
    /// Preview host style.
    pub style: HostStyle,
}

impl Hosts {
    /// The hosts `branch` of `webspace` answers on; empty when it is a preview and the webspace
    /// turned previews off.
    pub fn for_branch(&self, webspace: &Webspace, branch: &str) -> Vec<String> {
        let name = webspace.metadata.name.as_deref().unwrap_or_default();
        if branch == webspace.spec.production_branch {
            let mut hosts = vec![format!("{name}.{}", self.domain)];
            hosts.extend(webspace.spec.domains.iter().cloned());
            return hosts;
        }
        if !webspace.spec.previews {
            return Vec::new();
        }
        let label = branch_label(branch);
        match self.style {
            HostStyle::Nested => vec![format!("{label}.{name}.{}", self.domain)],
            HostStyle::Flat => vec![format!("{label}--{name}.{}", self.domain)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_api::WebspaceSpec;

    fn blog(previews: bool) -> Webspace {
        let mut spec: WebspaceSpec =
            serde_json::from_value(serde_json::json!({"customer": "alice"})).expect("spec");
        spec.domains = vec!["blog.example.org".into()];
        spec.previews = previews;
        Webspace::new("blog", spec)
    }

    #[test]
    fn production_previews_and_flat_previews() {
        let hosts = Hosts {
            domain: "localhost".into(),
            style: HostStyle::Nested,
        };
        assert_eq!(
            hosts.for_branch(&blog(true), "main"),
            ["blog.localhost", "blog.example.org"]
        );
        assert_eq!(
            hosts.for_branch(&blog(true), "feature-x"),
            ["feature-x.blog.localhost"]
        );
        let flat = Hosts {
            style: HostStyle::Flat,
            ..hosts.clone()
        };
        assert_eq!(
            flat.for_branch(&blog(true), "feature-x"),
            ["feature-x--blog.localhost"]
        );
        assert!(hosts.for_branch(&blog(false), "feature-x").is_empty());
        let odd = hosts.for_branch(&blog(true), "Feature/X");
        assert!(odd[0].starts_with("feature-x-") && odd[0].ends_with(".blog.localhost"));
    }
}
