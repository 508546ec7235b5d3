//! Opening a database safely: look at the file, classify and validate it read-only, and only
//! then open it for writing, migrate and initialise the keys.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use mfp_runtime::storage::StorageError;
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row};

use crate::cell::CellCipher;
use crate::config::{Durability, StorageConfig};
use crate::db::{self, corrupt, get, get_fixed, sql_error};
use crate::key::MasterKey;
use crate::records::FederationSnapshot;

/// The embedded migrations (`crates/mfp-storage/migrations`).
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// `PRAGMA application_id` of our databases: ASCII "MFPS".
pub(crate) const APPLICATION_ID: i64 = 0x4D46_5053;
/// The schema version this build writes (`mfp_schema.version`).
pub const SCHEMA_VERSION: i64 = 4;

/// Every table of our schema.
const OUR_TABLES: &[&str] = &[
    "mfp_schema",
    "mfp_keys",
    "runtime_meta",
    "agents",
    "channels",
    "sg_cache",
    "bilateral_channels",
    "pending_outbound",
];
/// Tables that hold runtime or federation data (those of later versions are checked when
/// present).
const DATA_TABLES: &[&str] = &[
    "runtime_meta",
    "agents",
    "channels",
    "sg_cache",
    "bilateral_channels",
    "pending_outbound",
    "inbox",
    "remote_channels",
    "remote_outbound",
    "peers",
];
/// Tables added by schema version 2 (a version-1 database is migrated when opened).
const V2_TABLES: &[&str] = &["inbox"];
/// Tables added by schema version 3 (cross-runtime channels, their outbound log, peers).
const V3_TABLES: &[&str] = &["remote_channels", "remote_outbound", "peers"];
/// sqlx's migration bookkeeping table.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";
/// Tables that identify a pymfp database.
const PYMFP_TABLES: &[&str] = &["runtime_meta", "agents", "channels", "bilateral_channels", "global_state_cache"];

/// What is at the path before anything is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileState {
    /// Nothing.
    Missing,
    /// A zero-length file (SQLite treats it as an empty database).
    Empty,
    /// A file with a plausible SQLite header.
    Sqlite,
}

fn u16_at(h: &[u8], at: usize) -> u32 {
    match h.get(at..at + 2) {
        Some(&[a, b]) => u32::from(u16::from_be_bytes([a, b])),
        _ => 0,
    }
}

fn u32_at(h: &[u8], at: usize) -> u32 {
    match h.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Length of the write-ahead log beside `path` (0 if there is none).
pub(crate) fn wal_len(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(std::path::PathBuf::from(wal)).map_or(0, |m| m.len())
}

/// Smallest write-ahead log that can hold a frame (its header is 32 bytes).
const WAL_HEADER_LEN: u64 = 32;

/// Looks at the file without SQLite: is it there, is it an SQLite database, is it complete?
///
/// Committed pages may live in the write-ahead log (`<path>-wal`) rather than in the file:
/// after a crash or a full disk the file can be shorter than its header says, or even empty,
/// while the log holds every page. When a log with content is present the size checks are
/// left to SQLite, which reads through the log (`PRAGMA quick_check` then decides).
pub(crate) fn inspect_file(path: &Path) -> Result<FileState, StorageError> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => return Err(StorageError::Backend(format!("{shown}: {e}"))),
    };
    if !meta.is_file() {
        return Err(StorageError::Backend(format!("{shown}: not a regular file")));
    }
    let wal = wal_len(path);
    let has_wal = wal >= WAL_HEADER_LEN;
    let len = meta.len();
    if len == 0 {
        if has_wal {
            // SQLite would take the empty file for a new database and ignore the log.
            return Err(StorageError::Corrupt(format!(
                "{shown} is empty but {shown}-wal holds {wal} bytes: the database's pages may be in that log. Do not \
                 delete the log or start a runtime on it; restore the database file from a backup"
            )));
        }
        return Ok(FileState::Empty);
    }
    let mut header = Vec::with_capacity(100);
    std::fs::File::open(path)
        .and_then(|f| f.take(100).read_to_end(&mut header))
        .map_err(|e| StorageError::Backend(format!("{shown}: {e}")))?;
    if header.len() < 100 && has_wal {
        return Ok(FileState::Sqlite);
    }
    if header.len() < 100 || header.get(..16) != Some(b"SQLite format 3\0") {
        return Err(StorageError::Corrupt(format!("{shown}: not an SQLite database")));
    }
    let page_size = match u16_at(&header, 16) {
        1 => 65536,
        p if p.is_power_of_two() && (512..=32768).contains(&p) => p,
        _ => return Err(StorageError::Corrupt(format!("{shown}: damaged SQLite header (page size)"))),
    };
    if has_wal {
        return Ok(FileState::Sqlite);
    }
    if len % u64::from(page_size) != 0 {
        return Err(StorageError::Corrupt(format!(
            "{shown}: truncated or damaged (size {len} is not a multiple of the page size {page_size}, and there is \
             no write-ahead log)"
        )));
    }
    let change_counter = u32_at(&header, 24);
    let pages = u32_at(&header, 28);
    let valid_for = u32_at(&header, 92);
    if pages > 0 && valid_for == change_counter && u64::from(pages) * u64::from(page_size) > len {
        return Err(StorageError::Corrupt(format!(
            "{shown}: truncated (the header counts {pages} pages of {page_size} bytes, the file has {len} bytes, and \
             there is no write-ahead log)"
        )));
    }
    Ok(FileState::Sqlite)
}

/// A connection that cannot write to the database file.
///
/// SQLite's read-only mode still needs the `-shm` index beside a WAL database, which it
/// cannot create in a read-only directory (a backup on read-only media, say). Then, if there
/// is no write-ahead log with content, the file alone is the whole database and it is opened
/// `immutable` (no locks, no side files); a log with content needs writable storage.
pub(crate) async fn connect_read_only(path: &Path) -> Result<SqliteConnection, StorageError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .disable_statement_logging()
        .thread_name(crate::watch::worker_name);
    let context = format!("open {} read-only", path.display());
    let first = match options.clone().connect().await {
        // The header's schema cookie: needs the WAL index, parses nothing.
        Ok(mut conn) => match sqlx::query("PRAGMA schema_version").fetch_all(&mut conn).await {
            Ok(_) => return Ok(conn),
            Err(e) => {
                let _ = conn.close().await;
                e
            }
        },
        Err(e) => e,
    };
    // SQLITE_READONLY (8), SQLITE_CANTOPEN (14): the side files cannot be created.
    if !matches!(db::sqlite_code(&first), Some(8 | 14)) {
        return Err(sql_error(&context, &first));
    }
    let wal = wal_len(path);
    if wal >= WAL_HEADER_LEN {
        return Err(StorageError::Backend(format!(
            "{}: cannot read it here ({first}): its write-ahead log ({}-wal, {wal} bytes) holds committed data and \
             SQLite needs to write its index beside it; copy the database with its -wal file to writable storage and \
             check the copy",
            path.display(),
            path.display()
        )));
    }
    options.immutable(true).connect().await.map_err(|e| sql_error(&context, &e))
}

/// Fails unless the database file (and its directory, for the side files) can be written:
/// a read-only database would open, and then every write would fail.
pub(crate) fn check_writable(path: &Path) -> Result<(), StorageError> {
    let refuse = |what: String| {
        StorageError::Backend(format!(
            "{}: {what}; a runtime needs to write its database. Fix the permissions or the mount, or open a \
             writable copy (`mfp-storage check` reads read-only files)",
            path.display()
        ))
    };
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(path) {
        return Err(refuse(format!("the file is read-only ({e})")));
    }
    Ok(())
}

/// Probes for a read-only connection (the file or its directory not writable): a write
/// transaction is begun and rolled back.
async fn probe_writable(conn: &mut SqliteConnection, path: &Path) -> Result<(), StorageError> {
    match sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK;").execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) if db::sqlite_code(&e) == Some(8) => Err(StorageError::Backend(format!(
            "{}: the database is read-only ({e}); a runtime needs to write it. Fix the permissions of the file and \
             its directory, or the mount (`mfp-storage check` reads read-only files)",
            path.display()
        ))),
        Err(e) => Err(sql_error("begin a write transaction", &e)),
    }
}

/// What an existing SQLite file holds.
#[derive(Debug)]
pub(crate) enum DbKind {
    /// No tables: a new database can be created in it.
    Empty,
    /// Our schema.
    Ours {
        /// The key row, unless initialisation was interrupted.
        keys: Option<KeysRow>,
        /// Whether embedded migrations are not applied yet.
        needs_migration: bool,
        /// `mfp_schema.version`.
        version: i64,
    },
}

/// The row of `mfp_keys`.
#[derive(Debug, Clone)]
pub(crate) struct KeysRow {
    pub(crate) salt: [u8; 32],
    pub(crate) key_id: [u8; 8],
    pub(crate) key_check: Vec<u8>,
}

async fn table_names(conn: &mut SqliteConnection) -> Result<BTreeSet<String>, StorageError> {
    let rows =
        sqlx::query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| sql_error("list tables", &e))?;
    rows.iter().map(|r| get::<String>(r, "sqlite_schema", "name")).collect()
}

/// Runs SQLite's structural check (read-only).
pub(crate) async fn quick_check(conn: &mut SqliteConnection) -> Result<(), StorageError> {
    let rows =
        sqlx::query("PRAGMA quick_check").fetch_all(&mut *conn).await.map_err(|e| sql_error("quick_check", &e))?;
    let first: Option<String> = rows.first().and_then(|r| r.try_get::<String, _>(0).ok());
    if first.as_deref() == Some("ok") {
        Ok(())
    } else {
        Err(StorageError::Corrupt(format!(
            "database structure is damaged: {}",
            first.unwrap_or_else(|| "no result from quick_check".into())
        )))
    }
}

async fn scalar_i64(conn: &mut SqliteConnection, sql: &'static str) -> Result<i64, StorageError> {
    let row = sqlx::query(sql).fetch_one(&mut *conn).await.map_err(|e| sql_error(sql, &e))?;
    row.try_get::<i64, _>(0).map_err(|e| StorageError::Corrupt(format!("{sql}: {e}")))
}

/// Refuses a schema whose text is not UTF-8. SQLite accepts such bytes in names and declared
/// types, but the driver panics on them (in its worker thread) as soon as a statement returns
/// such a column, so this runs first, reading the text as blobs.
pub(crate) async fn check_schema_text(conn: &mut SqliteConnection) -> Result<(), StorageError> {
    let rows = sqlx::query("SELECT CAST(name AS BLOB), CAST(sql AS BLOB) FROM sqlite_schema")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error("read the schema", &e))?;
    for row in &rows {
        let name: Option<Vec<u8>> = row.try_get(0).map_err(|e| StorageError::Corrupt(format!("schema: {e}")))?;
        let sql: Option<Vec<u8>> = row.try_get(1).map_err(|e| StorageError::Corrupt(format!("schema: {e}")))?;
        let name = name.unwrap_or_default();
        let shown = String::from_utf8_lossy(&name).into_owned();
        if std::str::from_utf8(&name).is_err() || sql.as_deref().is_some_and(|t| std::str::from_utf8(t).is_err()) {
            return Err(StorageError::Corrupt(format!(
                "schema: the definition of {shown:?} is not valid UTF-8 text (the file is damaged)"
            )));
        }
    }
    Ok(())
}

/// Classifies an existing SQLite database without modifying it, after SQLite's structural
/// check. Foreign databases (including pymfp's) and databases written by a newer version are
/// `Corrupt` errors.
pub(crate) async fn classify(conn: &mut SqliteConnection) -> Result<DbKind, StorageError> {
    check_schema_text(conn).await?;
    quick_check(conn).await?;
    classify_schema(conn).await
}

/// [`classify`] without the structural check.
async fn classify_schema(conn: &mut SqliteConnection) -> Result<DbKind, StorageError> {
    check_schema_text(conn).await?;
    let app_id = scalar_i64(conn, "PRAGMA application_id").await?;
    let tables = table_names(conn).await?;
    if app_id != APPLICATION_ID {
        let only_bookkeeping = tables.iter().all(|t| t == MIGRATIONS_TABLE);
        if only_bookkeeping {
            let applied =
                if tables.is_empty() { 0 } else { scalar_i64(conn, "SELECT count(*) FROM _sqlx_migrations").await? };
            if applied == 0 {
                return Ok(DbKind::Empty);
            }
        }
        if app_id == 0 && PYMFP_TABLES.iter().all(|t| tables.contains(*t)) {
            return Err(StorageError::Corrupt(
                "this is a pymfp database, not an mfp-storage one (import it with `mfp-storage import-pymfp`)".into(),
            ));
        }
        let names: Vec<&str> = tables.iter().map(String::as_str).take(8).collect();
        return Err(StorageError::Corrupt(format!(
            "foreign database (application_id {app_id:#x}, tables: {}); refusing to touch it",
            names.join(", ")
        )));
    }
    for t in OUR_TABLES.iter().chain(std::iter::once(&MIGRATIONS_TABLE)) {
        if !tables.contains(*t) {
            return Err(StorageError::Corrupt(format!("schema: table {t} is missing")));
        }
    }
    let rows = sqlx::query("SELECT id, application, version FROM mfp_schema")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error("read mfp_schema", &e))?;
    let version = match rows.as_slice() {
        [row] => {
            let app: String = get(row, "mfp_schema", "application")?;
            if app != "mfp-storage" {
                return Err(corrupt("mfp_schema", "application", "not an mfp-storage database"));
            }
            get::<i64>(row, "mfp_schema", "version")?
        }
        _ => return Err(corrupt("mfp_schema", "id", "expected exactly one row")),
    };
    if version > SCHEMA_VERSION {
        return Err(StorageError::Corrupt(format!(
            "schema version {version} was written by a newer mfp-storage (this build supports {SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        return Err(corrupt("mfp_schema", "version", "invalid version"));
    }
    for (since, added) in [(2, V2_TABLES), (3, V3_TABLES)] {
        if version < since {
            continue;
        }
        for t in added {
            if !tables.contains(*t) {
                return Err(StorageError::Corrupt(format!("schema: table {t} is missing")));
            }
        }
    }
    let applied = sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error("read _sqlx_migrations", &e))?;
    let mut applied_versions = BTreeSet::new();
    for row in &applied {
        let v: i64 = get(row, MIGRATIONS_TABLE, "version")?;
        let checksum: Vec<u8> = get(row, MIGRATIONS_TABLE, "checksum")?;
        let success: bool = get(row, MIGRATIONS_TABLE, "success")?;
        let known = MIGRATOR.iter().find(|m| m.version == v && !m.migration_type.is_down_migration());
        match known {
            None => {
                return Err(StorageError::Corrupt(format!(
                    "migration {v} is unknown to this build (database written by a newer mfp-storage?)"
                )));
            }
            Some(m) if *m.checksum != *checksum => {
                return Err(StorageError::Corrupt(format!("migration {v} differs from this build's")));
            }
            Some(_) if !success => {
                return Err(StorageError::Corrupt(format!("migration {v} did not complete")));
            }
            Some(_) => {
                applied_versions.insert(v);
            }
        }
    }
    let needs_migration =
        MIGRATOR.iter().any(|m| !m.migration_type.is_down_migration() && !applied_versions.contains(&m.version));
    let keys = read_keys(conn).await?;
    Ok(DbKind::Ours { keys, needs_migration, version })
}

/// Reads the `mfp_keys` row, if any.
pub(crate) async fn read_keys(conn: &mut SqliteConnection) -> Result<Option<KeysRow>, StorageError> {
    let rows = sqlx::query("SELECT id, salt, key_id, key_check FROM mfp_keys")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error("read mfp_keys", &e))?;
    match rows.as_slice() {
        [] => Ok(None),
        [row] => Ok(Some(KeysRow {
            salt: get_fixed(row, "mfp_keys", "salt")?,
            key_id: get_fixed(row, "mfp_keys", "key_id")?,
            key_check: get(row, "mfp_keys", "key_check")?,
        })),
        _ => Err(corrupt("mfp_keys", "id", "more than one row")),
    }
}

async fn data_tables_empty(conn: &mut SqliteConnection) -> Result<bool, StorageError> {
    let present = table_names(conn).await?;
    for t in DATA_TABLES.iter().filter(|t| present.contains(**t)) {
        // The table names are our own constants, never input.
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {t})");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| sql_error(&format!("read {t}"), &e))?;
        let any: i64 = row.try_get(0).map_err(|e| StorageError::Corrupt(format!("{t}: {e}")))?;
        if any != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The cipher for `keys`, after checking that `master` is the key the database was written
/// with (`WrongKey` otherwise).
pub(crate) fn cipher_for(master: &MasterKey, keys: &KeysRow) -> Result<CellCipher, StorageError> {
    let cipher = CellCipher::new(master, &keys.salt);
    db::verify_key_check(&cipher, &keys.key_id, &keys.key_check)?;
    Ok(cipher)
}

/// Everything read back by a full validation.
#[derive(Debug)]
pub(crate) struct Validated {
    pub(crate) snapshot: Option<mfp_runtime::storage::Snapshot>,
    pub(crate) federation: FederationSnapshot,
    pub(crate) version: i64,
    pub(crate) key_id: Option<[u8; 8]>,
}

/// Classifies the database and, if it is ours, checks the key and reads and validates every
/// row — all on a read-only connection.
pub(crate) async fn validate_read_only(path: &Path, master: &MasterKey) -> Result<(DbKind, Validated), StorageError> {
    let mut conn = connect_read_only(path).await?;
    let result = validate_on(&mut conn, master).await;
    let _ = conn.close().await;
    result
}

async fn validate_on(conn: &mut SqliteConnection, master: &MasterKey) -> Result<(DbKind, Validated), StorageError> {
    let kind = classify(conn).await?;
    let mut validated =
        Validated { snapshot: None, federation: FederationSnapshot::default(), version: 0, key_id: None };
    if let DbKind::Ours { keys, version, .. } = &kind {
        validated.version = *version;
        match keys {
            Some(keys) => {
                let cipher = cipher_for(master, keys)?;
                validated.key_id = Some(cipher.key_id());
                let mut tx = conn.begin().await.map_err(|e| sql_error("begin read", &e))?;
                validated.snapshot = db::read_snapshot(&mut tx, &cipher).await?;
                validated.federation = db::read_federation(&mut tx, &cipher).await?;
                let _ = tx.rollback().await;
            }
            None => {
                if !data_tables_empty(conn).await? {
                    return Err(corrupt("mfp_keys", "id", "key row missing although data is stored"));
                }
            }
        }
    }
    Ok((kind, validated))
}

/// An open, migrated, initialised read-write connection.
pub(crate) struct Opened {
    pub(crate) conn: SqliteConnection,
    pub(crate) cipher: CellCipher,
    pub(crate) created: bool,
}

fn empty_refused(path: &Path, what: &str) -> StorageError {
    StorageError::Corrupt(format!(
        "{} is {what}, not an mfp-storage database, and create_if_missing is off: refusing to start a new, empty \
         runtime in it (a runtime's database that lost its content?). Check the path, restore the file from a \
         backup, or delete it / enable create_if_missing to start afresh",
        path.display()
    ))
}

/// Opens (or creates) the database of `config` for writing. Nothing is written to an existing
/// file before it has been validated read-only.
pub(crate) async fn open_database(config: &StorageConfig) -> Result<Opened, StorageError> {
    let path = config.path.as_path();
    let state = inspect_file(path)?;
    let mut created = false;
    match state {
        FileState::Missing if !config.create_if_missing => {
            return Err(StorageError::Backend(format!(
                "{}: database does not exist (check the path; create_if_missing is off)",
                path.display()
            )));
        }
        FileState::Empty if !config.create_if_missing => return Err(empty_refused(path, "an empty file")),
        FileState::Missing | FileState::Empty => created = true,
        FileState::Sqlite => {
            check_writable(path)?;
            let (kind, _) = validate_read_only(path, &config.master_key).await?;
            if matches!(kind, DbKind::Empty) {
                if !config.create_if_missing {
                    return Err(empty_refused(path, "an SQLite database without tables"));
                }
                created = true;
            }
        }
    }

    let synchronous = match config.durability {
        Durability::Sync => SqliteSynchronous::Full,
        Durability::Normal => SqliteSynchronous::Normal,
    };
    // Every per-connection setting here is repeated by `open_fast` for the writer's second
    // connection: keep the two in step.
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(matches!(state, FileState::Missing))
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .foreign_keys(true)
        .busy_timeout(config.busy_timeout)
        // Overwrite deleted content (old ciphertexts) where that costs no extra I/O.
        .pragma("secure_delete", SECURE_DELETE)
        // Statements carry (encrypted) values, bound or inline (the rare paths): keep them
        // out of logs.
        .disable_statement_logging()
        .thread_name(crate::watch::worker_name)
        .connect()
        .await
        .map_err(|e| sql_error(&format!("open {}", path.display()), &e))?;

    let result = match probe_writable(&mut conn, path).await {
        Ok(()) => initialise(&mut conn, &config.master_key).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(cipher) => Ok(Opened { conn, cipher, created }),
        Err(e) => {
            let _ = conn.close().await;
            Err(e)
        }
    }
}

/// `PRAGMA secure_delete` of both of the writer's connections: overwrite deleted content (old
/// ciphertexts) where that costs no extra I/O.
const SECURE_DELETE: &str = "FAST";

/// `PRAGMA synchronous` for a durability (`FULL` is 2, `NORMAL` 1 when read back).
pub(crate) const fn synchronous_pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Sync => "FULL",
        Durability::Normal => "NORMAL",
    }
}

/// Room in the fast connection's statement cache: every statement text of
/// [`db::statements`] (about 30) plus `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK`, with margin,
/// so that no statement of the fast path is ever parsed twice.
pub(crate) const FAST_STATEMENT_CACHE: usize = 64;

/// Opens the writer's second connection, for its fast path (see `crate::writer`): rusqlite,
/// driven on the writer thread itself, to the database that [`open_database`] has opened,
/// validated and migrated. It gets the per-connection settings of the sqlx connection —
/// `synchronous` for `config.durability`, `foreign_keys`, `busy_timeout`, `secure_delete` —
/// and checks that the file is in WAL mode (a setting of the file, made by `open_database`).
pub(crate) fn open_fast(config: &StorageConfig) -> Result<rusqlite::Connection, StorageError> {
    use rusqlite::OpenFlags;
    let path = config.path.as_path();
    let context = format!("open {} for the writer's fast path", path.display());
    let fail = |e: rusqlite::Error| db::rusqlite_error(&context, &e);
    // No SQLITE_OPEN_CREATE: the file exists (open_database made it). The path is read the
    // way sqlx reads it (SQLITE_OPEN_URI, a private cache), so both open the same file.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_PRIVATE_CACHE;
    let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(fail)?;
    conn.busy_timeout(config.busy_timeout).map_err(fail)?;
    conn.pragma_update(None, "synchronous", synchronous_pragma(config.durability)).map_err(fail)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(fail)?;
    conn.pragma_update(None, "secure_delete", SECURE_DELETE).map_err(fail)?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).map_err(fail)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Backend(format!(
            "{}: the database is in journal mode {mode:?}, not WAL, on the writer's second connection (another \
             process changed it?); close every other connection to it and open it again",
            path.display()
        )));
    }
    conn.set_prepared_statement_cache_capacity(FAST_STATEMENT_CACHE);
    Ok(conn)
}

async fn initialise(conn: &mut SqliteConnection, master: &MasterKey) -> Result<CellCipher, StorageError> {
    // The file may have changed since it was validated: classify it again on this connection
    // (cheap next to the full validation) before migrating.
    if let DbKind::Ours { needs_migration: false, keys: Some(keys), .. } = classify_schema(conn).await? {
        return cipher_for(master, &keys);
    }
    MIGRATOR.run(&mut *conn).await.map_err(|e| StorageError::Backend(format!("migration failed: {e}")))?;

    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| sql_error("begin", &e))?;
    let cipher = match read_keys(&mut tx).await? {
        Some(keys) => cipher_for(master, &keys)?,
        None => {
            if !data_tables_empty(&mut tx).await? {
                return Err(corrupt("mfp_keys", "id", "key row missing although data is stored"));
            }
            let mut salt = [0u8; 32];
            SystemRandom::new()
                .fill(&mut salt)
                .map_err(|_| StorageError::Backend("the system random generator failed".into()))?;
            let cipher = CellCipher::new(master, &salt);
            let check = cipher.seal(db::key_check_cell(), db::KEY_CHECK_PLAINTEXT)?;
            sqlx::query("INSERT INTO mfp_keys (id, salt, key_id, key_check, created_at) VALUES (1, ?, ?, ?, ?)")
                .bind(salt.to_vec())
                .bind(cipher.key_id().to_vec())
                .bind(check)
                .bind(db::unix_now())
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error("initialise mfp_keys", &e))?;
            cipher
        }
    };
    tx.commit().await.map_err(|e| sql_error("commit", &e))?;
    Ok(cipher)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_fast_connection_gets_the_settings_of_the_configuration() {
        let dir = std::env::temp_dir().join(format!("mfp-storage-fast-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fast.db");
        let key = MasterKey::generate().unwrap();
        // Not created by the fast connection: open_database makes the file.
        assert!(open_fast(&StorageConfig::new(&path, key.clone())).is_err());
        crate::SqliteStorage::open(StorageConfig::new(&path, key.clone())).unwrap().close().unwrap();
        for (durability, level) in [(Durability::Sync, 2), (Durability::Normal, 1)] {
            let config =
                StorageConfig::new(&path, key.clone()).durability(durability).busy_timeout(Duration::from_millis(1234));
            let conn = open_fast(&config).unwrap();
            let get = |pragma: &str| conn.pragma_query_value(None, pragma, |r| r.get::<_, i64>(0)).unwrap();
            // FULL is 2, NORMAL 1.
            assert_eq!(get("synchronous"), level, "{durability:?}");
            assert_eq!(get("foreign_keys"), 1);
            assert_eq!(get("busy_timeout"), 1234);
            // FAST is 2.
            assert_eq!(get("secure_delete"), 2);
            let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
            assert_eq!(mode, "wal");
        }
        // The default durability is Sync.
        let conn = open_fast(&StorageConfig::new(&path, key)).unwrap();
        assert_eq!(conn.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0)).unwrap(), 2);
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
