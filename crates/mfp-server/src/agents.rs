//! Agents: each has a queue between the runtime and its implementation (builtin,
//! subprocess, webhook), and a task per agent hands messages on. The runtime's handler
//! puts the message in that queue, then waits until the agent is done with it (see
//! [`crate::adapter::Done`]): the queue holds at most the message being handed over, and
//! the runtime's bounded mailbox is the real queue — with storage, a durable one. A
//! subprocess agent that is down (crashed, restarting) keeps its current message, which is
//! delivered again to the restarted program; a message not acknowledged when the server
//! stops stays in the runtime's durable inbox and is delivered again (flagged
//! `redelivered`) at the next start.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};

use crate::adapter::{AgentRef, Incoming, Sink, Target};
use crate::config::{RestartPolicy, SubprocessSpec};
use crate::rpc::{self, Inbound, RpcError};

/// Server-side counters (exported on `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Messages handed to an agent and acknowledged.
    pub(crate) delivered: AtomicU64,
    /// Messages dropped (webhook retries exhausted).
    pub(crate) dropped: AtomicU64,
    /// Subprocess agents restarted.
    pub(crate) restarts: AtomicU64,
    /// Lines from agents that were not valid JSON-RPC (or too long).
    pub(crate) protocol_errors: AtomicU64,
    /// Webhook delivery attempts that failed.
    pub(crate) webhook_failures: AtomicU64,
    /// Messages in agents' queues or being delivered (including those in mcp inboxes).
    pub(crate) pending: AtomicU64,
    /// Of those, messages waiting in mcp agents' inboxes for an MCP host.
    pub(crate) in_inboxes: AtomicU64,
}

/// Process groups of running agents, so that an immediate exit can kill them.
#[derive(Debug, Default)]
pub(crate) struct Groups(Mutex<HashSet<i32>>);

impl Groups {
    fn add(&self, pgid: i32) {
        self.0.lock().insert(pgid);
    }
    fn remove(&self, pgid: i32) {
        self.0.lock().remove(&pgid);
    }
    /// SIGKILLs every agent process group (second signal: exit at once).
    pub(crate) fn kill_all(&self) {
        for pgid in self.0.lock().iter() {
            signal_group(*pgid, rustix::process::Signal::KILL);
        }
    }
}

fn signal_group(pgid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Shared by every agent task.
pub(crate) struct Shared {
    pub(crate) counters: Arc<Counters>,
    pub(crate) groups: Arc<Groups>,
    /// Becomes true when agents must stop.
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) delivery_timeout: Duration,
}

/// A queue and the sink the runtime hands messages to. The runtime hands over one message
/// of an agent at a time, and only after the previous one was acknowledged, so the queue
/// holds at most one message.
pub(crate) fn queue(name: &str, capacity: usize, counters: &Arc<Counters>) -> (Sink, mpsc::Receiver<Incoming>) {
    let (tx, rx) = mpsc::channel::<Incoming>(capacity);
    let counters = Arc::clone(counters);
    let name = name.to_string();
    let sink: Sink = Arc::new(move |msg: Incoming| {
        let tx = tx.clone();
        let counters = Arc::clone(&counters);
        let name = name.clone();
        Box::pin(async move {
            counters.pending.fetch_add(1, Ordering::AcqRel);
            if tx.send(msg).await.is_err() {
                // The agent's task ended (its program finished, or the server is stopping):
                // the message is not acknowledged, so with storage it waits for the next start.
                counters.pending.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(agent = %name, "the agent is not running; its message is not acknowledged (with storage it is delivered again at the next start)");
            }
        })
    });
    (sink, rx)
}

/// The agent is done with `m`: counted, and acknowledged to the runtime.
pub(crate) fn done(counters: &Counters, m: Incoming) {
    counters.pending.fetch_sub(1, Ordering::AcqRel);
    counters.delivered.fetch_add(1, Ordering::Relaxed);
    m.done.ack();
}

/// The `echo` builtin: sends every message back on its channel.
pub(crate) async fn run_echo(name: String, agent: AgentRef, mut rx: mpsc::Receiver<Incoming>, shared: Arc<Shared>) {
    while let Some(m) = rx.recv().await {
        if let Err(e) = agent.send(Target::Channel(m.channel.clone()), &m.payload, None).await {
            tracing::warn!(agent = %name, channel = %short(&m.channel), error = %e, "echo reply failed");
        }
        done(&shared.counters, m);
    }
}

/// The `log` builtin (pymfp's `callback`): logs each message's metadata, never its payload.
pub(crate) async fn run_log(name: String, mut rx: mpsc::Receiver<Incoming>, shared: Arc<Shared>) {
    while let Some(m) = rx.recv().await {
        tracing::info!(agent = %name, sender = %short(&m.sender), channel = %short(&m.channel), step = m.step, bytes = m.payload.len(), redelivered = m.redelivered, "message received");
        done(&shared.counters, m);
    }
}

pub(crate) fn short(hex: &str) -> &str {
    hex.get(..8).unwrap_or(hex)
}

/// What a subprocess agent's supervisor reports when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The program exited successfully and is not restarted.
    Finished,
    /// The server is stopping.
    Stopped,
    /// Restart policy `never` after a failure.
    Failed,
}

/// Runs a subprocess agent until the server stops (or, by policy, it ends).
pub(crate) async fn run_subprocess(
    name: String,
    spec: SubprocessSpec,
    agent: AgentRef,
    mut rx: mpsc::Receiver<Incoming>,
    shared: Arc<Shared>,
) -> Ended {
    let mut backoff = Duration::from_millis(100);
    let mut current: Option<Incoming> = None;
    let mut stop = shared.stop.clone();
    let mut first = true;
    loop {
        if *stop.borrow() {
            return Ended::Stopped;
        }
        if !first {
            shared.counters.restarts.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let started = Instant::now();
        let outcome = match spawn(&name, &spec) {
            Ok(child) => session(&name, &spec, &agent, child, &mut rx, &mut current, &shared).await,
            Err(e) => {
                tracing::error!(agent = %name, program = %spec.program, cwd = %spec.cwd.display(), error = %e, "cannot start the agent's program (check command: and cwd: in the configuration); retrying");
                Session::Crashed
            }
        };
        match outcome {
            Session::Stopped => return Ended::Stopped,
            Session::Exited(true) if spec.restart != RestartPolicy::Always => {
                tracing::info!(agent = %name, "agent finished (exit status 0)");
                return Ended::Finished;
            }
            Session::Exited(_) | Session::Crashed if spec.restart == RestartPolicy::Never => {
                tracing::error!(agent = %name, "agent failed and its restart policy is never");
                return Ended::Failed;
            }
            Session::Exited(_) | Session::Crashed | Session::Hung => {}
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tracing::warn!(agent = %name, backoff_ms = backoff.as_millis() as u64, "restarting agent");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return Ended::Stopped,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn spawn(name: &str, spec: &SubprocessSpec) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .env("MFP_AGENT_NAME", name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

enum Session {
    Stopped,
    Exited(bool),
    Crashed,
    Hung,
}

type Pending = Arc<Mutex<std::collections::HashMap<u64, oneshot::Sender<Option<String>>>>>;

/// Writes whole lines to the agent's stdin; `None` once closed.
type Writer = Arc<tokio::sync::Mutex<Option<ChildStdin>>>;

/// How long one line may take to write: an agent that stops reading its stdin must not
/// block the server (the pipe is full); it counts as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests from one agent handled at once; more wait (and the agent's stdout with them).
const MAX_CONCURRENT_CALLS: usize = 64;

async fn write_line(w: &Writer, v: &Value) -> bool {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    let write = async {
        let mut g = w.lock().await;
        match g.as_mut() {
            Some(stdin) => stdin.write_all(&line).await.is_ok() && stdin.flush().await.is_ok(),
            None => false,
        }
    };
    tokio::time::timeout(WRITE_TIMEOUT, write).await.unwrap_or(false)
}

#[allow(clippy::too_many_lines)]
async fn session(
    name: &str,
    spec: &SubprocessSpec,
    agent: &AgentRef,
    mut child: Child,
    rx: &mut mpsc::Receiver<Incoming>,
    current: &mut Option<Incoming>,
    shared: &Arc<Shared>,
) -> Session {
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    if let Some(g) = pgid {
        shared.groups.add(g);
    }
    tracing::info!(agent = %name, pid = pgid.unwrap_or(0), "agent started");
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
    let pending: Pending = Arc::default();

    // stderr → log, line by line (bounded).
    if let Some(err) = child.stderr.take() {
        let name = name.to_string();
        let max = spec.max_line_bytes;
        tokio::spawn(async move {
            let mut r = BufReader::new(err);
            let mut buf = Vec::new();
            loop {
                match read_line_limited(&mut r, &mut buf, max).await {
                    Ok(Line::Eof) | Err(_) => break,
                    Ok(Line::TooLong) => tracing::warn!(agent = %name, "stderr line over max_line_bytes skipped"),
                    Ok(Line::Ok) => {
                        tracing::info!(target: "mfp_server::agent", agent = %name, "{}", String::from_utf8_lossy(&buf).trim_end())
                    }
                }
            }
        });
    }

    // stdout → requests and responses; `reader_done` once it reached the end.
    let (reader_done_tx, mut reader_done) = watch::channel(false);
    let reader = child.stdout.take().map(|out| {
        let name = name.to_string();
        let max = spec.max_line_bytes;
        let writer = Arc::clone(&writer);
        let pending = Arc::clone(&pending);
        let agent = agent.clone();
        let counters = Arc::clone(&shared.counters);
        let calls = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS));
        tokio::spawn(async move {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                let line = match read_line_limited(&mut r, &mut buf, max).await {
                    Ok(Line::Eof) | Err(_) => break,
                    Ok(Line::TooLong) => {
                        counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(agent = %name, max_line_bytes = max, "agent wrote a line over max_line_bytes; answered with an error");
                        let e = RpcError::new(rpc::INVALID_REQUEST, format!("line longer than {max} bytes"));
                        write_line(&writer, &rpc::response(&Value::Null, Err(e))).await;
                        continue;
                    }
                    Ok(Line::Ok) => std::mem::take(&mut buf),
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match rpc::classify(&line) {
                    Inbound::Invalid { id, error } => {
                        counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(agent = %name, code = error.code, "invalid JSON-RPC from agent: {}", error.message);
                        write_line(&writer, &rpc::response(&id, Err(error))).await;
                    }
                    Inbound::Response { id, error } => {
                        let tx = id.as_u64().and_then(|i| pending.lock().remove(&i));
                        match tx {
                            Some(tx) => {
                                let _ = tx.send(error);
                            }
                            None => tracing::warn!(agent = %name, "response to an unknown request id ignored"),
                        }
                    }
                    Inbound::Request { id, method, params } => {
                        let Ok(permit) = Arc::clone(&calls).acquire_owned().await else { break };
                        let writer = Arc::clone(&writer);
                        let agent = agent.clone();
                        let counters = Arc::clone(&counters);
                        // Calls run concurrently: a send waiting for storage does not stop
                        // the agent's answers to deliveries.
                        tokio::spawn(async move {
                            let result = rpc::call(&agent, &method, &params).await;
                            if matches!(&result, Err(e) if e.code == rpc::METHOD_NOT_FOUND) {
                                counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(id) = id {
                                write_line(&writer, &rpc::response(&id, result)).await;
                            }
                            drop(permit);
                        });
                    }
                }
            }
            let _ = reader_done_tx.send(true);
        })
    });

    let mut stop = shared.stop.clone();
    let mut next_id: u64 = 1;
    let outcome = loop {
        // The message to deliver: the one not yet acknowledged, or the next.
        let msg = match current.take() {
            Some(m) => m,
            None => {
                tokio::select! {
                    m = rx.recv() => match m { Some(m) => m, None => break Session::Stopped },
                    status = child.wait() => break exited(name, status),
                    _ = stop.wait_for(|s| *s) => break Session::Stopped,
                }
            }
        };
        let id = next_id;
        next_id += 1;
        let (tx, ack) = oneshot::channel();
        pending.lock().insert(id, tx);
        let req = json!({"jsonrpc": "2.0", "id": id, "method": "deliver", "params": rpc::deliver_params(&msg)});
        if !write_line(&writer, &req).await {
            *current = Some(msg);
            // Either the agent is gone, or it stopped reading its stdin.
            match tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
                Ok(status) => break exited(name, status),
                Err(_) => {
                    tracing::error!(agent = %name, "agent does not read its stdin; restarting it (the message is delivered again)");
                    break Session::Hung;
                }
            }
        }
        let ack = tokio::time::timeout(shared.delivery_timeout, ack);
        tokio::pin!(ack);
        tokio::select! {
            // An answer and the agent's exit can be ready at once (it answered, then
            // exited): the answer first.
            biased;
            r = &mut ack => match r {
                Ok(Ok(err)) => answered(name, &shared.counters, msg, err),
                Ok(Err(_)) => {
                    // The reader ended: the agent closed stdout or died.
                    *current = Some(msg);
                    break exited(name, child.wait().await);
                }
                Err(_) => {
                    tracing::error!(agent = %name, timeout_ms = shared.delivery_timeout.as_millis() as u64, "agent did not answer deliver in time; restarting it (the message is delivered again)");
                    *current = Some(msg);
                    break Session::Hung;
                }
            },
            status = child.wait() => {
                // Its answer may still be in the pipe, or on its way through the reader,
                // which reads stdout to its end: wait for it there (bounded), or the
                // message would be delivered again although the agent handled it.
                let answer = tokio::time::timeout(READER_DRAIN, async {
                    tokio::select! {
                        biased;
                        r = &mut ack => r.ok().and_then(Result::ok),
                        _ = reader_done.wait_for(|d| *d) => None,
                    }
                })
                .await
                .ok()
                .flatten();
                match answer {
                    Some(err) => answered(name, &shared.counters, msg, err),
                    None => *current = Some(msg),
                }
                break exited(name, status);
            }
            // The server is stopping: the message stays unacknowledged (with storage, it is
            // delivered again at the next start).
            () = async { drop(stop.wait_for(|s| *s).await) } => {
                *current = Some(msg);
                break Session::Stopped;
            }
        }
    };
    // Close stdin, give the agent a moment, then TERM and KILL its process group.
    if let Ok(mut w) = tokio::time::timeout(Duration::from_secs(1), writer.lock()).await {
        w.take();
    }
    stop_child(name, &mut child, pgid, matches!(outcome, Session::Stopped)).await;
    if let Some(g) = pgid {
        shared.groups.remove(g);
    }
    // The process is gone (or stopping): what it wrote before it went is still carried out.
    // Its stdout ends once no process holds the pipe; a leftover grandchild that keeps it open
    // gets a bounded wait, then the reader is stopped.
    if let Some(mut r) = reader
        && tokio::time::timeout(READER_DRAIN, &mut r).await.is_err()
    {
        tracing::warn!(agent = %name, "agent's stdout still open after it stopped; its unread output is dropped");
        r.abort();
    }
    pending.lock().clear();
    outcome
}

/// The agent answered the delivery of `msg` (with an error, or not): it is done with it.
fn answered(name: &str, counters: &Counters, msg: Incoming, err: Option<String>) {
    if let Some(e) = err {
        tracing::warn!(agent = %name, error = %e, "agent answered deliver with an error; message not redelivered");
    }
    done(counters, msg);
}

fn exited(name: &str, status: std::io::Result<std::process::ExitStatus>) -> Session {
    match status {
        Ok(s) if s.success() => Session::Exited(true),
        Ok(s) => {
            tracing::warn!(agent = %name, status = %s, "agent exited");
            Session::Exited(false)
        }
        Err(e) => {
            tracing::warn!(agent = %name, error = %e, "agent lost");
            Session::Crashed
        }
    }
}

/// How long the agent's stdout is read to its end once the agent has stopped.
const READER_DRAIN: Duration = Duration::from_secs(2);

/// Grace after closing stdin, and after SIGTERM.
const GRACE: Duration = Duration::from_secs(3);

async fn stop_child(name: &str, child: &mut Child, pgid: Option<i32>, graceful: bool) {
    if graceful && let Ok(Ok(_)) = tokio::time::timeout(GRACE, child.wait()).await {
        // Exited after stdin closed; anything left in its group goes below.
    }
    if let Some(g) = pgid {
        signal_group(g, rustix::process::Signal::TERM);
        if !matches!(tokio::time::timeout(GRACE, child.wait()).await, Ok(Ok(_))) {
            tracing::warn!(agent = %name, "agent ignored SIGTERM; killing its process group");
        }
        signal_group(g, rustix::process::Signal::KILL);
    }
    let _ = child.kill().await;
}

/// One line read with a size limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line (without its newline) is in the buffer.
    Ok,
    /// The line was longer than the limit; it was skipped up to its newline.
    TooLong,
    /// End of input.
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), never holding more than
/// `max` bytes: a longer line is discarded as it streams in.
pub(crate) async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Ok
            });
        }
        let (chunk, found) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (avail.get(..i).unwrap_or_default(), Some(i)),
            None => (avail, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = found.map_or(avail.len(), |i| i + 1);
        r.consume(used);
        if found.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Ok });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_without_holding_them() {
        let mut input = vec![b'x'; 5000];
        input.push(b'\n');
        input.extend_from_slice(b"ok\nlast");
        let mut r = BufReader::with_capacity(64, input.as_slice());
        let mut buf = Vec::new();
        assert_eq!(read_line_limited(&mut r, &mut buf, 100).await.unwrap(), Line::TooLong);
        assert!(buf.capacity() <= 200, "kept {} bytes", buf.capacity());
        assert_eq!(read_line_limited(&mut r, &mut buf, 100).await.unwrap(), Line::Ok);
        assert_eq!(buf, b"ok");
        assert_eq!(read_line_limited(&mut r, &mut buf, 100).await.unwrap(), Line::Ok);
        assert_eq!(buf, b"last");
        assert_eq!(read_line_limited(&mut r, &mut buf, 100).await.unwrap(), Line::Eof);
    }
}
