//! Opening a path that must name a regular file: models, checkpoints, run
//! records and data. Anything else is refused before a byte is read: a FIFO
//! would block the reader until some writer came (for ever), and a device
//! such as `/dev/zero` would never end. The file is opened non-blocking (so
//! opening a FIFO returns at once) and then checked through its handle, so
//! the path cannot be swapped between the check and the read.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for reading if it is a regular file (symlinks followed);
/// returns the file and its length.
///
/// # Errors
/// The open's error, or [`io::ErrorKind::InvalidInput`] naming what the
/// path is instead ("a FIFO", "a directory", …).
pub fn open(path: &Path) -> io::Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind(&meta.file_type())),
        ));
    }
    Ok((file, meta.len()))
}

/// The most a small file the binaries read (a PEM certificate or key, a
/// metrics CSV) may be: 64 MiB.
pub const MAX_SMALL_FILE: u64 = 64 << 20;

/// Reads all of `path`, a regular file of at most `limit` bytes, checking
/// the size before reading (and reading at most `limit`, should it grow).
///
/// # Errors
/// As [`open`], or [`io::ErrorKind::InvalidData`] if it is larger.
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, len) = open(path)?;
    let too_big = |len: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes or more, over the limit of {limit} bytes"),
        )
    };
    if len > limit {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

fn kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let dir = std::env::temp_dir().join(format!("regular-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let file = dir.join("file");
        std::fs::write(&file, b"12345").unwrap();
        let cases: [(&Path, Option<&str>); 4] = [
            (&fifo, Some("a FIFO")),
            (&dir, Some("a directory")),
            (Path::new("/dev/zero"), Some("a character device")),
            (&file, None),
        ];
        for (path, refused) in cases {
            match (read(path, 5), refused) {
                (Err(e), Some(what)) => assert!(e.to_string().contains(what), "{path:?}: {e}"),
                (Ok(bytes), None) => assert_eq!(bytes, b"12345"),
                (got, _) => panic!("{path:?}: {got:?}"),
            }
        }
        let err = read(&file, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
