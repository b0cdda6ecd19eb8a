#!/usr/bin/env python3
"""Honest load on a fleetmesh node's local API, for scripts/bench-flood.sh, soak.sh and chaos.sh.

  fleet_load.py rate API_PORT TOKEN_FILE SECONDS [CLIENTS]
      CLIENTS threads submit digits jobs (2 replicas) and wait for each verdict, for SECONDS; prints
      verified jobs per second.
  fleet_load.py batch API_PORT TOKEN_FILE JOBS CLIENTS KEY_PREFIX TIMELINE_FILE
      submits JOBS jobs, job i with idempotency key KEY_PREFIX-i, retrying each request (same key) until
      the node answers, so a node that is down or restarting loses nothing and runs nothing twice; then
      waits (up to 10 minutes after the last submission) until every job has a verdict. Meanwhile it
      samples the node's verdict count every 0.25 s into TIMELINE_FILE ("unix_time accepted failed").
      Prints one JSON line: jobs, distinct job ids, accepted, failed, wrong (accepted output not the
      expected class), lost (no verdict by the end), retried requests, wall seconds.

Only the standard library; loopback only.
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

# Digit 0 of the held-out set (the embedded digits model classifies it as 0).
PIXELS = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8,
          0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0,
          0, 0]
EXPECTED_CLASS = 0


def call(port, method, path, token=None, body=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def permanent(e):
    """A refusal that asking again cannot change (bad request, unknown model): 4xx but for an
    unauthorised (token being rewritten), timed out or rate-limited request."""
    return isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code not in (401, 408, 429)


def read_token(path):
    with open(path) as f:
        return f.read().strip()


def rate(port, token_file, seconds, clients=8):
    token = read_token(token_file)
    done = [0]
    lock = threading.Lock()
    end = time.time() + seconds

    def client():
        while time.time() < end:
            try:
                view = call(port, "POST", "/v1/jobs", token,
                            {"model": "digits", "input": PIXELS, "replicas": 2, "wait": True})
            except Exception as e:
                if permanent(e):
                    # From a worker thread: end the whole script, not only this thread.
                    print(f"the node refused the load for good: HTTP {e.code} {e.read().decode(errors='replace')}",
                          file=sys.stderr, flush=True)
                    os._exit(1)
                time.sleep(0.05)
                continue
            if view.get("state") == "accepted":
                with lock:
                    done[0] += 1

    start = time.time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{done[0] / (time.time() - start):.1f}")


def argmax(values):
    return max(range(len(values)), key=lambda i: values[i])


def batch(port, token_file, jobs, clients, prefix, timeline_file):
    ids = [None] * jobs
    retried = [0]
    refused = []
    lock = threading.Lock()
    next_job = [0]
    stop_sampling = threading.Event()
    start = time.time()

    def sampler():
        with open(timeline_file, "w") as out:
            while not stop_sampling.is_set():
                try:
                    s = call(port, "GET", "/v1/status", timeout=2)["jobs"]
                    out.write(f"{time.time():.3f} {s['accepted']} {s['failed']}\n")
                    out.flush()
                except Exception:
                    out.write(f"{time.time():.3f} down down\n")
                    out.flush()
                time.sleep(0.25)

    def submitter():
        while True:
            with lock:
                i = next_job[0]
                if i >= jobs:
                    return
                next_job[0] += 1
            body = {"model": "digits", "input": PIXELS, "replicas": 2, "key": f"{prefix}-{i}"}
            while True:
                try:
                    # The token file is read again: a node keeps it across restarts.
                    view = call(port, "POST", "/v1/jobs", read_token(token_file), body, timeout=30)
                    ids[i] = view["job"]
                    break
                except Exception as e:
                    if permanent(e):
                        with lock:
                            refused.append(i)
                        print(f"job {i} refused for good: HTTP {e.code}", file=sys.stderr)
                        break
                    with lock:
                        retried[0] += 1
                    time.sleep(0.2)

    sampling = threading.Thread(target=sampler)
    sampling.start()
    threads = [threading.Thread(target=submitter) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every job's verdict.
    deadline = time.time() + 600
    verdicts = {}
    while len(verdicts) < jobs - len(refused) and time.time() < deadline:
        for i, job in enumerate(ids):
            if i in verdicts or job is None:
                continue
            try:
                view = call(port, "GET", f"/v1/jobs/{job}", timeout=5)
            except Exception:
                time.sleep(0.2)
                break
            if view["state"] != "pending":
                verdicts[i] = view
        else:
            if len(verdicts) < jobs - len(refused):
                time.sleep(0.5)
    stop_sampling.set()
    sampling.join()
    accepted = [v for v in verdicts.values() if v["state"] == "accepted"]
    wrong = sum(1 for v in accepted if not v.get("values") or argmax(v["values"]) != EXPECTED_CLASS)
    print(json.dumps({
        "jobs": jobs,
        "distinct_ids": len(set(i for i in ids if i is not None)),
        "refused": len(refused),
        "accepted": len(accepted),
        "failed": sum(1 for v in verdicts.values() if v["state"] == "failed"),
        "wrong": wrong,
        "lost": jobs - len(verdicts),
        "retried_requests": retried[0],
        "wall_s": round(time.time() - start, 1),
    }))


def main():
    args = sys.argv[1:]
    if len(args) >= 4 and args[0] == "rate":
        rate(int(args[1]), args[2], float(args[3]), int(args[4]) if len(args) > 4 else 8)
    elif len(args) == 7 and args[0] == "batch":
        batch(int(args[1]), args[2], int(args[3]), int(args[4]), args[5], args[6])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
