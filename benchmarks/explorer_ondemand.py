"""First and second view of a unit page whose projections ``mine`` did not make, over HTTP.

Usage: start ``convlens serve RUN --port P`` on a run mined with ``--project none``, then
``python benchmarks/explorer_ondemand.py http://127.0.0.1:P features.16 73``. One view = the page,
its projections JSON (computed on the first view, read from the run after) and every image the
page then shows, fetched one after the other as a browser would. Prints one JSON line.
"""
from __future__ import annotations

import json
import re
import sys
import time
import urllib.request


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def view(base: str, layer: str, m: int) -> dict[str, float | int | bool]:
    t = time.perf_counter()
    page = get(f"{base}/layer/{layer}/map/{m}").decode()
    srcs = re.findall(r'<img[^>]+src="(/file/[^"]+)"', page)
    computed = False
    if 'id="projecting"' in page:
        d = json.loads(get(f"{base}/layer/{layer}/map/{m}/projections"))
        computed = bool(d.get("computed"))
        srcs += [u for e in d["entries"] for u in (e["projection"], e["patch"]) if u]
    n = sum(len(get(base + s)) > 0 for s in srcs)
    return {"seconds": round(time.perf_counter() - t, 3), "images": n, "computed": computed}


def main() -> None:
    base, layer, m = sys.argv[1].rstrip("/"), sys.argv[2], int(sys.argv[3])
    first, second = view(base, layer, m), view(base, layer, m)
    print(json.dumps({"layer": layer, "map": m, "first": first, "second": second}))


if __name__ == "__main__":
    main()
