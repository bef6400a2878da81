//! The Batch service stand-in (`tests/batch_standin.py`), started for one test: it checks
//! every request batchfs sends (method, path, api-version, and the Shared Key signature as
//! Microsoft's `azure-batch` package computes it, or the bearer token), and its control API
//! lets a test grow files, inject failures and read the request log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/py/bin/python");
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/batch_standin.py");
/// The Batch account the stand-in serves, and its key (base64).
pub const ACCOUNT: &str = "alpha";
pub const KEY: &str = "YmF0Y2gtYWNjb3VudC1rZXktZm9yLXRlc3Rz";

pub struct Standin {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Standin {
    /// Starts the stand-in with `fixture` (JSON) and extra flags (`--token T`...).
    pub fn start(fixture: &Value, extra: &[&str]) -> Standin {
        let dir = tempfile::tempdir().expect("tempdir");
        let fx = dir.path().join("fixture.json");
        std::fs::write(&fx, fixture.to_string()).expect("fixture");
        Standin::start_args(dir, &["--fixture", fx.to_str().expect("utf-8 path")], extra)
    }

    /// Starts the stand-in with its own generated fixture (`--demo`, `--bench-tasks N`).
    pub fn start_generated(args: &[&str]) -> Standin {
        Standin::start_args(tempfile::tempdir().expect("tempdir"), args, &[])
    }

    fn start_args(dir: tempfile::TempDir, args: &[&str], extra: &[&str]) -> Standin {
        let port_file = dir.path().join("port");
        let child = Command::new(PYTHON)
            .arg(SCRIPT)
            .args(["--account", ACCOUNT, "--key", KEY, "--port-file"])
            .arg(&port_file)
            .args(args)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the stand-in starts (run scripts/setup.sh first)");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the stand-in did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Standin {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A control request; returns the answer's body.
    pub fn control(&self, method: &str, what: &str, body: &Value) -> String {
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            s,
            "{method} /_standin/{what} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{head}"
        );
        body.to_string()
    }

    pub fn post(&self, what: &str, body: Value) {
        self.control("POST", what, &body);
    }

    /// Every data request so far: `{method, path, query, auth, status}`.
    pub fn requests(&self) -> Vec<Value> {
        serde_json::from_str(&self.control("GET", "requests", &Value::Null)).expect("JSON")
    }

    pub fn reset(&self) {
        self.post("reset", Value::Null);
    }

    /// Asserts the stand-in saw nothing the real service would refuse.
    pub fn no_violations(&self) {
        let v: Vec<String> =
            serde_json::from_str(&self.control("GET", "violations", &Value::Null)).expect("JSON");
        assert!(
            v.is_empty(),
            "requests the Batch service would refuse: {v:#?}"
        );
    }

    /// An accounts file for the stand-in's account, with `extra` lines in `[[account]]`.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[[account]]\nname = \"{ACCOUNT}\"\nendpoint = \"{}\"\n{extra}\n",
            self.url()
        )
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
