//! Headless Chromium for the browser tests: Debian's chromium under chromedriver, driven over
//! WebDriver; and a website on an origin of its own.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Chromium under chromedriver, in a process group of its own so that nothing outlives the
/// test (chromedriver's browser included).
pub(crate) struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.wait();
    }
}

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    pub(crate) async fn start(dir: &Path, microphone: Option<&Path>) -> Browser {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chromedriver.log")).map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = dir.join("chromium-profile");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--use-fake-device-for-media-stream".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            "--disable-features=WebRtcHideLocalIpsWithMdns".into(),
            // The engine and the page are on loopback: let ICE use it.
            "--allow-loopback-in-peer-connection".into(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1280,800".into(),
        ];
        let mut args = args.to_vec();
        if let Some(microphone) = microphone {
            args.push(format!("--use-file-for-fake-audio-capture={}", microphone.display()));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        } } });
        let r: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {r}")).to_string();
        Browser { driver, base, session, http }
    }

    /// The element `css` matches (its WebDriver reference), or null.
    pub(crate) async fn find(&self, css: &str) -> Value {
        let found = self.command("element", json!({ "using": "css selector", "value": css })).await;
        found.get(ELEMENT).cloned().unwrap_or(Value::Null)
    }

    /// Types `text` into the element `css` matches (for a file input: the file's path).
    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        let Some(id) = element.as_str() else {
            let raw = self.command("element", json!({ "using": "css selector", "value": css })).await;
            panic!("no element {css}: {raw}");
        };
        let done = self.command(&format!("element/{id}/value"), json!({ "text": text })).await;
        assert!(done.get("error").is_none(), "typing into {css}: {done}");
    }

    /// A PNG of the viewport.
    pub(crate) async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let r: Value = self.http.get(format!("{}/session/{}/screenshot", self.base, self.session)).send().await.unwrap().json().await.unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(r["value"].as_str().unwrap_or_default()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The current page's URL.
    pub(crate) async fn url(&self) -> String {
        let r: Value = self.http.get(format!("{}/session/{}/url", self.base, self.session)).send().await.unwrap().json().await.unwrap();
        r["value"].as_str().unwrap_or_default().to_string()
    }

    pub(crate) async fn command(&self, path: &str, body: Value) -> Value {
        let r: Value = self.http.post(format!("{}/session/{}/{path}", self.base, self.session)).json(&body).send().await.unwrap().json().await.unwrap();
        r["value"].clone()
    }

    pub(crate) async fn go(&self, url: &str) {
        self.command("url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub(crate) async fn run(&self, script: &str) -> Value {
        self.command("execute/sync", json!({ "script": script, "args": [] })).await
    }

    /// The widget's text and the page's console, for a failure's message.
    pub(crate) async fn diagnostics(&self) -> String {
        let text = self.run("const w = document.querySelector('.cxb-widget'); return w ? w.dataset.state + ': ' + w.textContent : 'no widget';").await;
        let log = self.command("se/log", json!({ "type": "browser" })).await;
        let lines: Vec<String> = log.as_array().map(|l| l.iter().map(|e| e["message"].as_str().unwrap_or("").to_string()).collect()).unwrap_or_default();
        format!("widget: {text}\nconsole:\n{}", lines.join("\n"))
    }

    /// Polls `script` until it returns something truthy (not null, false, 0 or "").
    pub(crate) async fn until(&self, what: &str, limit: Duration, script: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.run(script).await;
            let truthy = !(v.is_null() || v == false || v == 0 || v == "" || v.get("error").is_some());
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: still {v} after {limit:?}\n{}", self.diagnostics().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A website on its own origin: every GET answers `page`.
pub(crate) async fn website(page: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", page.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(page.as_bytes()).await;
            });
        }
    });
    origin
}

