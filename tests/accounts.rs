//! Where accounts come from: Azure Resource Manager discovery (against a local fake ARM),
//! Entra ID tokens for storage (against Azurite over HTTPS with `--oauth basic`), and a
//! compute node's own account.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::arm::{FakeArm, FakeBatch, FakeStorage, State};
use common::*;
use serde_json::Value;

const SUB: &str = "11111111-2222-3333-4444-555555555555";
const TOKEN: &str = "arm-token-secret-0d9c7e";

fn key(tag: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("batchfs-test-key-{tag}-{:0>40}", tag))
}

fn batch(name: &str, storage: Option<&str>) -> FakeBatch {
    FakeBatch {
        name: name.into(),
        resource_group: "rg-render".into(),
        storage: storage.map(str::to_string),
        storage_mode: None,
        modes: None,
        primary: format!("batch-primary-{name}-secret1"),
        secondary: format!("batch-secondary-{name}-secret2"),
        endpoint: None,
    }
}

/// A discovery setup: Azurite holding storage account `batchsto1` (key A), and a fake ARM
/// with three Batch accounts: `render` linked to it, `plain` without storage and `aadonly`
/// whose keys may not be read.
struct World {
    az: Option<Azurite>,
    az_opts: AzuriteOpts,
    _az_dir: tempfile::TempDir,
    arm: FakeArm,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = AzuriteOpts {
            accounts: Some(format!("batchsto1:{}", key("A"))),
            location: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let az = Azurite::start_with(&opts);
        opts.port = Some(az.port);
        let blob = format!("http://127.0.0.1:{}/batchsto1/", az.port);
        let mut aad = batch("aadonly", None);
        aad.modes = Some(vec!["AAD", "TaskAuthenticationToken"]);
        let arm = FakeArm::start(State {
            subscription: SUB.into(),
            token: TOKEN.into(),
            batch: vec![
                batch("render", Some("batchsto1")),
                batch("plain", None),
                aad,
            ],
            storage: vec![FakeStorage {
                name: "batchsto1".into(),
                resource_group: "rg-render".into(),
                blob_endpoint: blob,
                keys: vec![
                    ("key1".into(), key("R"), "READ".into()),
                    ("key2".into(), key("A"), "FULL".into()),
                ],
            }],
            ..Default::default()
        });
        World {
            az: Some(az),
            az_opts: opts,
            _az_dir: dir,
            arm,
        }
    }

    fn seeder(&self, k: &str) -> Seeder {
        let az = self.az.as_ref().expect("azurite runs");
        Seeder::for_account(
            "batchsto1",
            &format!("http://127.0.0.1:{}/batchsto1", az.port),
            &key(k),
        )
    }

    fn mount(&self, config: &str, extra: &[&str]) -> Mount {
        let m = Mount::prepare(config);
        let mut args = vec![
            "--arm-endpoint",
            &*Box::leak(self.arm.endpoint().into_boxed_str()),
        ];
        // These accounts' Batch service is not what these tests are about (tests/service.rs).
        args.push("--no-service");
        args.extend_from_slice(extra);
        let out = m.mount_env(&args, &self.arm.identity_env());
        assert!(
            out.status.success(),
            "mount failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.log_text()
        );
        m
    }

    fn no_violations(&self) {
        let v = self.arm.with(|s| s.violations.clone());
        assert!(v.is_empty(), "requests a real ARM would refuse: {v:#?}");
    }
}

fn wait_for(m: &Mount, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}; log:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ls(m: &Mount, rel: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(m.p(rel))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn discovery_shows_accounts_follows_rotation_and_removal() {
    let mut w = World::new();
    let seeder = w.seeder("A");
    seeder.container("inputs");
    seeder.put("inputs", "scene/frame1.exr", &b"frame one"[..]);
    // One run that uses keys (discovered), a SAS (from the file) and tokens (for ARM).
    let sas = batchfs::blob::auth::account_sas(
        "batchsto1",
        &batchfs::secret::Secret::new(key("A")),
        "rl",
        "2099-01-01T00:00:00Z",
    )
    .unwrap();
    let config = format!(
        "[[account]]\nname = \"fromfile\"\nprimary_key = \"ZmlsZS1rZXk=\"\n\
         [account.storage]\naccount = \"batchsto1\"\nendpoint = \"{}\"\nsas = \"{sas}\"\n",
        format_args!("http://127.0.0.1:{}/batchsto1", w.az.as_ref().unwrap().port)
    );
    let config = config.as_str();
    let m = w.mount(
        config,
        &[
            "--subscription",
            SUB,
            "--refresh",
            "1",
            "--log-level",
            "debug",
        ],
    );

    // The tree: both sources, paged listing followed to the end.
    assert_eq!(ls(&m, ""), ["aadonly", "fromfile", "plain", "render"]);
    assert_eq!(
        std::fs::read(m.p("fromfile/storage/inputs/scene/frame1.exr")).unwrap(),
        b"frame one",
        "read with the SAS"
    );
    assert_eq!(ls(&m, "render"), ["account.json", "keys", "storage"]);
    assert_eq!(ls(&m, "plain"), ["account.json", "keys"]);
    assert_eq!(ls(&m, "aadonly"), ["account.json"], "keys are not read");
    let shown: Value =
        serde_json::from_slice(&std::fs::read(m.p("render/account.json")).unwrap()).unwrap();
    assert_eq!(
        shown,
        w.arm.batch_body("render"),
        "account.json is the ARM body"
    );
    let keys: Value = serde_json::from_slice(&std::fs::read(m.p("render/keys")).unwrap()).unwrap();
    assert_eq!(keys["primary"], "batch-primary-render-secret1");
    assert_eq!(
        std::fs::read(m.p("render/storage/inputs/scene/frame1.exr")).unwrap(),
        b"frame one"
    );
    ok(m.sh("echo written > render/storage/inputs/new.txt"));
    assert_eq!(seeder.get("inputs", "new.txt"), b"written\n");
    let resources = w.arm.with(|s| s.token_resources.clone());
    assert!(
        resources.iter().all(|r| r == &w.arm.endpoint()),
        "{resources:?}"
    );

    // Keys rotate: Batch keys change, and the storage account's full key becomes key B,
    // the only one Azurite accepts after its restart. An open file survives the switch.
    let mut open = std::fs::File::open(m.p("render/storage/inputs/scene/frame1.exr")).unwrap();
    w.arm.with(|s| {
        s.batch[0].primary = "batch-primary-render-rotated".into();
        s.storage[0].keys = vec![
            ("key1".into(), key("B"), "Full".into()),
            ("key2".into(), key("R"), "READ".into()),
        ];
    });
    w.az.take().expect("azurite").stop();
    w.az_opts.accounts = Some(format!("batchsto1:{}", key("B")));
    w.az = Some(Azurite::start_with(&w.az_opts));
    wait_for(&m, "rotated keys", || {
        std::fs::read_to_string(m.p("render/keys")).is_ok_and(|k| k.contains("rotated"))
    });
    let mut text = String::new();
    use std::io::Read;
    wait_for(&m, "storage with the new key", || {
        std::fs::read(m.p("render/storage/inputs/new.txt")).is_ok()
    });
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "frame one");
    ok(m.sh("echo after > render/storage/inputs/after.txt"));
    assert_eq!(w.seeder("B").get("inputs", "after.txt"), b"after\n");

    // An account deleted in Azure disappears; the others stay.
    w.arm.with(|s| s.batch.retain(|b| b.name != "plain"));
    wait_for(&m, "plain to disappear", || !m.p("plain").exists());
    assert_eq!(ls(&m, ""), ["aadonly", "fromfile", "render"]);
    assert!(m.p("render/storage/inputs/after.txt").exists());
    w.no_violations();

    // Nothing secret reached the log, even at debug level.
    let log = m.log_text();
    assert!(log.contains("accounts refreshed"), "{log}");
    for secret in [
        TOKEN,
        common::arm::IDENTITY_HEADER,
        &key("A"),
        &key("B"),
        "batch-primary-render",
        "batch-secondary",
        "ZmlsZS1rZXk=",
        sas.split("sig=").nth(1).unwrap(),
        &urlencoding::decode(sas.split("sig=").nth(1).unwrap()).unwrap(),
    ] {
        assert!(!log.contains(secret), "the log shows a secret: {secret}");
    }
}

#[test]
fn a_name_in_both_sources_is_an_error_naming_both() {
    let w = World::new();
    let m = Mount::prepare("\n[[account]]\nname = \"render\"\n");
    let ep = w.arm.endpoint();
    let out = m.mount_env(
        &["--subscription", SUB, "--arm-endpoint", &ep],
        &w.arm.identity_env(),
    );
    let err = fails(out);
    assert!(err.contains("render"), "{err}");
    assert!(err.contains("accounts.toml:2"), "{err}");
    assert!(err.contains(&format!("subscription {SUB}")), "{err}");
}

#[test]
fn a_failing_identity_stops_the_mount_with_a_clear_error() {
    let w = World::new();
    w.arm.with(|s| s.token_broken = true);
    let m = Mount::prepare("");
    let ep = w.arm.endpoint();
    let start = Instant::now();
    let err = fails(m.mount_env(
        &["--subscription", SUB, "--arm-endpoint", &ep],
        &w.arm.identity_env(),
    ));
    assert!(err.contains("managed identity"), "{err}");
    assert!(!err.contains(common::arm::IDENTITY_HEADER), "{err}");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn node_mounts_its_own_account_found_through_its_identity() {
    let w = World::new();
    w.seeder("A").container("jobdata");
    let m = Mount::prepare("");
    let ep = w.arm.endpoint();
    let mut env = w.arm.identity_env();
    env.push(("AZ_BATCH_ACCOUNT_NAME".into(), "render".into()));
    env.push((
        "AZ_BATCH_ACCOUNT_URL".into(),
        "https://render.westeurope.batch.azure.com".into(),
    ));
    let pool_identity = "7d3c3c1e-0000-4000-8000-00000000beef";
    ok(m.mount_env(
        &[
            "--node",
            "--arm-endpoint",
            &ep,
            "--client-id",
            pool_identity,
        ],
        &env,
    ));
    assert_eq!(ls(&m, ""), ["render"], "only the node's account");
    let ids = w.arm.with(|s| s.token_client_ids.clone());
    assert!(
        !ids.is_empty() && ids.iter().all(|i| i == pool_identity),
        "{ids:?}"
    );
    assert_eq!(ls(&m, "render/storage"), ["jobdata"]);
    let calls = w.arm.with(|s| s.calls.clone());
    assert_eq!(
        calls[0], "GET /subscriptions",
        "found without a subscription: {calls:?}"
    );
    w.no_violations();
}

#[test]
fn node_takes_storage_from_the_config_file() {
    let az = Azurite::start();
    az.store().container("shared");
    let cfg = config_for(&az, "").replace("name = \"alpha\"", "name = \"nodeacct\"");
    let m = Mount::prepare(&cfg);
    let env = [
        ("AZ_BATCH_ACCOUNT_NAME".to_string(), "nodeacct".to_string()),
        (
            "AZ_BATCH_ACCOUNT_URL".to_string(),
            "https://nodeacct.westeurope.batch.azure.com".to_string(),
        ),
    ];
    ok(m.mount_env(&["--node"], &env));
    assert_eq!(ls(&m, ""), ["nodeacct"]);
    assert_eq!(ls(&m, "nodeacct/storage"), ["shared"]);
    let err = fails(m.mount_env(&["--node"], &[]));
    assert!(err.contains("AZ_BATCH_ACCOUNT_NAME"), "{err}");
}

/// A JWT of the shape Entra ID issues for storage; Azurite's `--oauth basic` checks its
/// audience, issuer and lifetime (not its signature).
fn storage_jwt() -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "aud": "https://storage.azure.com",
        "iss": "https://sts.windows.net/ab1f708d-50f6-404c-a006-d71b2ac7a606/",
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "oid": "5e0a6a5c-1111-2222-3333-444444444444",
        "tid": "ab1f708d-50f6-404c-a006-d71b2ac7a606",
    });
    format!(
        "{}.{}.c2lnbmF0dXJlLW5vdC1jaGVja2Vk",
        b64(&header),
        b64(&claims)
    )
}

/// A CA and a certificate for 127.0.0.1 signed by it; returns (ca, cert, key).
fn make_tls(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let script = r#"
set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=batchfs-test-ca \
    -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out req.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out cert.pem 2>/dev/null
"#;
    ok(sh_in(dir, script));
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[test]
fn storage_with_entra_id_tokens_over_https() {
    let tls_dir = tempfile::tempdir().unwrap();
    let (ca, cert, tls_key) = make_tls(tls_dir.path());
    let az = Azurite::start_with(&AzuriteOpts {
        tls: Some((cert, tls_key)),
        ..Default::default()
    });
    let jwt = storage_jwt();
    let arm = FakeArm::start(State {
        token: jwt.clone(),
        // Shorter than batchfs's renewal margin: every request renews its token.
        token_ttl: Some(120),
        ..Default::default()
    });
    let endpoint = format!("https://127.0.0.1:{}/{DEV_ACCOUNT}", az.port);
    let config = format!(
        "[[account]]\nname = \"tokens\"\n[account.storage]\naccount = \"{DEV_ACCOUNT}\"\n\
         endpoint = \"{endpoint}\"\nidentity = \"managed-identity\"\n"
    );
    let m = Mount::prepare(&config);
    let mut env = arm.identity_env();
    env.push(("SSL_CERT_FILE".into(), ca.display().to_string()));
    ok(m.mount_env(&["--log-level", "debug"], &env));
    ok(m.sh(
        "mkdir tokens/storage/viatoken && echo hello > tokens/storage/viatoken/a.txt \
         && mv tokens/storage/viatoken/a.txt tokens/storage/viatoken/b.txt",
    ));
    assert_eq!(
        std::fs::read_to_string(m.p("tokens/storage/viatoken/b.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(ls(&m, "tokens/storage/viatoken"), ["b.txt"]);
    let resources = arm.with(|s| s.token_resources.clone());
    assert!(!resources.is_empty(), "a token was fetched");
    assert!(
        resources.iter().all(|r| r == "https://storage.azure.com"),
        "{resources:?}"
    );
    arm.with(|s| assert!(s.violations.is_empty(), "{:?}", s.violations));
    let log = m.log_text();
    let signature_free = jwt.rsplit_once('.').unwrap().0;
    assert!(!log.contains(signature_free), "the log shows the token");
    assert!(!log.contains(common::arm::IDENTITY_HEADER));

    // The token endpoint fails: an operation gets EIO promptly, and a new mount says why
    // and does not mount.
    arm.with(|s| s.token_broken = true);
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(1500)); // the listings expire
    let err = fails(m.sh("ls tokens/storage/viatoken"));
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    // Not just "token" (the container is named viatoken): the error that failed the call.
    assert!(
        m.log_text().contains("no Entra ID token"),
        "the log says why"
    );
    let other = Mount::prepare(&config);
    let err = fails(other.mount_env(&[], &env));
    assert!(err.contains("managed identity"), "{err}");
}

#[test]
fn a_refused_request_is_one_log_line_with_its_request_id_and_no_secret() {
    let az = Azurite::start();
    az.store().container("data");
    let sas = account_sas("rl");
    let cfg =
        config_for(&az, "").replace(&format!("key = \"{DEV_KEY}\""), &format!("sas = \"{sas}\""));
    let m = Mount::start(&cfg, &["--log-level", "debug"]);
    // cp reports a failed close; a shell's `>` does not.
    fails(m.sh("echo x > /tmp/batchfs-refused.txt && cp /tmp/batchfs-refused.txt alpha/storage/data/refused.txt"));
    let log = m.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("storage request failed") && l.contains("refused.txt"))
        .unwrap_or_else(|| panic!("no line for the refused request:\n{log}"));
    for field in [
        "op=\"put\"",
        "container=\"data\"",
        "status=403",
        "request_id=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let id = line.split("request_id=").nth(1).unwrap_or("");
    assert!(id.len() > 8, "a request id: {line}");
    let sig = sas.split("sig=").nth(1).unwrap();
    for secret in [
        sig,
        &urlencoding::decode(sig).unwrap(),
        DEV_KEY,
        "cHJpbWFyeS1rZXk=",
    ] {
        assert!(!log.contains(secret), "the log shows a secret");
    }
}

#[test]
fn discovery_with_the_azure_cli_login() {
    let w = World::new();
    let bin = tempfile::tempdir().unwrap();
    let calls = bin.path().join("az-calls");
    // A stand-in for `az` that answers `az account get-access-token` as Azure CLI 2.54+ does.
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {calls}\n\
         printf '{{\"accessToken\": \"{TOKEN}\", \"expiresOn\": \"2099-01-01 00:00:00.000000\", \
         \"expires_on\": 4070908800, \"subscription\": \"{SUB}\", \"tenant\": \"t\", \
         \"tokenType\": \"Bearer\"}}\\n'\n",
        calls = calls.display()
    );
    let az = bin.path().join("az");
    std::fs::write(&az, script).unwrap();
    std::fs::set_permissions(&az, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Resource Manager throttles the first listing: batchfs waits as told and goes on.
    w.arm.with(|s| s.throttle_once = true);
    let m = Mount::prepare("");
    let ep = w.arm.endpoint();
    ok(m.mount_env(
        &[
            "--subscription",
            SUB,
            "--arm-endpoint",
            &ep,
            "--identity",
            "azure-cli",
        ],
        &[("PATH".into(), path)],
    ));
    assert_eq!(ls(&m, ""), ["aadonly", "plain", "render"]);
    let asked = std::fs::read_to_string(&calls).unwrap();
    assert!(asked.contains("account get-access-token"), "{asked}");
    assert!(asked.contains(&format!("--scope {ep}/.default")), "{asked}");
    let calls = w.arm.with(|s| s.calls.clone());
    let list = format!("GET /subscriptions/{SUB}/providers/Microsoft.Batch/batchAccounts");
    assert_eq!(calls[0], list);
    assert_eq!(calls[1], list, "retried after the 429: {calls:#?}");
    w.no_violations();
}

#[test]
fn a_refused_key_makes_the_mount_fetch_rotated_keys_at_once() {
    let mut w = World::new();
    let seeder = w.seeder("A");
    seeder.container("inputs");
    seeder.put("inputs", "a.txt", &b"before"[..]);
    // A refresh interval far longer than the test: only the refusal can bring the new key.
    let m = w.mount("", &["--subscription", SUB, "--refresh", "600"]);
    assert_eq!(
        std::fs::read(m.p("render/storage/inputs/a.txt")).unwrap(),
        b"before"
    );
    w.arm.with(|s| {
        s.storage[0].keys = vec![("key1".into(), key("B"), "FULL".into())];
    });
    w.az.take().expect("azurite").stop();
    w.az_opts.accounts = Some(format!("batchsto1:{}", key("B")));
    w.az = Some(Azurite::start_with(&w.az_opts));
    w.seeder("B").put("inputs", "b.txt", &b"after"[..]);
    std::thread::sleep(Duration::from_millis(1500)); // the cached listing expires
    let start = Instant::now();
    wait_for(&m, "the rotated key", || {
        std::fs::read(m.p("render/storage/inputs/b.txt")).is_ok_and(|d| d == b"after")
    });
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(m.log_text().contains("storage refused a credential"));
    w.no_violations();
}

/// A stand-in for the Entra ID token endpoint (`/{tenant}/oauth2/v2.0/token`) over HTTPS,
/// which only gives `token` for the client credentials it was told; returns its port.
fn fake_entra(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    token: &str,
) -> (std::process::Child, u16) {
    let script = r#"
import http.server, json, ssl, sys, urllib.parse
cert, key, token, log = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        ok = (self.path == "/tenant-1/oauth2/v2.0/token"
              and form.get("grant_type") == ["client_credentials"]
              and form.get("client_id") == ["app-1"]
              and form.get("client_secret") == ["sp-secret-7f3a"])
        with open(log, "a") as f:
            f.write(json.dumps({"ok": ok, "scope": form.get("scope")}) + "\n")
        body = json.dumps({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600,
                           "access_token": token} if ok else {"error": "invalid_client"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([cert, key])
        .arg(token)
        .arg(dir.join("entra-requests"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/setup.sh installs it)");
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (
        child,
        line.trim().parse().expect("the token endpoint's port"),
    )
}

#[test]
fn discovery_as_a_service_principal() {
    let w = World::new();
    let tls_dir = tempfile::tempdir().unwrap();
    let (ca, cert, tls_key) = make_tls(tls_dir.path());
    let (mut entra, port) = fake_entra(tls_dir.path(), &cert, &tls_key, TOKEN);
    let env: Vec<(String, String)> = [
        ("AZURE_TENANT_ID", "tenant-1".to_string()),
        ("AZURE_CLIENT_ID", "app-1".to_string()),
        ("AZURE_CLIENT_SECRET", "sp-secret-7f3a".to_string()),
        ("AZURE_AUTHORITY_HOST", format!("https://127.0.0.1:{port}")),
        ("SSL_CERT_FILE", ca.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let m = Mount::prepare("");
    let ep = w.arm.endpoint();
    // `auto` picks the service principal because the three variables are set.
    let out = m.mount_env(&["--subscription", SUB, "--arm-endpoint", &ep], &env);
    let _ = entra.kill();
    ok(out);
    assert_eq!(ls(&m, ""), ["aadonly", "plain", "render"]);
    let asked = std::fs::read_to_string(tls_dir.path().join("entra-requests")).unwrap();
    assert!(asked.contains(r#""ok": true"#), "{asked}");
    assert!(asked.contains(&format!("{ep}/.default")), "{asked}");
    w.no_violations();
    assert!(!m.log_text().contains("sp-secret-7f3a"));
}

#[test]
fn keys_that_cannot_be_read_on_a_refresh_stay_as_they_were() {
    let w = World::new();
    w.seeder("A").container("inputs");
    w.seeder("A").put("inputs", "a.txt", &b"still here"[..]);
    let m = w.mount("", &["--subscription", SUB, "--refresh", "1"]);
    assert_eq!(ls(&m, "render"), ["account.json", "keys", "storage"]);
    // The identity loses the right to list keys: refreshes cannot read them any more.
    w.arm.with(|s| s.list_keys_denied = true);
    wait_for(&m, "a refresh without keys", || {
        m.log_text().contains("keeping what the last refresh read")
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ls(&m, "render"), ["account.json", "keys", "storage"]);
    assert!(
        std::fs::read_to_string(m.p("render/keys"))
            .unwrap()
            .contains("batch-primary-render-secret1")
    );
    assert_eq!(
        std::fs::read(m.p("render/storage/inputs/a.txt")).unwrap(),
        b"still here"
    );
}
