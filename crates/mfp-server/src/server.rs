//! `run`: listeners, runtime, agents, signals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::adapter::{AgentRef, KeySource, Mfp};
use crate::admin::{AdminState, MetricsCollector};
use crate::agents::{self, Counters, Ended, Groups, Shared};
use crate::config::{AgentKind, TokenSource, Validated};
use crate::inbox::Inbox;
use crate::mcp::McpAgent;
use crate::webhook::{self, Caller};

/// How the server is run.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// `mfp-server run`: listeners, agents, until a signal.
    Serve {
        /// Where to write the bound addresses.
        port_file: Option<PathBuf>,
    },
    /// `mfp-server mcp`: no listeners; the mcp agent of this name is served over stdin and
    /// stdout until the MCP host closes stdin (or a signal).
    Stdio {
        /// The mcp agent.
        agent: String,
    },
}

/// Why `run` failed (the process exits with status 1).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// A listener could not be bound.
    #[error(
        "{what}: cannot listen on {addr}: {reason} (choose another port in the configuration, or stop what uses it)"
    )]
    Listen { what: &'static str, addr: String, reason: String },
    /// The runtime or its storage could not be opened.
    #[error("{0}")]
    Runtime(#[from] crate::adapter::AdapterError),
    /// A webhook or mcp agent's token could not be read.
    #[error("agent {agent}: token_env {var} is not set or empty")]
    Token { agent: String, var: String },
    /// `admin.token_env` names a variable that is not set.
    #[error("admin.token_env {var} is not set or empty: set it, or remove admin.token_env")]
    AdminToken { var: String },
    /// `mfp-server mcp --agent NAME` names no mcp agent of the configuration.
    #[error("{file}: no agent of type mcp named {agent:?} (the mcp agents are: {known})")]
    NotMcp { file: String, agent: String, known: String },
    /// Something else.
    #[error("{0}")]
    Other(String),
}

async fn bind(what: &'static str, addr: &str) -> Result<(TcpListener, SocketAddr), RunError> {
    let err = |reason: String| RunError::Listen { what, addr: addr.to_string(), reason };
    let l = TcpListener::bind(addr).await.map_err(|e| err(e.to_string()))?;
    let local = l.local_addr().map_err(|e| err(e.to_string()))?;
    Ok((l, local))
}

/// SIGTERM and SIGINT, installed before anything else starts: a signal that arrives
/// during start-up is then handled once the server is up, instead of killing it.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, RunError> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| RunError::Other(format!("cannot install signal handlers: {e}"));
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(err)?,
            int: signal(SignalKind::interrupt()).map_err(err)?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Runs the server until a signal (or, when configured, until its agents finished).
#[allow(clippy::too_many_lines)]
pub(crate) async fn run(cfg: Validated, mode: Mode) -> Result<(), RunError> {
    let mut signals = Signals::install()?;
    let (port_file, stdio_agent, listen) = match mode {
        Mode::Serve { port_file } => (port_file, None, true),
        Mode::Stdio { agent } => {
            if !cfg.agents.iter().any(|a| a.name == agent && matches!(a.kind, AgentKind::Mcp(_))) {
                let known: Vec<&str> = cfg
                    .agents
                    .iter()
                    .filter(|a| matches!(a.kind, AgentKind::Mcp(_)))
                    .map(|a| a.name.as_str())
                    .collect();
                return Err(RunError::NotMcp {
                    file: cfg.file.display().to_string(),
                    agent,
                    known: if known.is_empty() { "none".into() } else { known.join(", ") },
                });
            }
            (None, Some(agent), false)
        }
    };
    for w in &cfg.warnings {
        tracing::warn!("{}: {w}", cfg.file.display());
    }
    let counters = Arc::new(Counters::default());
    let groups = Arc::new(Groups::default());
    let fed_slot: crate::admin::FedSlot = Arc::default();
    let collector = Arc::new(MetricsCollector {
        mfp: std::sync::OnceLock::new(),
        counters: Arc::clone(&counters),
        federation: Arc::clone(&fed_slot),
    });
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Arc::clone(&collector)));
    let operator_token = match &cfg.admin_token {
        TokenSource::None => None,
        TokenSource::Literal(t) => Some(Arc::new(zeroize::Zeroizing::new(t.clone()))),
        TokenSource::Env(var) => match std::env::var(var) {
            Ok(t) if !t.is_empty() => Some(Arc::new(zeroize::Zeroizing::new(t))),
            _ => return Err(RunError::AdminToken { var: var.clone() }),
        },
    };
    let admin_state = Arc::new(AdminState {
        ready: false.into(),
        registry,
        federation: Arc::clone(&fed_slot),
        mfp: std::sync::OnceLock::new(),
        operator_token,
    });

    // Listeners first: a port in use stops the start before anything else happens.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let mut addrs = serde_json::Map::new();
    let mut admin_task = None;
    if let Some(addr) = cfg.admin_addr.as_ref().filter(|_| listen) {
        let (listener, local) = bind("admin listener", addr).await?;
        tracing::info!(addr = %local, "admin listener bound");
        addrs.insert("admin".into(), local.to_string().into());
        let app = crate::admin::router(Arc::clone(&admin_state));
        let mut stop = admin_stop_rx.clone();
        admin_task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    let webhook_agents: Vec<_> = cfg.agents.iter().filter(|a| matches!(a.kind, AgentKind::Webhook(_))).collect();
    let http_listener = if webhook_agents.is_empty() || !listen {
        None
    } else {
        let (l, local) = bind("http listener", &cfg.http_addr).await?;
        tracing::info!(addr = %local, "http listener bound");
        addrs.insert("http".into(), local.to_string().into());
        Some(l)
    };
    // The MCP listener, when an mcp agent has a token (the others are reachable over stdio only).
    let mcp_http_agents: Vec<_> =
        cfg.agents.iter().filter(|a| matches!(&a.kind, AgentKind::Mcp(m) if m.token != TokenSource::None)).collect();
    let mcp_listener = if mcp_http_agents.is_empty() || !listen {
        None
    } else {
        let (l, local) = bind("mcp listener", &cfg.mcp_addr).await?;
        tracing::info!(addr = %local, agents = mcp_http_agents.len(), "mcp listener bound (Streamable HTTP at /mcp/<agent>)");
        addrs.insert("mcp".into(), local.to_string().into());
        Some(l)
    };

    // The runtime, on its storage.
    if let Some(parent) = cfg.storage_path.as_deref().and_then(Path::parent)
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| RunError::Other(format!("storage: cannot create {}: {e}", parent.display())))?;
    }
    let key = match (&cfg.storage_path, &cfg.master_key_env, &cfg.key_file) {
        (None, _, _) => None,
        (Some(_), Some(var), _) => Some(crate::adapter::master_key(KeySource::Env(var))?),
        (Some(_), None, Some(file)) => Some(crate::adapter::master_key(KeySource::File(file))?),
        (Some(db), None, None) => {
            let mut p = db.clone().into_os_string();
            p.push(".key");
            Some(crate::adapter::master_key(KeySource::Generated(Path::new(&p)))?)
        }
    };
    // The master key also opens an encrypted identity key file (federation).
    let identity_master = key.clone();
    let runtime_config = cfg.runtime.clone();
    let db = cfg.storage_path.clone();
    let mfp = tokio::task::spawn_blocking(move || Mfp::open(runtime_config, db.as_deref().zip(key)))
        .await
        .map_err(|e| RunError::Other(format!("opening the runtime failed: {e}")))?
        .map_err(|e| match &stdio_agent {
            // `mfp-server mcp` runs its own runtime: say what to do when a server holds it.
            Some(_) => RunError::Other(format!(
                "{e} (mfp-server mcp runs the runtime itself: stop the server that uses this database, or connect the MCP host to that server's HTTP endpoint /mcp/<agent>)"
            )),
            None => RunError::Runtime(e),
        })?;
    let mfp = Arc::new(mfp);
    let _ = collector.mfp.set(Arc::clone(&mfp));
    let _ = admin_state.mfp.set(Arc::clone(&mfp));
    match &cfg.storage_path {
        Some(p) if mfp.restored() => {
            tracing::info!(runtime = %mfp.identity_short(), db = %p.display(), "runtime restored from storage")
        }
        Some(p) => tracing::info!(runtime = %mfp.identity_short(), db = %p.display(), "new runtime on storage"),
        None => tracing::info!(runtime = %mfp.identity_short(), "new in-memory runtime"),
    }

    // Agents.
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        counters: Arc::clone(&counters),
        groups: Arc::clone(&groups),
        stop: stop_rx,
        delivery_timeout: Duration::from_millis(cfg.delivery_timeout_ms),
    });
    let mut refs: HashMap<String, AgentRef> = HashMap::new();
    let mut receivers = Vec::new();
    for spec in &cfg.agents {
        let (sink, feed) = if matches!(spec.kind, AgentKind::Mcp(_)) {
            let (sink, inbox) = crate::inbox::memory(&spec.name, spec.queue_capacity, &counters);
            (sink, Feed::Inbox(inbox))
        } else {
            let (sink, rx) = agents::queue(&spec.name, spec.queue_capacity, &counters);
            (sink, Feed::Queue(rx))
        };
        let r = mfp.start_agent(&spec.name, sink)?;
        refs.insert(spec.name.clone(), r);
        receivers.push((spec, feed));
    }
    let all: Vec<AgentRef> = refs.values().cloned().collect();
    mfp.share_names(&all);
    let orphans = mfp.orphans();
    if !orphans.is_empty() {
        tracing::warn!(agents = ?orphans, "stored agents that the configuration no longer names are left detached (their messages wait)");
    }
    let created = mfp.ensure_channels(&cfg.channels, &refs)?;
    tracing::info!(agents = refs.len(), channels_created = created, "agents and channels set up");

    // Federation, once the agents exist (a peer may open a channel with one at once).
    // /readyz does not wait for peers: a peer being down is not this server being unready.
    let federation = crate::federation::start(&cfg, &mfp, &refs, identity_master.as_ref())
        .await
        .map_err(|e| RunError::Other(e.to_string()))?;
    let federation = federation.map(Arc::new);
    if let Some(f) = &federation {
        if let Some(a) = f.local_addr().filter(|_| listen) {
            addrs.insert("federation".into(), a.to_string().into());
        }
        if let Some(a) = f.pymfp_addr().filter(|_| listen) {
            addrs.insert("federation_pymfp".into(), a.to_string().into());
        }
        *collector.federation.write() = Some(Arc::clone(f));
    }
    if let Some(p) = &port_file {
        write_port_file(p, &serde_json::Value::Object(addrs))
            .map_err(|e| RunError::Other(format!("--port-file {}: {e}", p.display())))?;
    }

    let mut subprocesses: JoinSet<Ended> = JoinSet::new();
    let mut others = JoinSet::new();
    let mut callers = HashMap::new();
    let mcp_stop = tokio_util::sync::CancellationToken::new();
    let mut mcp_endpoints = Vec::new();
    let mut stdio_handler = None;
    for (spec, feed) in receivers {
        let Some(agent) = refs.get(&spec.name).cloned() else { continue };
        let name = spec.name.clone();
        let sh = Arc::clone(&shared);
        let rx = match feed {
            Feed::Queue(rx) => rx,
            Feed::Inbox(inbox) => {
                let AgentKind::Mcp(m) = &spec.kind else { continue };
                let handler = McpAgent::new(&name, agent, inbox as Arc<dyn Inbox>, m.clone(), mcp_stop.clone());
                if stdio_agent.as_deref() == Some(name.as_str()) {
                    stdio_handler = Some(handler);
                } else if listen {
                    let token = match &m.token {
                        TokenSource::None => continue,
                        TokenSource::Literal(t) => Arc::new(zeroize::Zeroizing::new(t.clone())),
                        TokenSource::Env(var) => match std::env::var(var) {
                            Ok(t) if !t.is_empty() => Arc::new(zeroize::Zeroizing::new(t)),
                            _ => return Err(RunError::Token { agent: name, var: var.clone() }),
                        },
                    };
                    mcp_endpoints.push(crate::mcp::Endpoint { name, handler, token });
                }
                continue;
            }
        };
        match &spec.kind {
            AgentKind::Echo => {
                others.spawn(agents::run_echo(name, agent, rx, sh));
            }
            AgentKind::Log => {
                others.spawn(agents::run_log(name, rx, sh));
            }
            AgentKind::Subprocess(s) => {
                subprocesses.spawn(agents::run_subprocess(name, s.clone(), agent, rx, sh));
            }
            AgentKind::Webhook(w) => {
                let token = match &w.token {
                    TokenSource::None => {
                        tracing::warn!(agent = %name, "webhook agent without token: it can receive but not send");
                        None
                    }
                    TokenSource::Literal(t) => Some(Arc::new(zeroize::Zeroizing::new(t.clone()))),
                    TokenSource::Env(var) => match std::env::var(var) {
                        Ok(t) if !t.is_empty() => Some(Arc::new(zeroize::Zeroizing::new(t))),
                        _ => return Err(RunError::Token { agent: name, var: var.clone() }),
                    },
                };
                callers.insert(name.clone(), Caller { agent, token });
                others.spawn(webhook::run_webhook(name, w.clone(), rx, sh));
            }
            AgentKind::Mcp(_) => {}
        }
    }
    let (http_stop_tx, mut http_stop_rx) = watch::channel(false);
    let http_task = http_listener.map(|l| {
        let app = webhook::router(callers, cfg.http_max_body);
        tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop_rx.wait_for(|s| *s).await;
                })
                .await;
        })
    });

    let mcp_task = mcp_listener.map(|l| {
        let app = crate::mcp::router(mcp_endpoints, &cfg.mcp_allowed_hosts, &mcp_stop);
        let stop = mcp_stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        })
    });
    // stdio: serve the one agent; its end (stdin closed) stops the server.
    let stdio_task = stdio_handler.map(|h| tokio::spawn(crate::mcp::serve_stdio(h)));
    let stdio_abort = stdio_task.as_ref().map(tokio::task::JoinHandle::abort_handle);
    let stdio_done = async move {
        match stdio_task {
            Some(t) => t.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stdio_done);

    admin_state.ready.store(true, Ordering::Release);
    tracing::info!("ready");

    // Until a signal, or until every subprocess agent finished (when configured).
    let n_sub = subprocesses.len();
    let finish_wanted = cfg.exit_when_agents_finish && n_sub > 0;
    let mut finished = 0;
    let reason = loop {
        tokio::select! {
            () = signals.next() => break "signal",
            r = &mut stdio_done => {
                match r {
                    Ok(Ok(())) => break "the MCP host closed stdin",
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "mcp over stdio failed");
                        break "mcp over stdio failed";
                    }
                    Err(_) => break "mcp over stdio failed",
                }
            }
            Some(r) = subprocesses.join_next(), if finish_wanted || !subprocesses.is_empty() => {
                if matches!(r, Ok(Ended::Finished)) {
                    finished += 1;
                }
                if finish_wanted && finished == n_sub {
                    break "every agent finished";
                }
            }
        }
    };
    admin_state.ready.store(false, Ordering::Release);
    tracing::info!(reason, "stopping: not ready, draining");

    // A second signal exits at once.
    let groups_now = Arc::clone(&groups);
    tokio::spawn(async move {
        signals.next().await;
        tracing::error!("second signal: exiting at once");
        groups_now.kill_all();
        std::process::exit(130);
    });

    // Stop accepting from outside, drain, stop agents, persist.
    let _ = http_stop_tx.send(true);
    mcp_stop.cancel();
    if let Some(t) = stdio_abort {
        t.abort();
    }
    let deadline = Instant::now() + Duration::from_millis(cfg.drain_timeout_ms);
    // Messages for mcp agents are not waited for: no MCP host can take them any more.
    let mcp_refs: Vec<AgentRef> = cfg
        .agents
        .iter()
        .filter(|a| matches!(a.kind, AgentKind::Mcp(_)))
        .filter_map(|a| refs.get(&a.name).cloned())
        .collect();
    let for_hosts = || {
        counters.in_inboxes.load(Ordering::Acquire)
            + mcp_refs.iter().filter_map(|a| a.status().ok()).map(|s| s.mailbox_len as u64).sum::<u64>()
    };
    let undelivered = || mfp.in_flight().saturating_sub(for_hosts());
    while undelivered() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = undelivered();
    let waiting_for_hosts = for_hosts();
    let durable = cfg.storage_path.is_some();
    if waiting_for_hosts > 0 {
        if durable {
            tracing::info!(
                messages = waiting_for_hosts,
                "messages not yet taken by an MCP host stay stored; they are delivered again at the next start"
            );
        } else {
            tracing::warn!(
                messages = waiting_for_hosts,
                "messages waiting in mcp agents' inboxes are lost (no storage: configure storage.path to keep them)"
            );
        }
    }
    if left > 0 {
        if durable {
            tracing::warn!(
                messages = left,
                "drain deadline passed; messages not yet handled stay stored and are delivered again (flagged redelivered) at the next start"
            );
        } else {
            tracing::warn!(
                messages = left,
                "drain deadline passed; undelivered messages are lost (no storage: configure storage.path to keep them)"
            );
        }
    }
    let _ = stop_tx.send(true);
    while subprocesses.join_next().await.is_some() {}
    if let Some(mut f) = federation {
        collector.federation.write().take();
        // A scrape may hold it for a moment.
        let mut tries = 0;
        loop {
            match Arc::try_unwrap(f) {
                Ok(running) => {
                    running.shutdown().await;
                    tracing::info!("federation links closed");
                    break;
                }
                Err(back) if tries < 100 => {
                    f = back;
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    tracing::warn!("federation still in use at shutdown; its links are dropped");
                    break;
                }
            }
        }
    }
    mfp.shutdown().await;
    others.abort_all();
    if let Some(t) = http_task {
        let _ = t.await;
    }
    if let Some(t) = mcp_task {
        let _ = t.await;
    }
    let _ = admin_stop_tx.send(true);
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// What an agent's task reads from.
enum Feed {
    /// The queue of a builtin, subprocess or webhook agent.
    Queue(tokio::sync::mpsc::Receiver<crate::adapter::Incoming>),
    /// The inbox of an mcp agent.
    Inbox(Arc<crate::inbox::MemoryInbox>),
}

fn write_port_file(path: &Path, v: &serde_json::Value) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, v.to_string())?;
    std::fs::rename(&tmp, path)
}
