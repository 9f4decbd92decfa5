//! Secrets the supervisor makes: random tokens from the kernel, and files
//! only their owner can read.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> io::Result<String> {
    let mut random = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut urandom| io::Read::read_exact(&mut urandom, &mut random))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `bytes` to `path` atomically (a temp file, then a rename), mode
/// 0600 from the start: no other user can read it, even for a moment.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<std::fs::Metadata> {
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    // What was written is told by the file written, not by the path read
    // again after: by then someone may have replaced or removed it.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.metadata()
        })
        .and_then(|metadata| std::fs::rename(&temp, path).map(|()| metadata));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Makes `dir` (created if needed) readable by its owner only: it holds
/// the control token, captured logs and the registry. The folders it makes
/// on the way are the owner's alone too (the logs folder, made again after
/// the state folder was deleted, makes the state folder).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    devmesh::registry::create_private_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn private_files_and_folders_are_the_owners_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("devmesh");
        private_dir(&state.join("logs")).unwrap();
        write_private(&state.join("control.json"), b"{}").unwrap();
        for made in [&state, &state.join("logs")] {
            assert_eq!(
                std::fs::metadata(made).unwrap().mode() & 0o777,
                0o700,
                "{}",
                made.display()
            );
        }
        assert_eq!(
            std::fs::metadata(state.join("control.json")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(random_hex(16).unwrap().len(), 32);
    }
}
