//! Long-term X25519 identity keys of runtimes, and their public halves for pinning.
//!
//! A runtime's [`IdentityKey`] authenticates it to its peers in the Noise `IK` handshake.
//! The secret is zeroized on drop, never printed (`Debug` is redacted) and saved to a file
//! of mode `0600` that is never overwritten. Its [`PublicKey`] prints as
//! `mfp-x25519:<64 hex digits>`: operators copy that string into the peer's configuration.

use core::fmt;
use core::str::FromStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use mfp_core::{EntropySource, State};
use zeroize::Zeroizing;

/// Prefix of a printed public key.
pub const PUBLIC_KEY_PREFIX: &str = "mfp-x25519:";
/// Prefix of the one line of an identity key file.
pub const SECRET_FILE_PREFIX: &str = "mfp-x25519-secret:";
/// Largest identity key file read (the real one is 83 bytes).
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
        "identity key file {0} is not an mfp identity key (expected one line `mfp-x25519-secret:` followed by 64 hex digits)"
    )]
    Format(PathBuf),
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
        let io = |source| IdentityError::Io { path: path.to_path_buf(), source };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
        let mut line = Zeroizing::new(String::with_capacity(SECRET_FILE_PREFIX.len() + 65));
        line.push_str(SECRET_FILE_PREFIX);
        line.push_str(&hex::encode(self.secret.expose()));
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Loads a key saved by [`Self::save`]. Refuses a file that group or others may read or
    /// write, and anything that is not exactly one key line.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
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
        let parsed =
            std::str::from_utf8(&text).ok().map(str::trim).and_then(|t| t.strip_prefix(SECRET_FILE_PREFIX)).and_then(
                |digits| {
                    let mut out = Zeroizing::new([0u8; 32]);
                    hex::decode_to_slice(digits, out.as_mut()).ok().map(|()| out)
                },
            );
        match parsed {
            Some(bytes) => Ok(Self::from_secret_bytes(*bytes)),
            None => Err(IdentityError::Format(path.to_path_buf())),
        }
    }
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
