//! Reading pymfp 1.0.0 databases and importing them.
//!
//! pymfp (the Python reference) stores its state in SQLite schema version 2 (tables
//! `runtime_meta`, `agents`, `channels`, `bilateral_channels`, `global_state_cache`)
//! and encrypts `channels.local_state`, `bilateral_channels.ratchet_state` and
//! `bilateral_channels.shared_prng_seed` per cell (the `storage_crypto` vectors pin it):
//!
//! ```text
//! storage_key = HMAC-SHA-256(master_key, "mfp-storage-key" ‖ runtime_id)
//! cell_key    = HMAC-SHA-256(storage_key, u16be(len table) ‖ table ‖ u16be(len column) ‖ column ‖ row_id)
//! aad         = u16be(len row_id) ‖ row_id ‖ u16be(len column) ‖ column
//! stored      = nonce(12) ‖ AES-256-GCM(cell_key, nonce, plaintext, aad)
//! ```
//!
//! with `runtime_id` the stored `runtime_meta.runtime_id`. The functions for one cell are
//! public so that the `storage_crypto` test vectors can be checked against them.
//!
//! [`read_database`] reads such a database read-only into a runtime [`Snapshot`] plus the
//! bilateral rows; [`import`] writes that into a new [`SqliteStorage`] (re-encrypted in this
//! crate's format, under its own master key).
//!
//! What pymfp does not persist cannot be imported: per-agent message counts, failure-count
//! increments, auto-quarantine after validation failures, cross-runtime channels and
//! receive-side bilateral advances. pymfp stores no agent names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mfp_core::bilateral::BilateralState;
use mfp_core::crypto::{AES_GCM_NONCE_SIZE as NONCE_LEN, Aes256GcmKey};
use mfp_core::{AgentId, BilateralId, ChannelId, MerkleSg, RuntimeId, State};
use mfp_runtime::storage::{AgentRow, ChannelRow, MetaRow, Snapshot, Storage, StorageError, StorageOp};
use mfp_runtime::{AgentState, ChannelStatus};
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;
use zeroize::Zeroizing;

use crate::cell::push_lp;
use crate::config::StorageConfig;
use crate::db::{
    corrupt, get, get_depth, get_fixed, get_u32, get_u64, parse_agent_state, parse_channel_status, sql_error,
};
use crate::records::{BilateralRecord, BilateralStatus, WriteOp};
use crate::schema::{self, FileState};
use crate::storage::{SqliteStorage, block_on_thread};

/// HMAC message prefix of pymfp's storage key.
pub const STORAGE_KEY_LABEL: &[u8] = b"mfp-storage-key";
/// AES-GCM tag size.
const TAG_LEN: usize = 16;
/// Size of an encrypted 32-byte state in pymfp's format.
pub const ENCRYPTED_STATE_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// `HMAC-SHA-256(master_key, "mfp-storage-key" ‖ runtime_id)`.
#[must_use]
pub fn storage_key(master_key: &[u8], runtime_id: &[u8]) -> State {
    mfp_core::crypto::hmac_state(master_key, &[STORAGE_KEY_LABEL, runtime_id])
}

/// `u16be(len table) ‖ table ‖ u16be(len column) ‖ column ‖ row_id`.
///
/// # Errors
///
/// [`StorageError::Corrupt`] if a name is longer than 65535 bytes.
pub fn cell_key_message(table: &str, column: &str, row_id: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut msg = Vec::with_capacity(4 + table.len() + column.len() + row_id.len());
    push_lp(&mut msg, table.as_bytes())?;
    push_lp(&mut msg, column.as_bytes())?;
    msg.extend_from_slice(row_id);
    Ok(msg)
}

/// `HMAC-SHA-256(storage_key, cell_key_message(table, column, row_id))`.
///
/// # Errors
///
/// As [`cell_key_message`].
pub fn cell_key(storage_key: &State, table: &str, column: &str, row_id: &[u8]) -> Result<State, StorageError> {
    let msg = cell_key_message(table, column, row_id)?;
    Ok(mfp_core::crypto::hmac_state(storage_key.expose(), &[&msg]))
}

/// `u16be(len row_id) ‖ row_id ‖ u16be(len column) ‖ column`.
///
/// # Errors
///
/// [`StorageError::Corrupt`] if the row id or the column name is longer than 65535 bytes.
pub fn aad(row_id: &[u8], column: &str) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(4 + row_id.len() + column.len());
    push_lp(&mut out, row_id)?;
    push_lp(&mut out, column.as_bytes())?;
    Ok(out)
}

fn aead_key(storage_key: &State, table: &str, column: &str, row_id: &[u8]) -> Result<Aes256GcmKey, StorageError> {
    let key = cell_key(storage_key, table, column, row_id)?;
    Aes256GcmKey::new(key.expose()).map_err(|_| StorageError::Backend("AES-256-GCM key setup failed".into()))
}

/// pymfp's `encrypt_cell` with the nonce given: `nonce ‖ AES-256-GCM(cell_key, nonce,
/// plaintext, aad)`. For test vectors; never reuse a nonce under one cell key.
///
/// # Errors
///
/// As [`cell_key_message`].
pub fn encrypt_cell_with_nonce(
    storage_key: &State,
    table: &str,
    column: &str,
    row_id: &[u8],
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, StorageError> {
    let key = aead_key(storage_key, table, column, row_id)?;
    let aad = aad(row_id, column)?;
    let mut body = plaintext.to_vec();
    key.seal_append_tag(*nonce, &aad, &mut body).map_err(|_| StorageError::Backend("encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + body.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&body);
    body.iter_mut().for_each(|b| *b = 0);
    Ok(out)
}

/// pymfp's `encrypt_cell`: as [`encrypt_cell_with_nonce`] with a fresh random nonce.
///
/// # Errors
///
/// As [`cell_key_message`]; [`StorageError::Backend`] if the system generator fails.
pub fn encrypt_cell(
    storage_key: &State,
    table: &str,
    column: &str,
    row_id: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, StorageError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| StorageError::Backend("the system random generator failed".into()))?;
    encrypt_cell_with_nonce(storage_key, table, column, row_id, &nonce, plaintext)
}

/// pymfp's `decrypt_cell`.
///
/// # Errors
///
/// [`StorageError::Corrupt`] if `stored` is shorter than a nonce and a tag;
/// [`StorageError::Decrypt`] if authentication fails (wrong key, wrong cell, tampering).
pub fn decrypt_cell(
    storage_key: &State,
    table: &str,
    column: &str,
    row_id: &[u8],
    stored: &[u8],
) -> Result<Zeroizing<Vec<u8>>, StorageError> {
    if stored.len() < NONCE_LEN + TAG_LEN {
        return Err(corrupt(table, column, "encrypted cell too short"));
    }
    let (nonce, sealed) = stored.split_at(NONCE_LEN);
    let key = aead_key(storage_key, table, column, row_id)?;
    let aad = aad(row_id, column)?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = key.open_in_place(nonce, &aad, &mut buf[..]).map_err(|_| StorageError::Decrypt)?.len();
    buf.truncate(len);
    Ok(buf)
}

/// How the pymfp database's cells were written.
#[derive(Clone, Copy)]
pub enum PymfpEncryption<'a> {
    /// Encrypted with this master key (`StorageConfig.master_key` of pymfp).
    Key(&'a [u8]),
    /// Stored in plaintext: pymfp 1.0.0 silently did this when `encrypt_at_rest` was off or
    /// its master key was empty. Never guessed: the caller must say so.
    Plaintext,
}

impl core::fmt::Debug for PymfpEncryption<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PymfpEncryption::Key(_) => f.write_str("Key(<redacted>)"),
            PymfpEncryption::Plaintext => f.write_str("Plaintext"),
        }
    }
}

/// Everything read from a pymfp database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PymfpExport {
    /// Metadata, agents that are not terminated, channels that are not closed (states
    /// decrypted), and Sg recomputed from those channels with the Merkle algorithm.
    pub snapshot: Snapshot,
    /// Every bilateral channel row (states decrypted).
    pub bilateral: Vec<BilateralRecord>,
    /// pymfp's `runtime_meta.schema_version` (1 or 2).
    pub schema_version: i64,
    /// pymfp's cached Sg (`global_state_cache`), if any.
    pub cached_sg: Option<State>,
    /// Non-fatal findings (e.g. a cached Sg that differs from the recomputed one).
    pub warnings: Vec<String>,
}

const PYMFP_TABLES: &[&str] = &["runtime_meta", "agents", "channels", "bilateral_channels", "global_state_cache"];

/// Reads a pymfp 1.0.0 database read-only (the file is never modified).
///
/// # Errors
///
/// [`StorageError::Corrupt`] if the file is not a pymfp database or a row is invalid (the
/// message names table and column), [`StorageError::Decrypt`] for a wrong key or a damaged
/// cell, [`StorageError::Backend`] for I/O errors.
pub fn read_database(path: impl AsRef<Path>, encryption: PymfpEncryption<'_>) -> Result<PymfpExport, StorageError> {
    let path: PathBuf = path.as_ref().to_path_buf();
    match schema::inspect_file(&path)? {
        FileState::Sqlite => {}
        FileState::Missing | FileState::Empty => {
            return Err(StorageError::Backend(format!("{}: no pymfp database", path.display())));
        }
    }
    let key: Option<Zeroizing<Vec<u8>>> = match encryption {
        PymfpEncryption::Key([]) => {
            return Err(StorageError::MasterKey(
                "empty pymfp master key (use Plaintext if the cells are not encrypted)".into(),
            ));
        }
        PymfpEncryption::Key(k) => Some(Zeroizing::new(k.to_vec())),
        PymfpEncryption::Plaintext => None,
    };
    block_on_thread(&path.clone(), async move {
        let mut conn = schema::connect_read_only(&path).await?;
        let result = read_on(&mut conn, key.as_ref().map(|k| k.as_slice())).await;
        let _ = conn.close().await;
        result
    })
}

async fn table_set(conn: &mut SqliteConnection) -> Result<Vec<String>, StorageError> {
    let rows = sqlx::query("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error("list tables", &e))?;
    rows.iter().map(|r| get::<String>(r, "sqlite_schema", "name")).collect()
}

#[allow(clippy::too_many_lines)]
async fn read_on(conn: &mut SqliteConnection, key: Option<&[u8]>) -> Result<PymfpExport, StorageError> {
    schema::check_schema_text(conn).await?;
    schema::quick_check(conn).await?;
    let tables = table_set(conn).await?;
    if tables.iter().any(|t| t == "mfp_schema") {
        return Err(StorageError::Corrupt("this is an mfp-storage database, not a pymfp one".into()));
    }
    for t in PYMFP_TABLES {
        if !tables.iter().any(|x| x == t) {
            return Err(StorageError::Corrupt(format!("not a pymfp database: table {t} is missing")));
        }
    }
    let mut tx = conn.begin().await.map_err(|e| sql_error("begin read", &e))?;
    let mut warnings = Vec::new();

    // runtime_meta: exactly one row.
    let rows =
        sqlx::query("SELECT runtime_id, deployment_id, instance_id, agent_counter, schema_version FROM runtime_meta")
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| sql_error("read runtime_meta", &e))?;
    let row = match rows.as_slice() {
        [row] => row,
        [] => return Err(StorageError::Corrupt("runtime_meta: no runtime stored (nothing to import)".into())),
        _ => return Err(corrupt("runtime_meta", "runtime_id", "more than one runtime stored; ambiguous")),
    };
    let t = "runtime_meta";
    let runtime_id = RuntimeId::from_bytes(get_fixed(row, t, "runtime_id")?);
    let deployment_id: Vec<u8> = get(row, t, "deployment_id")?;
    let instance_id: Vec<u8> = get(row, t, "instance_id")?;
    let agent_counter = get_u64(row, t, "agent_counter")?;
    let schema_version: i64 = get(row, t, "schema_version")?;
    if !(1..=2).contains(&schema_version) {
        return Err(corrupt(t, "schema_version", "unsupported pymfp schema version"));
    }
    if RuntimeId::derive(&deployment_id, &instance_id) != runtime_id {
        warnings.push("runtime_id is not SHA256(deployment_id ‖ instance_id) (random identity in pymfp)".into());
    }
    let skey = key.map(|k| storage_key(k, runtime_id.as_bytes()));
    let state_from = |table: &'static str, column: &'static str, row_id: &[u8], stored: &[u8]| {
        let plain: Zeroizing<Vec<u8>> = match &skey {
            Some(sk) => {
                if stored.len() != ENCRYPTED_STATE_LEN {
                    return Err(corrupt(
                        table,
                        column,
                        &format!("expected an encrypted state of {ENCRYPTED_STATE_LEN} bytes, found {}", stored.len()),
                    ));
                }
                decrypt_cell(sk, table, column, row_id, stored)?
            }
            None => Zeroizing::new(stored.to_vec()),
        };
        State::from_slice(&plain).map_err(|_| corrupt(table, column, "not a 32-byte state"))
    };

    // agents
    let rows = sqlx::query("SELECT agent_id, state, quarantine_reason FROM agents ORDER BY agent_id")
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| sql_error("read agents", &e))?;
    let mut agents = Vec::new();
    let mut live: BTreeMap<AgentId, AgentState> = BTreeMap::new();
    for row in &rows {
        let id = AgentId::from_bytes(get_fixed(row, "agents", "agent_id")?);
        let state_s: String = get(row, "agents", "state")?;
        let state = parse_agent_state(&state_s, "agents", "state")?;
        let reason: Option<String> = get(row, "agents", "quarantine_reason")?;
        if state != AgentState::Terminated {
            live.insert(id, state);
            agents.push(AgentRow { id, name: None, state, quarantine_reason: reason.unwrap_or_default() });
        }
    }

    // channels (not closed)
    let rows = sqlx::query(
        "SELECT channel_id, agent_a, agent_b, local_state, step, depth, status, validation_failure_count \
         FROM channels WHERE status <> 'closed' ORDER BY channel_id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| sql_error("read channels", &e))?;
    let mut channels = Vec::new();
    for row in &rows {
        let t = "channels";
        let id = ChannelId::from_bytes(get_fixed(row, t, "channel_id")?);
        let agent_a = AgentId::from_bytes(get_fixed(row, t, "agent_a")?);
        let agent_b = AgentId::from_bytes(get_fixed(row, t, "agent_b")?);
        for (col, a) in [("agent_a", &agent_a), ("agent_b", &agent_b)] {
            if !live.contains_key(a) {
                return Err(corrupt(t, col, &format!("channel {} references an agent that is not live", id.short())));
            }
        }
        let status_s: String = get(row, t, "status")?;
        let status = parse_channel_status(&status_s, t, "status")?;
        let step = get_u64(row, t, "step")?;
        let depth = get_depth(row, t, "depth")?;
        let stored: Vec<u8> = get(row, t, "local_state")?;
        let state = state_from(t, "local_state", id.as_bytes(), &stored)?;
        let validation_failures = get_u32(row, t, "validation_failure_count")?;
        if status == ChannelStatus::Closed {
            continue;
        }
        channels.push(ChannelRow { id, agent_a, agent_b, depth, status, step, state, validation_failures });
    }

    // Sg: recomputed (what pymfp's recovery uses), compared with the cache.
    let mut tree = MerkleSg::from_states(channels.iter().map(|c| (c.id, &c.state)))
        .map_err(|e| StorageError::Corrupt(format!("channels: cannot compute Sg: {e}")))?;
    let sg = tree.root();
    let rows = sqlx::query("SELECT sg_value FROM global_state_cache WHERE runtime_id = ?")
        .bind(&runtime_id.as_bytes()[..])
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| sql_error("read global_state_cache", &e))?;
    let cached_sg = match rows.as_slice() {
        [] => None,
        [row] => {
            let v: Vec<u8> = get(row, "global_state_cache", "sg_value")?;
            Some(State::from_slice(&v).map_err(|_| corrupt("global_state_cache", "sg_value", "not 32 bytes"))?)
        }
        _ => return Err(corrupt("global_state_cache", "runtime_id", "more than one row")),
    };
    if cached_sg != sg {
        warnings
            .push("cached Sg differs from the Sg recomputed from the channel states; using the recomputed one".into());
    }

    // bilateral channels
    let rows = sqlx::query(
        "SELECT bilateral_id, runtime_id_local, runtime_id_peer, ratchet_state, shared_prng_seed, step, status \
         FROM bilateral_channels ORDER BY bilateral_id",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| sql_error("read bilateral_channels", &e))?;
    let mut bilateral = Vec::new();
    for row in &rows {
        let t = "bilateral_channels";
        let id = BilateralId::from_bytes(get_fixed(row, t, "bilateral_id")?);
        let local = RuntimeId::from_bytes(get_fixed(row, t, "runtime_id_local")?);
        let peer = RuntimeId::from_bytes(get_fixed(row, t, "runtime_id_peer")?);
        let r: Vec<u8> = get(row, t, "ratchet_state")?;
        let p: Vec<u8> = get(row, t, "shared_prng_seed")?;
        let ratchet = state_from(t, "ratchet_state", id.as_bytes(), &r)?;
        let prng_seed = state_from(t, "shared_prng_seed", id.as_bytes(), &p)?;
        let step = get_u64(row, t, "step")?;
        let status_s: String = get(row, t, "status")?;
        let status = BilateralStatus::parse(&status_s).ok_or_else(|| corrupt(t, "status", "unknown status"))?;
        if BilateralId::derive(&local, &peer) != id {
            warnings.push(format!("bilateral channel {}: id is not derived from its runtime ids", id.short()));
        }
        bilateral.push(BilateralRecord { id, local, peer, state: BilateralState { ratchet, prng_seed, step }, status });
    }
    let _ = tx.rollback().await;

    Ok(PymfpExport {
        snapshot: Snapshot {
            meta: Some(MetaRow { identity: runtime_id, deployment_id, instance_id, agent_counter }),
            agents,
            channels,
            sg,
            deliveries: Vec::new(),
            remote_channels: Vec::new(),
            outbound: Vec::new(),
            peers: Vec::new(),
        },
        bilateral,
        schema_version,
        cached_sg,
        warnings,
    })
}

/// What [`import`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The imported runtime's identity.
    pub runtime_id: RuntimeId,
    /// Agents imported.
    pub agents: usize,
    /// Channels imported.
    pub channels: usize,
    /// Bilateral channels imported.
    pub bilateral: usize,
    /// Warnings from reading the pymfp database.
    pub warnings: Vec<String>,
}

/// Reads the pymfp database at `pymfp_path` and writes its state, in one transaction, into
/// the mfp-storage database of `target` (created if missing; it must not hold a runtime yet).
///
/// # Errors
///
/// As [`read_database`] and [`SqliteStorage::open`]; [`StorageError::Backend`] if the target
/// already holds state.
pub fn import(
    pymfp_path: impl AsRef<Path>,
    encryption: PymfpEncryption<'_>,
    target: StorageConfig,
) -> Result<ImportReport, StorageError> {
    let export = read_database(pymfp_path, encryption)?;
    let storage = SqliteStorage::open(target)?;
    if storage.load()?.is_some() || !storage.load_federation()?.bilateral.is_empty() {
        return Err(StorageError::Backend("the target database already holds a runtime; refusing to import".into()));
    }
    let snapshot = export.snapshot;
    let mut ops: Vec<WriteOp> = Vec::new();
    let runtime_id = snapshot.meta.as_ref().map(|m| m.identity).unwrap_or(RuntimeId::from_bytes([0; 32]));
    if let Some(meta) = snapshot.meta {
        ops.push(StorageOp::Meta(meta).into());
    }
    let report_agents = snapshot.agents.len();
    let report_channels = snapshot.channels.len();
    ops.extend(snapshot.agents.into_iter().map(|a| WriteOp::Runtime(StorageOp::PutAgent(a))));
    ops.extend(snapshot.channels.into_iter().map(|c| WriteOp::Runtime(StorageOp::PutChannel(c))));
    ops.push(StorageOp::Sg(snapshot.sg).into());
    let report_bilateral = export.bilateral.len();
    ops.extend(export.bilateral.into_iter().map(WriteOp::PutBilateral));
    storage.apply_ops(ops).wait()?;
    storage.close()?;
    Ok(ImportReport {
        runtime_id,
        agents: report_agents,
        channels: report_channels,
        bilateral: report_bilateral,
        warnings: export.warnings,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn h(v: &serde_json::Value, k: &str) -> Vec<u8> {
        hex::decode(v[k].as_str().unwrap_or_else(|| panic!("field {k}"))).unwrap()
    }

    /// Checks every field of the `storage_crypto` section of pymfp's vectors.
    #[test]
    fn storage_crypto_vectors() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/pymfp-1.0.0.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let all: serde_json::Value = serde_json::from_str(&text).unwrap();
        let v = &all["storage_crypto"];
        let master = h(v, "master_key");
        let runtime_id = h(v, "runtime_id");
        let sk = storage_key(&master, &runtime_id);
        assert_eq!(sk.expose().to_vec(), h(v, "storage_key"));
        let cells = v["cells"].as_array().unwrap();
        assert!(!cells.is_empty());
        for cell in cells {
            let table = cell["table"].as_str().unwrap();
            let column = cell["column"].as_str().unwrap();
            let row_id = h(cell, "row_id");
            assert_eq!(
                cell_key_message(table, column, &row_id).unwrap(),
                h(cell, "cell_key_message"),
                "{table}.{column}"
            );
            assert_eq!(cell_key(&sk, table, column, &row_id).unwrap().expose().to_vec(), h(cell, "cell_key"));
            assert_eq!(aad(&row_id, column).unwrap(), h(cell, "aad"));
            let nonce: [u8; 12] = h(cell, "nonce_injected").try_into().unwrap();
            let plaintext = h(cell, "plaintext");
            let stored = h(cell, "stored_blob");
            assert_eq!(encrypt_cell_with_nonce(&sk, table, column, &row_id, &nonce, &plaintext).unwrap(), stored);
            assert_eq!(decrypt_cell(&sk, table, column, &row_id, &stored).unwrap().as_slice(), plaintext.as_slice());
            // Any other row, column or key fails.
            let mut other_row = row_id.clone();
            other_row[0] ^= 1;
            assert_eq!(decrypt_cell(&sk, table, column, &other_row, &stored).unwrap_err(), StorageError::Decrypt);
            assert_eq!(decrypt_cell(&sk, table, "x", &row_id, &stored).unwrap_err(), StorageError::Decrypt);
            let wrong = storage_key(b"wrong", &runtime_id);
            assert_eq!(decrypt_cell(&wrong, table, column, &row_id, &stored).unwrap_err(), StorageError::Decrypt);
            // A random nonce round-trips and differs.
            let fresh = encrypt_cell(&sk, table, column, &row_id, &plaintext).unwrap();
            assert_ne!(fresh, stored);
            assert_eq!(decrypt_cell(&sk, table, column, &row_id, &fresh).unwrap().as_slice(), plaintext.as_slice());
        }
    }
}
