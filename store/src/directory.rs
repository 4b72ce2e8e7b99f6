//! The single-host store: one YAML file per resource under `DATA/resources/<plural>/<name>.yaml`.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use notify::{RecursiveMode, Watcher};
use slipway_api::names;
use slipway_api::{Customer, Release, Runtime, Webspace};
use tokio::sync::broadcast;

use crate::{Change, Kind, Store, StoreError};

/// Changes buffered per subscriber before it is told it lagged (and re-lists). A burst of
/// `slipway apply` with hundreds of documents fits; a stuck consumer cannot grow memory.
const CHANGE_BUFFER: usize = 1024;

/// Resources kept as YAML files in a data directory, with the same apiVersion/kind/metadata/spec
/// as in Kubernetes, so `slipway apply -f` and `kubectl apply -f` take the same files.
#[derive(Clone)]
pub struct DirectoryStore {
    root: PathBuf,
    changes: broadcast::Sender<Change>,
    _watcher: Arc<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for DirectoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io {
        operation,
        path,
        source,
    }
}

impl DirectoryStore {
    /// Opens (creating if needed) the store under `data/resources` and starts watching it.
    ///
    /// # Errors
    /// When the directories cannot be created or the watcher (inotify) cannot start.
    pub fn open(data: &Path) -> Result<Self, StoreError> {
        let root = data.join("resources");
        for plural in [
            Customer::plural(&()),
            Webspace::plural(&()),
            Runtime::plural(&()),
            Release::plural(&()),
        ] {
            let dir = root.join(plural.as_ref());
            fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let sender = changes.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                for path in &event.paths {
                    if let Some(change) = change_for(path) {
                        // No receiver is not an error: nobody is watching yet.
                        let _ = sender.send(change);
                    }
                }
            })
            .map_err(|source| StoreError::Watch {
                path: root.display().to_string(),
                source,
            })?;
        watcher
            .watch(&root, RecursiveMode::Recursive)
            .map_err(|source| StoreError::Watch {
                path: root.display().to_string(),
                source,
            })?;
        Ok(Self {
            root,
            changes,
            _watcher: Arc::new(watcher),
        })
    }

    fn path<K: Kind>(&self, name: &str) -> Option<PathBuf> {
        names::validate_label(name).ok()?;
        Some(
            self.root
                .join(K::plural(&()).as_ref())
                .join(format!("{name}.yaml")),
        )
    }

    fn read<K: Kind>(path: &Path) -> Result<Option<K>, StoreError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", path)(e)),
        };
        serde_yaml::from_str(&text)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                path: path.display().to_string(),
                source,
            })
    }
}

/// Maps a path inside `resources/` to the change it means; temporary files (dot-prefixed) and
/// anything else are ignored.
fn change_for(path: &Path) -> Option<Change> {
    let file = path.file_name()?.to_str()?;
    let name = file.strip_suffix(".yaml")?;
    if file.starts_with('.') {
        return None;
    }
    let plural = path.parent()?.file_name()?.to_str()?;
    Some(Change {
        plural: plural.to_owned(),
        name: name.to_owned(),
    })
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same directory,
/// fsync, rename over the target, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io("create temporary file in", dir))?;
    file.write_all(bytes).map_err(io("write", path))?;
    file.as_file().sync_all().map_err(io("fsync", path))?;
    file.persist(path)
        .map_err(|e| io("rename onto", path)(e.error))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

impl Store for DirectoryStore {
    async fn get<K: Kind>(&self, name: &str) -> Result<Option<K>, StoreError> {
        match self.path::<K>(name) {
            Some(path) => Self::read(&path),
            None => Ok(None),
        }
    }

    async fn list<K: Kind>(&self) -> Result<Vec<K>, StoreError> {
        let dir = self.root.join(K::plural(&()).as_ref());
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(io("list", &dir))?
            .filter_map(|entry| {
                let file = entry.ok()?.file_name().into_string().ok()?;
                let name = file.strip_suffix(".yaml")?;
                names::validate_label(name).ok()?;
                Some(name.to_owned())
            })
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(resource) = self.get::<K>(&name).await? {
                out.push(resource);
            }
        }
        Ok(out)
    }

    async fn put<K: Kind>(&self, resource: &K) -> Result<bool, StoreError> {
        let name = resource.meta().name.clone().unwrap_or_default();
        resource.validate().map_err(|source| StoreError::Invalid {
            kind: K::kind(&()).into_owned(),
            name: name.escape_default().to_string(),
            source,
        })?;
        let path = self
            .path::<K>(&name)
            .expect("validated names are valid path components");
        let existing: Option<K> = Self::read(&path)?;
        let mut resource = resource.clone();
        let created = existing
            .as_ref()
            .and_then(|e| e.meta().creation_timestamp.clone())
            .unwrap_or(Time(Timestamp::now()));
        resource.meta_mut().creation_timestamp = Some(created);
        let yaml = serde_yaml::to_string(&resource).map_err(|source| StoreError::Corrupt {
            path: path.display().to_string(),
            source,
        })?;
        write_atomic(&path, yaml.as_bytes())?;
        Ok(existing.is_some())
    }

    async fn delete<K: Kind>(&self, name: &str) -> Result<bool, StoreError> {
        let Some(path) = self.path::<K>(name) else {
            return Ok(false);
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("fsync", dir))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("delete", &path)(e)),
        }
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_api::CustomerSpec;
    use std::time::Duration;

    fn alice() -> Customer {
        Customer::new(
            "alice",
            CustomerSpec {
                email: "alice@example.com".into(),
                display_name: None,
                ssh_keys: vec![],
            },
        )
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = DirectoryStore::open(data.path()).expect("opens");
        assert!(!store.put(&alice()).await.expect("put"));
        assert!(store.put(&alice()).await.expect("put again"), "existed");
        let got: Customer = store.get("alice").await.expect("get").expect("exists");
        assert_eq!(got.spec, alice().spec);
        assert!(got.metadata.creation_timestamp.is_some());
        assert_eq!(store.list::<Customer>().await.expect("list").len(), 1);
        assert!(store.delete::<Customer>("alice").await.expect("delete"));
        assert!(
            !store
                .delete::<Customer>("alice")
                .await
                .expect("delete again")
        );
        assert!(store.get::<Customer>("alice").await.expect("get").is_none());
    }

    #[tokio::test]
    async fn hostile_names_never_touch_the_filesystem() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = DirectoryStore::open(data.path()).expect("opens");
        for name in ["../../etc/passwd", "..", "a/b", ""] {
            assert!(store.get::<Customer>(name).await.expect("get").is_none());
            assert!(!store.delete::<Customer>(name).await.expect("delete"));
        }
        let mut bad = alice();
        bad.metadata.name = Some("../escape".into());
        assert!(matches!(
            store.put(&bad).await,
            Err(StoreError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn writes_from_another_store_are_announced() {
        let data = tempfile::tempdir().expect("tempdir");
        let watching = DirectoryStore::open(data.path()).expect("opens");
        let mut changes = watching.changes();
        let other = DirectoryStore::open(data.path()).expect("opens twice");
        other.put(&alice()).await.expect("put");
        let change = tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .expect("a change arrives")
            .expect("channel open");
        assert_eq!(
            change,
            Change {
                plural: "customers".into(),
                name: "alice".into()
            }
        );
    }
}
