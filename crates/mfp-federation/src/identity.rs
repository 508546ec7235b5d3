//! Long-term X25519 identity keys of runtimes, and their public halves for pinning.
//!
//! A runtime's [`IdentityKey`] authenticates it to its peers in the Noise `IK` handshake.
//! The secret is zeroized on drop, never printed (`Debug` is redacted) and saved to a file
//! of mode `0600` that is never overwritten. Its [`PublicKey`] prints as
//! `mfp-x25519:<64 hex digits>`: operators copy that string into the peer's configuration.
//!
//! The file holds one line, in one of two forms:
//!
//! ```text
//! mfp-x25519-secret:<secret, 64 hex>                                        plain
//! mfp-x25519-sealed:v1:<key id, 16 hex>:<nonce, 24 hex>:<ciphertext ‖ tag, 96 hex>   encrypted
//! ```
//!
//! The encrypted form ([`IdentityKey::save_encrypted`]) seals the 32-byte secret with
//! AES-256-GCM under a key derived from the storage master key `M`, with its own label (no
//! other key derived from `M` is this one):
//!
//! ```text
//! file_key = HMAC-SHA-256(M, "mfp-federation/v1/identity-file-key")
//! key_id   = HMAC-SHA-256(M, "mfp-federation/v1/identity-file-key-id")[..8]
//! header   = "mfp-x25519-sealed:v1:" ‖ hex(key_id) ‖ ":"      (ASCII, 38 bytes)
//! sealed   = AES-256-GCM(file_key, nonce (12 random bytes), secret, aad = header)
//! ```
//!
//! [`IdentityKey::load_with_master_key`] tells the forms apart by their prefix: a plain
//! file needs no key; an encrypted one needs the master key it was written under (the key
//! id says whether it is that one, without revealing anything about it), and does not open
//! if any byte of its header or body changed.

use core::fmt;
use core::str::FromStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use mfp_core::crypto::{AES_GCM_NONCE_SIZE, Aes256GcmKey};
use mfp_core::{EntropySource, State, TAG_SIZE};
use zeroize::Zeroizing;

/// Prefix of a printed public key.
pub const PUBLIC_KEY_PREFIX: &str = "mfp-x25519:";
/// Prefix of the one line of an identity key file.
pub const SECRET_FILE_PREFIX: &str = "mfp-x25519-secret:";
/// Prefix of the one line of an identity key file encrypted with the storage master key
/// (any version).
pub const SEALED_FILE_PREFIX: &str = "mfp-x25519-sealed:";
/// Version of the encrypted form this crate writes and reads.
const SEALED_VERSION: &str = "v1:";
/// HMAC message of the key that encrypts identity key files.
const FILE_KEY_LABEL: &[u8] = b"mfp-federation/v1/identity-file-key";
/// HMAC message of that key's id.
const FILE_KEY_ID_LABEL: &[u8] = b"mfp-federation/v1/identity-file-key-id";
/// Largest identity key file read (a plain one is 83 bytes, an encrypted one 160).
const MAX_KEY_FILE: u64 = 256;

/// Errors of identity key handling. Messages name the file and what to do; they never
/// contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The entropy source failed.
    #[error("could not draw entropy for a new identity key: {0}")]
    Entropy(mfp_core::Error),
    /// The key file already exists.
    #[error(
        "identity key file {0} already exists; refusing to overwrite it (move it away first if you mean to replace the key)"
    )]
    Exists(PathBuf),
    /// The key file is readable or writable by group or others.
    #[error(
        "identity key file {path} has mode {mode:04o}, readable or writable by group or others; run `chmod 600 {path}` (and consider the key exposed if others could read it)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold a key in the expected format.
    #[error(
        "identity key file {0} is not an mfp identity key (expected one line `mfp-x25519-secret:` followed by 64 hex digits, or an encrypted `mfp-x25519-sealed:v1:` line)"
    )]
    Format(PathBuf),
    /// The key file is encrypted with a storage master key and none was given.
    #[error(
        "identity key file {0} is encrypted with the storage master key, and no master key was given; configure storage.master_key_file (or master_key_env), or pass --master-key"
    )]
    MasterKeyNeeded(PathBuf),
    /// The key file was encrypted under another master key than the one given.
    #[error(
        "identity key file {0} was encrypted under another storage master key than the one given (its key id differs); use the master key it was written with"
    )]
    WrongMasterKey(PathBuf),
    /// The encrypted key file does not open under the master key its key id names.
    #[error(
        "identity key file {0} is encrypted but does not open under this master key although its key id matches: the file is damaged or was edited; restore it from a backup"
    )]
    Damaged(PathBuf),
    /// The encryption of a key file failed.
    #[error("identity key file {0}: encryption failed")]
    Crypto(PathBuf),
    /// Reading or writing the file failed.
    #[error("identity key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Errors of parsing a printed public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublicKeyParseError {
    /// The text does not start with `mfp-x25519:`.
    #[error("a pinned key must start with `mfp-x25519:`")]
    Prefix,
    /// The text after the prefix is not 64 hex digits.
    #[error("a pinned key must have 64 hex digits after `mfp-x25519:`")]
    Digits,
}

/// The public half of an identity key, as pinned by peers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps 32 bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time comparison with raw bytes (e.g. the static key a handshake revealed).
    #[must_use]
    pub fn ct_matches(&self, other: &[u8]) -> bool {
        mfp_core::crypto::ct_eq(&self.0, other)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = PublicKeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim().strip_prefix(PUBLIC_KEY_PREFIX).ok_or(PublicKeyParseError::Prefix)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out).map_err(|_| PublicKeyParseError::Digits)?;
        Ok(Self(out))
    }
}

/// A runtime's long-term X25519 identity key. Zeroized on drop; `Debug` shows only the
/// public half.
pub struct IdentityKey {
    secret: State,
    public: PublicKey,
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl IdentityKey {
    /// A new key from the caller's entropy source.
    pub fn generate(entropy: &mut dyn EntropySource) -> Result<Self, IdentityError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        entropy.fill(bytes.as_mut()).map_err(IdentityError::Entropy)?;
        Ok(Self::from_secret_bytes(*bytes))
    }

    /// A new key from the operating system's random number generator.
    pub fn generate_os() -> Result<Self, IdentityError> {
        Self::generate(&mut crate::OsEntropy::new())
    }

    /// Wraps secret bytes (X25519 clamps them when used).
    #[must_use]
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = State::from_bytes(bytes);
        let public = PublicKey(mfp_core::crypto::x25519_public(&secret));
        Self { secret, public }
    }

    /// The public half, to print for operators to pin.
    #[must_use]
    pub const fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret bytes, for the Noise handshake only.
    pub(crate) fn secret(&self) -> &[u8; 32] {
        self.secret.expose()
    }

    /// Saves the key to a new file of mode `0600`. Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let mut line = Zeroizing::new(String::with_capacity(SECRET_FILE_PREFIX.len() + 65));
        line.push_str(SECRET_FILE_PREFIX);
        line.push_str(&hex::encode(self.secret.expose()));
        line.push('\n');
        write_new(path, line.as_bytes())
    }

    /// Saves the key to a new file of mode `0600`, encrypted under `master_key` (the
    /// storage master key's 32 bytes; see the [module](self) for the derivation and the
    /// layout), with a nonce from `entropy`. Refuses to overwrite an existing file.
    pub fn save_encrypted(
        &self,
        path: &Path,
        master_key: &[u8; 32],
        entropy: &mut dyn EntropySource,
    ) -> Result<(), IdentityError> {
        let file_key = FileKey::derive(master_key).ok_or_else(|| IdentityError::Crypto(path.to_path_buf()))?;
        let mut nonce = [0u8; AES_GCM_NONCE_SIZE];
        entropy.fill(&mut nonce).map_err(IdentityError::Entropy)?;
        let header = file_key.header();
        let mut body = Zeroizing::new(Vec::with_capacity(32 + TAG_SIZE));
        body.extend_from_slice(self.secret.expose());
        file_key
            .aead
            .seal_append_tag(nonce, header.as_bytes(), &mut body)
            .map_err(|_| IdentityError::Crypto(path.to_path_buf()))?;
        let line = format!("{header}{}:{}\n", hex::encode(nonce), hex::encode(&body[..]));
        write_new(path, line.as_bytes())
    }

    /// Loads a key saved by [`Self::save`]. Refuses a file that group or others may read or
    /// write, anything that is not exactly one key line, and an encrypted file
    /// ([`IdentityError::MasterKeyNeeded`]: see [`Self::load_with_master_key`]).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        Self::load_with_master_key(path, None)
    }

    /// Loads a key saved by [`Self::save`] or [`Self::save_encrypted`], telling the two
    /// forms apart by their prefix; `master_key` (the storage master key's 32 bytes) opens
    /// an encrypted file and is not needed for a plain one. Refuses a file that group or
    /// others may read or write, anything that is not exactly one key line, an encrypted
    /// file without a master key, under another master key, or damaged.
    pub fn load_with_master_key(path: &Path, master_key: Option<&[u8; 32]>) -> Result<Self, IdentityError> {
        let text = read_key_file(path)?;
        let line =
            std::str::from_utf8(&text).ok().map(str::trim).ok_or_else(|| IdentityError::Format(path.to_path_buf()))?;
        if let Some(digits) = line.strip_prefix(SECRET_FILE_PREFIX) {
            let mut out = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(digits, out.as_mut()).map_err(|_| IdentityError::Format(path.to_path_buf()))?;
            return Ok(Self::from_secret_bytes(*out));
        }
        let Some(sealed) = line.strip_prefix(SEALED_FILE_PREFIX) else {
            return Err(IdentityError::Format(path.to_path_buf()));
        };
        let format = || IdentityError::Format(path.to_path_buf());
        let fields = sealed.strip_prefix(SEALED_VERSION).ok_or_else(format)?;
        let mut parts = fields.split(':');
        let (Some(id_hex), Some(nonce_hex), Some(body_hex), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format());
        };
        let mut key_id = [0u8; 8];
        let mut nonce = [0u8; AES_GCM_NONCE_SIZE];
        let mut body = Zeroizing::new([0u8; 32 + TAG_SIZE]);
        hex::decode_to_slice(id_hex, &mut key_id).map_err(|_| format())?;
        hex::decode_to_slice(nonce_hex, &mut nonce).map_err(|_| format())?;
        hex::decode_to_slice(body_hex, body.as_mut()).map_err(|_| format())?;
        let master_key = master_key.ok_or_else(|| IdentityError::MasterKeyNeeded(path.to_path_buf()))?;
        let file_key = FileKey::derive(master_key).ok_or_else(|| IdentityError::Crypto(path.to_path_buf()))?;
        if !mfp_core::crypto::ct_eq(&file_key.id, &key_id) {
            return Err(IdentityError::WrongMasterKey(path.to_path_buf()));
        }
        let header = file_key.header();
        let plain = file_key
            .aead
            .open_in_place(&nonce, header.as_bytes(), body.as_mut())
            .map_err(|_| IdentityError::Damaged(path.to_path_buf()))?;
        let secret =
            Zeroizing::new(<[u8; 32]>::try_from(&*plain).map_err(|_| IdentityError::Damaged(path.to_path_buf()))?);
        plain.fill(0);
        Ok(Self::from_secret_bytes(*secret))
    }
}

/// The key that encrypts identity key files under one master key, and its id.
struct FileKey {
    aead: Aes256GcmKey,
    id: [u8; 8],
}

impl FileKey {
    fn derive(master_key: &[u8; 32]) -> Option<Self> {
        let key = Zeroizing::new(mfp_core::crypto::hmac_sha256(master_key, &[FILE_KEY_LABEL]));
        let full = mfp_core::crypto::hmac_sha256(master_key, &[FILE_KEY_ID_LABEL]);
        let mut id = [0u8; 8];
        id.copy_from_slice(full.get(..8)?);
        Some(Self { aead: Aes256GcmKey::new(&key).ok()?, id })
    }

    /// The header of a file written under this key (authenticated as AAD).
    fn header(&self) -> String {
        format!("{SEALED_FILE_PREFIX}{SEALED_VERSION}{}:", hex::encode(self.id))
    }
}

/// Writes `contents` to a new file of mode `0600`, synced; never overwrites.
fn write_new(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io { path: path.to_path_buf(), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists { IdentityError::Exists(path.to_path_buf()) } else { io(e) }
    })?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a key file: only a regular file of mode `0600` (or stricter) and at most
/// [`MAX_KEY_FILE`] bytes.
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let io = |source| IdentityError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions { path: path.to_path_buf(), mode });
        }
    }
    if !meta.is_file() || meta.len() > MAX_KEY_FILE {
        return Err(IdentityError::Format(path.to_path_buf()));
    }
    let mut text = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize));
    file.take(MAX_KEY_FILE + 1).read_to_end(&mut text).map_err(io)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(IdentityError::Format(path.to_path_buf()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mfp_core::FnEntropy;

    fn fixed(b: u8) -> IdentityKey {
        IdentityKey::generate(&mut FnEntropy(|buf: &mut [u8]| {
            buf.fill(b);
            Ok(())
        }))
        .unwrap()
    }

    #[test]
    fn debug_shows_no_secret() {
        let k = fixed(0xab);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&hex::encode([0xab; 32])), "{shown}");
        assert!(shown.contains(&k.public().to_string()), "{shown}");
    }

    #[test]
    fn public_key_prints_and_parses() {
        let k = fixed(1);
        let text = k.public().to_string();
        assert!(text.starts_with("mfp-x25519:") && text.len() == 11 + 64, "{text}");
        assert_eq!(text.parse::<PublicKey>().unwrap(), k.public());
        assert_eq!("x25519:00".parse::<PublicKey>(), Err(PublicKeyParseError::Prefix));
        assert_eq!("mfp-x25519:zz".parse::<PublicKey>(), Err(PublicKeyParseError::Digits));
        assert_eq!(format!("mfp-x25519:{}", "0".repeat(62)).parse::<PublicKey>(), Err(PublicKeyParseError::Digits));
        assert_ne!(fixed(2).public(), k.public());
    }

    #[test]
    fn save_load_round_trip_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let k = fixed(7);
        k.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let loaded = IdentityKey::load(&path).unwrap();
        assert_eq!(loaded.public(), k.public());
        assert!(matches!(fixed(8).save(&path), Err(IdentityError::Exists(_))));
        assert_eq!(IdentityKey::load(&path).unwrap().public(), k.public());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_group_readable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        fixed(3).save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = IdentityKey::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Permissions { mode: 0o640, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    fn write_private(path: &Path, body: &[u8]) {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        opts.open(path).unwrap().write_all(body).unwrap();
    }

    const MASTER: [u8; 32] = [0x4d; 32];

    fn counter() -> impl EntropySource {
        let mut n = 0u8;
        FnEntropy(move |buf: &mut [u8]| {
            for b in buf.iter_mut() {
                n = n.wrapping_add(1);
                *b = n;
            }
            Ok(())
        })
    }

    #[test]
    fn encrypted_file_round_trips_and_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.sealed");
        let k = fixed(9);
        k.save_encrypted(&path, &MASTER, &mut counter()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("mfp-x25519-sealed:v1:") && text.ends_with('\n'), "{text}");
        assert_eq!(text.len(), 160, "{text}");
        assert!(!text.contains(&hex::encode([9u8; 32])) && !text.contains(&hex::encode(MASTER)), "{text}");
        assert_eq!(IdentityKey::load_with_master_key(&path, Some(&MASTER)).unwrap().public(), k.public());
        // Never overwritten, in either form.
        assert!(matches!(fixed(1).save_encrypted(&path, &MASTER, &mut counter()), Err(IdentityError::Exists(_))));
        assert!(matches!(fixed(1).save(&path), Err(IdentityError::Exists(_))));
        // Two files of the same key under the same master key differ (random nonces).
        let other = dir.path().join("id2.sealed");
        k.save_encrypted(
            &other,
            &MASTER,
            &mut FnEntropy(|b: &mut [u8]| {
                b.fill(0xee);
                Ok(())
            }),
        )
        .unwrap();
        assert_ne!(std::fs::read(&other).unwrap(), text.as_bytes());
        assert_eq!(IdentityKey::load_with_master_key(&other, Some(&MASTER)).unwrap().public(), k.public());
    }

    #[test]
    fn encrypted_file_needs_its_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.sealed");
        fixed(9).save_encrypted(&path, &MASTER, &mut counter()).unwrap();
        let err = IdentityKey::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::MasterKeyNeeded(_)), "{err}");
        let err = IdentityKey::load_with_master_key(&path, Some(&[0x4e; 32])).unwrap_err();
        assert!(matches!(err, IdentityError::WrongMasterKey(_)), "{err}");
        for e in [IdentityKey::load(&path).unwrap_err(), err] {
            let shown = e.to_string();
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            assert!(!shown.contains(&hex::encode(MASTER)) && !shown.contains(&hex::encode([9u8; 32])), "{shown}");
        }
    }

    #[test]
    fn plain_files_load_with_or_without_a_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let k = fixed(5);
        k.save(&path).unwrap();
        assert_eq!(IdentityKey::load_with_master_key(&path, Some(&MASTER)).unwrap().public(), k.public());
        assert_eq!(IdentityKey::load_with_master_key(&path, None).unwrap().public(), k.public());
    }

    /// Every truncation and every changed character of an encrypted file is refused, as a
    /// format error or a damaged file, never accepted and never a panic.
    #[test]
    fn damaged_encrypted_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        fixed(9).save_encrypted(&good, &MASTER, &mut counter()).unwrap();
        let text = std::fs::read(&good).unwrap();
        let path = dir.path().join("bad");
        let line = text.len() - 1;
        for cut in 0..line {
            write_private(&path, &text[..cut]);
            let err = IdentityKey::load_with_master_key(&path, Some(&MASTER)).unwrap_err();
            assert!(matches!(err, IdentityError::Format(_)), "cut at {cut}: {err}");
        }
        for i in 0..line {
            for flip in [0x01u8, 0x40] {
                let mut bad = text.clone();
                bad[i] ^= flip;
                write_private(&path, &bad);
                let err = IdentityKey::load_with_master_key(&path, Some(&MASTER)).unwrap_err();
                assert!(
                    matches!(
                        err,
                        IdentityError::Format(_) | IdentityError::Damaged(_) | IdentityError::WrongMasterKey(_)
                    ),
                    "byte {i} ^ {flip:#x}: {err}"
                );
            }
        }
        // Another version, an extra field, garbage after the prefix.
        let s = String::from_utf8(text.clone()).unwrap();
        for bad in [s.replace(":v1:", ":v2:"), format!("{}:00\n", s.trim_end()), "mfp-x25519-sealed:v1:::\n".into()] {
            write_private(&path, bad.as_bytes());
            let err = IdentityKey::load_with_master_key(&path, Some(&MASTER)).unwrap_err();
            assert!(matches!(err, IdentityError::Format(_)), "{bad}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_key_files_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("k");
            for prefix in [&b""[..], b"mfp-x25519-sealed:v1:", b"mfp-x25519-secret:"] {
                let mut body = prefix.to_vec();
                body.extend_from_slice(&tail);
                write_private(&path, &body);
                let _ = IdentityKey::load_with_master_key(&path, Some(&MASTER));
                let _ = IdentityKey::load(&path);
            }
        }
    }

    #[test]
    fn refuses_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        for (i, body) in [&b"garbage"[..], &[b'a'; 1000][..], b"mfp-x25519-secret:00"].iter().enumerate() {
            let path = dir.path().join(format!("k{i}"));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            opts.open(&path).unwrap().write_all(body).unwrap();
            let err = IdentityKey::load(&path).unwrap_err();
            assert!(matches!(err, IdentityError::Format(_)), "{err}");
        }
    }
}
