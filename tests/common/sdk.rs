//! Microsoft's Python SDK (`azure-storage-blob`, driven through `tests/pysdk.py`): a client
//! this project did not write, to put blobs the way other tools do and to check what storage
//! holds after batchfs changed it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use serde_json::Value;

use super::{Azurite, DEV_ACCOUNT, DEV_KEY, Mount, config_for};

pub const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/py/bin/python");
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pysdk.py");

pub type Metadata = BTreeMap<String, String>;

/// A blob as the SDK sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub data: Vec<u8>,
    pub metadata: Metadata,
    /// Last-Modified, seconds since the epoch.
    pub last_modified: i64,
}

/// Microsoft's Python SDK, on the Azurite account.
pub struct Sdk {
    pub conn: String,
}

impl Sdk {
    pub fn new(az: &Azurite) -> Sdk {
        assert!(
            Path::new(PYTHON).exists(),
            "{PYTHON} is missing: run scripts/setup.sh"
        );
        Sdk {
            conn: format!(
                "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint={};",
                az.endpoint()
            ),
        }
    }

    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(PYTHON)
            .arg(SCRIPT)
            .arg(&self.conn)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python runs");
        let mut input = child.stdin.take().expect("stdin");
        let stdin = stdin.to_vec();
        let feeder = std::thread::spawn(move || input.write_all(&stdin));
        let out = child.wait_with_output().expect("python output");
        feeder.join().expect("feeder").expect("write stdin");
        out
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "pysdk {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn container(&self, name: &str) {
        self.ok(&["mkcontainer", name], b"");
    }

    /// Every blob of `container` with its bytes and metadata.
    pub fn dump(&self, container: &str) -> BTreeMap<String, Stored> {
        let out = self.ok(&["dump", container], b"");
        let v: Vec<Value> = serde_json::from_slice(&out).expect("dump is JSON");
        v.into_iter()
            .map(|b| (b["name"].as_str().unwrap().to_string(), stored(&b)))
            .collect()
    }

    pub fn names(&self, container: &str) -> BTreeSet<String> {
        let out = self.ok(&["list", container], b"");
        serde_json::from_slice(&out).expect("list is JSON")
    }

    /// The blob's properties as the SDK reports them (`head` of tests/pysdk.py), or null.
    pub fn props(&self, container: &str, name: &str) -> Value {
        let out = self.ok(&["head", container, name], b"");
        serde_json::from_slice(&out).expect("head is JSON")
    }

    pub fn head(&self, container: &str, name: &str) -> Option<Stored> {
        let out = self.ok(&["head", container, name], b"");
        let v: Value = serde_json::from_slice(&out).expect("head is JSON");
        if v.is_null() {
            return None;
        }
        let mut s = stored(&v);
        s.data = self.ok(&["get", container, name], b"");
        Some(s)
    }
}

pub fn stored(v: &Value) -> Stored {
    let lm = v["last_modified"].as_str().expect("last_modified");
    Stored {
        data: v
            .get("data_b64")
            .and_then(Value::as_str)
            .map(|d| base64::engine::general_purpose::STANDARD.decode(d).unwrap())
            .unwrap_or_default(),
        metadata: serde_json::from_value(v["metadata"].clone()).expect("metadata"),
        last_modified: time::OffsetDateTime::parse(
            lm,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|e| panic!("last_modified {lm}: {e}"))
        .unix_timestamp(),
    }
}

/// A fresh Azurite with `container` made by the SDK, and a mount of it with default options.
pub fn mounted_with_container(container: &str) -> (Azurite, Sdk, Mount) {
    let az = Azurite::start();
    let sdk = Sdk::new(&az);
    sdk.container(container);
    let m = Mount::start(&config_for(&az, ""), &[]);
    (az, sdk, m)
}
