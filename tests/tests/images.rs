//! Images on the dispatcher's side: an `http://` image from a real HTTP server
//! (Python's `http.server`) downloaded once, `.gz` and `.xz` images (made by the real
//! `gzip` and `xz`) decompressed once, `file://` used in place.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use hostctl::fetch::{FetchLimits, FetchPolicy};
use hostctl::images::ImageStore;
use url::Url;

fn local() -> Arc<FetchPolicy> {
    Arc::new(FetchPolicy::local())
}

/// A daemon's policy: no `file://`, public addresses and `allowed` networks only.
fn lab(allowed: &[&str], limits: FetchLimits) -> Arc<FetchPolicy> {
    let allowed = allowed.iter().map(|n| n.parse().unwrap()).collect();
    Arc::new(FetchPolicy::restricted(&[], &[], allowed, limits))
}

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
    let store = ImageStore::new(store_dir.path(), local()).unwrap();

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
    let store = ImageStore::new(dir.path().join("store"), local()).unwrap();
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

/// One answer on `127.0.0.2`: a redirect to `location`, for every connection until
/// the test ends.
fn redirector(location: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = std::io::Write::write_all(
                &mut stream,
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n"
                )
                .as_bytes(),
            );
        }
    });
    port
}

/// A job's URLs under a lab's policy: loopback (also through a redirect) is refused
/// before any byte is asked for, and downloads, unpacked images and test definitions
/// stop at their limits without leaving a partial file.
#[tokio::test]
async fn a_lab_policy_refuses_loopback_and_bounds_every_fetch() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("guest.img"), vec![1u8; 2 << 20]).unwrap();
    // A "bomb": 64 MiB of zeros, a few kilobytes compressed.
    let bomb = served.path().join("bomb.img");
    std::fs::write(&bomb, vec![0u8; 64 << 20]).unwrap();
    compress("gzip", &bomb);
    std::fs::write(served.path().join("big.yaml"), "#".repeat(2 << 20)).unwrap();
    let server = HttpServer::serve(served.path());
    let url = |name: &str| Url::parse(&format!("http://127.0.0.1:{}/{name}", server.port)).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let small = FetchLimits {
        max_download_bytes: 1 << 20,
        max_unpacked_bytes: 1 << 20,
        max_testdef_bytes: 64 << 10,
    };

    // No network allowed: loopback is refused, and the server never sees a request.
    let closed = ImageStore::new(store_dir.path(), lab(&[], small)).unwrap();
    let err = closed
        .fetch(&url("guest.img"), |_, _| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("127.0.0.1 is a loopback address"),
        "{err}"
    );
    let by_name = Url::parse(&format!("http://localhost:{}/guest.img", server.port)).unwrap();
    let err = closed.fetch(&by_name, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("loopback address"), "{err}");
    // An allowed host that redirects to loopback is refused at the redirect.
    let open_127_0_0_2 = ImageStore::new(store_dir.path(), lab(&["127.0.0.2/32"], small)).unwrap();
    let hop = redirector(url("guest.img").to_string());
    let err = open_127_0_0_2
        .fetch(
            &Url::parse(&format!("http://127.0.0.2:{hop}/x.img")).unwrap(),
            |_, _| {},
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loopback address"), "{err}");
    assert!(
        server.gets.lock().unwrap().is_empty(),
        "nothing was asked of the server"
    );

    // Loopback allowed, limits small: each limit is named, nothing is left behind.
    let open = ImageStore::new(store_dir.path(), lab(&["127.0.0.0/8"], small)).unwrap();
    let err = open.fetch(&url("guest.img"), |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("max_download_bytes"), "{err}");
    let err = open
        .fetch(&url("bomb.img.gz"), |_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_unpacked_bytes"), "{err}");
    let err = open.fetch_text(&url("big.yaml")).await.unwrap_err();
    assert!(err.to_string().contains("max_testdef_bytes"), "{err}");
    let left: Vec<_> = walk(store_dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("part-"))
        .collect();
    assert!(left.is_empty(), "partial files left: {left:?}");

    // Test definitions from files: bounded too, and never a device.
    let anywhere = ImageStore::new(store_dir.path(), local()).unwrap();
    let err = anywhere
        .fetch_text(&Url::parse("file:///dev/zero").unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not a regular file"), "{err}");
    let err = closed
        .fetch_text(&Url::from_file_path(served.path().join("big.yaml")).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not allowed in this lab"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
