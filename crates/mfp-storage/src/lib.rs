//! # mfp-storage
//!
//! Durable, encrypted, crash-safe SQLite storage for the Mirror Frame Protocol runtime.
//!
//! Most applications need one call, [`open_runtime`]: it opens (or creates) the database and
//! builds a runtime on it — a new one the first time, the stored one, restored, after that.
//!
//! ```
//! use mfp_runtime::{RuntimeConfig, mfp_send};
//! use mfp_storage::{MasterKey, StorageConfig, open_runtime};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("mfp-storage-top-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! // Once: a new key file (64 hex digits, mode 0600); `mfp-storage keygen --out FILE` does the same.
//! MasterKey::generate_file(dir.join("master.key"))?;
//!
//! // At every start:
//! let key = MasterKey::from_file(dir.join("master.key"))?;
//! let runtime = open_runtime(RuntimeConfig::default(), StorageConfig::new(dir.join("runtime.db"), key))?;
//! let alice = runtime.bind_named("alice", |_, _| {})?;
//! let bob = runtime.bind_named("bob", |_, _| {})?;
//! let channel = runtime.establish_channel(&alice.id(), &bob.id())?;
//! mfp_send(&alice, channel, b"committed before this returns")?;
//! # runtime.shutdown();
//! # drop(runtime);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
//!
//! After a restart, `open_runtime` restores the agents and channels; attach the handlers with
//! [`mfp_runtime::Runtime::attach_named`] (see [`open_runtime`]). Operating it — keys,
//! backups, rotation, troubleshooting — is described in `docs/operations.md`.
//!
//! Below that: [`SqliteStorage`], the implementation of [`mfp_runtime::storage::Storage`]
//! the runtime writes through; read-only inspection ([`inspect`]); master-key rotation
//! ([`rotate_master_key`]); an importer for pymfp 1.0.0 databases ([`pymfp`]). The
//! `mfp-storage` binary wraps the last three and creates keys (`keygen`).
//!
//! ## The storage interface, directly
//!
//! What the runtime does through [`SqliteStorage`], written out:
//!
//! ```
//! use mfp_core::{AgentId, ChannelId, RuntimeId, State};
//! use mfp_runtime::storage::{AgentRow, ChannelRow, MetaRow, Storage, StorageOp};
//! use mfp_runtime::{AgentState, ChannelStatus};
//! use mfp_storage::{Durability, MasterKey, SqliteStorage, StorageConfig};
//!
//! # fn main() -> Result<(), mfp_runtime::storage::StorageError> {
//! # let dir = std::env::temp_dir().join(format!("mfp-storage-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).ok();
//! let path = dir.join("runtime.db");
//! let key = MasterKey::generate()?; // in production: MasterKey::from_file / from_env
//! let config = StorageConfig::new(&path, key.clone()).durability(Durability::Normal);
//!
//! let storage = SqliteStorage::open(config)?;
//! let identity = RuntimeId::derive(b"deployment", b"instance");
//! let (a, b) = (AgentId::from_bytes([1; 32]), AgentId::from_bytes([2; 32]));
//! let channel = ChannelId::from_bytes([3; 16]);
//! let agent = |id| StorageOp::PutAgent(AgentRow {
//!     id, name: None, state: AgentState::Active, quarantine_reason: String::new(),
//! });
//! storage.apply(vec![
//!     StorageOp::Meta(MetaRow { identity, deployment_id: vec![], instance_id: vec![], agent_counter: 2 }),
//!     agent(a),
//!     agent(b),
//!     StorageOp::PutChannel(ChannelRow {
//!         id: channel, agent_a: a, agent_b: b, depth: 4, status: ChannelStatus::Active,
//!         step: 0, state: State::from_bytes([4; 32]), validation_failures: 0,
//!     }),
//! ]).wait()?;
//! // The hot path: one message = one state advance and the new Sg, in one batch.
//! storage.apply(vec![
//!     StorageOp::AdvanceChannel { id: channel, state: State::from_bytes([5; 32]), step: 1 },
//!     StorageOp::Sg(Some(State::from_bytes([6; 32]))),
//! ]).wait()?;
//! storage.close()?;
//!
//! // After a restart:
//! let storage = SqliteStorage::open(StorageConfig::new(&path, key))?;
//! let snapshot = storage.load()?.expect("a runtime was stored");
//! assert_eq!(snapshot.channels[0].step, 1);
//! assert_eq!(snapshot.channels[0].state, State::from_bytes([5; 32]));
//! # drop(storage);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
//!
//! ## Opening
//!
//! [`SqliteStorage::open`] never modifies a file it has not validated. It first reads the
//! 100-byte header itself (an SQLite magic, a sane page size, a size consistent with the page
//! count — garbage and truncated files stop here), then opens the file **read-only** and runs
//! `PRAGMA quick_check`, checks `PRAGMA application_id` (`0x4D465053`, "MFPS") and the table
//! set (a foreign database — pymfp's included — is refused, never extended), checks the
//! applied migrations and the schema version (a newer one is refused), verifies the master
//! key against the key-check cell, and reads and validates every row. Only then does it open
//! the file for writing with `journal_mode=WAL`, `foreign_keys=ON`, `secure_delete=FAST`, the
//! busy timeout and the durability's `synchronous` setting, and run the embedded migrations
//! (`sqlx::migrate!("./migrations")`). A path that does not exist (or an empty file or empty
//! SQLite database) becomes a new database — unless `create_if_missing` is off, which refuses
//! all three. Pages that live only in the write-ahead log (`<db>-wal`, after a crash or a full
//! disk) count: with a log present, SQLite reads through it. A database that cannot be written
//! (file, directory or mount read-only) is refused at open; [`inspect`] reads it (SQLite's
//! `immutable` mode when its index cannot be created and there is no log).
//!
//! Every error is a typed [`StorageError`] whose message names the database file:
//!
//! * `Corrupt` — damage of any kind, reported the same way whichever statement meets it:
//!   not an SQLite file, truncated, `quick_check` failures, a damaged schema (a table or
//!   column missing, non-UTF-8 text, SQLite's worker crashing on it), a foreign or newer
//!   schema, an invalid row (table and column named), an encrypted cell that does not
//!   authenticate (the key being right);
//! * `WrongKey` — the key is not the database's (the message names both key ids);
//! * `MasterKey` — a missing or malformed key; `InUse` — another store (this process or
//!   another, which is said) has the database open; `Backend` — I/O, locks, a read-only
//!   database, a writer that did not answer within [`StorageConfig::writer_timeout`].
//!
//! `Decrypt` is returned only by the pymfp importer (pymfp's cells carry no key check).
//!
//! ## Schema (version 4)
//!
//! | table | columns |
//! |---|---|
//! | `mfp_schema` | `id` = 1, `application` = `'mfp-storage'`, `version` |
//! | `mfp_keys` | `id` = 1, `salt` (32 random bytes), `key_id` (8), `key_check` (encrypted constant), `created_at`, `rotated_at` |
//! | `runtime_meta` | `id` = 1, `identity` (32), `deployment_id`, `instance_id`, `agent_counter` ≥ 0, `created_at`, `updated_at` |
//! | `agents` | `agent_id` (32) PK, `name` (unique among non-terminated agents, NULL allowed), `state` ∈ {bound, active, quarantined, terminated}, `quarantine_reason`, `created_at`, `updated_at` |
//! | `channels` | `channel_id` (16) PK, `agent_a`, `agent_b` → `agents`, `depth` ∈ 2..=256, `status` ∈ {active, quarantined, closed}, `step` ≥ 0, `local_state` (encrypted; NULL exactly when closed), `validation_failure_count` ∈ 0..=u32::MAX, `created_at`, `updated_at` |
//! | `sg_cache` | `id` = 1, `sg_value` (encrypted), `updated_at` |
//! | `bilateral_channels` | `bilateral_id` (32) PK, `runtime_id_local`, `runtime_id_peer` (32), `ratchet_state`, `shared_prng_seed` (encrypted), `step` ≥ 0, `status` ∈ {active, recovery, suspended}, `created_at`, `updated_at` |
//! | `pending_outbound` | `id` ≥ 0 PK, `bilateral_id` → `bilateral_channels` (cascade), `channel_id` (16), `step` ≥ 0, `wire` (encrypted), `created_at` |
//! | `inbox` (version 2) | `id` PK (storage order), `channel_id` (16; no reference, so a message outlives its closed channel's row), `recipient` → `agents` (cascade), `step` ≥ 0, `message_id` (16), `correlation_id` (8), `sender` (32; no reference: it may be an agent of a peer runtime), `payload` (encrypted), `created_at`; unique (`channel_id`, `step`, `message_id`) (version 4; (`channel_id`, `step`) before); index (`recipient`, `id`) |
//! | `remote_channels` (version 3) | `channel_id` (16) PK, `local_agent` → `agents`, `peer_runtime` (32), `remote_agent` (32; no reference), `depth` ∈ 2..=256, `status` ∈ {active, quarantined, closed}, `tx_step`, `rx_step` ≥ 0, `tx_ratchet`, `tx_prng_seed`, `rx_ratchet`, `rx_prng_seed` (encrypted; all four NULL exactly when closed), `validation_failure_count` ∈ 0..=u32::MAX, `rx_rotation` (encrypted, NULL when none), `reset_id` (16 bytes or NULL; version 4), `unconfirmed` ∈ {0, 1} (version 4), `created_at`, `updated_at`; indexes (`local_agent`), (`peer_runtime`) |
//! | `remote_outbound` (version 3) | (`channel_id` → `remote_channels` (cascade), `step` ≥ 0) PK, `peer_runtime` (32), `wire` (encrypted), `created_at`; `WITHOUT ROWID` |
//!
//! Version 2 (migration `0002_inbox.sql`) adds only the `inbox`: the runtime's durable
//! delivery. Version 3 (`0003_remote_channels.sql`) adds only `remote_channels` and
//! `remote_outbound`: cross-runtime channels (a local agent, an agent of a peer runtime, one
//! bilateral chain per direction) and their outbound log (messages sealed and not yet
//! acknowledged by the peer). Version 4 (`0004_reset_and_confirmation.sql`) adds two
//! columns to `remote_channels` — `reset_id`, the id of the channel's latest reset (mixed
//! into the ids of the messages after it; NULL for a channel never reset, whose ids stay
//! what they were), and `unconfirmed`, set while this runtime accepted the channel and its
//! opener has not confirmed storing it — and rebuilds the `inbox` (rows and ids kept) so
//! that it is unique by (`channel_id`, `step`, `message_id`): a reset channel starts its
//! steps at 0 again, and a message from before the reset that is not handled yet stays
//! beside the one of the same step after it; `AckDelivery` removes the one stored first
//! (the lowest `id`), which is the one its recipient handles first. Rows of version 3 keep
//! their values (never reset, confirmed). An older database is migrated when opened for writing;
//! read-only [`inspect`] reads it as it is (no pending deliveries, no cross-runtime
//! channels). `bilateral_channels` and `pending_outbound` (version 1, pymfp's layout) are
//! what `import-pymfp` fills and [`SqliteStorage::apply_ops`] writes; the runtime's
//! cross-runtime operations use the version-3 tables.
//!
//! Timestamps are Unix seconds. Integers are SQLite's signed 64-bit: every `u64` (step,
//! counter, id) is converted with a check — a value above `i64::MAX` fails its batch, it never
//! wraps. Every row read back is validated (sizes, enums, ranges, references, decryption);
//! a violation is `StorageError::Corrupt("table.column: …")`, never a panic.
//!
//! ## Encryption at rest
//!
//! Every sensitive cell — `channels.local_state`, `sg_cache.sg_value`,
//! `bilateral_channels.ratchet_state` and `.shared_prng_seed`, `pending_outbound.wire`,
//! `inbox.payload`, `remote_channels.tx_ratchet`, `.tx_prng_seed`, `.rx_ratchet` and
//! `.rx_prng_seed`, `remote_outbound.wire` — is
//! AES-256-GCM encrypted with a **fresh random 12-byte nonce per write** (ring's
//! `SystemRandom`) under a key bound to its table, column and row:
//!
//! ```text
//! storage_key = HMAC-SHA-256(master_key, "mfp-storage/v1/storage-key" ‖ salt)
//! key_id      = HMAC-SHA-256(master_key, "mfp-storage/v1/key-id")[..8]
//! cell_key    = HMAC-SHA-256(storage_key, lp(table) ‖ lp(column) ‖ row_id)
//! blob        = 0x01 ‖ key_id ‖ nonce(12) ‖ ciphertext ‖ tag(16)          (69 bytes for a state)
//! aad         = 0x01 ‖ key_id ‖ lp(table) ‖ lp(column) ‖ lp(row_id) ‖ lp(context)
//! ```
//!
//! `lp(x) = u16be(len x) ‖ x`. Row ids: the channel id (of a channel or a cross-runtime
//! channel), the bilateral id, `u64be(id)` of a `pending_outbound` message, `channel_id ‖
//! u64be(step)` of an inbox or `remote_outbound` message, `"sg"`. The context binds the
//! other columns a cell must agree with: `u64be(step)` for channel and bilateral states, the
//! chain's own step (`tx_step` or `rx_step`) for the secrets of a cross-runtime channel,
//! `bilateral_id ‖ channel_id ‖ u64be(step)` for `pending_outbound` messages, the peer
//! runtime id for `remote_outbound` messages, `recipient ‖ sender ‖ message_id ‖
//! correlation_id` for inbox messages — so moving a cell to another row, column or chain, or
//! changing its step, peer, sender or recipient is detected.
//!
//! Design choice: the storage key is derived from a random per-database `salt`, not from the
//! runtime identity as in pymfp. It is therefore available before the runtime's `Meta` op
//! arrives, the runtime identity may change without re-encryption, and the rotation tool does
//! not need it. The key id lets a rotation (or an operator) tell cells of different master
//! keys apart; opening with another key fails with `WrongKey` before anything is written, so
//! a database never mixes keys. [`MasterKey`] accepts exactly 32 raw bytes that are not
//! printable text, or 64 hex digits (one trailing newline tolerated); encryption can never be
//! switched off. [`MasterKey::generate_file`] creates a new key file (mode 0600).
//!
//! ## Write path: group commit
//!
//! A dedicated writer thread owns a current-thread tokio runtime and the only read-write
//! connection. [`Storage::apply`](mfp_runtime::storage::Storage::apply) puts the batch on an
//! unbounded channel and returns a pending ticket — it never blocks on I/O. Each round, the
//! writer takes every batch queued at that moment (up to
//! [`StorageConfig::max_batches_per_commit`]), applies them in submission order in ONE
//! `BEGIN IMMEDIATE` transaction (one fsync for all of them under [`Durability::Sync`]),
//! commits, and completes the tickets in order.
//!
//! The transaction is first sent to SQLite as one query — `BEGIN IMMEDIATE`, every
//! statement, `COMMIT` — with every value bound as a parameter (no input ever becomes SQL
//! syntax), because every statement sent separately costs a round trip to sqlx's SQLite
//! worker thread (several times the cost of the statement itself). sqlx keeps the prepared
//! query for the next transaction of the same shape, so the usual transactions are not
//! parsed again; a long one is cut into queries of at most 32 statements. Writes that a later
//! write of the same transaction replaces (every Sg but the last, an advance of a channel
//! followed by another) are left out. If a batch violates a constraint (or carries a value
//! out of range), the transaction is rolled back and redone statement by statement with a
//! savepoint per batch: that batch is rolled back alone and only its ticket fails. If the
//! transaction itself fails (lock timeout, I/O, commit), everything is rolled back and every
//! ticket of the round fails — each batch stays all-or-nothing either way.
//!
//! A round of nothing but inbox removals (a handler returned; nobody waits for those) waits
//! up to 5 ms for the next batch and commits in its transaction, or before the next read,
//! rotation or close; a crash meanwhile only means those messages are delivered again,
//! flagged.
//!
//! ## Circuit breaker
//!
//! Failed transactions (not single-batch constraint failures) are counted; after
//! [`BreakerConfig::failure_threshold`] consecutive ones the breaker opens for
//! [`BreakerConfig::cool_down`]: `apply` returns `Ticket::ready(Err(CircuitOpen))` at once and
//! batches already queued fail with `CircuitOpen`. Then one trial batch is admitted
//! (half-open); its success closes the breaker, its failure re-opens it.
//!
//! ## Semantics, and what the runtime must send
//!
//! Same op sequences give the same [`Snapshot`](mfp_runtime::storage::Snapshot) as
//! [`MemoryStorage`](mfp_runtime::storage::MemoryStorage), with these deliberate
//! differences, all of which reject or ignore sequences the runtime never produces:
//!
//! * referential integrity is enforced: `PutChannel` needs both agents stored first,
//!   `PutRemoteChannel` its local agent, `PutOutbound` its cross-runtime channel, and
//!   `DeleteAgent` fails while an open channel (local or cross-runtime) still references the
//!   agent (its closed channels are deleted with it);
//! * a closed channel's state is wiped (`local_state` = NULL; the four chain secrets of a
//!   cross-runtime channel = NULL), so `AdvanceChannel`, `AdvanceRemoteTx`,
//!   `AdvanceRemoteRx`, `ChannelFailures` and `ChannelStatus` on a closed channel do nothing
//!   (MemoryStorage would revive it with the all-zero state) — but a conditional
//!   `AdvanceRemoteRx` (`from: Some(step)`) on a closed channel fails its batch with
//!   `Conflict`, in both; `ChannelStatus { Closed }` is
//!   `CloseChannel` (for a cross-runtime channel, the outbound log is dropped too, which
//!   MemoryStorage does only for `CloseChannel`);
//! * `PutOutbound` on a closed cross-runtime channel does nothing (a closed channel's log
//!   stays empty); `load` returns the log of open channels only;
//! * `TruncateOutbound { from }` above `i64::MAX` removes nothing (no stored step is that
//!   large);
//! * `AckOutbound { next }` above `i64::MAX` removes the channel's whole log (every stored
//!   step is below it), as in MemoryStorage;
//! * agent names must be unique among agents that are not terminated;
//! * a value above `i64::MAX` (step, counter) fails its batch.
//!
//! The runtime should send `Meta` first (`load` returns `None` until it is stored), and must
//! put into ONE batch everything that has to survive a crash together: `AdvanceChannel` with
//! the new `Sg` for each message; `PutChannel` with the agents' new states and the new `Sg`
//! when a channel is established; `CloseChannel` with `Sg(None)` or the new `Sg` and the
//! agents' states; `PutAgent` with `Meta` (new agent counter) when an agent is bound. It must
//! also persist quarantine decisions (`ChannelStatus`, `PutAgent` with the reason), including
//! automatic ones, and increments of `validation_failures` via `PutChannel` if they must
//! survive a restart (pymfp persists neither). On a cross-runtime channel: `AdvanceRemoteTx`
//! with the `PutOutbound` of the message it sealed; `AdvanceRemoteRx` with the `PutDelivery`
//! of the message it opened; `AckOutbound` when the peer acknowledges.
//!
//! ## A crashed SQLite worker
//!
//! sqlx runs each connection on a worker thread, and panics there on some damaged schemas
//! (non-UTF-8 text); a future waiting on that thread could then wait for ever. This crate
//! checks the schema text before anything else, names its connections' worker threads
//! `mfp-sqlite-<n>-<m>`, and installs (once, on the first open) a panic hook that records the
//! panics of those threads and then calls the hook that was installed before it. A crash
//! while a file is opened or inspected is `Corrupt`; later it fails every request of that
//! store with `Backend`. An application that replaces the panic hook after opening a store
//! loses that detection, but every wait on the writer stays bounded by
//! [`StorageConfig::writer_timeout`].
//!
//! ## One store per database
//!
//! One store owns a database at a time: [`SqliteStorage::open`] locks the file by its
//! identity — device and inode in a process-wide registry, an `flock` on
//! `<canonical path>.mfp-lock`, and on Linux an `flock` on the database file itself — so a
//! second open through the same path, a symlink or a hard link fails with `InUse`. (Two
//! stores on one file would encrypt different payloads under the same key and nonce.) The
//! kernel releases the locks when the process dies.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

mod breaker;
mod cell;
mod check;
mod config;
mod db;
mod key;
mod lock;
pub mod pymfp;
mod records;
mod schema;
mod storage;
mod watch;
mod writer;

pub use breaker::StorageStats;
pub use check::{CheckReport, check};
pub use config::{BreakerConfig, Durability, StorageConfig};
pub use key::{MASTER_KEY_LEN, MasterKey};
pub use records::{BilateralRecord, BilateralStatus, FederationSnapshot, OutboundRecord, WriteOp};
pub use schema::SCHEMA_VERSION;
pub use storage::{Inspection, SqliteStorage, inspect, rotate_master_key};

pub use mfp_runtime::storage::StorageError;

/// Opens the SQLite store at `storage.path` and builds a runtime on it: a new runtime if
/// the file is new, otherwise the stored one, restored (its agents then wait for
/// [`mfp_runtime::Runtime::attach_named`]). Shorthand for
/// `Runtime::builder(config).storage(SqliteStorage::open(storage)?).build()`.
///
/// ```
/// use mfp_runtime::{RuntimeConfig, mfp_send};
/// use mfp_storage::{MasterKey, StorageConfig, open_runtime};
///
/// # fn main() -> Result<(), mfp_runtime::Error> {
/// # let dir = std::env::temp_dir().join(format!("mfp-open-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).ok();
/// let key = MasterKey::generate()?; // in production: MasterKey::from_file / from_env
/// let storage = StorageConfig::new(dir.join("runtime.db"), key.clone());
/// let runtime = open_runtime(RuntimeConfig::default(), storage.clone())?;
/// let alice = runtime.bind_named("alice", |_, _| {})?;
/// let bob = runtime.bind_named("bob", |_, _| {})?;
/// let channel = runtime.establish_channel(&alice.id(), &bob.id())?;
/// mfp_send(&alice, channel, b"kept across restarts")?;
/// runtime.shutdown();
/// drop(runtime);
///
/// // Later: the same runtime, where it left off.
/// let runtime = open_runtime(RuntimeConfig::default(), storage)?;
/// let alice = runtime.attach_named("alice", |_, _| {})?;
/// let _bob = runtime.attach_named("bob", |_, _| {})?;
/// assert_eq!(mfp_send(&alice, channel, b"again")?.step, 1);
/// # runtime.shutdown();
/// # drop(runtime);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`mfp_runtime::Error::Storage`] if the store cannot be opened or holds an inconsistent
/// runtime; any error of [`mfp_runtime::RuntimeBuilder::build`].
pub fn open_runtime(
    config: mfp_runtime::RuntimeConfig,
    storage: StorageConfig,
) -> Result<mfp_runtime::Runtime, mfp_runtime::Error> {
    mfp_runtime::Runtime::builder(config).storage(SqliteStorage::open(storage)?).build()
}
