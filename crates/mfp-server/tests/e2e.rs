//! End-to-end tests of the `mfp-server` binary, started as a child process on temporary
//! configurations. Listeners bind 127.0.0.1 port 0; every wait is bounded; the server and
//! its agents are killed when a test ends, whatever happens.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn agent_py() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents/agent.py").display().to_string()
}

fn subprocess(name: &str, env: &[(&str, &str)]) -> String {
    let mut s =
        format!("  - name: {name}\n    type: subprocess\n    command: [\"python3\", \"{}\"]\n    env:\n", agent_py());
    for (k, v) in env {
        s.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    s
}

/// The shipped demo: two subprocess agents converse, the server stops by itself with
/// status 0, and a second run continues the same channel where the first stopped.
#[test]
fn demo_conversation_and_restart_continues() {
    let dir = temp_dir("e2e", "demo");
    let agents = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server/agents");
    let demo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server/demo.yaml")).unwrap();
    let config = demo
        .replace("../../target/mfp-demo/demo.db", &dir.join("demo.db").display().to_string())
        .replace("agents/alice.py", &agents.join("alice.py").display().to_string())
        .replace("agents/bob.py", &agents.join("bob.py").display().to_string());
    for (run, first_step) in [(1, 0), (2, 6)] {
        let mut s = Server::start(&dir.join("config.yaml"), &config);
        s.wait_for(&format!("alice says (step {first_step}): Hello Bob!"));
        s.wait_for(&format!("alice heard (step {}): Bye, Alice!", first_step + 5));
        let status = s.wait_exit();
        assert!(status.success(), "run {run}: {status:?}\n{}", s.log());
        if run == 2 {
            assert!(s.log().contains("runtime restored from storage"));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// /readyz is 200 once started and 503 while stopping; /metrics counters move; SIGTERM
/// drains and exits 0 even with an agent that ignores the end of its stdin.
#[test]
fn readiness_metrics_and_sigterm() {
    let dir = temp_dir("e2e", "metrics");
    let config = format!(
        "storage:\n  path: \"{}\"\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\n{}channels:\n  - agents: [client, echo]\n",
        dir.join("m.db").display(),
        subprocess("client", &[("MODE", "client"), ("TO", "echo"), ("COUNT", "5"), ("LINGER", "1")])
    );
    let port_file = dir.join("ports.json");
    let mut s =
        Server::start_with(&dir.join("config.yaml"), &config, &["--port-file", &port_file.display().to_string()], &[]);
    let admin = s.admin();
    s.find_or_wait("INFO mfp_server::server: ready");
    // Written before the server is ready.
    let ports = std::fs::read_to_string(&port_file).unwrap();
    assert_eq!(ports, format!("{{\"admin\":\"{admin}\"}}"));
    assert_eq!(http(&admin, "GET", "/livez", &[], "").0, 200);
    assert_eq!(http(&admin, "GET", "/readyz", &[], "").0, 200);
    s.wait_for("client got msg-4");
    // 5 sends by the client, 5 echoes. The runtime counts a send just after handing the
    // message over, so the last count may trail the delivery by a moment.
    let body = metrics_until(&admin, |body| {
        metric(body, "mfp_messages_sent_total") == 10
            && metric(body, "mfp_server_deliveries_total") == 10
            && body.contains("mfp_message_size_bytes_count 10")
    });
    assert!(body.contains("# TYPE mfp_pipeline_duration_seconds histogram"), "{body}");
    assert_eq!(metric(&body, "mfp_active_agents"), 2);
    assert_eq!(metric(&body, "mfp_active_channels"), 1);
    assert!(!body.contains("agent_id="), "no per-agent labels: {body}");

    s.signal(rustix::process::Signal::TERM);
    s.wait_for("stopping: not ready");
    // The client ignores its closed stdin, so the server is still stopping here.
    assert_eq!(http(&admin, "GET", "/readyz", &[], "").0, 503);
    let status = s.wait_exit();
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(s.log().contains("agent ignored SIGTERM") || s.log().contains("stopped"));
    std::fs::remove_dir_all(&dir).ok();
}

/// A subprocess agent killed with SIGKILL is restarted and receives what was sent to it
/// while it was down; sends come through the webhook HTTP endpoint with a bearer token.
#[test]
fn killed_agent_is_restarted_and_gets_its_messages() {
    let dir = temp_dir("e2e", "restart");
    let token = "test-token-0123456789";
    let config = format!(
        "admin:\n  port: 0\nhttp:\n  port: 0\nagents:\n  - name: driver\n    type: webhook\n    url: \"http://127.0.0.1:9/unused\"\n    token: \"{token}\"\n{}channels:\n  - agents: [driver, victim]\n",
        subprocess("victim", &[("MODE", "recorder")])
    );
    let s = Server::start(&dir.join("config.yaml"), &config);
    let http_addr = s.find_or_wait("http listener bound").split("addr=").nth(1).unwrap().trim().to_string();
    let admin = s.admin();
    s.find_or_wait("INFO mfp_server::server: ready");
    let first =
        s.find_or_wait("recorder ").split_whitespace().skip_while(|w| *w != "recorder").nth(1).unwrap().to_string();
    let auth = format!("Bearer {token}");
    let send = |payload: &str| {
        let body =
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"send","params":{{"to":"victim","payload":"{payload}"}}}}"#);
        http(
            &http_addr,
            "POST",
            "/agents/driver",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            &body,
        )
    };
    // Without the token: refused.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"status"}"#;
    assert_eq!(http(&http_addr, "POST", "/agents/driver", &[("Authorization", "Bearer wrong")], body).0, 401);
    let (status, reply) = send("one");
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"step\":0"), "{reply}");
    s.wait_for(&format!("recorder {first} got one"));

    let pid = rustix::process::Pid::from_raw(first.parse().unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    s.wait_for("agent exited");
    // Sent while the agent is down (it restarts after a backoff).
    let (status, reply) = send("two");
    assert_eq!(status, 200, "{reply}");
    let got = s.wait_for("got two");
    assert!(!got.contains(&format!("recorder {first} ")), "delivered to the killed process? {got}");
    let (_, metrics) = http(&admin, "GET", "/metrics", &[], "");
    assert!(metric(&metrics, "mfp_server_agent_restarts_total") >= 1, "{metrics}");
    std::fs::remove_dir_all(&dir).ok();
}

/// An agent writing garbage, a 100 MB line, unknown methods and bad sends gets JSON-RPC
/// errors and stays served; a program that does not exist and a webhook that never
/// answers are contained while the other agents keep working.
#[test]
fn bad_agents_are_contained() {
    let dir = temp_dir("e2e", "bad");
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    // Accept connections and never answer (kept open until the test ends).
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming() {
            match c {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
    });
    let config = format!(
        "admin:\n  port: 0\nhttp:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\n  - name: ghost\n    type: subprocess\n    command: [\"/nonexistent/mfp-agent\"]\n  - name: hook\n    type: webhook\n    url: \"http://{hang_addr}/deliver\"\n    timeout_seconds: 0.5\n    retries: 1\n{}{}{}channels:\n  - agents: [client, echo]\n  - agents: [hooker, hook]\n",
        subprocess("garbage", &[("MODE", "garbage"), ("HUGE_MB", "100")]),
        subprocess("client", &[("MODE", "client"), ("TO", "echo"), ("COUNT", "3")]),
        subprocess("hooker", &[("MODE", "client"), ("TO", "hook"), ("COUNT", "1")]),
    );
    let mut s = Server::start(&dir.join("config.yaml"), &config);
    let admin = s.admin();
    s.find_or_wait("INFO mfp_server::server: ready");
    s.find_or_wait("garbage agent ok: codes=[-32700, -32600, -32601, -32602] state=bound");
    s.find_or_wait("client got msg-2");
    s.find_or_wait("message dropped: webhook delivery failed");
    assert!(s.log().contains("cannot start the agent's program"), "{}", s.log());
    assert_eq!(http(&admin, "GET", "/readyz", &[], "").0, 200);
    let (_, metrics) = http(&admin, "GET", "/metrics", &[], "");
    // Garbage, the huge line, the unknown method (bad params are not protocol errors).
    assert_eq!(metric(&metrics, "mfp_server_agent_protocol_errors_total"), 3, "{metrics}");
    assert_eq!(metric(&metrics, "mfp_server_webhook_failures_total"), 2, "{metrics}");
    s.signal(rustix::process::Signal::TERM);
    assert!(s.wait_exit().success(), "{}", s.log());
    std::fs::remove_dir_all(&dir).ok();
}

/// A port in use stops the start with a clear error and status 1.
#[test]
fn port_in_use_is_a_clear_error() {
    let dir = temp_dir("e2e", "port");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut s = Server::start(&dir.join("config.yaml"), &format!("admin:\n  port: {port}\n"));
    let status = s.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", s.log());
    let log = s.log();
    assert!(
        log.contains("admin listener: cannot listen on 127.0.0.1:") && log.contains("choose another port"),
        "{log}"
    );
    drop(taken);
    std::fs::remove_dir_all(&dir).ok();
}

/// check-config: exit 0 on pymfp's examples, 1 with file:line:column on bad input.
#[test]
fn check_config_exit_codes() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for f in ["pymfp-quickstart.yaml", "pymfp-reference.yaml", "pymfp-node-a.yaml", "pymfp-node-b.yaml"] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_mfp-server")).arg("check-config").arg(fixtures.join(f)).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = temp_dir("e2e", "check");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "agents:\n  - name: a\n    typo: 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mfp-server")).arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:5: unknown field `typo`", bad.display())), "{err}");
    // pymfp's own form of the command line reads the same file.
    let out = Command::new(env!("CARGO_BIN_EXE_mfp-server")).arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).ok();
}

/// A second signal while stopping exits at once (status 130) and kills the agents'
/// process groups.
#[test]
fn second_signal_exits_at_once() {
    let dir = temp_dir("e2e", "second");
    let config = format!(
        "admin:\n  port: 0\nserver:\n  drain_timeout_seconds: 30\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\n{}channels:\n  - agents: [client, echo]\n",
        subprocess("client", &[("MODE", "client"), ("TO", "echo"), ("COUNT", "1"), ("LINGER", "1")])
    );
    let mut s = Server::start(&dir.join("config.yaml"), &config);
    let started = s.find_or_wait("agent started agent=client");
    let pid: i32 = started.split("pid=").nth(1).unwrap().trim().parse().unwrap();
    s.find_or_wait("client got msg-0");
    s.signal(rustix::process::Signal::TERM);
    s.wait_for("client ignores the end of stdin");
    s.signal(rustix::process::Signal::TERM);
    let status = s.wait_exit();
    assert_eq!(status.code(), Some(130), "{}", s.log());
    // The agent's process group was killed; its process is gone (or a zombie being reaped).
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    let deadline = Instant::now() + WAIT;
    while rustix::process::test_kill_process(pid).is_ok() {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") || stat.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "agent {pid:?} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// An agent that never answers `deliver` is restarted after the delivery timeout and
/// gets the message again; the other agents keep working.
#[test]
fn stuck_agent_is_restarted() {
    let dir = temp_dir("e2e", "stuck");
    let config = format!(
        "admin:\n  port: 0\nlimits:\n  delivery_timeout_seconds: 0.5\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\n{}{}{}channels:\n  - agents: [sender, deaf]\n  - agents: [client, echo]\n",
        subprocess("deaf", &[("MODE", "deaf")]),
        subprocess("sender", &[("MODE", "client"), ("TO", "deaf"), ("COUNT", "1")]),
        subprocess("client", &[("MODE", "client"), ("TO", "echo"), ("COUNT", "2")]),
    );
    let s = Server::start(&dir.join("config.yaml"), &config);
    let admin = s.admin();
    s.find_or_wait("did not answer deliver in time");
    s.find_or_wait("client got msg-1");
    // Restarted: a second deaf process started, and gets the message again.
    s.wait_count("agent started agent=deaf", 2);
    let (_, metrics) = http(&admin, "GET", "/metrics", &[], "");
    assert!(metric(&metrics, "mfp_server_agent_restarts_total") >= 1, "{metrics}");
    assert_eq!(http(&admin, "GET", "/readyz", &[], "").0, 200);
    std::fs::remove_dir_all(&dir).ok();
}

/// keygen, then the storage subcommands on a database the server wrote: check, rotate-key
/// (the old key stops working), and the server restarts on the new key.
#[test]
fn keygen_and_storage_commands() {
    let dir = temp_dir("e2e", "storage");
    let bin = env!("CARGO_BIN_EXE_mfp-server");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let (db, k1, k2) = (dir.join("s.db"), dir.join("k1"), dir.join("k2"));
    let p = |x: &Path| x.display().to_string();
    assert!(run(&["keygen", "--out", &p(&k1)]).status.success());
    assert!(run(&["keygen", "--out", &p(&k2)]).status.success());
    assert_eq!(run(&["keygen", "--out", &p(&k1)]).status.code(), Some(1), "never overwrites");
    let config = |key: &Path| {
        format!(
            "storage:\n  path: \"{}\"\n  master_key_file: \"{}\"\nadmin:\n  port: 0\nagents:\n  - name: a\n    type: builtin\n    builtin: log\n  - name: b\n    type: builtin\n    builtin: log\nchannels:\n  - agents: [a, b]\n",
            p(&db),
            p(key)
        )
    };
    let mut s = Server::start(&dir.join("config.yaml"), &config(&k1));
    s.find_or_wait("INFO mfp_server::server: ready");
    s.signal(rustix::process::Signal::TERM);
    assert!(s.wait_exit().success(), "{}", s.log());
    drop(s);

    let out = run(&["storage", "check", "--db", &p(&db), "--key-file", &p(&k1)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("agents: 2")
            && text.contains("\nchannels: 1")
            && text.contains("\ncross-runtime channels: 0 (active 0, quarantined 0)\n")
            && text.contains("\noutbound log: 0 messages on 0 channels")
            && text.ends_with("OK\n"),
        "{text}"
    );
    let out = run(&["storage", "rotate-key", "--db", &p(&db), "--old-key-file", &p(&k1), "--new-key-file", &p(&k2)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(run(&["storage", "check", "--db", &p(&db), "--key-file", &p(&k1)]).status.code(), Some(1));
    assert!(run(&["storage", "check", "--db", &p(&db), "--key-file", &p(&k2)]).status.success());

    let s = Server::start(&dir.join("config.yaml"), &config(&k2));
    s.find_or_wait("runtime restored from storage");
    s.find_or_wait("channels_created=0");
    std::fs::remove_dir_all(&dir).ok();
}

/// One HTTP request (head and Content-Length body) from a test webhook connection.
fn whole_request(c: &mut TcpStream) -> String {
    let (head, body) = read_request(c).expect("connection closed mid-request");
    format!("{head}{body}")
}

/// A webhook agent gets its messages by POST (a failed attempt is retried), and an
/// oversized send to the HTTP endpoint is refused without harm; logs can be JSON.
#[test]
fn webhook_delivery_retry_and_body_limit() {
    let dir = temp_dir("e2e", "webhook");
    let hook = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let token = "another-token-0123456789";
    let config = format!(
        "logging:\n  format: json\nadmin:\n  port: 0\nhttp:\n  port: 0\n  max_body_bytes: 1024\nagents:\n  - name: hook\n    type: webhook\n    url: \"http://{hook_addr}/in\"\n    token: \"{token}\"\n    retries: 2\n{}channels:\n  - agents: [client, hook]\n",
        subprocess("client", &[("MODE", "client"), ("TO", "hook"), ("COUNT", "1")]),
    );
    let s = Server::start(&dir.join("config.yaml"), &config);
    // First attempt: answer 500; the retry: 200.
    let (mut c, _) = hook.accept().unwrap();
    let first = whole_request(&mut c);
    c.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    drop(c);
    let (mut c, _) = hook.accept().unwrap();
    let second = whole_request(&mut c);
    c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    drop(c);
    for req in [&first, &second] {
        assert!(req.starts_with("POST /in HTTP/1.1"), "{req}");
        assert!(
            req.contains(r#""method":"deliver""#)
                && req.contains(r#""payload":"msg-0""#)
                && req.contains(r#""sender_name":"client""#),
            "{req}"
        );
    }
    // JSON logs: one object per line.
    let line = s.find_or_wait("webhook answered with an error status");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["agent"], "hook", "{line}");
    let http_line = s.find_or_wait("http listener bound");
    let http_addr =
        serde_json::from_str::<serde_json::Value>(&http_line).unwrap()["fields"]["addr"].as_str().unwrap().to_string();
    let admin_line = s.find_or_wait("admin listener bound");
    let admin =
        serde_json::from_str::<serde_json::Value>(&admin_line).unwrap()["fields"]["addr"].as_str().unwrap().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, m) = http(&admin, "GET", "/metrics", &[], "");
        if metric(&m, "mfp_server_deliveries_total") == 1 {
            assert_eq!(metric(&m, "mfp_server_webhook_failures_total"), 1, "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let auth = format!("Bearer {token}");
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"send","params":{{"to":"client","payload":"{}"}}}}"#,
        "x".repeat(4096)
    );
    assert_eq!(http(&http_addr, "POST", "/agents/hook", &[("Authorization", &auth)], &big).0, 413);
    let (status, body) = http(
        &http_addr,
        "POST",
        "/agents/hook",
        &[("Authorization", &auth)],
        r#"{"jsonrpc":"2.0","id":2,"method":"channels"}"#,
    );
    assert_eq!(status, 200);
    assert!(body.contains(r#""peer_name":"client""#), "{body}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The master key from an environment variable; a wrong one is refused with a clear
/// error naming the variable, and nothing is started.
#[test]
fn master_key_from_the_environment() {
    let dir = temp_dir("e2e", "envkey");
    let config = format!(
        "storage:\n  path: \"{}\"\n  master_key_env: MFP_TEST_MASTER_KEY\nadmin:\n  port: 0\nagents:\n  - name: a\n    type: builtin\n    builtin: log\n",
        dir.join("e.db").display()
    );
    let key = "7f".repeat(32);
    let mut s = Server::start_with(&dir.join("config.yaml"), &config, &[], &[("MFP_TEST_MASTER_KEY", &key)]);
    s.find_or_wait("INFO mfp_server::server: ready");
    s.signal(rustix::process::Signal::TERM);
    assert!(s.wait_exit().success(), "{}", s.log());
    drop(s);
    let other = "01".repeat(32);
    let mut s = Server::start_with(&dir.join("config.yaml"), &config, &[], &[("MFP_TEST_MASTER_KEY", &other)]);
    assert_eq!(s.wait_exit().code(), Some(1), "{}", s.log());
    assert!(!s.log().contains(&other) && !s.log().contains(&key), "a key in the log");
    let mut s = Server::start(&dir.join("config.yaml"), &config);
    assert_eq!(s.wait_exit().code(), Some(1));
    assert!(s.log().contains("MFP_TEST_MASTER_KEY"), "{}", s.log());
    std::fs::remove_dir_all(&dir).ok();
}

/// Requests an agent wrote just before it exited are still carried out: the server reads
/// the agent's stdout to its end before it lets go of the process.
#[test]
fn requests_written_just_before_exit_are_carried_out() {
    let dir = temp_dir("e2e", "last-words");
    let script = dir.join("burst.py");
    std::fs::write(
        &script,
        "import json, sys\n\
         for i in range(300):\n\
         \x20   sys.stdout.write(json.dumps({'jsonrpc': '2.0', 'id': i + 1, 'method': 'send', \
         'params': {'to': 'sink', 'payload': 'm%d' % i}}) + '\\n')\n\
         sys.stdout.flush()\n",
    )
    .unwrap();
    let config = format!(
        "admin:\n  port: 0\nagents:\n  - name: sink\n    type: builtin\n    builtin: log\n  - name: burst\n    type: subprocess\n    command: [\"python3\", \"{}\"]\nchannels:\n  - agents: [burst, sink]\n",
        script.display()
    );
    let mut s = Server::start(&dir.join("config.yaml"), &config);
    let admin = s.admin();
    s.find_or_wait("agent finished (exit status 0) agent=burst");
    // Every request of the exited agent is carried out.
    metrics_until(&admin, |body| metric(body, "mfp_messages_sent_total") == 300);
    s.signal(rustix::process::Signal::TERM);
    assert!(s.wait_exit().success(), "{}", s.log());
    std::fs::remove_dir_all(&dir).ok();
}

/// A configuration with storage, a webhook `driver` (sends over HTTP) and a subprocess
/// agent `victim` in `mode`, which has `delivery_timeout` seconds to answer a delivery.
fn durable_config(dir: &Path, token: &str, mode: &str, drain_seconds: u32) -> String {
    format!(
        "storage:\n  path: \"{}\"\nadmin:\n  enabled: false\nserver:\n  drain_timeout_seconds: {drain_seconds}\nlimits:\n  delivery_timeout_seconds: 600\nhttp:\n  port: 0\nagents:\n  - name: driver\n    type: webhook\n    url: \"http://127.0.0.1:9/unused\"\n    token: \"{token}\"\n{}channels:\n  - agents: [driver, victim]\n",
        dir.join("d.db").display(),
        subprocess("victim", &[("MODE", mode)])
    )
}

/// Sends `payload` from `driver` to `victim` through the webhook endpoint; asserts the
/// receipt and returns its message id.
fn driver_send(s: &mut Server, token: &str, payload: &str) -> String {
    let http_addr = s.find_or_wait("http listener bound").split("addr=").nth(1).unwrap().trim().to_string();
    let body =
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"send","params":{{"to":"victim","payload":"{payload}"}}}}"#);
    let auth = format!("Bearer {token}");
    let (status, reply) = http(
        &http_addr,
        "POST",
        "/agents/driver",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(status, 200, "{reply}");
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    v["result"]["message_id"].as_str().unwrap_or_else(|| panic!("no receipt: {reply}")).to_string()
}

/// The pid a `deaf` agent logged.
fn deaf_pid(s: &mut Server) -> rustix::process::Pid {
    let line = s.find_or_wait("deaf ");
    let pid = line.split_whitespace().skip_while(|w| *w != "deaf").nth(1).unwrap();
    rustix::process::Pid::from_raw(pid.parse().unwrap()).unwrap()
}

/// With storage, messages that got a receipt but that the agent did not answer survive a
/// SIGKILL of the server: after the restart, the agent gets every one, in order, flagged
/// `redelivered`.
#[test]
fn unanswered_messages_survive_a_server_kill() {
    let dir = temp_dir("e2e", "durable-kill");
    let token = "test-token-0123456789";
    let mut s = Server::start(&dir.join("config.yaml"), &durable_config(&dir, token, "deaf", 10));
    s.find_or_wait("INFO mfp_server::server: ready");
    let deaf = deaf_pid(&mut s);
    for p in ["d0", "d1", "d2"] {
        driver_send(&mut s, token, p);
    }
    s.signal(rustix::process::Signal::KILL);
    s.wait_exit();
    // The agent lives in its own process group: the killed server could not stop it.
    let _ = rustix::process::kill_process(deaf, rustix::process::Signal::KILL);

    let s = Server::start(&dir.join("config.yaml"), &durable_config(&dir, token, "recorder", 10));
    for p in ["d0", "d1", "d2"] {
        let line = s.wait_for(&format!(" got {p}"));
        assert!(line.contains(&format!("got {p} redelivered")), "{line}\n{}", s.log());
    }
    assert!(s.log().contains("runtime restored from storage"));
    std::fs::remove_dir_all(&dir).ok();
}

/// A message the agent has not answered when the server stops gracefully is not lost: it
/// stays stored, and comes back after the restart, flagged `redelivered`.
#[test]
fn unanswered_message_survives_a_graceful_stop() {
    let dir = temp_dir("e2e", "durable-stop");
    let token = "test-token-0123456789";
    let mut s = Server::start(&dir.join("config.yaml"), &durable_config(&dir, token, "deaf", 1));
    s.find_or_wait("INFO mfp_server::server: ready");
    deaf_pid(&mut s);
    driver_send(&mut s, token, "g0");
    driver_send(&mut s, token, "g1");
    s.signal(rustix::process::Signal::TERM);
    let status = s.wait_exit();
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(s.log().contains("stay stored"), "{}", s.log());

    let mut s = Server::start(&dir.join("config.yaml"), &durable_config(&dir, token, "recorder", 1));
    for p in ["g0", "g1"] {
        let line = s.wait_for(&format!(" got {p}"));
        assert!(line.contains(&format!("got {p} redelivered")), "{line}\n{}", s.log());
    }
    // Answered now: a third start has nothing to deliver again.
    s.signal(rustix::process::Signal::TERM);
    assert!(s.wait_exit().success(), "{}", s.log());
    let mut s = Server::start(&dir.join("config.yaml"), &durable_config(&dir, token, "recorder", 1));
    s.find_or_wait("INFO mfp_server::server: ready");
    let id = driver_send(&mut s, token, "g2");
    assert_eq!(id.len(), 32);
    let line = s.wait_for(" got g2");
    assert!(!line.contains("redelivered"), "{line}");
    assert!(!s.log().contains("got g0"), "g0 delivered a second time:\n{}", s.log());
    std::fs::remove_dir_all(&dir).ok();
}

/// An agent's answer to a delivery counts even when the server sees the agent's process
/// gone before it has read that answer from the pipe (an agent that answers and exits at
/// once races the server's reader; here the answer is written by a process the agent left
/// behind, 0.3 s after the agent exited, so the server always sees the exit first). Each
/// instance of `once` handles one message and exits; `restart: always` starts the next.
/// Every message must be handled exactly once, and the server must stop without waiting
/// for a message it believes unanswered.
#[test]
fn an_answer_read_after_the_agent_exited_acknowledges_the_delivery() {
    let dir = temp_dir("e2e", "answer-after-exit");
    let token = "test-token-0123456789";
    let seen = dir.join("seen.txt");
    let script = dir.join("once.py");
    std::fs::write(
        &script,
        format!(
            "import json, os, sys, time\n\
             msg = json.loads(sys.stdin.readline())\n\
             with open({seen:?}, 'a') as f:\n\
             \x20   f.write(msg['params']['payload'] + '\\n')\n\
             if os.fork() == 0:\n\
             \x20   time.sleep(0.3)\n\
             \x20   sys.stdout.write(json.dumps({{'jsonrpc': '2.0', 'id': msg['id'], 'result': {{}}}}) + '\\n')\n\
             \x20   sys.stdout.flush()\n\
             \x20   os._exit(0)\n\
             os._exit(0)\n",
            seen = seen.display().to_string()
        ),
    )
    .unwrap();
    let config = format!(
        "storage:\n  path: \"{}\"\nadmin:\n  port: 0\nserver:\n  drain_timeout_seconds: 30\nhttp:\n  port: 0\nagents:\n  - name: driver\n    type: webhook\n    url: \"http://127.0.0.1:9/unused\"\n    token: \"{token}\"\n  - name: victim\n    type: subprocess\n    restart: always\n    command: [\"python3\", \"{}\"]\nchannels:\n  - agents: [driver, victim]\n",
        dir.join("d.db").display(),
        script.display()
    );
    let mut s = Server::start(&dir.join("config.yaml"), &config);
    s.find_or_wait("INFO mfp_server::server: ready");
    let admin = s.admin();
    const N: u64 = 3;
    for i in 0..N {
        driver_send(&mut s, token, &format!("once-{i}"));
    }
    metrics_until(&admin, |m| metric(m, "mfp_server_deliveries_total") >= N);
    // Stopping does not wait for a delivery the agent answered.
    let stopping = Instant::now();
    s.signal(rustix::process::Signal::TERM);
    assert!(s.wait_exit().success(), "{}", s.log());
    assert!(stopping.elapsed() < Duration::from_secs(20), "the stop waited for the drain deadline:\n{}", s.log());
    assert!(!s.log().contains("stay stored"), "an answered message was kept as unanswered:\n{}", s.log());
    let lines: Vec<String> = std::fs::read_to_string(&seen).unwrap().lines().map(str::to_string).collect();
    let want: Vec<String> = (0..N).map(|i| format!("once-{i}")).collect();
    assert_eq!(lines, want, "each message handled once, in order:\n{}", s.log());
    std::fs::remove_dir_all(&dir).ok();
}

/// The operator token can come from the environment (`admin.token_env`), and a server whose
/// variable is missing does not start; while the server stops (here held by an unanswered
/// message until its drain deadline), operator actions are refused with 503.
#[test]
fn operator_actions_wait_for_a_ready_server_and_the_token_comes_from_the_environment() {
    let dir = temp_dir("e2e", "operator-stop");
    let token = "test-token-0123456789";
    let operator = "operator-token-from-env-01";
    let config = durable_config(&dir, token, "deaf", 1)
        .replace("admin:\n  enabled: false\n", "admin:\n  port: 0\n  token_env: MFP_TEST_OPERATOR\n");
    // Without the variable: no start, and the message says which variable.
    let mut s = Server::start(&dir.join("config.yaml"), &config);
    assert!(!s.wait_exit().success());
    assert!(s.log().contains("admin.token_env MFP_TEST_OPERATOR is not set"), "{}", s.log());

    let mut s = Server::start_with(&dir.join("config.yaml"), &config, &[], &[("MFP_TEST_OPERATOR", operator)]);
    s.find_or_wait("INFO mfp_server::server: ready");
    deaf_pid(&mut s);
    let admin = s.admin();
    let bearer = format!("Bearer {operator}");
    let act = || {
        http(
            &admin,
            "POST",
            &format!("/federation/channels/{}/suspend", "ab".repeat(16)),
            &[("Authorization", &bearer)],
            "",
        )
    };
    // Ready, the token accepted: this server has no federation to act on.
    let (code, body) = act();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no federation"), "{body}");
    // An unanswered message holds the stop in its drain.
    driver_send(&mut s, token, "held");
    s.signal(rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while http(&admin, "GET", "/readyz", &[], "").0 != 503 {
        assert!(Instant::now() < deadline, "never stopped being ready:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, body) = act();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    assert!(s.wait_exit().success(), "{}", s.log());
    assert!(!s.log().contains(operator), "the token is never logged");
    std::fs::remove_dir_all(&dir).ok();
}
