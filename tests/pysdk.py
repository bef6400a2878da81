"""Blob storage through Microsoft's Python SDK (azure-storage-blob): the client tests/corpus.rs
uses to write blobs the way other tools do and to check what batchfs wrote, independently of
batchfs's own blob client.

    python tests/pysdk.py CONNECTION_STRING COMMAND ARGS...

Commands (names are passed as they are; any character but NUL works in an argument):

    mkcontainer CONTAINER
    put CONTAINER NAME [--meta K=V]... [--data-file F | --data TEXT] [--content-type T]
        [--content-encoding E] [--cache-control C] [--block-size N] [--page] [--md5]
                            --md5: the Content-MD5 property set to the data's MD5
                            --block-size: uploaded in blocks of N bytes (Put Block List);
                            --page: a page blob (the data's length a multiple of 512)
    md5 CONTAINER NAME      the MD5 of the blob's bytes, in base64 as Azure shows it
    append CONTAINER NAME TEXT   appends TEXT to an append blob, made if missing
    put-json CONTAINER      blobs from stdin: [{"name", "data" | "data_b64", "meta",
                            "block_size" (optional: upload in blocks of this size)}, ...]
    get CONTAINER NAME      the blob's bytes on stdout
    head CONTAINER NAME     JSON: name, size, etag, last_modified, metadata, content_type,
                            content_encoding, cache_control, content_md5 (base64),
                            blob_tier, blob_type (null if absent)
    list CONTAINER          JSON: every blob name, flat
    dump CONTAINER          JSON: every blob with its size, metadata and bytes (data_b64)

A blob that does not exist makes `get` exit with status 3.
"""

import argparse
import base64
import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, BlobType, ContentSettings


def props_json(p):
    return {
        "name": p.name,
        "size": p.size,
        "etag": p.etag,
        "last_modified": p.last_modified.isoformat(),
        # A listing gives an empty value as None.
        "metadata": {k: v or "" for k, v in (p.metadata or {}).items()},
        "content_type": p.content_settings.content_type,
        "content_encoding": p.content_settings.content_encoding,
        "cache_control": p.content_settings.cache_control,
        "content_md5": (
            base64.b64encode(p.content_settings.content_md5).decode()
            if p.content_settings.content_md5
            else None
        ),
        "blob_tier": getattr(p.blob_tier, "value", p.blob_tier),
        "blob_type": getattr(p.blob_type, "value", p.blob_type),
    }


def meta_arg(pairs):
    out = {}
    for kv in pairs or []:
        k, sep, v = kv.partition("=")
        if not sep:
            sys.exit(f"--meta wants K=V, got {kv!r}")
        out[k] = v
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("conn")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("mkcontainer")
    p.add_argument("container")
    p = sub.add_parser("put")
    p.add_argument("container")
    p.add_argument("name")
    p.add_argument("--meta", action="append")
    p.add_argument("--data-file")
    p.add_argument("--data")
    p.add_argument("--content-type")
    p.add_argument("--content-encoding")
    p.add_argument("--cache-control")
    p.add_argument("--block-size", type=int)
    p.add_argument("--page", action="store_true")
    p.add_argument("--md5", action="store_true")
    p = sub.add_parser("append")
    p.add_argument("container")
    p.add_argument("name")
    p.add_argument("text")
    p = sub.add_parser("put-json")
    p.add_argument("container")
    for cmd in ("get", "head", "md5"):
        p = sub.add_parser(cmd)
        p.add_argument("container")
        p.add_argument("name")
    for cmd in ("list", "dump"):
        p = sub.add_parser(cmd)
        p.add_argument("container")
    a = ap.parse_args()

    svc = BlobServiceClient.from_connection_string(a.conn)
    cc = svc.get_container_client(a.container)
    out = sys.stdout
    if a.cmd == "mkcontainer":
        cc.create_container()
    elif a.cmd == "put":
        if a.data_file is not None:
            with open(a.data_file, "rb") as f:
                data = f.read()
        else:
            data = (a.data or "").encode()
        settings = ContentSettings(
            content_type=a.content_type,
            content_encoding=a.content_encoding,
            cache_control=a.cache_control,
            content_md5=bytearray(hashlib.md5(data).digest()) if a.md5 else None,
        )
        c = cc
        if a.block_size:
            c = BlobServiceClient.from_connection_string(
                a.conn, max_single_put_size=a.block_size, max_block_size=a.block_size
            ).get_container_client(a.container)
        c.upload_blob(
            a.name,
            data,
            overwrite=True,
            metadata=meta_arg(a.meta),
            content_settings=settings,
            blob_type=BlobType.PAGEBLOB if a.page else BlobType.BLOCKBLOB,
        )
    elif a.cmd == "append":
        # An append blob, made if missing, as Batch's tracked task output writes them.
        bc = cc.get_blob_client(a.name)
        if not bc.exists():
            bc.create_append_blob()
        bc.append_block(a.text.encode())
    elif a.cmd == "put-json":

        def put(b):
            if "data_b64" in b:
                data = base64.b64decode(b["data_b64"])
            else:
                data = b.get("data", "").encode()
            c = cc
            if b.get("block_size"):
                # Staged in blocks of this size (Put Block, Put Block List), as AzCopy does.
                size = b["block_size"]
                c = BlobServiceClient.from_connection_string(
                    a.conn, max_single_put_size=size, max_block_size=size
                ).get_container_client(a.container)
            c.upload_blob(b["name"], data, overwrite=True, metadata=b.get("meta") or {})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, json.load(sys.stdin)))
    elif a.cmd == "get":
        try:
            data = cc.download_blob(a.name).readall()
        except ResourceNotFoundError:
            sys.exit(3)
        sys.stdout.buffer.write(data)
    elif a.cmd == "md5":
        data = cc.download_blob(a.name).readall()
        out.write(base64.b64encode(hashlib.md5(data).digest()).decode())
    elif a.cmd == "head":
        try:
            json.dump(props_json(cc.get_blob_client(a.name).get_blob_properties()), out)
        except ResourceNotFoundError:
            json.dump(None, out)
    elif a.cmd == "list":
        json.dump([b.name for b in cc.list_blobs()], out)
    elif a.cmd == "dump":
        blobs = []
        for b in cc.list_blobs(include=["metadata"]):
            j = props_json(b)
            j["data_b64"] = base64.b64encode(cc.download_blob(b.name).readall()).decode()
            blobs.append(j)
        json.dump(blobs, out)


if __name__ == "__main__":
    main()
