//! `keygen`: a storage master key file (64 hex digits, mode 0600).

use std::io::Write;
use std::path::Path;

/// Writes `text` to a new file readable by its owner only; refuses to overwrite.
pub(crate) fn write_key_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Generates a master key into `path`.
pub(crate) fn keygen(path: &Path) -> Result<(), String> {
    let key = mfp_storage::MasterKey::generate().map_err(|e| e.to_string())?;
    write_key_file(path, &hex::encode(key.expose())).map_err(|e| format!("cannot create {}: {e}", path.display()))
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
