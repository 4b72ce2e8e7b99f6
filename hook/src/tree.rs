//! Walking the pushed tree with budgets, before a single blob is read.
//!
//! Sizes come from object headers, so a git bomb (a tree that references itself many times) or
//! an 8 GB blob of zeros is refused after reading a few tree objects, without inflating it.

use std::path::PathBuf;

use git2::{ObjectType, Oid, Repository};

/// Limits on a pushed tree.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Files, directories and links in the tree.
    pub max_entries: usize,
    /// Directory nesting.
    pub max_depth: usize,
    /// Size of one file.
    pub max_file_bytes: u64,
    /// Size of all files together: the build context.
    pub max_total_bytes: u64,
}

impl Default for Budget {
    /// 100,000 entries and 512 MiB hold any web app's source with its assets (the Linux kernel
    /// has ~90,000 files); depth 64 is far beyond real projects and keeps a nested-tree bomb
    /// short; 100 MiB per file admits large assets but not disk images.
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_depth: 64,
            max_file_bytes: 100 << 20,
            max_total_bytes: 512 << 20,
        }
    }
}

/// Longest symlink target read (Linux `PATH_MAX`).
const MAX_LINK_TARGET: u64 = 4096;

/// One entry of the build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Directory {
        /// Path relative to the root, `/`-separated, raw bytes as in git.
        path: Vec<u8>,
    },
    /// A regular file.
    File {
        /// Path relative to the root.
        path: Vec<u8>,
        /// Blob id.
        blob: Oid,
        /// Size from the object header.
        size: u64,
        /// Mode 100755.
        executable: bool,
    },
    /// A symbolic link, kept as a link: never followed.
    Symlink {
        /// Path relative to the root.
        path: Vec<u8>,
        /// Link target as stored in git.
        target: Vec<u8>,
    },
}

/// How the root `Dockerfile` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dockerfile {
    /// A regular file: build it.
    Present,
    /// A symlink: refused (it could point outside the tree).
    Symlink,
    /// None: use the Runtime.
    Missing,
}

/// The checked tree: what goes into the build context.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Entries in walk order (parents before children).
    pub entries: Vec<Entry>,
    /// Sum of file sizes.
    pub total_bytes: u64,
    /// The root Dockerfile.
    pub dockerfile: Dockerfile,
}

/// A tree Slipway will not build. The messages are what the pusher reads.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// More entries than [`Budget::max_entries`].
    #[error("the tree has more than {limit} files and directories")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// Deeper than [`Budget::max_depth`].
    #[error("`{path}` is nested deeper than {limit} directories")]
    TooDeep {
        /// Where.
        path: String,
        /// The limit.
        limit: usize,
    },
    /// A file over [`Budget::max_file_bytes`].
    #[error("`{path}` is {size} bytes, more than the {limit} bytes a file may have")]
    FileTooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Files over [`Budget::max_total_bytes`] together.
    #[error("the files add up to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// A submodule: its content is not in this repository.
    #[error("`{path}` is a submodule, which cannot be built")]
    Submodule {
        /// Where.
        path: String,
    },
    /// A symlink with an absurd target.
    #[error("`{path}` is a symlink with a target longer than {MAX_LINK_TARGET} bytes")]
    LinkTooLong {
        /// Where.
        path: String,
    },
    /// git could not read an object.
    #[error("cannot read the pushed objects")]
    Git(#[from] git2::Error),
}

impl TreeError {
    /// How the pusher can fix it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Submodule { .. } => Some(
                "vendor the submodule's files into the repository, or fetch them in the Dockerfile",
            ),
            Self::FileTooLarge { .. } | Self::TooLarge { .. } => {
                Some("keep large artifacts out of the repository (fetch them during the build)")
            }
            Self::TooManyEntries { .. } | Self::TooDeep { .. } => {
                Some("keep generated files and dependencies out of the repository")
            }
            Self::LinkTooLong { .. } | Self::Git(_) => None,
        }
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).escape_debug().to_string()
}

/// Walks `tree` breadth-first within `budget`. Blob contents are not read (except symlink
/// targets, after their size was checked).
///
/// # Errors
/// The first budget exceeded, a submodule, or an unreadable object.
pub fn walk(repository: &Repository, tree: Oid, budget: Budget) -> Result<Manifest, TreeError> {
    let odb = repository.odb()?;
    let mut entries = Vec::new();
    let mut total_bytes = 0u64;
    let mut dockerfile = Dockerfile::Missing;
    let mut pending = std::collections::VecDeque::from([(tree, Vec::<u8>::new(), 0usize)]);
    while let Some((id, prefix, depth)) = pending.pop_front() {
        let tree = repository.find_tree(id)?;
        for item in tree.iter() {
            if entries.len() >= budget.max_entries {
                return Err(TreeError::TooManyEntries {
                    limit: budget.max_entries,
                });
            }
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(item.name_bytes());
            let is_root_dockerfile = prefix.is_empty() && item.name_bytes() == b"Dockerfile";
            match (item.kind(), item.filemode()) {
                (Some(ObjectType::Tree), _) => {
                    if depth + 1 > budget.max_depth {
                        return Err(TreeError::TooDeep {
                            path: show(&path),
                            limit: budget.max_depth,
                        });
                    }
                    entries.push(Entry::Directory { path: path.clone() });
                    pending.push_back((item.id(), path, depth + 1));
                }
                (Some(ObjectType::Commit), _) => {
                    return Err(TreeError::Submodule { path: show(&path) });
                }
                (Some(ObjectType::Blob), 0o120000) => {
                    let (size, _) = odb.read_header(item.id())?;
                    if size as u64 > MAX_LINK_TARGET {
                        return Err(TreeError::LinkTooLong { path: show(&path) });
                    }
                    let target = repository.find_blob(item.id())?.content().to_vec();
                    if is_root_dockerfile {
                        dockerfile = Dockerfile::Symlink;
                    }
                    entries.push(Entry::Symlink { path, target });
                }
                (Some(ObjectType::Blob), mode) => {
                    let (size, _) = odb.read_header(item.id())?;
                    let size = size as u64;
                    if size > budget.max_file_bytes {
                        return Err(TreeError::FileTooLarge {
                            path: show(&path),
                            size,
                            limit: budget.max_file_bytes,
                        });
                    }
                    total_bytes += size;
                    if total_bytes > budget.max_total_bytes {
                        return Err(TreeError::TooLarge {
                            limit: budget.max_total_bytes,
                        });
                    }
                    if is_root_dockerfile {
                        dockerfile = Dockerfile::Present;
                    }
                    entries.push(Entry::File {
                        path,
                        blob: item.id(),
                        size,
                        executable: mode & 0o111 != 0,
                    });
                }
                _ => {}
            }
        }
    }
    Ok(Manifest {
        entries,
        total_bytes,
        dockerfile,
    })
}

/// Opens the repository a hook runs in, with the pushed objects still in git's quarantine.
///
/// # Errors
/// When the repository cannot be opened or the quarantine added.
pub fn open(
    git_dir: &std::path::Path,
    quarantine: Option<&PathBuf>,
) -> Result<Repository, git2::Error> {
    let repository = Repository::open_bare(git_dir)?;
    if let Some(quarantine) = quarantine {
        // Until pre-receive accepts, receive-pack keeps the pushed objects here; without this
        // the new commits are invisible.
        repository
            .odb()?
            .add_disk_alternate(&quarantine.to_string_lossy())?;
    }
    // receive-pack already verified every object's hash (CRATE-NOTES: 2.4x faster reads).
    git2::opts::strict_hash_verification(false);
    Ok(repository)
}
