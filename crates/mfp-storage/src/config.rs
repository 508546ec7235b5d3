//! Configuration of a [`crate::SqliteStorage`].

use std::path::PathBuf;
use std::time::Duration;

use crate::key::MasterKey;

/// How durable a commit is when its ticket reports success.
///
/// Both settings use SQLite's write-ahead log, and both are crash-safe in the sense that the
/// database is never left half-written: a batch is either entirely there after a restart or
/// not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: the log is flushed to stable storage (fsync) on every commit, so a
    /// committed batch survives a power loss or an operating-system crash.
    #[default]
    Sync,
    /// `synchronous=NORMAL`: the log is flushed only at checkpoints. A committed batch
    /// survives a crash of the process but the last commits may be lost on power loss or an
    /// operating-system crash (the database stays consistent). Much faster per commit.
    Normal,
}

/// Circuit breaker settings: after `failure_threshold` consecutive failed transactions the
/// breaker opens and every `apply` ([`crate::SqliteStorage::apply_ops`]) fails at once with
/// `StorageError::CircuitOpen` for `cool_down`; then a single trial batch is let through
/// (half-open) and its outcome closes or re-opens the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed transactions that open the breaker (at least 1).
    pub failure_threshold: u32,
    /// How long the breaker stays open before a trial.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, cool_down: Duration::from_secs(30) }
    }
}

/// Everything [`crate::SqliteStorage::open`] needs.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The database file. Created (with its schema) if it does not exist.
    pub path: PathBuf,
    /// The master key every cell key is derived from.
    pub master_key: MasterKey,
    /// Commit durability.
    pub durability: Durability,
    /// How long a statement waits for a lock held by another connection before failing.
    pub busy_timeout: Duration,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// Most batches committed in one transaction (group commit). At least 1.
    pub max_batches_per_commit: usize,
    /// Create the database when `path` does not exist (otherwise that is an error).
    pub create_if_missing: bool,
    /// Longest wait for the writer thread: opening (validation included), `load`, a key
    /// rotation, closing. A wait that exceeds it fails with `StorageError::Backend` instead of
    /// blocking for ever (a writer that stops answering is a bug or a damaged file).
    pub writer_timeout: Duration,
}

impl StorageConfig {
    /// Defaults: [`Durability::Sync`], a 5 s busy timeout, the default breaker (5 failures,
    /// 30 s), up to 256 batches per commit, create if missing, a 10-minute writer timeout.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>, master_key: MasterKey) -> Self {
        Self {
            path: path.into(),
            master_key,
            durability: Durability::Sync,
            busy_timeout: Duration::from_secs(5),
            breaker: BreakerConfig::default(),
            max_batches_per_commit: 256,
            create_if_missing: true,
            writer_timeout: Duration::from_secs(600),
        }
    }

    /// Sets the durability.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the busy timeout.
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets the longest wait for the writer thread (see [`StorageConfig::writer_timeout`]).
    #[must_use]
    pub fn writer_timeout(mut self, timeout: Duration) -> Self {
        self.writer_timeout = timeout;
        self
    }

    /// Sets the circuit breaker.
    #[must_use]
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }
}
