//! The `old new ref` lines git gives a hook, and what Slipway decides for each.

/// git's all-zero object id: the ref is created (as old) or deleted (as new).
const ZERO: &str = "0000000000000000000000000000000000000000";

/// One ref update of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A branch created or moved to `commit`.
    Branch {
        /// Branch name (without `refs/heads/`).
        branch: String,
        /// The new commit id.
        commit: String,
    },
    /// A branch deleted.
    Deletion {
        /// Branch name (without `refs/heads/`).
        branch: String,
    },
    /// A tag created, moved or deleted: stored by git, never built or deployed.
    Tag {
        /// Tag name (without `refs/tags/`).
        tag: String,
        /// Whether the push deletes it.
        deleted: bool,
    },
}

/// A push that Slipway refuses before building anything. The messages are what the pusher
/// reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// git gave a line that is not `old new ref`.
    #[error("malformed ref update from git")]
    Malformed,
    /// Notes and other refs that are neither branches nor tags, all of them.
    #[error("only branches and tags can be pushed here, not {0}")]
    NotBranch(String),
    /// The production branch would be deleted.
    #[error("the production branch `{0}` cannot be deleted")]
    ProductionDeletion(String),
}

impl UpdateError {
    /// How the pusher can fix it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Malformed => None,
            Self::NotBranch(_) => {
                Some("push branches (and tags) only, e.g. `git push origin main`")
            }
            Self::ProductionDeletion(_) => {
                Some("delete the Webspace instead, or change its `productionBranch` first")
            }
        }
    }
}

fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses every line and decides the whole push before anything is built: one refused ref
/// refuses all of them.
///
/// # Errors
/// The first refused ref.
pub fn decide(input: &str, production_branch: &str) -> Result<Vec<Update>, UpdateError> {
    let mut updates = Vec::new();
    let mut refused = Vec::new();
    for line in input.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.split(' ');
        let (Some(old), Some(new), Some(reference), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(UpdateError::Malformed);
        };
        if !is_object_id(old) || !is_object_id(new) {
            return Err(UpdateError::Malformed);
        }
        if let Some(tag) = reference.strip_prefix("refs/tags/") {
            updates.push(Update::Tag {
                tag: tag.to_owned(),
                deleted: new == ZERO,
            });
            continue;
        }
        let Some(branch) = reference.strip_prefix("refs/heads/") else {
            refused.push(format!("`{}`", reference.escape_debug()));
            continue;
        };
        if new == ZERO {
            if branch == production_branch {
                return Err(UpdateError::ProductionDeletion(branch.to_owned()));
            }
            updates.push(Update::Deletion {
                branch: branch.to_owned(),
            });
        } else {
            updates.push(Update::Branch {
                branch: branch.to_owned(),
                commit: new.to_owned(),
            });
        }
    }
    if !refused.is_empty() {
        return Err(UpdateError::NotBranch(refused.join(", ")));
    }
    Ok(updates)
}

/// Branch names that people push expecting production (Heroku deploys either).
const USUAL_PRODUCTION: [&str; 2] = ["main", "master"];

/// A hint for a push of `branch` that will become a preview, when its name says the pusher
/// probably meant production (`master` pushed to a webspace whose production branch is `main`).
pub fn production_hint(branch: &str, production_branch: &str) -> Option<String> {
    (branch != production_branch && USUAL_PRODUCTION.contains(&branch)).then(|| {
        format!(
            "`{branch}` is a preview here: the production branch is `{production_branch}`; push `{branch}:{production_branch}` to deploy it to production, or set `productionBranch: {branch}` on the Webspace"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn branches_creations_and_deletions() {
        let input = format!(
            "{ZERO} {A} refs/heads/main\n{A} {B} refs/heads/feature/x\n{A} {ZERO} refs/heads/old\n"
        );
        assert_eq!(
            decide(&input, "main"),
            Ok(vec![
                Update::Branch {
                    branch: "main".into(),
                    commit: A.into()
                },
                Update::Branch {
                    branch: "feature/x".into(),
                    commit: B.into()
                },
                Update::Deletion {
                    branch: "old".into()
                },
            ])
        );
    }

    #[test]
    fn master_pushed_to_a_main_webspace_gets_a_hint() {
        let hint = production_hint("master", "main").expect("a hint");
        assert!(hint.contains("push `master:main`"), "{hint}");
        assert!(hint.contains("productionBranch: master"), "{hint}");
        assert!(production_hint("main", "master").is_some());
        assert_eq!(production_hint("main", "main"), None);
        assert_eq!(production_hint("master", "master"), None);
        assert_eq!(production_hint("feature-x", "main"), None);
    }

    #[test]
    fn one_refused_ref_refuses_the_push() {
        let tag = format!(
            "{ZERO} {A} refs/heads/main\n{ZERO} {A} refs/tags/v1\n{B} {ZERO} refs/tags/v0\n"
        );
        assert_eq!(
            decide(&tag, "main"),
            Ok(vec![
                Update::Branch {
                    branch: "main".into(),
                    commit: A.into()
                },
                Update::Tag {
                    tag: "v1".into(),
                    deleted: false
                },
                Update::Tag {
                    tag: "v0".into(),
                    deleted: true
                },
            ])
        );
        let others =
            format!("{ZERO} {A} refs/heads/main\n{ZERO} {A} refs/notes/x\n{ZERO} {A} HEAD\n");
        assert_eq!(
            decide(&others, "main"),
            Err(UpdateError::NotBranch("`refs/notes/x`, `HEAD`".into()))
        );
        let delete = format!("{A} {ZERO} refs/heads/main\n");
        assert_eq!(
            decide(&delete, "main"),
            Err(UpdateError::ProductionDeletion("main".into()))
        );
        for bad in [
            "",
            "x y z",
            &format!("{A} {B}"),
            &format!("{A} {B} refs/heads/a extra"),
            &format!("{A} zz refs/heads/a"),
        ] {
            if bad.is_empty() {
                assert_eq!(decide(bad, "main"), Ok(vec![]));
            } else {
                assert_eq!(decide(bad, "main"), Err(UpdateError::Malformed), "{bad}");
            }
        }
    }
}
