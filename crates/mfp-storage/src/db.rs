//! SQL: applying operations, reading rows back with validation, re-encrypting cells.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use mfp_core::bilateral::BilateralState;
use mfp_core::{AgentId, BilateralId, ChannelId, MAX_FRAME_DEPTH, MIN_FRAME_DEPTH, MessageId, RuntimeId, State};
use mfp_runtime::storage::{
    AgentRow, ChannelRow, DeliveryRow, MetaRow, OutboundRow, PeerRow, RemoteChannelRow, Snapshot, StorageError,
    StorageOp,
};
use mfp_runtime::{AgentState, ChannelStatus};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Decode, Row, Sqlite, Type};
use zeroize::Zeroizing;

use crate::cell::{Cell, CellCipher};
use crate::records::{BilateralRecord, BilateralStatus, FederationSnapshot, OutboundRecord, WriteOp};

/// Row id of the single Sg cell.
pub(crate) const SG_ROW_ID: &[u8] = b"sg";
/// Row id of the key check cell.
pub(crate) const KEY_CHECK_ROW_ID: &[u8] = b"key-check";
/// Plaintext of the key check cell.
pub(crate) const KEY_CHECK_PLAINTEXT: &[u8] = b"mfp-storage key check v1";
/// Largest wire message accepted back from `pending_outbound`.
pub(crate) const MAX_WIRE_LEN: usize = 64 << 20;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The primary SQLite result code of a database error.
pub(crate) fn sqlite_code(e: &sqlx::Error) -> Option<i64> {
    match e {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i64>().ok()).map(|c| c & 0xff),
        _ => None,
    }
}

/// Maps an sqlx error to a storage error: damaged files become `Corrupt`, the rest `Backend`.
///
/// Damage is: SQLite's `SQLITE_CORRUPT` and `SQLITE_NOTADB`; a table or column of our fixed
/// statements that does not exist, or a malformed schema (`SQLITE_ERROR` with "no such" or
/// "malformed": our statements are constants, so only a damaged schema produces them); a
/// crashed SQLite worker thread (sqlx panics on some damaged schemas). The same damage is
/// then reported the same way whichever statement meets it first.
pub(crate) fn sql_error(context: &str, e: &sqlx::Error) -> StorageError {
    if matches!(e, sqlx::Error::WorkerCrashed) {
        return StorageError::Corrupt(format!(
            "{context}: SQLite's worker thread crashed (the file is damaged; run `mfp-storage check`)"
        ));
    }
    match sqlite_code(e) {
        // SQLITE_CORRUPT, SQLITE_NOTADB
        Some(11 | 26) => StorageError::Corrupt(format!("{context}: {e}")),
        // SQLITE_ERROR
        Some(1) if is_schema_damage(e) => StorageError::Corrupt(format!("{context}: {e} (the schema is damaged)")),
        _ => StorageError::Backend(format!("{context}: {e}")),
    }
}

fn is_schema_damage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let m = db.message();
            m.contains("no such table") || m.contains("no such column") || m.contains("malformed")
        }
        _ => false,
    }
}

/// Whether the error is a constraint violation (a problem of one batch, not of the backend).
pub(crate) fn is_constraint(e: &sqlx::Error) -> bool {
    sqlite_code(e) == Some(19)
}

/// The primary SQLite result code of a rusqlite error (the writer's fast path).
pub(crate) fn rusqlite_code(e: &rusqlite::Error) -> Option<i32> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code & 0xff),
        _ => None,
    }
}

/// [`sql_error`] for the rusqlite connection of the writer's fast path: the same
/// classification (damage is `Corrupt`, the rest `Backend`) and the same message shape,
/// `context: (code: N) SQLite's message`. SQLite's messages name tables, columns and
/// constraints, never a bound value.
pub(crate) fn rusqlite_error(context: &str, e: &rusqlite::Error) -> StorageError {
    let shown = match e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            format!(
                "{context}: (code: {}) {}",
                f.extended_code,
                msg.as_deref().map_or_else(|| f.to_string(), str::to_owned)
            )
        }
        other => format!("{context}: {other}"),
    };
    let message = match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m.as_str(),
        _ => "",
    };
    match rusqlite_code(e) {
        // SQLITE_CORRUPT, SQLITE_NOTADB
        Some(11 | 26) => StorageError::Corrupt(shown),
        // SQLITE_ERROR
        Some(1)
            if message.contains("no such table")
                || message.contains("no such column")
                || message.contains("malformed") =>
        {
            StorageError::Corrupt(format!("{shown} (the schema is damaged)"))
        }
        _ => StorageError::Backend(shown),
    }
}

/// [`is_constraint`] for the fast path's rusqlite connection.
pub(crate) fn is_rusqlite_constraint(e: &rusqlite::Error) -> bool {
    rusqlite_code(e) == Some(19)
}

/// An error the fast path treats as a constraint violation (its group goes to the slow
/// path): a statement that had to change a row changed none.
pub(crate) fn constraint_error() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(19), Some("a condition of the batch does not hold".into()))
}

/// `table.column: what`.
pub(crate) fn corrupt(table: &str, column: &str, what: &str) -> StorageError {
    StorageError::Corrupt(format!("{table}.{column}: {what}"))
}

/// Why a batch failed.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// Only this batch is affected (constraint violation, value out of range).
    Batch(StorageError),
    /// The transaction is affected (I/O, locks, a broken connection).
    Transaction(StorageError),
}

fn exec_error(what: &str, e: &sqlx::Error) -> ApplyError {
    if is_constraint(e) {
        ApplyError::Batch(StorageError::Backend(format!("{what}: {e}")))
    } else {
        ApplyError::Transaction(sql_error(what, e))
    }
}

// ---------------------------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------------------------

pub(crate) fn channel_cell<'a>(id: &'a [u8], step_be: &'a [u8; 8]) -> Cell<'a> {
    Cell::new("channels", "local_state", id, step_be)
}

pub(crate) fn sg_cell() -> Cell<'static> {
    Cell::new("sg_cache", "sg_value", SG_ROW_ID, &[])
}

pub(crate) fn key_check_cell() -> Cell<'static> {
    Cell::new("mfp_keys", "key_check", KEY_CHECK_ROW_ID, &[])
}

pub(crate) fn ratchet_cell<'a>(id: &'a [u8], step_be: &'a [u8; 8]) -> Cell<'a> {
    Cell::new("bilateral_channels", "ratchet_state", id, step_be)
}

pub(crate) fn prng_cell<'a>(id: &'a [u8], step_be: &'a [u8; 8]) -> Cell<'a> {
    Cell::new("bilateral_channels", "shared_prng_seed", id, step_be)
}

/// Context of an outbound cell: `bilateral_id ‖ channel_id ‖ u64be(step)`.
pub(crate) fn outbound_context(bilateral: &[u8], channel: &[u8], step: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(bilateral.len() + channel.len() + 8);
    ctx.extend_from_slice(bilateral);
    ctx.extend_from_slice(channel);
    ctx.extend_from_slice(&step.to_be_bytes());
    ctx
}

pub(crate) fn outbound_cell<'a>(id_be: &'a [u8; 8], context: &'a [u8]) -> Cell<'a> {
    Cell::new("pending_outbound", "wire", id_be, context)
}

/// Row id of an inbox cell: `channel_id ‖ u64be(step)` (unique, and known before the
/// insert assigns `inbox.id`).
pub(crate) fn inbox_row_id(channel: &[u8], step: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(channel.len() + 8);
    id.extend_from_slice(channel);
    id.extend_from_slice(&step.to_be_bytes());
    id
}

/// Context of an inbox cell: `recipient ‖ sender ‖ message_id ‖ correlation_id`.
pub(crate) fn inbox_context(recipient: &[u8], sender: &[u8], message_id: &[u8], correlation: &[u8]) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(recipient.len() + sender.len() + message_id.len() + correlation.len());
    for part in [recipient, sender, message_id, correlation] {
        ctx.extend_from_slice(part);
    }
    ctx
}

pub(crate) fn inbox_cell<'a>(row_id: &'a [u8], context: &'a [u8]) -> Cell<'a> {
    Cell::new("inbox", "payload", row_id, context)
}

/// The table of cross-runtime channels.
pub(crate) const REMOTE_CHANNELS: &str = "remote_channels";
/// The table of the outbound log of cross-runtime channels.
pub(crate) const REMOTE_OUTBOUND: &str = "remote_outbound";

/// One of the two bilateral chains of a cross-runtime channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    /// What this runtime sends.
    Tx,
    /// What this runtime receives.
    Rx,
}

impl Chain {
    /// The columns of the chain: step, ratchet state, PRNG seed.
    pub(crate) const fn columns(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Chain::Tx => ("tx_step", "tx_ratchet", "tx_prng_seed"),
            Chain::Rx => ("rx_step", "rx_ratchet", "rx_prng_seed"),
        }
    }
}

/// A secret of a cross-runtime channel's chain: row id the channel id, context the chain's
/// step (so a cell moved to another channel, chain or step does not open).
pub(crate) fn remote_cell<'a>(column: &'static str, id: &'a [u8], step_be: &'a [u8; 8]) -> Cell<'a> {
    Cell::new("remote_channels", column, id, step_be)
}

/// The pending rotation secret of a cross-runtime channel's inbound chain: row id the
/// channel id.
pub(crate) fn rotation_cell(id: &[u8]) -> Cell<'_> {
    Cell::new("remote_channels", "rx_rotation", id, b"pending rotation")
}

/// A message of the outbound log: row id `channel_id ‖ u64be(step)`, context the peer runtime.
pub(crate) fn remote_outbound_cell<'a>(row_id: &'a [u8], peer: &'a [u8]) -> Cell<'a> {
    Cell::new("remote_outbound", "wire", row_id, peer)
}

/// Most outbound-log rows a load reads (the transport bounds what is in flight far below
/// this); more means a damaged or edited store, refused before any message is read.
pub(crate) const MAX_OUTBOUND_ROWS: i64 = 1 << 20;

/// Largest payload the inbox stores (the same bound as a federation wire message).
pub(crate) const MAX_INBOX_PAYLOAD: usize = MAX_WIRE_LEN;

/// Most inbox rows a load reads. The runtime keeps far fewer (its mailboxes bound them, see
/// the runtime's `redelivery_limit`); more means a damaged or edited store, refused before
/// any payload is read.
pub(crate) const MAX_INBOX_ROWS: i64 = 1 << 20;

fn open_state(cipher: &CellCipher, cell: Cell<'_>, blob: &[u8]) -> Result<State, StorageError> {
    let plain = cipher.open(cell, blob)?;
    State::from_slice(&plain).map_err(|_| corrupt(cell.table, cell.column, "decrypted value is not 32 bytes"))
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------
//
// Every operation becomes a list of statements with `?` placeholders and typed arguments. They
// run either on the writer's rusqlite connection, on the writer thread itself (the fast path:
// each text prepared once and cached, see `Writer::try_fast`), or one by one through sqlx
// (the slow path, one round trip to SQLite's worker thread each). No input ever becomes SQL
// syntax: the SQL texts are the constants below.

/// An argument of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val {
    Int(i64),
    Blob(Vec<u8>),
    Text(String),
    Null,
}

/// Binds without copying (the fast path).
impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Int(i) => ValueRef::Integer(*i),
            Val::Blob(b) => ValueRef::Blob(b),
            Val::Text(t) => ValueRef::Text(t.as_bytes()),
            Val::Null => ValueRef::Null,
        }))
    }
}

/// One statement of a batch.
#[derive(Debug)]
pub(crate) struct Stmt {
    /// What it does (for error messages).
    pub(crate) what: &'static str,
    /// SQL with one `?` per argument and no other `?`.
    pub(crate) sql: &'static str,
    /// Arguments, in placeholder order.
    pub(crate) args: Vec<Val>,
    /// A condition of its batch: it must change a row, else the batch is refused
    /// ([`StorageError::Conflict`]) and nothing of it is written.
    pub(crate) must_change: Option<String>,
}

impl Stmt {
    fn new(what: &'static str, sql: &'static str, args: Vec<Val>) -> Self {
        Self { what, sql, args, must_change: None }
    }

    /// The batch conflicts (`why`) when this statement changes no row.
    fn conditional(mut self, why: String) -> Self {
        self.must_change = Some(why);
        self
    }

    /// The number of `?` placeholders of the SQL text (each statement has exactly its
    /// arguments' count).
    #[cfg(test)]
    fn placeholders(&self) -> usize {
        self.sql.matches('?').count()
    }

    /// Runs the statement with bound parameters.
    pub(crate) async fn execute(self, conn: &mut SqliteConnection) -> Result<(), ApplyError> {
        let what = self.what;
        let mut q = sqlx::query(self.sql);
        for a in self.args {
            q = match a {
                Val::Int(i) => q.bind(i),
                Val::Blob(b) => q.bind(b),
                Val::Text(t) => q.bind(t),
                Val::Null => q.bind(Option::<Vec<u8>>::None),
            };
        }
        let done = q.execute(&mut *conn).await.map_err(|e| exec_error(what, &e))?;
        match self.must_change {
            Some(why) if done.rows_affected() == 0 => Err(ApplyError::Batch(StorageError::Conflict(why))),
            _ => Ok(()),
        }
    }
}

fn blob(b: &[u8]) -> Val {
    Val::Blob(b.to_vec())
}

fn seal(cipher: &CellCipher, cell: Cell<'_>, plaintext: &[u8]) -> Result<Val, StorageError> {
    cipher.seal(cell, plaintext).map(Val::Blob)
}

fn range(v: u64, table: &str, column: &str) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| corrupt(table, column, "value exceeds the storable range (2^63 - 1)"))
}

const CLOSE_CHANNEL: &str =
    "UPDATE channels SET status = 'closed', local_state = NULL, updated_at = ? WHERE channel_id = ?";
const CLOSE_REMOTE_CHANNEL: &str = "UPDATE remote_channels SET status = 'closed', tx_ratchet = NULL, tx_prng_seed = \
     NULL, rx_ratchet = NULL, rx_prng_seed = NULL, rx_rotation = NULL, updated_at = ? WHERE channel_id = ?";
const DROP_OUTBOUND_LOG: &str = "DELETE FROM remote_outbound WHERE channel_id = ?";

/// The step and the two sealed secrets of a chain (`NULL`s when `wipe`: a closed channel's).
fn chain_values(
    cipher: &CellCipher,
    id: &ChannelId,
    chain: Chain,
    state: &BilateralState,
    wipe: bool,
) -> Result<[Val; 3], StorageError> {
    let (step_col, ratchet_col, seed_col) = chain.columns();
    let step = Val::Int(range(state.step, REMOTE_CHANNELS, step_col)?);
    if wipe {
        return Ok([step, Val::Null, Val::Null]);
    }
    let step_be = state.step.to_be_bytes();
    let ratchet = seal(cipher, remote_cell(ratchet_col, id.as_bytes(), &step_be), state.ratchet.expose())?;
    let seed = seal(cipher, remote_cell(seed_col, id.as_bytes(), &step_be), state.prng_seed.expose())?;
    Ok([step, ratchet, seed])
}

/// The statements closing channel `id`, local or cross-runtime: the state or both chains
/// wiped, the outbound log dropped.
fn close_statements(id: &ChannelId, now: i64, out: &mut Vec<Stmt>) {
    out.push(Stmt::new("close channel", CLOSE_CHANNEL, vec![Val::Int(now), blob(id.as_bytes())]));
    out.push(Stmt::new("close cross-runtime channel", CLOSE_REMOTE_CHANNEL, vec![Val::Int(now), blob(id.as_bytes())]));
    out.push(Stmt::new("drop outbound log", DROP_OUTBOUND_LOG, vec![blob(id.as_bytes())]));
}

/// The statements of one operation. Errors here (values out of range, encryption) concern
/// this batch only.
#[allow(clippy::too_many_lines)]
pub(crate) fn statements(cipher: &CellCipher, op: &WriteOp, now: i64, out: &mut Vec<Stmt>) -> Result<(), StorageError> {
    match op {
        WriteOp::Runtime(StorageOp::Meta(m)) => out.push(Stmt::new(
            "store runtime meta",
            "INSERT INTO runtime_meta (id, identity, deployment_id, instance_id, agent_counter, created_at, updated_at) \
             VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET identity = excluded.identity, deployment_id \
             = excluded.deployment_id, instance_id = excluded.instance_id, agent_counter = excluded.agent_counter, \
             updated_at = excluded.updated_at",
            vec![
                blob(m.identity.as_bytes()),
                blob(&m.deployment_id),
                blob(&m.instance_id),
                Val::Int(range(m.agent_counter, "runtime_meta", "agent_counter")?),
                Val::Int(now),
                Val::Int(now),
            ],
        )),
        WriteOp::Runtime(StorageOp::PutAgent(a)) => out.push(Stmt::new(
            "store agent",
            "INSERT INTO agents (agent_id, name, state, quarantine_reason, created_at, updated_at) VALUES (?, ?, ?, ?, \
             ?, ?) ON CONFLICT (agent_id) DO UPDATE SET name = excluded.name, state = excluded.state, \
             quarantine_reason = excluded.quarantine_reason, updated_at = excluded.updated_at",
            vec![
                blob(a.id.as_bytes()),
                a.name.clone().map_or(Val::Null, Val::Text),
                Val::Text(a.state.as_str().into()),
                Val::Text(a.quarantine_reason.clone()),
                Val::Int(now),
                Val::Int(now),
            ],
        )),
        WriteOp::Runtime(StorageOp::DeleteAgent(id)) => {
            out.push(Stmt::new(
                "delete closed channels of agent",
                "DELETE FROM channels WHERE status = 'closed' AND (agent_a = ? OR agent_b = ?)",
                vec![blob(id.as_bytes()), blob(id.as_bytes())],
            ));
            out.push(Stmt::new(
                "delete closed cross-runtime channels of agent",
                "DELETE FROM remote_channels WHERE status = 'closed' AND local_agent = ?",
                vec![blob(id.as_bytes())],
            ));
            out.push(Stmt::new("delete agent", "DELETE FROM agents WHERE agent_id = ?", vec![blob(id.as_bytes())]));
        }
        WriteOp::Runtime(StorageOp::PutChannel(c)) => {
            let step_be = c.step.to_be_bytes();
            let state = if c.status == ChannelStatus::Closed {
                Val::Null
            } else {
                seal(cipher, channel_cell(c.id.as_bytes(), &step_be), c.state.expose())?
            };
            let depth = i64::try_from(c.depth).map_err(|_| corrupt("channels", "depth", "value out of range"))?;
            out.push(Stmt::new(
                "store channel",
                "INSERT INTO channels (channel_id, agent_a, agent_b, depth, status, step, local_state, \
                 validation_failure_count, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT \
                 (channel_id) DO UPDATE SET agent_a = excluded.agent_a, agent_b = excluded.agent_b, depth = \
                 excluded.depth, status = excluded.status, step = excluded.step, local_state = excluded.local_state, \
                 validation_failure_count = excluded.validation_failure_count, updated_at = excluded.updated_at",
                vec![
                    blob(c.id.as_bytes()),
                    blob(c.agent_a.as_bytes()),
                    blob(c.agent_b.as_bytes()),
                    Val::Int(depth),
                    Val::Text(c.status.as_str().into()),
                    Val::Int(range(c.step, "channels", "step")?),
                    state,
                    Val::Int(i64::from(c.validation_failures)),
                    Val::Int(now),
                    Val::Int(now),
                ],
            ));
        }
        WriteOp::Runtime(StorageOp::AdvanceChannel { id, state, step }) => {
            let step_i = range(*step, "channels", "step")?;
            let sealed = seal(cipher, channel_cell(id.as_bytes(), &step.to_be_bytes()), state.expose())?;
            out.push(Stmt::new(
                "advance channel",
                "UPDATE channels SET local_state = ?, step = ?, validation_failure_count = 0, updated_at = ? WHERE \
                 channel_id = ? AND status <> 'closed'",
                vec![sealed, Val::Int(step_i), Val::Int(now), blob(id.as_bytes())],
            ));
        }
        WriteOp::Runtime(StorageOp::ChannelStatus { id, status: ChannelStatus::Closed })
        | WriteOp::Runtime(StorageOp::CloseChannel(id)) => close_statements(id, now, out),
        WriteOp::Runtime(StorageOp::ChannelStatus { id, status }) => {
            let args = vec![Val::Text(status.as_str().into()), Val::Int(now), blob(id.as_bytes())];
            out.push(Stmt::new(
                "update channel status",
                "UPDATE channels SET status = ?, updated_at = ? WHERE channel_id = ? AND status <> 'closed'",
                args.clone(),
            ));
            out.push(Stmt::new(
                "update cross-runtime channel status",
                "UPDATE remote_channels SET status = ?, updated_at = ? WHERE channel_id = ? AND status <> 'closed'",
                args,
            ));
        }
        WriteOp::Runtime(StorageOp::ChannelFailures { id, count }) => {
            let args = vec![Val::Int(i64::from(*count)), Val::Int(now), blob(id.as_bytes())];
            out.push(Stmt::new(
                "update channel failure count",
                "UPDATE channels SET validation_failure_count = ?, updated_at = ? WHERE channel_id = ? AND status <> \
                 'closed'",
                args.clone(),
            ));
            out.push(Stmt::new(
                "update cross-runtime channel failure count",
                "UPDATE remote_channels SET validation_failure_count = ?, updated_at = ? WHERE channel_id = ? AND \
                 status <> 'closed'",
                args,
            ));
        }
        WriteOp::Runtime(StorageOp::Sg(Some(sg))) => out.push(Stmt::new(
            "store sg",
            "INSERT INTO sg_cache (id, sg_value, updated_at) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET sg_value \
             = excluded.sg_value, updated_at = excluded.updated_at",
            vec![seal(cipher, sg_cell(), sg.expose())?, Val::Int(now)],
        )),
        WriteOp::Runtime(StorageOp::Sg(None)) => out.push(Stmt::new("delete sg", "DELETE FROM sg_cache", vec![])),
        WriteOp::Runtime(StorageOp::PutDelivery(d)) => {
            if d.payload.len() > MAX_INBOX_PAYLOAD {
                return Err(corrupt("inbox", "payload", "payload too large to store"));
            }
            let row_id = inbox_row_id(d.channel.as_bytes(), d.step);
            let ctx =
                inbox_context(d.recipient.as_bytes(), d.sender.as_bytes(), d.message_id.as_bytes(), &d.correlation_id);
            out.push(Stmt::new(
                "store delivered message",
                "INSERT INTO inbox (channel_id, recipient, step, message_id, correlation_id, sender, payload, \
                 created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel_id, step, message_id) DO UPDATE SET \
                 recipient = excluded.recipient, correlation_id = excluded.correlation_id, sender = excluded.sender, \
                 payload = excluded.payload",
                vec![
                    blob(d.channel.as_bytes()),
                    blob(d.recipient.as_bytes()),
                    Val::Int(range(d.step, "inbox", "step")?),
                    blob(d.message_id.as_bytes()),
                    blob(&d.correlation_id),
                    blob(d.sender.as_bytes()),
                    seal(cipher, inbox_cell(&row_id, &ctx), &d.payload)?,
                    Val::Int(now),
                ],
            ));
        }
        // A reset cross-runtime channel may hold two messages of one step: the one stored
        // first is the one handled first.
        WriteOp::Runtime(StorageOp::AckDelivery { channel, step }) => out.push(Stmt::new(
            "remove handled message",
            "DELETE FROM inbox WHERE id = (SELECT min(id) FROM inbox WHERE channel_id = ? AND step = ?)",
            vec![blob(channel.as_bytes()), Val::Int(range(*step, "inbox", "step")?)],
        )),
        WriteOp::Runtime(StorageOp::RemoveDelivery { channel, step, message_id }) => out.push(Stmt::new(
            "remove a message taken back",
            "DELETE FROM inbox WHERE channel_id = ? AND step = ? AND message_id = ?",
            vec![blob(channel.as_bytes()), Val::Int(range(*step, "inbox", "step")?), blob(message_id.as_bytes())],
        )),
        WriteOp::Runtime(StorageOp::RemoteReset { id, reset }) => out.push(Stmt::new(
            "store the reset id of a cross-runtime channel",
            "UPDATE remote_channels SET reset_id = ?, updated_at = ? WHERE channel_id = ? AND status <> 'closed'",
            vec![blob(reset), Val::Int(now), blob(id.as_bytes())],
        )),
        WriteOp::Runtime(StorageOp::RemoteUnconfirmed { id, unconfirmed }) => out.push(Stmt::new(
            "store the confirmation of a cross-runtime channel",
            "UPDATE remote_channels SET unconfirmed = ?, updated_at = ? WHERE channel_id = ? AND status <> 'closed'",
            vec![Val::Int(i64::from(*unconfirmed)), Val::Int(now), blob(id.as_bytes())],
        )),
        WriteOp::Runtime(StorageOp::PutRemoteChannel(c)) => put_remote_channel(cipher, c, now, out)?,
        WriteOp::Runtime(StorageOp::AdvanceRemoteTx { id, tx, from: None }) => {
            let [step, ratchet, seed] = chain_values(cipher, id, Chain::Tx, tx, false)?;
            out.push(Stmt::new(
                "advance cross-runtime channel (outbound chain)",
                "UPDATE remote_channels SET tx_step = ?, tx_ratchet = ?, tx_prng_seed = ?, updated_at = ? WHERE \
                 channel_id = ? AND status <> 'closed'",
                vec![step, ratchet, seed, Val::Int(now), blob(id.as_bytes())],
            ));
        }
        WriteOp::Runtime(StorageOp::AdvanceRemoteTx { id, tx, from: Some(from) }) => {
            let [step, ratchet, seed] = chain_values(cipher, id, Chain::Tx, tx, false)?;
            let stored = Val::Int(range(*from, "remote_channels", "tx_step")?);
            out.push(
                Stmt::new(
                    "advance cross-runtime channel (outbound chain, from its step)",
                    "UPDATE remote_channels SET tx_step = ?, tx_ratchet = ?, tx_prng_seed = ?, updated_at = ? WHERE \
                     channel_id = ? AND status <> 'closed' AND tx_step = ?",
                    vec![step, ratchet, seed, Val::Int(now), blob(id.as_bytes()), stored],
                )
                .conditional(format!(
                    "the outbound chain of channel {} is not at step {from} in storage",
                    id.short()
                )),
            );
        }
        WriteOp::Runtime(StorageOp::AdvanceRemoteRx { id, rx, from: None }) => {
            let [step, ratchet, seed] = chain_values(cipher, id, Chain::Rx, rx, false)?;
            out.push(Stmt::new(
                "advance cross-runtime channel (inbound chain)",
                "UPDATE remote_channels SET rx_step = ?, rx_ratchet = ?, rx_prng_seed = ?, validation_failure_count \
                 = 0, updated_at = ? WHERE channel_id = ? AND status <> 'closed'",
                vec![step, ratchet, seed, Val::Int(now), blob(id.as_bytes())],
            ));
        }
        WriteOp::Runtime(StorageOp::AdvanceRemoteRx { id, rx, from: Some(from) }) => {
            let [step, ratchet, seed] = chain_values(cipher, id, Chain::Rx, rx, false)?;
            let stored = Val::Int(range(*from, "remote_channels", "rx_step")?);
            out.push(
                Stmt::new(
                    "advance cross-runtime channel (inbound chain, from its step)",
                    "UPDATE remote_channels SET rx_step = ?, rx_ratchet = ?, rx_prng_seed = ?, \
                     validation_failure_count = 0, updated_at = ? WHERE channel_id = ? AND status <> 'closed' AND \
                     rx_step = ?",
                    vec![step, ratchet, seed, Val::Int(now), blob(id.as_bytes()), stored],
                )
                .conditional(format!(
                    "the inbound chain of channel {} is not at step {from} in storage",
                    id.short()
                )),
            );
        }
        WriteOp::Runtime(StorageOp::RemoteRotation { id, secret }) => {
            let value = match secret {
                Some(ss) => seal(cipher, rotation_cell(id.as_bytes()), ss.expose())?,
                None => Val::Null,
            };
            out.push(Stmt::new(
                "store pending rotation of a cross-runtime channel",
                "UPDATE remote_channels SET rx_rotation = ?, updated_at = ? WHERE channel_id = ? AND status <> 'closed'",
                vec![value, Val::Int(now), blob(id.as_bytes())],
            ));
        }
        WriteOp::Runtime(StorageOp::PutPeer(p)) => out.push(Stmt::new(
            "store peer runtime",
            "INSERT INTO peers (runtime_id, handshake_secs, handshake_nanos, updated_at) VALUES (?, ?, ?, ?) ON \
             CONFLICT (runtime_id) DO UPDATE SET handshake_secs = excluded.handshake_secs, handshake_nanos = \
             excluded.handshake_nanos, updated_at = excluded.updated_at",
            vec![
                blob(p.runtime.as_bytes()),
                Val::Int(range(p.handshake_secs, "peers", "handshake_secs")?),
                Val::Int(i64::from(p.handshake_nanos)),
                Val::Int(now),
            ],
        )),
        WriteOp::Runtime(StorageOp::PutOutbound(o)) => {
            if o.wire.len() > MAX_WIRE_LEN {
                return Err(corrupt(REMOTE_OUTBOUND, "wire", "wire message too large to store"));
            }
            let row_id = inbox_row_id(o.channel.as_bytes(), o.step);
            // A closed channel's log stays empty; a channel that is not stored fails the
            // batch (foreign key).
            out.push(Stmt::new(
                "store outbound-log message",
                "INSERT INTO remote_outbound (channel_id, step, peer_runtime, wire, created_at) SELECT ?, ?, ?, ?, ? \
                 WHERE NOT EXISTS (SELECT 1 FROM remote_channels WHERE channel_id = ? AND status = 'closed') ON \
                 CONFLICT (channel_id, step) DO UPDATE SET peer_runtime = excluded.peer_runtime, wire = excluded.wire",
                vec![
                    blob(o.channel.as_bytes()),
                    Val::Int(range(o.step, REMOTE_OUTBOUND, "step")?),
                    blob(o.peer.as_bytes()),
                    seal(cipher, remote_outbound_cell(&row_id, o.peer.as_bytes()), &o.wire)?,
                    Val::Int(now),
                    blob(o.channel.as_bytes()),
                ],
            ));
        }
        WriteOp::Runtime(StorageOp::AckOutbound { channel, next }) => match i64::try_from(*next) {
            Ok(next) => out.push(Stmt::new(
                "remove acknowledged outbound-log messages",
                "DELETE FROM remote_outbound WHERE channel_id = ? AND step < ?",
                vec![blob(channel.as_bytes()), Val::Int(next)],
            )),
            // Beyond every storable step: the whole log of the channel.
            Err(_) => out.push(Stmt::new(
                "remove acknowledged outbound-log messages",
                DROP_OUTBOUND_LOG,
                vec![blob(channel.as_bytes())],
            )),
        },
        WriteOp::Runtime(StorageOp::TruncateOutbound { channel, from }) => {
            // A step beyond every storable one: nothing is stored from there on.
            if let Ok(from) = i64::try_from(*from) {
                out.push(Stmt::new(
                    "remove outbound-log messages taken back",
                    "DELETE FROM remote_outbound WHERE channel_id = ? AND step >= ?",
                    vec![blob(channel.as_bytes()), Val::Int(from)],
                ));
            }
        }
        WriteOp::Runtime(other) => {
            return Err(StorageError::Backend(format!("unsupported storage operation: {}", op_name(other))));
        }
        WriteOp::PutBilateral(b) => {
            let step_be = b.state.step.to_be_bytes();
            out.push(Stmt::new(
                "store bilateral channel",
                "INSERT INTO bilateral_channels (bilateral_id, runtime_id_local, runtime_id_peer, ratchet_state, \
                 shared_prng_seed, step, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT \
                 (bilateral_id) DO UPDATE SET runtime_id_local = excluded.runtime_id_local, runtime_id_peer = \
                 excluded.runtime_id_peer, ratchet_state = excluded.ratchet_state, shared_prng_seed = \
                 excluded.shared_prng_seed, step = excluded.step, status = excluded.status, updated_at = \
                 excluded.updated_at",
                vec![
                    blob(b.id.as_bytes()),
                    blob(b.local.as_bytes()),
                    blob(b.peer.as_bytes()),
                    seal(cipher, ratchet_cell(b.id.as_bytes(), &step_be), b.state.ratchet.expose())?,
                    seal(cipher, prng_cell(b.id.as_bytes(), &step_be), b.state.prng_seed.expose())?,
                    Val::Int(range(b.state.step, "bilateral_channels", "step")?),
                    Val::Text(b.status.as_str().into()),
                    Val::Int(now),
                    Val::Int(now),
                ],
            ));
        }
        WriteOp::DeleteBilateral(id) => out.push(Stmt::new(
            "delete bilateral channel",
            "DELETE FROM bilateral_channels WHERE bilateral_id = ?",
            vec![blob(id.as_bytes())],
        )),
        WriteOp::PutOutbound(o) => {
            if o.wire.len() > MAX_WIRE_LEN {
                return Err(corrupt("pending_outbound", "wire", "wire message too large"));
            }
            let id = range(o.id, "pending_outbound", "id")?;
            let step = range(o.step, "pending_outbound", "step")?;
            let id_be = o.id.to_be_bytes();
            let ctx = outbound_context(o.bilateral.as_bytes(), o.channel.as_bytes(), o.step);
            out.push(Stmt::new(
                "store outbound message",
                "INSERT INTO pending_outbound (id, bilateral_id, channel_id, step, wire, created_at) VALUES (?, ?, ?, ?, \
                 ?, ?) ON CONFLICT (id) DO UPDATE SET bilateral_id = excluded.bilateral_id, channel_id = \
                 excluded.channel_id, step = excluded.step, wire = excluded.wire",
                vec![
                    Val::Int(id),
                    blob(o.bilateral.as_bytes()),
                    blob(o.channel.as_bytes()),
                    Val::Int(step),
                    seal(cipher, outbound_cell(&id_be, &ctx), &o.wire)?,
                    Val::Int(now),
                ],
            ));
        }
        WriteOp::DeleteOutbound(id) => out.push(Stmt::new(
            "delete outbound message",
            "DELETE FROM pending_outbound WHERE id = ?",
            vec![Val::Int(range(*id, "pending_outbound", "id")?)],
        )),
    }
    Ok(())
}

/// The statement storing a cross-runtime channel (insert or replace; its outbound log is
/// kept). A closed channel is stored with its secrets wiped.
fn put_remote_channel(
    cipher: &CellCipher,
    c: &RemoteChannelRow,
    now: i64,
    out: &mut Vec<Stmt>,
) -> Result<(), StorageError> {
    let wipe = c.status == ChannelStatus::Closed;
    let depth = i64::try_from(c.depth).map_err(|_| corrupt(REMOTE_CHANNELS, "depth", "value out of range"))?;
    let [tx_step, tx_ratchet, tx_seed] = chain_values(cipher, &c.id, Chain::Tx, &c.tx, wipe)?;
    let [rx_step, rx_ratchet, rx_seed] = chain_values(cipher, &c.id, Chain::Rx, &c.rx, wipe)?;
    let rx_rotation = match (&c.rx_rotation, wipe) {
        (Some(ss), false) => seal(cipher, rotation_cell(c.id.as_bytes()), ss.expose())?,
        _ => Val::Null,
    };
    out.push(Stmt::new(
        "store cross-runtime channel",
        "INSERT INTO remote_channels (channel_id, local_agent, peer_runtime, remote_agent, depth, status, tx_step, \
         tx_ratchet, tx_prng_seed, rx_step, rx_ratchet, rx_prng_seed, validation_failure_count, rx_rotation, \
         reset_id, unconfirmed, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (channel_id) DO UPDATE SET \
         local_agent = excluded.local_agent, peer_runtime = excluded.peer_runtime, remote_agent = \
         excluded.remote_agent, depth = excluded.depth, status = excluded.status, tx_step = excluded.tx_step, \
         tx_ratchet = excluded.tx_ratchet, tx_prng_seed = excluded.tx_prng_seed, rx_step = excluded.rx_step, \
         rx_ratchet = excluded.rx_ratchet, rx_prng_seed = excluded.rx_prng_seed, validation_failure_count = \
         excluded.validation_failure_count, rx_rotation = excluded.rx_rotation, reset_id = excluded.reset_id, \
         unconfirmed = excluded.unconfirmed, updated_at = excluded.updated_at",
        vec![
            blob(c.id.as_bytes()),
            blob(c.local_agent.as_bytes()),
            blob(c.peer.as_bytes()),
            blob(c.remote_agent.as_bytes()),
            Val::Int(depth),
            Val::Text(c.status.as_str().into()),
            tx_step,
            tx_ratchet,
            tx_seed,
            rx_step,
            rx_ratchet,
            rx_seed,
            Val::Int(i64::from(c.validation_failures)),
            rx_rotation,
            c.reset.as_ref().map_or(Val::Null, |r| blob(r)),
            Val::Int(i64::from(c.unconfirmed && !wipe)),
            Val::Int(now),
            Val::Int(now),
        ],
    ));
    Ok(())
}

/// The statements of a whole batch.
pub(crate) fn batch_statements(cipher: &CellCipher, ops: &[WriteOp], now: i64) -> Result<Vec<Stmt>, StorageError> {
    let mut out = Vec::with_capacity(ops.len() + 1);
    for op in ops {
        statements(cipher, op, now, &mut out)?;
    }
    Ok(out)
}

/// Applies one batch with bound parameters on `conn` (inside the caller's transaction or
/// savepoint).
pub(crate) async fn apply_batch(
    conn: &mut SqliteConnection,
    cipher: &CellCipher,
    ops: &[WriteOp],
    now: i64,
) -> Result<(), ApplyError> {
    for stmt in batch_statements(cipher, ops, now).map_err(ApplyError::Batch)? {
        stmt.execute(conn).await?;
    }
    Ok(())
}

fn op_name(op: &StorageOp) -> &'static str {
    match op {
        StorageOp::Meta(_) => "Meta",
        StorageOp::PutAgent(_) => "PutAgent",
        StorageOp::DeleteAgent(_) => "DeleteAgent",
        StorageOp::PutChannel(_) => "PutChannel",
        StorageOp::AdvanceChannel { .. } => "AdvanceChannel",
        StorageOp::ChannelStatus { .. } => "ChannelStatus",
        StorageOp::ChannelFailures { .. } => "ChannelFailures",
        StorageOp::CloseChannel(_) => "CloseChannel",
        StorageOp::Sg(_) => "Sg",
        StorageOp::PutDelivery(_) => "PutDelivery",
        StorageOp::AckDelivery { .. } => "AckDelivery",
        StorageOp::RemoveDelivery { .. } => "RemoveDelivery",
        StorageOp::PutRemoteChannel(_) => "PutRemoteChannel",
        StorageOp::AdvanceRemoteTx { .. } => "AdvanceRemoteTx",
        StorageOp::AdvanceRemoteRx { .. } => "AdvanceRemoteRx",
        StorageOp::RemoteRotation { .. } => "RemoteRotation",
        StorageOp::PutPeer(_) => "PutPeer",
        StorageOp::RemoteReset { .. } => "RemoteReset",
        StorageOp::RemoteUnconfirmed { .. } => "RemoteUnconfirmed",
        StorageOp::PutOutbound(_) => "PutOutbound",
        StorageOp::AckOutbound { .. } => "AckOutbound",
        StorageOp::TruncateOutbound { .. } => "TruncateOutbound",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Reads column `column` of `row`, any decode problem (type, NULL, encoding) being `Corrupt`.
pub(crate) fn get<'r, T>(row: &'r SqliteRow, table: &str, column: &str) -> Result<T, StorageError>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get::<T, _>(column).map_err(|e| corrupt(table, column, &format!("unreadable value ({})", decode_kind(&e))))
}

fn decode_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::ColumnNotFound(_) => "column missing",
        sqlx::Error::ColumnDecode { .. } => "wrong type or encoding",
        _ => "decode error",
    }
}

/// A fixed-size byte column.
pub(crate) fn get_fixed<const N: usize>(row: &SqliteRow, table: &str, column: &str) -> Result<[u8; N], StorageError> {
    let v: Vec<u8> = get(row, table, column)?;
    <[u8; N]>::try_from(v.as_slice())
        .map_err(|_| corrupt(table, column, &format!("expected {N} bytes, found {}", v.len())))
}

/// A non-negative integer column as `u64`.
pub(crate) fn get_u64(row: &SqliteRow, table: &str, column: &str) -> Result<u64, StorageError> {
    let v: i64 = get(row, table, column)?;
    u64::try_from(v).map_err(|_| corrupt(table, column, "negative value"))
}

/// An integer column as `u32`.
pub(crate) fn get_u32(row: &SqliteRow, table: &str, column: &str) -> Result<u32, StorageError> {
    let v: i64 = get(row, table, column)?;
    u32::try_from(v).map_err(|_| corrupt(table, column, "value out of range"))
}

/// A frame depth column.
pub(crate) fn get_depth(row: &SqliteRow, table: &str, column: &str) -> Result<usize, StorageError> {
    let v: i64 = get(row, table, column)?;
    usize::try_from(v)
        .ok()
        .filter(|d| (MIN_FRAME_DEPTH..=MAX_FRAME_DEPTH).contains(d))
        .ok_or_else(|| corrupt(table, column, "depth out of range"))
}

/// An agent state column.
pub(crate) fn parse_agent_state(s: &str, table: &str, column: &str) -> Result<AgentState, StorageError> {
    match s {
        "bound" => Ok(AgentState::Bound),
        "active" => Ok(AgentState::Active),
        "quarantined" => Ok(AgentState::Quarantined),
        "terminated" => Ok(AgentState::Terminated),
        _ => Err(corrupt(table, column, "unknown agent state")),
    }
}

/// A channel status column.
pub(crate) fn parse_channel_status(s: &str, table: &str, column: &str) -> Result<ChannelStatus, StorageError> {
    match s {
        "active" => Ok(ChannelStatus::Active),
        "quarantined" => Ok(ChannelStatus::Quarantined),
        "closed" => Ok(ChannelStatus::Closed),
        _ => Err(corrupt(table, column, "unknown channel status")),
    }
}

async fn fetch_all(conn: &mut SqliteConnection, what: &str, sql: &'static str) -> Result<Vec<SqliteRow>, StorageError> {
    sqlx::query(sql).fetch_all(&mut *conn).await.map_err(|e| sql_error(what, &e))
}

/// Reads the runtime snapshot (`None` when no metadata was stored), validating every row.
pub(crate) async fn read_snapshot(
    conn: &mut SqliteConnection,
    cipher: &CellCipher,
) -> Result<Option<Snapshot>, StorageError> {
    let metas = fetch_all(
        conn,
        "read runtime_meta",
        "SELECT id, identity, deployment_id, instance_id, agent_counter FROM runtime_meta",
    )
    .await?;
    let meta = match metas.as_slice() {
        [] => None,
        [row] => {
            if get::<i64>(row, "runtime_meta", "id")? != 1 {
                return Err(corrupt("runtime_meta", "id", "unexpected row id"));
            }
            Some(MetaRow {
                identity: RuntimeId::from_bytes(get_fixed(row, "runtime_meta", "identity")?),
                deployment_id: get(row, "runtime_meta", "deployment_id")?,
                instance_id: get(row, "runtime_meta", "instance_id")?,
                agent_counter: get_u64(row, "runtime_meta", "agent_counter")?,
            })
        }
        _ => return Err(corrupt("runtime_meta", "id", "more than one row")),
    };

    let agent_rows =
        fetch_all(conn, "read agents", "SELECT agent_id, name, state, quarantine_reason FROM agents ORDER BY agent_id")
            .await?;
    let mut known_agents = BTreeSet::new();
    let mut agents = Vec::with_capacity(agent_rows.len());
    for row in &agent_rows {
        let id = AgentId::from_bytes(get_fixed(row, "agents", "agent_id")?);
        let name: Option<String> = get(row, "agents", "name")?;
        let state_s: String = get(row, "agents", "state")?;
        let state = parse_agent_state(&state_s, "agents", "state")?;
        let quarantine_reason: String = get(row, "agents", "quarantine_reason")?;
        known_agents.insert(id);
        if state != AgentState::Terminated {
            agents.push(AgentRow { id, name, state, quarantine_reason });
        }
    }

    let channel_rows = fetch_all(
        conn,
        "read channels",
        "SELECT channel_id, agent_a, agent_b, depth, status, step, local_state, validation_failure_count \
         FROM channels WHERE status <> 'closed' ORDER BY channel_id",
    )
    .await?;
    let mut channels = Vec::with_capacity(channel_rows.len());
    for row in &channel_rows {
        let id = ChannelId::from_bytes(get_fixed(row, "channels", "channel_id")?);
        let agent_a = AgentId::from_bytes(get_fixed(row, "channels", "agent_a")?);
        let agent_b = AgentId::from_bytes(get_fixed(row, "channels", "agent_b")?);
        for (col, a) in [("agent_a", &agent_a), ("agent_b", &agent_b)] {
            if !known_agents.contains(a) {
                return Err(corrupt("channels", col, "references an unknown agent"));
            }
        }
        let depth = get_depth(row, "channels", "depth")?;
        let status_s: String = get(row, "channels", "status")?;
        let status = parse_channel_status(&status_s, "channels", "status")?;
        if status == ChannelStatus::Closed {
            return Err(corrupt("channels", "status", "unexpected closed channel"));
        }
        let step = get_u64(row, "channels", "step")?;
        let blob: Option<Vec<u8>> = get(row, "channels", "local_state")?;
        let blob = blob.ok_or_else(|| corrupt("channels", "local_state", "missing for an open channel"))?;
        let state = open_state(cipher, channel_cell(id.as_bytes(), &step.to_be_bytes()), &blob)?;
        let validation_failures = get_u32(row, "channels", "validation_failure_count")?;
        channels.push(ChannelRow { id, agent_a, agent_b, depth, status, step, state, validation_failures });
    }

    let sg_rows = fetch_all(conn, "read sg_cache", "SELECT id, sg_value FROM sg_cache").await?;
    let sg = match sg_rows.as_slice() {
        [] => None,
        [row] => {
            if get::<i64>(row, "sg_cache", "id")? != 1 {
                return Err(corrupt("sg_cache", "id", "unexpected row id"));
            }
            let blob: Vec<u8> = get(row, "sg_cache", "sg_value")?;
            Some(open_state(cipher, sg_cell(), &blob)?)
        }
        _ => return Err(corrupt("sg_cache", "id", "more than one row")),
    };

    let deliveries = read_inbox(conn, cipher, &known_agents).await?;
    let remote_channels = read_remote_channels(conn, cipher, &known_agents).await?;
    let outbound = read_outbound_log(conn, cipher).await?;
    let peers = read_peers(conn).await?;
    Ok(meta.map(|meta| Snapshot {
        meta: Some(meta),
        agents,
        channels,
        sg,
        deliveries,
        remote_channels,
        outbound,
        peers,
    }))
}

/// Most peer rows a load reads (a federation has a handful of peers); more means a damaged
/// or edited store.
const MAX_PEER_ROWS: usize = 1 << 16;

/// Reads the peer runtimes, validating every row.
async fn read_peers(conn: &mut SqliteConnection) -> Result<Vec<PeerRow>, StorageError> {
    if !has_table(conn, "peers").await? {
        return Ok(Vec::new());
    }
    let rows = fetch_all(
        conn,
        "read peers",
        "SELECT runtime_id, handshake_secs, handshake_nanos FROM peers ORDER BY runtime_id LIMIT 65537",
    )
    .await?;
    if rows.len() > MAX_PEER_ROWS {
        return Err(corrupt("peers", "runtime_id", "more peer rows than a federation has"));
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let runtime = RuntimeId::from_bytes(get_fixed(row, "peers", "runtime_id")?);
        let handshake_secs = get_u64(row, "peers", "handshake_secs")?;
        let handshake_nanos = get_u32(row, "peers", "handshake_nanos")?;
        if handshake_nanos >= 1_000_000_000 {
            return Err(corrupt("peers", "handshake_nanos", "not below 10^9"));
        }
        out.push(PeerRow { runtime, handshake_secs, handshake_nanos });
    }
    Ok(out)
}

/// Whether the database has table `name` (our constants only). A database of an older
/// schema read without migrating, by `inspect`, lacks the later tables (and holds nothing
/// of theirs): the inbox came with version 2, cross-runtime channels with version 3.
async fn has_table(conn: &mut SqliteConnection, name: &'static str) -> Result<bool, StorageError> {
    let row = sqlx::query("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error("read sqlite_master", &e))?;
    let n: i64 = row.try_get(0).map_err(|e| StorageError::Corrupt(format!("sqlite_master: {e}")))?;
    Ok(n > 0)
}

/// Whether table `table` has column `column` (our constants only): columns added by later
/// versions are missing from an older database read without migrating.
async fn has_column(
    conn: &mut SqliteConnection,
    table: &'static str,
    column: &'static str,
) -> Result<bool, StorageError> {
    let row = sqlx::query("SELECT count(*) FROM pragma_table_info(?) WHERE name = ?")
        .bind(table)
        .bind(column)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error("read the table's columns", &e))?;
    let n: i64 = row.try_get(0).map_err(|e| StorageError::Corrupt(format!("{table}: {e}")))?;
    Ok(n > 0)
}

async fn has_inbox(conn: &mut SqliteConnection) -> Result<bool, StorageError> {
    has_table(conn, "inbox").await
}

/// Reads one chain of a cross-runtime channel row, validating and decrypting it.
fn read_chain(
    cipher: &CellCipher,
    row: &SqliteRow,
    id: &ChannelId,
    chain: Chain,
) -> Result<BilateralState, StorageError> {
    let t = REMOTE_CHANNELS;
    let (step_col, ratchet_col, seed_col) = chain.columns();
    let step = get_u64(row, t, step_col)?;
    let step_be = step.to_be_bytes();
    let secret = |col: &'static str| -> Result<State, StorageError> {
        let blob: Option<Vec<u8>> = get(row, t, col)?;
        let blob = blob.ok_or_else(|| corrupt(t, col, "missing for an open channel"))?;
        if blob.len() != 32 + crate::cell::OVERHEAD {
            return Err(corrupt(t, col, "encrypted cell of the wrong length"));
        }
        open_state(cipher, remote_cell(col, id.as_bytes(), &step_be), &blob)
    };
    let ratchet = secret(ratchet_col)?;
    let prng_seed = secret(seed_col)?;
    Ok(BilateralState { ratchet, prng_seed, step })
}

/// Reads the cross-runtime channels that are not closed, ordered by id, validating every row.
async fn read_remote_channels(
    conn: &mut SqliteConnection,
    cipher: &CellCipher,
    known_agents: &BTreeSet<AgentId>,
) -> Result<Vec<RemoteChannelRow>, StorageError> {
    if !has_table(conn, REMOTE_CHANNELS).await? {
        return Ok(Vec::new());
    }
    let t = REMOTE_CHANNELS;
    let sql = if has_column(conn, REMOTE_CHANNELS, "reset_id").await? {
        "SELECT channel_id, local_agent, peer_runtime, remote_agent, depth, status, tx_step, tx_ratchet, \
             tx_prng_seed, rx_step, rx_ratchet, rx_prng_seed, validation_failure_count, rx_rotation, reset_id, \
             unconfirmed FROM remote_channels WHERE status <> 'closed' ORDER BY channel_id"
    } else {
        // Version 3, read without migrating (`inspect`): never reset, all confirmed.
        "SELECT channel_id, local_agent, peer_runtime, remote_agent, depth, status, tx_step, tx_ratchet, \
             tx_prng_seed, rx_step, rx_ratchet, rx_prng_seed, validation_failure_count, rx_rotation, NULL AS \
             reset_id, 0 AS unconfirmed FROM remote_channels WHERE status <> 'closed' ORDER BY channel_id"
    };
    let rows = fetch_all(conn, "read remote_channels", sql).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = ChannelId::from_bytes(get_fixed(row, t, "channel_id")?);
        out.push(remote_channel(cipher, row, id, known_agents).map_err(|e| in_row(e, &format!("channel {id}")))?);
    }
    Ok(out)
}

/// One row of `remote_channels` (not closed), validated and decrypted.
fn remote_channel(
    cipher: &CellCipher,
    row: &SqliteRow,
    id: ChannelId,
    known_agents: &BTreeSet<AgentId>,
) -> Result<RemoteChannelRow, StorageError> {
    let t = REMOTE_CHANNELS;
    let local_agent = AgentId::from_bytes(get_fixed(row, t, "local_agent")?);
    if !known_agents.contains(&local_agent) {
        return Err(corrupt(t, "local_agent", "references an unknown agent"));
    }
    let peer = RuntimeId::from_bytes(get_fixed(row, t, "peer_runtime")?);
    let remote_agent = AgentId::from_bytes(get_fixed(row, t, "remote_agent")?);
    let depth = get_depth(row, t, "depth")?;
    let status_s: String = get(row, t, "status")?;
    let status = parse_channel_status(&status_s, t, "status")?;
    if status == ChannelStatus::Closed {
        return Err(corrupt(t, "status", "unexpected closed channel"));
    }
    let tx = read_chain(cipher, row, &id, Chain::Tx)?;
    let rx = read_chain(cipher, row, &id, Chain::Rx)?;
    let validation_failures = get_u32(row, t, "validation_failure_count")?;
    let rotation: Option<Vec<u8>> = get(row, t, "rx_rotation")?;
    let rx_rotation = match rotation {
        Some(b) => Some(open_state(cipher, rotation_cell(id.as_bytes()), &b)?),
        None => None,
    };
    let reset: Option<Vec<u8>> = get(row, t, "reset_id")?;
    let reset = match reset {
        None => None,
        Some(b) => Some(<[u8; 16]>::try_from(b.as_slice()).map_err(|_| corrupt(t, "reset_id", "not 16 bytes"))?),
    };
    let unconfirmed = match get::<i64>(row, t, "unconfirmed")? {
        0 => false,
        1 => true,
        _ => return Err(corrupt(t, "unconfirmed", "neither 0 nor 1")),
    };
    Ok(RemoteChannelRow {
        id,
        local_agent,
        peer,
        remote_agent,
        depth,
        status,
        tx,
        rx,
        validation_failures,
        rx_rotation,
        reset,
        unconfirmed,
    })
}

/// Names the row in a `Corrupt` error about one of its columns.
fn in_row(e: StorageError, row: &str) -> StorageError {
    match e {
        StorageError::Corrupt(m) => StorageError::Corrupt(format!("{m} ({row})")),
        other => other,
    }
}

/// Reads the outbound log of the open cross-runtime channels, by channel then step,
/// validating and decrypting every row.
async fn read_outbound_log(conn: &mut SqliteConnection, cipher: &CellCipher) -> Result<Vec<OutboundRow>, StorageError> {
    if !has_table(conn, REMOTE_OUTBOUND).await? {
        return Ok(Vec::new());
    }
    let t = REMOTE_OUTBOUND;
    let count = sqlx::query("SELECT count(*) FROM remote_outbound")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error("count remote_outbound", &e))?;
    let count: i64 = count.try_get(0).map_err(|e| StorageError::Corrupt(format!("{t}: {e}")))?;
    if count > MAX_OUTBOUND_ROWS {
        return Err(corrupt(
            t,
            "step",
            &format!("{count} outbound-log messages, more than the {MAX_OUTBOUND_ROWS} a load reads"),
        ));
    }
    let rows = fetch_all(
        conn,
        "read remote_outbound",
        "SELECT o.channel_id, o.step, o.peer_runtime, o.wire FROM remote_outbound AS o JOIN remote_channels AS c ON \
         c.channel_id = o.channel_id WHERE c.status <> 'closed' ORDER BY o.channel_id, o.step",
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let channel = ChannelId::from_bytes(get_fixed(row, t, "channel_id")?);
        let step = get_u64(row, t, "step").map_err(|e| in_row(e, &format!("channel {channel}")))?;
        let at = || format!("channel {channel}, step {step}");
        let peer = RuntimeId::from_bytes(get_fixed(row, t, "peer_runtime").map_err(|e| in_row(e, &at()))?);
        let blob: Vec<u8> = get(row, t, "wire").map_err(|e| in_row(e, &at()))?;
        if blob.len() > MAX_WIRE_LEN + crate::cell::OVERHEAD {
            return Err(in_row(corrupt(t, "wire", "wire message too large"), &at()));
        }
        let row_id = inbox_row_id(channel.as_bytes(), step);
        let wire = cipher.open(remote_outbound_cell(&row_id, peer.as_bytes()), &blob).map_err(|e| in_row(e, &at()))?;
        out.push(OutboundRow { channel, step, peer, wire: wire.to_vec() });
    }
    Ok(out)
}

/// Reads the pending deliveries in the order they were stored, validating every row.
async fn read_inbox(
    conn: &mut SqliteConnection,
    cipher: &CellCipher,
    known_agents: &BTreeSet<AgentId>,
) -> Result<Vec<DeliveryRow>, StorageError> {
    if !has_inbox(conn).await? {
        return Ok(Vec::new());
    }
    let t = "inbox";
    let count = sqlx::query("SELECT count(*) FROM inbox")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error("count inbox", &e))?;
    let count: i64 = count.try_get(0).map_err(|e| StorageError::Corrupt(format!("inbox: {e}")))?;
    if count > MAX_INBOX_ROWS {
        return Err(corrupt(
            t,
            "id",
            &format!("{count} pending messages, more than the {MAX_INBOX_ROWS} a load reads"),
        ));
    }
    let rows = fetch_all(
        conn,
        "read inbox",
        "SELECT channel_id, recipient, step, message_id, correlation_id, sender, payload FROM inbox ORDER BY id",
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let channel = ChannelId::from_bytes(get_fixed(row, t, "channel_id")?);
        let recipient = AgentId::from_bytes(get_fixed(row, t, "recipient")?);
        if !known_agents.contains(&recipient) {
            return Err(corrupt(t, "recipient", "references an unknown agent"));
        }
        let step = get_u64(row, t, "step")?;
        let message_id = MessageId::from_bytes(get_fixed(row, t, "message_id")?);
        let correlation_id: [u8; 8] = get_fixed(row, t, "correlation_id")?;
        let sender = AgentId::from_bytes(get_fixed(row, t, "sender")?);
        let blob: Vec<u8> = get(row, t, "payload")?;
        if blob.len() > MAX_INBOX_PAYLOAD + crate::cell::OVERHEAD {
            return Err(corrupt(t, "payload", "payload too large"));
        }
        let row_id = inbox_row_id(channel.as_bytes(), step);
        let ctx = inbox_context(recipient.as_bytes(), sender.as_bytes(), message_id.as_bytes(), &correlation_id);
        let payload = cipher.open(inbox_cell(&row_id, &ctx), &blob)?;
        out.push(DeliveryRow {
            channel,
            step,
            recipient,
            sender,
            message_id,
            correlation_id,
            payload: payload.to_vec(),
        });
    }
    Ok(out)
}

/// Reads bilateral channels and pending outbound messages, validating every row.
pub(crate) async fn read_federation(
    conn: &mut SqliteConnection,
    cipher: &CellCipher,
) -> Result<FederationSnapshot, StorageError> {
    let rows = fetch_all(
        conn,
        "read bilateral_channels",
        "SELECT bilateral_id, runtime_id_local, runtime_id_peer, ratchet_state, shared_prng_seed, step, status \
         FROM bilateral_channels ORDER BY bilateral_id",
    )
    .await?;
    let t = "bilateral_channels";
    let mut bilateral = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = BilateralId::from_bytes(get_fixed(row, t, "bilateral_id")?);
        let local = RuntimeId::from_bytes(get_fixed(row, t, "runtime_id_local")?);
        let peer = RuntimeId::from_bytes(get_fixed(row, t, "runtime_id_peer")?);
        let step = get_u64(row, t, "step")?;
        let step_be = step.to_be_bytes();
        let r_blob: Vec<u8> = get(row, t, "ratchet_state")?;
        let p_blob: Vec<u8> = get(row, t, "shared_prng_seed")?;
        let ratchet = open_state(cipher, ratchet_cell(id.as_bytes(), &step_be), &r_blob)?;
        let prng_seed = open_state(cipher, prng_cell(id.as_bytes(), &step_be), &p_blob)?;
        let status_s: String = get(row, t, "status")?;
        let status = BilateralStatus::parse(&status_s).ok_or_else(|| corrupt(t, "status", "unknown status"))?;
        bilateral.push(BilateralRecord { id, local, peer, state: BilateralState { ratchet, prng_seed, step }, status });
    }

    let rows = fetch_all(
        conn,
        "read pending_outbound",
        "SELECT id, bilateral_id, channel_id, step, wire FROM pending_outbound ORDER BY id",
    )
    .await?;
    let t = "pending_outbound";
    let mut outbound = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = get_u64(row, t, "id")?;
        let bilateral_id = BilateralId::from_bytes(get_fixed(row, t, "bilateral_id")?);
        let channel = ChannelId::from_bytes(get_fixed(row, t, "channel_id")?);
        let step = get_u64(row, t, "step")?;
        let blob: Vec<u8> = get(row, t, "wire")?;
        if blob.len() > MAX_WIRE_LEN + crate::cell::OVERHEAD {
            return Err(corrupt(t, "wire", "wire message too large"));
        }
        let id_be = id.to_be_bytes();
        let ctx = outbound_context(bilateral_id.as_bytes(), channel.as_bytes(), step);
        let wire = cipher.open(outbound_cell(&id_be, &ctx), &blob)?;
        outbound.push(OutboundRecord { id, bilateral: bilateral_id, channel, step, wire: wire.to_vec() });
    }
    Ok(FederationSnapshot { bilateral, outbound })
}

/// Checks the key check cell of `mfp_keys` against `cipher`: another key id is
/// [`StorageError::WrongKey`] (naming both ids); the right key id with a key check that does
/// not open is damage ([`StorageError::Corrupt`]).
pub(crate) fn verify_key_check(cipher: &CellCipher, stored_key_id: &[u8], blob: &[u8]) -> Result<(), StorageError> {
    if stored_key_id != cipher.key_id() {
        return Err(StorageError::WrongKey(format!(
            "the database was written with the key whose id is {}, the key given has id {}; use the key with id \
             {} (`mfp-storage keygen` prints a new key's id, `mfp-storage check` the database's)",
            hex::encode(stored_key_id),
            hex::encode(cipher.key_id()),
            hex::encode(stored_key_id)
        )));
    }
    let plain = cipher.open(key_check_cell(), blob)?;
    if plain.as_slice() != KEY_CHECK_PLAINTEXT {
        return Err(corrupt("mfp_keys", "key_check", "wrong content although the key id matches (damaged)"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------------

/// Writes one re-encrypted cell back: `sql` is an `UPDATE` binding the new blob, then the
/// row's key (one value, or several for a composite key).
async fn put_cell(
    conn: &mut SqliteConnection,
    sql: &'static str,
    blob: Vec<u8>,
    key: impl IntoIterator<Item = Val>,
) -> Result<(), StorageError> {
    let mut args = vec![Val::Blob(blob)];
    args.extend(key);
    Stmt::new("re-encrypt", sql, args).execute(conn).await.map_err(|e| match e {
        ApplyError::Batch(e) | ApplyError::Transaction(e) => e,
    })
}

/// Re-encrypts every encrypted cell from `old` to `new` (in the caller's transaction) and
/// returns the number of cells rewritten (the key check included).
pub(crate) async fn reencrypt_all(
    conn: &mut SqliteConnection,
    old: &CellCipher,
    new: &CellCipher,
    now: i64,
) -> Result<u64, StorageError> {
    let mut count = 0u64;
    let ex = |e: sqlx::Error| sql_error("re-encrypt", &e);

    for row in fetch_all(
        conn,
        "read channels",
        "SELECT channel_id, step, local_state FROM channels WHERE local_state IS NOT NULL",
    )
    .await?
    {
        let id: Vec<u8> = get(&row, "channels", "channel_id")?;
        let step = get_u64(&row, "channels", "step")?.to_be_bytes();
        let blob: Vec<u8> = get(&row, "channels", "local_state")?;
        let plain: Zeroizing<Vec<u8>> = old.open(channel_cell(&id, &step), &blob)?;
        let fresh = new.seal(channel_cell(&id, &step), &plain)?;
        put_cell(conn, "UPDATE channels SET local_state = ? WHERE channel_id = ?", fresh, [Val::Blob(id)]).await?;
        count += 1;
    }

    for row in fetch_all(conn, "read sg_cache", "SELECT id, sg_value FROM sg_cache").await? {
        let id: i64 = get(&row, "sg_cache", "id")?;
        let blob: Vec<u8> = get(&row, "sg_cache", "sg_value")?;
        let plain = old.open(sg_cell(), &blob)?;
        let fresh = new.seal(sg_cell(), &plain)?;
        put_cell(conn, "UPDATE sg_cache SET sg_value = ? WHERE id = ?", fresh, [Val::Int(id)]).await?;
        count += 1;
    }

    for row in fetch_all(
        conn,
        "read bilateral_channels",
        "SELECT bilateral_id, step, ratchet_state, shared_prng_seed FROM bilateral_channels",
    )
    .await?
    {
        let t = "bilateral_channels";
        let id: Vec<u8> = get(&row, t, "bilateral_id")?;
        let step = get_u64(&row, t, "step")?.to_be_bytes();
        let r: Vec<u8> = get(&row, t, "ratchet_state")?;
        let p: Vec<u8> = get(&row, t, "shared_prng_seed")?;
        let r_new = new.seal(ratchet_cell(&id, &step), &old.open(ratchet_cell(&id, &step), &r)?)?;
        let p_new = new.seal(prng_cell(&id, &step), &old.open(prng_cell(&id, &step), &p)?)?;
        sqlx::query("UPDATE bilateral_channels SET ratchet_state = ?, shared_prng_seed = ? WHERE bilateral_id = ?")
            .bind(r_new)
            .bind(p_new)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(ex)?;
        count += 2;
    }

    for row in fetch_all(
        conn,
        "read pending_outbound",
        "SELECT id, bilateral_id, channel_id, step, wire FROM pending_outbound",
    )
    .await?
    {
        let t = "pending_outbound";
        let id = get_u64(&row, t, "id")?;
        let bilateral: Vec<u8> = get(&row, t, "bilateral_id")?;
        let channel: Vec<u8> = get(&row, t, "channel_id")?;
        let step = get_u64(&row, t, "step")?;
        let blob: Vec<u8> = get(&row, t, "wire")?;
        let id_be = id.to_be_bytes();
        let ctx = outbound_context(&bilateral, &channel, step);
        let fresh = new.seal(outbound_cell(&id_be, &ctx), &old.open(outbound_cell(&id_be, &ctx), &blob)?)?;
        let id_i = i64::try_from(id).map_err(|_| corrupt(t, "id", "value out of range"))?;
        put_cell(conn, "UPDATE pending_outbound SET wire = ? WHERE id = ?", fresh, [Val::Int(id_i)]).await?;
        count += 1;
    }

    if has_inbox(conn).await? {
        for row in fetch_all(
            conn,
            "read inbox",
            "SELECT id, channel_id, recipient, step, message_id, correlation_id, sender, payload FROM inbox",
        )
        .await?
        {
            let t = "inbox";
            let id: i64 = get(&row, t, "id")?;
            let channel: Vec<u8> = get(&row, t, "channel_id")?;
            let recipient: Vec<u8> = get(&row, t, "recipient")?;
            let step = get_u64(&row, t, "step")?;
            let message_id: Vec<u8> = get(&row, t, "message_id")?;
            let correlation: Vec<u8> = get(&row, t, "correlation_id")?;
            let sender: Vec<u8> = get(&row, t, "sender")?;
            let blob: Vec<u8> = get(&row, t, "payload")?;
            let row_id = inbox_row_id(&channel, step);
            let ctx = inbox_context(&recipient, &sender, &message_id, &correlation);
            let cell = inbox_cell(&row_id, &ctx);
            let fresh = new.seal(cell, &old.open(cell, &blob)?)?;
            put_cell(conn, "UPDATE inbox SET payload = ? WHERE id = ?", fresh, [Val::Int(id)]).await?;
            count += 1;
        }
    }

    count += reencrypt_remote(conn, old, new).await?;

    let check = new.seal(key_check_cell(), KEY_CHECK_PLAINTEXT)?;
    let done = sqlx::query("UPDATE mfp_keys SET key_id = ?, key_check = ?, rotated_at = ? WHERE id = 1")
        .bind(new.key_id().to_vec())
        .bind(check)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(ex)?;
    if done.rows_affected() != 1 {
        return Err(corrupt("mfp_keys", "id", "key row missing"));
    }
    Ok(count + 1)
}

/// Re-encrypts the secrets of the cross-runtime channels that are not closed (four cells
/// each) and every message of the outbound log; returns the number of cells rewritten.
async fn reencrypt_remote(
    conn: &mut SqliteConnection,
    old: &CellCipher,
    new: &CellCipher,
) -> Result<u64, StorageError> {
    let mut count = 0u64;
    if has_table(conn, REMOTE_CHANNELS).await? {
        let t = REMOTE_CHANNELS;
        for row in fetch_all(
            conn,
            "read remote_channels",
            "SELECT channel_id, tx_step, tx_ratchet, tx_prng_seed, rx_step, rx_ratchet, rx_prng_seed, rx_rotation \
             FROM remote_channels WHERE status <> 'closed'",
        )
        .await?
        {
            let id: Vec<u8> = get(&row, t, "channel_id")?;
            for chain in [Chain::Tx, Chain::Rx] {
                let (step_col, ratchet_col, seed_col) = chain.columns();
                let step = get_u64(&row, t, step_col)?.to_be_bytes();
                for (col, sql) in [(ratchet_col, chain_update(chain, true)), (seed_col, chain_update(chain, false))] {
                    let blob: Vec<u8> = get(&row, t, col)?;
                    let cell = remote_cell(col, &id, &step);
                    let fresh = new.seal(cell, &old.open(cell, &blob)?)?;
                    put_cell(conn, sql, fresh, [Val::Blob(id.clone())]).await?;
                    count += 1;
                }
            }
            let rotation: Option<Vec<u8>> = get(&row, t, "rx_rotation")?;
            if let Some(blob) = rotation {
                let cell = rotation_cell(&id);
                let fresh = new.seal(cell, &old.open(cell, &blob)?)?;
                put_cell(
                    conn,
                    "UPDATE remote_channels SET rx_rotation = ? WHERE channel_id = ?",
                    fresh,
                    [Val::Blob(id.clone())],
                )
                .await?;
                count += 1;
            }
        }
    }
    if has_table(conn, REMOTE_OUTBOUND).await? {
        let t = REMOTE_OUTBOUND;
        for row in
            fetch_all(conn, "read remote_outbound", "SELECT channel_id, step, peer_runtime, wire FROM remote_outbound")
                .await?
        {
            let channel: Vec<u8> = get(&row, t, "channel_id")?;
            let step = get_u64(&row, t, "step")?;
            let peer: Vec<u8> = get(&row, t, "peer_runtime")?;
            let blob: Vec<u8> = get(&row, t, "wire")?;
            let row_id = inbox_row_id(&channel, step);
            let cell = remote_outbound_cell(&row_id, &peer);
            let fresh = new.seal(cell, &old.open(cell, &blob)?)?;
            let step_i = range(step, t, "step")?;
            put_cell(
                conn,
                "UPDATE remote_outbound SET wire = ? WHERE channel_id = ? AND step = ?",
                fresh,
                [Val::Blob(channel), Val::Int(step_i)],
            )
            .await?;
            count += 1;
        }
    }
    Ok(count)
}

/// The `UPDATE` writing one re-encrypted secret of a chain back.
const fn chain_update(chain: Chain, ratchet: bool) -> &'static str {
    match (chain, ratchet) {
        (Chain::Tx, true) => "UPDATE remote_channels SET tx_ratchet = ? WHERE channel_id = ?",
        (Chain::Tx, false) => "UPDATE remote_channels SET tx_prng_seed = ? WHERE channel_id = ?",
        (Chain::Rx, true) => "UPDATE remote_channels SET rx_ratchet = ? WHERE channel_id = ?",
        (Chain::Rx, false) => "UPDATE remote_channels SET rx_prng_seed = ? WHERE channel_id = ?",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn values_bind_on_the_fast_connection_as_they_are() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a, b, c, d)").unwrap();
        let stmt = Stmt::new(
            "test",
            "INSERT INTO t (a, b, c, d) VALUES (?, ?, ?, ?)",
            vec![Val::Int(-5), Val::Blob(vec![0x00, 0xff]), Val::Text("it's ?".into()), Val::Null],
        );
        assert_eq!(stmt.placeholders(), stmt.args.len());
        conn.prepare(stmt.sql).unwrap().execute(rusqlite::params_from_iter(&stmt.args)).unwrap();
        let row = conn
            .query_row("SELECT a, b, c, d IS NULL, typeof(a), typeof(b), typeof(c) FROM t", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .unwrap();
        assert_eq!(row, (-5, vec![0x00, 0xff], "it's ?".into(), true, "integer".into(), "blob".into(), "text".into()));
    }

    #[test]
    fn the_fast_statement_cache_holds_every_statement_text() {
        // Every SQL text of `statements` is passed to a `Stmt::new` call of this file (which
        // counts the calls of the rotation and of this test too: an upper bound). Beside
        // them the fast path prepares BEGIN IMMEDIATE, COMMIT and ROLLBACK.
        let texts = include_str!("db.rs").matches("Stmt::new(").count();
        assert!(texts + 3 <= crate::schema::FAST_STATEMENT_CACHE, "{texts} statement texts");
    }

    #[test]
    fn fast_path_errors_are_classified_like_sqlx_ones() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p REFERENCES p (id))",
        )
        .unwrap();
        let e = conn.execute("INSERT INTO c (p) VALUES (?)", [7]).unwrap_err();
        assert!(is_rusqlite_constraint(&e), "{e}");
        let mapped = rusqlite_error("store channel", &e);
        assert!(
            matches!(&mapped, StorageError::Backend(m) if m.starts_with("store channel: (code: 787) FOREIGN KEY")),
            "{mapped:?}"
        );
        let e = conn.execute("UPDATE missing SET x = ?", [7]).unwrap_err();
        assert!(!is_rusqlite_constraint(&e));
        assert!(
            matches!(rusqlite_error("advance channel", &e), StorageError::Corrupt(m) if m.contains("no such table: missing"))
        );
    }

    #[test]
    fn every_statement_has_one_argument_per_placeholder() {
        // The fast path binds a whole transaction's arguments in order across its
        // statements: one statement with a `?` too many or too few would shift all the rest.
        use mfp_core::{AgentId, ChannelId, MessageId, RuntimeId, State};
        use mfp_runtime::storage::{AgentRow, ChannelRow, DeliveryRow, MetaRow};
        let cipher = CellCipher::new(&crate::MasterKey::generate().unwrap(), &[7; 32]);
        let (agent, channel) = (AgentId::from_bytes([1; 32]), ChannelId::from_bytes([2; 16]));
        let ops = vec![
            StorageOp::Meta(MetaRow {
                identity: RuntimeId::from_bytes([3; 32]),
                deployment_id: vec![1],
                instance_id: vec![2],
                agent_counter: 4,
            }),
            StorageOp::PutAgent(AgentRow {
                id: agent,
                name: Some("a".into()),
                state: AgentState::Active,
                quarantine_reason: String::new(),
            }),
            StorageOp::DeleteAgent(agent),
            StorageOp::PutChannel(ChannelRow {
                id: channel,
                agent_a: agent,
                agent_b: agent,
                depth: 4,
                status: ChannelStatus::Active,
                step: 1,
                state: State::zero(),
                validation_failures: 0,
            }),
            StorageOp::AdvanceChannel { id: channel, state: State::zero(), step: 2 },
            StorageOp::ChannelStatus { id: channel, status: ChannelStatus::Quarantined },
            StorageOp::ChannelFailures { id: channel, count: 1 },
            StorageOp::CloseChannel(channel),
            StorageOp::Sg(Some(State::zero())),
            StorageOp::Sg(None),
            StorageOp::PutDelivery(DeliveryRow {
                channel,
                step: 1,
                recipient: agent,
                sender: agent,
                message_id: MessageId::from_bytes([4; 16]),
                correlation_id: [5; 8],
                payload: b"p".to_vec(),
            }),
            StorageOp::AckDelivery { channel, step: 1 },
        ];
        let mut out = Vec::new();
        for op in ops {
            statements(&cipher, &WriteOp::Runtime(op), 0, &mut out).unwrap();
        }
        assert!(out.len() >= 12);
        for stmt in &out {
            assert_eq!(stmt.placeholders(), stmt.args.len(), "{}", stmt.what);
        }
    }
}
