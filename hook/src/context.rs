//! The build context: the checked tree streamed as a tar archive, straight from git's object
//! database to the Docker engine. Nothing is checked out, so the build never sees the server's
//! files, and symlinks stay symlinks.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bytes::Bytes;
use git2::Repository;
use tokio::sync::mpsc;

use crate::tree::{Entry, Manifest};

/// Modification time of every entry: fixed, so the same tree gives the same archive.
const MTIME: u64 = 946_684_800; // 2000-01-01T00:00:00Z
/// Bytes per chunk handed to the Docker client.
const CHUNK: usize = 256 * 1024;
/// Chunks buffered between the git reader and the upload; bounds memory to a few MiB.
const CHUNKS_IN_FLIGHT: usize = 8;

/// Writes into a channel of chunks, blocking when the reader is behind (backpressure).
struct ChunkWriter {
    sender: mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.sender.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the build stopped reading the context",
            )
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn write_archive(
    repository: &Repository,
    manifest: &Manifest,
    extra_dockerfile: Option<&str>,
    writer: ChunkWriter,
) -> std::io::Result<()> {
    let mut archive = tar::Builder::new(writer);
    archive.follow_symlinks(false);
    let git = |e: git2::Error| std::io::Error::other(e.message().to_owned());
    for entry in &manifest.entries {
        match entry {
            Entry::Directory { path } => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                archive.append_data(
                    &mut h,
                    Path::new(OsStr::from_bytes(path)),
                    std::io::empty(),
                )?;
            }
            Entry::File {
                path,
                blob,
                executable,
                ..
            } => {
                let blob = repository.find_blob(*blob).map_err(git)?;
                let content = blob.content();
                let mode = if *executable { 0o755 } else { 0o644 };
                let mut h = header(tar::EntryType::Regular, mode, content.len() as u64);
                archive.append_data(&mut h, Path::new(OsStr::from_bytes(path)), content)?;
            }
            Entry::Symlink { path, target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                archive.append_link(
                    &mut h,
                    Path::new(OsStr::from_bytes(path)),
                    Path::new(OsStr::from_bytes(target)),
                )?;
            }
        }
    }
    if let Some(dockerfile) = extra_dockerfile {
        let mut h = header(tar::EntryType::Regular, 0o644, dockerfile.len() as u64);
        archive.append_data(&mut h, "Dockerfile", dockerfile.as_bytes())?;
    }
    let mut writer = archive.into_inner()?;
    writer.flush()
}

/// Starts streaming the context of `manifest` on a blocking thread and returns the chunks.
/// `extra_dockerfile` (a rendered Runtime template) is added as `Dockerfile`.
///
/// The archive is produced as fast as the receiver takes it; if the receiver is dropped (the
/// build failed), the thread stops.
pub fn stream(
    git_dir: std::path::PathBuf,
    quarantine: Option<std::path::PathBuf>,
    manifest: Manifest,
    extra_dockerfile: Option<String>,
) -> mpsc::Receiver<Bytes> {
    let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let result = crate::tree::open(&git_dir, quarantine.as_ref())
            .map_err(|e| std::io::Error::other(e.message().to_owned()))
            .and_then(|repository| {
                write_archive(
                    &repository,
                    &manifest,
                    extra_dockerfile.as_deref(),
                    ChunkWriter {
                        sender,
                        buffer: Vec::with_capacity(CHUNK),
                    },
                )
            });
        if let Err(error) = result {
            tracing::debug!(%error, "build context stream ended early");
        }
    });
    receiver
}

/// The whole archive in memory, for tests.
#[cfg(test)]
pub fn to_vec(
    repository: &Repository,
    manifest: &Manifest,
    extra_dockerfile: Option<&str>,
) -> Vec<u8> {
    let (sender, mut receiver) = mpsc::channel(1024);
    write_archive(
        repository,
        manifest,
        extra_dockerfile,
        ChunkWriter {
            sender,
            buffer: Vec::new(),
        },
    )
    .expect("archive");
    let mut out = Vec::new();
    while let Ok(chunk) = receiver.try_recv() {
        out.extend_from_slice(&chunk);
    }
    out
}
