"""The reference for the Batch part of scripts/bench.sh: the same work as `ls -l` of a job's
tasks and `cat` of their stderr.txt, done with Microsoft's `azure-batch` Python SDK as a
script would do it (list, then download one after another).

    python benches/batch_sdk.py ENDPOINT ACCOUNT KEY JOB N

Prints one JSON line: {"list_s", "tasks", "download_s", "files", "bytes"}.
"""

import json
import sys
import time

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential


def main():
    endpoint, account, key, job, n = sys.argv[1:6]
    client = BatchClient(endpoint=endpoint, credential=AzureNamedKeyCredential(account, key))
    t0 = time.monotonic()
    # What `ls -l` shows of a task directory: its id and a time.
    tasks = [t.id for t in client.list_tasks(job, select=["id", "lastModified", "creationTime"])]
    t1 = time.monotonic()
    total = 0
    for tid in tasks[: int(n)]:
        total += len(b"".join(client.download_task_file(job, tid, "stderr.txt")))
    t2 = time.monotonic()
    print(json.dumps({"list_s": round(t1 - t0, 3), "tasks": len(tasks), "download_s": round(t2 - t1, 3),
                      "files": min(int(n), len(tasks)), "bytes": total}))


if __name__ == "__main__":
    main()
