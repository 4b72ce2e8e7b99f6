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
//! The namespace is the one the engine itself names for the container (its sandbox key, a file
//! under `/var/run/docker/netns/`), never one found through a process id, which could be reused
//! by another process. Entering it needs `CAP_SYS_ADMIN` and the engine's view of the files
//! (Slipway on the engine's host, not in a container of its own); without them
//! [`Namespace::of_container`] fails and the caller uses the published port.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

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

/// This process's own network namespace, where every thread is outside [`Namespace::socket`].
fn host() -> io::Result<&'static File> {
    static HOST: OnceLock<File> = OnceLock::new();
    if let Some(file) = HOST.get() {
        return Ok(file);
    }
    // `thread-self`: the calling thread is outside `socket`, so this is the host's namespace
    // (unlike `self`, the main thread's, it needs no assumption about that thread). A failure
    // (out of file descriptors, say) is not kept: the next call tries again.
    let file = File::open("/proc/thread-self/ns/net")?;
    Ok(HOST.get_or_init(|| file))
}

impl Namespace {
    /// Opens the network namespace the engine made for a container: `sandbox_key` as the
    /// engine reports it (`NetworkSettings.SandboxKey`).
    ///
    /// A namespace still open elsewhere in this process is shared, not opened again, so the
    /// router's tables hold one handle per container however often they are rebuilt.
    ///
    /// # Errors
    /// When the file is missing (the container stopped, or this process does not see the
    /// engine's files), is not a network namespace, is this process's own, or when this process
    /// may not enter it.
    pub fn of_container(sandbox_key: &str) -> io::Result<Arc<Self>> {
        static OPEN: Mutex<Vec<Weak<Namespace>>> = Mutex::new(Vec::new());
        let path = Path::new(sandbox_key);
        if !path.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a namespace file: {sandbox_key:?}"),
            ));
        }
        let found = Self::from_file(File::open(path)?)?;
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|weak| weak.strong_count() > 0);
        if let Some(shared) = open
            .iter()
            .filter_map(Weak::upgrade)
            .find(|namespace| **namespace == found)
        {
            return Ok(shared);
        }
        if found == Self::from_file(host()?.try_clone()?)? {
            return Err(io::Error::other(format!(
                "{sandbox_key} is this host's own network namespace"
            )));
        }
        // Once now, so a file that is no network namespace, or a missing right, shows here and
        // not on every request.
        found.enter(|| Ok(()))?;
        let found = Arc::new(found);
        open.push(Arc::downgrade(&found));
        Ok(found)
    }

    fn from_file(file: File) -> io::Result<Self> {
        let metadata = file.metadata()?;
        Ok(Self {
            file,
            identity: (metadata.dev(), metadata.ino()),
        })
    }

    /// A new TCP socket (IPv6 with `v6`) that belongs to this namespace for its whole life;
    /// connecting it does not need to be inside.
    ///
    /// # Errors
    /// When the namespace cannot be entered or the socket not made.
    pub fn socket(&self, v6: bool) -> io::Result<tokio::net::TcpSocket> {
        self.enter(|| {
            if v6 {
                tokio::net::TcpSocket::new_v6()
            } else {
                tokio::net::TcpSocket::new_v4()
            }
        })
    }

    /// Runs `make` (which must not block) with this thread in the namespace.
    fn enter<T>(&self, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        /// Returns the thread to the host's namespace however `make` ends, a panic included.
        struct Return(&'static File);
        impl Drop for Return {
            fn drop(&mut self) {
                if let Err(error) = setns(self.0, CloneFlags::CLONE_NEWNET) {
                    // Every later socket of this thread (other apps' backends, the registry,
                    // the engine) would be made in this container's namespace: stopping is
                    // the only safe way out.
                    eprintln!("slipway: cannot return to the host's network namespace: {error}");
                    std::process::abort();
                }
            }
        }
        let host = host()?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let _return = Return(host);
        make()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> Namespace {
        Namespace::from_file(File::open("/proc/thread-self/ns/net").expect("open")).expect("stat")
    }

    #[test]
    fn files_that_are_no_other_network_namespace_are_refused() {
        for key in ["", "var/run/docker/netns/abc", "../netns/abc"] {
            let error = Namespace::of_container(key).expect_err(key);
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{key:?}");
        }
        let missing = Namespace::of_container("/var/run/docker/netns/slipway-test-missing")
            .expect_err("missing");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        // Not a namespace at all: entering it fails.
        assert!(Namespace::of_container("/proc/self/cmdline").is_err());
        let own = Namespace::of_container("/proc/self/ns/net").expect_err("own");
        assert!(own.to_string().contains("own network namespace"), "{own}");
        assert_eq!(here(), here(), "the same namespace, two handles");
    }

    #[test]
    fn a_socket_made_in_a_namespace_leaves_the_thread_where_it_was() {
        let before = here();
        // This process's own namespace, entered directly (`of_container` refuses it): allowed
        // with CAP_SYS_ADMIN only, and either way the thread ends where it started.
        let _ = before.socket(false);
        assert_eq!(here(), before);
        if before.enter(|| Ok(())).is_ok() {
            let result = std::panic::catch_unwind(|| {
                let _ = before.enter(|| -> io::Result<()> { panic!("inside") });
            });
            assert!(result.is_err());
            assert_eq!(here(), before, "back after a panic too");
        }
    }
}
