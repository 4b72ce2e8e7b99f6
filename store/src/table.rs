//! `slipway get`: resources as a kubectl-style table, YAML or JSON.
//!
//! The table's columns are the CRD's printer columns, so `slipway get ws` and
//! `kubectl get ws` show the same thing.

use k8s_openapi::jiff::Timestamp;
use kube::CustomResourceExt;
use serde_json::Value;
use slipway_api::{Customer, Release, Runtime, Webspace};

use crate::{Kind, Store, StoreError, TableKind};

/// Output format of `slipway get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns (default).
    Table,
    /// YAML; a list is a `List` document like kubectl's.
    Yaml,
    /// JSON; a list is a `List` object like kubectl's.
    Json,
}

/// `slipway get` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// The named resource does not exist.
    #[error("{kind} `{name}` not found")]
    NotFound {
        /// Lowercase kind.
        kind: String,
        /// The name asked for, escaped.
        name: String,
    },
    /// Reading failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Renders one resource (`name` given) or all of a kind.
///
/// # Errors
/// [`ShowError::NotFound`] when a named resource does not exist; store failures.
pub async fn show<S: Store>(
    store: &S,
    kind: TableKind,
    name: Option<&str>,
    format: Format,
) -> Result<String, ShowError> {
    show_of(store, kind, name, None, format).await
}

/// [`show`], listing only what belongs to `webspace` (`spec.webspace`: its Releases) when
/// given.
///
/// # Errors
/// As [`show`].
pub async fn show_of<S: Store>(
    store: &S,
    kind: TableKind,
    name: Option<&str>,
    webspace: Option<&str>,
    format: Format,
) -> Result<String, ShowError> {
    match kind {
        TableKind::Customer => render::<S, Customer>(store, name, webspace, format).await,
        TableKind::Webspace => render::<S, Webspace>(store, name, webspace, format).await,
        TableKind::Runtime => render::<S, Runtime>(store, name, webspace, format).await,
        TableKind::Release => render::<S, Release>(store, name, webspace, format).await,
    }
}

async fn render<S: Store, K: Kind + CustomResourceExt>(
    store: &S,
    name: Option<&str>,
    webspace: Option<&str>,
    format: Format,
) -> Result<String, ShowError> {
    let items: Vec<K> = match name {
        Some(name) => match store.get::<K>(name).await? {
            Some(item) => vec![item],
            None => {
                return Err(ShowError::NotFound {
                    kind: K::kind(&()).to_ascii_lowercase(),
                    name: name.escape_default().to_string(),
                });
            }
        },
        None => store.list::<K>().await?,
    };
    let values: Vec<Value> = items
        .iter()
        .map(|item| serde_json::to_value(item).unwrap_or(Value::Null))
        .filter(|value| webspace.is_none_or(|w| value["spec"]["webspace"] == w))
        .collect();
    let document = match (name, values.as_slice()) {
        (Some(_), [one]) => one.clone(),
        _ => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": values}),
    };
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(&document).unwrap_or_default(),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        ),
        Format::Table => table::<K>(&values, Timestamp::now()),
    })
}

fn table<K: CustomResourceExt>(values: &[Value], now: Timestamp) -> String {
    let crd = K::crd();
    let columns = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.additional_printer_columns.clone())
        .unwrap_or_default();
    if values.is_empty() {
        return format!("No {} found.\n", crd.spec.names.plural);
    }
    let mut rows = vec![
        std::iter::once("NAME".to_owned())
            .chain(columns.iter().map(|c| c.name.to_uppercase()))
            .collect::<Vec<_>>(),
    ];
    for value in values {
        let mut row = vec![cell(lookup(value, ".metadata.name"), "string", now)];
        row.extend(
            columns
                .iter()
                .map(|c| cell(lookup(value, &c.json_path), &c.type_, now)),
        );
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Follows a simple `.a.b.c` JSON path, the only form our printer columns use.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(value, |v, key| v.get(key))
}

fn cell(value: Option<&Value>, kind: &str, now: Timestamp) -> String {
    match value {
        None | Some(Value::Null) => "<none>".to_owned(),
        Some(Value::String(s)) if kind == "date" => s
            .parse::<Timestamp>()
            .map(|t| age(now.as_second() - t.as_second()))
            .unwrap_or_else(|_| s.clone()),
        Some(Value::String(s)) => printable(s),
        Some(other) => other.to_string(),
    }
}

/// `text` with control characters (a newline, a terminal escape) written as escapes, so one
/// resource stays one line and cannot drive the terminal; quotes and other text stay as they are.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// kubectl's age format: `45s`, `12m`, `5h`, `3d`.
fn age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_uses_printer_columns() {
        let ws = serde_json::json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "Webspace",
            "metadata": {"name": "blog", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"customer": "alice"},
            "status": {"url": "http://blog.localhost:8080", "phase": "Ready"}
        });
        let now: Timestamp = "2026-01-01T00:05:00Z".parse().expect("timestamp");
        let out = table::<Webspace>(&[ws], now);
        let mut lines = out.lines();
        assert_eq!(
            lines
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>()),
            Some(vec!["NAME", "CUSTOMER", "RUNTIME", "URL", "PHASE", "AGE"])
        );
        assert_eq!(
            lines
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>()),
            Some(vec![
                "blog",
                "alice",
                "<none>",
                "http://blog.localhost:8080",
                "Ready",
                "5m"
            ])
        );
    }

    #[test]
    fn cells_escape_control_characters_only() {
        assert_eq!(
            printable("npm's default, \"quoted\""),
            "npm's default, \"quoted\""
        );
        assert_eq!(printable("two\nlines\u{1b}[31m"), "two\\nlines\\u{1b}[31m");
    }

    #[test]
    fn empty_listing_says_so() {
        assert_eq!(
            table::<Customer>(&[], Timestamp::UNIX_EPOCH),
            "No customers found.\n"
        );
    }
}
