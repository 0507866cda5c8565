//! The web dashboard through the real bangerd: in a real browser (headless Chromium driven
//! over the DevTools protocol), and with a plain HTTP client for what must be refused and for
//! what the pages show (checked against the CLI).
//!
//! Each test's bangerd serves the dashboard on a free port (`[dashboard] port = 0`) of the
//! loopback interface of its test network namespace (the root tier's, which these tests bring
//! up: a fresh namespace's `lo` is down), so Chromium runs in that namespace too, and the
//! HTTP client connects from a thread that entered it. VMs run on the fake firecracker, as in
//! `vm.rs` (whose `Lab` this copies).
//!
//! Chromium is driven over `--remote-debugging-pipe` (the DevTools protocol as NUL-separated
//! JSON on its fds 3 and 4) rather than a debugging port: no port to find or race for, and no
//! websocket client. Clicks are real mouse events (`Input.dispatchMouseEvent`) at the
//! element's place on the page. Waiting is polling a JavaScript condition with a deadline.
//!
//! Screenshots of the main pages are written to `target/test-artifacts/dashboard/`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use banger::api::{
    ImageView, KernelView, OperationView, OperationsListResult, VmListResult, VmShowResult,
};
use banger::rpc::Client;
use banger_events::{Event, OpKind, VmState};
use banger_projections::OpStatus;
use base64::Engine;
use http_body_util::BodyExt;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::support::{
    Bangerd, TestRoot, all_events, kernel_source, processes_mentioning, rootfs_file,
};

const DEADLINE: Duration = Duration::from_secs(30);
const BANGER: &str = env!("CARGO_BIN_EXE_banger");

/// What a hostile guest prints, or a hostile kernel's banner says.
const HOSTILE_CONSOLE: &str = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\"></pre><h1 id=\"injected\">injected</h1>";
/// A kernel's version is the first word of its banner: no spaces.
const HOSTILE_VERSION: &str = "<img/src=x/onerror=window.__pwned=3>";

/// A bangerd serving the dashboard, with a kernel `k` and an image `img`.
struct Lab {
    daemon: Bangerd,
    env: Vec<(String, String)>,
    root_path: PathBuf,
}

impl Lab {
    async fn new() -> Lab {
        Self::with_dashboard("port = 0").await
    }

    /// With these lines in the config's `[dashboard]` section.
    async fn with_dashboard(dashboard: &str) -> Lab {
        let root = TestRoot::new();
        let root_path = root.path().to_path_buf();
        if let Some(network) = root.network() {
            network.run("ip", &["link", "set", "lo", "up"]);
        }
        let config_dir = root.layout().config_dir;
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(
            config_dir.join("config.toml"),
            format!(
                "[vm]\nvcpus = 1\nmemory = \"256M\"\nwork_disk = \"64M\"\n\n[timeouts]\nboot = \"10s\"\nstop = \"5s\"\n\n[network]\ntap_pool = 0\n\n[dashboard]\n{dashboard}\n"
            ),
        )
        .unwrap();
        let kernel_dir = kernel_source(&root.scratch("kernel"), "6.1.0-test", false);
        let rootfs = rootfs_file(&root.scratch("image").join("rootfs.ext4"), 4 << 20);
        let env = vec![
            (
                "BANGER_FIRECRACKER".to_owned(),
                crate::firecracker::fake_binary().display().to_string(),
            ),
            (
                "BANGER_FAKE_AGENT".to_owned(),
                env!("CARGO_BIN_EXE_banger-agent").to_owned(),
            ),
        ];
        let borrowed: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let daemon = Bangerd::start_on_with(root, &borrowed);
        let lab = Lab {
            daemon,
            env,
            root_path,
        };
        lab.call(
            "kernel.import",
            json!({"name": "k", "from": kernel_dir.display().to_string()}),
        )
        .await;
        lab.call(
            "image.register",
            json!({"name": "img", "rootfs": rootfs.display().to_string(), "kernel": "k"}),
        )
        .await;
        lab
    }

    fn root(&self) -> &TestRoot {
        self.daemon.root()
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        let mut client = Client::connect(&self.daemon.socket())
            .await
            .expect("connect to bangerd");
        client
            .call(method, &params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.daemon.output()))
    }

    /// SIGKILLs bangerd and starts it again on the same root (its VMMs live on).
    fn restart(&mut self) {
        self.daemon.kill();
        let borrowed: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.daemon.restart_with(&borrowed);
    }

    /// Runs the banger CLI on this root.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_path(args, None)
    }

    fn cli_with_path(&self, args: &[&str], path: Option<&str>) -> Output {
        let mut command = Command::new(BANGER);
        command
            .args(args)
            .env("BANGER_ROOT", &self.root_path)
            .env("BANGER_NO_AUTOSTART", "1")
            .stdin(Stdio::null());
        if let Some(path) = path {
            command.env("PATH", path);
        }
        command
            .output()
            .unwrap_or_else(|e| panic!("run banger {args:?}: {e}"))
    }

    /// Runs the banger CLI and insists that it succeeds; its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "banger {args:?} failed ({}):\n{}{}\nbangerd:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.daemon.output()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `banger dashboard --json`.
    fn links(&self) -> Links {
        let value: Value = serde_json::from_str(&self.cli_ok(&["dashboard", "--json"]))
            .expect("banger dashboard --json prints JSON");
        Links {
            url: value["url"].as_str().expect("url").to_owned(),
            login_url: value["login_url"].as_str().expect("login_url").to_owned(),
            port: value["port"].as_u64().expect("port") as u16,
        }
    }

    async fn vm_state(&self, name: &str) -> VmState {
        let shown: VmShowResult =
            serde_json::from_value(self.call("vm.show", json!({"name": name})).await).unwrap();
        shown.vm.state
    }

    fn http(&self, port: u16) -> Http<'_> {
        Http {
            root: self.root(),
            port,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemon.kill();
        for pid in processes_mentioning(&self.root_path) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

struct Links {
    url: String,
    login_url: String,
    port: u16,
}

// ---- a plain HTTP client in the test's network namespace ----------------------------------

/// Connects to 127.0.0.1:`port` as bangerd sees it: from a thread in the root's network
/// namespace when it has one (a socket stays in the namespace it was made in).
fn connect(root: &TestRoot, port: u16) -> TcpStream {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let Some(network) = root.network() else {
        return TcpStream::connect(address).expect("connect to the dashboard");
    };
    let namespace: OwnedFd = network.namespace();
    std::thread::spawn(move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the test network namespace");
        TcpStream::connect(address)
    })
    .join()
    .expect("the connecting thread")
    .expect("connect to the dashboard")
}

struct Http<'a> {
    root: &'a TestRoot,
    port: u16,
}

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Http<'_> {
    /// One request on a fresh connection; `Host` is the dashboard's own unless given. The
    /// answer's head, with its body still to read.
    async fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> hyper::Response<hyper::body::Incoming> {
        let stream = connect(self.root, self.port);
        stream.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP handshake");
        tokio::spawn(connection);
        let mut request = hyper::Request::builder().method(method).uri(path);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header("host", format!("127.0.0.1:{}", self.port));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        let request = request
            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                body.unwrap_or_default().to_owned(),
            )))
            .unwrap();
        tokio::time::timeout(DEADLINE, sender.send_request(request))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One request, its whole answer.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let response = self.open(method, path, headers, body).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: the body never ended"))
            .expect("read the body")
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers, None).await
    }

    /// Signs in with `token`; the `Cookie` header value of the session.
    async fn sign_in(&self, token: &str) -> String {
        let reply = self.get(&format!("/login?token={token}"), &[]).await;
        assert_eq!(reply.status, 200, "sign in: {}", reply.body);
        let set_cookie = reply.header("set-cookie").expect("a session cookie");
        set_cookie.split(';').next().expect("name=value").to_owned()
    }
}

/// Reads an event stream until it has sent `count` events; their ids.
async fn first_event_ids(
    response: hyper::Response<hyper::body::Incoming>,
    count: usize,
) -> Vec<u64> {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut text = String::new();
    // `id: SEQ.EVENT_ID`
    let ids = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|line| line.strip_prefix("id: "))
            .map(|id| {
                let (seq, event) = id.split_once('.').expect("SEQ.EVENT_ID");
                assert_eq!(event.len(), 32, "an event id: {id}");
                seq.parse().expect("a sequence number")
            })
            .collect()
    };
    while ids(&text).len() < count {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("the stream sends")
            .expect("the stream goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    ids(&text)[..count].to_vec()
}

fn token_of(links: &Links) -> &str {
    links
        .login_url
        .split_once("token=")
        .expect("the sign-in link carries the token")
        .1
}

/// The markup of the table `id` in `page`, from its start tag to its end.
fn table<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table #{id} in the page:\n{page}"));
    let rest = &page[start..];
    &rest[..rest.find("</table>").expect("the table ends") + "</table>".len()]
}

/// The markup of each body row of `table` (from `<tr` to `</tr>`).
fn rows(table: &str) -> Vec<&str> {
    let body = table.split_once("<tbody>").map_or("", |(_, body)| body);
    body.split("<tr")
        .skip(1)
        .map(|row| row.split("</tr>").next().unwrap_or(row))
        .collect()
}

/// The text of each cell of `row`, as a browser shows it: tags dropped, entities decoded.
fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let content = cell.split_once('>').map_or("", |(_, content)| content);
            text_of(content.split("</td>").next().unwrap_or(content))
        })
        .collect()
}

/// `markup` without its tags, its entities (those the dashboard writes) decoded.
fn text_of(markup: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in markup.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The row of `table` whose start tag carries `attribute` (`data-vm="dev"`).
fn row_with<'a>(table: &'a str, attribute: &str) -> &'a str {
    rows(table)
        .into_iter()
        .find(|row| row.starts_with(&format!(" {attribute}>")))
        .unwrap_or_else(|| panic!("no row with {attribute} in:\n{table}"))
}

// ---- headless Chromium over the DevTools protocol ----------------------------------------

/// A headless Chromium in the root's network namespace, with one page attached.
struct Browser {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    /// Protocol events seen so far (console messages, exceptions, log entries).
    events: VecDeque<Value>,
    next_id: u64,
    session: String,
    stderr_path: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(root: &TestRoot) -> Browser {
        let chromium = banger_test_harness::chromium().expect("the browser tier gates this test");
        let profile = tempfile::Builder::new()
            .prefix("banger-chromium-")
            .tempdir()
            .expect("a Chromium profile directory");
        let stderr_path = root.path().join("chromium.stderr");
        // Two pipes: we write commands to the child's fd 3, it writes replies to its fd 4.
        let (command_read, command_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe for DevTools commands");
        let (reply_read, reply_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe for DevTools replies");
        let mut command = Command::new(&chromium);
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-extensions",
                "--disable-sync",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path).expect("Chromium's output file"))
            // Its own process group, so that dropping the browser kills every process of it.
            .process_group(0);
        let (from, to) = (command_read.as_raw_fd(), reply_write.as_raw_fd());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The ends
        // are first copied above 10, so that putting them at 3 and 4 cannot overwrite one
        // with the other; dup2's copies are not close-on-exec.
        unsafe {
            command.pre_exec(move || {
                let high_from = libc::fcntl(from, libc::F_DUPFD, 10);
                let high_to = libc::fcntl(to, libc::F_DUPFD, 10);
                if high_from < 0
                    || high_to < 0
                    || libc::dup2(high_from, 3) < 0
                    || libc::dup2(high_to, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if let Some(network) = root.network() {
            network.join(&mut command);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromium.display()));
        drop(command_read);
        drop(reply_write);
        let (sender, replies) = mpsc::channel();
        let mut reader = File::from(reply_read);
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                let read = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                pending.extend_from_slice(&chunk[..read]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(value) = serde_json::from_slice(&message[..end]) else {
                        continue;
                    };
                    if sender.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands: File::from(command_write),
            replies,
            events: VecDeque::new(),
            next_id: 0,
            session: String::new(),
            stderr_path,
            _profile: profile,
        };
        let target = browser.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call_browser(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser.call("Log.enable", json!({}));
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    /// A command to the page's session; its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session))
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.try_send(method, params, session)
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// A command and its result, or the error Chromium answered with.
    fn try_send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<String>,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("send {method} to Chromium: {e}\n{}", self.stderr()));
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self.replies.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "Chromium did not answer {method} ({e}); its output:\n{}",
                    self.stderr()
                )
            });
            if reply["id"] == json!(id) {
                if let Some(error) = reply.get("error") {
                    return Err(error.clone());
                }
                return Ok(reply["result"].clone());
            }
            if reply.get("method").is_some() {
                self.events.push_back(reply);
            }
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Evaluates `expression` in the page (awaiting a promise); its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `condition` (JavaScript) until it is true. A condition that throws is false: a
    /// page still loading may not have the elements it looks at yet.
    fn wait_until(&mut self, what: &str, condition: &str) {
        let deadline = Instant::now() + DEADLINE;
        let guarded = format!(
            "(() => {{ try {{ return Boolean({condition}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            // A page that navigates away while this runs answers with an error: not yet.
            let session = self.session.clone();
            let value = self.try_send(
                "Runtime.evaluate",
                json!({"expression": guarded, "returnByValue": true}),
                Some(session),
            );
            if value.is_ok_and(|result| result["result"]["value"] == json!(true)) {
                return;
            }
            if Instant::now() > deadline {
                let page = self.eval("document.body ? document.body.innerText : '(no body)'");
                panic!(
                    "the page never showed {what} ({condition}); it shows:\n{}",
                    page.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_until(
            &format!("{url} loaded"),
            "document.readyState === 'complete'",
        );
    }

    /// Goes to `path` of the dashboard and waits until its stream is live.
    fn open(&mut self, url: &str, path: &str) {
        self.navigate(&format!("{url}{path}"));
        self.wait_until(
            &format!("{path} with a live stream"),
            &format!(
                "location.pathname === {} && document.getElementById('live').dataset.state === 'open'",
                json!(path)
            ),
        );
        // Gone if the page is ever reloaded: live updates must not need one.
        self.eval("window.__loadedOnce = true");
    }

    fn assert_not_reloaded(&mut self) {
        assert_eq!(
            self.eval("window.__loadedOnce === true"),
            json!(true),
            "the page was reloaded"
        );
    }

    /// A real click (mouse pressed and released) in the middle of the first element that
    /// matches `selector`.
    fn click(&mut self, selector: &str) {
        let selector_js = json!(selector);
        self.wait_until(
            &format!("{selector} to click"),
            &format!("document.querySelector({selector_js})"),
        );
        let point = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector_js}); e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"
        ));
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": point["x"], "y": point["y"], "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Saves a PNG of the whole page (up to 4000 pixels down) as
    /// `target/test-artifacts/dashboard/NAME.png`.
    fn screenshot(&mut self, name: &str) {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let height = metrics["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(900.0)
            .clamp(900.0, 4000.0);
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
            }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("a screenshot is base64");
        let dir = artifacts_dir();
        std::fs::create_dir_all(&dir).expect("create the artifacts directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    /// Fails on any JavaScript exception, and on anything the page's security policy
    /// blocked: the dashboard's pages need neither.
    fn assert_no_script_errors(&mut self) {
        self.eval("0"); // Collects the events sent so far.
        let bad: Vec<&Value> = self
            .events
            .iter()
            .filter(|event| {
                let method = event["method"].as_str().unwrap_or_default();
                let text = event.to_string();
                method == "Runtime.exceptionThrown"
                    || text.contains("Content Security Policy")
                    || text.contains("Content-Security-Policy")
            })
            .collect();
        assert!(bad.is_empty(), "the page reported: {bad:#?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// `target/test-artifacts/dashboard`, beside the test binary's profile directory.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // target/debug/deps/integration-HASH
            std::env::current_exe()
                .ok()?
                .ancestors()
                .nth(3)
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("test-artifacts").join("dashboard")
}

// ---- the tests -----------------------------------------------------------------------------

/// Signs in with the link `banger dashboard` prints, watches a VM created through the CLI
/// appear without a reload, stops it from its page through the confirmation, and checks
/// through the CLI and the log that a real `vm.stop` ran; starts it, restarts it (checked
/// through the CLI and the log: another VMM process, and a stop then a start that succeeded,
/// the two operations a restart is) and deletes it from the page. Screenshots every main
/// page.
async fn a_vm_created_through_the_cli_appears_live_and_is_stopped_from_its_page() {
    let lab = Lab::new().await;
    let links = lab.links();
    let mut browser = Browser::launch(lab.root());
    browser.navigate(&links.login_url);
    browser.wait_until(
        "the VM list after signing in",
        "location.pathname === '/' && document.querySelector('#content h1')?.textContent === 'VMs'",
    );
    browser.open(&links.url, "/");
    browser.screenshot("vms-empty");

    let began = Instant::now();
    lab.cli_ok(&["vm", "create", "dev", "--image", "img"]);
    browser.wait_until(
        "dev running in the list",
        "document.querySelector('#vms tr[data-vm=\"dev\"] .state')?.textContent === 'running'",
    );
    eprintln!(
        "timing: vm create through the CLI to the list showing it running: {:?}",
        began.elapsed()
    );
    browser.assert_not_reloaded();
    browser.screenshot("vms");

    browser.click("#vms a[href=\"/vms/dev\"]");
    browser.wait_until(
        "dev's page",
        "location.pathname === '/vms/dev' && document.getElementById('live').dataset.state === 'open'",
    );
    browser.eval("window.__loadedOnce = true");
    browser.wait_until(
        "the console",
        "document.getElementById('console')?.textContent.includes('fake-firecracker')",
    );
    browser.screenshot("vm");

    browser.click("button[data-dialog=\"confirm-stop\"]");
    browser.wait_until(
        "the stop confirmation",
        "document.getElementById('confirm-stop').open",
    );
    browser.screenshot("vm-confirm-stop");
    let began = Instant::now();
    browser.click("#confirm-stop button[type=\"submit\"]");
    browser.wait_until(
        "dev stopped",
        "document.querySelector('#content h1 .state')?.textContent === 'stopped' && document.getElementById('flash').textContent === 'stop dev: done'",
    );
    eprintln!(
        "timing: stop confirmed on the page to the page showing it stopped: {:?}",
        began.elapsed()
    );
    browser.assert_not_reloaded();
    browser.screenshot("vm-stopped");

    // The CLI agrees, and the log holds the operation the page ran.
    let shown: Value = serde_json::from_str(&lab.cli_ok(&["vm", "show", "dev", "--json"]))
        .expect("vm show --json");
    assert_eq!(shown["vm"]["state"], json!("stopped"), "{shown}");
    let events = all_events(&lab.daemon.socket()).await;
    let stop = events
        .iter()
        .find_map(|e| match &e.event {
            Event::OperationStarted(started) if started.kind == OpKind::VmStop => e.op_id,
            _ => None,
        })
        .expect("a vm.stop operation in the log");
    assert!(
        events
            .iter()
            .any(|e| e.op_id == Some(stop) && matches!(e.event, Event::OperationSucceeded(_))),
        "the page's stop succeeded in the log"
    );

    // Start it again, then delete it: the page goes back to the (empty) list.
    browser.click("button[data-dialog=\"confirm-start\"]");
    browser.wait_until(
        "the start confirmation",
        "document.getElementById('confirm-start').open",
    );
    browser.click("#confirm-start button[type=\"submit\"]");
    browser.wait_until(
        "dev running again",
        "document.querySelector('#content h1 .state')?.textContent === 'running' && document.getElementById('flash').textContent === 'start dev: done'",
    );

    // Restart it: a new VMM process, through the confirmation, as the CLI and the log see it.
    let vmm_pid = |shown: &Value| {
        shown["vm"]["process"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("a running VM has a VMM process: {shown}"))
    };
    let before: Value = serde_json::from_str(&lab.cli_ok(&["vm", "show", "dev", "--json"]))
        .expect("vm show --json");
    let seen = all_events(&lab.daemon.socket()).await.len();
    browser.wait_until(
        "the restart button offered",
        "document.querySelector('button[data-dialog=\"confirm-restart\"]')?.disabled === false",
    );
    browser.click("button[data-dialog=\"confirm-restart\"]");
    browser.wait_until(
        "the restart confirmation",
        "document.getElementById('confirm-restart').open",
    );
    browser.screenshot("vm-confirm-restart");
    browser.click("#confirm-restart button[type=\"submit\"]");
    browser.wait_until(
        "dev restarted",
        "document.querySelector('#content h1 .state')?.textContent === 'running' && document.getElementById('flash').textContent === 'restart dev: done'",
    );
    browser.assert_not_reloaded();
    let after: Value = serde_json::from_str(&lab.cli_ok(&["vm", "show", "dev", "--json"]))
        .expect("vm show --json");
    assert_eq!(after["vm"]["state"], json!("running"), "{after}");
    assert_ne!(
        vmm_pid(&before),
        vmm_pid(&after),
        "the restart ran the VM in another VMM process"
    );
    // A restart is two operations, each with its own op id: a stop, then a start.
    let events = all_events(&lab.daemon.socket()).await;
    let ops: Vec<(OpKind, bool)> = events[seen..]
        .iter()
        .filter_map(|e| match &e.event {
            Event::OperationStarted(started) => Some((
                started.kind,
                events.iter().any(|end| {
                    end.op_id == e.op_id && matches!(end.event, Event::OperationSucceeded(_))
                }),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        ops,
        [(OpKind::VmStop, true), (OpKind::VmStart, true)],
        "the page's restart in the log"
    );
    let kinds: Vec<&Value> = after["operations"]
        .as_array()
        .expect("dev's operations")
        .iter()
        .map(|op| &op["kind"])
        .collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        [&json!("vm.stop"), &json!("vm.start")],
        "vm show lists the restart's operations last: {after}"
    );

    browser.click("button[data-dialog=\"confirm-delete\"]");
    browser.wait_until(
        "the delete confirmation",
        "document.getElementById('confirm-delete').open",
    );
    browser.click("#confirm-delete button[type=\"submit\"]");
    browser.wait_until(
        "the list without dev",
        "location.pathname === '/' && document.querySelector('#content .empty')?.textContent.startsWith('No VMs yet')",
    );
    let list: VmListResult = serde_json::from_value(lab.call("vm.list", json!({})).await).unwrap();
    assert!(list.vms.is_empty(), "{list:?}");

    for (path, name) in [
        ("/images", "images"),
        ("/kernels", "kernels"),
        ("/operations", "operations"),
        ("/events", "events"),
    ] {
        browser.open(&links.url, path);
        browser.screenshot(name);
    }
    browser.wait_until(
        "the stop and the delete in the event page",
        "['vm.stop vm dev', 'vm.delete vm dev'].every(text => Array.from(document.querySelectorAll('#events-body td')).some(td => td.textContent === text))",
    );
    browser.assert_no_script_errors();
}

/// The event page follows the log across a SIGKILL and restart of bangerd: every event
/// before and after shows once, in order, with nothing missing, and the page is never
/// reloaded.
async fn the_event_page_resumes_after_bangerd_is_killed_and_restarted() {
    let mut lab = Lab::new().await;
    let links = lab.links();
    let mut browser = Browser::launch(lab.root());
    browser.navigate(&links.login_url);
    browser.wait_until("the VM list", "location.pathname === '/'");
    browser.open(&links.url, "/events");

    lab.cli_ok(&["vm", "create", "dev", "--image", "img"]);
    let before = all_events(&lab.daemon.socket()).await;
    let last_before = before.last().expect("events").seq.0;
    browser.wait_until(
        "every event so far",
        &format!("document.body.dataset.lastSeq === '{last_before}'"),
    );

    lab.daemon.kill();
    browser.wait_until(
        "the stream reconnecting",
        "document.getElementById('live').dataset.state === 'reconnecting'",
    );
    browser.screenshot("events-reconnecting");
    let began = Instant::now();
    lab.restart();
    assert_eq!(
        lab.links().port,
        links.port,
        "a restarted bangerd serves the dashboard on the port the page knows"
    );
    lab.cli_ok(&["vm", "stop", "dev"]);
    let after = all_events(&lab.daemon.socket()).await;
    let last = after.last().expect("events").seq.0;
    assert!(last > last_before + 2, "events after the restart");
    browser.wait_until(
        "the events after the restart",
        &format!("document.body.dataset.lastSeq === '{last}'"),
    );
    eprintln!(
        "timing: bangerd restarted to the page showing the events after it: {:?}",
        began.elapsed()
    );
    browser.wait_until(
        "the stream live again",
        "document.getElementById('live').dataset.state === 'open'",
    );
    browser.assert_not_reloaded();
    browser.screenshot("events-after-restart");

    // Exactly the log, seq by seq, from the first row the page showed.
    let rows = browser.eval(
        "Array.from(document.querySelectorAll('#events-body tr')).map(tr => [Number(tr.dataset.seq), tr.cells[3].textContent])",
    );
    let rows: Vec<(u64, String)> = serde_json::from_value(rows).unwrap();
    let first = rows.first().expect("rows").0;
    let expected: Vec<(u64, String)> = after
        .iter()
        .filter(|e| e.seq.0 >= first)
        .map(|e| (e.seq.0, e.event.name().to_owned()))
        .collect();
    assert_eq!(first, 1, "the page started with the whole (short) log");
    assert_eq!(
        rows, expected,
        "the page's events are the log's, no gap, no duplicate"
    );
    assert!(
        rows.iter()
            .filter(|(_, name)| name == "daemon_started")
            .count()
            >= 2,
        "events from both bangerds: {rows:?}"
    );
    assert_eq!(lab.vm_state("dev").await, VmState::Stopped);
}

/// A guest that prints markup, a kernel whose banner is markup, and a VM name in the URL
/// that is markup: each shows as text, and nothing runs.
async fn hostile_console_output_kernel_banners_and_names_stay_text() {
    let lab = Lab::new().await;
    let hostile_kernel = kernel_source(
        &lab.root().scratch("hostile-kernel"),
        HOSTILE_VERSION,
        false,
    );
    lab.call(
        "kernel.import",
        json!({"name": "hostile", "from": hostile_kernel.display().to_string()}),
    )
    .await;
    lab.cli_ok(&["vm", "create", "dev", "--image", "img"]);
    let list: VmListResult = serde_json::from_value(lab.call("vm.list", json!({})).await).unwrap();
    let console = lab.daemon.layout().vm_console_log(list.vms[0].id);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&console)
        .expect("the VM's console");
    writeln!(file, "\n{HOSTILE_CONSOLE}\n\u{1b}[31mred\u{1b}[0m").unwrap();
    drop(file);

    let links = lab.links();
    let mut browser = Browser::launch(lab.root());
    browser.navigate(&links.login_url);
    browser.wait_until("the VM list", "location.pathname === '/'");
    browser.open(&links.url, "/vms/dev");
    browser.wait_until(
        "the hostile console line, as text",
        &format!(
            "document.getElementById('console')?.textContent.includes({})",
            json!(HOSTILE_CONSOLE)
        ),
    );
    browser.screenshot("vm-hostile-console");
    let injected = "document.querySelectorAll('#content img, #content script, #injected').length + (window.__pwned === undefined ? 0 : 100)";
    assert_eq!(browser.eval(injected), json!(0));

    browser.open(&links.url, "/kernels");
    browser.wait_until(
        "the hostile version, as text",
        &format!(
            "document.querySelector('#kernels').textContent.includes({})",
            json!(HOSTILE_VERSION)
        ),
    );
    assert_eq!(browser.eval(injected), json!(0));

    browser.navigate(&format!(
        "{}/vms/%3Cimg%20src%3Dx%20onerror%3D%22window.__pwned%3D4%22%3E",
        links.url
    ));
    browser.wait_until(
        "the missing VM's name, as text",
        "document.getElementById('error')?.textContent.includes('<img src=x onerror=\"window.__pwned=4\">')",
    );
    assert_eq!(browser.eval(injected), json!(0));
    browser.assert_no_script_errors();
}

/// Without a session, or from another origin or site, every page, the stream, the assets and
/// every action are refused, and a refused action changes nothing. With everything right, the
/// same action runs (the control).
async fn without_a_session_or_from_another_origin_everything_is_refused() {
    let lab = Lab::new().await;
    lab.cli_ok(&["vm", "create", "dev", "--image", "img"]);
    let links = lab.links();
    let http = lab.http(links.port);
    let own = format!("http://127.0.0.1:{}", links.port);
    let token_path = lab.daemon.layout().dashboard_token_path();
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600,
        "the token file is the owner's alone"
    );

    // Signing in: a wrong token gets no cookie; the right one an HttpOnly, Strict one.
    for token in ["", "0000", &"0".repeat(64)] {
        let reply = http.get(&format!("/login?token={token}"), &[]).await;
        assert_eq!(reply.status, 401, "token {token:?}");
        assert!(reply.header("set-cookie").is_none());
    }
    let reply = http
        .get(&format!("/login?token={}", token_of(&links)), &[])
        .await;
    let set_cookie = reply.header("set-cookie").expect("a cookie").to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = http.sign_in(token_of(&links)).await;
    let forged = format!(
        "{}=v1.1.{}",
        cookie.split('=').next().unwrap(),
        "0".repeat(64)
    );

    let pages = [
        "/",
        "/vms/dev",
        "/vms/dev?fragment=1",
        "/images",
        "/kernels",
        "/operations",
        "/events",
        "/stream?after=0",
        "/assets/dashboard.js",
        "/assets/dashboard.css",
        "/no-such-page",
    ];
    for path in pages {
        let anonymous = http.get(path, &[]).await;
        assert_eq!(anonymous.status, 401, "GET {path} without a session");
        assert!(
            !anonymous.body.contains("dev"),
            "GET {path}: {}",
            anonymous.body
        );
        let forged = http.get(path, &[("cookie", &forged)]).await;
        assert_eq!(forged.status, 401, "GET {path} with a forged session");
        let foreign = http
            .get(
                path,
                &[("cookie", &cookie), ("origin", "http://evil.example")],
            )
            .await;
        assert_eq!(foreign.status, 403, "GET {path} from a foreign origin");
        let other_port = http
            .get(
                path,
                &[("cookie", &cookie), ("origin", "http://127.0.0.1:1")],
            )
            .await;
        assert_eq!(other_port.status, 403, "GET {path} from another local port");
        let cross_site = http
            .get(
                path,
                &[
                    ("cookie", &cookie),
                    ("sec-fetch-site", "same-site"),
                    ("sec-fetch-mode", "no-cors"),
                ],
            )
            .await;
        assert_eq!(
            cross_site.status, 403,
            "GET {path} included by another site"
        );
        let rebound = http
            .get(
                path,
                &[
                    ("cookie", &cookie),
                    ("host", &format!("evil.example:{}", links.port)),
                ],
            )
            .await;
        assert_eq!(rebound.status, 403, "GET {path} through another host name");
        for reply in [&anonymous, &forged, &foreign, &cross_site, &rebound] {
            assert!(reply.header("access-control-allow-origin").is_none());
            assert!(
                reply
                    .header("content-security-policy")
                    .is_some_and(|csp| csp.contains("script-src 'self'")),
                "GET {path}: every answer carries the policy"
            );
            assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        }
    }
    // The control: with a session, from nowhere in particular (a typed URL), pages answer.
    for path in ["/", "/vms/dev", "/images", "/assets/dashboard.js"] {
        let reply = http.get(path, &[("cookie", &cookie)]).await;
        assert_eq!(reply.status, 200, "GET {path} signed in: {}", reply.body);
    }

    let page = http.get("/vms/dev", &[("cookie", &cookie)]).await.body;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry a CSRF token")
        .to_owned();
    let good_form = format!("csrf={csrf}");
    for action in ["stop", "start", "restart", "delete"] {
        let path = format!("/vms/dev/{action}");
        // (why, headers, form body, status)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16);
        let refusals: [Case; 7] = [
            ("no session", vec![("origin", &own)], &good_form, 401),
            (
                "a forged session",
                vec![("origin", &own), ("cookie", &forged)],
                &good_form,
                401,
            ),
            ("no Origin", vec![("cookie", &cookie)], &good_form, 403),
            (
                "a foreign Origin",
                vec![("cookie", &cookie), ("origin", "http://evil.example")],
                &good_form,
                403,
            ),
            (
                "another local port's Origin",
                vec![("cookie", &cookie), ("origin", "http://127.0.0.1:1")],
                &good_form,
                403,
            ),
            (
                "no CSRF token",
                vec![("cookie", &cookie), ("origin", &own)],
                "",
                403,
            ),
            (
                "a wrong CSRF token",
                vec![("cookie", &cookie), ("origin", &own)],
                "csrf=0000",
                403,
            ),
        ];
        for (why, headers, form, status) in refusals {
            let reply = http.send("POST", &path, &headers, Some(form)).await;
            assert_eq!(
                reply.status, status,
                "POST {path} with {why}: {}",
                reply.body
            );
        }
        // A GET is not an action.
        let reply = http.get(&path, &[("cookie", &cookie)]).await;
        assert_eq!(reply.status, 405, "GET {path}");
    }
    // Nothing of it reached an operation.
    assert_eq!(lab.vm_state("dev").await, VmState::Running);
    let events = all_events(&lab.daemon.socket()).await;
    assert!(
        !events.iter().any(|e| matches!(&e.event, Event::OperationStarted(s) if s.kind != OpKind::VmCreate && s.kind != OpKind::KernelImport && s.kind != OpKind::ImageRegister)),
        "a refused request started an operation"
    );

    // The control: everything right, and the stop runs.
    let reply = http
        .send(
            "POST",
            "/vms/dev/stop",
            &[("cookie", &cookie), ("origin", &own)],
            Some(&good_form),
        )
        .await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    assert_eq!(reply.header("location"), Some("/vms/dev"));
    assert_eq!(lab.vm_state("dev").await, VmState::Stopped);
    // A refusal from the operation itself comes back as a page that says why.
    let reply = http
        .send(
            "POST",
            "/vms/dev/stop",
            &[("cookie", &cookie), ("origin", &own)],
            Some(&good_form),
        )
        .await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("already stopped"), "{}", reply.body);
}

/// The event stream starts after `Last-Event-ID` (what a reconnecting browser sends), else
/// after `?after=`; its ids are the log's sequence numbers and event ids; a `Last-Event-ID`
/// whose event the log does not have at that seq gets a `reset`; and streams are limited in
/// number.
async fn the_stream_starts_after_the_last_event_id_and_is_limited() {
    let lab = Lab::new().await;
    let links = lab.links();
    let http = lab.http(links.port);
    let cookie = http.sign_in(token_of(&links)).await;
    let events = all_events(&lab.daemon.socket()).await;
    let last = events.len() as u64;
    assert!(last > 10, "the lab's kernel and image made events");

    let fifth = format!("5.{}", events[4].event_id);
    let resumed = http
        .open(
            "GET",
            "/stream?after=1",
            &[("cookie", &cookie), ("last-event-id", &fifth)],
            None,
        )
        .await;
    assert_eq!(first_event_ids(resumed, 3).await, [6, 7, 8]);
    let bare = http
        .open(
            "GET",
            "/stream",
            &[("cookie", &cookie), ("last-event-id", "5")],
            None,
        )
        .await;
    assert_eq!(first_event_ids(bare, 1).await, [6]);
    // Another event at seq 5, or a seq past the end: this log does not continue what the
    // page saw (a repaired log), so the page is told to start again.
    for changed in [
        format!("5.{}", events[5].event_id),
        format!("{}.{}", last + 100, events[4].event_id),
    ] {
        let reply = http
            .get(
                "/stream",
                &[("cookie", &cookie), ("last-event-id", &changed)],
            )
            .await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.contains("event: reset\n") && !reply.body.contains("id: "),
            "{changed}: {}",
            reply.body
        );
    }
    let fresh = http
        .open("GET", "/stream?after=3", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(first_event_ids(fresh, 3).await, [4, 5, 6]);
    // Live: an event appended after the stream caught up arrives with the next seq.
    let live = http
        .open(
            "GET",
            "/stream",
            &[
                ("cookie", &cookie),
                (
                    "last-event-id",
                    &format!("{last}.{}", events[last as usize - 1].event_id),
                ),
            ],
            None,
        )
        .await;
    let kernel_dir = kernel_source(&lab.root().scratch("kernel-2"), "6.1.0-two", false);
    lab.call(
        "kernel.import",
        json!({"name": "k2", "from": kernel_dir.display().to_string()}),
    )
    .await;
    assert_eq!(first_event_ids(live, 2).await, [last + 1, last + 2]);
    let bad = http
        .get(
            "/stream",
            &[("cookie", &cookie), ("last-event-id", "not-a-seq")],
        )
        .await;
    assert_eq!(bad.status, 400);

    // At most 32 at once: the next is refused, not queued.
    let mut open = Vec::new();
    for _ in 0..32 {
        let response = http
            .open("GET", "/stream", &[("cookie", &cookie)], None)
            .await;
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let refused = http.get("/stream", &[("cookie", &cookie)]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("at most 32"), "{}", refused.body);
}

/// `banger dashboard` prints the address and the sign-in link; `--open` hands xdg-open a
/// private page rather than the token; a turned-off dashboard is said to be off.
async fn banger_dashboard_prints_the_link_and_opens_it_without_the_token_in_argv() {
    let lab = Lab::new().await;
    let links = lab.links();
    assert!(links.url.starts_with("http://127.0.0.1:"), "{}", links.url);
    assert_eq!(links.url, format!("http://127.0.0.1:{}", links.port));
    let token = std::fs::read_to_string(lab.daemon.layout().dashboard_token_path()).unwrap();
    assert_eq!(
        links.login_url,
        format!("{}/login?token={}", links.url, token.trim())
    );
    let text = lab.cli_ok(&["dashboard"]);
    assert!(
        text.contains(&format!("dashboard: {}\n", links.url)),
        "{text}"
    );
    assert!(
        text.contains(&format!("sign in:   {}\n", links.login_url)),
        "{text}"
    );

    let bin = lab.root().scratch("bin");
    let recorded = bin.join("xdg-open.args");
    let opener = bin.join("xdg-open");
    std::fs::write(
        &opener,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n",
            recorded.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = lab.cli_with_path(&["dashboard", "--open"], Some(&path));
    assert!(output.status.success(), "{output:?}");
    let deadline = Instant::now() + DEADLINE;
    while !recorded.exists() {
        assert!(Instant::now() < deadline, "xdg-open was never run");
        std::thread::sleep(Duration::from_millis(20));
    }
    let argument = std::fs::read_to_string(&recorded).unwrap();
    let page = lab.daemon.layout().runtime_dir.join("dashboard-open.html");
    assert_eq!(argument.trim(), format!("file://{}", page.display()));
    assert!(
        !argument.contains(token.trim()),
        "the token is not on a command line"
    );
    assert_eq!(
        std::fs::metadata(&page).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&page)
            .unwrap()
            .contains(&links.login_url)
    );
    let without = lab.cli_with_path(&["dashboard", "--open"], Some("/nonexistent"));
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("xdg-open is not installed"),
        "{without:?}"
    );

    let off = Lab::with_dashboard("enabled = false").await;
    let output = off.cli(&["dashboard"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the dashboard is turned off"), "{stderr}");
}

/// What the pages show, read with a plain HTTP client and checked against the CLI: the images
/// and kernels pages list what `image list` and `kernel list` do; a VM's page lists the host
/// resources `vm show` does (its tap and VMM process among them); and an operation stuck in
/// its rollback (a failpoint on the undo of `prepare-rootfs`) and one held at
/// `wait-for-agent` (a guest that takes a minute to boot) show in the VM list's operation
/// column with their step, in the operations page's in-flight table (and not among the
/// finished ones), and on their VM's page.
async fn the_pages_show_what_the_cli_shows_and_operations_at_their_step() {
    let mut lab = Lab::new().await;
    // A second kernel (with an initrd) and image, so that the lists have more than one row.
    let kernel_dir = kernel_source(&lab.root().scratch("kernel-2"), "6.1.0-two", true);
    lab.call(
        "kernel.import",
        json!({"name": "k2", "from": kernel_dir.display().to_string()}),
    )
    .await;
    let rootfs = rootfs_file(&lab.root().scratch("image-2").join("rootfs.ext4"), 2 << 20);
    lab.call(
        "image.register",
        json!({"name": "img2", "rootfs": rootfs.display().to_string(), "kernel": "k2"}),
    )
    .await;
    lab.cli_ok(&["vm", "create", "dev", "--image", "img"]);
    let links = lab.links();
    let cookie = lab.http(links.port).sign_in(token_of(&links)).await;
    let page = async |lab: &Lab, path: &str| {
        let reply = lab.http(links.port).get(path, &[("cookie", &cookie)]).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        reply.body
    };

    // Images and kernels: what the CLI lists, row by row.
    let images: Vec<ImageView> =
        serde_json::from_str(&lab.cli_ok(&["image", "list", "--json"])).expect("image list");
    assert_eq!(images.len(), 2, "{images:?}");
    let mut expected: Vec<Vec<String>> = images
        .iter()
        .map(|image| {
            vec![
                image.name.clone(),
                banger::size::format_bytes(image.size_bytes),
                image.kernel.clone().unwrap_or_else(|| "-".into()),
                image.source.clone(),
                image.sha256.get(..12).unwrap_or(&image.sha256).to_owned(),
            ]
        })
        .collect();
    expected.sort();
    let body = page(&lab, "/images").await;
    let mut shown: Vec<Vec<String>> = rows(table(&body, "images"))
        .into_iter()
        .map(|row| cells(row)[..5].to_vec())
        .collect();
    shown.sort();
    assert_eq!(shown, expected, "the images page");

    let kernels: Vec<KernelView> =
        serde_json::from_str(&lab.cli_ok(&["kernel", "list", "--json"])).expect("kernel list");
    assert_eq!(kernels.len(), 2, "{kernels:?}");
    let mut expected: Vec<Vec<String>> = kernels
        .iter()
        .map(|kernel| {
            vec![
                kernel.name.clone(),
                if kernel.version.is_empty() {
                    "unknown".to_owned()
                } else {
                    kernel.version.clone()
                },
                if kernel.initrd_path.is_some() {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
                kernel.source.clone(),
                kernel.sha256.get(..12).unwrap_or(&kernel.sha256).to_owned(),
            ]
        })
        .collect();
    expected.sort();
    let body = page(&lab, "/kernels").await;
    let mut shown: Vec<Vec<String>> = rows(table(&body, "kernels"))
        .into_iter()
        .map(|row| cells(row)[..5].to_vec())
        .collect();
    shown.sort();
    assert_eq!(shown, expected, "the kernels page");
    assert!(
        shown
            .iter()
            .any(|row| row[..3] == ["k2", "6.1.0-two", "yes"]),
        "{shown:?}"
    );

    // The VM's host resources: those `vm show` lists, its tap and VMM process among them.
    let dev: VmShowResult =
        serde_json::from_str(&lab.cli_ok(&["vm", "show", "dev", "--json"])).expect("vm show");
    let mut expected: Vec<Vec<String>> = dev
        .handles
        .iter()
        .map(|entry| {
            vec![
                entry.handle.to_string(),
                entry.view.acquired_seq.to_string(),
            ]
        })
        .collect();
    expected.sort();
    let body = page(&lab, "/vms/dev").await;
    let mut shown: Vec<Vec<String>> = rows(table(&body, "handles"))
        .into_iter()
        .map(cells)
        .collect();
    shown.sort();
    assert_eq!(shown, expected, "dev's host resources");
    let vmm = dev.vm.process.expect("dev runs").pid;
    for wanted in ["tap ".to_owned(), format!("pid {vmm} ")] {
        assert!(
            shown.iter().any(|row| row[0].starts_with(&wanted)),
            "no {wanted}… among dev's host resources: {shown:?}"
        );
    }

    // An operation stuck in its rollback: the guest crashes at boot, and undoing
    // prepare-rootfs fails.
    lab.env.push(("FAKE_FC_CRASH_ON_BOOT".into(), "1".into()));
    lab.env.push((
        "BANGER_FAILPOINT".into(),
        "vm.create:prepare-rootfs:undo-error".into(),
    ));
    lab.restart();
    let failed = lab.cli(&["vm", "create", "stuck", "--image", "img"]);
    assert!(
        !failed.status.success() && String::from_utf8_lossy(&failed.stderr).contains("stuck"),
        "{failed:?}"
    );
    // An operation in flight: a guest that takes a minute to boot, within the boot timeout.
    lab.env
        .retain(|(key, _)| key != "FAKE_FC_CRASH_ON_BOOT" && key != "BANGER_FAILPOINT");
    lab.env
        .push(("FAKE_FC_BOOT_DELAY_MS".into(), "60000".into()));
    let config = lab.root().layout().config_dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("boot = \"10s\"", "boot = \"120s\"")).unwrap();
    lab.restart();
    assert_eq!(
        lab.links().port,
        links.port,
        "the same port after a restart"
    );
    lab.call(
        "vm.create",
        json!({"name": "slow", "image": "img", "no_wait": true}),
    )
    .await;

    // The VM list: each VM's operation and its step, as the operation's view has it.
    let cell_of = |op: &OperationView| {
        let step = op.current_step().expect("a step");
        format!("{} {}: {} ({})", op.kind, op.status, step.name, step.status)
    };
    let operation_column = |body: &str, name: &str| {
        cells(row_with(table(body, "vms"), &format!("data-vm=\"{name}\"")))[8].clone()
    };
    let deadline = Instant::now() + DEADLINE;
    let (stuck, slow, body) = loop {
        let listed: OperationsListResult =
            serde_json::from_value(lab.call("daemon.operations.list", json!({})).await)
                .expect("daemon.operations.list");
        let on = |name: &str| {
            listed
                .operations
                .iter()
                .find(|op| op.target.to_string() == format!("vm {name}"))
                .cloned()
        };
        let body = page(&lab, "/").await;
        if let (Some(stuck), Some(slow)) = (on("stuck"), on("slow"))
            && slow
                .current_step()
                .is_some_and(|step| step.name == "wait-for-agent")
            && operation_column(&body, "slow") == cell_of(&slow)
        {
            break (stuck, slow, body);
        }
        assert!(
            Instant::now() < deadline,
            "slow never showed at wait-for-agent: {listed:?}\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stuck.status, OpStatus::Stuck, "{stuck:?}");
    assert_eq!(
        stuck.current_step().map(|step| step.name.as_str()),
        Some("prepare-rootfs"),
        "{stuck:?}"
    );
    assert_eq!(slow.status, OpStatus::Running, "{slow:?}");
    assert_eq!(operation_column(&body, "dev"), "-");
    assert_eq!(operation_column(&body, "stuck"), cell_of(&stuck));
    assert_eq!(
        operation_column(&body, "stuck"),
        "vm.create stuck: prepare-rootfs (undo_failed)"
    );
    assert_eq!(
        operation_column(&body, "slow"),
        "vm.create running: wait-for-agent (started)"
    );
    for (name, op) in [("stuck", &stuck), ("slow", &slow)] {
        let row = row_with(table(&body, "vms"), &format!("data-vm=\"{name}\""));
        assert!(
            row.contains(&format!(
                "<span class=\"op op-{}\" title=\"operation {}\">",
                op.status, op.op_id
            )),
            "{row}"
        );
    }

    // The operations page: both in the table of those in flight (and stuck), oldest first,
    // at their step; neither among the finished ones, where dev's create is.
    let body = page(&lab, "/operations").await;
    let unresolved = table(&body, "ops-unresolved");
    let shown: Vec<Vec<String>> = rows(unresolved).into_iter().map(cells).collect();
    assert_eq!(shown.len(), 2, "{unresolved}");
    for (row, op, target, status, step) in [
        (
            &shown[0],
            &stuck,
            "vm stuck",
            "stuck",
            "prepare-rootfs undo_failed",
        ),
        (
            &shown[1],
            &slow,
            "vm slow",
            "running",
            "wait-for-agent started",
        ),
    ] {
        assert_eq!(
            row[..4],
            [
                op.op_id.to_string()[..8].to_owned(),
                "vm.create".to_owned(),
                target.to_owned(),
                status.to_owned()
            ],
            "{unresolved}"
        );
        assert!(row[4].contains(step), "{row:?}");
        assert!(
            unresolved.contains(&format!("<tr data-op=\"{}\">", op.op_id)),
            "{unresolved}"
        );
    }
    let finished = table(&body, "ops-finished");
    assert!(
        !finished.contains(&stuck.op_id.to_string()) && !finished.contains(&slow.op_id.to_string()),
        "{finished}"
    );
    assert!(
        rows(finished)
            .into_iter()
            .map(cells)
            .any(|row| row[1..4] == ["vm.create", "vm dev", "succeeded"]),
        "{finished}"
    );

    // Their VMs' pages say which operation holds them, at which step, and offer no action.
    for (path, op) in [("/vms/stuck", &stuck), ("/vms/slow", &slow)] {
        let body = page(&lab, path).await;
        let busy = body
            .split_once("<p class=\"busy\">")
            .and_then(|(_, rest)| rest.split_once("</p>"))
            .map(|(busy, _)| text_of(busy))
            .unwrap_or_else(|| panic!("{path} does not say what holds it:\n{body}"));
        assert_eq!(
            busy,
            format!("An operation holds this VM: {}", cell_of(op)),
            "{path}"
        );
        let actions = body
            .split_once("<div class=\"actions\">")
            .and_then(|(_, rest)| rest.split_once("</div>"))
            .map(|(actions, _)| actions)
            .expect("the action buttons");
        assert_eq!(
            actions.matches(" disabled>").count(),
            4,
            "{path}: {actions}"
        );
    }
}

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio a_vm_created_through_the_cli_appears_live_and_is_stopped_from_its_page needs(Root, Browser),
        tokio the_event_page_resumes_after_bangerd_is_killed_and_restarted needs(Root, Browser),
        tokio hostile_console_output_kernel_banners_and_names_stay_text needs(Root, Browser),
        tokio without_a_session_or_from_another_origin_everything_is_refused needs(Root),
        tokio the_pages_show_what_the_cli_shows_and_operations_at_their_step needs(Root),
        tokio the_stream_starts_after_the_last_event_id_and_is_limited,
        tokio banger_dashboard_prints_the_link_and_opens_it_without_the_token_in_argv,
    ]
}
