//! Names: resource names, repository paths from SSH commands, branch names as DNS labels.
//!
//! Every name a client sends is hostile until it passes one of these functions; what comes out
//! is safe to use as a path component, an image tag, a host label or a Kubernetes name.

use sha2::{Digest, Sha256};

/// Longest DNS label (RFC 1123).
pub const MAX_LABEL: usize = 63;
/// Length of the hash suffix added to a branch label that had to be changed or shortened:
/// 8 hex digits (32 bits) make an accidental collision between two branches of one webspace
/// vanishingly unlikely while leaving 54 characters of the readable name.
const HASH_SUFFIX: usize = 8;

/// A name that is not a DNS-1123 label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{shown}` is not a valid name: {reason}")]
pub struct InvalidName {
    /// The offending name, escaped for display.
    pub shown: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks that `name` is a DNS-1123 label: 1 to 63 characters of `[a-z0-9-]`, starting and
/// ending with a letter or digit. Customers, webspaces and runtimes are named this way, so a
/// name is safe as a path component, a host label, an image repository and a Kubernetes name.
pub fn validate_label(name: &str) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            shown: name.escape_default().to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > MAX_LABEL {
        return fail("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("only lowercase letters, digits and `-` are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("it must start and end with a letter or digit");
    }
    Ok(())
}

/// Checks a DNS name (for `Webspace.spec.domains`): dot-separated labels, at most 253 characters.
pub fn validate_domain(domain: &str) -> Result<(), InvalidName> {
    if domain.len() > 253 || domain.is_empty() {
        return Err(InvalidName {
            shown: domain.escape_default().to_string(),
            reason: "a domain has 1 to 253 characters",
        });
    }
    domain.split('.').try_for_each(validate_label)
}

/// Turns the repository argument of `git-receive-pack` / `git-upload-pack` into a webspace name.
///
/// `blog`, `blog.git`, `/blog.git` and `~/blog.git` all mean webspace `blog`. Anything else (more
/// path components, `..`, control characters, uppercase, an over-long name) is refused, so the
/// result can be joined to the repositories directory without escaping it.
pub fn webspace_from_repository(argument: &str) -> Result<String, InvalidName> {
    let path = argument
        .strip_prefix("~/")
        .or_else(|| argument.strip_prefix('/'))
        .unwrap_or(argument);
    let name = path.strip_suffix(".git").unwrap_or(path);
    validate_label(name)?;
    Ok(name.to_owned())
}

/// Maps a branch name to a DNS label, deterministically.
///
/// Lowercase ASCII letters and digits are kept, every other run of characters becomes one `-`,
/// and leading/trailing `-` are dropped. When that changed anything (case included) or the name
/// had to be cut to fit 63 characters, an 8-hex-digit hash of the original name is appended, so
/// `Feature` and `feature` (or two long names sharing a prefix) get distinct labels.
pub fn branch_label(branch: &str) -> String {
    let mut label = String::with_capacity(branch.len().min(MAX_LABEL));
    let mut pending_dash = false;
    for c in branch.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_dash && !label.is_empty() {
                label.push('-');
            }
            pending_dash = false;
            label.push(c);
        } else {
            pending_dash = true;
        }
    }
    if label == branch && label.len() <= MAX_LABEL {
        return label;
    }
    let hash = Sha256::digest(branch.as_bytes());
    let suffix: String = hash
        .iter()
        .take(HASH_SUFFIX / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = MAX_LABEL - HASH_SUFFIX - 1;
    if label.len() > keep {
        label.truncate(keep);
        while label.ends_with('-') {
            label.pop();
        }
    }
    if label.is_empty() {
        format!("b-{suffix}")
    } else {
        format!("{label}-{suffix}")
    }
}

/// Whether `name` is an environment variable name an app can be given: a letter or `_`, then
/// letters, digits and `_`.
pub fn is_env_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Longest Kubernetes object name made here.
const MAX_OBJECT_NAME: usize = 63;

/// A DNS-1035 label made from `wanted`: kept when it fits and starts with a letter, else cut
/// and given a hash of the whole, so two long names never collide.
pub fn object_name(wanted: &str) -> String {
    if wanted.len() <= MAX_OBJECT_NAME && wanted.starts_with(|c: char| c.is_ascii_lowercase()) {
        return wanted.to_owned();
    }
    let hash = format!("{:x}", sha2::Sha256::digest(wanted.as_bytes()));
    let body = wanted.trim_start_matches(|c: char| !c.is_ascii_lowercase());
    let cut = body
        .get(..body.len().min(MAX_OBJECT_NAME - 2 - 9))
        .unwrap_or(body)
        .trim_end_matches('-');
    format!("s-{cut}-{}", hash.get(..8).unwrap_or(&hash))
}

/// The namespace of a customer's apps.
pub fn namespace_name(customer: &str) -> String {
    object_name(&format!("slipway-{customer}"))
}

/// The Secret in the customer's namespace holding a webspace's config (`config:set`).
pub fn config_secret_name(webspace: &str) -> String {
    object_name(&format!("slipway-config-{webspace}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_accept_dns_names_only() {
        for ok in ["a", "blog", "my-blog-2", "0abc", &"a".repeat(63)] {
            assert_eq!(validate_label(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-blog",
            "blog-",
            "Blog",
            "blog.git",
            "a/b",
            "..",
            "blog\0",
            "blög",
            "b log",
            &"a".repeat(64),
        ] {
            assert!(validate_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repository_arguments_map_to_webspaces() {
        for ok in [
            "blog",
            "blog.git",
            "/blog.git",
            "~/blog.git",
            "/blog",
            "~/blog",
        ] {
            assert_eq!(webspace_from_repository(ok).as_deref(), Ok("blog"), "{ok}");
        }
    }

    #[test]
    fn hostile_repository_arguments_are_refused() {
        for bad in [
            "",
            "/",
            "..",
            "../blog.git",
            "/../blog.git",
            "/etc/passwd",
            "blog/../../x",
            "//blog.git",
            "~root/blog.git",
            "~/~/blog.git",
            "blog.git.git",
            "blog\0.git",
            "blog\n.git",
            "'blog.git'",
            "\"blog\"",
            "BLOG.git",
            "blog\u{ff0e}git",
            "blog.git/",
            "-blog",
            "--upload-pack=sh",
            &"a".repeat(300),
        ] {
            assert!(webspace_from_repository(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plain_branch_names_are_their_own_label() {
        assert_eq!(branch_label("main"), "main");
        assert_eq!(branch_label("feature-x"), "feature-x");
        assert_eq!(branch_label("42"), "42");
    }

    #[test]
    fn changed_branch_names_get_a_hash_suffix() {
        let label = branch_label("Feature/X");
        assert!(label.starts_with("feature-x-"), "{label}");
        assert_ne!(branch_label("Feature"), branch_label("feature"));
        assert_ne!(branch_label("a/b"), branch_label("a-b"));
        assert_eq!(branch_label("Feature/X"), label, "deterministic");
    }

    #[test]
    fn hostile_branch_names_become_valid_distinct_labels() {
        let long_a = format!("{}a", "x".repeat(249));
        let long_b = format!("{}b", "x".repeat(249));
        let hostile = [
            "$(rm -rf /)",
            "`id`",
            "a;b|c&d",
            "\u{0430}dmin", // Cyrillic a
            "admin",
            "ma\u{0456}n", // Cyrillic i
            "-",
            "...",
            "日本語",
            "emoji-🚀",
            "UPPER",
            "upper",
            long_a.as_str(),
            long_b.as_str(),
            "a--b",
            "a-b",
        ];
        let labels: Vec<String> = hostile.iter().map(|b| branch_label(b)).collect();
        for (branch, label) in hostile.iter().zip(&labels) {
            assert_eq!(validate_label(label), Ok(()), "{branch:?} -> {label:?}");
        }
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "labels collide: {labels:?}");
    }
}
