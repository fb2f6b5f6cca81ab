"""Replay a pyserving request log (docs/operations.md, "Request logs") against a server.

Each line of the log is one sampled request; this sends its inputs again as a KServe V2 REST
request to the same model (and version, unless --latest) and, with --check, compares the answer
with the logged outputs. Lines whose status is not OK, or whose data was left out of the log
("truncated"), are skipped. Only the standard library is needed.

    python examples/replay_request_log.py /var/log/pyserving/mlp.jsonl --url http://localhost:8501
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.error
import urllib.request


def replay(line: dict, url: str, latest: bool, timeout_s: float) -> dict:
    """POST the line's inputs to its model; the V2 answer as a dict."""
    path = f"/v2/models/{line['model']}"
    if not latest and line.get("version") is not None:
        path += f"/versions/{line['version']}"
    body = {
        "inputs": line["inputs"],
        "outputs": [{"name": tensor["name"]} for tensor in line["outputs"]],
    }
    request = urllib.request.Request(
        url.rstrip("/") + path + "/infer",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.load(response)


def same(logged: list, answered: list, tolerance: float) -> bool:
    """Each logged output equals the answered one (numbers within `tolerance`, relative)."""
    got = {tensor["name"]: tensor for tensor in answered}
    for tensor in logged:
        other = got.get(tensor["name"])
        if other is None or other["shape"] != tensor["shape"]:
            return False
        for a, b in zip(tensor["data"], other["data"], strict=True):
            if isinstance(a, int | float) and isinstance(b, int | float):
                if not math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance):
                    return False
            elif a != b:
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="a request log file (.jsonl)")
    parser.add_argument("--url", default="http://localhost:8501", help="the server's REST URL")
    parser.add_argument("--latest", action="store_true", help="send to the latest version")
    parser.add_argument("--check", action="store_true", help="compare answers with the log")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    sent = skipped = failed = differing = 0
    # The lines the log holds now: a server logging the replayed requests appends to the same
    # file, and reading on while it grows would never reach the end.
    with open(args.log, "rb") as file:
        written = file.read(os.fstat(file.fileno()).st_size)
    complete = written[: written.rfind(b"\n") + 1]  # not a line still being written
    for number, text in enumerate(complete.decode("utf-8").splitlines(), 1):
        line = json.loads(text)
        tensors = line["inputs"] + line["outputs"]
        if line["status"] != "OK" or any(t.get("truncated") for t in tensors):
            skipped += 1
            continue
        try:
            answer = replay(line, args.url, args.latest, args.timeout)
        except urllib.error.HTTPError as exc:
            failed += 1
            print(f"line {number}: HTTP {exc.code}: {exc.read().decode()[:200]}")
            continue
        sent += 1
        if args.check and not same(line["outputs"], answer["outputs"], args.tolerance):
            differing += 1
            print(f"line {number}: the answer differs from the logged outputs")
    print(f"sent {sent}, skipped {skipped}, failed {failed}, differing {differing}")
    return 1 if failed or differing else 0


if __name__ == "__main__":
    sys.exit(main())
