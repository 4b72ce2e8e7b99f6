//! Building the context with the Docker engine and pushing the image to the registry.

use std::collections::VecDeque;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, PushImageOptions};
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
}

impl Default for Limits {
    /// 15 minutes covers real dependency installs; 1 GiB and 2 CPUs keep one build from
    /// starving the host's other builds and apps.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15 * 60),
            memory: 1 << 30,
            cpu_quota: 200_000,
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
        ..Default::default()
    };
    let body = futures_util::stream::unfold(context, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let mut stream = docker.build_image(options, None, Some(bollard::body_stream(body)));
    let mut tail: VecDeque<String> = VecDeque::with_capacity(KEPT_LINES);
    let mut partial = String::new();
    let mut step: Option<String> = None;
    let started = tokio::time::Instant::now();
    let deadline = started + limits.timeout;
    let keep = |line: String, tail: &mut VecDeque<String>| {
        if tail.len() == KEPT_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    };
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
                return Err(BuildError::Failed {
                    step,
                    message: clean(&error),
                    tail: tail.into(),
                });
            }
            Some(Err(error)) => return Err(BuildError::Engine(error)),
        };
        if let Some(detail) = info.error_detail {
            return Err(BuildError::Failed {
                step,
                message: clean(detail.message.as_deref().unwrap_or("unknown error")),
                tail: tail.into(),
            });
        }
        if let Some(text) = info.stream {
            partial.push_str(&text);
            while let Some(end) = partial.find('\n') {
                let line = clean(partial.get(..end).unwrap_or_default());
                partial.replace_range(..=end, "");
                if line.trim().is_empty() {
                    continue;
                }
                if line.starts_with("Step ") {
                    step = Some(line.clone());
                }
                reporter.say(&line);
                keep(line, &mut tail);
            }
        }
    }
    if !partial.trim().is_empty() {
        let line = clean(&partial);
        reporter.say(&line);
        keep(line, &mut tail);
    }
    Ok(tail.into())
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
