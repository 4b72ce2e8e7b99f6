//! What a tenant's Dockerfile may ask of the shared build engine.
//!
//! Every customer's build runs on one engine (BuildKit in dockerd). Some Dockerfile features
//! reach past the tenant's own build, so they are refused before the build starts:
//! - `ADD` from a URL or a git repository: the engine fetches it from the build host's own
//!   network (loopback services, the cloud metadata endpoint). `RUN wget` goes through the build
//!   network, which the host's firewall restricts, so that is the way to fetch.
//! - `RUN --mount=type=cache|secret|ssh`: BuildKit shares cache mounts between every build on the
//!   engine (keyed by id, default the target path), and secrets and SSH agents are not provided.
//! - `RUN --network=host`, `--security=insecure`.
//! - the `# syntax=` directive (a frontend image runs inside the build engine and can ask it for
//!   anything above) and `# escape=` (so this scanner reads lines as BuildKit does).
//! - `FROM`, `COPY --from` and `RUN --mount=from=` naming another webspace's image: by its
//!   registry name, its local tag, or an image ID.
//!
//! The scanner errs towards refusing: it never needs to understand a line to refuse it, and
//! what it cannot read literally (a variable where an image or a source is named) is refused
//! unless it is a plain `$NAME`/`${NAME}` of an `ARG` declared with a default before the first
//! `FROM`. Heredocs are not parsed: their lines are scanned as instructions, which can only
//! refuse more.

use std::collections::HashMap;

/// Why a Dockerfile is refused: the line, what is wrong, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 1-based line where the instruction starts.
    pub line: usize,
    pub message: String,
    pub hint: &'static str,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the Dockerfile's line {}: {}", self.line, self.message)
    }
}

/// Where the webspace's own images live, to tell them from other webspaces'.
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    /// The pushing webspace.
    pub webspace: &'a str,
    /// The registry images go to (`HOST:PORT`), if any.
    pub registry: Option<&'a str>,
}

/// An image a build would use, with the line that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    pub line: usize,
    pub reference: String,
}

const FETCH_HINT: &str = "fetch it in a RUN step (RUN wget ... or curl ...): builds reach the internet, not this server's network";
const MOUNT_HINT: &str = "cache, secret and SSH mounts are shared or unavailable on this build engine; install dependencies in a RUN step";
const IMAGE_HINT: &str =
    "build FROM a public image or one of this webspace's own images, named literally";
const LITERAL_HINT: &str =
    "write image names, sources and flags as plain words: no quotes, backslashes or special spaces";
const DIRECTIVE_HINT: &str =
    "remove the parser directive: this server builds with its own Dockerfile frontend";

/// One instruction: its first line, keyword (upper case) and the rest, continuation lines
/// joined.
struct Instruction {
    line: usize,
    keyword: String,
    arguments: String,
}

/// Splits `text` into instructions: `\` at a line's end continues it; comment lines (also
/// inside a continuation) and blank lines are skipped, as BuildKit does.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        // Comment lines are skipped, inside a continuation too, and so are blank lines:
        // BuildKit joins the lines around them.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let (body, continues) = match line.trim_end().strip_suffix('\\') {
            Some(body) => (body, true),
            None => (line, false),
        };
        let (_, text) = current.get_or_insert_with(|| (index + 1, String::new()));
        text.push_str(body);
        text.push(' ');
        if !continues && let Some((start, text)) = current.take() {
            out.push(Instruction::new(start, &text));
        }
    }
    // A continuation at the end of the file still ends the instruction.
    out.extend(current.map(|(start, text)| Instruction::new(start, &text)));
    out
}

impl Instruction {
    fn new(line: usize, text: &str) -> Self {
        let text = text.trim();
        let (keyword, arguments) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        Self {
            line,
            keyword: keyword.to_ascii_uppercase(),
            arguments: arguments.trim().to_owned(),
        }
    }
}

/// Whether `text` can be read without a shell's quoting and escaping, which BuildKit applies
/// to image names, sources, flags and `ARG` values: no quotes, no backslash.
fn literal(text: &str) -> bool {
    !text.contains(['\'', '"', '\\'])
}

/// The leading `--name=value` flags of an instruction's arguments, and the rest.
fn flags(arguments: &str) -> (Vec<(String, String)>, &str) {
    let mut rest = arguments;
    let mut found = Vec::new();
    while let Some(flag) = rest.strip_prefix("--") {
        let end = flag.find(char::is_whitespace).unwrap_or(flag.len());
        let (name, value) = flag[..end].split_once('=').unwrap_or((&flag[..end], ""));
        found.push((name.to_ascii_lowercase(), value.to_owned()));
        rest = flag[end..].trim_start();
    }
    (found, rest)
}

/// Reads the Dockerfile and returns the images it would use (after `ARG` defaults), or the first
/// reason to refuse it.
///
/// # Errors
/// The first instruction this server does not build.
pub fn scan(bytes: &[u8]) -> Result<Vec<ImageUse>, Refusal> {
    let unreadable = |line: usize, message: &str| Refusal {
        line,
        message: message.to_owned(),
        hint: LITERAL_HINT,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        unreadable(line, "the Dockerfile is not UTF-8 text")
    })?;
    // What BuildKit reads differently from plain text: a byte-order mark it strips, and the two
    // characters it takes for spaces between words.
    for (index, line) in text.lines().enumerate() {
        if line.contains(['\u{feff}', '\u{85}', '\u{a0}']) {
            return Err(unreadable(
                index + 1,
                "a byte-order mark or a non-breaking or next-line space",
            ));
        }
    }
    for (index, line) in text.lines().enumerate() {
        let comment = line.trim_start();
        if let Some(directive) = comment.strip_prefix('#') {
            let key = directive
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if directive.contains('=') && (key == "syntax" || key == "escape") {
                return Err(Refusal {
                    line: index + 1,
                    message: format!("the `# {key}=` directive is not allowed on this server"),
                    hint: DIRECTIVE_HINT,
                });
            }
        }
    }
    let mut arguments: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    let mut seen_from = false;
    for instruction in instructions(text) {
        let line = instruction.line;
        let refuse = |message: String, hint: &'static str| Refusal {
            line,
            message,
            hint,
        };
        let (keyword, body) = if instruction.keyword == "ONBUILD" {
            // A trigger runs in a later build: checked as if it ran here.
            let (keyword, body) = instruction
                .arguments
                .split_once(char::is_whitespace)
                .unwrap_or((&instruction.arguments, ""));
            (keyword.to_ascii_uppercase(), body.trim().to_owned())
        } else {
            (instruction.keyword.clone(), instruction.arguments.clone())
        };
        let (flags, rest) = flags(&body);
        if flags
            .iter()
            .any(|(name, value)| !literal(name) || !literal(value))
        {
            return Err(refuse(
                format!("{keyword}: its flags must be plain words"),
                LITERAL_HINT,
            ));
        }
        match keyword.as_str() {
            "ARG" if !seen_from => {
                for declaration in body.split_whitespace() {
                    if let Some((name, value)) = declaration.split_once('=') {
                        // Not literal: kept out, so a FROM that uses it is refused.
                        if literal(value) {
                            arguments.insert(name.to_owned(), value.to_owned());
                        }
                    }
                }
            }
            "FROM" => {
                seen_from = true;
                // `--platform` would have the engine resolve another image than the one checked.
                if let Some((name, _)) = flags.first() {
                    return Err(refuse(
                        format!("FROM --{name} is not allowed on this server"),
                        IMAGE_HINT,
                    ));
                }
                if !literal(rest) {
                    return Err(refuse(
                        format!("FROM `{rest}`: the image must be named literally"),
                        LITERAL_HINT,
                    ));
                }
                let mut words = rest.split_whitespace();
                let reference = words.next().unwrap_or("");
                let reference = expand(reference, &arguments).ok_or_else(|| {
                    refuse(
                        format!("FROM `{reference}`: the image must be named literally"),
                        IMAGE_HINT,
                    )
                })?;
                if !stages.iter().any(|s| s.eq_ignore_ascii_case(&reference))
                    && reference != "scratch"
                {
                    images.push(ImageUse {
                        line,
                        reference: reference.clone(),
                    });
                }
                if let (Some(as_), Some(name)) = (words.next(), words.next())
                    && as_.eq_ignore_ascii_case("as")
                {
                    stages.push(name.to_ascii_lowercase());
                }
            }
            "ADD" => {
                let sources = rest;
                if flags
                    .iter()
                    .any(|(name, _)| name == "checksum" || name == "keep-git-dir")
                    || sources.contains("://")
                    || sources.contains("git@")
                    || sources.contains('$')
                    || !literal(sources)
                {
                    return Err(refuse(
                        "ADD from a URL, a git repository or a variable is not allowed on this server".into(),
                        FETCH_HINT,
                    ));
                }
            }
            "COPY" => {
                for (name, value) in &flags {
                    if name == "from" {
                        use_image(value, line, &stages, &mut images)?;
                    }
                }
            }
            "RUN" => {
                for (name, value) in flags {
                    match name.as_str() {
                        "mount" => mount(&value, line, &stages, &mut images)?,
                        "network" if value == "default" || value == "none" => {}
                        "network" | "security" => {
                            return Err(refuse(
                                format!("RUN --{name}={value} is not allowed on this server"),
                                FETCH_HINT,
                            ));
                        }
                        _ => {}
                    }
                }
                // A mount flag the scanner did not read as one (quoted, say) is still refused.
                let lower = body.to_ascii_lowercase();
                if lower.contains("--mount")
                    && ["cache", "secret", "ssh"]
                        .iter()
                        .any(|kind| lower.contains(&format!("type={kind}")))
                {
                    return Err(refuse(
                        "RUN --mount of type cache, secret or ssh is not allowed on this server"
                            .into(),
                        MOUNT_HINT,
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(images)
}

/// `$NAME` or `${NAME}` of a global `ARG` with a default; `None` for anything else with `$`.
fn expand(word: &str, arguments: &HashMap<String, String>) -> Option<String> {
    if !word.contains('$') {
        return Some(word.to_owned());
    }
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}')?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let value = arguments.get(name)?;
        if value.contains('$') {
            return None;
        }
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    Some(out)
}

/// `COPY --from=` or `RUN --mount=from=`: a stage (by name or index) or an image.
fn use_image(
    value: &str,
    line: usize,
    stages: &[String],
    images: &mut Vec<ImageUse>,
) -> Result<(), Refusal> {
    if value.contains('$') {
        return Err(Refusal {
            line,
            message: format!("`--from={value}`: the stage or image must be named literally"),
            hint: IMAGE_HINT,
        });
    }
    let stage = stages.iter().any(|s| s.eq_ignore_ascii_case(value))
        || value
            .parse::<usize>()
            .is_ok_and(|i| i < stages.len().max(1));
    if !stage {
        images.push(ImageUse {
            line,
            reference: value.to_owned(),
        });
    }
    Ok(())
}

/// A `RUN --mount=` value: only `bind` (the default) and `tmpfs`, literally.
fn mount(
    value: &str,
    line: usize,
    stages: &[String],
    images: &mut Vec<ImageUse>,
) -> Result<(), Refusal> {
    let refuse = |message: String| Refusal {
        line,
        message,
        hint: MOUNT_HINT,
    };
    if value.contains('$') {
        return Err(refuse(format!(
            "RUN --mount={value}: mounts must be written literally"
        )));
    }
    let mut kind = "bind".to_owned();
    let mut from = None;
    for option in value.split(',') {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match key.trim().to_ascii_lowercase().as_str() {
            "type" => kind = value.trim().to_ascii_lowercase(),
            "from" => from = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    if kind != "bind" && kind != "tmpfs" {
        return Err(refuse(format!(
            "RUN --mount of type {kind} is not allowed on this server"
        )));
    }
    if let Some(from) = from {
        use_image(&from, line, stages, images)?;
    }
    Ok(())
}

/// Whether `reference` names an image of another webspace: its registry repository, its local
/// `slipway/` tag, or an image ID. `None` when it may be used.
pub fn foreign(reference: &str, owner: &Owner<'_>) -> Option<String> {
    let lower = reference.to_ascii_lowercase();
    // The engine reads a bare all-hex name as a prefix of an image ID at any length (`FROM 37`
    // is the image whose ID starts with 37, if only one does) before it tries it as a name.
    let hex = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if lower.starts_with("sha256:") || hex(&lower) {
        return Some(format!(
            "`{reference}` names an image by its ID (or a prefix of one), which could be any tenant's; a public image of that name needs a tag (`{reference}:latest`)"
        ));
    }
    let name = lower.split('@').next().unwrap_or(&lower);
    // Docker Hub's names for a plain `NAME` resolve to the same local tags.
    let name = [
        "docker.io/library/",
        "docker.io/",
        "index.docker.io/",
        "registry-1.docker.io/",
    ]
    .iter()
    .find_map(|prefix| name.strip_prefix(prefix))
    .unwrap_or(name);
    let (host, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    };
    let repository = path.rsplit_once(':').map_or(path, |(repo, _)| repo);
    let own = |expected: &str| repository == expected;
    match host {
        Some(host) => {
            let ours = owner.registry.is_some_and(|r| r.eq_ignore_ascii_case(host));
            // Webspace names are DNS labels, so a webspace's repository is one path component;
            // deeper paths are base images an operator put there (`REGISTRY/org/base`).
            if ours && (own(owner.webspace) || repository.contains('/')) {
                return None;
            }
            let bare = host
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(host, |(h, _)| h);
            let bare = bare.trim_start_matches('[').trim_end_matches(']');
            // A name whose last label is a number is an address however it is written
            // (`127.1`, `2130706433`, `0x7f.1`): resolvers read them all as IPv4.
            let numeric = bare
                .rsplit('.')
                .next()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x"));
            let local = bare == "localhost"
                || bare.ends_with(".localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .map_or(numeric, |ip| !is_public(ip));
            (ours || local).then(|| {
                format!(
                    "`{reference}` is in this server's registry and not webspace `{}`'s",
                    owner.webspace
                )
            })
        }
        None => (repository.starts_with("slipway/")
            && !own(&format!("slipway/{}", owner.webspace)))
        .then(|| format!("`{reference}` is another webspace's image")),
    }
}

/// Whether an address is on the internet (not loopback, private, link-local, shared, unique
/// local, unspecified or multicast).
pub fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(v4.into());
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The registry host of `reference`, when it names one (`HOST[:PORT]/...`).
pub fn registry_host(reference: &str) -> Option<&str> {
    let (first, _) = reference.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Refusal {
        scan(text.as_bytes()).expect_err(text)
    }

    fn images(text: &str) -> Vec<String> {
        scan(text.as_bytes())
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .into_iter()
            .map(|i| i.reference)
            .collect()
    }

    #[test]
    fn fetches_from_the_build_host_are_refused() {
        for text in [
            "FROM busybox\nADD http://127.0.0.1:8080/secret /s\n",
            "FROM busybox\nadd https://169.254.169.254/latest/meta-data/ /m\n",
            "FROM busybox\nADD [\"http://10.0.0.1/x\", \"/x\"]\n",
            "FROM busybox\nADD [\"http\\u003a//10.0.0.1/x\", \"/x\"]\n",
            "FROM busybox\nADD \\\n  http://127.0.0.1/x \\\n  /x\n",
            "FROM busybox\nADD \\\n# a comment inside\n  http://127.0.0.1/x /x\n",
            "FROM busybox\nADD git@github.com:moby/buildkit.git /b\n",
            "FROM busybox\nARG U=http://127.0.0.1/x\nADD $U /x\n",
            "FROM busybox\nADD --checksum=sha256:00 x /x\n",
            "FROM busybox\nONBUILD ADD http://127.0.0.1/x /x\n",
            "FROM busybox\r\nADD http://127.0.0.1/x /x\r\n",
        ] {
            let refusal = refused(text);
            assert_eq!(refusal.hint, FETCH_HINT, "{text}");
        }
        assert!(scan(b"FROM busybox\nADD app.tar.gz /app\nCOPY . /src\n").is_ok());
    }

    #[test]
    fn shared_mounts_directives_and_host_network_are_refused() {
        for text in [
            "FROM busybox\nRUN --mount=type=cache,target=/root/.npm npm ci\n",
            "FROM busybox\nRUN --mount=type=secret,id=x cat /run/secrets/x\n",
            "FROM busybox\nRUN --mount=type=ssh git clone x\n",
            "FROM busybox\nRUN --mount=\"type=cache,target=/x\" true\n",
            "FROM busybox\nRUN --mount=target=/x,type=Cache true\n",
            "FROM busybox\nRUN --mount=type=$T,target=/x true\n",
            "FROM busybox\nRUN --network=host wget x\n",
            "FROM busybox\nRUN --security=insecure true\n",
            "# syntax=docker/dockerfile:1\nFROM busybox\n",
            "#escape=`\nFROM busybox\n",
            "FROM busybox\nRUN \\\n --mount=type=cache,target=/x true\n",
        ] {
            assert!(scan(text.as_bytes()).is_err(), "{text}");
        }
        assert!(
            scan(b"FROM busybox\nRUN --mount=type=tmpfs,target=/tmp --mount=target=/src true\nRUN --network=none true\n")
                .is_ok()
        );
    }

    #[test]
    fn images_are_read_with_their_stages_and_global_arguments() {
        assert_eq!(
            images(
                "ARG BASE=node\nARG V=22\nFROM ${BASE}:${V}-slim AS build\nRUN --mount=from=build,target=/b true\nFROM scratch\nCOPY --from=build /app /app\nCOPY --from=0 /x /x\nCOPY --from=nginx:1 /etc/nginx /etc/nginx\nFROM build\n"
            ),
            ["node:22-slim", "nginx:1"]
        );
        for text in [
            "FROM $UNSET\n",
            "ARG B\nFROM $B\n",
            "ARG B=${X:-busybox}\nFROM $B\n",
            "FROM busybox\nCOPY --from=$X /a /a\n",
        ] {
            assert_eq!(refused(text).hint, IMAGE_HINT, "{text}");
        }
    }

    /// What BuildKit reads differently from a loose reading: each of these hid an instruction
    /// or an image from an earlier version of the scanner (found by review).
    #[test]
    fn what_buildkit_would_read_otherwise_is_refused() {
        for text in [
            "FROM busybox\nADD \\\n\nhttp://169.254.169.254/latest/meta-data/ /m\n",
            "FROM busybox\nRUN \\\n\n--mount=type=cache,target=/root/.npm true\n",
            "\u{feff}FROM slipway/shop\n",
            "\u{feff}# escape=`\nFROM busybox\n",
            "FROM busybox\nRUN --mo\\unt=type=ca\\che,target=/c true\n",
            "FROM busybox\nCOPY --from='slipway/shop' /app /x\n",
            "FROM busybox\nCOPY --from=slip\"way/sh\"op /app /x\n",
            "FROM busybox\nRUN --mount=from=slip\\way/shop,target=/x true\n",
            "FROM busybox\nADD --chown=0\u{85}http://127.0.0.1/x /x\n",
            "FROM busybox\nADD [\"http:\\/\\/127.0.0.1:2375/x\",\"/x\"]\n",
            "FROM busybox\nADD \"http:\"//169.254.169.254/ /m\n",
            "FROM 'slipway/shop'\n",
            "FROM slip\\way/shop\n",
            "ARG B='slipway/shop'\nFROM $B\n",
            "FROM 127.0.0.1:50\"\"00/shop\n",
            "FROM --platform=linux/arm64 attacker/trig AS t\n",
        ] {
            assert!(scan(text.as_bytes()).is_err(), "{text:?}");
        }
        assert!(scan(b"FROM busybox\nRUN echo \xff\n").is_err(), "not UTF-8");
        // Read through the blank line, the image is seen (and then checked like any other).
        assert_eq!(
            images("FROM busybox\nCOPY \\\n   \n--from=slipway/shop /app /x\n"),
            ["busybox", "slipway/shop"]
        );
        assert!(
            scan(
                "FROM busybox\nLABEL maintainer=Jos\u{e9}\nRUN echo 'quoted' \"fine\"\n".as_bytes()
            )
            .is_ok(),
            "quotes and non-ASCII in a RUN command or a label are the shell's business"
        );
    }

    #[test]
    fn other_webspaces_images_are_foreign() {
        let owner = Owner {
            webspace: "blog",
            registry: Some("127.0.0.1:5000"),
        };
        for reference in [
            "127.0.0.1:5000/shop:latest",
            "127.0.0.1:5000/shop@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost:5000/blog",
            "127.1:5000/shop",
            "[::1]:5000/shop",
            "10.1.2.3:5000/shop",
            "slipway/shop:abc",
            "SLIPWAY/Shop",
            "sha256:0123456789abcdef",
            "147a4d457065",
            "37",
            "3",
            "377df45f93",
            "DEADBEEF",
            "2130706433:5000/shop",
            "0x7f.1:5000/shop",
            "x.localhost:5000/shop",
            "localhost:5000/base/node:22",
            "docker.io/slipway/shop",
            "index.docker.io/slipway/shop:1",
            "docker.io/library/slipway/shop",
        ] {
            assert!(foreign(reference, &owner).is_some(), "{reference}");
        }
        for reference in [
            "127.0.0.1:5000/blog:abc",
            "127.0.0.1:5000/slipway-test/busybox:latest",
            "busybox",
            "node:22-slim",
            "ghcr.io/org/image:1",
            "slipway-test/busybox:latest",
            "beef:latest",
            "library/nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(foreign(reference, &owner), None, "{reference}");
        }
        let local = Owner {
            webspace: "blog",
            registry: None,
        };
        assert_eq!(foreign("slipway/blog:1", &local), None);
        assert!(foreign("slipway/shop:1", &local).is_some());
    }
}
