//! What the backup server does differently on Unix and Windows: making files and
//! directories durable, the page-cache hint after writing, and the termination signal.
//! Everything else in the crate is portable.

use std::fs::File;
use std::io;
use std::path::Path;

/// fsync of a file written earlier.
pub(crate) fn sync_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    let file = File::open(path)?;
    // FlushFileBuffers needs a handle with write access.
    #[cfg(windows)]
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.sync_all()
}

/// fsync of a directory, so the entries it gained survive a crash.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(path)?.sync_all()
    }
    // NTFS logs directory changes itself, and a directory handle cannot even be opened
    // without FILE_FLAG_BACKUP_SEMANTICS: there is nothing to flush.
    #[cfg(windows)]
    {
        let _ = path;
        Ok(())
    }
}

/// Asks the kernel to start writing `file` out now and to drop its clean pages
/// (`POSIX_FADV_DONTNEED`). Only a hint; Windows has no counterpart worth calling.
pub(crate) fn start_writeback(file: &File) {
    #[cfg(unix)]
    {
        let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
    }
    #[cfg(windows)]
    {
        let _ = file;
    }
}

/// Tells the kernel `file` is about to be read from start to end once
/// (`POSIX_FADV_SEQUENTIAL`: a larger readahead window), so reads of a cold source find
/// their data already on its way. Only a hint; Windows has no counterpart worth calling.
pub(crate) fn will_read_sequentially(file: &File) {
    #[cfg(unix)]
    {
        let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
    }
    #[cfg(windows)]
    {
        let _ = file;
    }
}

/// Completes on SIGTERM (Unix); never on Windows, where Ctrl-C is the only signal.
pub(crate) async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    }
    #[cfg(windows)]
    std::future::pending::<()>().await
}
