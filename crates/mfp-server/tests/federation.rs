//! Two `mfp-server` processes federated over 127.0.0.1 with native (authenticated) peers:
//! identity keys from `mfp-server keygen --identity`, a cross-runtime channel from
//! configuration, messages crossing both ways and counted in `/metrics` on both sides, a
//! restart that keeps the channel (restored from storage, not opened again); and a
//! configuration error for each federation setting. Every wait is bounded; the servers
//! are stopped when a test ends, whatever happens.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{Receiver, channel};

use common::*;

/// A webhook receiver: every delivery's body goes to the returned channel (answered 200).
fn hook() -> (String, Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let Some((_, body)) = read_request(&mut c) else { continue };
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send(body).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// `mfp-server keygen --identity FILE`; returns the printed public key.
fn identity(path: &Path) -> String {
    let out = Command::new(BIN).args(["keygen", "--identity"]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(public.starts_with("mfp-x25519:"), "{public}");
    public
}

const TOKEN: &str = "federation-token-0123456789";

/// Runtime a (listens; builtin echo) and runtime b (dials a; a webhook driver with a
/// configured channel to a's echo). Messages b → a are echoed a → b.
#[test]
fn two_servers_federate_with_a_configured_channel() {
    let dir = temp_dir("fed", "two");
    let (ka, kb) = (dir.join("a.key"), dir.join("b.key"));
    let (pa, pb) = (identity(&ka), identity(&kb));
    // `identity` prints the same public half; keygen never overwrites.
    let out = Command::new(BIN).args(["identity", "--key"]).arg(&ka).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pa);
    let again = Command::new(BIN).args(["keygen", "--identity"]).arg(&ka).output().unwrap();
    assert_eq!(again.status.code(), Some(1));

    let config_a = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: a\nstorage:\n  path: \"{}\"\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\nfederation:\n  listen: \"127.0.0.1:0\"\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/b\n      public_key: \"{pb}\"\n      accept: [echo]\n",
        dir.join("a.db").display(),
        ka.display()
    );
    let a = Server::start(&dir.join("a.yaml"), &config_a);
    a.find_or_wait("INFO mfp_server::server: ready");
    let a_admin = a.addr("admin listener bound");
    let a_fed = a.addr("federation listener bound");
    assert_eq!(http(&a_admin, "GET", "/readyz", &[], "").0, 200, "ready without its peer");

    let (hook_addr, deliveries) = hook();
    let config_b = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: b\nstorage:\n  path: \"{}\"\nadmin:\n  port: 0\nhttp:\n  port: 0\nagents:\n  - name: driver\n    type: webhook\n    url: \"http://{hook_addr}/in\"\n    token: \"{TOKEN}\"\nfederation:\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/a\n      endpoint: \"{a_fed}\"\n      public_key: \"{pa}\"\n      max_in_flight_messages: 64\n  channels:\n    - agent: driver\n      peer: fedtest/a\n      remote_agent: echo\n      depth: 4\n",
        dir.join("b.db").display(),
        kb.display()
    );
    let file_b = dir.join("b.yaml");
    let mut b = Server::start(&file_b, &config_b);
    b.find_or_wait("federation channel opened");
    let b_admin = b.addr("admin listener bound");
    let b_http = b.addr("http listener bound");
    let auth = format!("Bearer {TOKEN}");
    let rpc = |addr: &str, body: &str| {
        let (status, reply) = http(addr, "POST", "/agents/driver", &[("Authorization", &auth)], body);
        assert_eq!(status, 200, "{reply}");
        reply
    };
    // The driver sees the channel with the peer runtime.
    let a_id = {
        let out = rpc(&b_http, r#"{"jsonrpc":"2.0","id":1,"method":"channels"}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let list = v["result"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{out}");
        assert!(list[0]["peer_runtime"].as_str().is_some_and(|r| r.len() == 64), "{out}");
        (list[0]["channel"].as_str().unwrap().to_string(), list[0]["peer_runtime"].as_str().unwrap().to_string())
    };
    let (channel_id, peer_runtime) = a_id;

    const N: usize = 5;
    let send = |payload: &str| {
        rpc(
            &b_http,
            &format!(
                r#"{{"jsonrpc":"2.0","id":2,"method":"send","params":{{"channel":"{channel_id}","payload":"{payload}"}}}}"#
            ),
        )
    };
    for i in 0..N {
        let r = send(&format!("hello-{i}"));
        assert!(r.contains(&format!("\"step\":{i}")), "{r}");
    }
    // Each comes back from a's echo, in order.
    for i in 0..N {
        let body = deliveries.recv_timeout(WAIT).expect("an echo from runtime a");
        assert!(body.contains(&format!(r#""payload":"hello-{i}""#)) && body.contains(&channel_id), "{body}");
    }
    let done = |body: &str| {
        metric(body, "mfp_remote_messages_sent_total") == N as u64
            && metric(body, "mfp_remote_messages_received_total") == N as u64
    };
    let ma = metrics_until(&a_admin, done);
    let mb = metrics_until(&b_admin, done);
    for m in [&ma, &mb] {
        assert_eq!(metric(m, "mfp_federation_links_up"), 1, "{m}");
        assert_eq!(metric(m, "mfp_federation_peers"), 1, "{m}");
        assert!(metric(m, "mfp_federation_handshakes_total") >= 1, "{m}");
        assert_eq!(metric(m, "mfp_remote_messages_rejected_total"), 0, "{m}");
        assert!(metric(m, "mfp_federation_sent_bytes_total") > 0, "{m}");
    }
    assert_eq!(metric(&mb, "mfp_federation_channels_opened_total"), 1, "{mb}");
    assert_eq!(metric(&ma, "mfp_federation_channels_opened_total"), 0, "{ma}");

    // b stops gracefully (its links are closed) and starts again on its storage: the
    // channel is restored, not opened again, and messages cross again.
    b.signal(rustix::process::Signal::TERM);
    assert!(b.wait_exit().success(), "{}", b.log());
    assert!(b.log().contains("federation links closed"), "{}", b.log());
    drop(b);
    let b = Server::start(&file_b, &config_b);
    b.find_or_wait("federation channel restored from storage");
    b.find_or_wait("INFO mfp_server::server: ready");
    let b_http = b.addr("http listener bound");
    // The link first: a send that keeps finding it down while it is redialled counts
    // toward the peer's circuit breaker, which a loaded machine let open.
    metrics_until(&b.addr("admin listener bound"), |m| metric(m, "mfp_federation_links_up") == 1);
    let out = http(
        &b_http,
        "POST",
        "/agents/driver",
        &[("Authorization", &auth)],
        r#"{"jsonrpc":"2.0","id":1,"method":"channels"}"#,
    )
    .1;
    assert!(out.contains(&channel_id) && out.contains(&peer_runtime), "{out}");
    let r = http(
        &b_http,
        "POST",
        "/agents/driver",
        &[("Authorization", &auth)],
        &format!(
            r#"{{"jsonrpc":"2.0","id":3,"method":"send","params":{{"channel":"{channel_id}","payload":"after-restart"}}}}"#
        ),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    assert!(r.1.contains(&format!("\"step\":{N}")), "the channel goes on where it was: {}", r.1);
    let body = deliveries.recv_timeout(WAIT).expect("an echo after the restart");
    assert!(body.contains(r#""payload":"after-restart""#), "{body}");
    assert!(!b.log().contains("federation channel opened"), "{}", b.log());
    drop(b);
    drop(a);
    std::fs::remove_dir_all(&dir).ok();
}

/// `check-config` on `yaml`: (exit code, stderr).
fn check(dir: &Path, yaml: &str) -> (Option<i32>, String) {
    let file = dir.join("check.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&file).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// Every federation setting refuses a bad value with its line and column.
#[test]
fn federation_config_errors_have_locations() {
    let dir = temp_dir("fed", "cfg");
    let key = dir.join("id.key");
    let public = identity(&key);
    let k = key.display().to_string();
    let head = "runtime:\n  deployment_id: d\n  instance_id: i\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\n";
    let native = |extra_peer: &str, rest: &str| {
        format!(
            "{head}federation:\n  identity_key: \"{k}\"\n  peers:\n    - runtime_id: d/p\n      endpoint: \"127.0.0.1:1\"\n      public_key: \"{public}\"\n{extra_peer}{rest}"
        )
    };
    // The valid base passes.
    let (code, err) = check(&dir, &native("", ""));
    assert_eq!(code, Some(0), "{err}");
    let cases: Vec<(String, &str)> = vec![
        (format!("{head}federation:\n  listen: nowhere\n"), "check.yaml:9:11: federation.listen must be ip:port"),
        (
            format!("{head}federation:\n  identity_key: \"{}\"\n", dir.join("missing").display()),
            "check.yaml:9:17: federation.identity_key",
        ),
        (
            format!(
                "{head}federation:\n  peers:\n    - runtime_id: d/p\n      endpoint: \"127.0.0.1:1\"\n      public_key: \"{public}\"\n"
            ),
            "check.yaml:10:19: a native peer needs federation.identity_key",
        ),
        (native("", "").replace(&public, "mfp-x25519:12"), "check.yaml:13:19: public_key must be"),
        (
            native("", "").replace("runtime_id: d/p", "runtime_id: nameonly"),
            "check.yaml:11:19: a native peer's runtime_id",
        ),
        (native("      max_in_flight_messages: 0\n", ""), "check.yaml:14:31: max_in_flight_messages must be between"),
        (native("      max_in_flight_bytes: 10\n", ""), "check.yaml:14:28: max_in_flight_bytes must be between"),
        (native("      accept: [echo, ghost]\n", ""), "check.yaml:14:22: accept names agent \"ghost\""),
        (
            native("", "  channels:\n    - agent: ghost\n      peer: d/p\n      remote_agent: echo\n"),
            "check.yaml:15:14: federation channel names agent \"ghost\"",
        ),
        (
            native("", "  channels:\n    - agent: echo\n      peer: d/nobody\n      remote_agent: echo\n"),
            "check.yaml:16:13: peer \"d/nobody\" is not a runtime_id under federation.peers",
        ),
        (
            native(
                "",
                &format!(
                    "  channels:\n    - agent: echo\n      peer: d/p\n      remote_agent: \"{}\"\n",
                    "x".repeat(65)
                ),
            ),
            "check.yaml:17:21: remote_agent is the peer's agent name",
        ),
        (
            native("", "  channels:\n    - agent: echo\n      peer: d/p\n      remote_agent: echo\n      depth: 1\n"),
            "check.yaml:18:14: federation channel depth must be between 2 and 32",
        ),
        (
            format!(
                "{head}federation:\n  peers:\n    - runtime_id: d/q\n      endpoint: \"127.0.0.1:2\"\n      channels:\n        - id: \"zz\"\n          agent: echo\n          remote_agent: \"{}\"\n",
                "ab".repeat(32)
            ),
            "check.yaml:13:15: a pymfp channel's id is 32 hex digits",
        ),
        (
            format!(
                "{head}federation:\n  peers:\n    - runtime_id: d/q\n      endpoint: \"127.0.0.1:2\"\n      channels:\n        - id: \"{}\"\n          agent: echo\n          remote_agent: \"nothex\"\n",
                "ab".repeat(16)
            ),
            "check.yaml:15:25: remote_agent is the pymfp agent's id",
        ),
        (
            format!(
                "{head}federation:\n  peers:\n    - runtime_id: d/q\n      endpoint: \"127.0.0.1:2\"\n      accept: [echo]\n"
            ),
            "check.yaml:12:15: accept is for native peers",
        ),
        (
            native("", "").replace("      endpoint: \"127.0.0.1:1\"\n", ""),
            "check.yaml:11:19: this native peer has no endpoint and federation.listen is not set",
        ),
        (
            native("", "").replace("runtime_id: d/p", "runtime_id: d/i"),
            "check.yaml:11:19: a peer cannot be this runtime itself",
        ),
    ];
    for (yaml, want) in cases {
        let (code, err) = check(&dir, &yaml);
        assert_eq!(code, Some(1), "accepted:\n{yaml}");
        assert!(err.contains(want), "wanted {want:?}, got:\n{err}\nfor:\n{yaml}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A peer pinned with the wrong key never gets a link: the listener counts a failed
/// handshake, no link is up on either side, and both servers stay ready.
#[test]
fn a_wrongly_pinned_peer_gets_no_link() {
    let dir = temp_dir("fed", "wrongkey");
    let (ka, kb, kx) = (dir.join("a.key"), dir.join("b.key"), dir.join("x.key"));
    let (_pa, pb, px) = (identity(&ka), identity(&kb), identity(&kx));
    let config_a = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: a\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\nfederation:\n  listen: \"127.0.0.1:0\"\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/b\n      public_key: \"{pb}\"\n",
        ka.display()
    );
    let a = Server::start(&dir.join("a.yaml"), &config_a);
    a.find_or_wait("INFO mfp_server::server: ready");
    let a_admin = a.addr("admin listener bound");
    let a_fed = a.addr("federation listener bound");
    // b pins x's key for a.
    let config_b = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: b\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\nfederation:\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/a\n      endpoint: \"{a_fed}\"\n      public_key: \"{px}\"\n  channels:\n    - agent: echo\n      peer: fedtest/a\n      remote_agent: echo\n",
        kb.display()
    );
    let b = Server::start(&dir.join("b.yaml"), &config_b);
    b.find_or_wait("INFO mfp_server::server: ready");
    let b_admin = b.addr("admin listener bound");
    let ma = metrics_until(&a_admin, |m| metric(m, "mfp_federation_handshake_failures_total") >= 1);
    assert_eq!(metric(&ma, "mfp_federation_links_up"), 0, "{ma}");
    assert_eq!(metric(&ma, "mfp_federation_handshakes_total"), 0, "{ma}");
    let (_, mb) = http(&b_admin, "GET", "/metrics", &[], "");
    assert_eq!(metric(&mb, "mfp_federation_links_up"), 0, "{mb}");
    assert_eq!(metric(&mb, "mfp_federation_channels_opened_total"), 0, "{mb}");
    assert_eq!(http(&a_admin, "GET", "/readyz", &[], "").0, 200);
    assert_eq!(http(&b_admin, "GET", "/readyz", &[], "").0, 200);
    drop(b);
    drop(a);
    std::fs::remove_dir_all(&dir).ok();
}

/// An identity key encrypted with the storage master key: `keygen --identity --encrypt`
/// writes it, `identity` needs the master key to print its public half, a plain file
/// converts with `identity --encrypt-to`; a server whose storage has that master key loads
/// it and gets a link with a peer that pins it; with another master key it does not
/// start, and says which file and why (no key material).
#[test]
fn an_encrypted_identity_key_is_loaded_with_the_storage_master_key() {
    let dir = temp_dir("fed", "sealed");
    let (m, other) = (dir.join("master.key"), dir.join("other.key"));
    for k in [&m, &other] {
        let out = Command::new(BIN).args(["keygen", "--out"]).arg(k).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let ka = dir.join("a.sealed");
    let out = Command::new(BIN)
        .args(["keygen", "--identity"])
        .arg(&ka)
        .arg("--encrypt")
        .arg("--master-key")
        .arg(&m)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pa = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(pa.starts_with("mfp-x25519:"), "{pa}");
    assert!(std::fs::read_to_string(&ka).unwrap().starts_with("mfp-x25519-sealed:v1:"));
    // --encrypt without a master key is refused before anything is written.
    let out = Command::new(BIN)
        .args(["keygen", "--identity"])
        .arg(dir.join("none.sealed"))
        .arg("--encrypt")
        .output()
        .unwrap();
    assert!(!out.status.success() && !dir.join("none.sealed").exists(), "{}", String::from_utf8_lossy(&out.stderr));
    // `identity` needs the master key for an encrypted file.
    let out = Command::new(BIN).args(["identity", "--key"]).arg(&ka).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&ka.display().to_string()) && err.contains("master key"), "{err}");
    let out = Command::new(BIN).args(["identity", "--key"]).arg(&ka).arg("--master-key").arg(&m).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pa, "{}", String::from_utf8_lossy(&out.stderr));
    // A plain file converts; its public half stays.
    let kb = dir.join("b.key");
    let pb = identity(&kb);
    let kb_sealed = dir.join("b.sealed");
    let out = Command::new(BIN)
        .args(["identity", "--key"])
        .arg(&kb)
        .arg("--master-key")
        .arg(&m)
        .arg("--encrypt-to")
        .arg(&kb_sealed)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pb, "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        Command::new(BIN).args(["identity", "--key"]).arg(&kb_sealed).arg("--master-key").arg(&m).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pb, "{}", String::from_utf8_lossy(&out.stderr));

    // a: storage under the master key, the encrypted identity.
    let config_a = |key: &Path, db: &str| {
        format!(
            "runtime:\n  deployment_id: fedtest\n  instance_id: a\nstorage:\n  path: \"{}\"\n  master_key_file: \"{}\"\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\nfederation:\n  listen: \"127.0.0.1:0\"\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/b\n      public_key: \"{pb}\"\n",
            dir.join(db).display(),
            key.display(),
            ka.display()
        )
    };
    let a = Server::start(&dir.join("a.yaml"), &config_a(&m, "a.db"));
    a.find_or_wait("INFO mfp_server::server: ready");
    assert!(a.find_or_wait("federation identity").contains(&pa), "{}", a.log());
    let a_admin = a.addr("admin listener bound");
    let a_fed = a.addr("federation listener bound");
    // b (no storage, its converted key would need one: the plain file) pins a's key.
    let config_b = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: b\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\nfederation:\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/a\n      endpoint: \"{a_fed}\"\n      public_key: \"{pa}\"\n",
        kb.display()
    );
    let b = Server::start(&dir.join("b.yaml"), &config_b);
    b.find_or_wait("INFO mfp_server::server: ready");
    let ma = metrics_until(&a_admin, |m| metric(m, "mfp_federation_links_up") == 1);
    assert_eq!(metric(&ma, "mfp_federation_handshake_failures_total"), 0, "{ma}");
    drop(b);
    drop(a);

    // Under another master key (a new database), a does not start.
    let mut a = Server::start(&dir.join("a2.yaml"), &config_a(&other, "a2.db"));
    let status = a.wait_exit();
    assert!(!status.success(), "{}", a.log());
    let log = a.log();
    assert!(log.contains(&ka.display().to_string()) && log.contains("another storage master key"), "{log}");
    for k in [&m, &other] {
        let hex = std::fs::read_to_string(k).unwrap();
        assert!(!log.contains(hex.trim()), "{log}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A pymfp compat peer: the server warns once that it is unauthenticated, establishes the
/// agreed channel (the agent sees it with the peer runtime), exports the compat counters,
/// and stays ready while the peer is unreachable. A ceremonial bootstrap is refused at
/// start with a clear error.
#[test]
fn a_pymfp_compat_peer_is_set_up_and_warned_about() {
    let dir = temp_dir("fed", "compat");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let channel_id = "0123456789abcdef0123456789abcdef";
    let remote_agent = "ab".repeat(32);
    let config = |bootstrap: &str| {
        format!(
            "runtime:\n  deployment_id: prod\n  instance_id: rust\nadmin:\n  port: 0\nhttp:\n  port: 0\nagents:\n  - name: driver\n    type: webhook\n    url: \"http://127.0.0.1:9/unused\"\n    token: \"{TOKEN}\"\nfederation:\n  listen: \"127.0.0.1:0\"\n  peers:\n    - runtime_id: prod/py\n      endpoint: \"{closed}\"\n      bootstrap: {bootstrap}\n      channels:\n        - id: \"{channel_id}\"\n          agent: driver\n          remote_agent: \"{remote_agent}\"\n          depth: 4\n"
        )
    };
    let mut s = Server::start(&dir.join("c.yaml"), &config("deterministic"));
    s.find_or_wait("INFO mfp_server::server: ready");
    let admin = s.addr("admin listener bound");
    let http_addr = s.addr("http listener bound");
    assert_eq!(s.log().matches("pymfp compat peer: UNAUTHENTICATED").count(), 1, "{}", s.log());
    let (status, out) = http(
        &http_addr,
        "POST",
        "/agents/driver",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        r#"{"jsonrpc":"2.0","id":1,"method":"channels"}"#,
    );
    assert_eq!(status, 200, "{out}");
    let py = mfp_core::RuntimeId::derive(b"prod", b"py").to_string();
    assert!(out.contains(channel_id) && out.contains(&remote_agent) && out.contains(&py), "{out}");
    let (_, m) = http(&admin, "GET", "/metrics", &[], "");
    assert!(m.contains("\nmfp_compat_peers 1\n"), "{m}");
    assert_eq!(metric(&m, "mfp_federation_peers"), 1, "{m}");
    assert_eq!(metric(&m, "mfp_federation_links_up"), 0, "{m}");
    assert_eq!(http(&admin, "GET", "/readyz", &[], "").0, 200);
    s.signal(rustix::process::Signal::TERM);
    assert!(s.wait_exit().success(), "{}", s.log());
    drop(s);

    let mut s = Server::start(&dir.join("c2.yaml"), &config("ceremonial"));
    let status = s.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", s.log());
    // pymfp's own YAML carries no keys: a ceremonial peer without them does not start, and
    // the error says which two entries to add.
    let log = s.log();
    assert!(log.contains("peer prod/py: bootstrap: ceremonial needs") && log.contains("ceremonial_key"), "{log}");
    std::fs::remove_dir_all(&dir).ok();
}

/// One server with a native peer (another server) and a pymfp peer (not running): both
/// are set up, each kind on its own listener, and the native channel carries messages.
#[test]
fn a_server_has_native_and_pymfp_peers_at_once() {
    let dir = temp_dir("fed", "mixed");
    let (ka, kb) = (dir.join("a.key"), dir.join("b.key"));
    let (pa, pb) = (identity(&ka), identity(&kb));
    let config_a = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: a\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\nfederation:\n  listen: \"127.0.0.1:0\"\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/b\n      public_key: \"{pb}\"\n",
        ka.display()
    );
    let a = Server::start(&dir.join("a.yaml"), &config_a);
    a.find_or_wait("INFO mfp_server::server: ready");
    let a_fed = a.addr("federation listener bound");

    let (hook_addr, deliveries) = hook();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let pymfp_channel = "0123456789abcdef0123456789abcdef";
    // transport.port takes no 0 (pymfp's schema): a port free a moment ago.
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config_b = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: b\nadmin:\n  port: 0\n  token: \"{OPERATOR}\"\nhttp:\n  port: 0\ntransport:\n  host: 127.0.0.1\n  port: {free}\nagents:\n  - name: driver\n    type: webhook\n    url: \"http://{hook_addr}/in\"\n    token: \"{TOKEN}\"\nfederation:\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/a\n      endpoint: \"{a_fed}\"\n      public_key: \"{pa}\"\n    - runtime_id: fedtest/py\n      endpoint: \"{closed}\"\n      channels:\n        - id: \"{pymfp_channel}\"\n          agent: driver\n          remote_agent: \"{}\"\n          depth: 4\n  channels:\n    - agent: driver\n      peer: fedtest/a\n      remote_agent: echo\n      depth: 4\n",
        kb.display(),
        "ab".repeat(32)
    );
    let b = Server::start(&dir.join("b.yaml"), &config_b);
    b.find_or_wait("federation channel opened");
    assert_eq!(b.log().matches("pymfp compat peer: UNAUTHENTICATED").count(), 1, "{}", b.log());
    assert!(b.log().contains("listening for pymfp peers"), "{}", b.log());
    assert!(b.log().contains(&format!("127.0.0.1:{free}")), "the pymfp listener is transport.host:port: {}", b.log());
    let b_admin = b.addr("admin listener bound");
    let b_http = b.addr("http listener bound");
    let auth = format!("Bearer {TOKEN}");
    let rpc = |body: &str| {
        let (status, reply) = http(&b_http, "POST", "/agents/driver", &[("Authorization", &auth)], body);
        assert_eq!(status, 200, "{reply}");
        serde_json::from_str::<serde_json::Value>(&reply).unwrap()
    };
    let list = rpc(r#"{"jsonrpc":"2.0","id":1,"method":"channels"}"#)["result"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    let py = mfp_core::RuntimeId::derive(b"fedtest", b"py").to_string();
    let a_id = mfp_core::RuntimeId::derive(b"fedtest", b"a").to_string();
    assert!(list.iter().any(|c| c["channel"] == pymfp_channel && c["peer_runtime"] == py.as_str()), "{list:?}");
    let native = list.iter().find(|c| c["peer_runtime"] == a_id.as_str()).expect("the native channel");
    let channel_id = native["channel"].as_str().unwrap().to_string();
    for i in 0..3 {
        let r = rpc(&format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"send","params":{{"channel":"{channel_id}","payload":"mixed-{i}"}}}}"#
        ));
        assert_eq!(r["result"]["step"], i, "{r}");
    }
    for i in 0..3 {
        let body = deliveries.recv_timeout(WAIT).expect("an echo from runtime a");
        assert!(body.contains(&format!(r#""payload":"mixed-{i}""#)), "{body}");
    }
    // The pymfp peer is down: a send on its channel fails and changes nothing else.
    let r = rpc(&format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"send","params":{{"channel":"{pymfp_channel}","payload":"nobody"}}}}"#
    ));
    assert!(r["error"].is_object(), "{r}");
    let m = metrics_until(&b_admin, |m| metric(m, "mfp_remote_messages_received_total") == 3);
    assert_eq!(metric(&m, "mfp_federation_peers"), 2, "{m}");
    assert_eq!(metric(&m, "mfp_federation_links_up"), 1, "{m}");
    assert!(m.contains("\nmfp_compat_peers 1\n"), "{m}");
    assert!(m.contains("\nmfp_federation_link_up{peer=\"fedtest/a\",kind=\"native\"} 1\n"), "{m}");
    assert!(m.contains("\nmfp_federation_link_up{peer=\"fedtest/py\",kind=\"pymfp\"} 0\n"), "{m}");
    // The operator's listing has both peers, and only the native peer's channel; the pymfp
    // peer's channel takes no operator action.
    let bearer = format!("Bearer {OPERATOR}");
    let (code, body) = http(&b_admin, "GET", "/federation", &[("Authorization", &bearer)], "");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<_> = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].clone(), p["kind"].clone(), p["link_up"].clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![("fedtest/a".into(), "native".into(), true.into()), ("fedtest/py".into(), "pymfp".into(), false.into())],
        "{body}"
    );
    assert_eq!(v["channels"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v["channels"][0]["channel"], channel_id.as_str(), "{body}");
    let (code, body) = http(
        &b_admin,
        "POST",
        &format!("/federation/channels/{pymfp_channel}/rotate"),
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(code, 404, "{body}");
    drop(b);
    drop(a);
    std::fs::remove_dir_all(&dir).ok();
}

/// The example pair in examples/server/ works as its comments say (keys generated, public
/// keys pasted, paths and the port adjusted for a test): b's driver hears its three lines
/// back from a's echo and b stops by itself.
#[test]
fn the_example_pair_runs() {
    let dir = temp_dir("fed", "example");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server");
    let (ka, kb) = (dir.join("a.key"), dir.join("b.key"));
    let (pa, pb) = (identity(&ka), identity(&kb));
    let read = |f: &str| std::fs::read_to_string(examples.join(f)).unwrap();
    let a_yaml = read("federation-a.yaml")
        .replace("B_PUBLIC_KEY", &pb)
        .replace("../../target/mfp-fed/a.key", &ka.display().to_string())
        .replace("../../target/mfp-fed/a.db", &dir.join("a.db").display().to_string())
        .replace("127.0.0.1:9880", "127.0.0.1:0");
    let a = Server::start(&dir.join("a.yaml"), &a_yaml);
    a.find_or_wait("INFO mfp_server::server: ready");
    let a_fed = a.addr("federation listener bound");
    let b_yaml = read("federation-b.yaml")
        .replace("A_PUBLIC_KEY", &pa)
        .replace("../../target/mfp-fed/b.key", &kb.display().to_string())
        .replace("../../target/mfp-fed/b.db", &dir.join("b.db").display().to_string())
        .replace("agents/fed_driver.py", &examples.join("agents/fed_driver.py").display().to_string())
        .replace("127.0.0.1:9880", &a_fed);
    let mut b = Server::start(&dir.join("b.yaml"), &b_yaml);
    b.wait_for("driver heard (step 2): and back again.");
    assert!(b.wait_exit().success(), "{}", b.log());
    for (step, line) in [(0, "Hello from runtime b!"), (1, "Across two processes,")] {
        assert!(b.log().contains(&format!("driver heard (step {step}): {line}")), "{}", b.log());
    }
    drop(a);
    std::fs::remove_dir_all(&dir).ok();
}

/// `federation.link` and `federation.listener` reach the native listener: with one pending
/// handshake allowed, a second silent connection is closed at once (well before any
/// handshake timeout), and the first is closed after the configured handshake timeout
/// (1.5 s), long before the default 5 s.
#[test]
fn the_listener_keeps_the_limits_and_timers_of_its_configuration() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let dir = temp_dir("fed", "listener");
    let ka = dir.join("a.key");
    let (_pa, pb) = (identity(&ka), identity(&dir.join("b.key")));
    let config_a = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: a\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\nfederation:\n  listen: \"127.0.0.1:0\"\n  identity_key: \"{}\"\n  link:\n    handshake_timeout_seconds: 1.5\n  listener:\n    max_pending_handshakes: 1\n  peers:\n    - runtime_id: fedtest/b\n      public_key: \"{pb}\"\n",
        ka.display()
    );
    let a = Server::start(&dir.join("a.yaml"), &config_a);
    a.find_or_wait("INFO mfp_server::server: ready");
    let a_fed = a.addr("federation listener bound");
    // Reads until the server closes the connection (EOF or reset), at most 4.5 s; returns
    // the moment it was closed.
    let closed_at = |c: &mut std::net::TcpStream| {
        let start = Instant::now();
        c.set_read_timeout(Some(Duration::from_millis(4500))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) | Err(_) if start.elapsed() < Duration::from_millis(4500) => Some(Instant::now()),
            _ => None,
        }
    };
    let opened = Instant::now();
    let mut first = std::net::TcpStream::connect(&a_fed).unwrap();
    // The first connection is accepted (its handshake slot taken) before the second arrives.
    std::thread::sleep(Duration::from_millis(100));
    let second_opened = Instant::now();
    let mut second = std::net::TcpStream::connect(&a_fed).unwrap();
    let refused = closed_at(&mut second).expect("the second connection is closed") - second_opened;
    assert!(refused < Duration::from_secs(1), "closed at once for want of a handshake slot: {refused:?}");
    let timed_out = closed_at(&mut first).expect("the silent connection is closed") - opened;
    assert!(timed_out >= Duration::from_millis(1450), "kept until its handshake timed out: {timed_out:?}");
    assert!(
        timed_out < Duration::from_millis(4500),
        "closed by the 1.5 s handshake timeout, not the default 5 s: {timed_out:?}"
    );
    drop(a);
    std::fs::remove_dir_all(&dir).ok();
}

const OPERATOR: &str = "operator-token-0123456789";

/// The operator endpoints of the admin listener, on two federated servers with storage:
/// `GET /federation` lists the link and the channel; `POST …/{action}` suspends, resets,
/// resumes and rotates the channel, each followed by what it should change (messages fail
/// while suspended and cross again after a reset or a resume, the rotation is counted);
/// bad requests get 400/401/403/404/409 with a message.
#[test]
fn an_operator_suspends_resets_resumes_and_rotates_a_federation_channel() {
    let dir = temp_dir("fed", "operator");
    let (ka, kb) = (dir.join("a.key"), dir.join("b.key"));
    let (pa, pb) = (identity(&ka), identity(&kb));
    // a has no operator token: its operator endpoints are off.
    let config_a = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: a\nstorage:\n  path: \"{}\"\nadmin:\n  port: 0\nagents:\n  - name: echo\n    type: builtin\n    builtin: echo\nfederation:\n  listen: \"127.0.0.1:0\"\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/b\n      public_key: \"{pb}\"\n",
        dir.join("a.db").display(),
        ka.display()
    );
    let a = Server::start(&dir.join("a.yaml"), &config_a);
    a.find_or_wait("INFO mfp_server::server: ready");
    let a_admin = a.addr("admin listener bound");
    let a_fed = a.addr("federation listener bound");
    let (hook_addr, deliveries) = hook();
    let config_b = format!(
        "runtime:\n  deployment_id: fedtest\n  instance_id: b\nstorage:\n  path: \"{}\"\nadmin:\n  port: 0\n  token: \"{OPERATOR}\"\nhttp:\n  port: 0\nagents:\n  - name: driver\n    type: webhook\n    url: \"http://{hook_addr}/in\"\n    token: \"{TOKEN}\"\nfederation:\n  identity_key: \"{}\"\n  peers:\n    - runtime_id: fedtest/a\n      endpoint: \"{a_fed}\"\n      public_key: \"{pa}\"\n  channels:\n    - agent: driver\n      peer: fedtest/a\n      remote_agent: echo\n",
        dir.join("b.db").display(),
        kb.display()
    );
    let b = Server::start(&dir.join("b.yaml"), &config_b);
    b.find_or_wait("federation channel opened");
    let b_admin = b.addr("admin listener bound");
    let b_http = b.addr("http listener bound");
    let bearer = format!("Bearer {OPERATOR}");
    let op = |method: &str, path: &str| http(&b_admin, method, path, &[("Authorization", &bearer)], "");
    let status_of = |channel: &str| {
        let (code, body) = op("GET", "/federation");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let c = v["channels"].as_array().unwrap().iter().find(|c| c["channel"] == channel).cloned();
        c.unwrap_or_else(|| panic!("channel {channel} not listed: {body}"))["status"].as_str().unwrap().to_string()
    };

    // Authentication, and the listing.
    assert_eq!(http(&b_admin, "GET", "/federation", &[], "").0, 401);
    assert_eq!(http(&b_admin, "GET", "/federation", &[("Authorization", "Bearer wrong-token-0123456789")], "").0, 401);
    let (code, body) = http(&a_admin, "GET", "/federation", &[("Authorization", &bearer)], "");
    assert_eq!(code, 403, "no admin.token on a: {body}");
    assert!(body.contains("admin.token"), "{body}");
    let (code, body) = op("GET", "/federation");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["peers"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v["peers"][0]["name"], "fedtest/a", "{body}");
    assert_eq!(v["peers"][0]["kind"], "native", "{body}");
    assert_eq!(v["peers"][0]["link_up"], true, "{body}");
    let channels = v["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 1, "{body}");
    assert_eq!(channels[0]["local_agent"], "driver", "{body}");
    assert_eq!(channels[0]["status"], "active", "{body}");
    let channel = channels[0]["channel"].as_str().unwrap().to_string();

    let auth = format!("Bearer {TOKEN}");
    let send = |payload: &str| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"send","params":{{"channel":"{channel}","payload":"{payload}"}}}}"#
        );
        http(&b_http, "POST", "/agents/driver", &[("Authorization", &auth)], &body).1
    };
    let echoed = |payload: &str| {
        let r = send(payload);
        assert!(r.contains("\"step\""), "{r}");
        let body = deliveries.recv_timeout(WAIT).expect("an echo from runtime a");
        assert!(body.contains(&format!(r#""payload":"{payload}""#)), "{body}");
    };
    echoed("before");

    // Bad requests.
    assert_eq!(op("POST", &format!("/federation/channels/{channel}/explode")).0, 404);
    assert_eq!(op("POST", "/federation/channels/not-hex/suspend").0, 400);
    let (code, body) = op("POST", &format!("/federation/channels/{}/suspend", "ab".repeat(16)));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not a cross-runtime channel"), "{body}");
    let (code, body) = op("POST", &format!("/federation/channels/{channel}/reset"));
    assert_eq!(code, 409, "only a suspended channel is reset: {body}");
    assert_eq!(http(&b_admin, "POST", &format!("/federation/channels/{channel}/suspend"), &[], "").0, 401);

    // Rotation: counted once the peer's answer came back.
    let (code, body) = op("POST", &format!("/federation/channels/{channel}/rotate"));
    assert_eq!(code, 200, "{body}");
    metrics_until(&b_admin, |m| metric(m, "mfp_remote_rotations_total") >= 1);
    echoed("after-rotation");

    // Suspend: sends fail; reset: both chains start again and messages cross.
    let (code, body) = op("POST", &format!("/federation/channels/{channel}/suspend"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(status_of(&channel), "quarantined");
    let r = send("while-suspended");
    assert!(r.contains("\"error\""), "a suspended channel takes no message: {r}");
    let m = metrics_until(&b_admin, |m| metric(m, "mfp_federation_channels_suspended") == 1);
    assert_eq!(metric(&m, "mfp_federation_channels"), 1, "{m}");
    assert_eq!(metric(&m, "mfp_federation_resets_total"), 0, "{m}");
    let (code, body) = op("POST", &format!("/federation/channels/{channel}/reset"));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["discarded"], 0, "{body}");
    assert_eq!(status_of(&channel), "active");
    let m = metrics_until(&b_admin, |m| metric(m, "mfp_federation_channels_suspended") == 0);
    assert_eq!(metric(&m, "mfp_federation_resets_total"), 1, "{m}");
    assert_eq!(metric(&m, "mfp_federation_suspensions_total"), 0, "an operator's suspension is not a recovery's: {m}");
    echoed("after-reset");

    // Suspend and resume, from the command line: address and token from b's configuration.
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["federation", "--config"])
            .arg(dir.join("b.yaml"))
            .args(["--admin", &b_admin])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["suspend", &channel]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"quarantined\""), "{out}");
    let (code, out, err) = cli(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["channels"][0]["status"], "quarantined", "{out}");
    let (code, _, err) = cli(&["suspend", "not-a-channel"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("32 hex digits"), "{err}");
    let (code, out, err) = cli(&["resume", &channel]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"active\""), "{out}");
    assert_eq!(status_of(&channel), "active");
    let (code, _, err) = cli(&["resume", &channel]);
    assert_eq!(code, Some(1), "resuming an active channel is refused");
    assert!(err.contains("409"), "{err}");
    assert!(!err.contains(OPERATOR) && !b.log().contains(OPERATOR), "the token is never shown");
    echoed("after-resume");
    // a's configuration has no token: the command says so without asking.
    let out =
        Command::new(BIN).args(["federation", "--config"]).arg(dir.join("a.yaml")).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no admin.token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(deliveries.try_recv().is_err(), "nothing sent while suspended came through");
    assert!(b.log().contains("operator action on a federation channel"), "{}", b.log());
    assert!(!b.log().contains(OPERATOR), "the token is never logged");
    drop(b);
    drop(a);
    std::fs::remove_dir_all(&dir).ok();
}
