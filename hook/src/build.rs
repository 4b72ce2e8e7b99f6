//! Building the context with the Docker engine and pushing the image to the registry.

use std::collections::VecDeque;
use std::time::Duration;

use bollard::Docker;
use bollard::models::BuildInfoAux;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion, PushImageOptions};
use bollard_stubs::moby::buildkit::v1::StatusResponse;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::report::{Reporter, clean};

/// Lines of build output kept (for the error report and the build log); everything is still
/// streamed to the pusher as it comes.
pub const KEPT_LINES: usize = 200;
/// A progress line is printed when the build was silent this long, so no proxy or client
/// idles the connection out and the pusher knows it is alive.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Limits for one build.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock limit of the build.
    pub timeout: Duration,
    /// Memory of each build step's container, in bytes (Docker's API takes an `i32`).
    pub memory: i32,
    /// CPU quota in units of 1/100,000 of a CPU per 100 ms period.
    pub cpu_quota: i32,
    /// Which builder of the engine runs the build.
    pub builder: Builder,
}

/// The engine's builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Builder {
    /// BuildKit, through the plain `/build` endpoint: about three times faster on a small
    /// change here. The engine does not apply `memory` and `cpu_quota` to its build steps.
    #[default]
    BuildKit,
    /// The classic builder: slower, but each step's container gets the memory and CPU limits.
    Classic,
}

impl Default for Limits {
    /// 15 minutes covers real dependency installs; 1 GiB and 2 CPUs keep one build from
    /// starving the host's other builds and apps.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15 * 60),
            memory: 1 << 30,
            cpu_quota: 200_000,
            builder: Builder::default(),
        }
    }
}

/// A build that did not produce an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile failed (the pusher's to fix).
    #[error("the build failed{}: {message}", step.as_deref().map(|s| format!(" at `{s}`")).unwrap_or_default())]
    Failed {
        /// The `Step N/M : ...` line that failed, if known.
        step: Option<String>,
        /// Docker's error message.
        message: String,
        /// The last lines of output.
        tail: Vec<String>,
    },
    /// Longer than [`Limits::timeout`].
    #[error("the build took longer than {0:?}")]
    TimedOut(Duration),
    /// The engine failed or could not be reached (ours to fix).
    #[error("docker engine")]
    Engine(#[source] bollard::errors::Error),
}

/// The registry push failed (ours to fix).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The engine reported an error pushing.
    #[error("push of {image} failed: {message}")]
    Refused {
        /// The image.
        image: String,
        /// What the engine said.
        message: String,
    },
    /// The engine failed.
    #[error("docker engine")]
    Engine(#[from] bollard::errors::Error),
    /// The push succeeded but no digest was recorded.
    #[error("no digest for {0} after the push")]
    NoDigest(String),
}

/// Connects to the engine named by the standard Docker environment (`DOCKER_HOST`, else the
/// local socket) and negotiates the API version (Debian's Docker 20.10 refuses newer ones).
///
/// # Errors
/// When the engine does not answer.
pub async fn connect() -> Result<Docker, bollard::errors::Error> {
    let docker = Docker::connect_with_defaults()?;
    let docker = docker.negotiate_version().await?;
    docker.ping().await?;
    Ok(docker)
}

/// Whether the engine already has `image` (the same tree was built before).
pub async fn exists(docker: &Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}

/// Whether a failed build could not get a base image (a name that does not exist, a registry
/// it cannot reach).
pub fn pull_failed(message: &str, tail: &[String]) -> bool {
    std::iter::once(message)
        .chain(tail.iter().map(String::as_str))
        .any(|line| {
            let line = line.to_ascii_lowercase();
            line.contains("pull access denied")
                || line.contains("failed to resolve source metadata")
                || line.contains("manifest unknown")
                || (line.contains("not found") && line.contains("docker.io"))
                || line.contains("failed to do request")
                || line.contains("no such host")
        })
}

/// The one TCP port `image` exposes (`EXPOSE`, its own or its base image's); `None` when it
/// exposes none or several.
pub async fn exposed_port(docker: &Docker, image: &str) -> Option<u16> {
    let config = docker.inspect_image(image).await.ok()?.config?;
    let ports = config.exposed_ports.unwrap_or_default();
    let tcp: Vec<u16> = ports
        .iter()
        .filter_map(|p| match p.split_once('/') {
            Some((port, "tcp")) => port.parse().ok(),
            Some(_) => None,
            None => p.parse().ok(),
        })
        .collect();
    match tcp.as_slice() {
        [port] if *port > 0 => Some(*port),
        _ => None,
    }
}

/// The `ONBUILD` triggers of base image `reference`, pulling it first when the engine does not
/// have it (the build would pull it anyway). `None` when it cannot be had: the build then says
/// why.
pub async fn onbuild_triggers(docker: &Docker, reference: &str) -> Option<Vec<String>> {
    if docker.inspect_image(reference).await.is_err() {
        let options = bollard::query_parameters::CreateImageOptions {
            from_image: Some(reference.to_owned()),
            ..Default::default()
        };
        let pull = async {
            let mut stream = docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                if item.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(300), pull)
            .await
            .ok()?;
    }
    let image = docker.inspect_image(reference).await.ok()?;
    Some(image.config.and_then(|c| c.on_build).unwrap_or_default())
}

/// Builds `context` as `tag`, streaming output lines to the pusher.
///
/// # Errors
/// [`BuildError`].
pub async fn build(
    docker: &Docker,
    tag: &str,
    context: mpsc::Receiver<Bytes>,
    limits: Limits,
    reporter: &Reporter,
) -> Result<Vec<String>, BuildError> {
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".to_owned(),
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        memory: Some(limits.memory),
        memswap: Some(limits.memory),
        cpuperiod: Some(100_000),
        cpuquota: Some(limits.cpu_quota),
        version: match limits.builder {
            Builder::BuildKit => BuilderVersion::BuilderBuildKit,
            Builder::Classic => BuilderVersion::BuilderV1,
        },
        ..Default::default()
    };
    let body = futures_util::stream::unfold(context, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let mut stream = docker.build_image(options, None, Some(bollard::body_stream(body)));
    let mut output = Output::default();
    let started = tokio::time::Instant::now();
    let deadline = started + limits.timeout;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = tokio::time::sleep(PROGRESS_EVERY) => {
                reporter.say(&format!("slipway: still building ({}s)", started.elapsed().as_secs()));
                continue;
            }
            () = tokio::time::sleep_until(deadline) => return Err(BuildError::TimedOut(limits.timeout)),
        };
        let info = match next {
            None => break,
            Some(Ok(info)) => info,
            Some(Err(bollard::errors::Error::DockerStreamError { error })) => {
                return Err(output.failed(&error));
            }
            Some(Err(error)) => return Err(BuildError::Engine(error)),
        };
        if let Some(detail) = info.error_detail {
            return Err(output.failed(detail.message.as_deref().unwrap_or("unknown error")));
        }
        if let Some(text) = info.stream {
            output.classic(&text, reporter);
        }
        if let Some(BuildInfoAux::BuildKit(status)) = info.aux {
            output.buildkit(&status, reporter);
        }
    }
    output.flush(reporter);
    Ok(output.tail.into())
}

/// Build output as the pusher sees it: the classic builder's `Step N/M : ...` lines as they
/// come, and BuildKit's progress turned into the same form (`[2/3] COPY ...` becomes
/// `Step 2/3 : COPY ...`, then the step's own output).
#[derive(Debug, Default)]
struct Output {
    tail: VecDeque<String>,
    partial: String,
    step: Option<String>,
    /// BuildKit vertices already announced, by digest, with their step line.
    steps: std::collections::HashMap<String, String>,
    /// The step of the BuildKit vertex that reported an error.
    failed_step: Option<String>,
}

impl Output {
    fn keep(&mut self, line: String, reporter: &Reporter) {
        reporter.say(&line);
        if self.tail.len() == KEPT_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn classic(&mut self, text: &str, reporter: &Reporter) {
        self.partial.push_str(text);
        while let Some(end) = self.partial.find('\n') {
            let line = clean(self.partial.get(..end).unwrap_or_default());
            self.partial.replace_range(..=end, "");
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with("Step ") {
                self.step = Some(line.clone());
            }
            self.keep(line, reporter);
        }
    }

    fn buildkit(&mut self, status: &StatusResponse, reporter: &Reporter) {
        for vertex in &status.vertexes {
            let Some(step) = step_line(&vertex.name) else {
                continue;
            };
            if !self.steps.contains_key(&vertex.digest)
                && (vertex.started.is_some() || vertex.cached)
            {
                self.steps.insert(vertex.digest.clone(), step.clone());
                self.step = Some(step.clone());
                self.keep(step.clone(), reporter);
            }
            if !vertex.error.is_empty() {
                self.failed_step = Some(step);
            }
        }
        for log in &status.logs {
            for line in String::from_utf8_lossy(&log.msg).lines() {
                let line = clean(line);
                if !line.trim().is_empty() {
                    self.keep(line, reporter);
                }
            }
        }
    }

    fn flush(&mut self, reporter: &Reporter) {
        if !self.partial.trim().is_empty() {
            let line = clean(&std::mem::take(&mut self.partial));
            self.keep(line, reporter);
        }
    }

    fn failed(self, message: &str) -> BuildError {
        BuildError::Failed {
            step: self.failed_step.or(self.step),
            message: clean(message),
            tail: self.tail.into(),
        }
    }
}

/// `[2/3] COPY index.html /www/` as `Step 2/3 : COPY index.html /www/` (a stage name stays in
/// front: `[build 2/3] ...` → `Step build 2/3 : ...`); BuildKit's own `[internal] ...` work is
/// not a step. `FROM docker.io/library/node` reads as the Dockerfile wrote it: `FROM node`.
fn step_line(name: &str) -> Option<String> {
    let rest = name.strip_prefix('[')?;
    let (position, instruction) = rest.split_once("] ")?;
    if position == "internal" || !position.contains('/') {
        return None;
    }
    let instruction = match instruction.strip_prefix("FROM ") {
        Some(image) => {
            let image = image
                .strip_prefix("docker.io/library/")
                .or_else(|| image.strip_prefix("docker.io/"))
                .unwrap_or(image);
            format!("FROM {image}")
        }
        None => instruction.to_owned(),
    };
    Some(format!("Step {position} : {instruction}"))
}

/// Pushes `repository:tag` and returns its digest (`sha256:...`).
///
/// # Errors
/// [`PushError`].
pub async fn push(
    docker: &Docker,
    repository: &str,
    tag: &str,
    credentials: Option<bollard::auth::DockerCredentials>,
) -> Result<String, PushError> {
    let image = format!("{repository}:{tag}");
    let mut stream = docker.push_image(
        repository,
        Some(PushImageOptions {
            tag: Some(tag.to_owned()),
            ..Default::default()
        }),
        credentials,
    );
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(PushError::Refused {
                        image,
                        message: detail.message.unwrap_or_default(),
                    });
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(PushError::Refused {
                    image,
                    message: error,
                });
            }
            Err(error) => return Err(error.into()),
        }
    }
    let inspect = docker.inspect_image(&image).await?;
    let prefix = format!("{repository}@");
    inspect
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| d.strip_prefix(&prefix).map(str::to_owned))
        .ok_or(PushError::NoDigest(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_steps_read_like_classic_ones() {
        assert_eq!(
            step_line("[1/3] FROM docker.io/slipway-test/busybox:latest").as_deref(),
            Some("Step 1/3 : FROM slipway-test/busybox:latest")
        );
        assert_eq!(
            step_line("[2/2] FROM docker.io/library/node:22").as_deref(),
            Some("Step 2/2 : FROM node:22")
        );
        assert_eq!(
            step_line("[3/3] RUN echo compiling && false").as_deref(),
            Some("Step 3/3 : RUN echo compiling && false")
        );
        assert_eq!(
            step_line("[build 2/4] COPY . /src").as_deref(),
            Some("Step build 2/4 : COPY . /src")
        );
        assert_eq!(
            step_line("[internal] load build definition from Dockerfile"),
            None
        );
        assert_eq!(step_line("copy /context /"), None);
    }
}
