"""First and second view of a unit page whose projections ``mine`` did not make, over HTTP.

Usage: start ``convlens serve RUN --port P`` on a run mined with ``--project none``, then
``python benchmarks/explorer_ondemand.py http://127.0.0.1:P features.16 73``. One view = the page,
its projections JSON (computed on the first view, read from the run after) and every image the
page then shows, fetched one after the other as a browser would. Prints one JSON line.

Without a server: ``python benchmarks/explorer_ondemand.py RUN features.16 73,5,6`` serves the run
in this process (Flask test client, the model opened ahead as ``serve`` does) and views each map
twice; a map's projections made by an earlier call are deleted first (``units/<layer>/<m>.*``),
so every first view computes. Also prints the torch threads and the load average; ``cpu_seconds``
is this process's CPU time per view (the server's in this mode, only the client's over HTTP).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def _http(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


get: Callable[[str], bytes] = _http


def view(base: str, layer: str, m: int) -> dict[str, float | int | bool]:
    t, cpu = time.perf_counter(), time.process_time()
    page = get(f"{base}/layer/{layer}/map/{m}").decode()
    srcs = re.findall(r'<img[^>]+src="(/file/[^"]+)"', page)
    computed = False
    if 'id="projecting"' in page:
        d = json.loads(get(f"{base}/layer/{layer}/map/{m}/projections"))
        computed = bool(d.get("computed"))
        srcs += [u for e in d["entries"] for u in (e["projection"], e["patch"]) if u]
    n = sum(len(get(base + s)) > 0 for s in srcs)
    return {"seconds": round(time.perf_counter() - t, 3), "cpu_seconds": round(time.process_time() - cpu, 3),
            "images": n, "computed": computed}


def in_process(run: Path, layer: str, maps: list[int]) -> None:
    import torch

    from convlens.explorer.app import create_app

    global get
    app = create_app(run)
    client = app.test_client()

    def local(url: str) -> bytes:
        r = client.get(url)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}")
        return r.data

    get = local
    t = time.perf_counter()
    app.extensions["convlens"].projector.source()  # what serve's warm-up does before the first page
    print(json.dumps({"open_seconds": round(time.perf_counter() - t, 2), "threads": torch.get_num_threads()}))
    for m in maps:
        mined = next(p for p in run.rglob("topk.pt")).parent
        for f in (mined / "units" / layer).glob(f"{m}[._]*"):
            f.unlink()
        load = os.getloadavg()[0]
        first, second = view("", layer, m), view("", layer, m)
        print(json.dumps({"layer": layer, "map": m, "load": round(load, 2), "first": first, "second": second}),
              flush=True)


def main() -> None:
    if not sys.argv[1].startswith("http"):
        in_process(Path(sys.argv[1]), sys.argv[2], [int(v) for v in sys.argv[3].split(",")])
        return
    base, layer, m = sys.argv[1].rstrip("/"), sys.argv[2], int(sys.argv[3])
    first, second = view(base, layer, m), view(base, layer, m)
    print(json.dumps({"layer": layer, "map": m, "first": first, "second": second}))


if __name__ == "__main__":
    main()
