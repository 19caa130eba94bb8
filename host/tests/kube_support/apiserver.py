#!/usr/bin/env python3
"""A test double of the Kubernetes API for Nodes, speaking its real shapes.

    apiserver.py --listen ADDR:PORT --cert F --key F --token T

Serves over HTTPS, for a bearer token T (401 Status otherwise):
  GET /api/v1/nodes?limit=N[&continue=C]     NodeList, paginated, at one resourceVersion
  GET /api/v1/nodes?watch=true&resourceVersion=RV[&allowWatchBookmarks=true][&timeoutSeconds=S]
      chunked stream of {"type", "object"} lines: the events after RV, then new ones,
      a BOOKMARK now and then; ERROR 410 (Expired) when RV is older than the last
      compaction
  GET /api/v1/nodes/NAME                     the Node, or 404 Status (NotFound)

and, for the test, under /_control/ (same token):
  POST   /_control/nodes/NAME    create (ADDED)
  DELETE /_control/nodes/NAME    delete (DELETED)
  POST   /_control/ghost/NAME    DELETED in lists and watches, but GET by name still finds it
  POST   /_control/fail-lists/N  the next N list requests answer 500
  POST   /_control/compact       every version so far becomes too old: watches get 410
  GET    /_control/log           every API request so far: [{"method", "path"}]
Prints "listening" on stdout once it serves.
"""

import argparse
import base64
import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Condition()
STATE = {
    "rv": 100,
    "nodes": {},  # name -> node object
    "ghosts": {},  # name -> node object (GET by name only)
    "events": [],  # (rv, type, node object)
    "compacted": 0,
    "fail_lists": 0,
    "log": [],
}


def node_object(name, rv):
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(rv),
            "creationTimestamp": "2026-12-06T00:00:00Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def status(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def record(kind, obj):
    """Under LOCK: a change at a new resourceVersion."""
    STATE["rv"] += 1
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["resourceVersion"] = str(STATE["rv"])
    STATE["events"].append((STATE["rv"], kind, obj))
    LOCK.notify_all()
    return obj


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    token = ""

    def log_message(self, *args):
        pass

    def send_json(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        if self.headers.get("Authorization") != "Bearer " + self.token:
            self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return False
        return True

    def do_GET(self):
        if not self.authorized():
            return
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/_control/log":
            with LOCK:
                return self.send_json(200, STATE["log"])
        with LOCK:
            STATE["log"].append({"method": "GET", "path": self.path})
        if url.path == "/api/v1/nodes":
            if q.get("watch") in ("true", "1"):
                return self.watch(q)
            return self.list(q)
        if url.path.startswith("/api/v1/nodes/"):
            name = url.path[len("/api/v1/nodes/"):]
            with LOCK:
                obj = STATE["nodes"].get(name) or STATE["ghosts"].get(name)
            if obj is None:
                return self.send_json(404, status(404, "NotFound", f'nodes "{name}" not found'))
            return self.send_json(200, obj)
        self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))

    def list(self, q):
        with LOCK:
            if STATE["fail_lists"] > 0:
                STATE["fail_lists"] -= 1
                return self.send_json(500, status(500, "InternalError", "etcdserver: request timed out"))
            limit = int(q.get("limit", "0") or 0)
            if "continue" in q:
                tok = json.loads(base64.b64decode(q["continue"]))
                rv, start = tok["rv"], tok["start"]
                if rv < STATE["compacted"]:
                    return self.send_json(410, status(410, "Expired", "The provided continue parameter is too old"))
                # The list is at the first page's version: replay to it.
                names = sorted(self.names_at(rv))
            else:
                rv, start = STATE["rv"], 0
                names = sorted(STATE["nodes"])
            page = names[start:start + limit] if limit else names[start:]
            items = [self.object_at(n, rv) for n in page]
            meta = {"resourceVersion": str(rv)}
            if limit and start + limit < len(names):
                meta["continue"] = base64.b64encode(
                    json.dumps({"rv": rv, "start": start + limit}).encode()).decode()
                meta["remainingItemCount"] = len(names) - start - limit
        self.send_json(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items})

    def names_at(self, rv):
        names = set(STATE["nodes"])
        for erv, kind, obj in reversed(STATE["events"]):
            if erv <= rv:
                break
            n = obj["metadata"]["name"]
            if kind == "ADDED":
                names.discard(n)
            elif kind == "DELETED":
                names.add(n)
        return names

    def object_at(self, name, rv):
        obj = STATE["nodes"].get(name)
        if obj is None:
            obj = node_object(name, rv)
        return obj

    def chunk(self, doc):
        data = json.dumps(doc).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, q):
        rv = int(q.get("resourceVersion", "0") or 0)
        timeout = min(int(q.get("timeoutSeconds", "300") or 300), 300)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        until = time.monotonic() + timeout
        last_bookmark = time.monotonic()
        try:
            while True:
                with LOCK:
                    if rv < STATE["compacted"]:
                        self.chunk({"type": "ERROR", "object": status(
                            410, "Expired", f"too old resource version: {rv} ({STATE['compacted']})")})
                        break
                    pending = [(e, k, o) for (e, k, o) in STATE["events"] if e > rv]
                    if not pending:
                        LOCK.wait(timeout=0.5)
                        pending = [(e, k, o) for (e, k, o) in STATE["events"] if e > rv]
                for e, kind, obj in pending:
                    self.chunk({"type": kind, "object": obj})
                    rv = e
                now = time.monotonic()
                if bookmarks and now - last_bookmark > 2:
                    with LOCK:
                        cur = STATE["rv"]
                    if cur == rv:
                        self.chunk({"type": "BOOKMARK", "object": {
                            "kind": "Node", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(rv)}}})
                    last_bookmark = now
                if now >= until:
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        self.close_connection = True

    def control(self, method):
        if not self.authorized():
            return
        parts = urlsplit(self.path).path.split("/")[2:]
        with LOCK:
            what = parts[0] if parts else ""
            arg = parts[1] if len(parts) > 1 else ""
            if what == "nodes" and method == "POST":
                STATE["ghosts"].pop(arg, None)
                STATE["nodes"][arg] = record("ADDED", node_object(arg, 0))
            elif what == "nodes" and method == "DELETE":
                STATE["ghosts"].pop(arg, None)
                obj = STATE["nodes"].pop(arg, None)
                if obj is not None:
                    record("DELETED", obj)
            elif what == "ghost":
                obj = STATE["nodes"].pop(arg, None)
                if obj is not None:
                    STATE["ghosts"][arg] = obj
                    record("DELETED", obj)
            elif what == "fail-lists":
                STATE["fail_lists"] = int(arg)
            elif what == "compact":
                # Every version seen so far is now too old: open watches end
                # with 410, as when the API's window moves past a watcher.
                STATE["rv"] += 1
                STATE["compacted"] = STATE["rv"]
                LOCK.notify_all()
            else:
                return self.send_json(404, status(404, "NotFound", self.path))
        self.send_json(200, {"ok": True})

    def do_POST(self):
        self.control("POST")

    def do_DELETE(self):
        self.control("DELETE")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--node", action="append", default=[])
    a = ap.parse_args()
    Handler.token = a.token
    with LOCK:
        for n in a.node:
            STATE["nodes"][n] = record("ADDED", node_object(n, 0))
    host, port = a.listen.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("listening", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
