//! The benchmark programs' smoke run, a step of `cargo xtask ci`: the debug build of
//! `mfp-bench --smoke` runs every section for a handful of iterations (the server with its
//! subprocess agents, two federated processes, pymfp's federation), and its JSON report
//! must hold every section with a positive, finite rate in every row. Its figures mean
//! nothing; what it shows is that the programs behind `cargo xtask bench` still run.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::bench::{pymfp_python, read_json, run};

/// The sections of a whole report, each with the paths (below it) that must hold a rate.
const EXPECTED: &[(&str, &[&[&str]])] = &[
    ("crypto_floor", &[&["64", "msgs_per_s"], &["1048576", "msgs_per_s"]]),
    ("crypto_floor_1000_channels", &[&["64", "msgs_per_s"]]),
    (
        "send",
        &[
            &["1_channel", "64", "msgs_per_s"],
            &["1000_channels", "64", "msgs_per_s"],
            &["2_senders", "1024", "msgs_per_s"],
        ],
    ),
    ("async_send", &[&["64", "msgs_per_s"]]),
    (
        "persistent_send_64",
        &[&["normal", "1_blocking_senders", "msgs_per_s"], &["sync", "1_async_sender_64_in_flight", "msgs_per_s"]],
    ),
    ("fanout_1000_agents", &[&["sync_handlers", "msgs_per_s"], &["async_handlers", "msgs_per_s"]]),
    ("scale", &[&["1000", "send_us"]]),
    ("server_subprocess_64", &[&["rust_echo", "msgs_per_s"], &["python_echo", "msgs_per_s"]]),
    (
        "federation",
        &[
            &["floor", "1024", "msgs_per_s"],
            &["pymfp", "one_way_msgs_per_s"],
            &["memory", "one_way", "1024", "msgs_per_s"],
            &["memory", "ping_pong_1024", "p50_us"],
            &["memory", "handshake_ms_median"],
            &["sqlite_normal", "one_way", "1024", "msgs_per_s"],
            &["memory_busy_poll", "handler_ping_pong_1024", "p50_us"],
        ],
    ),
];

/// What is wrong with a report: a missing section or row, or a figure that is not a
/// positive finite number (a section that failed prints why and leaves its rows out).
pub(crate) fn problems(report: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (section, rows) in EXPECTED {
        let Some(s) = report.get(section) else {
            out.push(format!("section {section} is missing"));
            continue;
        };
        for path in *rows {
            let mut cur = s;
            let mut found = true;
            for key in *path {
                match cur.get(key) {
                    Some(v) => cur = v,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            let at = format!("{section}.{}", path.join("."));
            match cur.as_f64() {
                _ if !found => out.push(format!("{at} is missing")),
                Some(x) if x.is_finite() && x > 0.0 => {}
                _ => out.push(format!("{at} is {cur}, not a positive number")),
            }
        }
    }
    out
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Builds the programs, runs the smoke run and checks its report.
///
/// `--tests` beside `--bins` makes cargo resolve features as the test build did (with
/// dev-dependencies), so the libraries the tests built are reused and only the benchmark
/// programs are compiled; without it every crate whose features differ is built again, and
/// again by the next test build.
pub(crate) fn run_smoke(root: &Path) -> Result<(), String> {
    run(crate::cargo()
        .args(["build", "--workspace", "--all-features", "--locked", "--bins", "--tests"])
        .current_dir(root))?;
    pymfp_python(root)?;
    let target = target_dir(root);
    let out = target.join("bench-smoke");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let json = out.join("report.json");
    let _ = std::fs::remove_file(&json);
    run(Command::new(target.join("debug/mfp-bench")).arg("--smoke").arg("--json").arg(&json).current_dir(root))?;
    let found = problems(&read_json(&json)?);
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!("the smoke run's report ({}): {}", json.display(), found.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A report with every expected row at `value`.
    fn report(value: Value) -> Value {
        let mut r = json!({});
        for (section, rows) in EXPECTED {
            for path in *rows {
                let mut cur = r.as_object_mut().unwrap().entry(*section).or_insert_with(|| json!({}));
                for (i, key) in path.iter().enumerate() {
                    let leaf = i + 1 == path.len();
                    cur = cur
                        .as_object_mut()
                        .unwrap()
                        .entry(*key)
                        .or_insert_with(|| if leaf { value.clone() } else { json!({}) });
                }
            }
        }
        r
    }

    #[test]
    fn a_whole_report_passes() {
        assert_eq!(problems(&report(json!(12.5))), Vec::<String>::new());
    }

    #[test]
    fn missing_sections_and_rows_and_bad_figures_are_each_named() {
        let mut r = report(json!(1.0));
        r.as_object_mut().unwrap().remove("server_subprocess_64");
        r["federation"].as_object_mut().unwrap().remove("sqlite_normal");
        r["send"]["1_channel"]["64"]["msgs_per_s"] = json!(0.0);
        r["scale"]["1000"]["send_us"] = Value::Null;
        let p = problems(&r);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.contains(&"section server_subprocess_64 is missing".to_string()), "{p:?}");
        assert!(p.contains(&"federation.sqlite_normal.one_way.1024.msgs_per_s is missing".to_string()), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("send.1_channel.64.msgs_per_s is 0")), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("scale.1000.send_us is null")), "{p:?}");
    }
}
