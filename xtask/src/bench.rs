//! `cargo xtask bench`: builds and runs the end-to-end benchmark program in release mode,
//! optionally runs pymfp 1.0.0's equivalent benchmark in the same run (`--vs-pymfp`), and
//! writes `target/bench/report.json` and `target/bench/report.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::{Value, json};

use crate::workspace_root;

pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if st.success() { Ok(()) } else { Err(format!("{cmd:?} failed: {st}")) }
}

pub(crate) fn read_json(p: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", p.display()))
}

/// `target/pymfp-venv/bin/python` with pymfp 1.0.0 from PyPI: the venv the tests use
/// (`mfp-testkit`), made if missing. The benchmark program finds it there too, for the
/// federation section's pymfp row.
pub(crate) fn pymfp_python(root: &Path) -> Result<PathBuf, String> {
    let venv = mfp_testkit::PythonVenv::new(root.join("target"), "pymfp-venv")
        .package("pymfp==1.0.0")
        .check("import mfp, sys; sys.exit(0 if mfp.__version__ == '1.0.0' else 1)");
    // The helper panics with what failed (it is made for tests); its message is printed.
    std::panic::catch_unwind(move || venv.python())
        .map_err(|_| "could not make target/pymfp-venv with pymfp 1.0.0 (see above)".to_string())
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "–".to_string(),
        Some(x) if x >= 100.0 => format!("{x:.0}{unit}"),
        Some(x) => format!("{x:.2}{unit}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn markdown(m: &Value, p: Option<&Value>) -> String {
    let mut out = String::new();
    out.push_str("| measurement | mfp | pymfp 1.0.0 | mfp / pymfp | mfp / crypto floor |\n|---|---|---|---|---|\n");
    let pr = |path: &[&str]| p.and_then(|p| num(p, path));
    for size in ["64", "1024", "65536", "1048576"] {
        let rate = num(m, &["send", "1_channel", size, "msgs_per_s"]);
        let prate = pr(&["results", "blocking_send", size, "msgs_per_s"]);
        let floor = num(m, &["send", "1_channel", size, "ratio_to_floor"]);
        out.push_str(&format!(
            "| `mfp_send` 1 channel, {size} B (msg/s) | {} | {} | {} | {} |\n",
            fmt(rate, ""),
            fmt(prate, ""),
            fmt(ratio(rate, prate), "×"),
            fmt(floor.map(|f| f * 100.0), "%")
        ));
        let p50 = num(m, &["send", "1_channel", size, "p50_us"]);
        let p99 = num(m, &["send", "1_channel", size, "p99_us"]);
        out.push_str(&format!(
            "| `mfp_send` 1 channel, {size} B latency p50 / p99 (µs) | {} / {} | {} / {} | | |\n",
            fmt(p50, ""),
            fmt(p99, ""),
            fmt(pr(&["results", "blocking_send", size, "p50_us"]), ""),
            fmt(pr(&["results", "blocking_send", size, "p99_us"]), "")
        ));
    }
    let big = num(m, &["send", "1_channel", "1048576", "ratio_to_raw_aes"]);
    out.push_str(&format!(
        "| 1 MiB sends as a share of raw AES-256-GCM seal+open | {} | | | |\n",
        fmt(big.map(|b| b * 100.0), "%")
    ));
    for size in ["64", "1024"] {
        let rate = num(m, &["send", "1000_channels", size, "msgs_per_s"]);
        let prate = if size == "64" { pr(&["results", "blocking_send_1000_channels_64", "msgs_per_s"]) } else { None };
        out.push_str(&format!(
            "| `mfp_send` 1,000 channels, {size} B (msg/s) | {} | {} | {} | {} |\n",
            fmt(rate, ""),
            fmt(prate, ""),
            fmt(ratio(rate, prate), "×"),
            fmt(num(m, &["send", "1000_channels", size, "ratio_to_floor"]).map(|f| f * 100.0), "%")
        ));
        let rate2 = num(m, &["send", "2_senders", size, "msgs_per_s"]);
        out.push_str(&format!(
            "| `mfp_send` 2 concurrent senders, {size} B (msg/s) | {} | | | {} |\n",
            fmt(rate2, ""),
            fmt(num(m, &["send", "2_senders", size, "ratio_to_floor"]).map(|f| f * 100.0), "%")
        ));
        let arate = num(m, &["async_send", size, "msgs_per_s"]);
        let parate = pr(&["results", "async_send", size, "msgs_per_s"]);
        out.push_str(&format!(
            "| async send, {size} B (msg/s) | {} | {} | {} | |\n",
            fmt(arate, ""),
            fmt(parate, ""),
            fmt(ratio(arate, parate), "×")
        ));
    }
    for size in ["64", "1024", "65536", "1048576"] {
        out.push_str(&format!(
            "| crypto floor, {size} B (µs/msg) | {} | | | |\n",
            fmt(num(m, &["crypto_floor", size, "us_per_msg"]), "")
        ));
    }
    if let Some(scale) = m.get("scale").and_then(Value::as_object) {
        for (n, s) in scale {
            out.push_str(&format!(
                "| {n} channels: establish all (s) / Sg update (µs) / send (µs) / bytes per channel | {} / {} / {} / {} | | | |\n",
                fmt(num(s, &["establish_s"]), ""),
                fmt(num(s, &["sg_update_us"]), ""),
                fmt(num(s, &["send_us"]), ""),
                fmt(num(s, &["bytes_per_channel"]), "")
            ));
        }
    }
    let psql = p.and_then(|p| num(p, &["results", "sqlite_send_64", "msgs_per_s"]));
    for durability in ["normal", "sync"] {
        for floor in ["1", "4", "64"] {
            out.push_str(&format!(
                "| raw SQLite floor, `{durability}`, transactions of {floor} messages (msg/s) | {} | | | |\n",
                fmt(num(m, &["persistent_send_64", durability, "raw_sqlite_floor", floor, "msgs_per_s"]), "")
            ));
            out.push_str(&format!(
                "| raw SQLite floor through rusqlite (as the writer writes), `{durability}`, transactions of {floor} messages (msg/s) | {} | | | |\n",
                fmt(num(m, &["persistent_send_64", durability, "raw_sqlite_floor_rusqlite", floor, "msgs_per_s"]), "")
            ));
        }
        for (label, key) in [
            ("1 blocking sender", "1_blocking_senders"),
            ("4 blocking senders", "4_blocking_senders"),
            ("1 async sender, 64 in flight", "1_async_sender_64_in_flight"),
        ] {
            let row = |k: &str| num(m, &["persistent_send_64", durability, key, k]);
            let rate = row("msgs_per_s");
            out.push_str(&format!(
                "| persistent send (SQLite, encrypted), `{durability}`, {label}, 64 B (msg/s; share of its floor, batch {}: sqlx / rusqlite) | {} ({} / {}) | {} | {} | |\n",
                fmt(row("floor_batch"), ""),
                fmt(rate, ""),
                fmt(row("ratio_to_floor").map(|r| r * 100.0), "%"),
                fmt(row("ratio_to_rusqlite_floor").map(|r| r * 100.0), "%"),
                fmt(psql, ""),
                fmt(ratio(rate, psql), "×")
            ));
        }
    }
    for (label, key) in [("Rust echo agent", "rust_echo"), ("Python echo agent", "python_echo")] {
        let row = |k: &str| num(m, &["server_subprocess_64", key, k]);
        out.push_str(&format!(
            "| server: Rust driver ↔ {label}, subprocesses over JSON-RPC, 64 B, 64 in flight (msg/s; share of in-process) / round trip p50 / p99 (µs) | {} ({}) / {} / {} | | | |\n",
            fmt(row("msgs_per_s"), ""),
            fmt(row("ratio_to_in_process").map(|r| r * 100.0), "%"),
            fmt(row("round_trip_p50_us"), ""),
            fmt(row("round_trip_p99_us"), "")
        ));
    }
    for (label, key) in [("sync handlers", "sync_handlers"), ("async handlers", "async_handlers")] {
        out.push_str(&format!(
            "| fan-out: 1 sender to 1,000 idle agents, {label}, 64 B (msg/s) | {} | | | |\n",
            fmt(num(m, &["fanout_1000_agents", key, "msgs_per_s"]), "")
        ));
    }
    if let Some(p) = p {
        out.push_str(&format!(
            "| pymfp: establish 10,000 channels (s, extrapolated from 1,000) | | {} | | |\n",
            fmt(num(p, &["results", "establish", "extrapolated_10000_s"]), "")
        ));
        out.push_str(&format!(
            "| pymfp: establish 1,000 channels (s) / bytes per channel / SQLite-backed send (msg/s) | | {} / {} / {} | | |\n",
            fmt(num(p, &["results", "establish", "seconds"]), ""),
            fmt(num(p, &["results", "bytes_per_channel"]), ""),
            fmt(num(p, &["results", "sqlite_send_64", "msgs_per_s"]), "")
        ));
    }
    out
}

pub(crate) fn run_bench(args: &[String]) -> ExitCode {
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let root = workspace_root();
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let vs_pymfp = args.iter().any(|a| a == "--vs-pymfp");
    let quick = args.iter().any(|a| a == "--quick");
    let passthrough: Vec<&String> = args.iter().filter(|a| *a != "--vs-pymfp").collect();

    // The federation section measures pymfp's federation in the same run.
    let py = pymfp_python(&root)?;
    println!("==> bench: building the benchmark programs and the server (release)");
    run(crate::cargo()
        .args(["build", "--release", "--locked", "-p", "mfp-benches", "-p", "mfp-server"])
        .current_dir(&root))?;
    let mfp_json = out_dir.join("mfp.json");
    println!("==> bench: mfp");
    run(Command::new(root.join("target/release/mfp-bench")).args(&passthrough).arg("--json").arg(&mfp_json))?;
    let m = read_json(&mfp_json)?;

    let p = if vs_pymfp {
        let pjson = out_dir.join("pymfp.json");
        println!("==> bench: pymfp 1.0.0");
        let mut cmd = Command::new(py);
        cmd.arg(root.join("xtask/pymfp/bench_pymfp.py")).arg("--json").arg(&pjson);
        if quick {
            cmd.arg("--quick");
        }
        run(&mut cmd)?;
        Some(read_json(&pjson)?)
    } else {
        None
    };

    let table = markdown(&m, p.as_ref());
    let report = json!({ "mfp": m, "pymfp": p });
    let report_path = out_dir.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let md_path = out_dir.join("report.md");
    std::fs::write(&md_path, &table).map_err(|e| e.to_string())?;
    println!("\n{table}");
    println!("wrote {} and {}", report_path.display(), md_path.display());
    Ok(())
}
