//! At-rest encryption of one cell (format version 1).
//!
//! ```text
//! storage_key = HMAC-SHA-256(master_key, "mfp-storage/v1/storage-key" ‖ salt)
//! key_id      = HMAC-SHA-256(master_key, "mfp-storage/v1/key-id")[..8]
//! cell_key    = HMAC-SHA-256(storage_key, lp(table) ‖ lp(column) ‖ row_id)
//! header      = 0x01 ‖ key_id
//! aad         = header ‖ lp(table) ‖ lp(column) ‖ lp(row_id) ‖ lp(context)
//! blob        = header ‖ nonce(12, fresh from the OS generator, drawn 4 KiB at a time) ‖ AES-256-GCM(cell_key, nonce, plaintext, aad)
//! ```
//!
//! `lp(x) = u16be(len x) ‖ x`; `salt` is 32 random bytes chosen when the database is created
//! (table `mfp_keys`). The context binds the cell to other columns of its row (the step of a
//! channel, for example), so they cannot be changed without the change being detected.

use mfp_core::crypto::{AES_GCM_NONCE_SIZE as NONCE_LEN, Aes256GcmKey};
use mfp_runtime::storage::StorageError;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::key::MasterKey;

/// Version byte of the blob format.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// HMAC message prefix of the storage key.
pub(crate) const STORAGE_KEY_LABEL: &[u8] = b"mfp-storage/v1/storage-key";
/// HMAC message of the key id.
pub(crate) const KEY_ID_LABEL: &[u8] = b"mfp-storage/v1/key-id";
/// Size of the blob header (version and key id).
pub(crate) const HEADER_LEN: usize = 1 + 8;
/// AES-GCM tag size.
const TAG_LEN: usize = 16;
/// Bytes a blob adds to its plaintext.
pub(crate) const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// Where a cell lives; bound into its key and AAD.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cell<'a> {
    pub(crate) table: &'static str,
    pub(crate) column: &'static str,
    pub(crate) row_id: &'a [u8],
    pub(crate) context: &'a [u8],
}

impl<'a> Cell<'a> {
    pub(crate) fn new(table: &'static str, column: &'static str, row_id: &'a [u8], context: &'a [u8]) -> Self {
        Self { table, column, row_id, context }
    }

    fn name(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }
}

/// `u16be(len x) ‖ x`, refusing lengths that do not fit.
pub(crate) fn push_lp(out: &mut Vec<u8>, x: &[u8]) -> Result<(), StorageError> {
    let len =
        u16::try_from(x.len()).map_err(|_| StorageError::Corrupt("cell name or id longer than 65535 bytes".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(x);
    Ok(())
}

/// Encrypts and decrypts cells with the keys derived from one master key.
pub(crate) struct CellCipher {
    storage_key: Zeroizing<[u8; 32]>,
    key_id: [u8; 8],
    nonces: Nonces,
    /// Keys of the cells rewritten with every message (a channel's state, the Sg), by
    /// their derivation input: each is derived once instead of for every write. Bounded.
    hot_keys: std::sync::Mutex<std::collections::HashMap<Vec<u8>, std::sync::Arc<Aes256GcmKey>>>,
}

/// Most derived keys kept (the cache is emptied when full).
const HOT_KEYS: usize = 4096;

/// Cells whose rows are rewritten with every message: their keys are kept.
fn hot(cell: &Cell<'_>) -> bool {
    matches!((cell.table, cell.column), ("channels", "local_state") | ("remote_channels", _) | ("sg_cache", _))
}

/// Nonces from the OS generator, drawn 4 KiB at a time (one system call per 341 cells
/// instead of one per cell); each nonce's bytes are wiped from the buffer once taken.
struct Nonces {
    rng: SystemRandom,
    buf: std::sync::Mutex<(Zeroizing<[u8; NONCE_BUFFER]>, usize)>,
}

const NONCE_BUFFER: usize = 4092; // a multiple of NONCE_LEN

impl Nonces {
    fn new() -> Self {
        Self { rng: SystemRandom::new(), buf: std::sync::Mutex::new((Zeroizing::new([0; NONCE_BUFFER]), NONCE_BUFFER)) }
    }

    fn next(&self) -> Result<[u8; NONCE_LEN], StorageError> {
        let failed = || StorageError::Backend("the system random generator failed".into());
        let mut guard = self.buf.lock().map_err(|_| failed())?;
        let (buf, pos) = &mut *guard;
        if *pos + NONCE_LEN > NONCE_BUFFER {
            self.rng.fill(&mut buf[..]).map_err(|_| failed())?;
            *pos = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        let taken = buf.get_mut(*pos..*pos + NONCE_LEN).ok_or_else(failed)?;
        nonce.copy_from_slice(taken);
        taken.fill(0);
        *pos += NONCE_LEN;
        Ok(nonce)
    }
}

impl CellCipher {
    /// The cipher of `master` for a database with `salt`.
    pub(crate) fn new(master: &MasterKey, salt: &[u8]) -> Self {
        let storage_key = Zeroizing::new(mfp_core::crypto::hmac_sha256(master.expose(), &[STORAGE_KEY_LABEL, salt]));
        Self {
            storage_key,
            key_id: master.key_id(),
            nonces: Nonces::new(),
            hot_keys: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The id of the master key this cipher writes with.
    pub(crate) fn key_id(&self) -> [u8; 8] {
        self.key_id
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        for (dst, src) in h.iter_mut().zip(std::iter::once(&FORMAT_VERSION).chain(self.key_id.iter())) {
            *dst = *src;
        }
        h
    }

    fn aead_key(&self, cell: &Cell<'_>) -> Result<std::sync::Arc<Aes256GcmKey>, StorageError> {
        let mut msg = Vec::with_capacity(4 + cell.table.len() + cell.column.len() + cell.row_id.len());
        push_lp(&mut msg, cell.table.as_bytes())?;
        push_lp(&mut msg, cell.column.as_bytes())?;
        msg.extend_from_slice(cell.row_id);
        let cached = hot(cell).then(|| self.hot_keys.lock().ok()).flatten();
        if let Some(key) = cached.as_ref().and_then(|c| c.get(&msg)) {
            return Ok(std::sync::Arc::clone(key));
        }
        drop(cached);
        let raw = Zeroizing::new(mfp_core::crypto::hmac_sha256(&self.storage_key[..], &[&msg]));
        let key = std::sync::Arc::new(
            Aes256GcmKey::new(&raw).map_err(|_| StorageError::Backend("AES-256-GCM key setup failed".into()))?,
        );
        if hot(cell)
            && let Ok(mut c) = self.hot_keys.lock()
        {
            if c.len() >= HOT_KEYS {
                c.clear();
            }
            c.insert(msg, std::sync::Arc::clone(&key));
        }
        Ok(key)
    }

    fn aad(header: &[u8], cell: &Cell<'_>) -> Result<Vec<u8>, StorageError> {
        let mut aad = Vec::with_capacity(
            header.len() + 8 + cell.table.len() + cell.column.len() + cell.row_id.len() + cell.context.len(),
        );
        aad.extend_from_slice(header);
        push_lp(&mut aad, cell.table.as_bytes())?;
        push_lp(&mut aad, cell.column.as_bytes())?;
        push_lp(&mut aad, cell.row_id)?;
        push_lp(&mut aad, cell.context)?;
        Ok(aad)
    }

    /// Encrypts `plaintext` for `cell` with a fresh random nonce.
    pub(crate) fn seal(&self, cell: Cell<'_>, plaintext: &[u8]) -> Result<Vec<u8>, StorageError> {
        let header = self.header();
        let nonce = self.nonces.next()?;
        let key = self.aead_key(&cell)?;
        let aad = Self::aad(&header, &cell)?;
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_append_tag(nonce, &aad, &mut body)
            .map_err(|_| StorageError::Backend(format!("{}: encryption failed", cell.name())))?;
        out.extend_from_slice(&body);
        body.iter_mut().for_each(|b| *b = 0);
        Ok(out)
    }

    /// Decrypts a blob of `cell`.
    ///
    /// Every failure is [`StorageError::Corrupt`] naming the cell: a blob that is too short, of
    /// an unknown version, written under another master key than this cipher's, or that fails
    /// authentication. (Ciphers exist only for a key that passed the database's key check, so
    /// a cell that does not open is damaged or edited, not a wrong key.)
    pub(crate) fn open(&self, cell: Cell<'_>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, StorageError> {
        if blob.len() < OVERHEAD {
            return Err(StorageError::Corrupt(format!("{}: encrypted cell too short", cell.name())));
        }
        let (header, rest) = blob.split_at(HEADER_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        if header.first() != Some(&FORMAT_VERSION) {
            return Err(StorageError::Corrupt(format!("{}: unknown encrypted cell format", cell.name())));
        }
        if header.get(1..) != Some(&self.key_id[..]) {
            return Err(StorageError::Corrupt(format!(
                "{}: written under another master key (id {}) than the database's (id {}): damaged or mixed-up data",
                cell.name(),
                hex::encode(header.get(1..).unwrap_or_default()),
                hex::encode(self.key_id)
            )));
        }
        let unauthentic =
            || StorageError::Corrupt(format!("{}: fails to authenticate (damaged or edited)", cell.name()));
        let key = self.aead_key(&cell)?;
        let aad = Self::aad(header, &cell)?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = key.open_in_place(nonce, &aad, &mut buf[..]).map_err(|_| unauthentic())?.len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn cipher(k: u8) -> CellCipher {
        CellCipher::new(&MasterKey::from_bytes(&[k; 32]).unwrap(), &[9u8; 32])
    }

    #[test]
    fn kept_keys_are_the_derived_ones() {
        let (writer, reader) = (cipher(1), cipher(1));
        for row in [b"row-1".as_slice(), b"row-2", b"row-1"] {
            for (table, column) in [("channels", "local_state"), ("sg_cache", "sg_value"), ("inbox", "payload")] {
                let cell = Cell::new(table, column, row, b"ctx");
                // Sealed twice by one cipher (the second time with a kept key, for the hot
                // cells), opened by another that derives afresh.
                for _ in 0..2 {
                    let sealed = writer.seal(cell, b"same").unwrap();
                    assert_eq!(&reader.open(cell, &sealed).unwrap()[..], b"same");
                }
            }
        }
        // Another row is another key, kept or not.
        let sealed = writer.seal(Cell::new("channels", "local_state", b"row-1", b"ctx"), b"x").unwrap();
        assert!(reader.open(Cell::new("channels", "local_state", b"row-2", b"ctx"), &sealed).is_err());
    }

    #[test]
    fn nonces_stay_distinct_across_buffer_refills() {
        let c = cipher(1);
        let cell = Cell::new("channels", "local_state", b"row-1", b"");
        let mut seen = std::collections::HashSet::new();
        // Three refills of the nonce buffer.
        for _ in 0..3 * NONCE_BUFFER / NONCE_LEN + 5 {
            let sealed = c.seal(cell, b"x").unwrap();
            let nonce = sealed.get(HEADER_LEN..HEADER_LEN + NONCE_LEN).unwrap().to_vec();
            assert_ne!(nonce, vec![0; NONCE_LEN], "a wiped nonce was used");
            assert!(seen.insert(nonce), "a nonce repeated");
            assert_eq!(&c.open(cell, &sealed).unwrap()[..], b"x");
        }
    }

    #[test]
    fn round_trip_fresh_nonce_and_binding() {
        let c = cipher(1);
        let five = 5u64.to_be_bytes();
        let cell = Cell::new("channels", "local_state", b"row-1", &five);
        let a = c.seal(cell, &[0x42; 32]).unwrap();
        let b = c.seal(cell, &[0x42; 32]).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), OVERHEAD + 32);
        assert_eq!(&c.open(cell, &a).unwrap()[..], &[0x42; 32]);
        // Other row, column, table or context: rejected.
        for other in [
            Cell::new("channels", "local_state", b"row-2", &5u64.to_be_bytes()),
            Cell::new("channels", "other", b"row-1", &5u64.to_be_bytes()),
            Cell::new("sg_cache", "local_state", b"row-1", &5u64.to_be_bytes()),
            Cell::new("channels", "local_state", b"row-1", &6u64.to_be_bytes()),
        ] {
            assert!(matches!(c.open(other, &a).unwrap_err(), StorageError::Corrupt(_)));
        }
        // Other key: rejected by key id; every flipped bit: rejected.
        assert!(matches!(cipher(2).open(cell, &a).unwrap_err(), StorageError::Corrupt(_)));
        for i in 0..a.len() {
            let mut bad = a.clone();
            bad[i] ^= 0x01;
            assert!(c.open(cell, &bad).is_err());
        }
        assert!(matches!(c.open(cell, &a[..OVERHEAD - 1]), Err(StorageError::Corrupt(_))));
    }
}
