//! `mfp-storage`: operator tool for mfp-storage databases.
//!
//! ```text
//! mfp-storage check        --db PATH --key-file F
//! mfp-storage rotate-key   --db PATH --old-key-file F --new-key-file F
//! mfp-storage import-pymfp --pymfp-db PATH (--pymfp-key-file F | --pymfp-plaintext) --db PATH --key-file F
//! ```
//!
//! Key files hold exactly 32 raw bytes or 64 hex digits (one trailing newline allowed).
//! Exit status: 0 success, 1 failure (including a failed check), 2 usage error.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use mfp_core::MerkleSg;
use mfp_runtime::{AgentState, ChannelStatus};
use mfp_storage::pymfp::{self, PymfpEncryption};
use mfp_storage::{MasterKey, StorageConfig, StorageError, inspect, rotate_master_key};

const USAGE: &str = "usage:
  mfp-storage check        --db PATH --key-file F
  mfp-storage rotate-key   --db PATH --old-key-file F --new-key-file F
  mfp-storage import-pymfp --pymfp-db PATH (--pymfp-key-file F | --pymfp-plaintext) --db PATH --key-file F";

/// Parsed `--name value` options and `--flag`s.
struct Args {
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    fn parse(rest: &[String], with_value: &[&str], flags: &[&str]) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        let mut found_flags = Vec::new();
        let mut it = rest.iter();
        while let Some(arg) = it.next() {
            let name = arg.strip_prefix("--").ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            if with_value.contains(&name) {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                if values.insert(name.to_owned(), v.clone()).is_some() {
                    return Err(format!("--{name} given twice"));
                }
            } else if flags.contains(&name) {
                found_flags.push(name.to_owned());
            } else {
                return Err(format!("unknown option --{name}"));
            }
        }
        Ok(Self { values, flags: found_flags })
    }

    fn path(&self, name: &str) -> Result<PathBuf, String> {
        self.values.get(name).map(PathBuf::from).ok_or_else(|| format!("--{name} is required"))
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

enum Failure {
    Usage(String),
    Failed(String),
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        Failure::Failed(e.to_string())
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.split_first() {
        Some((cmd, rest)) => match cmd.as_str() {
            "check" => check(rest),
            "rotate-key" => rotate(rest),
            "import-pymfp" => import(rest),
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(Failure::Usage(format!("unknown command {other:?}"))),
        },
        None => Err(Failure::Usage("no command given".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn check(rest: &[String]) -> Result<(), Failure> {
    let args = Args::parse(rest, &["db", "key-file"], &[]).map_err(Failure::Usage)?;
    let db = args.path("db").map_err(Failure::Usage)?;
    let key = load_key(&args.path("key-file").map_err(Failure::Usage)?)?;
    let found = inspect(&db, &key)?;
    println!("database: {}", db.display());
    println!("schema version: {}", found.schema_version);
    println!("key id: {}", found.key_id.map(hex::encode).unwrap_or_else(|| "none".into()));
    let Some(snapshot) = found.snapshot else {
        println!("runtime: none stored");
        println!("bilateral channels: {}", found.federation.bilateral.len());
        println!("pending outbound messages: {}", found.federation.outbound.len());
        println!("OK");
        return Ok(());
    };
    if let Some(meta) = &snapshot.meta {
        println!("runtime: {} (agent counter {})", meta.identity, meta.agent_counter);
    }
    let count_agents = |s: AgentState| snapshot.agents.iter().filter(|a| a.state == s).count();
    println!(
        "agents: {} (bound {}, active {}, quarantined {})",
        snapshot.agents.len(),
        count_agents(AgentState::Bound),
        count_agents(AgentState::Active),
        count_agents(AgentState::Quarantined)
    );
    let count_channels = |s: ChannelStatus| snapshot.channels.iter().filter(|c| c.status == s).count();
    println!(
        "channels: {} (active {}, quarantined {})",
        snapshot.channels.len(),
        count_channels(ChannelStatus::Active),
        count_channels(ChannelStatus::Quarantined)
    );
    println!("bilateral channels: {}", found.federation.bilateral.len());
    println!("pending outbound messages: {}", found.federation.outbound.len());
    let mut tree = MerkleSg::from_states(snapshot.channels.iter().map(|c| (c.id, &c.state)))
        .map_err(|e| Failure::Failed(format!("cannot compute Sg: {e}")))?;
    let recomputed = tree.root();
    if recomputed == snapshot.sg {
        println!("sg: consistent with the {} channel states", snapshot.channels.len());
        println!("OK");
        Ok(())
    } else {
        println!("sg: MISMATCH (stored Sg is not the Merkle root of the stored channel states)");
        Err(Failure::Failed("check failed".into()))
    }
}

fn rotate(rest: &[String]) -> Result<(), Failure> {
    let args = Args::parse(rest, &["db", "old-key-file", "new-key-file"], &[]).map_err(Failure::Usage)?;
    let db = args.path("db").map_err(Failure::Usage)?;
    let old = load_key(&args.path("old-key-file").map_err(Failure::Usage)?)?;
    let new = load_key(&args.path("new-key-file").map_err(Failure::Usage)?)?;
    let count = rotate_master_key(&db, &old, &new)?;
    println!("rotated {count} encrypted cells; key id {} -> {}", hex::encode(old.key_id()), hex::encode(new.key_id()));
    Ok(())
}

/// A master key from a file, warning on stderr when the file is readable by others (the
/// library reports that as a `tracing` event, which this tool does not print).
fn load_key(path: &std::path::Path) -> Result<MasterKey, Failure> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!("warning: key file {} is readable by group or others (chmod 600 it)", path.display());
        }
    }
    Ok(MasterKey::from_file(path)?)
}

/// Largest pymfp key file read (pymfp's HMAC accepts keys of any length).
const MAX_PYMFP_KEY_FILE: u64 = 4096;

/// pymfp's master key from a file. pymfp accepted any non-empty byte string: a file holding
/// exactly 32 raw bytes or 64 hex digits is read as our keys are; anything else is taken
/// with surrounding ASCII whitespace removed, as pymfp's `mfp-server` read its key file.
/// A wrong reading cannot damage anything: the first cell then fails to decrypt.
fn read_pymfp_key(file: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, Failure> {
    let meta = std::fs::metadata(file).map_err(|e| Failure::Usage(format!("pymfp key file: {}", e.kind())))?;
    if meta.len() > MAX_PYMFP_KEY_FILE {
        return Err(Failure::Usage(format!("pymfp key file larger than {MAX_PYMFP_KEY_FILE} bytes")));
    }
    let raw = zeroize::Zeroizing::new(
        std::fs::read(file).map_err(|e| Failure::Usage(format!("pymfp key file: {}", e.kind())))?,
    );
    if let Ok(k) = MasterKey::from_bytes(&raw) {
        return Ok(zeroize::Zeroizing::new(k.expose().to_vec()));
    }
    let stripped = raw.trim_ascii();
    if stripped.is_empty() {
        return Err(Failure::Usage(
            "the pymfp key file is empty (a pymfp database written with an empty key is plaintext: use \
             --pymfp-plaintext)"
                .into(),
        ));
    }
    println!("note: the pymfp key is not 32 raw bytes or 64 hex digits; using the file's bytes, whitespace-trimmed");
    Ok(zeroize::Zeroizing::new(stripped.to_vec()))
}

fn import(rest: &[String]) -> Result<(), Failure> {
    let args = Args::parse(rest, &["pymfp-db", "pymfp-key-file", "db", "key-file"], &["pymfp-plaintext"])
        .map_err(Failure::Usage)?;
    let pymfp_db = args.path("pymfp-db").map_err(Failure::Usage)?;
    let db = args.path("db").map_err(Failure::Usage)?;
    let key = load_key(&args.path("key-file").map_err(Failure::Usage)?)?;
    let pymfp_key = match (args.values.get("pymfp-key-file"), args.flag("pymfp-plaintext")) {
        (Some(file), false) => Some(read_pymfp_key(file)?),
        (None, true) => None,
        _ => return Err(Failure::Usage("give exactly one of --pymfp-key-file and --pymfp-plaintext".into())),
    };
    let encryption = match &pymfp_key {
        Some(k) => PymfpEncryption::Key(k),
        None => PymfpEncryption::Plaintext,
    };
    let mut config = StorageConfig::new(&db, key);
    config.create_if_missing = true;
    let report = pymfp::import(&pymfp_db, encryption, config)?;
    for w in &report.warnings {
        println!("warning: {w}");
    }
    println!(
        "imported runtime {}: {} agents, {} channels, {} bilateral channels",
        report.runtime_id, report.agents, report.channels, report.bilateral
    );
    Ok(())
}
