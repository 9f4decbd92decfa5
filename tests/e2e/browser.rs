//! Headless Chromium, driven over the DevTools protocol, to test the
//! inspector page as a person uses it.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// A page open in a headless browser.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    session: String,
}

impl Browser {
    /// Opens `url` in a new headless Chromium.
    pub fn open(url: &str) -> Browser {
        let binary = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("the inspector page tests need Chromium (hint: `apt-get install chromium`; .ci/run installs it)");
        let profile = tempfile::tempdir().expect("a temp dir");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let endpoint = loop {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).expect("chromium's output") > 0,
                "chromium exited early"
            );
            if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                break url.to_owned();
            }
        };
        // Keep draining, so chromium never blocks on a full pipe.
        std::thread::spawn(move || for _ in stderr.lines() {});
        let authority = endpoint
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("an authority")
            .to_owned();
        let stream = TcpStream::connect(&authority).expect("the DevTools port accepts");
        let (socket, _) = tungstenite::client(endpoint.as_str(), stream).expect("a DevTools connection");
        let mut browser = Browser {
            child,
            _profile: profile,
            socket,
            next_id: 0,
            session: String::new(),
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().expect("a session").to_owned();
        // Evaluating while the page still navigates fails: wait for it to
        // load (a login link goes on to the page itself).
        let page = url.split_once("login?").map_or(url, |(page, _)| page);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let loaded = browser.try_eval("document.readyState === 'complete' && location.href");
            if loaded.as_ref().is_ok_and(|href| href.as_str() == Some(page)) {
                return browser;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the page did not load: {loaded:?}"
            );
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .expect("DevTools takes the command");
        loop {
            let reply = self.socket.read().expect("DevTools answers");
            let Message::Text(text) = reply else { continue };
            let reply: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
            if reply["id"] == json!(self.next_id) {
                return match reply.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(reply["result"].clone()),
                };
            }
        }
    }

    /// Runs `expression` in the page (promises are awaited); its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|error| panic!("{expression}: {error}"))
    }

    fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self.try_call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        )?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Saves a PNG of the page as it looks now under
    /// `<target tmp>/screenshots/<name>.png`, for a person to look at;
    /// returns its path.
    pub fn screenshot(&mut self, name: &str) -> std::path::PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().expect("image data").as_bytes())
            .expect("base64");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).expect("a screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    /// Waits, in the page, until `condition` (a JS expression) is truthy;
    /// returns its value. Fails after 20 s.
    pub fn wait_until(&mut self, condition: &str, what: &str) -> Value {
        let value = self.eval(&format!(
            "(async () => {{ const end = Date.now() + 20000; for (;;) {{ \
               const v = (() => {condition})(); if (v) return v; \
               if (Date.now() > end) return null; await new Promise(r => setTimeout(r, 20)); }} }})()"
        ));
        assert!(!value.is_null(), "timed out waiting for {what}");
        value
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
