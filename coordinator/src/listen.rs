//! Where the coordinator listens: a TCP address, for workers on any host, or
//! a Unix domain socket (`unix:/path`), for workers on this host. A Unix
//! socket skips the TCP/IP stack (loopback TCP costs a step more in the
//! kernel), and only users who may write to its file can connect: it is
//! created `0600`, so a token is not needed to keep other users out.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

/// The prefix of a Unix socket address, in `--listen` and `worker --connect`.
pub const UNIX_PREFIX: &str = "unix:";

/// A parsed `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `IP:PORT` or `HOST:PORT`, resolved.
    Tcp(SocketAddr),
    /// `unix:/path` (or `unix:///path`): a socket file.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Parses `IP:PORT`, `HOST:PORT` or `unix:PATH`.
    ///
    /// # Errors
    /// Why the value is not an address.
    pub fn parse(value: &str) -> Result<Self, String> {
        if let Some(path) = value.strip_prefix(UNIX_PREFIX) {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/tmp/ddp.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        use std::net::ToSocketAddrs;
        value
            .to_socket_addrs()
            .map_err(|e| format!("expected IP:PORT, HOST:PORT or unix:PATH ({e})"))?
            .next()
            .map(ListenAddr::Tcp)
            .ok_or_else(|| "the host name has no address".into())
    }

    /// Whether only this host can reach it (loopback TCP or a Unix socket).
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }

    /// A Unix socket in the temporary directory, named after this process:
    /// where `--spawn-workers` listens unless `--listen` says otherwise.
    pub fn private_socket() -> Self {
        let name = format!("nielsen-ddp-{}.sock", std::process::id());
        ListenAddr::Unix(std::env::temp_dir().join(name))
    }
}

/// A bound listener of either kind.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket and its file (removed when the [`SocketFile`] from
    /// [`Listener::bind`] is dropped).
    Unix(UnixListener, PathBuf),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

/// Removes a Unix socket's file when dropped: only the socket this process
/// created (the same device and inode), never what replaced it since (a
/// regular file, another run's socket).
#[derive(Debug)]
pub struct SocketFile(Option<(PathBuf, FileId)>);

/// A file's identity: device, inode and change time (an inode number can be
/// reused once its file is gone).
type FileId = (u64, u64, i64, i64);

fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl SocketFile {
    /// The socket file at `path`, as created now.
    fn created(path: &Path) -> io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile(Some((path.to_path_buf(), file_id(&meta)))))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Some((path, id)) = &self.0 else { return };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() && file_id(&meta) == *id => {
                let _ = std::fs::remove_file(path);
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "the socket file was replaced during the run; left in place")
            }
            Err(_) => {}
        }
    }
}

impl Listener {
    /// Binds `addr`. A Unix socket file left behind by a run that is gone
    /// is replaced; one that still answers is in use, an error.
    ///
    /// # Errors
    /// If the address cannot be bound.
    pub async fn bind(addr: &ListenAddr) -> io::Result<(Listener, SocketFile)> {
        match addr {
            ListenAddr::Tcp(a) => {
                Ok((Listener::Tcp(TcpListener::bind(a).await?), SocketFile(None)))
            }
            ListenAddr::Unix(path) => {
                remove_stale(path).await?;
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                let file = SocketFile::created(path)?; // after the chmod, which changes its ctime
                Ok((Listener::Unix(listener, path.clone()), file))
            }
        }
    }

    /// The bound address as a user writes it (`127.0.0.1:41481`, `unix:/path`).
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn address(&self) -> io::Result<String> {
        Ok(match self {
            Listener::Tcp(l) => l.local_addr()?.to_string(),
            Listener::Unix(_, path) => format!("{UNIX_PREFIX}{}", path.display()),
        })
    }

    /// What a worker passes to `--connect` to reach this listener
    /// (`scheme` is `http` or `https`; a Unix socket takes neither).
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn worker_address(&self, scheme: &str) -> io::Result<String> {
        Ok(match self {
            Listener::Tcp(l) => format!("{scheme}://{}", l.local_addr()?),
            Listener::Unix(..) => self.address()?,
        })
    }
}

async fn remove_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by a running coordinator", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:9").unwrap(),
            ListenAddr::Tcp("127.0.0.1:9".parse().unwrap())
        );
        for s in ["unix:/tmp/a.sock", "unix:///tmp/a.sock"] {
            assert_eq!(
                ListenAddr::parse(s).unwrap(),
                ListenAddr::Unix("/tmp/a.sock".into()),
                "{s}"
            );
        }
        assert!(ListenAddr::parse("unix:").is_err());
        assert!(ListenAddr::parse("nonsense").is_err());
        assert!(ListenAddr::Unix("x".into()).is_local());
        assert!(!ListenAddr::parse("0.0.0.0:1").unwrap().is_local());
    }

    #[tokio::test]
    async fn a_unix_socket_is_private_replaces_a_stale_file_and_refuses_a_live_one() {
        let path = std::env::temp_dir().join(format!("ddp-listen-{}.sock", std::process::id()));
        let addr = ListenAddr::Unix(path.clone());
        let (first, file) = Listener::bind(&addr).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(first.address().unwrap(), format!("unix:{}", path.display()));
        let err = Listener::bind(&addr).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(first); // its file stays: stale
        let (_second, _file2) = Listener::bind(&addr).await.unwrap();
        drop(file);
        assert!(
            path.exists(),
            "the first guard leaves the second run's socket"
        );
        drop(_file2);
        assert!(!path.exists(), "the guard removes its own socket");
        // A socket replaced by a regular file during the run: left alone.
        let (_third, file3) = Listener::bind(&addr).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        drop(file3);
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_file(&path).unwrap();
    }
}
