//! Headless Chromium (Debian's) on the daemon's web page.

use std::process::Command;

use crate::{repo_root, succeeded};

/// Headless Chromium on a page of the daemon: the DOM after the page's scripts ran for
/// `millis`, and a screenshot kept under `target/test-artifacts/`.
pub fn chromium(url: &str, millis: u32, screenshot: &str) -> String {
    let artifacts = repo_root().join("target").join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap_or_else(|e| panic!("{}: {e}", artifacts.display()));
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1000",
    ];
    // Virtual time: the page's fetches and timers run as if `millis` passed, then the
    // DOM is taken (a followed log keeps its request open; the budget still ends).
    let budget = format!("--virtual-time-budget={millis}");
    let run = |mode: String| {
        let mut command = Command::new("timeout");
        command
            .args(["120", "chromium"])
            .args(flags)
            .arg(&budget)
            .arg(mode)
            .arg(url);
        succeeded(&mut command).stdout
    };
    run(format!(
        "--screenshot={}",
        artifacts.join(screenshot).display()
    ));
    String::from_utf8_lossy(&run("--dump-dom".to_string())).into_owned()
}

/// [`chromium`] until the page shows `expected`, at most three times: on a busy
/// machine a browser's virtual-time budget can end before the page's last fetch has
/// been answered, which says nothing about the page.
pub fn chromium_showing(url: &str, millis: u32, screenshot: &str, expected: &str) -> String {
    let mut page = String::new();
    for _ in 0..3 {
        page = chromium(url, millis, screenshot);
        if page.contains(expected) {
            break;
        }
    }
    page
}
