//! A subprocess agent for the server benchmark, speaking the server's JSON-RPC over
//! stdin/stdout (docs/agents.md).
//!
//! - `mfp-bench-agent echo`: sends every payload back on the channel it came on; exits after
//!   the payload `bye`.
//! - `mfp-bench-agent driver`: round trips through the agent named `echo` — first one at a
//!   time (latency), then with `MFP_BENCH_WINDOW` in flight (throughput) — then says `bye`
//!   and writes its figures as JSON to `MFP_BENCH_OUT`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufWriter, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

type Out = Arc<Mutex<BufWriter<std::io::Stdout>>>;

fn write_line(out: &Out, v: &Value) {
    let mut w = out.lock().unwrap();
    serde_json::to_writer(&mut *w, v).unwrap();
    w.write_all(b"\n").unwrap();
    w.flush().unwrap();
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn echo() {
    let out: Out = Arc::new(Mutex::new(BufWriter::new(std::io::stdout())));
    let mut next_id = 1u64;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
        if msg["method"] != "deliver" {
            continue; // responses to our sends
        }
        let params = &msg["params"];
        let bye = params["payload"] == "bye";
        if !bye {
            let send = json!({"jsonrpc": "2.0", "id": next_id, "method": "send",
                "params": {"channel": params["channel"], "payload": params["payload"]}});
            next_id += 1;
            write_line(&out, &send);
        }
        write_line(&out, &json!({"jsonrpc": "2.0", "id": msg["id"], "result": {}}));
        if bye {
            return;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn driver() {
    let rounds = env_usize("MFP_BENCH_ROUNDS", 2_000);
    let n = env_usize("MFP_BENCH_N", 20_000);
    let window = env_usize("MFP_BENCH_WINDOW", 64).max(1);
    let out_path = std::env::var("MFP_BENCH_OUT").expect("MFP_BENCH_OUT");
    let out: Out = Arc::new(Mutex::new(BufWriter::new(std::io::stdout())));

    // A reader thread answers every deliver at once and reports it; send errors are counted.
    let (tx, rx) = mpsc::channel::<()>();
    let (answered_tx, answered) = mpsc::channel::<u64>();
    let errors = Arc::new(Mutex::new(0u64));
    {
        let out = Arc::clone(&out);
        let errors = Arc::clone(&errors);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
                if msg["method"] == "deliver" {
                    write_line(&out, &json!({"jsonrpc": "2.0", "id": msg["id"], "result": {}}));
                    if tx.send(()).is_err() {
                        break;
                    }
                } else {
                    if msg.get("error").is_some() {
                        *errors.lock().unwrap() += 1;
                        eprintln!("send failed: {}", msg["error"]);
                    }
                    if let Some(id) = msg["id"].as_u64() {
                        let _ = answered_tx.send(id);
                    }
                }
            }
        });
    }
    let payload = "x".repeat(64);
    let mut next_id = 1u64;
    let mut send = |p: &str| {
        write_line(
            &out,
            &json!({"jsonrpc": "2.0", "id": next_id, "method": "send", "params": {"to": "echo", "payload": p}}),
        );
        next_id += 1;
        next_id - 1
    };
    let wait = || rx.recv_timeout(Duration::from_secs(30)).expect("no echo within 30 s");

    for _ in 0..100.min(rounds) {
        send(&payload);
        wait();
    }
    let mut rtt = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        send(&payload);
        wait();
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtt.sort_by(f64::total_cmp);

    let start = Instant::now();
    let (mut sent, mut back) = (0usize, 0usize);
    while back < n {
        while sent < n && sent - back < window {
            send(&payload);
            sent += 1;
        }
        wait();
        back += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    // Leave only once the server has taken the last request.
    let bye = send("bye");
    let until = Instant::now() + Duration::from_secs(30);
    while answered.recv_timeout(until.saturating_duration_since(Instant::now())).expect("bye not answered") != bye {}
    let report = json!({
        "round_trip_p50_us": percentile(&rtt, 0.5),
        "round_trip_p99_us": percentile(&rtt, 0.99),
        "round_trips_per_s": n as f64 / secs,
        "messages_per_s": 2.0 * n as f64 / secs,
        "window": window,
        "send_errors": *errors.lock().unwrap(),
    });
    std::fs::write(&out_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("echo") => echo(),
        Some("driver") => driver(),
        _ => {
            eprintln!("usage: mfp-bench-agent <echo | driver>");
            std::process::exit(2);
        }
    }
}
