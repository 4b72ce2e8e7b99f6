//! The SSH server: accepting connections, authenticating keys, and deciding what each channel
//! may do. Only `exec` of a git service gets as far as spawning a process.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::HashAlg;
use russh::server::{Auth, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty};
use slipway_api::{Webspace, env};
use slipway_store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::{Admission, Ticket};
use crate::command::{self, GitCommand, OpsCommand, Request, Service};
use crate::keys::{KeyIndex, Owner};
use crate::lock::PushLocks;
use crate::plumbing::{self, Ending, Invocation};
use crate::{Config, host_key, quarantine, repository};

/// Channels one connection may open. git uses one; OpenSSH connection sharing a few more.
pub const MAX_CHANNELS_PER_CONNECTION: usize = 8;
/// Time a client has to authenticate. Long enough for a human to unlock a key in an agent
/// prompt, short enough that idle unauthenticated sockets cannot pile up (OpenSSH: 120 s);
/// how many may wait at once is capped per source address (see [`crate::admission`]).
pub const LOGIN_GRACE: Duration = Duration::from_secs(30);
/// Keepalive probe interval: a build can be silent for minutes, and NAT boxes and proxies drop
/// idle TCP flows after a few minutes; a probe every 30 s keeps them open and detects dead
/// clients within [`KEEPALIVE_MAX`] probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Unanswered keepalives before a client is considered gone (90 s).
pub const KEEPALIVE_MAX: usize = 3;
/// Authentication attempts per connection, as OpenSSH's `MaxAuthTries`.
pub const MAX_AUTH_ATTEMPTS: usize = 6;
/// After a drain, how long clients get to read their last exit status and close their
/// connections before the rest (idle or unauthenticated ones) are disconnected.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Longest `GIT_PROTOCOL` value passed to git (`version=2` is 9 bytes).
const MAX_GIT_PROTOCOL: usize = 64;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The host key could not be loaded or created.
    #[error(transparent)]
    HostKey(#[from] host_key::HostKeyError),
    /// The customers could not be read for the key index.
    #[error("cannot build the ssh key index")]
    Keys(#[source] slipway_store::StoreError),
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// Whether every in-flight git command finished within the grace period (otherwise the
    /// rest were killed).
    pub finished: bool,
}

struct Shared<S> {
    config: Config,
    store: S,
    keys: KeyIndex,
    locks: PushLocks,
    commands: TaskTracker,
    /// Cancelled when shutdown begins: no new commands.
    stopping: CancellationToken,
    /// Cancelled when the grace period is over: running commands are killed.
    kill: CancellationToken,
    /// Owner's commands running per customer (see [`OPS_PER_CUSTOMER`]).
    ops: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// Owner's commands (`logs -f` runs until the client leaves) one customer may run at once: a
/// flood of them takes that customer's share, nobody else's.
pub const OPS_PER_CUSTOMER: usize = 8;

/// A customer's place among [`OPS_PER_CUSTOMER`], given back when dropped.
struct OpsSlot {
    ops: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    customer: String,
}

impl OpsSlot {
    fn take(ops: &Arc<std::sync::Mutex<HashMap<String, usize>>>, customer: &str) -> Option<Self> {
        let mut running = ops.lock().unwrap_or_else(|p| p.into_inner());
        let count = running.entry(customer.to_owned()).or_insert(0);
        if *count >= OPS_PER_CUSTOMER {
            return None;
        }
        *count += 1;
        Some(Self {
            ops: ops.clone(),
            customer: customer.to_owned(),
        })
    }
}

impl Drop for OpsSlot {
    fn drop(&mut self) {
        let mut running = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = running.get_mut(&self.customer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.customer);
            }
        }
    }
}

/// Serves SSH on `listener` until `shutdown` is cancelled, then drains.
///
/// # Errors
/// When the host key or the customers cannot be read at start.
pub async fn run<S: Store>(
    listener: TcpListener,
    config: Config,
    store: S,
    shutdown: CancellationToken,
) -> Result<Drain, ServerError> {
    let key = host_key::load_or_create(&config.data)?;
    let index_stop = CancellationToken::new();
    let keys = KeyIndex::start(store.clone(), index_stop.clone())
        .await
        .map_err(ServerError::Keys)?;
    tokio::spawn(crate::retire::run(
        store.clone(),
        config.data.clone(),
        index_stop.clone(),
    ));
    let ssh_config = Arc::new(ssh_config(key));
    let grace = config.shutdown_grace;
    let locks = PushLocks::across_processes(config.data.clone());
    let shared = Arc::new(Shared {
        config,
        store,
        keys,
        locks,
        commands: TaskTracker::new(),
        stopping: shutdown.clone(),
        kill: CancellationToken::new(),
        ops: Arc::default(),
    });
    // Beside the first pushes: each repository is swept under its push lock.
    let sweeping = tokio::spawn(quarantine::sweep(
        shared.config.data.clone(),
        shared.locks.clone(),
    ));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let admission = Admission::new(shared.config.admission);
    let mut refusals = RefusalLog::default();
    loop {
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                // Closed before a byte is read: a flood costs an accept and a close.
                drop(socket);
                shared.config.metrics.refused_connection();
                refusals.refused(peer, refusal);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let span = tracing::info_span!("connection", %peer, customer = tracing::field::Empty);
        connections.spawn(
            serve(
                socket,
                peer,
                ssh_config.clone(),
                shared.clone(),
                closing.clone(),
                Arc::new(ticket),
            )
            .instrument(span),
        );
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for running git commands");
    shared.commands.close();
    let finished = tokio::time::timeout(grace, shared.commands.wait())
        .await
        .is_ok();
    if !finished {
        tracing::warn!(?grace, "grace period over; killing running git commands");
        shared.kill.cancel();
        shared.commands.wait().await;
    }
    // Clients close their connections once their command's exit status arrived; disconnecting
    // at once could overtake that status (the push would look failed though its refs moved).
    connections.close();
    if tokio::time::timeout(CLOSE_GRACE, connections.wait())
        .await
        .is_err()
    {
        closing.cancel();
        let _ = tokio::time::timeout(CLOSE_GRACE, connections.wait()).await;
    }
    index_stop.cancel();
    // It never waits for a push, so it is done by now or close to it.
    let _ = sweeping.await;
    Ok(Drain { finished })
}

/// Logs connections refused by admission without letting a flood flood the log: at most one
/// line per [`REFUSAL_LOG_INTERVAL`], saying how many were refused since the last.
#[derive(Default)]
struct RefusalLog {
    last: Option<tokio::time::Instant>,
    unlogged: u64,
}

/// Least time between two log lines about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn refused(&mut self, peer: SocketAddr, refusal: crate::admission::Refusal) {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|last| last.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            %peer,
            reason = refusal.as_str(),
            refused = self.unlogged,
            "closed connections at once (count since the last such line)"
        );
        self.last = Some(tokio::time::Instant::now());
        self.unlogged = 0;
    }
}

fn ssh_config(key: russh::keys::PrivateKey) -> russh::server::Config {
    russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // The first `none` probe every client sends is answered at once; later rejections are
        // delayed to slow down key guessing.
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        max_auth_attempts: MAX_AUTH_ATTEMPTS,
        inactivity_timeout: None,
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        preferred: russh::Preferred {
            compression: Cow::Borrowed(&[russh::compression::NONE]),
            ..russh::Preferred::default()
        },
        server_id: russh::SshId::Standard(Cow::Borrowed(concat!(
            "SSH-2.0-slipway_",
            env!("CARGO_PKG_VERSION")
        ))),
        ..Default::default()
    }
}

async fn serve<S: Store>(
    socket: TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared<S>>,
    closing: CancellationToken,
    ticket: Arc<Ticket>,
) {
    let gone = shared.kill.child_token();
    let connection = Connection {
        shared,
        peer,
        identity: None,
        channels: HashMap::new(),
        opened: 0,
        gone: gone.clone(),
        _gone_on_drop: gone.drop_guard(),
        ticket: ticket.clone(),
    };
    let deadline = tokio::time::sleep(LOGIN_GRACE);
    tokio::pin!(deadline);
    let session = tokio::select! {
        session = russh::server::run_stream(config, socket, connection) => session,
        () = &mut deadline => {
            tracing::info!("no SSH handshake within the login grace time");
            return;
        }
    };
    let Ok(session) = session else {
        tracing::debug!("handshake failed");
        return;
    };
    let handle = session.handle();
    tokio::pin!(session);
    let mut deadline_armed = true;
    loop {
        tokio::select! {
            result = &mut session => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = &mut deadline, if deadline_armed => {
                deadline_armed = false;
                if !ticket.is_authenticated() {
                    tracing::info!("not authenticated within the login grace time");
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, "login grace time over".into(), "en".into())
                        .await;
                    return;
                }
            }
            () = closing.cancelled() => {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "server shutting down".into(), "en".into())
                    .await;
                return;
            }
        }
    }
}

/// Who signed in: a customer, through one verified key.
#[derive(Debug, Clone)]
struct Identity {
    customer: String,
    fingerprint: String,
}

#[derive(Default)]
struct PendingChannel {
    channel: Option<Channel<Msg>>,
    git_protocol: Option<String>,
    pty_requested: bool,
}

struct Connection<S> {
    shared: Arc<Shared<S>>,
    peer: SocketAddr,
    identity: Option<Identity>,
    channels: HashMap<ChannelId, PendingChannel>,
    opened: usize,
    gone: CancellationToken,
    _gone_on_drop: DropGuard,
    /// This connection's admission slots; freed when the connection ends.
    ticket: Arc<Ticket>,
}

/// Writes `message` (and `hint`) to the channel's stderr, exits 1 and closes the channel.
fn refuse(session: &mut Session, channel: ChannelId, message: &str, hint: Option<&str>) {
    let mut text = format!("remote: error: {message}\n");
    if let Some(hint) = hint {
        text.push_str(&format!("remote: hint: {hint}\n"));
    }
    let _ = session.extended_data(channel, 1, text.into_bytes());
    let _ = session.exit_status_request(channel, 1);
    let _ = session.eof(channel);
    let _ = session.close(channel);
}

const HINT_PUSH: &str = "push with `git push ssh://git@HOST:PORT/WEBSPACE.git main`";

impl<S: Store> Connection<S> {
    async fn verify_key(&self, key: &russh::keys::PublicKey) -> Option<String> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match self.shared.keys.lookup(&fingerprint).await {
            Owner::Customer(customer) => Some(customer),
            Owner::Unknown => {
                self.shared.config.metrics.refused_login();
                tracing::info!(fingerprint = %key.fingerprint(HashAlg::Sha256), "key of no customer offered");
                None
            }
        }
    }

    fn refuse_channel(&mut self, session: &mut Session, channel: ChannelId, message: &str) {
        tracing::info!(message, "refused channel request");
        self.channels.remove(&channel);
        refuse(session, channel, message, Some(HINT_PUSH));
    }
}

impl<S: Store> Handler for Connection<S> {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only says whether a signature with this key would be worth checking; identity comes
        // from `auth_publickey`, after russh verified the signature.
        Ok(match self.verify_key(offer.public_key).await {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Some(customer) = self.verify_key(key.public_key).await else {
            return Ok(Auth::reject());
        };
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        tracing::Span::current().record("customer", customer.as_str());
        tracing::info!(%fingerprint, "authenticated");
        self.identity = Some(Identity {
            customer,
            fingerprint,
        });
        self.ticket.authenticated();
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.opened >= MAX_CHANNELS_PER_CONNECTION {
            tracing::warn!("channel limit reached");
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.opened += 1;
        self.channels.insert(
            channel.id(),
            PendingChannel {
                channel: Some(channel),
                ..PendingChannel::default()
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Declined; the shell or command that follows is then refused with the reason.
        let _ = session.channel_failure(channel);
        if let Some(pending) = self.channels.get_mut(&channel) {
            pending.pty_requested = true;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_success(channel);
        self.refuse_channel(session, channel, "shell access is not offered here");
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_success(channel);
        self.refuse_channel(
            session,
            channel,
            "subsystems (sftp, ...) are not offered here",
        );
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_failure(channel);
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only GIT_PROTOCOL is taken (ignoring it would silently downgrade clients to protocol
        // v0). Other variables are declined without closing the channel: OpenSSH clients send
        // `LANG`/`LC_*` by default, and refusing those would break every push.
        let valid = variable_name == env::GIT_PROTOCOL
            && !variable_value.is_empty()
            && variable_value.len() <= MAX_GIT_PROTOCOL
            && variable_value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=:.-_".contains(&b));
        match self.channels.get_mut(&channel) {
            Some(pending) if valid => {
                pending.git_protocol = Some(variable_value.to_owned());
                let _ = session.channel_success(channel);
            }
            _ => {
                tracing::debug!(
                    variable = %variable_name.escape_debug(),
                    "declined env request"
                );
                let _ = session.channel_failure(channel);
            }
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Refusals are answered with success, then the reason on stderr and exit status 1:
        // OpenSSH prints only "exec request failed" for a failure reply, without the reason.
        let _ = session.channel_success(channel);
        if self.shared.stopping.is_cancelled() {
            self.channels.remove(&channel);
            refuse(
                session,
                channel,
                "the server is restarting",
                Some("try again in a moment"),
            );
            return Ok(());
        }
        let request = match command::parse_request(data) {
            Ok(request) => request,
            Err(error) => {
                self.refuse_channel(session, channel, &error.to_string());
                return Ok(());
            }
        };
        if self
            .channels
            .get(&channel)
            .is_some_and(|pending| pending.pty_requested)
        {
            self.refuse_channel(
                session,
                channel,
                "interactive terminals are not offered here",
            );
            return Ok(());
        }
        let Some(identity) = self.identity.clone() else {
            self.refuse_channel(session, channel, "not authenticated");
            return Ok(());
        };
        let Some(PendingChannel {
            channel: Some(handle),
            git_protocol,
            ..
        }) = self.channels.remove(&channel)
        else {
            refuse(session, channel, "one command per channel", None);
            return Ok(());
        };
        let shared = self.shared.clone();
        let gone = self.gone.clone();
        let peer = self.peer;
        let command = match request {
            Request::Git(command) => command,
            Request::Ops(ops) => {
                let span = tracing::info_span!(
                    "ops",
                    verb = ops.verb.name(),
                    webspace = ops.webspace.as_deref().unwrap_or_default(),
                    customer = %identity.customer,
                );
                self.shared.commands.spawn(
                    async move {
                        execute_ops(shared, identity, ops, handle, gone).await;
                    }
                    .instrument(span),
                );
                return Ok(());
            }
        };
        let span = tracing::info_span!(
            "git",
            webspace = %command.webspace,
            service = command.service.subcommand(),
            customer = %identity.customer,
        );
        self.shared.commands.spawn(
            async move {
                execute(shared, identity, command, git_protocol, handle, gone, peer).await;
            }
            .instrument(span),
        );
        Ok(())
    }
}

/// Tells the client why its command was refused (`remote: error:` and a `hint:`), with exit
/// status 1, and closes the channel.
async fn fail_channel(channel: &Channel<Msg>, message: &str, hint: Option<&str>) {
    let mut text = format!("remote: error: {message}\n");
    if let Some(hint) = hint {
        text.push_str(&format!("remote: hint: {hint}\n"));
    }
    let _ = channel.extended_data_bytes(1, text.into_bytes()).await;
    let _ = channel.exit_status(1).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// Whether the key still identifies the customer and `webspace` is theirs; otherwise the client
/// is told (an unknown webspace and another customer's alike) and `false` returned.
async fn authorize<S: Store>(
    shared: &Shared<S>,
    identity: &Identity,
    webspace: &str,
    channel: &Channel<Msg>,
) -> bool {
    if !still_authorized(shared, identity, channel).await {
        return false;
    }
    let found = match shared.store.get::<Webspace>(webspace).await {
        Ok(found) => found,
        Err(error) => {
            tracing::error!(error = %error, "cannot read the webspace");
            fail_channel(
                channel,
                "the server cannot read its configuration; try again later",
                None,
            )
            .await;
            return false;
        }
    };
    // An unknown webspace and another customer's get the same answer, so names do not leak.
    if found.as_ref().map(|w| w.spec.customer.as_str()) != Some(identity.customer.as_str()) {
        tracing::info!("refused: not the owner");
        fail_channel(
            channel,
            &format!("webspace `{webspace}` does not exist or you have no access to it"),
            Some("check the name in your remote URL, or ask the webspace's owner"),
        )
        .await;
        return false;
    }
    true
}

/// Whether the key that authenticated the connection still identifies its customer (it may
/// have been removed since); otherwise the client is told.
async fn still_authorized<S: Store>(
    shared: &Shared<S>,
    identity: &Identity,
    channel: &Channel<Msg>,
) -> bool {
    if shared.keys.lookup(&identity.fingerprint).await != Owner::Customer(identity.customer.clone())
    {
        fail_channel(channel, "your key is no longer authorized", None).await;
        return false;
    }
    true
}

/// Authorizes and runs one owner's command as `slipway ops VERB [WEBSPACE] ARGS...`, with the
/// hooks' environment contract (data directory, store, customer).
async fn execute_ops<S: Store>(
    shared: Arc<Shared<S>>,
    identity: Identity,
    ops: OpsCommand,
    channel: Channel<Msg>,
    gone: CancellationToken,
) {
    if let Some(webspace) = &ops.webspace {
        if !authorize(&shared, &identity, webspace, &channel).await {
            return;
        }
    } else if !still_authorized(&shared, &identity, &channel).await {
        return;
    }
    let Some(_slot) = OpsSlot::take(&shared.ops, &identity.customer) else {
        fail_channel(
            &channel,
            &format!("{OPS_PER_CUSTOMER} of your commands are running already"),
            Some("end one (a `logs -f` runs until you leave it)"),
        )
        .await;
        return;
    };
    // A change of what runs is ordered with the webspace's pushes.
    let _guard = match (&ops.webspace, ops.verb.mutates()) {
        (Some(webspace), true) => match shared.locks.try_acquire(webspace) {
            Some(guard) => Some(guard),
            None => {
                let text = format!("remote: waiting for a push to `{webspace}` to finish...\n");
                let _ = channel.extended_data_bytes(1, text.into_bytes()).await;
                let acquired =
                    tokio::time::timeout(shared.config.push_wait, shared.locks.acquire(webspace));
                tokio::select! {
                    acquired = acquired => match acquired {
                        Ok(guard) => Some(guard),
                        Err(_) => {
                            fail_channel(&channel, "a push to this webspace is still running", Some("run it again when the push has finished")).await;
                            return;
                        }
                    },
                    () = gone.cancelled() => return,
                }
            }
        },
        _ => None,
    };
    let mut command = tokio::process::Command::new("setpriv");
    command
        .args(["--pdeathsig", "KILL", "--"])
        .arg(&shared.config.exe)
        .args(["ops", ops.verb.name()])
        .args(ops.webspace.iter())
        .args(&ops.args)
        .current_dir(&shared.config.data)
        .env_clear()
        .envs(shared.config.environment.iter().map(|(n, v)| (n, v)))
        .env(env::DATA, &shared.config.data)
        .env(env::CUSTOMER, &identity.customer)
        .env(env::PUSHER, &identity.fingerprint);
    let started = std::time::Instant::now();
    match plumbing::run_command(command, channel, gone, shared.kill.clone()).await {
        Ok(ending) => tracing::info!(?ending, elapsed = ?started.elapsed(), "command finished"),
        Err(error) => tracing::error!(%error, "cannot spawn slipway ops"),
    }
}

/// Authorizes and runs one git command on an accepted channel.
async fn execute<S: Store>(
    shared: Arc<Shared<S>>,
    identity: Identity,
    command: GitCommand,
    git_protocol: Option<String>,
    channel: Channel<Msg>,
    gone: CancellationToken,
    peer: SocketAddr,
) {
    let tell = |text: String| {
        let channel = &channel;
        async move {
            let _ = channel.extended_data_bytes(1, text.into_bytes()).await;
        }
    };
    let fail =
        async |message: &str, hint: Option<&str>| fail_channel(&channel, message, hint).await;

    // The key may have been removed since the connection authenticated.
    if !authorize(&shared, &identity, &command.webspace, &channel).await {
        return;
    }
    let _guard = if command.service == Service::ReceivePack {
        match shared.locks.try_acquire(&command.webspace) {
            Some(guard) => Some(guard),
            None => {
                tell(format!(
                    "remote: waiting for another push to `{}` to finish...\n",
                    command.webspace
                ))
                .await;
                tokio::select! {
                    acquired = tokio::time::timeout(shared.config.push_wait, shared.locks.acquire(&command.webspace)) => match acquired {
                        Ok(guard) => Some(guard),
                        Err(_) => {
                            fail("another push to this webspace is still running", Some("push again when it has finished")).await;
                            return;
                        }
                    },
                    () = gone.cancelled() => return,
                }
            }
        }
    } else {
        None
    };
    if _guard.is_some() {
        tracing::info!("push lock acquired");
    }
    let repository = match repository::open_or_create(
        &shared.config.data,
        &command.webspace,
        &shared.config.environment,
    )
    .await
    {
        Ok(repository) => repository,
        Err(error @ repository::RepositoryError::NotADirectory { .. }) => {
            tracing::error!(error = %error, "refused a repository that is not a plain directory");
            fail(
                &format!(
                    "the repository of `{}` is not a plain directory on the server; refusing to use it",
                    command.webspace
                ),
                Some("this is for the server's operator to fix; tell them"),
            )
            .await;
            return;
        }
        Err(error) => {
            tracing::error!(error = %error, "cannot prepare the repository");
            fail(
                "the server cannot prepare the repository; try again later",
                None,
            )
            .await;
            return;
        }
    };
    let mut environment = shared.config.environment.clone();
    let mut set = |name: &str, value: OsString| environment.push((name.into(), value));
    set(env::DATA, shared.config.data.clone().into_os_string());
    set(env::EXE, shared.config.exe.clone().into_os_string());
    set(env::WEBSPACE, command.webspace.clone().into());
    set(env::CUSTOMER, identity.customer.clone().into());
    set(env::PUSHER, identity.fingerprint.clone().into());
    set(
        env::BUILD,
        if shared.config.build { "1" } else { "0" }.into(),
    );
    set(
        env::ROLLOUT,
        if shared.config.rollout { "1" } else { "0" }.into(),
    );
    if let Some(registry) = &shared.config.registry {
        set(env::REGISTRY, registry.into());
    }
    if let Some(protocol) = git_protocol {
        set(env::GIT_PROTOCOL, protocol.into());
    }
    let started = std::time::Instant::now();
    let invocation = Invocation {
        service: command.service,
        repository: &repository,
        environment,
    };
    let service = invocation.service;
    let ending = plumbing::run(invocation, channel, gone, shared.kill.clone()).await;
    if service == Service::ReceivePack {
        // Still under the push lock: what git left in quarantine belongs to this push, which
        // is over (git removes it itself unless it was killed).
        match quarantine::remove(&repository).await {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => {
                tracing::info!(?removed, "removed the quarantined objects of the push")
            }
            Err(error) => tracing::warn!(
                error = %quarantine::chain(&error),
                "cannot remove the quarantined objects of the push"
            ),
        }
    }
    let ok = match ending {
        Ok(Ending::Exited(code)) => {
            tracing::info!(code, elapsed = ?started.elapsed(), %peer, "git finished");
            code == 0
        }
        Ok(Ending::Killed) => {
            tracing::info!(elapsed = ?started.elapsed(), "git killed");
            false
        }
        Err(error) => {
            tracing::error!(error = %error, "cannot spawn git");
            false
        }
    };
    shared
        .config
        .metrics
        .session(service, started.elapsed(), ok);
}
