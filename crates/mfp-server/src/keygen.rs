//! `keygen`: a storage master key file (64 hex digits, mode 0600), or a runtime identity
//! key file for federation (mode 0600); `identity`: the public half of an identity key.

use std::path::Path;

/// Generates a master key into a new file at `path` (mode 0600; an existing file is never
/// overwritten).
pub(crate) fn keygen(path: &Path) -> Result<(), String> {
    mfp_storage::MasterKey::generate_file(path).map(|_| ()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Generates a runtime identity key into a new file at `path` (mode 0600; an existing file
/// is never overwritten) and returns its public half (`mfp-x25519:<hex>`).
pub(crate) fn identity_keygen(path: &Path) -> Result<String, String> {
    let key = mfp_federation::IdentityKey::generate_os().map_err(|e| format!("{}: {e}", path.display()))?;
    key.save(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key.public().to_string())
}

/// The public half of the identity key in `path` (`mfp-x25519:<hex>`).
pub(crate) fn identity_public(path: &Path) -> Result<String, String> {
    mfp_federation::IdentityKey::load(path)
        .map(|k| k.public().to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_key_is_private_and_not_overwritten_and_prints_only_the_public_half() {
        let dir = std::env::temp_dir().join(format!("mfp-idkeygen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("id");
        let _ = std::fs::remove_file(&p);
        let public = identity_keygen(&p).unwrap();
        assert!(public.starts_with("mfp-x25519:") && public.len() == 11 + 64, "{public}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(identity_public(&p).unwrap(), public);
        // The file's secret never appears in what is printed.
        let file = std::fs::read_to_string(&p).unwrap();
        let secret_hex = file.trim().rsplit(':').next().unwrap().to_string();
        assert!(!public.contains(&secret_hex));
        assert!(identity_keygen(&p).is_err());
        assert_eq!(identity_public(&p).unwrap(), public, "a refused keygen leaves the key as it was");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn key_file_is_private_and_loadable_and_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("mfp-keygen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        let _ = std::fs::remove_file(&p);
        keygen(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(mfp_storage::MasterKey::from_file(&p).is_ok());
        assert!(keygen(&p).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
