//! Messages through the standalone server: a driver agent (Rust) and an echo agent (Rust or
//! Python), both subprocesses speaking JSON-RPC over stdin/stdout, on an in-memory runtime.
//! Needs `mfp-server` and `mfp-bench-agent` built in the same profile beside this program
//! (`cargo xtask bench` builds them).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::persist_floor::Scratch;

/// Which echo agent to run.
#[derive(Clone, Copy)]
pub(crate) enum Echo {
    Rust,
    Python,
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} is not built (cargo build --release -p mfp-server -p mfp-benches)", p.display()))
    }
}

fn yaml_str(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap()
}

/// Runs one server with the two agents; returns the driver's figures.
pub(crate) fn once(echo: Echo, rounds: usize, n: usize, window: usize) -> Result<Value, String> {
    let server = sibling("mfp-server")?;
    let agent = sibling("mfp-bench-agent")?;
    let scratch = Scratch::new(match echo {
        Echo::Rust => "server-rust",
        Echo::Python => "server-python",
    });
    let out = scratch.0.join("driver.json");
    let echo_command = match echo {
        Echo::Rust => format!("[{}, \"echo\"]", yaml_str(&agent)),
        Echo::Python => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/echo.py");
            format!("[\"python3\", {}]", yaml_str(&script))
        }
    };
    let config = format!(
        "runtime:\n  deployment_id: \"bench\"\n  instance_id: \"server\"\n\
         agents:\n\
         \x20 - name: driver\n    type: subprocess\n    command: [{agent}, \"driver\"]\n\
         \x20   env:\n      MFP_BENCH_OUT: {out}\n      MFP_BENCH_ROUNDS: \"{rounds}\"\n      MFP_BENCH_N: \"{n}\"\n      MFP_BENCH_WINDOW: \"{window}\"\n\
         \x20 - name: echo\n    type: subprocess\n    command: {echo_command}\n\
         channels:\n  - agents: [\"driver\", \"echo\"]\n\
         admin:\n  port: 0\n\
         server:\n  exit_when_agents_finish: true\n\
         log_level: WARNING\n",
        agent = yaml_str(&agent),
        out = yaml_str(&out),
    );
    let config_path = scratch.0.join("bench.yaml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let mut child = Command::new(server)
        .args(["run", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start mfp-server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("the server benchmark did not finish within 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        return Err(format!("mfp-server exited with {status}"));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("no driver report ({}): {e}", out.display()))?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}
