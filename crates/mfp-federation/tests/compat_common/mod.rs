//! Helpers of the pymfp live tests: pymfp 1.0.0 in a venv under `target/`, and the Python
//! side (`tests/pymfp/compat_peer.py`) as a child process speaking JSON lines.
#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mfp_core::{AgentId, RuntimeId};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Bound on every wait (Python start-up with pymfp's imports included).
pub const LIMIT: Duration = Duration::from_secs(90);

pub const RUST_RUNTIME: &str = "mfp-interop/rust-node";
pub const PYMFP_RUNTIME: &str = "mfp-interop/pymfp-node";
pub const CHANNEL: [u8; 16] = *b"interop-channel!";
pub const DEPTH: usize = 4;
pub const RUST_AGENT: [u8; 32] = [0x5a; 32];

// ---- pymfp in a venv ---------------------------------------------------------------------

/// `target/pymfp-venv-compat/bin/python`, with pymfp 1.0.0 installed from PyPI if needed.
pub fn pymfp_python() -> PathBuf {
    mfp_testkit::PythonVenv::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), "pymfp-venv-compat")
        .package("pymfp==1.0.0")
        .check("import mfp, sys; sys.exit(0 if mfp.__version__ == '1.0.0' else 1)")
        .python()
}

// ---- the two sides ----------------------------------------------------------------------

pub fn rust_id() -> RuntimeId {
    let (d, i) = RUST_RUNTIME.split_once('/').unwrap();
    RuntimeId::derive(d.as_bytes(), i.as_bytes())
}

/// The Python side's fixed X25519 key for the ceremonial scenario (hex), and ours.
pub const PY_PRIVATE: &str = "a8abababababababababababababababababababababababababababababab6b";
pub const RUST_PRIVATE: [u8; 32] = [0x42; 32];

pub fn python_public() -> String {
    let out = Command::new(pymfp_python())
        .args([
            "-c",
            "import sys\nfrom cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey\n\
             from cryptography.hazmat.primitives import serialization as s\n\
             k = X25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[1]))\n\
             print(k.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw).hex())",
            PY_PRIVATE,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub struct PyPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    pub agent: AgentId,
    pub port: Option<u16>,
}

impl PyPeer {
    pub async fn start(ceremonial: Option<(&str, &str)>, mode: &[&str]) -> Self {
        Self::start_with(&hex::encode(RUST_AGENT), ceremonial, mode).await
    }

    /// Starts `compat_peer.py` with the mfp agent id `remote_agent` (hex).
    pub async fn start_with(remote_agent: &str, ceremonial: Option<(&str, &str)>, mode: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pymfp/compat_peer.py");
        let mut cmd = tokio::process::Command::new(pymfp_python());
        cmd.arg(script)
            .args(["--me", PYMFP_RUNTIME, "--peer", RUST_RUNTIME, "--channel", &hex::encode(CHANNEL)])
            .args(["--depth", &DEPTH.to_string(), "--remote-agent", remote_agent]);
        if let Some((private, public)) = ceremonial {
            cmd.args(["--ceremonial", private, public]);
        }
        cmd.args(mode).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("start compat_peer.py");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = next_json(&mut lines).await;
        assert_eq!(ready["event"], "ready", "{ready}");
        let agent = AgentId::from_slice(&hex::decode(ready["agent"].as_str().unwrap()).unwrap()).unwrap();
        let port = ready["port"].as_u64().map(|p| u16::try_from(p).unwrap());
        Self { child, stdin, lines, agent, port }
    }

    /// Tells a peer started without `--connect` which port to connect to.
    pub async fn go(&mut self, port: u16) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("go {port}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    pub async fn done(mut self) -> Value {
        let done = next_json(&mut self.lines).await;
        assert_eq!(done["event"], "done", "{done}");
        let status =
            tokio::time::timeout(LIMIT, self.child.wait()).await.expect("compat_peer.py did not exit").unwrap();
        assert!(status.success(), "compat_peer.py failed: {status}");
        done
    }
}

pub async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("compat_peer.py printed nothing in time")
        .unwrap()
        .expect("compat_peer.py ended without its line (see its stderr above)");
    serde_json::from_str(&line).unwrap()
}

pub fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("message {i} ").into_bytes();
    p.extend((0..i % 97).map(|j| ((i * 7 + j) % 256) as u8));
    p
}
