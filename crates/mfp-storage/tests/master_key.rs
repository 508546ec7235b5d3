//! Master keys: only exact 32-byte or 64-hex keys are accepted; everything else stops start-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::TempDir;
use mfp_runtime::storage::StorageError;
use mfp_storage::MasterKey;

const CHILD_VAR: &str = "MFP_STORAGE_TEST_CHILD_KEY";

fn raw_key() -> Vec<u8> {
    (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect()
}

fn is_key_error<T: std::fmt::Debug>(r: Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::MasterKey(_)))
}

#[test]
fn key_files() {
    let dir = TempDir::new("keys");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.file(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let raw = raw_key();
    let hex = hex::encode(&raw);
    // Accepted.
    for (name, content) in [
        ("raw", raw.clone()),
        ("hex", hex.clone().into_bytes()),
        ("hex-nl", format!("{hex}\n").into_bytes()),
        ("hex-upper", hex.to_uppercase().into_bytes()),
    ] {
        let k = MasterKey::from_file(write(name, &content)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(k.expose().as_slice(), raw.as_slice(), "{name}");
    }
    // Refused.
    for (name, content) in [
        ("31-bytes", raw[..31].to_vec()),
        ("33-bytes", [raw.as_slice(), &[1]].concat()),
        ("hex-space", format!("{hex} ").into_bytes()),
        ("space-hex", format!(" {hex}").into_bytes()),
        ("hex-crlf", format!("{hex}\r\n").into_bytes()),
        ("hex-2nl", format!("{hex}\n\n").into_bytes()),
        ("hex-tab", format!("{hex}\t").into_bytes()),
        ("hex-63", hex.as_bytes()[..63].to_vec()),
        ("hex-65", format!("{hex}a").into_bytes()),
        ("hex-bad-digit", format!("{}g", &hex[..63]).into_bytes()),
        ("empty", Vec::new()),
        ("newline-only", b"\n".to_vec()),
        ("passphrase-32", b"correct horse battery staple!!!!".to_vec()),
        ("utf8-passphrase-32", "pässwörd-ünd-mehr-tëxt-hier!".as_bytes().to_vec()),
        ("hex-128-bit", hex.as_bytes()[..32].to_vec()),
    ] {
        let r = MasterKey::from_file(write(name, &content));
        assert!(is_key_error(r), "{name} was accepted");
    }
    assert!(is_key_error(MasterKey::from_file(dir.file("missing"))));
    assert!(is_key_error(MasterKey::from_file(dir.path())), "a directory");
    std::fs::write(dir.file("huge"), vec![b'a'; 1 << 20]).unwrap();
    assert!(is_key_error(MasterKey::from_file(dir.file("huge"))));
}

#[test]
fn error_messages_and_debug_never_show_the_key() {
    let raw = raw_key();
    let k = MasterKey::from_bytes(&raw).unwrap();
    assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    let hex = hex::encode(&raw);
    let err = MasterKey::from_bytes(format!("{hex} ").as_bytes()).unwrap_err().to_string();
    assert!(!err.contains(&hex[..16]), "{err}");
}

#[test]
fn environment_variables() {
    assert!(is_key_error(MasterKey::from_env("MFP_STORAGE_TEST_SURELY_UNSET_VARIABLE")));
    // Set by cargo, not a key.
    assert!(is_key_error(MasterKey::from_env("CARGO_PKG_NAME")));
    // Variables are set in a child process (setting them here would need `unsafe`).
    let raw = raw_key();
    let hex = hex::encode(&raw);
    for (value, ok) in
        [(hex.clone(), true), (format!("{hex}\n"), true), (format!("{hex} "), false), (String::new(), false)]
    {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "env_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, &value)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let expected = if ok {
            format!("CHILD-OK {}", hex::encode(MasterKey::from_bytes(&raw).unwrap().key_id()))
        } else {
            "CHILD-ERR MasterKey".into()
        };
        assert!(stdout.contains(&expected), "value {value:?}: {stdout}");
    }
}

/// Runs only as the child of `environment_variables`.
#[test]
fn env_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    match MasterKey::from_env(CHILD_VAR) {
        Ok(k) => println!("CHILD-OK {}", hex::encode(k.key_id())),
        Err(StorageError::MasterKey(_)) => println!("CHILD-ERR MasterKey"),
        Err(e) => println!("CHILD-ERR other {e}"),
    }
}

#[test]
fn generated_keys_differ() {
    let a = MasterKey::generate().unwrap();
    let b = MasterKey::generate().unwrap();
    assert_ne!(a.expose(), b.expose());
    assert_ne!(a.key_id(), b.key_id());
}

#[test]
fn generate_file_creates_an_owner_only_key_file_and_never_overwrites() {
    let dir = TempDir::new("keygen");
    let path = dir.file("master.key");
    let key = MasterKey::generate_file(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65, "64 hex digits and a newline");
    assert_eq!(MasterKey::from_file(&path).unwrap().key_id(), key.key_id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // A second call refuses to replace the key, and leaves it as it was.
    let err = MasterKey::generate_file(&path).unwrap_err();
    assert!(matches!(&err, StorageError::MasterKey(m) if m.contains("refusing to overwrite")), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    // A missing directory is an error naming the file.
    let err = MasterKey::generate_file(dir.file("no/such/dir.key")).unwrap_err();
    assert!(err.to_string().contains("dir.key"), "{err}");
    assert_ne!(MasterKey::generate_file(dir.file("second.key")).unwrap().key_id(), key.key_id());
}
