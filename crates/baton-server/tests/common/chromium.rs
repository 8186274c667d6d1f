//! Headless Chromium driven over the DevTools protocol, for tests of what a real
//! browser does (EventSource, CORS, the Origin it sends).

use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// Where Chromium is: `BATON_TEST_CHROMIUM` (scripts/test sets it) or the Debian path.
pub fn chromium() -> String {
    let path = std::env::var("BATON_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "this test needs Chromium at {path}: run `bash scripts/test` (it installs it), or \
         `apt-get install -y chromium`, or set BATON_TEST_CHROMIUM to its path"
    );
    path
}

/// A DevTools protocol client over the browser's WebSocket.
pub struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    events: Vec<Value>,
}

impl Cdp {
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let msg = self.read().await;
            if msg["id"] == id {
                assert!(msg.get("error").is_none(), "{method}: {msg}");
                return msg["result"].clone();
            }
            self.events.push(msg);
        }
    }

    async fn read(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .expect("Chromium answers within 60 s")
                .expect("Chromium's DevTools socket is open")
                .unwrap();
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    pub async fn wait_event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i);
        }
        loop {
            let msg = self.read().await;
            if msg["method"] == method {
                return msg;
            }
            self.events.push(msg);
        }
    }
}

/// A headless Chromium with one page, attached to; killed when dropped.
pub struct Browser {
    child: tokio::process::Child,
    pub cdp: Cdp,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let chromium = chromium();
        let profile = tempfile::TempDir::new().unwrap();
        let mut child = tokio::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromium}: {e}"));

        // Chromium says where its DevTools listen on stderr; the rest of stderr is kept
        // for a failure message.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut said = String::new();
        let devtools = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
                said.push_str(&line);
                said.push('\n');
            }
            panic!("Chromium exited before its DevTools listened:\n{said}");
        })
        .await
        .unwrap_or_else(|_| panic!("Chromium's DevTools did not listen within 60 s"));
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (ws, _) = tokio_tungstenite::connect_async(&devtools).await.unwrap();
        let mut cdp = Cdp {
            ws,
            next_id: 0,
            events: Vec::new(),
        };
        let targets = cdp.call(None, "Target.getTargets", json!({})).await;
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap_or_else(|| panic!("no page in {targets}"))["targetId"]
            .clone();
        let attached = cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": page, "flatten": true}),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        cdp.call(Some(&session), "Page.enable", json!({})).await;
        Browser {
            child,
            cdp,
            session,
            _profile: profile,
        }
    }

    /// Lets the page's scripts connect wherever the test says, whatever the
    /// Content-Security-Policy of the document it loaded.
    pub async fn bypass_csp(&mut self) {
        self.cdp
            .call(
                Some(&self.session),
                "Page.setBypassCSP",
                json!({"enabled": true}),
            )
            .await;
    }

    /// Loads `url` in the page and waits for its load event.
    pub async fn open(&mut self, url: &str) {
        self.cdp
            .call(Some(&self.session), "Page.navigate", json!({"url": url}))
            .await;
        self.cdp.wait_event("Page.loadEventFired").await;
    }

    /// Loads the page again and waits for its load event.
    pub async fn reload(&mut self) {
        self.cdp
            .call(Some(&self.session), "Page.reload", json!({}))
            .await;
        self.cdp.wait_event("Page.loadEventFired").await;
    }

    /// Freezes the page (`frozen`: hidden, and no script runs, as for a tab the browser
    /// put away) or lets it run again (`active`, still hidden).
    pub async fn lifecycle(&mut self, state: &str) {
        self.cdp
            .call(
                Some(&self.session),
                "Page.setWebLifecycleState",
                json!({"state": state}),
            )
            .await;
    }

    /// Waits until the page's event stream is live (its badge says so).
    pub async fn wait_live(&mut self) {
        self.wait_for(
            "the stream live",
            "document.getElementById('conn').dataset.state === 'live'",
        )
        .await;
    }

    /// Shows the page again, as when the person returns to its tab.
    pub async fn bring_to_front(&mut self) {
        let focus = json!({"enabled": true});
        self.cdp
            .call(
                Some(&self.session),
                "Emulation.setFocusEmulationEnabled",
                focus,
            )
            .await;
    }

    /// Starts recording the page's frame times (requestAnimationFrame deltas) and long
    /// tasks; `frames` stops and reports them.
    pub async fn record_frames(&mut self) {
        self.evaluate(
            "(() => { window.frameTimes = []; window.longTasks = []; window.recording = true; \
              new PerformanceObserver(l => l.getEntries().forEach(e => window.longTasks.push(Math.round(e.duration)))).observe({type: 'longtask'}); \
              let last = performance.now(); \
              const tick = t => { window.frameTimes.push(t - last); last = t; if (window.recording) requestAnimationFrame(tick); }; \
              requestAnimationFrame(tick); return '1'; })()",
        )
        .await;
    }

    /// The frames since `record_frames`: `n` of them, the longest (`max`, ms, the first
    /// left out as it started before the recording), all of them, and the long tasks.
    pub async fn frames(&mut self) -> Value {
        self.evaluate(
            "(window.recording = false, JSON.stringify({n: window.frameTimes.length, \
              max: Math.max(...window.frameTimes.slice(1)), all: window.frameTimes.map(Math.round), \
              long: window.longTasks}))",
        )
        .await
    }

    /// Runs a script that resolves to a JSON string in the page; what it says.
    pub async fn evaluate(&mut self, script: &str) -> Value {
        let result = self
            .cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({"expression": script, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "the page's script failed: {}",
            result["exceptionDetails"]
        );
        serde_json::from_str(result["result"]["value"].as_str().unwrap()).unwrap()
    }

    /// Waits until `expression` (evaluated in the page, again and again) is truthy,
    /// and returns its value as JSON; panics naming `what` after 20 s. An expression
    /// that throws (an element not drawn yet) is not true yet; the last error is told.
    pub async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let script = format!(
            "(async () => {{ try {{ return JSON.stringify({{ok: await ({expression}) ?? null}}); }} \
               catch (e) {{ return JSON.stringify({{thrown: String(e)}}); }} }})()"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let said = self.evaluate(&script).await;
            let value = said.get("ok").cloned().unwrap_or(Value::Null);
            if !(value.is_null() || value == json!(false) || value == json!("")) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what} ({expression}){}",
                said.get("thrown")
                    .map(|e| format!("; it last threw {e}"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves what the page downloads into `dir`, under the names it gives.
    pub async fn download_to(&mut self, dir: &std::path::Path) {
        self.cdp
            .call(
                None,
                "Browser.setDownloadBehavior",
                json!({"behavior": "allow", "downloadPath": dir.display().to_string(), "eventsEnabled": true}),
            )
            .await;
    }

    /// Sets the page's size, as a window of that many CSS pixels would.
    pub async fn size(&mut self, width: u32, height: u32) {
        self.cdp
            .call(
                Some(&self.session),
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
    }

    /// Writes a PNG of the page to `target/screenshots/{name}.png` (the workspace's).
    pub async fn screenshot(&mut self, name: &str) {
        use base64::Engine as _;
        let shot = self
            .cdp
            .call(
                Some(&self.session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(mut self) {
        self.cdp.call(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
