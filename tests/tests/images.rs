//! Images on the dispatcher's side: an `http://` image from a real HTTP server
//! (Python's `http.server`) downloaded once, `.gz` and `.xz` images (made by the real
//! `gzip` and `xz`) decompressed once, `file://` used in place.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use dispatcher::images::ImageStore;
use url::Url;

/// `python3 -m http.server` on a free loopback port; counts the GET requests it logs.
struct HttpServer {
    child: std::process::Child,
    port: u16,
    gets: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    fn serve(dir: &std::path::Path) -> Self {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut banner = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = banner.split_whitespace().nth(5).unwrap().parse().unwrap();
        let gets = Arc::new(Mutex::new(Vec::new()));
        let log = gets.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"GET ") {
                    log.lock().unwrap().push(line);
                }
            }
        });
        Self { child, port, gets }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn compress(tool: &str, path: &std::path::Path) {
    assert!(
        Command::new(tool)
            .arg("-k")
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn http_images_download_once_and_compressed_images_unpack_once() {
    let served = tempfile::tempdir().unwrap();
    let original: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let raw = served.path().join("guest.img");
    std::fs::write(&raw, &original).unwrap();
    compress("gzip", &raw);
    compress("xz", &raw);
    let server = HttpServer::serve(served.path());
    let store_dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(store_dir.path()).unwrap();

    let gz = Url::parse(&format!("http://127.0.0.1:{}/guest.img.gz", server.port)).unwrap();
    let mut last = 0;
    let first = store.fetch(&gz, |got, _| last = got).await.unwrap();
    assert_eq!(std::fs::read(&first).unwrap(), original);
    assert!(last > 0, "download progress reported");
    let second = store.fetch(&gz, |_, _| {}).await.unwrap();
    assert_eq!(first, second);
    let gets = server.gets.lock().unwrap().clone();
    assert_eq!(
        gets.iter().filter(|l| l.contains("guest.img.gz")).count(),
        1,
        "{gets:?}"
    );

    let xz = Url::from_file_path(served.path().join("guest.img.xz")).unwrap();
    let unpacked = store.fetch(&xz, |_, _| {}).await.unwrap();
    assert_eq!(std::fs::read(&unpacked).unwrap(), original);

    let plain = Url::from_file_path(&raw).unwrap();
    assert_eq!(
        store.fetch(&plain, |_, _| {}).await.unwrap(),
        raw,
        "file:// is used in place"
    );

    let missing = Url::parse(&format!("http://127.0.0.1:{}/nope.img", server.port)).unwrap();
    let err = store.fetch(&missing, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");

    let broken = served.path().join("broken.img.gz");
    std::fs::write(&broken, b"not gzip at all").unwrap();
    let err = store
        .fetch(&Url::from_file_path(&broken).unwrap(), |_, _| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not a valid gzip file"),
        "{err}"
    );
}

/// Two nodes of one job fetching the same compressed image at once both get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_of_one_image_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.img");
    std::fs::write(&raw, vec![7u8; 4 << 20]).unwrap();
    let status = Command::new("gzip").arg("-k").arg(&raw).status().unwrap();
    assert!(status.success());
    let store = ImageStore::new(dir.path().join("store")).unwrap();
    let url = Url::from_file_path(dir.path().join("disk.img.gz")).unwrap();
    let fetches = (0..4).map(|_| store.fetch(&url, |_, _| {}));
    let paths: Vec<_> = futures::future::join_all(fetches)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    for path in &paths {
        assert_eq!(std::fs::read(path).unwrap().len(), 4 << 20);
    }
}
