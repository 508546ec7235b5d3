//! `keygen`: a storage master key file (64 hex digits, mode 0600), or a runtime identity
//! key file for federation (mode 0600, plain or encrypted with the storage master key);
//! `identity`: the public half of an identity key, and the encrypted copy of a plain one.

use std::path::Path;

use mfp_federation::IdentityKey;
use mfp_storage::MasterKey;

/// The storage master key from `--master-key FILE` or `--master-key-env VAR`, if either.
pub(crate) fn master_key(file: Option<&Path>, env: Option<&str>) -> Result<Option<MasterKey>, String> {
    match (file, env) {
        (Some(f), _) => MasterKey::from_file(f).map(Some).map_err(|e| format!("--master-key {}: {e}", f.display())),
        (None, Some(v)) => MasterKey::from_env(v).map(Some).map_err(|e| format!("--master-key-env {v}: {e}")),
        (None, None) => Ok(None),
    }
}

/// Generates a master key into a new file at `path` (mode 0600; an existing file is never
/// overwritten).
pub(crate) fn keygen(path: &Path) -> Result<(), String> {
    mfp_storage::MasterKey::generate_file(path).map(|_| ()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The storage master key from `--new-master-key FILE`, if given.
pub(crate) fn new_master_key(file: Option<&Path>) -> Result<Option<MasterKey>, String> {
    file.map(|f| MasterKey::from_file(f).map_err(|e| format!("--new-master-key {}: {e}", f.display()))).transpose()
}

/// Generates a runtime identity key into a new file at `path` (mode 0600; an existing file
/// is never overwritten), encrypted under `master` if given, and returns its public half
/// (`mfp-x25519:<hex>`).
pub(crate) fn identity_keygen(path: &Path, master: Option<&MasterKey>) -> Result<String, String> {
    let key = IdentityKey::generate_os().map_err(|e| e.to_string())?;
    save(&key, path, master)?;
    Ok(key.public().to_string())
}

fn save(key: &IdentityKey, path: &Path, master: Option<&MasterKey>) -> Result<(), String> {
    match master {
        Some(m) => key.save_encrypted(path, m.expose(), &mut mfp_federation::OsEntropy::new()),
        None => key.save(path),
    }
    .map_err(|e| e.to_string())
}

/// The public half of the identity key in `path` (`mfp-x25519:<hex>`); `master` opens an
/// encrypted file.
pub(crate) fn identity_public(path: &Path, master: Option<&MasterKey>) -> Result<String, String> {
    IdentityKey::load_with_master_key(path, master.map(MasterKey::expose))
        .map(|k| k.public().to_string())
        .map_err(|e| e.to_string())
}

/// Writes the identity key in `from` (plain, or encrypted under `master`) to a new file
/// `to`, encrypted under `new_master` if given (a master key rotation), else under
/// `master`; returns its public half. `from` is left as it is.
pub(crate) fn identity_encrypt(
    from: &Path,
    to: &Path,
    master: &MasterKey,
    new_master: Option<&MasterKey>,
) -> Result<String, String> {
    let key = IdentityKey::load_with_master_key(from, Some(master.expose())).map_err(|e| e.to_string())?;
    save(&key, to, Some(new_master.unwrap_or(master)))?;
    Ok(key.public().to_string())
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
        let public = identity_keygen(&p, None).unwrap();
        assert!(public.starts_with("mfp-x25519:") && public.len() == 11 + 64, "{public}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(identity_public(&p, None).unwrap(), public);
        // The file's secret never appears in what is printed.
        let file = std::fs::read_to_string(&p).unwrap();
        let secret_hex = file.trim().rsplit(':').next().unwrap().to_string();
        assert!(!public.contains(&secret_hex));
        assert!(identity_keygen(&p, None).is_err());
        assert_eq!(identity_public(&p, None).unwrap(), public, "a refused keygen leaves the key as it was");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn encrypted_identity_key_needs_the_master_key_and_converts_from_plain() {
        let dir = std::env::temp_dir().join(format!("mfp-idkeygen-enc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (m, other) = (dir.join("m.key"), dir.join("other.key"));
        keygen(&m).unwrap();
        keygen(&other).unwrap();
        let master = master_key(Some(&m), None).unwrap().unwrap();
        let wrong = master_key(Some(&other), None).unwrap().unwrap();
        let sealed = dir.join("id.sealed");
        let public = identity_keygen(&sealed, Some(&master)).unwrap();
        assert!(std::fs::read_to_string(&sealed).unwrap().starts_with("mfp-x25519-sealed:v1:"));
        assert_eq!(identity_public(&sealed, Some(&master)).unwrap(), public);
        for (key, needle) in [(None, "no master key was given"), (Some(&wrong), "another storage master key")] {
            let err = identity_public(&sealed, key).unwrap_err();
            assert!(err.contains(needle) && err.contains(&sealed.display().to_string()), "{err}");
            let m_hex = std::fs::read_to_string(&m).unwrap();
            assert!(!err.contains(m_hex.trim()), "{err}");
        }
        // A plain file converts; the plain one stays as it was.
        let plain = dir.join("id.key");
        let p_public = identity_keygen(&plain, None).unwrap();
        let converted = dir.join("id2.sealed");
        assert_eq!(identity_encrypt(&plain, &converted, &master, None).unwrap(), p_public);
        assert_eq!(identity_public(&converted, Some(&master)).unwrap(), p_public);
        assert_eq!(identity_public(&plain, None).unwrap(), p_public);
        assert!(identity_encrypt(&plain, &converted, &master, None).is_err(), "never overwrites");
        // A master key rotation: re-encrypted under the new key.
        let rotated = dir.join("id3.sealed");
        assert_eq!(identity_encrypt(&converted, &rotated, &master, Some(&wrong)).unwrap(), p_public);
        assert_eq!(identity_public(&rotated, Some(&wrong)).unwrap(), p_public);
        assert!(identity_public(&rotated, Some(&master)).is_err());
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
