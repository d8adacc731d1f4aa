//! Starting and stopping a real `wattdb serve`, and a small HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// Whether the server checks tokens (else it runs with --without-auth).
    auth: bool,
    /// Sent by the helpers below as `Authorization: Bearer …`.
    pub token: Option<String>,
}

impl Server {
    /// Starts `wattdb serve` on a free loopback port with data in `data_dir`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// Like [`Server::start`], with environment variables for the server process.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_as(data_dir, extra, env, false)
    }

    /// Starts a server that checks tokens, with an admin token (created with `wattdb
    /// token create` before the start) in [`Server::token`].
    pub fn start_with_auth(data_dir: &Path, extra: &[&str]) -> Server {
        let token = create_token(data_dir, &["--scope", "admin"]);
        let mut s = Server::start_as(data_dir, extra, &[], true);
        s.token = Some(token);
        s
    }

    fn start_as(data_dir: &Path, extra: &[&str], env: &[(&str, &str)], auth: bool) -> Server {
        let mut s = Server {
            child: None,
            url: String::new(),
            data_dir: data_dir.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            auth,
            token: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wattdb"))
            .args(serve_args(self.auth))
            .arg(&self.data_dir)
            .args(&self.extra)
            .args(self.no_mqtt())
            .args(self.keep_forever())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start wattdb");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "wattdb exited: see {}",
                    self.data_dir.with_extension("log").display()
                )
            })
            .unwrap();
        let url = line
            .strip_prefix("wattdb listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.url = url.to_owned();
        self.child = Some(child);
    }

    /// Tests that do not say how to do MQTT run without it: the embedded broker's
    /// default port would be shared between tests.
    fn no_mqtt(&self) -> Option<&'static str> {
        let mqtt = self
            .extra
            .iter()
            .any(|a| a.starts_with("--mqtt") || a == "--no-mqtt");
        (!mqtt).then_some("--no-mqtt")
    }

    /// Tests that do not set a retention keep everything: their readings have fixed
    /// times, which retention by the wall clock would expire as the calendar moves on.
    fn keep_forever(&self) -> Vec<&'static str> {
        if self.extra.iter().any(|a| a.starts_with("--retention")) {
            return Vec::new();
        }
        [
            "--retention-raw",
            "--retention-1m",
            "--retention-1h",
            "--retention-1d",
        ]
        .into_iter()
        .flat_map(|flag| [flag, "forever"])
        .collect()
    }

    /// The counter or gauge `name` (with its labels, as printed) from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let term = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(term.success());
            let status = c.wait().unwrap();
            assert!(status.success(), "wattdb exited with {status}");
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        let mut req = agent()
            .post(&format!("{}{path}", self.url))
            .set("Content-Type", content_type);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        response(req.send_bytes(body))
    }

    pub fn write_lp(&self, body: &str) -> (u16, String) {
        self.post("/api/v2/write", "text/plain", body.as_bytes())
    }

    /// Runs SQL and returns the rows as JSON objects; panics on any error.
    pub fn sql(&self, sql: &str) -> Vec<Value> {
        let (status, body) = self.query(sql, "json");
        assert_eq!(
            status,
            200,
            "{sql}: {body}\nserver log:\n{}",
            self.log_tail()
        );
        serde_json::from_str::<Vec<Value>>(&body)
            .unwrap_or_else(|e| panic!("{e}: {body:.200}\nserver log:\n{}", self.log_tail()))
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn query(&self, sql: &str, format: &str) -> (u16, String) {
        let body = serde_json::json!({"sql": sql, "format": format}).to_string();
        self.post("/api/v1/query", "application/json", body.as_bytes())
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut req = agent().get(&format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        response(req.call())
    }
}

/// Runs `wattdb serve` on `data` and returns its output, for starts that must fail.
pub fn serve_once(data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(serve_args(false))
        .arg(data)
        .arg("--no-mqtt")
        .output()
        .unwrap()
}

fn serve_args(auth: bool) -> Vec<&'static str> {
    let mut args = vec!["serve"];
    if !auth {
        args.push("--without-auth");
    }
    args.extend(["--http-addr", "127.0.0.1:0", "--data-dir"]);
    args
}

/// Runs `wattdb token create --data-dir DIR ARGS` and returns the token it prints.
pub fn create_token(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(["token", "create", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

pub fn response(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => {
            let status = resp.status();
            let mut body = String::new();
            match std::io::Read::read_to_string(&mut resp.into_reader(), &mut body) {
                Ok(_) => (status, body),
                Err(e) => (status, format!("<body read failed: {e}>")),
            }
        }
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// One line of line protocol for plug `device` at time `ts` (ns).
pub fn lp_line(device: &str, ts: i64, power: f64) -> String {
    format!(
        "power_metrics,device_id={device},location=lab voltage=230.1,current={:.3},power={power:.1},energy=1.5,relay_state=true {ts}",
        power / 230.1
    )
}

/// Runs a Python snippet (the readers the tests compare with: pyarrow, DuckDB); its
/// stdout lines.
pub fn python(script: &str, env: &[(&str, &str)]) -> Vec<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .output()
        .expect("python3 (installed by scripts/test)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `wattdb loadgen --json` with `args`, which must succeed; its report.
pub fn loadgen_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(["loadgen", "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
