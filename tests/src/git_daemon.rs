//! A real `git daemon` serving repositories on loopback: the harness owns the listening
//! socket (bound before anything connects, so there is no start-up race) and hands each
//! connection to `git daemon --inetd`, git's own server for one connection.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct GitDaemon {
    port: u16,
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<Child>>>,
    accept: Option<JoinHandle<()>>,
}

impl GitDaemon {
    /// Serves every repository under `base` (as `git://127.0.0.1:PORT/NAME`).
    pub fn serve(base: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"))
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let children: Arc<Mutex<Vec<Child>>> = Arc::default();
        let base: PathBuf = base.to_path_buf();
        let accept = {
            let (stop, children) = (stop.clone(), children.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let Ok(input) = stream.try_clone() else {
                        continue;
                    };
                    let child = Command::new("git")
                        .arg("daemon")
                        .arg("--inetd")
                        .arg("--export-all")
                        .arg(format!("--base-path={}", base.display()))
                        .arg(&base)
                        .env("GIT_CONFIG_NOSYSTEM", "1")
                        .env("GIT_CONFIG_GLOBAL", "/dev/null")
                        .stdin(Stdio::from(std::os::fd::OwnedFd::from(input)))
                        .stdout(Stdio::from(std::os::fd::OwnedFd::from(stream)))
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| panic!("git daemon: {e}"));
                    // A poisoned lock only means another thread panicked; the
                    // child must still be kept to be reaped.
                    children
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(child);
                }
            })
        };
        Self {
            port,
            stop,
            children,
            accept: Some(accept),
        }
    }

    /// The `git://` URL of repository `name` under the base.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// Connections served so far.
    pub fn connections(&self) -> usize {
        self.children.lock().map_or(0, |c| c.len())
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        if let Ok(mut children) = self.children.lock() {
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
