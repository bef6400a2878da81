//! The Batch service through a real mount: `jobs/` and `pools/` served from the stand-in of
//! tests/batch_standin.py (which checks every request with Microsoft's own `azure-batch`
//! signing code), read with ordinary tools.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::arm::{FakeArm, State};
use common::standin::{ACCOUNT, KEY, Standin};
use common::{Azurite, DEV_ACCOUNT, DEV_KEY, Mount, data, fails, ok};
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A job with a finished, a failed and a running task, and a pool with a node.
fn fixture() -> Value {
    json!({
        "jobs": [{
            "id": "render", "state": "active", "poolId": "pool1",
            "tasks": [
                {"id": "t1", "state": "completed", "exitCode": 0, "node": "pool1/node1",
                 "files": {"stdout.txt": "frame 1 done\n", "stderr.txt": "",
                           "wd/out/frame.bin": {"b64": b64(&data(300_000, 1))},
                           "wd/render.py": "print('hi')\n",
                           "wd/odd names/a b$%+é.txt": "odd\n"}},
                {"id": "t2", "state": "completed", "exitCode": 1, "node": "pool1/node1",
                 "files": {"stdout.txt": "frame 2\n",
                           "stderr.txt": "Error: missing texture rock.png\n"}},
                {"id": "t3", "state": "running", "node": "pool1/node1",
                 "files": {"stdout.txt": "starting\n", "stderr.txt": ""}}
            ]
        }, {
            "id": "my-_EVEN_MORE_-terrific-job", "state": "completed", "poolId": "pool1",
            "tasks": [{"id": "only", "state": "completed", "exitCode": 0,
                       "files": {"stdout.txt": "ok\n"}}]
        }],
        "pools": [{"id": "pool1", "nodes": [{"id": "node1", "state": "idle",
            "files": {"startup/stdout.txt": "node ready\n", "shared/data/a.txt": "shared\n"}}]}]
    })
}

fn with_key(s: &Standin) -> String {
    s.config(&format!("primary_key = \"{KEY}\""))
}

fn with_storage(s: &Standin, az: &Azurite) -> String {
    format!(
        "{}[account.storage]\naccount = \"{DEV_ACCOUNT}\"\nendpoint = \"{}\"\nkey = \"{DEV_KEY}\"\n",
        with_key(s),
        az.endpoint()
    )
}

fn count(requests: &[Value], path: &str) -> usize {
    requests.iter().filter(|r| r["path"] == path).count()
}

#[test]
fn task_files_read_with_shell_tools() {
    let s = Standin::start(&fixture(), &[]);
    // Listings last long enough that the request counts below do not depend on the speed of
    // the machine.
    let m = Mount::start(&with_key(&s), &["--dir-timeout", "30"]);
    let a = format!("{ACCOUNT}/jobs/render");
    assert_eq!(ok(m.sh(&format!("ls {a}/tasks"))), "t1\nt2\nt3\n");
    assert_eq!(
        ok(m.sh(&format!("ls {a}"))),
        "job.json\ntasks\n",
        "no output link without storage"
    );
    assert_eq!(
        ok(m.sh(&format!("cat {a}/tasks/t1/files/stdout.txt"))),
        "frame 1 done\n"
    );
    // cp -r of a task's files: the tree and every byte, compared with what the node holds.
    let dst = tempfile::tempdir().unwrap();
    let d = dst.path().display();
    s.reset();
    ok(m.sh(&format!("cp -r {a}/tasks/t1/files {d}/t1")));
    // Through the page cache in ranged Get File requests, no byte fetched twice.
    let mut ranges: Vec<(u64, u64)> = s
        .requests()
        .iter()
        .filter(|r| {
            r["method"] == "GET" && r["path"] == "/jobs/render/tasks/t1/files/wd/out/frame.bin"
        })
        .map(|r| {
            let range = r["range"].as_str().expect("an ocp-range on every read");
            let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    ranges.sort();
    assert!(!ranges.is_empty());
    // One List Files for files/ and one for wd/, whose answer holds everything under it.
    let lists = s.requests();
    let lists: Vec<&Value> = lists
        .iter()
        .filter(|r| r["path"] == "/jobs/render/tasks/t1/files")
        .collect();
    assert_eq!(lists.len(), 2, "{lists:#?}");
    assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "{ranges:?}");
    assert_eq!(ranges.last().map(|r| r.1), Some(299_999), "{ranges:?}");
    assert_eq!(
        std::fs::read(dst.path().join("t1/wd/out/frame.bin")).unwrap(),
        data(300_000, 1)
    );
    assert_eq!(
        ok(m.sh(&format!("cd {d}/t1 && find . -type f | sort"))),
        "./stderr.txt\n./stdout.txt\n./wd/odd names/a b$%+é.txt\n./wd/out/frame.bin\n./wd/render.py\n"
    );
    // The worked example of the README: the failed tasks of a job and their stderr.
    let failed = ok(m.sh(&format!(
        "grep -l '\"result\": \"failure\"' {a}/tasks/*/task.json | xargs -n1 dirname"
    )));
    assert_eq!(failed, format!("{a}/tasks/t2\n"));
    assert_eq!(
        ok(m.sh(&format!("cat {a}/tasks/t2/files/stderr.txt"))),
        "Error: missing texture rock.png\n"
    );
    let task: Value =
        serde_json::from_str(&ok(m.sh(&format!("cat {a}/tasks/t2/task.json")))).unwrap();
    assert_eq!(task["executionInfo"]["exitCode"], 1);
    let job: Value = serde_json::from_str(&ok(m.sh(&format!("cat {a}/job.json")))).unwrap();
    assert_eq!(job["id"], "render");
    // Sizes from the listing (ls -l: no request per file) match what a read returns.
    let listed = ok(m.sh(&format!(
        "ls -l {a}/tasks/t1/files/wd/out | awk '{{print $5}}' | tail -1"
    )));
    assert_eq!(listed.trim(), "300000");
    // And from a lookup.
    let sizes = ok(m.sh(&format!(
        "stat -c '%s %n' {a}/tasks/t1/task.json {a}/tasks/t2/files/stderr.txt"
    )));
    assert!(sizes.contains("32 "), "{sizes}");
    let json_len = ok(m.sh(&format!("cat {a}/tasks/t1/task.json | wc -c")))
        .trim()
        .to_string();
    assert!(
        sizes.starts_with(&format!("{json_len} ")),
        "{sizes} vs {json_len}"
    );
    // Pools and nodes.
    let n = format!("{ACCOUNT}/pools/pool1/nodes/node1");
    assert_eq!(
        ok(m.sh(&format!("ls {n} {n}/files"))),
        format!("{n}:\nfiles\nnode.json\n\n{n}/files:\nshared\nstartup\n")
    );
    assert_eq!(
        ok(m.sh(&format!("cat {n}/files/shared/data/a.txt"))),
        "shared\n"
    );
    assert!(
        ok(m.sh(&format!("cat {ACCOUNT}/pools/pool1/pool.json"))).contains("\"id\": \"pool1\"")
    );
    // Read-only, everywhere.
    for cmd in [
        format!("touch {a}/tasks/t1/files/new"),
        format!("mkdir {a}/x"),
        format!("rm {a}/job.json"),
        format!("echo x >> {a}/tasks/t1/files/stdout.txt"),
        format!("mv {a}/tasks/t1/files/stdout.txt {a}/tasks/t1/files/o.txt"),
        format!("chmod 600 {a}/tasks/t1/task.json"),
        format!("truncate -s 0 {a}/tasks/t1/files/stdout.txt"),
    ] {
        let err = fails(m.sh(&cmd));
        assert!(err.contains("Read-only file system"), "{cmd}: {err}");
    }
    // A name that is not there, in each kind of directory.
    for p in [
        "jobs/nope",
        "jobs/render/tasks/nope",
        "jobs/render/tasks/t1/files/nope",
        "pools/nope",
    ] {
        fails(m.sh(&format!("stat {ACCOUNT}/{p}")));
    }
    s.no_violations();
}

#[test]
fn a_growing_stdout_is_followed_by_tail_f() {
    let s = Standin::start(&fixture(), &[]);
    let m = Mount::start(&with_key(&s), &[]);
    let file = m.p(&format!("{ACCOUNT}/jobs/render/tasks/t3/files/stdout.txt"));
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut tail = Command::new("tail")
        .args(["-f", "-s", "0.2"])
        .arg(&file)
        .stdout(Stdio::from(out.reopen().unwrap()))
        .spawn()
        .unwrap();
    let mut expected = String::from("starting\n");
    for i in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        let line = format!("step {i}: {}\n", "x".repeat(i * 5000));
        s.post(
            "append",
            json!({"job": "render", "task": "t3", "path": "stdout.txt", "data": line}),
        );
        expected.push_str(&line);
    }
    let start = Instant::now();
    while std::fs::read_to_string(out.path())
        .unwrap_or_default()
        .len()
        < expected.len()
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let got = std::fs::read_to_string(out.path()).unwrap();
    assert_eq!(
        got, expected,
        "tail -f shows exactly what the task wrote, nothing more"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    s.no_violations();
}

#[test]
fn ls_l_of_ten_thousand_tasks_costs_ten_list_requests() {
    let s = Standin::start_generated(&["--bench-tasks", "10000"]);
    let m = Mount::start(&with_key(&s), &[]);
    let tasks = format!("{ACCOUNT}/jobs/bench/tasks");
    ok(m.sh(&format!("stat {tasks} >/dev/null")));
    s.reset();
    let listing = ok(m.sh(&format!("ls -l {tasks}")));
    assert_eq!(
        listing.lines().filter(|l| l.starts_with('d')).count(),
        10_000
    );
    let requests = s.requests();
    assert_eq!(
        count(&requests, "/jobs/bench/tasks"),
        10,
        "{:#?}",
        &requests[..requests.len().min(20)]
    );
    // Nothing per task (the kernel may look the job up again: one Get Job).
    let per_task = requests.iter().filter(|r| {
        r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/jobs/bench/tasks/"))
    });
    assert_eq!(per_task.count(), 0);
    assert!(
        requests.len() <= 11,
        "{:#?}",
        &requests[..requests.len().min(20)]
    );
    assert!(
        requests.iter().all(|r| r["query"]["$select"].is_string()),
        "lists select what is shown"
    );
    // grep -r over many tasks' stderr.txt.
    let hits = ok(m.sh(&format!(
        "grep -rh 'stderr line 5' {tasks}/task-000[0-4]?/files/stderr.txt | wc -l"
    )));
    assert_eq!(hits.trim(), "50");
    s.no_violations();
}

#[test]
fn output_links_point_at_the_job_containers_of_the_file_conventions() {
    let az = Azurite::start();
    let store = az.store();
    // sha1("my-_even_more_-terrific-job"), computed independently of batchfs.
    let hashed = "job-my-even-more-te-68b05a7d8aa6aa65b9a6892c667a6c406a16ad65";
    for c in ["job-render", hashed] {
        store.container(c);
        store.put(c, "$JobOutput/result.txt", format!("from {c}\n"));
    }
    let s = Standin::start(&fixture(), &[]);
    let m = Mount::start(&with_storage(&s, &az), &[]);
    let j = format!("{ACCOUNT}/jobs");
    assert_eq!(
        ok(m.sh(&format!("readlink {j}/render/output"))),
        "../../storage/job-render\n"
    );
    assert_eq!(
        ok(m.sh(&format!("cat '{j}/render/output/$JobOutput/result.txt'"))),
        "from job-render\n"
    );
    let link = ok(m.sh(&format!("readlink {j}/my-_EVEN_MORE_-terrific-job/output")));
    assert_eq!(link, format!("../../storage/{hashed}\n"));
    assert_eq!(
        ok(m.sh(&format!(
            "cat '{j}/my-_EVEN_MORE_-terrific-job/output/$JobOutput/result.txt'"
        ))),
        format!("from {hashed}\n")
    );
    assert!(ok(m.sh(&format!("ls -l {j}/render"))).contains("output -> ../../storage/job-render"));
    s.no_violations();
}

#[test]
fn files_of_a_gone_node_fail_with_a_documented_errno_and_one_log_line() {
    let s = Standin::start(&fixture(), &[]);
    let m = Mount::start(
        &with_key(&s),
        &["--attr-timeout", "0", "--dir-timeout", "0"],
    );
    let t = format!("{ACCOUNT}/jobs/render/tasks");
    s.post(
        "task-state",
        json!({"job": "render", "task": "t1", "files": "unavailable"}),
    );
    let err = fails(m.sh(&format!("cat {t}/t1/files/stdout.txt")));
    assert!(err.contains("Host is down"), "{err}");
    s.post(
        "task-state",
        json!({"job": "render", "task": "t2", "files": "nodegone"}),
    );
    let err = fails(m.sh(&format!("cat {t}/t2/files/stderr.txt")));
    assert!(err.contains("No such file or directory"), "{err}");
    let err = fails(m.sh(&format!("ls {t}/t2/files")));
    assert!(err.contains("No such file or directory"), "{err}");
    s.post(
        "task-state",
        json!({"job": "render", "task": "t3", "files": "cleanedup"}),
    );
    let err = fails(m.sh(&format!("cat {t}/t3/files/stdout.txt")));
    assert!(err.contains("No such file or directory"), "{err}");
    // The task itself is still there.
    for task in ["t1", "t2", "t3"] {
        assert!(
            ok(m.sh(&format!("cat {t}/{task}/task.json"))).contains(&format!("\"id\": \"{task}\""))
        );
    }
    let log = m.log_text();
    // One line for each failed command (`cat` and `ls` of t2 are two), each with the
    // service's code and request id.
    for (code, commands) in [
        ("TaskFilesUnavailable", 1),
        ("NodeNotFound", 2),
        ("TaskFilesCleanedup", 1),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(code)).collect();
        assert_eq!(lines.len(), commands, "{code}:\n{log}");
        assert!(lines.iter().all(|l| l.contains("request_id=")), "{lines:?}");
    }
    assert!(!log.contains(KEY));
    s.no_violations();
}

#[test]
fn throttling_is_retried_after_the_time_the_service_asks() {
    let s = Standin::start(&fixture(), &[]);
    let m = Mount::start(&with_key(&s), &[]);
    s.post("fail", json!({"count": 2, "status": 503, "code": "ServerBusy", "retry_after": 1, "paths": "/tasks"}));
    let start = Instant::now();
    assert_eq!(
        ok(m.sh(&format!("ls {ACCOUNT}/jobs/render/tasks"))),
        "t1\nt2\nt3\n"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "Retry-After was honoured"
    );
    let statuses: Vec<i64> = s
        .requests()
        .iter()
        .filter(|r| r["path"] == "/jobs/render/tasks")
        .map(|r| r["status"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    // A service that stays busy gives EIO within --timeout, not a hang.
    s.post(
        "fail",
        json!({"count": 1000, "status": 503, "code": "ServerBusy", "retry_after": 1}),
    );
    let m2 = Mount::start(&with_key(&s), &["--timeout", "3"]);
    let start = Instant::now();
    let err = fails(m2.sh(&format!("ls {ACCOUNT}/pools")));
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    s.no_violations();
}

#[test]
fn accounts_without_keys_use_entra_id_or_the_task_token() {
    let arm = FakeArm::start(State {
        token: "entra-token-for-batch".into(),
        ..Default::default()
    });
    let s = Standin::start(
        &fixture(),
        &[
            "--token",
            "entra-token-for-batch",
            "--task-token",
            "task-token-7:render",
        ],
    );
    // Entra ID: a managed identity's token for the Batch resource.
    let m = Mount::prepare(&s.config("identity = \"managed-identity\""));
    let out = m.mount_env(&[], &arm.identity_env());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(m.sh(&format!("ls {ACCOUNT}/jobs/render/tasks"))),
        "t1\nt2\nt3\n"
    );
    assert_eq!(ok(m.sh(&format!("ls {ACCOUNT}/pools"))), "pool1\n");
    assert!(s.requests().iter().all(|r| r["auth"] == "bearer"));
    let resources = arm.state.lock().unwrap().token_resources.clone();
    assert!(
        resources
            .iter()
            .any(|r| r.starts_with("https://batch.core.windows.net")),
        "{resources:?}"
    );
    drop(m);

    // On a compute node: the task's job-scoped token.
    s.reset();
    let m = Mount::prepare(&s.config(""));
    let env = vec![
        ("AZ_BATCH_ACCOUNT_NAME".to_string(), ACCOUNT.to_string()),
        ("AZ_BATCH_ACCOUNT_URL".to_string(), s.url()),
        (
            "AZ_BATCH_AUTHENTICATION_TOKEN".to_string(),
            "task-token-7".to_string(),
        ),
    ];
    let out = m.mount_env(&["--node"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(m.sh(&format!(
            "cat {ACCOUNT}/jobs/render/tasks/t2/files/stderr.txt"
        ))),
        "Error: missing texture rock.png\n"
    );
    let err = fails(m.sh(&format!("ls {ACCOUNT}/pools")));
    assert!(
        err.contains("Permission denied"),
        "the token is for one job: {err}"
    );
    assert!(!m.log_text().contains("task-token-7"));
    drop(m);

    // No credential, or the service hidden: no jobs/ or pools/.
    let m = Mount::start(&s.config(""), &[]);
    assert_eq!(ok(m.sh(&format!("ls {ACCOUNT}"))), "account.json\n");
    drop(m);
    let m = Mount::start(&with_key(&s), &["--no-service"]);
    assert_eq!(ok(m.sh(&format!("ls {ACCOUNT}"))), "account.json\nkeys\n");
    drop(m);
    let m = Mount::start(
        &s.config(&format!("primary_key = \"{KEY}\"\nservice = false")),
        &[],
    );
    assert_eq!(ok(m.sh(&format!("ls {ACCOUNT}"))), "account.json\nkeys\n");
    s.no_violations();
}

#[test]
fn the_stand_in_agrees_with_microsofts_batch_sdk() {
    // The stand-in is only a fair judge if the official client finds nothing to object to:
    // the SDK lists, pages, reads ranges and meets each error code through it.
    let out = Command::new(common::standin::PYTHON)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/batch_standin_check.py"
        ))
        .output()
        .expect("python runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0 failed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_refused_key_is_reported_at_mount_and_gives_eacces() {
    let s = Standin::start(&fixture(), &[]);
    let wrong = "d3Jvbmcta2V5LWZvci10aGUtYmF0Y2gtc2VydmljZQ==";
    let m = Mount::prepare(&s.config(&format!("primary_key = \"{wrong}\"")));
    let out = m.mount_cmd(&[]);
    assert!(out.status.success(), "storage is still worth mounting");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("Batch service") && said.contains("AuthenticationFailed"),
        "{said}"
    );
    assert!(!said.contains(wrong) && !m.log_text().contains(wrong));
    let err = fails(m.sh(&format!("ls {ACCOUNT}/jobs")));
    assert!(err.contains("Permission denied"), "{err}");
    // `batchfs accounts` says so too; with the right key, ok.
    let accounts = |config: &std::path::Path| {
        let out = Command::new(common::BIN)
            .arg("accounts")
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = accounts(&m.config);
    assert!(
        out.contains("BATCH SERVICE") && out.contains("AuthenticationFailed"),
        "{out}"
    );
    let good = Mount::prepare(&with_key(&s));
    let out = accounts(&good.config);
    assert!(
        out.lines()
            .any(|l| l.starts_with(ACCOUNT) && l.ends_with(" ok")),
        "{out}"
    );
}

#[test]
fn a_service_that_stalls_or_refuses_gives_eio_in_time_and_recovers() {
    use common::proxy::{Mode, Proxy};
    let s = Standin::start(&fixture(), &[]);
    // A TCP proxy: the path after the port is only its own bookkeeping.
    let proxy = Proxy::start(&format!("{}/x", s.url()));
    let url = proxy.endpoint().trim_end_matches("/x").to_string();
    let config = format!(
        "[[account]]\nname = \"{ACCOUNT}\"\nendpoint = \"{url}\"\nprimary_key = \"{KEY}\"\n"
    );
    let m = Mount::start(
        &config,
        &[
            "--timeout",
            "3",
            "--attr-timeout",
            "0",
            "--dir-timeout",
            "0",
        ],
    );
    let t = format!("{ACCOUNT}/jobs/render/tasks");
    assert_eq!(
        ok(m.sh(&format!("cat {t}/t1/files/stdout.txt"))),
        "frame 1 done\n"
    );
    for mode in [
        Mode::Stall,
        Mode::Refuse,
        Mode::CutReplies(100),
        Mode::Error500,
    ] {
        proxy.set(mode);
        let start = Instant::now();
        let err = fails(m.sh(&format!("cat {t}/t2/task.json")));
        let took = start.elapsed();
        assert!(err.contains("Input/output error"), "{mode:?}: {err}");
        assert!(
            took < Duration::from_secs(8),
            "{mode:?}: EIO after {took:?}"
        );
        // Other accounts' files and the account's own files answer meanwhile.
        let start = Instant::now();
        ok(m.sh(&format!("cat {ACCOUNT}/account.json >/dev/null")));
        assert!(start.elapsed() < Duration::from_secs(3));
        proxy.set(Mode::Pass);
        assert!(
            ok(m.sh(&format!("cat {t}/t2/task.json"))).contains("\"t2\""),
            "{mode:?}: recovered"
        );
    }
    s.no_violations();
}

#[test]
fn a_rotated_key_found_by_discovery_is_used_after_the_service_refuses_the_old_one() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let s = Standin::start(&fixture(), &[]);
    let arm = FakeArm::start(State {
        subscription: "sub-rotation".into(),
        token: "arm-token".into(),
        batch: vec![common::arm::FakeBatch {
            name: ACCOUNT.into(),
            resource_group: "rg".into(),
            storage: None,
            storage_mode: None,
            modes: None,
            primary: KEY.into(),
            secondary: b64("the-secondary-key-of-alpha"),
            endpoint: Some(s.url()),
        }],
        ..Default::default()
    });
    let m = Mount::prepare("");
    let args = [
        "--subscription",
        "sub-rotation",
        "--arm-endpoint",
        &arm.endpoint(),
        "--refresh",
        "600",
    ];
    let out = m.mount_env(&args, &arm.identity_env());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(m.sh(&format!("ls {ACCOUNT}/jobs"))),
        "my-_EVEN_MORE_-terrific-job\nrender\n"
    );
    // The key is regenerated in Azure: the service takes only the new one, ARM lists it.
    let rotated = b64("a-regenerated-primary-key-of-alpha");
    s.post("key", json!({"key": rotated}));
    arm.state.lock().unwrap().batch[0].primary = rotated.clone();
    std::thread::sleep(Duration::from_millis(1100)); // the listing of jobs/ expires
    let start = Instant::now();
    let mut listed = String::new();
    while start.elapsed() < Duration::from_secs(25) {
        match m.sh(&format!("ls {ACCOUNT}/jobs")) {
            o if o.status.success() => {
                listed = String::from_utf8_lossy(&o.stdout).into_owned();
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    assert_eq!(
        listed,
        "my-_EVEN_MORE_-terrific-job\nrender\n",
        "{}",
        m.log_text()
    );
    assert!(
        m.log_text()
            .contains("the Batch service refused a key: refreshing")
    );
    assert!(!m.log_text().contains(&rotated) && !m.log_text().contains(KEY));
    let keys = ok(m.sh(&format!("cat {ACCOUNT}/keys")));
    assert!(keys.contains(&rotated), "keys shows the new key");
}

#[test]
fn a_task_with_thousands_of_files_is_listed_page_by_page() {
    let files: serde_json::Map<String, Value> = (0..2500)
        .map(|i| (format!("wd/out/part-{i:05}.csv"), json!(format!("{i}\n"))))
        .chain([("stdout.txt".to_string(), json!("done\n"))])
        .collect();
    let fx = json!({"jobs": [{"id": "big", "tasks": [{"id": "t", "state": "completed",
        "exitCode": 0, "files": files}]}]});
    let s = Standin::start(&fx, &[]);
    let m = Mount::start(&with_key(&s), &[]);
    let out = format!("{ACCOUNT}/jobs/big/tasks/t/files/wd/out");
    ok(m.sh(&format!(
        "stat {ACCOUNT}/jobs/big/tasks/t/files/wd >/dev/null"
    )));
    s.no_violations();
    s.reset();
    let listing = ok(m.sh(&format!("ls -l {out}")));
    assert_eq!(listing.lines().filter(|l| l.starts_with('-')).count(), 2500);
    let lists = s
        .requests()
        .iter()
        .filter(|r| r["path"] == "/jobs/big/tasks/t/files")
        .count();
    assert_eq!(lists, 3, "2,500 files in pages of 1,000");
    assert_eq!(ok(m.sh(&format!("cat {out}/part-02499.csv"))), "2499\n");
    s.no_violations();
}
