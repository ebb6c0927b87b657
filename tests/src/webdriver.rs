//! A W3C WebDriver session with headless Chromium through `chromedriver`,
//! spoken as JSON over [`crate::http`]: start, open a URL, run a script,
//! take a screenshot. No client crate: these five commands are all the
//! dashboard test needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::http;
use crate::process::Guard;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium and chromedriver binaries, if installed (Debian's
/// `chromium` and `chromium-driver`).
pub fn find_browser() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            })
        })
    };
    Some((
        find(&["chromium", "chromium-browser", "google-chrome"])?,
        find(&["chromedriver"])?,
    ))
}

/// A chromedriver process with one browser session.
pub struct Browser {
    addr: SocketAddr,
    session: String,
    _driver: Guard,
}

fn free_port() -> anyhow::Result<u16> {
    // chromedriver takes a port, not a listener: find a free one (a race
    // with other processes is possible but harmless: starting would fail loudly).
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Browser {
    /// Starts `driver` and a headless `chromium` session of `width`×`height`.
    ///
    /// # Errors
    /// If chromedriver does not come up within a minute or refuses the session.
    pub fn start(
        chromium: &Path,
        driver: &Path,
        width: u32,
        height: u32,
    ) -> anyhow::Result<Browser> {
        let port = free_port()?;
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", driver.display()))?;
        let guard = Guard(child);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let ready = http::request(addr, "GET", "/status", &[], None, Duration::from_secs(5))
                .ok()
                .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            // Polling chromedriver's readiness: it offers nothing to wait on.
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}")],
            },
        }}});
        let r = http::request(
            addr,
            "POST",
            "/session",
            &[],
            Some(&caps.to_string()),
            TIMEOUT,
        )?;
        let v: Value = serde_json::from_slice(&r.body).context("session answer")?;
        let Some(session) = v["value"]["sessionId"].as_str() else {
            bail!("no session: {v}");
        };
        Ok(Browser {
            addr,
            session: session.to_string(),
            _driver: guard,
        })
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        let body = body.map(|b| b.to_string());
        let r = http::request(self.addr, method, &path, &[], body.as_deref(), TIMEOUT)?;
        let v: Value =
            serde_json::from_slice(&r.body).with_context(|| format!("{method} {path}"))?;
        if r.status != 200 {
            bail!("{method} {path}: {}: {v}", r.status);
        }
        Ok(v["value"].clone())
    }

    /// Opens `url`.
    ///
    /// # Errors
    /// If the browser cannot.
    pub fn open(&self, url: &str) -> anyhow::Result<()> {
        self.command("POST", "/url", Some(json!({"url": url})))?;
        Ok(())
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    ///
    /// # Errors
    /// If the script throws.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls `script` until `done` accepts its value or `limit` passes (a
    /// failure bound); returns every distinct value seen, in order.
    ///
    /// # Errors
    /// If the script fails, or `limit` passes first.
    pub fn wait_for(
        &self,
        script: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + limit;
        let mut seen: Vec<Value> = Vec::new();
        loop {
            let v = self.eval(script)?;
            if seen.last() != Some(&v) {
                seen.push(v.clone());
            }
            if done(&v) {
                return Ok(seen);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "page never reached the condition of {script:?}; saw {seen:?}"
            );
            // Each poll is a WebDriver round trip; a short pause keeps them from
            // hogging the two cores the run itself needs.
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Saves a PNG screenshot of the window to `path`.
    ///
    /// # Errors
    /// If the browser or the file system fails.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine;
        let v = self.command("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot is not a string")?)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = http::request(
            self.addr,
            "DELETE",
            &path,
            &[],
            None,
            Duration::from_secs(10),
        );
    }
}
