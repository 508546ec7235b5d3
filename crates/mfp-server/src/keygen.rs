//! `keygen`: a storage master key file (64 hex digits, mode 0600).

use std::path::Path;

/// Generates a master key into a new file at `path` (mode 0600; an existing file is never
/// overwritten).
pub(crate) fn keygen(path: &Path) -> Result<(), String> {
    mfp_storage::MasterKey::generate_file(path).map(|_| ()).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
