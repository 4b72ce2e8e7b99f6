//! Retiring what belonged to a deleted Webspace: its repository and its Releases.
//!
//! # Guarantees
//! When a Webspace is deleted, its repository moves out of `DATA/repos/` (to
//! `DATA/retired/<name>-<unix time>.git`, kept for the operator, never served) and its Releases
//! are deleted, so a Webspace created later under the same name, perhaps for another customer,
//! starts empty and never serves or hands out the old owner's code. Runs at start and on every
//! Webspace change.

use std::path::Path;

use slipway_api::{Release, Webspace};
use slipway_store::{Store, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Moves away the repositories and deletes the Releases of webspaces that no longer exist.
///
/// # Errors
/// When the store cannot be read or written.
pub async fn sweep<S: Store>(store: &S, data: &Path) -> Result<(), StoreError> {
    let repos = data.join("repos");
    if let Ok(entries) = std::fs::read_dir(&repos) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".git") else {
                continue;
            };
            if file.starts_with('.') || store.get::<Webspace>(name).await?.is_some() {
                continue;
            }
            let retired = data.join("retired");
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let target = retired.join(format!("{name}-{stamp}.git"));
            match std::fs::create_dir_all(&retired)
                .and_then(|()| std::fs::rename(entry.path(), &target))
            {
                Ok(()) => {
                    tracing::info!(webspace = name, to = %target.display(), "webspace deleted; repository retired")
                }
                Err(error) => {
                    tracing::error!(webspace = name, %error, "cannot retire the repository of a deleted webspace")
                }
            }
        }
    }
    for release in store.list::<Release>().await? {
        if store
            .get::<Webspace>(&release.spec.webspace)
            .await?
            .is_none()
        {
            let name = release.metadata.name.clone().unwrap_or_default();
            store.delete::<Release>(&name).await?;
            tracing::info!(release = %name, webspace = %release.spec.webspace, "webspace deleted; release removed");
        }
    }
    Ok(())
}

/// Sweeps now, then after every Webspace change, until `stop`.
pub async fn run<S: Store>(store: S, data: std::path::PathBuf, stop: CancellationToken) {
    let mut changes = store.changes();
    loop {
        if let Err(error) = sweep(&store, &data).await {
            tracing::error!(%error, "cannot retire deleted webspaces");
        }
        loop {
            let change = tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(change) if change.plural == "webspaces" => break,
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
    }
}
