"""Checks tests/batch_standin.py against Microsoft's own client, azure-batch (run by hand):

    .tools/py/bin/python tests/batch_standin_check.py

It starts the stand-in on a free port with `--demo --bench-tasks 2500`, talks to it with the
SDK's BatchClient over Shared Key (the way the benchmark's reference client does), checks the
answers, checks that the SDK's own requests caused no violation, and that a request signed with
a wrong key, a Bearer token for another job, a missing api-version and a write are refused.
Exits 0 and prints `N passed, 0 failed` when all is well.

How the SDK is built for Shared Key against an http endpoint (azure-batch 15.1.0):

    from azure.batch import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential
    client = BatchClient(endpoint="http://127.0.0.1:PORT",
                         credential=AzureNamedKeyCredential(ACCOUNT, BASE64_KEY))

BatchClient turns an AzureNamedKeyCredential into its BatchSharedKeyAuthPolicy (no https check,
unlike the Bearer policy); the endpoint is used as given, plain http included.
"""

import base64
import datetime
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import logging
import urllib.request

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

HERE = os.path.dirname(os.path.abspath(__file__))
ACCOUNT = "standinacct"
KEY = base64.b64encode(b"batchfs stand-in check key, 32b!").decode()
WRONG_KEY = base64.b64encode(b"not the key of this account!!!!!").decode()
BENCH = 2500

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def code_of(e):
    """The Batch error code of an SDK exception. Streamed calls (download_*_file) raise before
    the SDK has read the body, so their e.error is None: read it from the response then."""
    if e.error is not None:
        return e.error.code
    try:
        e.response.read()
        return json.loads(e.response.text())["code"]
    except Exception:
        return None


def control(port, what, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_standin/{what}", data=data,
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def raw(port, method, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, dict(r.getheaders()), body


def main():
    # The SDK logs a traceback when it cannot parse an error body (HEAD answers have none).
    logging.getLogger("azure").setLevel(logging.CRITICAL)
    tmp = tempfile.mkdtemp(prefix="standin-check-")
    port_file = os.path.join(tmp, "port")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "batch_standin.py"), "--account", ACCOUNT, "--key", KEY,
         "--token", "tok-all", "--task-token", "tok-render:render", "--demo", "--bench-tasks", str(BENCH),
         "--port-file", port_file],
        stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        check("prints listening on PORT", line.startswith("listening on "), repr(line))
        port = int(open(port_file).read())
        check("port file matches", line.split()[-1] == str(port))
        run(port)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def run(port):
    client = BatchClient(endpoint=f"http://127.0.0.1:{port}", credential=AzureNamedKeyCredential(ACCOUNT, KEY))

    jobs = sorted(j.id for j in client.list_jobs())
    check("list jobs", jobs == ["bench", "render"], jobs)

    t0 = time.monotonic()
    tasks = list(client.list_tasks("bench"))
    dt = time.monotonic() - t0
    ids = [t.id for t in tasks]
    check(f"list {BENCH} tasks through pages ({dt:.2f}s)",
          len(ids) == BENCH and len(set(ids)) == BENCH and ids == sorted(ids), len(ids))
    pages = [r for r in control(port, "requests") if r["path"] == "/jobs/bench/tasks"]
    check("tasks came in 3 pages of <= 1000", len(pages) == 3 and "$skiptoken" in pages[1]["query"], pages)

    small = list(client.list_tasks("bench", max_results=700, select=["id", "state"]))
    check("maxresults + $select", len(small) == BENCH and small[0].state == "completed"
          and small[0].command_line is None, small[0])

    t = client.get_task("render", "frame-0002")
    check("get task", t.id == "frame-0002" and t.state == "completed"
          and t.execution_info.exit_code == 1 and t.execution_info.result == "failure"
          and t.node_info.node_id == "tvm-1001_2-20250601t080000z", t)

    files = {f.name: f for f in client.list_task_files("render", "frame-0001", recursive=True)}
    check("list task files recursively", set(files) == {"stdout.txt", "stderr.txt", "wd", "wd/render.py",
                                                        "wd/frame-0001.png"}, sorted(files))
    check("directory entry", files["wd"].is_directory is True and files["wd"].properties is None)
    png = files["wd/frame-0001.png"]
    check("file entry properties", png.is_directory is False and png.properties.content_length == 2056
          and png.properties.file_mode == "0o100644", png)
    top = sorted(f.name for f in client.list_task_files("render", "frame-0001", recursive=False))
    check("list task files, not recursive", top == ["stderr.txt", "stdout.txt", "wd"], top)
    wd = sorted(f.name for f in client.list_task_files("render", "frame-0001", recursive=True,
                                                       filter="startswith(name,'wd/')"))
    check("$filter startswith (encoded in the query, signed decoded)", wd == ["wd/frame-0001.png", "wd/render.py"], wd)

    whole = b"".join(client.download_task_file("bench", "task-00042", "stderr.txt"))
    check("download stderr.txt", whole.startswith(b"task-00042 stderr") and 200 < len(whole) < 1000, whole[:40])
    part = b"".join(client.download_task_file("bench", "task-00042", "stderr.txt", ocp_range="bytes=5-9"))
    check("download with ocp-range", part == whole[5:10], part)
    tail = b"".join(client.download_task_file("bench", "task-00042", "stderr.txt",
                                              ocp_range=f"bytes={len(whole) - 3}-{len(whole) + 100}"))
    check("range end clamped", tail == whole[-3:], tail)
    try:
        client.download_task_file("bench", "task-00042", "stderr.txt", ocp_range=f"bytes={len(whole)}-")
        check("range start past the end is 416", False)
    except HttpResponseError as e:
        check("range start past the end is 416", e.status_code == 416 and code_of(e) == "InvalidRange", e)
    nested = b"".join(client.download_task_file("render", "frame-0001", "wd/render.py"))
    check("download nested path (sent as wd%2Frender.py)", nested == b"print('render')\n", nested)

    p = client.get_task_file_properties("bench", "task-00042", "stderr.txt")
    check("file properties", p.content_length == len(whole) and p.is_directory is False
          and p.file_mode == "0o100644" and p.url.endswith("/jobs/bench/tasks/task-00042/files/stderr.txt")
          and p.last_modified is not None and p.creation_time is not None, p)
    d = client.get_task_file_properties("render", "frame-0001", "wd")
    check("directory properties", d.is_directory is True, d)
    node_files = sorted(f.name for f in client.list_node_files("pool1", "tvm-1001_1-20250601t080000z", recursive=True))
    check("list node files", "startup/stdout.txt" in node_files and "shared" in node_files, node_files)
    check("get node", client.get_node("pool1", "tvm-1001_2-20250601t080000z").state == "idle")

    try:
        client.get_task("render", "no-such-task")
        check("404 TaskNotFound", False)
    except ResourceNotFoundError as e:
        check("404 TaskNotFound", e.status_code == 404 and code_of(e) == "TaskNotFound", e)
    try:
        client.get_task_file_properties("bench", "task-00001", "nope.txt")
        check("404 for a missing file (HEAD: no body)", False)
    except ResourceNotFoundError as e:
        check("404 for a missing file (HEAD: no body)", e.status_code == 404, e)

    try:
        client.download_task_file("bench", "task-00001", "nope.txt")
        check("404 FileNotFound", False)
    except ResourceNotFoundError as e:
        check("404 FileNotFound", code_of(e) == "FileNotFound", e)

    control(port, "task-state", {"job": "bench", "task": "task-00003", "files": "cleanedup"})
    try:
        list(client.list_task_files("bench", "task-00003"))
        check("409 TaskFilesCleanedup", False)
    except ResourceExistsError as e:
        check("409 TaskFilesCleanedup", e.status_code == 409 and code_of(e) == "TaskFilesCleanedup", e)
    control(port, "task-state", {"job": "bench", "task": "task-00004", "files": "nodegone"})
    try:
        client.download_task_file("bench", "task-00004", "stdout.txt")
        check("404 NodeNotFound for a gone node", False)
    except ResourceNotFoundError as e:
        check("404 NodeNotFound for a gone node", code_of(e) == "NodeNotFound", e)

    lm = p.last_modified
    try:
        client.get_task_file_properties("bench", "task-00042", "stderr.txt", if_unmodified_since=lm - datetime.timedelta(days=1))
        check("If-Unmodified-Since in the past is 412", False)
    except HttpResponseError as e:
        check("If-Unmodified-Since in the past is 412", e.status_code == 412, e)
    try:
        client.get_task_file_properties("bench", "task-00042", "stderr.txt", if_modified_since=lm)
        check("If-Modified-Since = Last-Modified is 304", False)
    except HttpResponseError as e:
        check("If-Modified-Since = Last-Modified is 304", e.status_code == 304, e)
    p2 = client.get_task_file_properties("bench", "task-00042", "stderr.txt", if_modified_since=lm - datetime.timedelta(seconds=1))
    check("If-Modified-Since before Last-Modified is 200", p2.content_length == len(whole))

    n1 = client.get_task_file_properties("render", "frame-0003", "stdout.txt").content_length
    time.sleep(2.2)
    n2 = client.get_task_file_properties("render", "frame-0003", "stdout.txt").content_length
    check("demo: the running task's stdout grows", n2 > n1, (n1, n2))

    before = client.get_task_file_properties("render", "frame-0001", "stdout.txt").content_length
    control(port, "append", {"job": "render", "task": "frame-0001", "path": "stdout.txt", "data": "one more\n"})
    after = client.get_task_file_properties("render", "frame-0001", "stdout.txt").content_length
    check("append grows the file", after == before + 9, (before, after))

    # The SDK's default retry policy honours Retry-After on 503.
    control(port, "fail", {"count": 1, "status": 503, "code": "ServerBusy", "retry_after": 1, "paths": "task-00010"})
    t0 = time.monotonic()
    got = b"".join(client.download_task_file("bench", "task-00010", "stdout.txt"))
    log = [r["status"] for r in control(port, "requests") if r["path"] == "/jobs/bench/tasks/task-00010/files/stdout.txt"]
    check("503 ServerBusy, then the SDK's retry succeeds", log == [503, 200] and got and time.monotonic() - t0 >= 0.9, log)

    v = control(port, "violations")
    check("no violations from the SDK's requests", v == [], v)

    # Refusals.
    bad = BatchClient(endpoint=f"http://127.0.0.1:{port}", credential=AzureNamedKeyCredential(ACCOUNT, WRONG_KEY))
    try:
        list(bad.list_jobs())
        check("wrong key refused", False)
    except HttpResponseError as e:
        check("wrong key refused with 403 AuthenticationFailed", e.status_code == 403 and code_of(e) == "AuthenticationFailed", e)
    v = control(port, "violations")
    check("wrong key logged as a violation", len(v) == 1 and "signature mismatch" in v[0], v)

    q = "?api-version=2025-06-01"
    st, _, _ = raw(port, "GET", "/jobs/render/tasks" + q, {"Authorization": "Bearer tok-render"})
    check("task token reads its job", st == 200, st)
    st, _, body = raw(port, "GET", "/jobs/bench/tasks" + q, {"Authorization": "Bearer tok-render"})
    check("task token refused elsewhere (403 AuthorizationFailure)", st == 403 and json.loads(body)["code"] == "AuthorizationFailure", body)
    st, h, body = raw(port, "HEAD", "/jobs/render/tasks/frame-0001/files/stdout.txt" + q, {"Authorization": "Bearer tok-all"})
    check("HEAD file", st == 200 and body == b"" and h["ocp-batch-file-isdirectory"] == "false"
          and int(h["Content-Length"]) > 0, h)
    st, _, body = raw(port, "GET", "/jobs", {"Authorization": "Bearer tok-all"})
    check("missing api-version is 400", st == 400 and json.loads(body)["code"] == "MissingRequiredQueryParameter", body)
    st, _, _ = raw(port, "DELETE", "/jobs/render" + q, {"Authorization": "Bearer tok-all"})
    check("DELETE is 405", st == 405, st)
    st, _, _ = raw(port, "GET", "/certificates" + q, {"Authorization": "Bearer tok-all"})
    check("unknown path is 400 InvalidUri", st == 400, st)
    v = control(port, "violations")
    check("each logged as a violation", len(v) == 4, v)
    control(port, "reset", {})
    check("reset clears", control(port, "violations") == [] and control(port, "requests") == [])


if __name__ == "__main__":
    main()
