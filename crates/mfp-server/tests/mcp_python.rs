//! An MCP client we did not write: the official Python MCP SDK (`mcp` on PyPI, installed by
//! this test into `target/mcp-venv`, reused when present), running
//! `tests/mcp_client.py` against the `mfp-server` binary over stdio and over Streamable
//! HTTP. The test fails — never skips — when the SDK cannot be installed. Bounded in time;
//! 127.0.0.1 only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use common::{Server, temp_dir};

/// The SDK version the script is written against.
const MCP_SDK: &str = "2.3.0";
/// Longest the script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// `target/mcp-venv/bin/python` with the MCP SDK, installed from PyPI if needed.
fn mcp_python() -> PathBuf {
    mfp_testkit::PythonVenv::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), "mcp-venv")
        .package(&format!("mcp=={MCP_SDK}"))
        .check(&format!(
            "import importlib.metadata as m, sys; import mcp; sys.exit(0 if m.version('mcp') == '{MCP_SDK}' else 1)"
        ))
        .python()
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
    let dir = temp_dir("mcp-py", "stdio");
    let file = config(&dir);
    let out = script(&["stdio", env!("CARGO_BIN_EXE_mfp-server"), file.to_str().unwrap(), "claude"]);
    assert_flow(&out);
}

#[test]
fn python_sdk_over_http() {
    let dir = temp_dir("mcp-py", "http");
    let file = config(&dir);
    let server = Server::run(&file, &[], &[]);
    let addr = server.addr("mcp listener bound");
    let url = format!("http://{addr}/mcp/claude");
    let out = script(&["http", &url, TOKEN]);
    assert_flow(&out);
}
