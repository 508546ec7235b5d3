//! The master key: strict parsing, zeroized on drop, never printed.

use core::fmt;
use std::path::Path;

use mfp_runtime::storage::StorageError;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Size of a master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;

/// Largest key file we are willing to read (a hex key with a newline is 65 bytes).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// The 32-byte master key from which every cell key of a database is derived.
///
/// Accepted encodings (from a file, an environment variable or bytes):
///
/// * exactly 32 raw bytes that are not printable text (valid UTF-8 made only of printable
///   characters and whitespace is a passphrase or a 128-bit hex string typed by mistake,
///   never the output of a random generator), or
/// * exactly 64 hexadecimal digits (either case), optionally followed by **one** `\n`.
///
/// Anything else — a missing file or variable, an empty value, 31 or 33 bytes, a space, a
/// `\r\n`, two newlines — is a [`StorageError::MasterKey`] error. There is no fallback: a
/// storage without a valid key does not open (pymfp 1.0.0 silently stored plaintext when
/// its key was empty, and `.strip()`ped key files, which can shorten a random raw key).
///
/// The key is zeroized on drop and `Debug` prints `MasterKey(<redacted>)`.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl MasterKey {
    /// Parses a key from bytes (see the type documentation for the accepted forms).
    ///
    /// # Errors
    ///
    /// [`StorageError::MasterKey`] if the bytes are not exactly 32 raw bytes or 64 hex digits
    /// (plus at most one trailing newline).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.is_empty() {
            return Err(StorageError::MasterKey("the key is empty".into()));
        }
        if let Ok(raw) = <[u8; MASTER_KEY_LEN]>::try_from(bytes) {
            // 32 random bytes are printable text (UTF-8 included) with probability below
            // 1e-10: such a "key" is a passphrase or a 32-digit (128-bit) hex string.
            if is_printable_text(&raw) {
                return Err(StorageError::MasterKey(
                    "the 32-byte key is printable text (a passphrase?), not 32 random bytes; create a key with \
                     `mfp-storage keygen --out FILE` (or MasterKey::generate_file), or use 64 hex digits"
                        .into(),
                ));
            }
            return Ok(Self(Zeroizing::new(raw)));
        }
        let hex_part = match bytes {
            [rest @ .., b'\n'] if rest.len() == 2 * MASTER_KEY_LEN => rest,
            _ => bytes,
        };
        if hex_part.len() != 2 * MASTER_KEY_LEN {
            return Err(StorageError::MasterKey(format!(
                "expected 32 raw bytes or 64 hex digits, got {} bytes",
                bytes.len()
            )));
        }
        let mut out = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        hex::decode_to_slice(hex_part, &mut out[..]).map_err(|_| {
            StorageError::MasterKey("64-byte key is not valid hex (no spaces or other characters allowed)".into())
        })?;
        Ok(Self(out))
    }

    /// Reads a key file (see the type documentation for the accepted forms).
    ///
    /// On Unix a file readable by group or others is accepted but logged as a warning.
    ///
    /// # Errors
    ///
    /// [`StorageError::MasterKey`] if the file is missing, unreadable, too large or malformed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path)
            .map_err(|e| StorageError::MasterKey(format!("cannot read key file {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(StorageError::MasterKey(format!("key file {} is not a regular file", path.display())));
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(StorageError::MasterKey(format!("key file {} is too large", path.display())));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "master key file is readable by group or others");
            }
        }
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| StorageError::MasterKey(format!("cannot read key file {}: {e}", path.display())))?,
        );
        Self::from_bytes(&bytes)
            .map_err(|e| StorageError::MasterKey(format!("key file {}: {}", path.display(), inner_message(&e))))
    }

    /// Reads a key from an environment variable (64 hex digits, or 32 raw bytes on Unix).
    ///
    /// # Errors
    ///
    /// [`StorageError::MasterKey`] if the variable is unset, empty or malformed.
    pub fn from_env(var: &str) -> Result<Self, StorageError> {
        let value = std::env::var_os(var)
            .ok_or_else(|| StorageError::MasterKey(format!("environment variable {var} is not set")))?;
        #[cfg(unix)]
        let bytes = {
            use std::os::unix::ffi::OsStrExt;
            Zeroizing::new(value.as_bytes().to_vec())
        };
        #[cfg(not(unix))]
        let bytes = Zeroizing::new(
            value
                .to_str()
                .ok_or_else(|| StorageError::MasterKey(format!("environment variable {var} is not valid UTF-8")))?
                .as_bytes()
                .to_vec(),
        );
        drop(value);
        Self::from_bytes(&bytes)
            .map_err(|e| StorageError::MasterKey(format!("environment variable {var}: {}", inner_message(&e))))
    }

    /// A fresh random key from the operating system's generator.
    ///
    /// # Errors
    ///
    /// [`StorageError::MasterKey`] if the system generator fails.
    pub fn generate() -> Result<Self, StorageError> {
        let mut out = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        SystemRandom::new()
            .fill(&mut out[..])
            .map_err(|_| StorageError::MasterKey("the system random generator failed".into()))?;
        Ok(Self(out))
    }

    /// Generates a fresh key and writes it to a **new** file at `path` as 64 hex digits and a
    /// newline, readable and writable by its owner only (mode `0600` on Unix, whatever the
    /// umask), synced to disk. An existing file is never overwritten. Returns the key (its
    /// [`key_id`](Self::key_id) is worth noting down beside the file's name).
    ///
    /// # Errors
    ///
    /// [`StorageError::MasterKey`] if the file exists already, cannot be created or written
    /// (a partly written file is removed), or the system generator fails.
    pub fn generate_file(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        use std::io::Write;
        let path = path.as_ref();
        let key = Self::generate()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (refusing to overwrite a key file: it may be the only copy of a database's key)"
            } else {
                ""
            };
            StorageError::MasterKey(format!("cannot create key file {}: {e}{hint}", path.display()))
        })?;
        let mut text = Zeroizing::new(hex::encode(&key.0[..]));
        text.push('\n');
        if let Err(e) = file.write_all(text.as_bytes()).and_then(|()| file.sync_all()) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(StorageError::MasterKey(format!("cannot write key file {}: {e}", path.display())));
        }
        Ok(key)
    }

    /// The 8-byte key id stored with every encrypted cell:
    /// `HMAC-SHA-256(master_key, "mfp-storage/v1/key-id")[..8]`.
    ///
    /// It tells cells written under different master keys apart (e.g. during a rotation)
    /// without revealing anything about the key.
    #[must_use]
    pub fn key_id(&self) -> [u8; 8] {
        let full = mfp_core::crypto::hmac_sha256(&self.0[..], &[crate::cell::KEY_ID_LABEL]);
        let mut id = [0u8; 8];
        id.copy_from_slice(full.get(..8).unwrap_or(&[0u8; 8]));
        id
    }

    /// The raw key bytes. Do not log or persist them.
    #[must_use]
    pub fn expose(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }
}

/// Whether `bytes` are UTF-8 text made only of printable characters and whitespace.
fn is_printable_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|t| t.chars().all(|c| c.is_whitespace() || !c.is_control()))
}

fn inner_message(e: &StorageError) -> String {
    match e {
        StorageError::MasterKey(m) => m.clone(),
        other => other.to_string(),
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn accepted_forms() {
        let raw = [7u8; 32];
        assert_eq!(MasterKey::from_bytes(&raw).unwrap().expose(), &raw);
        let hex = hex::encode(raw);
        assert_eq!(MasterKey::from_bytes(hex.as_bytes()).unwrap().expose(), &raw);
        assert_eq!(MasterKey::from_bytes(hex.to_uppercase().as_bytes()).unwrap().expose(), &raw);
        assert_eq!(MasterKey::from_bytes(format!("{hex}\n").as_bytes()).unwrap().expose(), &raw);
    }

    #[test]
    fn rejected_forms() {
        let hex = hex::encode([7u8; 32]);
        for bad in [
            Vec::new(),
            vec![1u8; 31],
            vec![1u8; 33],
            vec![b'a'; 32],
            hex.as_bytes()[..32].to_vec(),
            "pässwörd-ünd-mehr-tëxt-hier!".as_bytes().to_vec(),
            "ключ ключ ключ !!!!!".as_bytes().to_vec(),
            format!("{hex} ").into_bytes(),
            format!(" {hex}").into_bytes(),
            format!("{hex}\r\n").into_bytes(),
            format!("{hex}\n\n").into_bytes(),
            hex.as_bytes()[..63].to_vec(),
            format!("{}zz", &hex[..62]).into_bytes(),
        ] {
            assert!(matches!(MasterKey::from_bytes(&bad), Err(StorageError::MasterKey(_))), "{bad:?}");
        }
    }

    #[test]
    fn utf8_passphrases_of_32_bytes_are_plain_text() {
        let pass = "pässwörd-ünd-mehr-tëxt-hier!";
        assert_eq!(pass.len(), 32);
        let err = MasterKey::from_bytes(pass.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("keygen"), "{err}");
        // Not text: a control character, or invalid UTF-8.
        let mut raw = *b"abcdefghijklmnopqrstuvwxyz012345";
        raw[3] = 0x01;
        assert!(MasterKey::from_bytes(&raw).is_ok());
        raw[3] = 0xff;
        assert!(MasterKey::from_bytes(&raw).is_ok());
    }

    #[test]
    fn debug_is_redacted_and_key_id_differs() {
        let k = MasterKey::from_bytes(&[0xab; 32]).unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
        assert_ne!(k.key_id(), MasterKey::from_bytes(&[0xac; 32]).unwrap().key_id());
    }
}
