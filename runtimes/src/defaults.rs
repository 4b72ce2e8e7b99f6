//! The Runtimes Slipway ships: one YAML file per stack under `runtimes/defaults/`.

use slipway_api::Runtime;
use slipway_api::resources::Validate;

/// The shipped files, by name, in the order they are listed.
const SOURCES: [(&str, &str); 5] = [
    ("static.yaml", include_str!("../defaults/static.yaml")),
    ("node.yaml", include_str!("../defaults/node.yaml")),
    ("python.yaml", include_str!("../defaults/python.yaml")),
    ("php.yaml", include_str!("../defaults/php.yaml")),
    ("go.yaml", include_str!("../defaults/go.yaml")),
];

/// The Runtimes Slipway ships, parsed and validated: `static`, `node`, `python`, `php`, `go`.
///
/// Each is an ordinary Runtime resource (`apiVersion: slipway.dev/v1alpha1`, `kind: Runtime`);
/// a user overrides one by applying a Runtime of the same name.
///
/// # Panics
/// Only if a file this crate embeds is broken, which this module's tests rule out: every
/// shipped file is parsed, validated and rendered by them.
pub fn defaults() -> Vec<Runtime> {
    SOURCES
        .iter()
        .map(|(file, yaml)| {
            let runtime: Runtime = serde_yaml::from_str(yaml)
                .unwrap_or_else(|error| panic!("shipped runtime `{file}` does not parse: {error}"));
            if let Err(error) = runtime.validate() {
                panic!("shipped runtime `{file}` is invalid: {error}");
            }
            runtime
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{RenderContext, render};

    /// The type header, which deserializing a `Runtime` does not check.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Header {
        api_version: String,
        kind: String,
    }

    fn context() -> RenderContext {
        RenderContext::new("blog", "main").expect("both are DNS labels")
    }

    fn name(runtime: &Runtime) -> &str {
        runtime
            .metadata
            .name
            .as_deref()
            .expect("validated: has a name")
    }

    #[test]
    fn every_default_parses_validates_and_renders() {
        let runtimes = defaults();
        let names: Vec<&str> = runtimes.iter().map(name).collect();
        assert_eq!(names, ["static", "node", "python", "php", "go"]);
        for ((file, yaml), runtime) in SOURCES.iter().zip(&runtimes) {
            let header: Header = serde_yaml::from_str(yaml).expect("has a type header");
            assert_eq!(header.api_version, slipway_api::API_VERSION, "{file}");
            assert_eq!(header.kind, "Runtime", "{file}");
            assert_eq!(file.strip_suffix(".yaml"), Some(name(runtime)), "{file}");
            let spec = &runtime.spec;
            assert!(
                spec.description
                    .as_deref()
                    .is_some_and(|d| !d.contains('\n')),
                "{file}"
            );
            assert!(
                spec.dockerfile_template.starts_with("FROM {{baseImage}}"),
                "{file} starts from the base image"
            );
            let dockerfile = render(spec, &context()).expect("renders");
            let expected = [
                format!("ENV PORT={}", spec.port),
                format!("EXPOSE {}", spec.port),
            ];
            for line in expected {
                assert!(
                    dockerfile.lines().any(|l| l == line),
                    "{file} lacks `{line}`"
                );
            }
        }
    }

    /// The same tree pushed to two branches must build the same image, because the image is
    /// tagged by tree id.
    #[test]
    fn defaults_do_not_depend_on_webspace_or_branch() {
        let other = RenderContext::new("shop", "feature-x").expect("both are DNS labels");
        for runtime in defaults() {
            assert_eq!(
                render(&runtime.spec, &context()).expect("renders"),
                render(&runtime.spec, &other).expect("renders"),
                "{}",
                name(&runtime)
            );
        }
    }

    /// Tests build `static` on a base image made from busybox-static, with no network.
    #[test]
    fn static_needs_no_network_to_build() {
        let runtime = defaults()
            .into_iter()
            .find(|runtime| name(runtime) == "static")
            .expect("static ships");
        let dockerfile = render(&runtime.spec, &context()).expect("renders");
        let instructions: Vec<&str> = dockerfile
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert_eq!(
            instructions,
            ["FROM", "COPY", "ENV", "EXPOSE", "USER", "CMD"]
        );
    }

    #[test]
    fn rendered_defaults_match_snapshots() {
        for runtime in defaults() {
            let dockerfile = render(&runtime.spec, &context()).expect("renders");
            insta::assert_snapshot!(format!("dockerfile_{}", name(&runtime)), dockerfile);
        }
    }
}
