//! A `rehydrate serve` in this process for tests: a store with volume `sys` in a
//! temporary directory, served on a loopback port until dropped.

use rehydrate_backup::{BackupArgs, ChunkSize, ChunkStore, VolumeName};
use rehydrate_nbd::NbdUrl;
use tokio::sync::oneshot;

/// A backup store with volume `sys`, served on a loopback port until dropped.
pub struct Server {
    /// Where the store and the images are (tests may put their files here too).
    pub dir: tempfile::TempDir,
    /// `nbd://127.0.0.1:PORT/sys`.
    pub url: NbdUrl,
    image_bytes: usize,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Backs up version 1 of `image_bytes` and serves it.
    pub async fn start(image_bytes: usize) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = Server {
            url: NbdUrl::parse(&format!("nbd://127.0.0.1:{port}/sys")).unwrap(),
            dir,
            image_bytes,
            stop: None,
        };
        server.back_up(1).await;
        let chunks = ChunkStore::open(&server.store(), false).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(rehydrate_backup::serve_on(listener, chunks, async move {
            let _ = stopped.await;
        }));
        server.stop = Some(stop);
        server
    }

    fn store(&self) -> String {
        self.dir.path().join("store").display().to_string()
    }

    /// The image of version `fill`: each sector numbered and salted with `fill`, and a
    /// run of zeros in the second quarter (restored without a transfer).
    pub fn image(&self, fill: u8) -> Vec<u8> {
        let n = self.image_bytes;
        (0..n)
            .map(|i| match i {
                i if (n / 4..n / 2).contains(&i) => 0,
                i => ((i / 512) as u8).wrapping_mul(13).wrapping_add(fill) | 1,
            })
            .collect()
    }

    /// Backs up [`image`](Self::image)`(fill)` as a new version of `sys`.
    pub async fn back_up(&self, fill: u8) {
        let image = self.dir.path().join(format!("image-{fill}"));
        std::fs::write(&image, self.image(fill)).unwrap();
        rehydrate_backup::run_backup(BackupArgs {
            source: image,
            store: self.store(),
            volume: VolumeName::new("sys").unwrap(),
            chunk_size: ChunkSize::default(),
            rate_limit: None,
            json: true,
        })
        .await
        .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
