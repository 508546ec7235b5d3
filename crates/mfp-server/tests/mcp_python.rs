//! An MCP client we did not write: the official Python MCP SDK (`mcp` on PyPI, installed by
//! this test into `target/mcp-venv`, reused when present), running
//! `tests/mcp_client.py` against the `mfp-server` binary over stdio and over Streamable
//! HTTP. The test fails — never skips — when the SDK cannot be installed. Bounded in time;
//! 127.0.0.1 only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

/// The SDK version the script is written against.
const MCP_SDK: &str = "2.3.0";
/// Longest the script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// `target/mcp-venv/bin/python` with the MCP SDK, creating the venv if needed. Tests run
/// in parallel processes: each builds in its own temporary directory and renames it into
/// place; the first rename wins, the others use it (a venv built in place could be seen
/// half-made by another process).
fn mcp_python() -> PathBuf {
    let venv = target_dir().join("mcp-venv");
    let python = venv.join("bin/python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", &format!("import importlib.metadata as m, sys; import mcp; sys.exit(0 if m.version('mcp') == '{MCP_SDK}' else 1)")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok(&python) {
        return python;
    }
    let tmp = target_dir().join(format!("mcp-venv.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new("python3").args(["-m", "venv"]).arg(&tmp).status().expect("python3 is needed");
    assert!(status.success(), "python3 -m venv {} failed", tmp.display());
    let status = Command::new(tmp.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", &format!("mcp=={MCP_SDK}")])
        .status()
        .expect("pip");
    assert!(status.success(), "pip install mcp=={MCP_SDK} failed (network? see pip's output above)");
    if !ok(&python) {
        // A broken venv from an interrupted run is in the way: replace it.
        let _ = std::fs::remove_dir_all(&venv);
    }
    if std::fs::rename(&tmp, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(ok(&python), "mcp {MCP_SDK} not importable after installation");
    python
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mfp-server-mcp-py-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TOKEN: &str = "python-token-0123456789abcdef";

fn config(dir: &Path) -> PathBuf {
    let text = format!(
        "admin:\n  enabled: false\nmcp:\n  port: 0\nagents:\n  - name: claude\n    type: mcp\n    token: {TOKEN}\n    max_payload_bytes: 64\n  - name: other\n    type: mcp\n  - name: echo\n    type: builtin\n    builtin: echo\nchannels:\n  - agents: [claude, echo]\n"
    );
    let file = dir.join("config.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Runs the client script with `args`, killing it after [`SCRIPT_TIMEOUT`].
fn script(args: &[&str]) -> Output {
    let python = mcp_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    let child = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(SCRIPT_TIMEOUT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            if let Some(p) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            panic!("the Python MCP client did not finish in {SCRIPT_TIMEOUT:?}");
        }
    }
}

fn assert_flow(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for step in ["initialised", "tools", "sent", "notified", "received hello from python", "typed errors", "OK"] {
        assert!(stdout.contains(step), "no step {step:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }
}

#[test]
fn python_sdk_over_stdio() {
    let dir = temp_dir("stdio");
    let file = config(&dir);
    let out = script(&["stdio", env!("CARGO_BIN_EXE_mfp-server"), file.to_str().unwrap(), "claude"]);
    assert_flow(&out);
}

/// The server, stopped with SIGTERM (then SIGKILL) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(i32::try_from(self.0.id()).unwrap()) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            // Polling a child's exit status: std offers no wait with a timeout.
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_sdk_over_http() {
    let dir = temp_dir("http");
    let file = config(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mfp-server"))
        .args(["run", "--config"])
        .arg(&file)
        .env_remove("MFP_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = Server(child);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no mcp listener line");
        if line.contains("mcp listener bound") {
            break line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        }
    };
    let url = format!("http://{addr}/mcp/claude");
    let out = script(&["http", &url, TOKEN]);
    assert_flow(&out);
}
