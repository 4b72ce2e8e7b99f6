//! Backend sockets made inside an app container's network namespace.
//!
//! The router and the health checks reach a container on a single host without Docker's
//! userland proxy (`docker-proxy`, a process that copies every byte of a published port, and
//! halves the throughput of everything behind it) and without its bridge address, which the
//! engine hands to the next container it starts as soon as this one stops: a request could then
//! reach another customer's app.
//!
//! A [`Namespace`] is an open handle of the container's network namespace. A socket is created
//! in it (this thread enters the namespace, creates the socket, and comes back before anything
//! else runs on it) and then connected to the container's own address, like any other socket.
//! The handle keeps the namespace alive after the container stopped, with nothing listening in
//! it: connecting fails (a 502), and no other container can ever answer there, because a
//! namespace is never handed to another container.
//!
//! This needs the rights to enter another network namespace (root, or `CAP_SYS_ADMIN`); without
//! them [`Namespace::of_container`] fails and the caller uses the published port.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use nix::sched::{CloneFlags, setns};

/// An open network namespace of an app container.
#[derive(Debug)]
pub struct Namespace {
    file: File,
    /// Device and inode of the namespace: equal for two handles of the same namespace (the
    /// kernel keeps them unique while a handle is open).
    identity: (u64, u64),
}

impl PartialEq for Namespace {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

impl Eq for Namespace {}

/// This process's own network namespace, where every thread is outside [`Namespace::enter`].
fn host() -> io::Result<&'static File> {
    static HOST: OnceLock<Result<File, String>> = OnceLock::new();
    HOST.get_or_init(|| {
        // `thread-self`: the calling thread is outside `enter`, so this is the host's
        // namespace (unlike `self`, the main thread's, it needs no assumption about it).
        File::open("/proc/thread-self/ns/net").map_err(|e| format!("/proc/thread-self/ns/net: {e}"))
    })
    .as_ref()
    .map_err(|e| io::Error::other(e.clone()))
}

/// Whether `id` looks like a container id the engine gives (hex, at least 12 digits): an empty
/// or short one would match any process's control groups.
fn is_container_id(id: &str) -> bool {
    id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Namespace {
    /// Opens the network namespace of process `pid`, which the engine reported as the first
    /// process of container `id`.
    ///
    /// # Errors
    /// When `pid` is not (or no longer) a process of that container as this process sees it
    /// (it died and its number was reused, or the engine runs in another PID namespace), when
    /// the namespace is this process's own, or when this process may not enter it.
    pub fn of_container(pid: i64, id: &str) -> io::Result<Self> {
        if pid <= 0 || !is_container_id(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no process {pid} of container {id:?}"),
            ));
        }
        let file = File::open(format!("/proc/{pid}/ns/net"))?;
        // Read after opening: if the process ran when the namespace was opened and still is
        // the container's now, the namespace is the container's; a reused number fails here.
        let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        if !groups.lines().any(|line| line.contains(id)) {
            return Err(io::Error::other(format!(
                "process {pid} is not in container {id}'s control groups"
            )));
        }
        let namespace = Self::from_file(file)?;
        if namespace == Self::from_file(host()?.try_clone()?)? {
            return Err(io::Error::other(format!(
                "container {id} shares this host's network namespace"
            )));
        }
        // Once now, so a missing right shows here and not on every request.
        namespace.enter(|| Ok(()))?;
        Ok(namespace)
    }

    fn from_file(file: File) -> io::Result<Self> {
        let metadata = file.metadata()?;
        Ok(Self {
            file,
            identity: (metadata.dev(), metadata.ino()),
        })
    }

    /// Runs `make` (which must not block) with this thread in the namespace: sockets it
    /// creates belong to the namespace for their whole life.
    ///
    /// # Errors
    /// When the namespace cannot be entered, or `make` fails.
    pub fn enter<T>(&self, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let host = host()?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let made = make();
        if let Err(error) = setns(host, CloneFlags::CLONE_NEWNET) {
            // Every later socket of this thread (other apps' backends, the registry, the
            // engine) would be made in this container's namespace: stopping is the only
            // safe way out.
            eprintln!("slipway: cannot return to the host's network namespace: {error}");
            std::process::abort();
        }
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_outside_the_container_is_refused() {
        let me = i64::from(std::process::id());
        let error = Namespace::of_container(me, &"ab".repeat(32)).expect_err("not a container");
        assert!(error.to_string().contains("control groups"), "{error}");
    }

    #[test]
    fn ids_that_would_match_any_process_are_refused() {
        let me = i64::from(std::process::id());
        for id in ["", "0", "docker", "abc", "../../1"] {
            let error = Namespace::of_container(me, id).expect_err(id);
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{id}");
        }
        assert!(Namespace::of_container(0, &"ab".repeat(32)).is_err());
        assert!(Namespace::of_container(-1, &"ab".repeat(32)).is_err());
    }

    #[test]
    fn entering_comes_back_to_the_host() {
        let before = Namespace::from_file(File::open("/proc/thread-self/ns/net").expect("open"))
            .expect("stat");
        let host =
            Namespace::from_file(host().expect("host").try_clone().expect("dup")).expect("stat");
        // The host's own namespace: entering it is allowed for root only, and either way the
        // thread ends where it started.
        let _ = host.enter(|| Ok(()));
        let after = Namespace::from_file(File::open("/proc/thread-self/ns/net").expect("open"))
            .expect("stat");
        assert_eq!(before, after);
    }
}
