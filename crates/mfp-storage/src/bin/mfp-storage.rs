//! `mfp-storage`: operator tool for mfp-storage databases.
//!
//! ```text
//! mfp-storage keygen       --out F
//! mfp-storage check        --db PATH --key-file F
//! mfp-storage rotate-key   --db PATH --old-key-file F --new-key-file F
//! mfp-storage import-pymfp --pymfp-db PATH (--pymfp-key-file F | --pymfp-plaintext) --db PATH --key-file F
//! ```
//!
//! `mfp-storage --help` and `mfp-storage COMMAND --help` describe each command. Key files hold
//! exactly 32 raw bytes or 64 hex digits (one trailing newline allowed). Exit status: 0
//! success, 1 failure (including a failed check), 2 usage error.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mfp_storage::pymfp::{self, PymfpEncryption};
use mfp_storage::{MasterKey, StorageConfig, StorageError, rotate_master_key};

/// Operator tool for mfp-storage databases: create keys, check a database, rotate its master
/// key, import a pymfp 1.0.0 database.
///
/// Exit status: 0 success, 1 failure (a failed check included), 2 usage error.
#[derive(Parser)]
#[command(name = "mfp-storage", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new master key file: 64 hex digits, mode 0600; never overwrites a file.
    Keygen {
        /// The key file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check a database read-only (read-only media included): structure, schema, key, every
    /// row, and that the stored Sg is the Merkle root of the channel states.
    Check {
        /// The database file.
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        /// The database's master key file.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
    /// Re-encrypt every cell of a database from one master key to another (stop the runtime
    /// first).
    RotateKey {
        /// The database file.
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        /// The current master key file.
        #[arg(long, value_name = "FILE")]
        old_key_file: PathBuf,
        /// The new master key file (create it with `keygen`).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Import a pymfp 1.0.0 database into a new mfp-storage database (the pymfp file is only
    /// read).
    ImportPymfp {
        /// The pymfp database.
        #[arg(long, value_name = "PATH")]
        pymfp_db: PathBuf,
        /// pymfp's master key file.
        #[arg(long, value_name = "FILE", required_unless_present = "pymfp_plaintext")]
        pymfp_key_file: Option<PathBuf>,
        /// The pymfp database is not encrypted (pymfp's encrypt_at_rest off, or an empty key).
        #[arg(long, conflicts_with = "pymfp_key_file")]
        pymfp_plaintext: bool,
        /// The mfp-storage database to create.
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        /// The new database's master key file.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

/// A failure: printed as `error: …`, exit status 1.
struct Failure(String);

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Check { db, key_file } => check(&db, &key_file),
        Command::RotateKey { db, old_key_file, new_key_file } => rotate(&db, &old_key_file, &new_key_file),
        Command::ImportPymfp { pymfp_db, pymfp_key_file, pymfp_plaintext: _, db, key_file } => {
            import(&pymfp_db, pymfp_key_file.as_deref(), &db, &key_file)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: &Path) -> Result<(), Failure> {
    let key = MasterKey::generate_file(out)?;
    println!("created {} (mode 0600); key id {}", out.display(), hex::encode(key.key_id()));
    Ok(())
}

fn check(db: &Path, key_file: &Path) -> Result<(), Failure> {
    let key = load_key(key_file)?;
    let report = mfp_storage::check(db, &key)?;
    print!("{report}");
    if report.ok { Ok(()) } else { Err(Failure(format!("check of {} failed", db.display()))) }
}

fn rotate(db: &Path, old_key_file: &Path, new_key_file: &Path) -> Result<(), Failure> {
    let old = load_key(old_key_file)?;
    let same_file = match (std::fs::canonicalize(old_key_file), std::fs::canonicalize(new_key_file)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    // The same file twice: read (and warn about) it once.
    let new = if same_file { old.clone() } else { load_key(new_key_file)? };
    let count = rotate_master_key(db, &old, &new)?;
    println!("rotated {count} encrypted cells; key id {} -> {}", hex::encode(old.key_id()), hex::encode(new.key_id()));
    Ok(())
}

/// A master key from a file, warning on stderr when the file is readable by others (the
/// library reports that as a `tracing` event, which this tool does not print).
fn load_key(path: &Path) -> Result<MasterKey, Failure> {
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
fn read_pymfp_key(file: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, Failure> {
    let meta = std::fs::metadata(file).map_err(|e| Failure(format!("pymfp key file {}: {e}", file.display())))?;
    if meta.len() > MAX_PYMFP_KEY_FILE {
        return Err(Failure(format!("pymfp key file {} is larger than {MAX_PYMFP_KEY_FILE} bytes", file.display())));
    }
    let raw = zeroize::Zeroizing::new(
        std::fs::read(file).map_err(|e| Failure(format!("pymfp key file {}: {e}", file.display())))?,
    );
    if let Ok(k) = MasterKey::from_bytes(&raw) {
        return Ok(zeroize::Zeroizing::new(k.expose().to_vec()));
    }
    let stripped = raw.trim_ascii();
    if stripped.is_empty() {
        return Err(Failure(
            "the pymfp key file is empty (a pymfp database written with an empty key is plaintext: use \
             --pymfp-plaintext)"
                .into(),
        ));
    }
    println!("note: the pymfp key is not 32 raw bytes or 64 hex digits; using the file's bytes, whitespace-trimmed");
    Ok(zeroize::Zeroizing::new(stripped.to_vec()))
}

fn import(pymfp_db: &Path, pymfp_key_file: Option<&Path>, db: &Path, key_file: &Path) -> Result<(), Failure> {
    let key = load_key(key_file)?;
    let pymfp_key = pymfp_key_file.map(read_pymfp_key).transpose()?;
    let encryption = match &pymfp_key {
        Some(k) => PymfpEncryption::Key(k),
        None => PymfpEncryption::Plaintext,
    };
    let mut config = StorageConfig::new(db, key);
    config.create_if_missing = true;
    let report = pymfp::import(pymfp_db, encryption, config)?;
    for w in &report.warnings {
        println!("warning: {w}");
    }
    println!(
        "imported runtime {}: {} agents, {} channels, {} bilateral channels",
        report.runtime_id, report.agents, report.channels, report.bilateral
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
