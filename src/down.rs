//! `slipway down`: removes what `slipway up` leaves running on purpose when it exits (its app
//! containers, which a restart of `up` adopts), and the engine-wide things it made when nothing
//! else uses them; the data directory stays unless `--purge`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use clap::Args;
use slipway_operator::docker;

#[derive(Debug, Args)]
pub(crate) struct DownArgs {
    #[command(flatten)]
    data: crate::DataArgs,
    /// Also remove the data directory: resources, repositories, host key, build logs.
    #[arg(long)]
    purge: bool,
}

/// The file in the data directory that a running `slipway up` holds locked (and writes its pid
/// into, for the messages).
const LOCK_FILE: &str = "up.lock";

/// A file in the temporary directory every running `slipway up` on this host holds a shared
/// lock on, whatever its data directory: `slipway down` keeps the build egress rules, which all
/// installations share, while one runs.
const ENGINE_LOCK_FILE: &str = "slipway-up-running.lock";

/// The lock on [`ENGINE_LOCK_FILE`]: shared for a `slipway up` (waiting while a `slipway down`
/// tidies up), exclusive for `slipway down`, to learn that no `up` runs (not waiting); `None`
/// when it cannot be had.
fn engine_lock(exclusive: bool) -> Option<File> {
    let file = docker::lock_file(&std::env::temp_dir().join(ENGINE_LOCK_FILE)).ok()?;
    let locked = if exclusive {
        file.try_lock().map_err(|_| ())
    } else {
        file.lock_shared().map_err(|_| ())
    };
    locked.is_ok().then_some(file)
}

/// What a running `slipway up` holds: its data directory's lock, and its share of the
/// host-wide one.
#[derive(Debug)]
pub(crate) struct Running {
    _data: File,
    _engine: Option<File>,
}

/// Marks this process as a running `slipway up` of `data` until the value is dropped.
pub(crate) fn hold(data: &Path) -> anyhow::Result<Running> {
    Ok(Running {
        _data: lock(data, Lock::Up)?,
        _engine: engine_lock(false),
    })
}

/// Who takes the lock, for the message when another holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    Up,
    Down,
}

/// Locks the data directory `data` for `slipway up` or `slipway down`; held until the file is
/// dropped (or the process ends). Fails with what to do when a `slipway up` (or a `slipway down`)
/// holds it.
pub(crate) fn lock(data: &Path, by: Lock) -> anyhow::Result<File> {
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let path = data.join(LOCK_FILE);
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let pid = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            match by {
                Lock::Up => bail!(
                    "another slipway{pid} uses the data directory {}\nhint: stop it first, or pass another --data",
                    data.display()
                ),
                Lock::Down => bail!(
                    "`slipway up`{pid} is running with the data directory {}; nothing was removed\nhint: stop it first (Ctrl-C in its terminal, or `kill {}`: running pushes get to finish), then run `slipway down` again; down does not stop it for you",
                    data.display(),
                    if holder.is_empty() { "PID" } else { holder }
                ),
            }
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    // Only informative: the lock, not the number, says whether it runs.
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

pub(crate) async fn run(args: DownArgs) -> anyhow::Result<()> {
    let data = std::path::absolute(&args.data.data).context("cannot resolve --data")?;
    let instance = docker::instance(&data);
    // Refusing is simpler and safer than stopping it: `up` may be in the middle of pushes, and
    // was started by someone who may not expect it to go away. Held until the end, so an `up`
    // started meanwhile does not bring containers back while they are removed.
    let _lock = if data.is_dir() {
        Some(lock(&data, Lock::Down)?)
    } else {
        None
    };
    let engine = match bollard::Docker::connect_with_defaults() {
        Ok(engine) => engine.negotiate_version().await,
        Err(error) => Err(error),
    };
    let engine = match engine {
        Ok(engine) => engine,
        Err(error) => bail!(
            "cannot reach the Docker engine ({error}); nothing was removed\nhint: is dockerd running? (`scripts/services` starts it; DOCKER_HOST picks another engine)"
        ),
    };
    let mut problems = Vec::new();
    // Held to the end, so no `up` starts while the shared things go.
    let alone = engine_lock(true);

    let containers = docker::list(&engine, &instance)
        .await
        .context("cannot list the containers")?;
    for container in &containers {
        docker::remove(&engine, &container.id).await;
        println!(
            "removed container {} (webspace {}, branch {}, release {})",
            docker::container_name(&instance, &container.release),
            container.webspace,
            container.branch,
            container.release
        );
    }
    let left = docker::list(&engine, &instance)
        .await
        .context("cannot list the containers")?;
    if !left.is_empty() {
        problems.push(format!(
            "{} container(s) could not be removed: {}",
            left.len(),
            left.iter()
                .map(|c| docker::container_name(&instance, &c.release))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // An `up` without containers yet may be about to start one on the network.
    let network = if alone.is_none() {
        "network kept (another `slipway up` runs on this host)"
    } else {
        match docker::remove_network_if_unused(&engine).await {
            Ok(true) => {
                println!("removed network {}", docker::NETWORK);
                "network removed"
            }
            Ok(false) => "network kept (in use or absent)",
            Err(error) => {
                problems.push(format!(
                    "cannot remove network {}: {error}",
                    docker::NETWORK
                ));
                "network kept"
            }
        }
    };
    let egress = build_egress(&engine, &instance, alone.is_some()).await;

    let data_note = if args.purge {
        purge(&data, &mut problems)
    } else if data.is_dir() {
        format!(
            "data kept at {} (`slipway up` starts the apps again; `slipway down --purge` removes it)",
            data.display()
        )
    } else {
        format!("no data directory at {}", data.display())
    };

    println!(
        "slipway down: installation {instance}: {} container(s) removed, {network}, {egress}; {data_note}",
        containers.len()
    );
    if !problems.is_empty() {
        bail!("{}", problems.join("\nerror: "));
    }
    Ok(())
}

/// Removes this installation's build egress rules; the summary's words. Failures are warnings:
/// without root (or with `--build-egress open` all along) there is nothing of ours to remove.
async fn build_egress(engine: &bollard::Docker, instance: &str, alone: bool) -> String {
    use slipway_hook::egress;
    match egress::remove_allowed(instance) {
        Ok(0) => {}
        Ok(n) => println!("removed {n} build egress rule(s) of --build-allow-range"),
        Err(error) => {
            eprintln!("warning: cannot remove this installation's build egress rules: {error}");
            return "build egress rules kept".to_owned();
        }
    }
    // The rejecting rules are shared by every installation on the engine, and `up` puts them
    // back when it starts. Whether another installation is still in use is judged by its
    // containers: one with apps (running or stopped, to be adopted) keeps the jumps, so its
    // builds stay restricted once its `up` starts again; and by the host-wide lock every
    // running `up` shares, which covers one that has no app yet. With neither, the host's
    // default bridge gets back its ordinary behaviour. (An `up` on another host against the
    // same engine is not seen by the lock: its containers still count.)
    if !alone {
        return "build egress rules kept (another `slipway up` runs on this host)".to_owned();
    }
    let others = match docker::instances(engine).await {
        Ok(all) => all.into_iter().filter(|i| i != instance).count(),
        Err(error) => {
            eprintln!("warning: cannot list other installations' containers: {error}");
            return "build egress rules kept".to_owned();
        }
    };
    if others > 0 {
        return format!("build egress rules kept ({others} other installation(s) on this engine)");
    }
    let removed = match crate::default_bridge(engine).await {
        Ok((interface, subnet)) => egress::remove(&interface, &subnet)
            .map(|found| found.then_some(interface))
            .map_err(anyhow::Error::from),
        Err(error) => Err(error),
    };
    match removed {
        Ok(Some(interface)) => {
            println!("removed the build egress rules' jumps on {interface}");
            "build egress rules removed".to_owned()
        }
        Ok(None) => "no build egress rules".to_owned(),
        Err(error) => {
            eprintln!("warning: cannot remove the build egress rules: {error:#}");
            "build egress rules kept".to_owned()
        }
    }
}

/// Removes the data directory (only one that looks like Slipway's); the summary's words.
fn purge(data: &Path, problems: &mut Vec<String>) -> String {
    if !data.exists() {
        return format!("no data directory at {}", data.display());
    }
    if !data.join("resources").is_dir() {
        problems.push(format!(
            "{} does not look like a Slipway data directory (no resources/); not removed",
            data.display()
        ));
        return "data kept".to_owned();
    }
    let webspaces: Vec<String> = std::fs::read_dir(data.join("repos"))
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(format!("slipway/{}", name.strip_suffix(".git")?))
        })
        .collect();
    match std::fs::remove_dir_all(data) {
        Ok(()) => println!("removed data directory {}", data.display()),
        Err(error) => {
            problems.push(format!("cannot remove {}: {error}", data.display()));
            return "data kept".to_owned();
        }
    }
    // Images are named by webspace, not by installation: another data directory on this engine
    // may have a webspace of the same name, so they are left for `docker image rm`.
    if !webspaces.is_empty() {
        println!(
            "kept images {} (names not unique to this installation; `docker image rm` them if unused)",
            webspaces.join(", ")
        );
    }
    "data removed".to_owned()
}
