//! The web page as people use it, in headless Chromium: signed in once through its
//! form, a job's page that says what failed, its timeline, its downloads and
//! consoles, cancel and resubmit; the job list's filters, pages and live refresh; the
//! devices. Assertions on the DOM; screenshots under `target/test-artifacts/`.

use serde_json::{Value, json};
use system_tests::{ApiClient, Browser, SshLab};

/// A single-device job on the lab's ssh-host whose one test shell runs `steps`.
fn shell_job(name: &str, steps: &[&str]) -> String {
    system_tests::shell_job(name, "ssh-host", steps).to_string()
}

/// Submits `job` and follows it to its end; its id and its view.
fn run(api: &ApiClient, job: &str) -> (u64, Value) {
    let id = api.submit(job).unwrap();
    api.follow_log(id).unwrap();
    (id, api.job(id).unwrap())
}

#[test]
fn a_job_page_says_what_failed_draws_its_timeline_and_serves_its_files_after_sign_in() {
    let lab = SshLab::new();
    let (daemon, api) = lab.serve();
    let (failing, view) = run(
        &api,
        &shell_job(
            "one case fails",
            &[
                "lava-test-case works --result pass",
                "lava-test-case broken --result fail",
                "printf '\\033]0;a-window-title\\007\\033[31mRED-ALERT\\033[0m plain\\n'",
            ],
        ),
    );
    assert_eq!(view["state"]["health"], "complete", "{view:#}");
    let (raising, view) = run(
        &api,
        &shell_job("raises", &["lava-test-raise 'the disk is missing'"]),
    );
    assert_eq!(view["state"]["health"], "incomplete", "{view:#}");

    // Not signed in, reads need a token: the page asks for one, not for a URL.
    let mut browser = Browser::start();
    let page = browser.show(
        &format!("{}/#/job/{failing}", daemon.url),
        "#sign-in",
        "Sign in",
        "web-sign-in.png",
    );
    assert!(page.contains("type=\"password\""), "{page}");
    browser.sign_in(&daemon.url, api.token());
    let address = browser.eval("location.href");
    assert_eq!(address, format!("{}/#/job/{failing}", daemon.url));
    // The session is an HTTP-only cookie: the page's scripts cannot read it.
    assert_eq!(browser.eval("document.cookie"), "");

    // A complete job with a failed case is not green: its header says how many failed
    // and which.
    browser.wait_for("#verdict", "1 of 2 test cases failed");
    let page = browser.wait_for("#results-table", "broken");
    browser.screenshot("web-job-failed-case.png");
    assert!(page.contains("class=\"verdict-failures\""), "{page}");
    assert!(page.contains("device.health.broken"), "{page}");
    assert!(page.contains("class=\"failed-case\""), "{page}");
    // Who ran it, where, when.
    let facts = browser.eval("document.querySelector('#job-facts').textContent");
    let facts = facts.as_str().unwrap();
    for fact in ["ssh-host-01", "submitterci", "duration", "queued for"] {
        assert!(facts.contains(fact), "{fact}: {facts}");
    }

    // The timeline has every action the report has, each with its duration.
    let job = api.job(failing).unwrap();
    let spans = job["timeline"].as_array().unwrap();
    assert!(spans.len() >= 2, "{job:#}");
    for span in spans {
        let node = span["node"].as_str().unwrap_or("job");
        let action = span["action"].as_str().unwrap();
        let bar = browser.eval(&format!(
            "(() => {{ const b = [...document.querySelectorAll('#timeline .lane[data-node=\"{node}\"] .bar[data-action=\"{action}\"]')]; \
             return b.length ? b[0].textContent : null; }})()"
        ));
        let text = bar
            .as_str()
            .unwrap_or_else(|| panic!("no bar for {node} {action}: {page}"));
        assert!(
            text.starts_with(&format!("{action} ")) && text.ends_with(" s"),
            "{text}"
        );
    }

    // Downloads open with the session, as a person's click would.
    let (name, junit) = browser.download("#download-junit");
    assert_eq!(name, format!("job-{failing}-results.xml"));
    let junit = String::from_utf8_lossy(&junit);
    assert!(
        junit.contains("<testsuite") && junit.contains("broken"),
        "{junit}"
    );
    let (_, console) = browser.download(".console-download");
    assert!(
        String::from_utf8_lossy(&console).contains("RED-ALERT"),
        "the raw console"
    );

    // The log filtered by level: only results lines stay shown.
    browser.eval(
        "for (const b of document.querySelectorAll('.log-level')) { b.checked = b.value === 'results'; \
         b.dispatchEvent(new Event('change')); }",
    );
    let shown = browser.eval(
        "[...document.querySelectorAll('#log .line')].filter(l => !l.hidden).map(l => l.dataset.lvl)",
    );
    let shown = shown.as_array().unwrap();
    assert!(
        !shown.is_empty() && shown.iter().all(|l| l == "results"),
        "{shown:?}"
    );
    // ... and by node: the dispatcher's own lines.
    browser.eval(
        "for (const b of document.querySelectorAll('.log-level')) { b.checked = true; b.dispatchEvent(new Event('change')); } \
         const n = document.querySelector('#log-node'); n.value = 'dispatcher'; n.dispatchEvent(new Event('change'));",
    );
    let nodes = browser.eval(
        "[...new Set([...document.querySelectorAll('#log .line')].filter(l => !l.hidden).map(l => l.dataset.node))]",
    );
    assert_eq!(nodes, json!(["dispatcher"]));

    // The job's definition, as submitted.
    browser.click("#definition summary");
    browser.wait_for("#definition-text", "one case fails");

    // The console rendered with its colours.
    browser.eval(&format!("location.hash = '#/job/{failing}/console/device'"));
    let page = browser.wait_for("#console .ansi-31", "RED-ALERT");
    browser.screenshot("web-console.png");
    assert!(!page.contains("\u{1b}"), "escape codes left: {page}");
    assert!(
        !page.contains("a-window-title"),
        "a title sequence shown: {page}"
    );

    // An incomplete job names the node, the action, the class and the message.
    browser.eval(&format!("location.hash = '#/job/{raising}'"));
    let page = browser.wait_for("#failures .message", "the disk is missing");
    browser.screenshot("web-job-incomplete.png");
    assert!(page.contains("class=\"verdict-incomplete\""), "{page}");
    let verdict = browser.eval("document.querySelector('#verdict').textContent");
    let node = &view["nodes"][0];
    assert_eq!(
        verdict,
        format!(
            "incomplete: device failed in {} ({} error)",
            node["action"].as_str().unwrap(),
            node["class"].as_str().unwrap()
        ),
        "{view:#}"
    );
    assert!(
        page.contains("class=\"bar failed\""),
        "the failed action is marked on the timeline: {page}"
    );

    // Resubmitted from its page, the new job opens; cancelled there (two clicks). The
    // device is in maintenance first, so the new job waits for the clicks (it would
    // otherwise raise and end within a second).
    api.set_health("ssh-host-01", "maintenance").unwrap();
    browser.click("#resubmit");
    let again = raising + 1;
    browser.wait_for("#job-header h1", &format!("Job {again}: raises"));
    browser.wait_for("#cancel", "cancel");
    browser.click("#cancel");
    browser.wait_for("#cancel", "really cancel");
    browser.click("#cancel");
    browser.wait_for("#verdict", "canceled");
    assert_eq!(api.job_state(again).unwrap()["health"], "canceled");
    assert_eq!(api.job(again).unwrap()["resubmitted_from"], raising);

    // Signed out, the session no longer reads anything.
    browser.click("#sign-out");
    browser.wait_for("#sign-in-link", "sign in");
    browser.eval(&format!("location.hash = '#/job/{failing}'"));
    browser.wait_for("#sign-in", "Sign in");
}

#[test]
fn the_job_list_filters_pages_and_follows_the_queue_and_the_devices_page_shows_health() {
    let lab = SshLab::new();
    let (daemon, api) = lab.serve();
    // The only device in maintenance: every job waits, so the list holds still.
    let (status, body) = api
        .request(
            "PUT",
            "/api/v1/devices/ssh-host-01/health",
            br#"{"health": "maintenance", "reason": "new power supply"}"#,
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let ids: Vec<u64> = (1..=30)
        .map(|i| {
            api.submit(&shell_job(&format!("queued-{i:02}"), &["true"]))
                .unwrap()
        })
        .collect();

    let mut browser = Browser::start();
    browser.sign_in(&daemon.url, api.token());
    let page = browser.show(
        &format!("{}/#/jobs?state=submitted", daemon.url),
        "#page-range",
        "jobs 1–25 of 30",
        "web-jobs.png",
    );
    // Newest first, 25 a page.
    assert!(
        page.contains(&format!("data-job=\"{}\"", ids[29])),
        "{page}"
    );
    assert!(
        !page.contains(&format!("data-job=\"{}\"", ids[4])),
        "{page}"
    );
    browser.click("#next-page");
    let page = browser.wait_for("#page-range", "jobs 26–30 of 30");
    assert!(page.contains(&format!("data-job=\"{}\"", ids[0])), "{page}");

    // Text, health and device-type filters, kept in the address.
    browser.eval("location.hash = '#/jobs?q=queued-07'");
    let page = browser.wait_for("#page-range", "jobs 1–1 of 1");
    assert!(page.contains(&format!("data-job=\"{}\"", ids[6])), "{page}");
    browser.eval("location.hash = '#/jobs?health=complete'");
    browser.wait_for("#jobs", "no job matches");
    browser.eval("location.hash = '#/jobs?device_type=ssh-host&state=submitted'");
    browser.wait_for("#page-range", "of 30");
    let selected = browser.eval("document.querySelector('#filter-device_type').value");
    assert_eq!(selected, "ssh-host");

    // Live: a job canceled elsewhere changes on the shown list by itself.
    browser.eval("location.hash = '#/jobs'");
    browser.wait_for(&format!("tr[data-job=\"{}\"]", ids[29]), "submitted");
    let (status, _) = api
        .request("POST", &format!("/api/v1/jobs/{}/cancel", ids[29]), b"")
        .unwrap();
    assert_eq!(status, 200);
    browser.wait_for(
        &format!("tr[data-job=\"{}\"] td.state", ids[29]),
        "canceled",
    );
    browser.screenshot("web-jobs-live.png");

    // The devices page: health in its colour, and the device's history.
    let page = browser.show(
        &format!("{}/#/devices", daemon.url),
        "tr[data-device=\"ssh-host-01\"]",
        "maintenance",
        "web-devices.png",
    );
    assert!(page.contains("class=\"state maintenance\""), "{page}");
    browser.click("tr[data-device=\"ssh-host-01\"] a");
    let page = browser.wait_for("#health-history", "new power supply");
    browser.screenshot("web-device.png");
    assert!(page.contains("id=\"device-health\""), "{page}");
}

/// The session cookie is refused for writes that do not come from the page (a
/// cross-site form cannot add the page's header), and a token never shows in an
/// address.
#[test]
fn a_web_session_writes_only_from_the_page_and_no_token_is_in_any_address() {
    let lab = SshLab::new();
    let (daemon, api) = lab.serve();
    let url = url::Url::parse(&daemon.url).unwrap();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(80));
    // Signing in takes JSON only, and sets an HTTP-only, same-site cookie.
    let (status, _, _) = raw(
        &addr,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={}", api.token()).as_bytes(),
    );
    assert_eq!(status, 400);
    let (status, headers, body) = raw(
        &addr,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        json!({"token": api.token()}).to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let cookie = headers
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie: "))
        .map(|l| &l["set-cookie: ".len()..])
        .unwrap_or_else(|| panic!("{headers}"))
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(api.token()), "the token is not the cookie");
    let session = cookie.split(';').next().unwrap().to_string();
    let cookie_only = [("Cookie", session.as_str())];
    let from_the_page = [
        ("Cookie", session.as_str()),
        ("X-Requested-With", "dispatcher-web"),
    ];
    let id = api.submit(&shell_job("cookie", &["true"])).unwrap();
    // Reads with the cookie alone; a write without the page's header is refused.
    let (status, _, body) = raw(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        &cookie_only,
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let cancel = format!("/api/v1/jobs/{id}/cancel");
    let (status, _, body) = raw(&addr, "POST", &cancel, &cookie_only, b"");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("x-requested-with"), "{body}");
    let (status, _, body) = raw(&addr, "POST", &cancel, &from_the_page, b"");
    assert_eq!(status, 200, "{body}");
    // Signed out, the cookie is worth nothing.
    let (status, _, _) = raw(&addr, "DELETE", "/api/v1/session", &cookie_only, b"");
    assert_eq!(status, 200);
    let (status, _, _) = raw(
        &addr,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        &cookie_only,
        b"",
    );
    assert_eq!(status, 401);

    // Through the page: every address the browser went to is free of the token.
    let mut browser = Browser::start();
    browser.sign_in(&daemon.url, api.token());
    browser.eval(&format!("location.hash = '#/job/{id}'"));
    browser.wait_for("#verdict", "cancel");
    let history = browser.eval("location.href + ' ' + document.referrer");
    assert!(
        !history.as_str().unwrap().contains(api.token()),
        "{history}"
    );
}

/// One HTTP/1.1 request on a fresh connection: status, headers, body.
fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}
