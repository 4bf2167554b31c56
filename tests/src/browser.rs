//! Headless Chromium (Debian's) on the daemon's web page, driven as a person would:
//! sign in through the form, click, download, read the DOM.
//!
//! Spoken to over the DevTools protocol through a pipe (`--remote-debugging-pipe`:
//! commands on the browser's fd 3, answers and events on its fd 4, each a JSON message
//! ending in a NUL byte), so no port and no WebSocket client. (The CDP crates either
//! fetch the protocol's definition from the network while building, which this build
//! has no access to, or generate tens of thousands of lines we use five commands of.)

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{kill_group, repo_root};

/// How long one wait (a command's answer, an element, a download) may take: the
/// machine may be busy booting guests.
const PATIENCE: Duration = Duration::from_secs(90);

/// One headless Chromium with one tab, killed (with every process it started) when
/// dropped. Screenshots go to `target/test-artifacts/`, downloads to a directory of
/// its own.
pub struct Browser {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    next_id: u64,
    /// The tab's DevTools session.
    session: String,
    downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap_or_else(|e| panic!("pipe: {e}"))
}

/// Lets `fd` pass to a child (the pipes are made close-on-exec so no other child of
/// this test process inherits them).
fn inheritable(fd: &OwnedFd) {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap_or_else(|e| panic!("fcntl: {e}"));
}

impl Browser {
    /// Starts the browser on a blank tab.
    pub fn start() -> Self {
        let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let downloads = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (command_out, command_in) = pipe();
        let (answer_out, answer_in) = pipe();
        inheritable(&command_out);
        inheritable(&answer_in);
        // The shell moves the pipe's ends to descriptors of its choosing (10 or more, so
        // neither can be 3 or 4 and be overwritten by the other), then puts them where
        // Chromium looks for them (3 and 4); then it is Chromium.
        let script = format!(
            "exec {{r}}<&{r} {{w}}>&{w} {r}<&- {w}>&- && \
             exec chromium \"$@\" 3<&$r 4>&$w {{r}}<&- {{w}}>&-",
            r = command_out.as_raw_fd(),
            w = answer_in.as_raw_fd()
        );
        // bash: dash takes only one-digit descriptors in redirections.
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--window-size=1280,1000",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("chromium: {e}"));
        drop(command_out);
        drop(answer_in);
        // Messages are read on a thread of their own, so every wait has a deadline.
        let (sender, messages) = channel();
        let mut answers = BufReader::new(File::from(answer_out));
        std::thread::spawn(move || {
            let mut message = Vec::new();
            while answers.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    break;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child,
            commands: File::from(command_in),
            messages,
            next_id: 0,
            session: String::new(),
            downloads,
            _profile: profile,
        };
        // A tab of our own: the one the browser opens may not exist yet.
        let created = browser.browser_command("Target.createTarget", json!({"url": "about:blank"}));
        let page = created["targetId"]
            .as_str()
            .unwrap_or_else(|| panic!("no tab in {created}"))
            .to_string();
        let attached = browser.browser_command(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {attached}"))
            .to_string();
        let path = browser.downloads.path().display().to_string();
        browser.browser_command(
            "Browser.setDownloadBehavior",
            json!({"behavior": "allowAndName", "downloadPath": path, "eventsEnabled": true}),
        );
        browser
    }

    /// Sends one command (to the tab when `session` is given) and waits for its answer;
    /// events that come meanwhile go to `events`.
    fn send(
        &mut self,
        session: Option<String>,
        method: &str,
        params: Value,
        events: &mut Vec<Value>,
    ) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method}: the browser is gone: {e}"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let message = self.next_message(deadline, method);
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method}: {error}");
                }
                return message["result"].clone();
            }
            events.push(message);
        }
    }

    fn next_message(&self, deadline: Instant, waiting_for: &str) -> Value {
        match self
            .messages
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{waiting_for}: no answer within {PATIENCE:?}")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("{waiting_for}: the browser exited"),
        }
    }

    fn browser_command(&mut self, method: &str, params: Value) -> Value {
        self.send(None, method, params, &mut Vec::new())
    }

    fn tab_command(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(session), method, params, &mut Vec::new())
    }

    /// Loads `url` in the tab.
    pub fn open(&mut self, url: &str) {
        let answer = self.tab_command("Page.navigate", json!({"url": url}));
        if let Some(error) = answer.get("errorText") {
            panic!("{url}: {error}");
        }
    }

    /// Runs `expression` in the page (a promise is awaited); its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let answer = self.tab_command(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(error) = answer.get("exceptionDetails") {
            panic!("{expression}: {error}");
        }
        answer["result"]["value"].clone()
    }

    /// Waits until the page has an element matching `selector` whose text contains
    /// `text` (woken by the page's own changes, not by polling); the page's HTML then.
    /// A page that never shows it fails the test with the page as it is.
    pub fn wait_for(&mut self, selector: &str, text: &str) -> String {
        let script = format!(
            r#"(async (selector, text, ms) => {{
  const found = () => [...document.querySelectorAll(selector)].some(e => e.textContent.includes(text));
  if (!found()) {{
    const shown = await new Promise(resolve => {{
      const watch = new MutationObserver(() => {{ if (found()) {{ watch.disconnect(); clearTimeout(timer); resolve(true); }} }});
      watch.observe(document, {{ subtree: true, childList: true, characterData: true, attributes: true }});
      const timer = setTimeout(() => {{ watch.disconnect(); resolve(false); }}, ms);
    }});
    if (!shown) return {{ shown: false, html: document.documentElement.outerHTML }};
  }}
  return {{ shown: true, html: document.documentElement.outerHTML }};
}})({}, {}, {})"#,
            json!(selector),
            json!(text),
            PATIENCE.as_millis() - 5000
        );
        let answer = self.eval(&script);
        let html = answer["html"].as_str().unwrap_or_default().to_string();
        assert!(
            answer["shown"] == true,
            "the page never showed {selector} with {text:?}: {html}"
        );
        html
    }

    /// Opens `url`, waits for `selector` with `text`, keeps a screenshot as
    /// `screenshot`; the page's HTML.
    pub fn show(&mut self, url: &str, selector: &str, text: &str, screenshot: &str) -> String {
        self.open(url);
        let html = self.wait_for(selector, text);
        self.screenshot(screenshot);
        html
    }

    /// Clicks the first element matching `selector`.
    pub fn click(&mut self, selector: &str) {
        let clicked = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
            json!(selector)
        ));
        assert_eq!(clicked, true, "nothing to click at {selector}");
    }

    /// Types `value` into the input at `selector`.
    pub fn fill(&mut self, selector: &str, value: &str) {
        let filled = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.value = {}; \
             e.dispatchEvent(new Event('input', {{ bubbles: true }})); return true; }})()",
            json!(selector),
            json!(value)
        ));
        assert_eq!(filled, true, "no input at {selector}");
    }

    /// Signs in on the daemon at `base` with `token` through the page's form, and waits
    /// until the page says who is signed in.
    pub fn sign_in(&mut self, base: &str, token: &str) {
        self.open(&format!("{base}/#/sign-in"));
        self.wait_for("#sign-in", "Sign in");
        self.fill("#token", token);
        self.click("#sign-in-button");
        self.wait_for("#signed-in-as", "");
    }

    /// Keeps a PNG of the tab under `target/test-artifacts/`.
    pub fn screenshot(&mut self, name: &str) {
        use base64::Engine as _;
        let shot = self.tab_command("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let artifacts = repo_root().join("target").join("test-artifacts");
        std::fs::create_dir_all(&artifacts)
            .unwrap_or_else(|e| panic!("{}: {e}", artifacts.display()));
        std::fs::write(artifacts.join(name), png).unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    /// Clicks the link at `selector` and waits for the browser to save what it leads
    /// to, as a person's download would (with the browser's own cookies); the name the
    /// browser suggested and the bytes saved.
    pub fn download(&mut self, selector: &str) -> (String, Vec<u8>) {
        let session = self.session.clone();
        let mut events = Vec::new();
        let script = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
            json!(selector)
        );
        let clicked = self.send(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": script, "returnByValue": true}),
            &mut events,
        );
        assert_eq!(clicked["result"]["value"], true, "no link at {selector}");
        let deadline = Instant::now() + PATIENCE;
        let (mut name, mut guid) = (String::new(), String::new());
        let mut pending = events.into_iter();
        loop {
            let event = match pending.next() {
                Some(event) => event,
                None => self.next_message(deadline, "a download"),
            };
            match event["method"].as_str() {
                Some("Browser.downloadWillBegin") if guid.is_empty() => {
                    name = event["params"]["suggestedFilename"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    guid = event["params"]["guid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
                // Only this click's download: not one an earlier click left running.
                Some("Browser.downloadProgress") if event["params"]["guid"] == guid.as_str() => {
                    match event["params"]["state"].as_str() {
                        Some("completed") => {
                            let path = self.downloads.path().join(&guid);
                            let bytes = std::fs::read(&path)
                                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                            return (name, bytes);
                        }
                        Some("canceled") => panic!("the download of {selector} was canceled"),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}
