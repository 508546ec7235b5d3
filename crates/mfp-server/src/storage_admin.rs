//! `mfp-server storage …`: the storage administration of `mfp-storage`, on its library
//! functions (`inspect`, `rotate_master_key`, `pymfp::import`). Run them while the server
//! is stopped: one process owns a database.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use mfp_storage::pymfp::{self, PymfpEncryption};
use mfp_storage::{MasterKey, StorageConfig};

/// Storage administration.
#[derive(Debug, Subcommand)]
pub(crate) enum StorageCmd {
    /// Opens the database read-only, validates every row and reports what it holds
    /// (exit 1 when it is damaged, or its Sg does not match its channel states).
    Check {
        /// The database.
        #[arg(long)]
        db: PathBuf,
        /// Its master key (32 raw bytes or 64 hex digits).
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Re-encrypts every cell under a new master key, in one transaction.
    RotateKey {
        /// The database.
        #[arg(long)]
        db: PathBuf,
        /// The current master key.
        #[arg(long)]
        old_key_file: PathBuf,
        /// The new master key (`mfp-server keygen`).
        #[arg(long)]
        new_key_file: PathBuf,
    },
    /// Imports a pymfp 1.0.0 database into a new mfp-storage database.
    ImportPymfp {
        /// The pymfp database.
        #[arg(long)]
        pymfp_db: PathBuf,
        /// pymfp's master key file.
        #[arg(long, conflicts_with = "pymfp_plaintext", required_unless_present = "pymfp_plaintext")]
        pymfp_key_file: Option<PathBuf>,
        /// The pymfp database was written without encryption.
        #[arg(long)]
        pymfp_plaintext: bool,
        /// The new database.
        #[arg(long)]
        db: PathBuf,
        /// Its master key.
        #[arg(long)]
        key_file: PathBuf,
    },
}

fn key(path: &Path) -> Result<MasterKey, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!("warning: key file {} is readable by group or others (chmod 600 it)", path.display());
        }
    }
    MasterKey::from_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Largest pymfp key file read.
const MAX_PYMFP_KEY_FILE: u64 = 4096;

/// pymfp accepted a key of any length: exactly 32 raw bytes or 64 hex digits are read as
/// ours are, anything else with ASCII whitespace trimmed, as pymfp's server read it.
fn pymfp_key(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    if std::fs::metadata(path).map_err(err)?.len() > MAX_PYMFP_KEY_FILE {
        return Err(format!("{}: larger than {MAX_PYMFP_KEY_FILE} bytes", path.display()));
    }
    let raw = zeroize::Zeroizing::new(std::fs::read(path).map_err(err)?);
    if let Ok(k) = MasterKey::from_bytes(&raw) {
        return Ok(zeroize::Zeroizing::new(k.expose().to_vec()));
    }
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(format!(
            "{} is empty (a database written with an empty key is plaintext: use --pymfp-plaintext)",
            path.display()
        ));
    }
    Ok(zeroize::Zeroizing::new(trimmed.to_vec()))
}

/// Runs one storage command.
pub(crate) fn run(cmd: StorageCmd) -> Result<(), String> {
    match cmd {
        StorageCmd::Check { db, key_file } => check(&db, &key(&key_file)?),
        StorageCmd::RotateKey { db, old_key_file, new_key_file } => {
            let (old, new) = (key(&old_key_file)?, key(&new_key_file)?);
            let n = mfp_storage::rotate_master_key(&db, &old, &new).map_err(|e| format!("{}: {e}", db.display()))?;
            println!(
                "rotated {n} encrypted cells; key id {} -> {}",
                hex::encode(old.key_id()),
                hex::encode(new.key_id())
            );
            Ok(())
        }
        StorageCmd::ImportPymfp { pymfp_db, pymfp_key_file, pymfp_plaintext: _, db, key_file } => {
            let pk = pymfp_key_file.as_deref().map(pymfp_key).transpose()?;
            let encryption = pk.as_ref().map_or(PymfpEncryption::Plaintext, |k| PymfpEncryption::Key(k));
            let mut config = StorageConfig::new(&db, key(&key_file)?);
            config.create_if_missing = true;
            let r = pymfp::import(&pymfp_db, encryption, config).map_err(|e| format!("{}: {e}", pymfp_db.display()))?;
            for w in &r.warnings {
                println!("warning: {w}");
            }
            println!(
                "imported runtime {}: {} agents, {} channels, {} bilateral channels",
                r.runtime_id, r.agents, r.channels, r.bilateral
            );
            Ok(())
        }
    }
}

fn check(db: &Path, key: &MasterKey) -> Result<(), String> {
    let report = mfp_storage::check(db, key).map_err(|e| format!("{}: {e}", db.display()))?;
    print!("{report}");
    if report.ok { Ok(()) } else { Err(format!("check of {} failed", db.display())) }
}
