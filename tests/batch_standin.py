"""A local stand-in for the Azure Batch data-plane REST service (api-version 2025-06-01), for
batchfs's integration tests, benchmark and demo. It serves jobs, tasks, pools, compute nodes and
their files read-only, from a fixture held in memory, and checks every request the way the
service would: method, path, api-version, and authentication.

Shared Key signatures are checked with Microsoft's own signing code from the `azure-batch`
package (azure.batch._patch.BatchSharedKeyAuthPolicy, azure-batch 15.1.0, installed into
.tools/py by scripts/setup.sh), never with batchfs's code: the stand-in rebuilds the request as
received and asks the SDK's policy to sign it; a signature that differs is answered with 403
AuthenticationFailed and recorded as a violation.

    .tools/py/bin/python tests/batch_standin.py --account NAME --key BASE64KEY
        [--token T]... [--task-token T:JOBID]... [--latency-ms MS] [--port 0]
        [--port-file PATH] [--fixture FILE] [--demo] [--bench-tasks N] [--verbose]

It prints `listening on PORT` (flushed) and writes PORT to --port-file once it is serving.

Data API (all GET; HEAD is accepted too and answers GET's headers without the body):
    /jobs  /jobs/{job}  /jobs/{job}/tasks  /jobs/{job}/tasks/{task}
    /jobs/{job}/tasks/{task}/files[?recursive=]  /jobs/{job}/tasks/{task}/files/{path}
    /pools  /pools/{pool}  /pools/{pool}/nodes  /pools/{pool}/nodes/{node}
    /pools/{pool}/nodes/{node}/files[?recursive=]  /pools/{pool}/nodes/{node}/files/{path}
  Lists honour maxresults (1..1000, default 1000), $select, $filter (startswith(p,'x'),
  p eq/ne/gt/ge/lt/le value, joined by `and`; p may be a/b), and page with odata.nextLink
  ($skiptoken). {path} may hold `/` as is or as %2F (the Python SDK sends %2F).
  File reads honour `ocp-range: bytes=S-E` (inclusive; E clamped to the file; `bytes=S-` and
  `bytes=-N` also work) and answer 200 with the slice, as the spec declares only 200; a start at
  or past the end of the file (so any range of an empty file) is 416 InvalidRange. The plain
  `Range` header is not honoured. If-Modified-Since (304) and If-Unmodified-Since (412
  ConditionNotMet) compare at whole seconds, as the HTTP dates carry no more.
  Task files of a task whose filesState is not "ok": "unavailable" -> 409 TaskFilesUnavailable,
  "cleanedup" -> 409 TaskFilesCleanedup, "nodegone" -> 404 NodeNotFound (codes and statuses from
  the Batch Status and Error Codes reference).

Authentication: `SharedKey ACCOUNT:SIG` (needs ocp-date, within 15 minutes of now) or
`Bearer TOKEN` with a token given by --token, or by --task-token T:JOB (then only /jobs/JOB and
below; anything else is 403 AuthorizationFailure, the code the service answers for a caller
without the permission; not recorded as a violation). A missing or unknown credential is 401
AuthenticationFailed (a bad Shared Key signature: 403 AuthenticationFailed).

Control API (no auth, never logged, path prefix /_standin/):
    GET  /_standin/requests     every data request: {method, path (decoded), raw_path, query,
                                auth: sharedkey|bearer|none, status, range}
    GET  /_standin/violations   list of strings
    POST /_standin/reset        clears the request log, the violations and pending failures
    POST /_standin/key          {"key": BASE64}: the account's key from now on (a rotation)
    POST /_standin/append       {"job","task","path","data"|"b64"} or {"pool","node",...}:
                                appends to the file (creating it and its directories)
    POST /_standin/fail         {"count","status","code","retry_after"?,"paths"?,"message"?}:
                                the next `count` data requests whose path contains `paths`
                                get that error (503 ServerBusy with Retry-After by default)
    POST /_standin/task-state   {"job","task","files"?: ok|unavailable|cleanedup|nodegone,
                                "state"?, "exitCode"?}
    POST /_standin/load         a fixture (replaces the model)
    GET  /_standin/model        a summary: job and task ids, pool and node ids

Fixture (JSON): {"jobs": [{"id", "state"?, "poolId"?, "tasks": [{"id", "state"?,
"exitCode"?, "node"?: "pool/node", "commandLine"?, "filesState"?, "files": {PATH: CONTENT}}]}],
"pools": [{"id", "vmSize"?, "nodes": [{"id", "state"?, "files": {...}}]}]}; CONTENT is a
string (UTF-8 text), {"b64": ...} or {"text": ...} (either may add "mode": "0o100755"); a PATH
ending in `/` is an empty directory. Directories of a file's path are implied.
"""

import argparse
import base64
import datetime as dt
import hmac
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlsplit

# Microsoft's SDK: the reference for what a correct signature is.
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest

API_VERSION = "2025-06-01"
MAX_RESULTS = 1000
CLOCK_SKEW = dt.timedelta(minutes=15)
JSON_TYPE = "application/json;odata=minimalmetadata"
FILE_MODE = "0o100644"
DIR_MODE = "0o040755"
UTC = dt.timezone.utc

# How each filesState answers for the task's files: (HTTP status, Batch error code, message).
FILES_STATES = {
    "ok": None,
    "unavailable": (409, "TaskFilesUnavailable", "The files of the specified task are unavailable."),
    "cleanedup": (409, "TaskFilesCleanedup", "The files of the specified task are cleanedup."),
    "nodegone": (404, "NodeNotFound", "The specified node does not exist."),
}
MESSAGES = {
    "ServerBusy": "The server is currently unable to receive requests. Please retry your request.",
    "InternalError": "The server encountered an internal error. Please retry the request.",
    "OperationTimedOut": "The operation could not be completed within the permitted time.",
}


# ----------------------------------------------------------------------------------- time


def now():
    return dt.datetime.now(UTC)


def iso(t):
    """ISO 8601 with Z, fraction trimmed like the service's (…T19:37:28.623369Z)."""
    s = t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        s += (".%06d" % t.microsecond).rstrip("0")
    return s + "Z"


def rfc1123(t):
    return format_datetime(t.astimezone(UTC), usegmt=True)


def etag_of(t):
    """An eTag in the service's style: .NET ticks in hex (0x8DD...)."""
    ticks = int((t - dt.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 10_000_000)
    return "0x%X" % (ticks + 621355968000000000)


def whole_seconds(t):
    return t.replace(microsecond=0)


# ---------------------------------------------------------------------------------- model


class File:
    __slots__ = ("data", "ctime", "mtime", "mode", "is_dir")

    def __init__(self, data=b"", ctime=None, mtime=None, mode=None, is_dir=False):
        self.data = bytearray(data)
        self.ctime = ctime or now()
        self.mtime = mtime or self.ctime
        self.is_dir = is_dir
        self.mode = mode or (DIR_MODE if is_dir else FILE_MODE)


class FileTree:
    """Files of a task or a node: path -> File; directories are implied by paths, or explicit."""

    def __init__(self):
        self.files = {}

    def put(self, path, data, when=None, mode=None):
        path = path.strip("/")
        if not path:
            raise ValueError("empty file path")
        self.files[path] = File(data, when, when, mode)

    def mkdir(self, path, when=None):
        path = path.strip("/")
        if path and path not in self.files:
            self.files[path] = File(b"", when, when, is_dir=True)

    def append(self, path, data):
        path = path.strip("/")
        if not path:
            raise ValueError("empty file path")
        f = self.files.get(path)
        t = now()
        if f is None or f.is_dir:
            self.files[path] = File(data, t, t)
        else:
            f.data += data
            f.mtime = t

    def entries(self):
        """Every entry, directories included: name -> File. A directory implied by a path takes
        the earliest creation and the latest change of what is under it."""
        implied = {}
        for path, f in self.files.items():
            parts = path.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d in self.files:
                    continue
                cur = implied.get(d)
                if cur is None:
                    implied[d] = File(b"", f.ctime, f.mtime, is_dir=True)
                else:
                    cur.ctime = min(cur.ctime, f.ctime)
                    cur.mtime = max(cur.mtime, f.mtime)
        implied.update(self.files)
        return implied

    def lookup(self, path):
        path = path.strip("/") if path else path
        if not path:
            return None
        f = self.files.get(path)
        if f is not None:
            return f
        return self.entries().get(path)


def load_content(v):
    """A fixture file's content: str, {"b64"}, {"text"}; returns (bytes, mode or None)."""
    if isinstance(v, str):
        return v.encode(), None
    if isinstance(v, dict):
        if "b64" in v:
            return base64.b64decode(v["b64"]), v.get("mode")
        if "text" in v:
            return v["text"].encode(), v.get("mode")
    raise ValueError(f"bad file content: {v!r}")


def fill_tree(tree, files, when):
    for path, v in (files or {}).items():
        if path.endswith("/"):
            tree.mkdir(path, when)
            continue
        data, mode = load_content(v)
        tree.put(path, data, when, mode)


class Model:
    """Jobs, tasks, pools and nodes, built from a fixture."""

    def __init__(self, fixture=None):
        self.jobs = {}
        self.pools = {}
        if fixture:
            self.load(fixture)

    def load(self, fx):
        t0 = now() - dt.timedelta(hours=2)
        for p in fx.get("pools", []):
            pid = p["id"]
            pool = {
                "id": pid,
                "vmSize": p.get("vmSize", "standard_d2s_v3"),
                "state": p.get("state", "active"),
                "allocationState": p.get("allocationState", "steady"),
                "created": t0,
                "nodes": {},
            }
            for i, n in enumerate(p.get("nodes", [])):
                tree = FileTree()
                fill_tree(tree, n.get("files"), t0 + dt.timedelta(minutes=5))
                pool["nodes"][n["id"]] = {
                    "id": n["id"],
                    "state": n.get("state", "idle"),
                    "ipAddress": n.get("ipAddress", "10.0.0.%d" % (4 + i)),
                    "created": t0 + dt.timedelta(minutes=3),
                    "files": tree,
                    "totalTasksRun": n.get("totalTasksRun", 0),
                }
            self.pools[pid] = pool
        for j in fx.get("jobs", []):
            jid = j["id"]
            job = {
                "id": jid,
                "state": j.get("state", "active"),
                "poolId": j.get("poolId", "pool1"),
                "priority": j.get("priority", 0),
                "created": t0 + dt.timedelta(minutes=10),
                "tasks": {},
            }
            for k, tk in enumerate(j.get("tasks", [])):
                job["tasks"][tk["id"]] = self._task(job, tk, t0 + dt.timedelta(minutes=11, milliseconds=k))
            self.jobs[jid] = job

    def _task(self, job, tk, created):
        state = tk.get("state", "completed")
        exit_code = tk.get("exitCode", 0 if state == "completed" else None)
        node = tk.get("node")
        if node:
            pool_id, _, node_id = node.partition("/")
        elif state != "active":
            pool_id = job["poolId"]
            nodes = self.pools.get(pool_id, {}).get("nodes", {})
            node_id = next(iter(nodes), "tvm-standin_1-20250601t000000z")
        else:
            pool_id = node_id = None
        files_state = tk.get("filesState", "ok")
        if files_state not in FILES_STATES:
            raise ValueError(f"filesState must be one of {sorted(FILES_STATES)}")
        started = created + dt.timedelta(seconds=30)
        tree = FileTree()
        fill_tree(tree, tk.get("files"), started + dt.timedelta(seconds=1))
        return {
            "id": tk["id"],
            "state": state,
            "exitCode": exit_code,
            "commandLine": tk.get("commandLine", "/bin/sh -c 'run %s'" % tk["id"]),
            "poolId": pool_id,
            "nodeId": node_id,
            "created": created,
            "started": started,
            "ended": started + dt.timedelta(seconds=42),
            "changed": created,
            "filesState": files_state,
            "files": tree,
        }

    def set_task_state(self, task, state, exit_code):
        task["state"] = state
        t = now()
        task["changed"] = t
        if state == "completed":
            task["ended"] = t
            task["exitCode"] = 0 if exit_code is None else exit_code
        elif exit_code is not None:
            task["exitCode"] = exit_code


# ----------------------------------------------------------------------------- rendering


def job_json(base, job):
    c = job["created"]
    out = {
        "id": job["id"],
        "url": f"{base}/jobs/{quote(job['id'], safe='')}",
        "eTag": etag_of(c),
        "lastModified": iso(c),
        "creationTime": iso(c),
        "state": job["state"],
        "stateTransitionTime": iso(c),
        "priority": job["priority"],
        "maxParallelTasks": -1,
        "allowTaskPreemption": False,
        "usesTaskDependencies": False,
        "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "maxTaskRetryCount": 0},
        "poolInfo": {"poolId": job["poolId"]},
        "executionInfo": {"startTime": iso(c + dt.timedelta(milliseconds=19)), "poolId": job["poolId"]},
        "onAllTasksComplete": "noaction",
        "onTaskFailure": "noaction",
    }
    if job["state"] == "completed":
        out["executionInfo"]["endTime"] = iso(c + dt.timedelta(hours=1))
    return out


def task_json(base, job, task):
    jid, tid = job["id"], task["id"]
    c, state = task["created"], task["state"]
    out = {
        "id": tid,
        "url": f"{base}/jobs/{quote(jid, safe='')}/tasks/{quote(tid, safe='')}",
        "eTag": etag_of(task["changed"]),
        "creationTime": iso(c),
        "lastModified": iso(task["changed"]),
        "state": state,
        "stateTransitionTime": iso(task["ended"] if state == "completed" else task["started"] if state == "running" else c),
        "commandLine": task["commandLine"],
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
        "constraints": {
            "maxWallClockTime": "P10675199DT2H48M5.4775807S",
            "retentionTime": "P7D",
            "maxTaskRetryCount": 0,
        },
        "requiredSlots": 1,
    }
    if state != "active":
        out["previousState"] = "running" if state == "completed" else "active"
        out["previousStateTransitionTime"] = iso(task["started"] if state == "completed" else c)
    ex = {"retryCount": 0, "requeueCount": 0}
    if state in ("running", "completed"):
        ex = {"startTime": iso(task["started"])} | ex
    if state == "completed":
        code = task["exitCode"] or 0
        ex["endTime"] = iso(task["ended"])
        ex["exitCode"] = code
        ex["result"] = "success" if code == 0 else "failure"
        if code != 0:
            ex["failureInfo"] = {
                "category": "usererror",
                "code": "FailureExitCode",
                "message": "The task exited with an exit code representing a failure",
                "details": [{"name": "Message", "value": "The task exited with an exit code representing a failure"}],
            }
    out["executionInfo"] = ex
    if task["nodeId"] and state != "active":
        pid, nid = task["poolId"], task["nodeId"]
        node_url = f"{base}/pools/{quote(pid, safe='')}/nodes/{quote(nid, safe='')}"
        root = f"workitems/{jid}/job-1/{tid}"
        out["nodeInfo"] = {
            "affinityId": f"TVM:{nid}",
            "nodeUrl": node_url,
            "poolId": pid,
            "nodeId": nid,
            "taskRootDirectory": root,
            "taskRootDirectoryUrl": f"{node_url}/files/{quote(root, safe='/')}",
        }
    return out


def pool_json(base, pool):
    c = pool["created"]
    n = len(pool["nodes"])
    return {
        "id": pool["id"],
        "url": f"{base}/pools/{quote(pool['id'], safe='')}",
        "eTag": etag_of(c),
        "lastModified": iso(c),
        "creationTime": iso(c),
        "state": pool["state"],
        "stateTransitionTime": iso(c),
        "allocationState": pool["allocationState"],
        "allocationStateTransitionTime": iso(c + dt.timedelta(seconds=13, milliseconds=511)),
        "vmSize": pool["vmSize"],
        "resizeTimeout": "PT15M",
        "currentDedicatedNodes": n,
        "targetDedicatedNodes": n,
        "currentLowPriorityNodes": 0,
        "targetLowPriorityNodes": 0,
        "enableAutoScale": False,
        "enableInterNodeCommunication": False,
        "taskSlotsPerNode": 1,
        "taskSchedulingPolicy": {"nodeFillType": "spread"},
        "virtualMachineConfiguration": {
            "imageReference": {
                "publisher": "canonical",
                "offer": "ubuntu-24_04-lts",
                "sku": "server",
                "version": "latest",
            },
            "nodeAgentSKUId": "batch.node.ubuntu 24.04",
        },
    }


def node_json(base, pool, node):
    c = node["created"]
    nid = node["id"]
    return {
        "id": nid,
        "url": f"{base}/pools/{quote(pool['id'], safe='')}/nodes/{quote(nid, safe='')}",
        "state": node["state"],
        "schedulingState": "enabled",
        "stateTransitionTime": iso(c + dt.timedelta(minutes=5)),
        "lastBootTime": iso(c + dt.timedelta(minutes=4)),
        "allocationTime": iso(c),
        "ipAddress": node["ipAddress"],
        "affinityId": f"TVM:{nid}",
        "vmSize": pool["vmSize"],
        "totalTasksRun": node["totalTasksRun"],
        "totalTasksSucceeded": node["totalTasksRun"],
        "runningTasksCount": 1 if node["state"] == "running" else 0,
        "runningTaskSlotsCount": 1 if node["state"] == "running" else 0,
        "isDedicated": True,
        "nodeAgentInfo": {"version": "1.11.9", "lastUpdateTime": iso(c + dt.timedelta(minutes=4))},
    }


def file_item(files_url, name, f):
    item = {"name": name, "url": f"{files_url}/{quote(name, safe='/')}", "isDirectory": f.is_dir}
    if not f.is_dir:
        # Directories carry no properties in the service's listings (Nodes_ListNodeFiles example).
        item["properties"] = {
            "creationTime": iso(f.ctime),
            "lastModified": iso(f.mtime),
            "contentLength": str(len(f.data)),
            "contentType": "application/octet-stream",
            "fileMode": f.mode,
        }
    return item


# ------------------------------------------------------------------------------- $filter


class BadQuery(Exception):
    def __init__(self, name, value, reason):
        super().__init__(reason)
        self.name, self.value, self.reason = name, value, reason


_CLAUSE_STARTSWITH = re.compile(r"^startswith\(\s*([A-Za-z_][\w/]*)\s*,\s*'((?:[^']|'')*)'\s*\)$")
_CLAUSE_CMP = re.compile(r"^([A-Za-z_][\w/]*)\s+(eq|ne|gt|ge|lt|le)\s+('(?:[^']|'')*'|-?\d+|true|false|null)$")


def _split_and(expr):
    parts, cur, inq, i = [], [], False, 0
    while i < len(expr):
        ch = expr[i]
        if ch == "'":
            inq = not inq
        if not inq and expr[i : i + 5].lower() == " and ":
            parts.append("".join(cur))
            cur = []
            i += 5
            continue
        cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _get(item, prop):
    v = item
    for k in prop.split("/"):
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def compile_filter(expr):
    """A small OData subset: clauses joined by `and`; see the module docstring."""
    preds = []
    for clause in _split_and(expr):
        m = _CLAUSE_STARTSWITH.match(clause)
        if m:
            prop, prefix = m.group(1), m.group(2).replace("''", "'")
            preds.append(lambda it, p=prop, x=prefix: isinstance(_get(it, p), str) and _get(it, p).startswith(x))
            continue
        m = _CLAUSE_CMP.match(clause)
        if m:
            prop, op, lit = m.groups()
            if lit.startswith("'"):
                val = lit[1:-1].replace("''", "'")
            elif lit in ("true", "false"):
                val = lit == "true"
            elif lit == "null":
                val = None
            else:
                val = int(lit)

            def pred(it, p=prop, o=op, v=val):
                x = _get(it, p)
                if o == "eq":
                    return x == v
                if o == "ne":
                    return x != v
                if x is None or v is None or type(x) is not type(v):
                    return False
                return {"gt": x > v, "ge": x >= v, "lt": x < v, "le": x <= v}[o]

            preds.append(pred)
            continue
        raise BadQuery("$filter", expr, f"unsupported filter clause: {clause}")
    return lambda it: all(p(it) for p in preds)


# ---------------------------------------------------------------------------------- server


class ApiError(Exception):
    def __init__(self, status, code, message, values=None, headers=None, violation=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.values = values or []
        self.headers = headers or {}
        self.violation = violation


class _RecordingPolicy(BatchSharedKeyAuthPolicy):
    """The SDK's policy, keeping the string it signed (for the violation message)."""

    string_to_sign = None

    def _sign_string(self, string_to_sign):
        self.string_to_sign = string_to_sign
        return super()._sign_string(string_to_sign)


def expected_shared_key(account, key, method, url, headers):
    """The Authorization value azure-batch would send for this request, and its string to sign.

    The request is rebuilt as received: `url` holds the path and query exactly as they came on
    the wire (percent-encoding untouched), and every header but Authorization goes in. The SDK's
    policy then does its own canonicalization: the path stays percent-encoded as sent (so
    .../files/wd%2Fout.txt is signed as `/acct/jobs/j/tasks/t/files/wd%2Fout.txt`), query values
    are percent-DECODED (urllib.parse.parse_qs), names are kept as sent (not lowercased), sorted
    by name, first value of each, empty values left out; headers are the 11 standard ones by
    lowercased name, then every header whose name contains `ocp-` (ocp-date, ocp-range, ...) as
    `name:value`, sorted. Header names are handed over lowercased: the policy tests `"ocp-" in
    name` before lowercasing, and HTTP names are case-insensitive, so `Ocp-Date` on the wire counts
    as the SDK's own `ocp-date` would.
    """
    req = HttpRequest(method, url, headers={k.lower(): v for k, v in headers if k.lower() != "authorization"})
    policy = _RecordingPolicy(AzureNamedKeyCredential(account, key))
    policy.on_request(PipelineRequest(req, PipelineContext(None)))
    return req.headers["Authorization"], policy.string_to_sign


class Standin:
    def __init__(self, args):
        self.account = args.account
        self.key = args.key
        self.tokens = set(args.token or [])
        self.task_tokens = {}
        for tt in args.task_token or []:
            tok, sep, job = tt.rpartition(":")
            if not sep or not tok or not job:
                sys.exit(f"--task-token wants TOKEN:JOBID, got {tt!r}")
            self.task_tokens[tok] = job
        self.latency = args.latency_ms / 1000.0
        self.lock = threading.RLock()
        self.model = Model()
        self.requests = []
        self.violations = []
        self.failures = []
        self.port = None

    # ---- bookkeeping

    def violate(self, text):
        with self.lock:
            self.violations.append(text)

    def take_failure(self, path):
        with self.lock:
            for rule in self.failures:
                if rule["count"] > 0 and (not rule.get("paths") or rule["paths"] in path):
                    rule["count"] -= 1
                    if rule["count"] == 0:
                        self.failures.remove(rule)
                    return dict(rule)
        return None


ROUTE_PARAMS = {
    "list": {"api-version", "timeout", "maxresults", "$filter", "$select", "$expand", "$skiptoken"},
    "get": {"api-version", "timeout", "$select", "$expand"},
    "files": {"api-version", "timeout", "maxresults", "$filter", "recursive", "$skiptoken"},
    "file": {"api-version", "timeout"},
}


def route(segs):
    """(kind, name, ids) for a path split into decoded segments; None if unknown."""
    n = len(segs)
    if n == 0 or any(s == "" for s in segs[: min(n, 6)]):
        return None
    if segs[0] == "jobs":
        if n == 1:
            return ("list", "jobs", ())
        if n == 2:
            return ("get", "job", (segs[1],))
        if segs[2] != "tasks":
            return None
        if n == 3:
            return ("list", "tasks", (segs[1],))
        if n == 4:
            return ("get", "task", (segs[1], segs[3]))
        if segs[4] != "files":
            return None
        if n == 5:
            return ("files", "taskfiles", (segs[1], segs[3]))
        return ("file", "taskfile", (segs[1], segs[3]))
    if segs[0] == "pools":
        if n == 1:
            return ("list", "pools", ())
        if n == 2:
            return ("get", "pool", (segs[1],))
        if segs[2] != "nodes":
            return None
        if n == 3:
            return ("list", "nodes", (segs[1],))
        if n == 4:
            return ("get", "node", (segs[1], segs[3]))
        if segs[4] != "files":
            return None
        if n == 5:
            return ("files", "nodefiles", (segs[1], segs[3]))
        return ("file", "nodefile", (segs[1], segs[3]))
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    S: Standin = None  # set in main
    verbose = False

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("standin: " + (fmt % args) + "\n")

    # ---- plumbing

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            return b""
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, body=b"", headers=(), content_length=None):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD" and status != 304 and body:
            self.wfile.write(body)

    def _json(self, status, obj, headers=()):
        body = json.dumps(obj).encode()
        self._send(status, body, [("Content-Type", "application/json")] + list(headers))

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_OPTIONS(self):
        self._dispatch()

    def _dispatch(self):
        target = self.path
        if target.startswith(("http://", "https://")):
            u = urlsplit(target)
            target = u.path + ("?" + u.query if u.query else "")
        raw_path, _, raw_query = target.partition("?")
        body = self._body()
        if raw_path.startswith("/_standin/"):
            return self._control(raw_path[len("/_standin/") :], body)
        self._data(raw_path, raw_query)

    # ---- control API

    def _control(self, what, body):
        S = self.S
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError as e:
            return self._json(400, {"error": f"bad JSON: {e}"})
        try:
            if what == "requests" and self.command == "GET":
                with S.lock:
                    return self._json(200, list(S.requests))
            if what == "violations" and self.command == "GET":
                with S.lock:
                    return self._json(200, list(S.violations))
            if what == "model" and self.command == "GET":
                with S.lock:
                    return self._json(200, {
                        "jobs": {j: sorted(job["tasks"]) for j, job in S.model.jobs.items()},
                        "pools": {p: sorted(pool["nodes"]) for p, pool in S.model.pools.items()},
                    })
            if self.command != "POST":
                return self._json(404, {"error": f"no control endpoint {self.command} /_standin/{what}"})
            if what == "key":
                # The account's key was regenerated: only the new one signs from now on.
                base64.b64decode(req["key"], validate=True)
                with S.lock:
                    S.key = req["key"]
                return self._json(200, {"ok": True})
            if what == "reset":
                with S.lock:
                    S.requests.clear()
                    S.violations.clear()
                    S.failures.clear()
                return self._json(200, {"ok": True})
            if what == "load":
                m = Model(req)
                with S.lock:
                    S.model = m
                return self._json(200, {"ok": True})
            if what == "append":
                data = base64.b64decode(req["b64"]) if "b64" in req else req.get("data", "").encode()
                with S.lock:
                    tree = self._control_tree(req)
                    tree.append(req["path"], data)
                return self._json(200, {"ok": True})
            if what == "fail":
                rule = {
                    "count": int(req.get("count", 1)),
                    "status": int(req.get("status", 503)),
                    "code": req.get("code", "ServerBusy"),
                    "message": req.get("message"),
                    "retry_after": req.get("retry_after", 1 if int(req.get("status", 503)) in (429, 503) else None),
                    "paths": req.get("paths"),
                }
                with S.lock:
                    S.failures.append(rule)
                return self._json(200, {"ok": True})
            if what == "task-state":
                with S.lock:
                    job = S.model.jobs[req["job"]]
                    task = job["tasks"][req["task"]]
                    if "files" in req:
                        if req["files"] not in FILES_STATES:
                            raise ValueError(f"files must be one of {sorted(FILES_STATES)}")
                        task["filesState"] = req["files"]
                    if "state" in req or "exitCode" in req:
                        S.model.set_task_state(task, req.get("state", task["state"]), req.get("exitCode"))
                return self._json(200, {"ok": True})
            return self._json(404, {"error": f"no control endpoint {self.command} /_standin/{what}"})
        except KeyError as e:
            return self._json(404, {"error": f"not found or missing field: {e}"})
        except (ValueError, TypeError) as e:
            return self._json(400, {"error": str(e)})

    def _control_tree(self, req):
        m = self.S.model
        if "job" in req:
            return m.jobs[req["job"]]["tasks"][req["task"]]["files"]
        return m.pools[req["pool"]]["nodes"][req["node"]]["files"]

    # ---- data API

    def _base(self):
        host = self.headers.get("Host") or f"127.0.0.1:{self.S.port}"
        return f"http://{host}"

    def _data(self, raw_path, raw_query):
        S = self.S
        started = time.monotonic()
        query_pairs = parse_qsl(raw_query, keep_blank_values=True)
        query = {}
        for k, v in query_pairs:
            query.setdefault(k, v)
        auth_header = self.headers.get("Authorization", "")
        scheme = auth_header.split(" ", 1)[0].lower()
        auth = {"sharedkey": "sharedkey", "bearer": "bearer"}.get(scheme, "none")
        segs = [unquote(s) for s in raw_path[1:].split("/")] if raw_path.startswith("/") else []
        path = unquote(raw_path)
        entry = {
            "method": self.command,
            "path": path,
            "raw_path": raw_path,
            "query": query,
            "auth": auth,
            "status": None,
            "range": self.headers.get("ocp-range"),
        }
        rid = str(uuid.uuid4())
        try:
            status, body, headers, clen = self._serve(raw_path, raw_query, segs, query, auth_header, rid)
        except ApiError as e:
            if e.violation:
                S.violate(f"{self.command} {raw_path}{'?' + raw_query if raw_query else ''}: {e.violation}")
            status, body, headers, clen = self._error(e, rid)
        except Exception as e:  # a bug of the stand-in: answer as the service would, and say so
            S.violate(f"{self.command} {raw_path}: stand-in internal error {e!r}")
            status, body, headers, clen = self._error(ApiError(500, "InternalError", MESSAGES["InternalError"]), rid)
        entry["status"] = status
        with S.lock:
            S.requests.append(entry)
        wait = S.latency - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)
        headers = [("request-id", rid), ("DataServiceVersion", "3.0")] + headers
        if self.headers.get("client-request-id") and self.headers.get("return-client-request-id", "").lower() == "true":
            headers.append(("client-request-id", self.headers["client-request-id"]))
        self._send(status, body, headers, clen)

    def _error(self, e, rid):
        msg = f"{e.message}\nRequestId:{rid}\nTime:{iso(now())}"
        obj = {
            "odata.metadata": f"{self._base()}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
            "code": e.code,
            "message": {"lang": "en-US", "value": msg},
        }
        if e.values:
            obj["values"] = [{"key": k, "value": v} for k, v in e.values]
        body = json.dumps(obj).encode()
        headers = [("Content-Type", JSON_TYPE)] + list(e.headers.items())
        if e.status == 304:
            return 304, b"", headers, None
        return e.status, body, headers, None

    def _serve(self, raw_path, raw_query, segs, query, auth_header, rid):
        S = self.S
        if self.command not in ("GET", "HEAD"):
            raise ApiError(405, "UnsupportedHttpVerb", "The resource doesn't support the specified HTTP verb.",
                           [("HttpVerb", self.command)], headers={"Allow": "GET, HEAD"},
                           violation=f"method {self.command} is not allowed (read-only)")
        r = route(segs)
        if r is None or (r[0] == "file" and not unquote("/".join(raw_path.split("/")[6:])).strip("/")):
            raise ApiError(400, "InvalidUri", "The requested URI does not represent any resource on the server.",
                           [("UriPath", unquote(raw_path))], violation="unknown path")
        kind, name, ids = r
        av = query.get("api-version")
        if av is None:
            raise ApiError(400, "MissingRequiredQueryParameter", "A query parameter that's mandatory for this request is not specified.",
                           [("QueryParameterName", "api-version")], violation="missing api-version")
        if av != API_VERSION:
            raise ApiError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in the request URI is invalid.",
                           [("QueryParameterName", "api-version"), ("QueryParameterValue", av),
                            ("Reason", f"The only supported version is {API_VERSION}")],
                           violation=f"api-version={av}, want {API_VERSION}")
        self._authenticate(raw_path, raw_query, auth_header, segs)
        for k in query:
            if k.lower() not in ROUTE_PARAMS[kind]:
                raise ApiError(400, "UnsupportedQueryParameter", "One of the query parameters specified in the request URI is not supported.",
                               [("QueryParameterName", k)], violation=f"query parameter {k} is not supported here")
        rule = S.take_failure(unquote(raw_path))
        if rule:
            hdrs = {}
            if rule.get("retry_after") is not None:
                hdrs["Retry-After"] = str(rule["retry_after"])
            raise ApiError(rule["status"], rule["code"], rule.get("message") or MESSAGES.get(rule["code"], "Injected failure."),
                           headers=hdrs)
        qi = {k.lower(): v for k, v in query.items()}
        try:
            with S.lock:
                if kind == "list":
                    return self._list(name, ids, qi)
                if kind == "get":
                    return self._get(name, ids, qi)
                if kind == "files":
                    return self._list_files(name, ids, qi)
                return self._file(name, ids, unquote("/".join(raw_path.split("/")[6:])))
        except BadQuery as e:
            raise ApiError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in the request URI is invalid.",
                           [("QueryParameterName", e.name), ("QueryParameterValue", e.value), ("Reason", e.reason)],
                           violation=f"{e.name}={e.value!r}: {e.reason}")

    def _authenticate(self, raw_path, raw_query, auth_header, segs):
        S = self.S
        scheme, _, cred = auth_header.partition(" ")
        scheme = scheme.lower()
        if not auth_header:
            raise ApiError(401, "AuthenticationFailed",
                           "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                           [("AuthenticationErrorDetail", "The request is missing the Authorization header.")],
                           violation="no Authorization header")
        if scheme == "sharedkey":
            account, sep, sig = cred.strip().partition(":")
            fail = lambda detail, v: ApiError(
                403, "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                [("AuthenticationErrorDetail", detail)], violation=v)
            if not sep or account != S.account:
                raise fail(f"The account {account!r} is not the account of this endpoint.", f"SharedKey for account {account!r}, want {S.account!r}")
            ocp_date = self.headers.get("ocp-date")
            if not ocp_date:
                raise fail("The ocp-date header is missing.", "SharedKey request without ocp-date")
            try:
                when = parsedate_to_datetime(ocp_date)
                if when.tzinfo is None:
                    raise ValueError("no zone")
            except (TypeError, ValueError):
                raise fail(f"The ocp-date header {ocp_date!r} is not an RFC 1123 date.", f"bad ocp-date {ocp_date!r}")
            if abs(now() - when) > CLOCK_SKEW:
                raise fail("Request date is out of the allowed range.", f"ocp-date {ocp_date!r} is more than 15 minutes from now")
            url = f"http://{self.headers.get('Host') or 'localhost'}{raw_path}{'?' + raw_query if raw_query else ''}"
            want, sts = expected_shared_key(S.account, S.key, self.command, url, self.headers.items())
            if not hmac.compare_digest(want.encode(), f"SharedKey {account}:{sig}".encode()):
                raise fail("The MAC signature found in the HTTP request is not the same as any computed signature.",
                           f"SharedKey signature mismatch; azure-batch signs {sts!r}")
            return
        if scheme == "bearer":
            tok = cred.strip()
            if tok in S.tokens:
                return
            if tok in S.task_tokens:
                job = S.task_tokens[tok]
                if len(segs) >= 2 and segs[0] == "jobs" and segs[1] == job:
                    return
                raise ApiError(403, "AuthorizationFailure", "This request is not authorized to perform this operation.")
            raise ApiError(401, "AuthenticationFailed",
                           "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                           [("AuthenticationErrorDetail", "The access token is not valid.")],
                           violation="Bearer token that was not issued")
        raise ApiError(401, "AuthenticationFailed",
                       "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
                       [("AuthenticationErrorDetail", f"Unknown authorization scheme {scheme!r}.")],
                       violation=f"unknown authorization scheme {scheme!r}")

    # ---- handlers (called with the model lock held)

    def _find(self, name, ids):
        m = self.S.model
        if name in ("job", "tasks", "task", "taskfiles", "taskfile"):
            job = m.jobs.get(ids[0])
            if job is None:
                raise ApiError(404, "JobNotFound", "The specified job does not exist.")
            if len(ids) == 1:
                return job, None
            task = job["tasks"].get(ids[1])
            if task is None:
                raise ApiError(404, "TaskNotFound", "The specified task does not exist.")
            return job, task
        pool = m.pools.get(ids[0])
        if pool is None:
            raise ApiError(404, "PoolNotFound", "The specified pool does not exist.")
        if len(ids) == 1:
            return pool, None
        node = pool["nodes"].get(ids[1])
        if node is None:
            raise ApiError(404, "NodeNotFound", "The specified node does not exist.")
        return pool, node

    @staticmethod
    def _select(obj, qi):
        sel = qi.get("$select")
        if not sel:
            return obj
        keys = [s.strip() for s in sel.split(",") if s.strip()]
        return {k: obj[k] for k in keys if k in obj}

    def _page(self, items, key, qi, metadata):
        """items: rendered dicts, or (id, render) pairs rendered only when on the page (a page
        of a 10,000-task job must not cost rendering all of them); sorted, filtered, paged."""
        lazy = bool(items) and isinstance(items[0], tuple)
        if lazy and "$filter" in qi and qi["$filter"].strip():
            items, lazy = [render() for _, render in items], False
        if "$filter" in qi and qi["$filter"].strip():
            pred = compile_filter(qi["$filter"])
            items = [it for it in items if pred(it)]
        if lazy:
            items = [_Lazy(i, r) for i, r in items]
        items.sort(key=lambda it: it[key])
        mr = qi.get("maxresults")
        if mr is None:
            limit = MAX_RESULTS
        else:
            if not re.fullmatch(r"\d+", mr):
                raise BadQuery("maxresults", mr, "not an integer")
            limit = int(mr)
            if not 1 <= limit <= MAX_RESULTS:
                raise BadQuery("maxresults", mr, f"must be 1..{MAX_RESULTS}")
        tok = qi.get("$skiptoken")
        if tok:
            try:
                after = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4)).decode()
            except ValueError:
                raise BadQuery("$skiptoken", tok, "not a skip token this service gave")
            items = [it for it in items if it[key] > after]
        page, more = items[:limit], len(items) > limit
        if lazy:
            page = [it.render() for it in page]
        out = {"odata.metadata": metadata, "value": [self._select(it, qi) for it in page]}
        if more:
            nxt = base64.urlsafe_b64encode(page[-1][key].encode()).decode().rstrip("=")
            q = [("api-version", API_VERSION)]
            for k in ("maxresults", "$select", "$filter", "$expand", "recursive"):
                if k in qi:
                    q.append((k, qi[k]))
            q.append(("$skiptoken", nxt))
            base_path = self.path.split("?", 1)[0]
            if base_path.startswith(("http://", "https://")):
                base_path = urlsplit(base_path).path
            qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in q)
            out["odata.nextLink"] = f"{self._base()}{base_path}?{qs}"
        return 200, json.dumps(out).encode(), [("Content-Type", JSON_TYPE)], None

    def _list(self, name, ids, qi):
        base, m = self._base(), self.S.model
        if name == "jobs":
            items = [job_json(base, j) for j in m.jobs.values()]
            return self._page(items, "id", qi, f"{base}/$metadata#jobs")
        if name == "pools":
            items = [pool_json(base, p) for p in m.pools.values()]
            return self._page(items, "id", qi, f"{base}/$metadata#pools")
        if name == "tasks":
            job, _ = self._find("job", ids)
            items = [(t["id"], lambda t=t: task_json(base, job, t)) for t in job["tasks"].values()]
            return self._page(items, "id", qi, f"{base}/$metadata#tasks")
        pool, _ = self._find("pool", ids)
        items = [node_json(base, pool, n) for n in pool["nodes"].values()]
        return self._page(items, "id", qi, f"{base}/$metadata#nodes")

    def _get(self, name, ids, qi):
        base = self._base()
        if name == "job":
            job, _ = self._find(name, ids)
            obj, meta = job_json(base, job), "jobs"
        elif name == "task":
            job, task = self._find(name, ids)
            obj, meta = task_json(base, job, task), "tasks"
        elif name == "pool":
            pool, _ = self._find(name, ids)
            obj, meta = pool_json(base, pool), "pools"
        else:
            pool, node = self._find(name, ids)
            obj, meta = node_json(base, pool, node), "nodes"
        out = {"odata.metadata": f"{base}/$metadata#{meta}/@Element"} | self._select(obj, qi)
        headers = [("Content-Type", JSON_TYPE)]
        if "eTag" in obj:
            headers.append(("ETag", obj["eTag"]))
        if "lastModified" in obj:
            headers.append(("Last-Modified", rfc1123(dt.datetime.fromisoformat(obj["lastModified"].replace("Z", "+00:00")))))
        return 200, json.dumps(out).encode(), headers, None

    def _tree(self, name, ids):
        """(FileTree, files URL) for a task or node, raising the task's files error if any."""
        base = self._base()
        if name in ("taskfiles", "taskfile"):
            job, task = self._find(name, ids)
            bad = FILES_STATES[task["filesState"]]
            if bad:
                raise ApiError(*bad)
            return task["files"], f"{base}/jobs/{quote(job['id'], safe='')}/tasks/{quote(task['id'], safe='')}/files"
        pool, node = self._find(name, ids)
        return node["files"], f"{base}/pools/{quote(pool['id'], safe='')}/nodes/{quote(node['id'], safe='')}/files"

    def _list_files(self, name, ids, qi):
        tree, files_url = self._tree(name, ids)
        rec = qi.get("recursive", "false").lower()
        if rec not in ("true", "false"):
            raise BadQuery("recursive", qi["recursive"], "must be true or false")
        entries = tree.entries()
        items = [file_item(files_url, n, f) for n, f in entries.items() if rec == "true" or "/" not in n]
        return self._page(items, "name", qi, f"{self._base()}/$metadata#files")

    def _file(self, name, ids, fpath):
        tree, files_url = self._tree(name, ids)
        f = tree.lookup(fpath.strip("/"))
        if f is None:
            raise ApiError(404, "FileNotFound", "The specified file does not exist.", [("FilePath", fpath)])
        size = 0 if f.is_dir else len(f.data)
        lm = whole_seconds(f.mtime)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Last-Modified", rfc1123(f.mtime)),
            ("ETag", etag_of(f.mtime)),
            ("ocp-creation-time", rfc1123(f.ctime)),
            ("ocp-batch-file-isdirectory", "true" if f.is_dir else "false"),
            ("ocp-batch-file-url", f"{files_url}/{quote(fpath.strip('/'), safe='/')}"),
            ("ocp-batch-file-mode", f.mode),
        ]
        ius = self.headers.get("If-Unmodified-Since")
        if ius:
            t = self._http_date("If-Unmodified-Since", ius)
            if lm > t:
                raise ApiError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.",
                               headers=dict(headers[1:3]))
        ims = self.headers.get("If-Modified-Since")
        if ims:
            t = self._http_date("If-Modified-Since", ims)
            if lm <= t:
                return 304, b"", headers[1:], size
        data = bytes(f.data)
        rng = self.headers.get("ocp-range")
        if rng and self.command == "GET" and not f.is_dir:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (m.group(1) == "" and m.group(2) == ""):
                raise ApiError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                               [("HeaderName", "ocp-range"), ("HeaderValue", rng)], violation=f"malformed ocp-range {rng!r}")
            if m.group(1) == "":
                start = max(0, size - int(m.group(2)))
                end = size - 1
            else:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
                if m.group(2) and end < start:
                    raise ApiError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                                   [("HeaderName", "ocp-range"), ("HeaderValue", rng)], violation=f"ocp-range {rng!r} ends before it starts")
            if start >= size:
                raise ApiError(416, "InvalidRange", "The range specified is invalid for the current size of the resource.",
                               [("HeaderName", "ocp-range"), ("HeaderValue", rng), ("ContentLength", str(size))])
            data = data[start : min(end, size - 1) + 1]
        return 200, data, headers, len(data)

    def _http_date(self, name, value):
        try:
            t = parsedate_to_datetime(value)
            if t.tzinfo is None:
                t = t.replace(tzinfo=UTC)
            return t
        except (TypeError, ValueError):
            raise ApiError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct format.",
                           [("HeaderName", name), ("HeaderValue", value)], violation=f"bad {name} {value!r}")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that drops a connection (a cancelled read, a closed pool) is no news.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)


# ------------------------------------------------------------------------------ fixtures


def demo_fixture():
    err = (
        "Traceback (most recent call last):\n"
        '  File "/mnt/batch/tasks/workitems/render/job-1/frame-0002/wd/render.py", line 88, in <module>\n'
        "    main()\n"
        "RuntimeError: scene file 'shot-02.blend' is missing textures: rock_albedo.png\n"
    )
    return {
        "pools": [{
            "id": "pool1",
            "vmSize": "standard_d2s_v3",
            "nodes": [
                {"id": "tvm-1001_1-20250601t080000z", "state": "running", "totalTasksRun": 2, "files": {
                    "startup/stdout.txt": "installing blender 4.4 ... done\n",
                    "startup/stderr.txt": "",
                    "startup/wd/setup.sh": {"text": "#!/bin/sh\napt-get install -y blender\n", "mode": "0o100755"},
                    "shared/assets/README": "shared scene assets\n",
                    "shared/assets/palette.json": '{"sky": "#88aaff"}\n',
                }},
                {"id": "tvm-1001_2-20250601t080000z", "state": "idle", "totalTasksRun": 1, "files": {
                    "startup/stdout.txt": "installing blender 4.4 ... done\n",
                    "startup/stderr.txt": "",
                    "shared/": {},
                }},
            ],
        }],
        "jobs": [{
            "id": "render",
            "state": "active",
            "poolId": "pool1",
            "tasks": [
                {"id": "frame-0001", "state": "completed", "exitCode": 0,
                 "node": "pool1/tvm-1001_1-20250601t080000z",
                 "commandLine": "/bin/sh -c 'python3 render.py --frame 1'",
                 "files": {
                     "stdout.txt": "rendering frame 1\n  samples 128/128\nwrote wd/frame-0001.png\n",
                     "stderr.txt": "",
                     "wd/render.py": "print('render')\n",
                     "wd/frame-0001.png": {"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8).decode()},
                 }},
                {"id": "frame-0002", "state": "completed", "exitCode": 1,
                 "node": "pool1/tvm-1001_2-20250601t080000z",
                 "commandLine": "/bin/sh -c 'python3 render.py --frame 2'",
                 "files": {
                     "stdout.txt": "rendering frame 2\n",
                     "stderr.txt": err,
                     "wd/render.py": "print('render')\n",
                 }},
                {"id": "frame-0003", "state": "running",
                 "node": "pool1/tvm-1001_1-20250601t080000z",
                 "commandLine": "/bin/sh -c 'python3 render.py --frame 3'",
                 "files": {"stdout.txt": "rendering frame 3\n", "stderr.txt": "", "wd/render.py": "print('render')\n"}},
            ],
        }],
    }


def bench_fixture(n):
    tasks = []
    for i in range(n):
        tid = f"task-{i:05d}"
        out = "".join(f"{tid} stdout line {k}: processed chunk {i * 7 + k}\n" for k in range(6))
        err = "".join(f"{tid} stderr line {k}: warning {i * 13 + k} in stage {k}\n" for k in range(6))
        tasks.append({"id": tid, "state": "completed", "exitCode": 0,
                      "files": {"stdout.txt": out, "stderr.txt": err}})
    return {
        "pools": [{"id": "benchpool", "nodes": [{"id": "tvm-2002_1-20250601t080000z", "state": "idle",
                                                   "files": {"startup/stdout.txt": "ready\n"}}]}],
        "jobs": [{"id": "bench", "state": "active", "poolId": "benchpool", "tasks": tasks}],
    }


class _Lazy:
    """An item of a list known by its id until it is on a page."""

    def __init__(self, ident, render):
        self.ident, self.render = ident, render

    def __getitem__(self, k):
        assert k == "id"
        return self.ident


def merge(a, b):
    return {"jobs": a.get("jobs", []) + b.get("jobs", []), "pools": a.get("pools", []) + b.get("pools", [])}


def grow_running_stdout(S):
    """--demo: the running task's stdout gains a line every second."""
    n = 0
    while True:
        time.sleep(1)
        n += 1
        with S.lock:
            task = S.model.jobs.get("render", {}).get("tasks", {}).get("frame-0003")
            if task is not None and task["state"] == "running":
                task["files"].append("stdout.txt", f"  samples {n * 8}/4096 ({iso(now())})\n".encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--account", required=True)
    ap.add_argument("--key", required=True, help="base64 account key")
    ap.add_argument("--token", action="append", help="a Bearer token to accept (may repeat)")
    ap.add_argument("--task-token", action="append", help="TOKEN:JOBID: a Bearer token for one job only")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--fixture")
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--bench-tasks", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    try:
        base64.b64decode(args.key, validate=True)
    except ValueError:
        sys.exit("--key must be base64")

    S = Standin(args)
    fx = {}
    if args.fixture:
        with open(args.fixture) as f:
            fx = merge(fx, json.load(f))
    if args.demo:
        fx = merge(fx, demo_fixture())
    if args.bench_tasks:
        fx = merge(fx, bench_fixture(args.bench_tasks))
    S.model = Model(fx)

    Handler.S = S
    Handler.verbose = args.verbose
    httpd = Server(("127.0.0.1", args.port), Handler)
    S.port = httpd.server_address[1]
    if args.demo:
        threading.Thread(target=grow_running_stdout, args=(S,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server_thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    server_thread.start()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{S.port}\n")
        os.replace(tmp, args.port_file)
    print(f"listening on {S.port}", flush=True)
    try:
        while server_thread.is_alive():
            server_thread.join(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
