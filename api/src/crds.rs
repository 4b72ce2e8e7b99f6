//! The CustomResourceDefinitions, rendered from the Rust types. `deploy/crds/` holds this
//! output; a test fails when the files drift from the types.

use kube::CustomResourceExt;

use crate::{Customer, Release, Runtime, Webspace};

/// Every CRD as `(file name, YAML)`, in a stable order.
pub fn documents() -> Vec<(String, String)> {
    [
        Customer::crd(),
        Webspace::crd(),
        Runtime::crd(),
        Release::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_yaml::to_string(&crd).unwrap_or_default();
        (format!("{name}.yaml"), yaml)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn deploy_crds_match_the_rust_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        for (file, yaml) in super::documents() {
            let on_disk = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                on_disk == yaml,
                "deploy/crds/{file} is out of date: run `cargo run -- crds --write deploy/crds`"
            );
        }
    }
}
