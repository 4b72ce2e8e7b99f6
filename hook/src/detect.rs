//! Which shipped Runtime a tree without a Dockerfile looks like, from the files at its root.
//!
//! Used only when the Webspace has no `spec.runtime` (which always wins) and the tree has no
//! Dockerfile (which wins over both). Pure: it reads the entries [`crate::tree::walk`] already
//! listed, never a blob.

use crate::tree::Entry;

/// The root files that name a runtime, strongest evidence first: the first of them that the
/// tree has decides.
///
/// The order, and why:
/// 1. `go.mod` → `go`: it exists only to make a Go module, never as a helper of another stack.
/// 2. `composer.json`, `index.php` → `php`: PHP projects often carry a `package.json` for their
///    front-end assets (Laravel ships one for Vite), so PHP beats Node; and a root `index.php`
///    is PHP that the `php` runtime serves as is.
/// 3. `requirements.txt`, `pyproject.toml` → `python`: Python web apps, too, often carry a
///    `package.json` for assets (Django with Tailwind or webpack), so Python beats Node; they
///    come after Go and PHP because a Python file list is also used for tooling (docs, scripts)
///    in projects of other stacks.
/// 4. `package.json` → `node`.
/// 5. `index.html` → `static`: last, because apps of every stack keep an `index.html` (a Node
///    app's landing page, a PHP site's static home); it decides only when nothing else does.
///
/// A user whose tree says otherwise sets `spec.runtime` or commits a Dockerfile; the push output
/// names the runtime picked and the file it was picked from.
pub const MARKERS: [(&str, &str); 7] = [
    ("go.mod", "go"),
    ("composer.json", "php"),
    ("index.php", "php"),
    ("requirements.txt", "python"),
    ("pyproject.toml", "python"),
    ("package.json", "node"),
    ("index.html", "static"),
];

/// A runtime picked from the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    /// The runtime's name (a shipped one; a stored Runtime of the same name overrides it).
    pub runtime: &'static str,
    /// The root file it was picked from.
    pub marker: &'static str,
}

/// The runtime `entries` (a walked tree) look like, by [`MARKERS`]; `None` when no marker is at
/// the root. A marker counts as a regular file or a symlink (it stays a symlink in the build
/// context), not as a directory.
pub fn detect(entries: &[Entry]) -> Option<Detected> {
    let at_root = |name: &str| {
        entries.iter().any(|entry| match entry {
            Entry::File { path, .. } | Entry::Symlink { path, .. } => path == name.as_bytes(),
            Entry::Directory { .. } => false,
        })
    };
    MARKERS
        .iter()
        .find(|(marker, _)| at_root(marker))
        .map(|&(marker, runtime)| Detected { runtime, marker })
}

/// The marker files, for a hint: `go.mod, composer.json, ..., index.html`.
pub fn markers() -> String {
    MARKERS
        .iter()
        .map(|(marker, _)| *marker)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Entry {
        Entry::File {
            path: path.as_bytes().to_vec(),
            blob: git2::Oid::ZERO_SHA1,
            size: 1,
            executable: false,
        }
    }

    fn tree(paths: &[&str]) -> Vec<Entry> {
        paths.iter().map(|p| file(p)).collect()
    }

    fn runtime(paths: &[&str]) -> Option<(&'static str, &'static str)> {
        detect(&tree(paths)).map(|d| (d.runtime, d.marker))
    }

    #[test]
    fn each_marker_names_its_runtime() {
        for (marker, expected) in [
            ("package.json", "node"),
            ("requirements.txt", "python"),
            ("pyproject.toml", "python"),
            ("go.mod", "go"),
            ("composer.json", "php"),
            ("index.php", "php"),
            ("index.html", "static"),
        ] {
            assert_eq!(
                runtime(&["README.md", marker, "src/main.x"]),
                Some((expected, marker)),
                "{marker}"
            );
        }
    }

    #[test]
    fn every_marker_names_a_shipped_runtime() {
        let shipped: Vec<String> = slipway_runtimes::defaults()
            .into_iter()
            .filter_map(|r| r.metadata.name)
            .collect();
        for (marker, runtime) in MARKERS {
            assert!(shipped.iter().any(|s| s == runtime), "{marker} → {runtime}");
        }
    }

    #[test]
    fn a_language_marker_beats_index_html() {
        assert_eq!(
            runtime(&["index.html", "package.json"]),
            Some(("node", "package.json"))
        );
        assert_eq!(
            runtime(&["index.html", "requirements.txt"]),
            Some(("python", "requirements.txt"))
        );
        assert_eq!(runtime(&["index.html", "go.mod"]), Some(("go", "go.mod")));
        assert_eq!(
            runtime(&["index.html", "index.php"]),
            Some(("php", "index.php"))
        );
    }

    #[test]
    fn a_package_json_for_assets_does_not_make_a_php_or_python_app_node() {
        assert_eq!(
            runtime(&["package.json", "composer.json", "artisan"]),
            Some(("php", "composer.json"))
        );
        assert_eq!(
            runtime(&["package.json", "pyproject.toml", "manage.py"]),
            Some(("python", "pyproject.toml"))
        );
    }

    #[test]
    fn go_mod_beats_every_other_marker() {
        let all: Vec<&str> = MARKERS.iter().map(|(m, _)| *m).collect();
        assert_eq!(runtime(&all), Some(("go", "go.mod")));
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(
            runtime(&reversed),
            Some(("go", "go.mod")),
            "order of entries"
        );
    }

    #[test]
    fn php_beats_python_and_composer_json_is_named_first() {
        assert_eq!(
            runtime(&["requirements.txt", "index.php", "composer.json"]),
            Some(("php", "composer.json"))
        );
    }

    #[test]
    fn only_root_files_count() {
        assert_eq!(
            runtime(&["web/package.json", "docs/index.html", "a/go.mod"]),
            None
        );
        let directory = vec![Entry::Directory {
            path: b"package.json".to_vec(),
        }];
        assert_eq!(detect(&directory), None);
        let symlink = vec![Entry::Symlink {
            path: b"index.html".to_vec(),
            target: b"public/index.html".to_vec(),
        }];
        assert_eq!(
            detect(&symlink),
            Some(Detected {
                runtime: "static",
                marker: "index.html"
            })
        );
    }

    #[test]
    fn nothing_found_is_none_and_the_hint_lists_every_marker() {
        assert_eq!(runtime(&[]), None);
        assert_eq!(runtime(&["README.md", "app.rb", "Index.html"]), None);
        let hint = markers();
        for (marker, _) in MARKERS {
            assert!(hint.contains(marker), "{hint}");
        }
    }
}
