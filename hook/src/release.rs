//! Release records: staged by pre-receive, promoted by post-receive (the records themselves are
//! [`slipway_api::releases`]).

use slipway_api::Release;

use crate::updates::Update;

pub use slipway_api::releases::*;

/// The releases of `webspace` that change because `update` was applied: the verified release
/// of the new commit is promoted (a staged one, where no operator verifies), staged or verified
/// leftovers of other commits are superseded, and promoted or
/// live ones stay (the operator supersedes them once the new one serves, so a new release that
/// fails leaves the previous one serving); a deleted branch's releases are all superseded.
pub fn after_push(releases: &[Release], webspace: &str, update: &Update) -> Vec<Release> {
    fn of_branch<'a>(
        releases: &'a [Release],
        webspace: &'a str,
        branch: &'a str,
    ) -> impl Iterator<Item = &'a Release> {
        releases
            .iter()
            .filter(move |r| r.spec.webspace == webspace && r.spec.branch == branch)
    }
    match update {
        Update::Branch { branch, commit } => {
            let mut changed = Vec::new();
            for release in of_branch(releases, webspace, branch) {
                let waiting = matches!(phase(release), Some(STAGED | VERIFIED));
                if release.spec.commit == *commit {
                    if waiting {
                        changed.push(with_phase(release, PROMOTED, None));
                    }
                } else if waiting {
                    changed.push(with_phase(
                        release,
                        SUPERSEDED,
                        Some("a newer push to the branch"),
                    ));
                }
            }
            changed
        }
        Update::Deletion { branch } => of_branch(releases, webspace, branch)
            .filter(|r| phase(r) != Some(SUPERSEDED))
            .map(|r| with_phase(r, SUPERSEDED, Some("the branch was deleted")))
            .collect(),
        Update::Tag { .. } => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_leaves_the_serving_release_to_the_operator() {
        let old = with_phase(
            &staged("blog", "main", "a1", "t1", "img:1", "k"),
            PROMOTED,
            None,
        );
        let new = with_phase(
            &staged("blog", "main", "b2", "t2", "img:2", "k"),
            VERIFIED,
            None,
        );
        let other = staged("blog", "dev", "c3", "t3", "img:3", "k");
        let leftover = with_phase(
            &staged("blog", "main", "d4", "t4", "img:4", "k"),
            VERIFIED,
            None,
        );
        let changed = after_push(
            &[old, new, other, leftover],
            "blog",
            &Update::Branch {
                branch: "main".into(),
                commit: "b2".into(),
            },
        );
        let phases: Vec<_> = changed
            .iter()
            .map(|r| (r.spec.commit.as_str(), phase(r).unwrap_or_default()))
            .collect();
        assert_eq!(
            phases,
            [("b2", PROMOTED), ("d4", SUPERSEDED)],
            "the verified release is promoted, a leftover of another push superseded, and the serving release stays until the new one serves"
        );
    }
}
