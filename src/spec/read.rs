//! Reading a spec file from a folder others may write to: never block,
//! never follow it into a FIFO or device, never read more than the limit.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a spec file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("is {0}, not a regular file")]
    NotAFile(&'static str),
    #[error("is {size} bytes, over the limit of {limit} (max_spec_file)")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read it: {0}")]
    Io(String),
    #[error("is not UTF-8 text")]
    NotText,
}

/// What kind of non-regular file `file_type` is, for the error.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// The text of the regular file at `path`, at most `limit` bytes.
///
/// The file is opened without blocking (a FIFO swapped in after a check
/// would otherwise hang the reader), then the opened descriptor itself is
/// checked, so no swap between check and read can slip through.
pub fn read_spec_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    String::from_utf8(read_regular_file(path, limit)?).map_err(|_| ReadError::NotText)
}

/// The bytes of the regular file at `path`, at most `limit`; opened and
/// checked as [`read_spec_text`] says. State files use it too.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ReadError::Io("a loop of symbolic links".into()),
            Some(libc::ENOENT) if path.symlink_metadata().is_ok() => {
                ReadError::Io("a symbolic link to nothing".into())
            }
            _ => ReadError::Io(e.to_string()),
        })?;
    let meta = file.metadata().map_err(|e| ReadError::Io(e.to_string()))?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile(kind_of(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte past the limit tells a file that grew since the fstat.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        std::fs::write(&file, "name = \"a\"\n").unwrap();
        assert_eq!(read_spec_text(&file, 1024).unwrap(), "name = \"a\"\n");
        assert_eq!(
            read_spec_text(&file, 4),
            Err(ReadError::TooLarge { size: 11, limit: 4 })
        );
        assert_eq!(
            read_spec_text(dir.path(), 1024),
            Err(ReadError::NotAFile("a folder"))
        );
        let fifo = dir.path().join("f.toml");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
        // No writer: a blocking open would hang here.
        assert_eq!(
            read_spec_text(&fifo, 1024),
            Err(ReadError::NotAFile("a FIFO"))
        );
        let dangling = dir.path().join("d.toml");
        std::os::unix::fs::symlink(dir.path().join("missing"), &dangling).unwrap();
        let error = read_spec_text(&dangling, 1024).unwrap_err().to_string();
        assert!(error.contains("symbolic link to nothing"), "{error}");
        let looped = dir.path().join("l.toml");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        let error = read_spec_text(&looped, 1024).unwrap_err().to_string();
        assert!(error.contains("loop"), "{error}");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert_eq!(read_spec_text(&file, 1024), Err(ReadError::NotText));
    }
}
