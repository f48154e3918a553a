"""Server time per explorer page for a layer with 1280 maps (goal: <= 300 ms per page).

Builds a synthetic mined run in ``convlens mine``'s format (tests/mined_run.py): layers of 1280, 320
and 96 maps, top-9 each, 1000 classes with ``class_means.npz``, 1000 images; then times each page
through the app (Flask's test client: the server's own time, no network), the first request
(which indexes the run) apart. Prints one line per page and, last, a JSON line.

    PYTHONPATH=src python benchmarks/explorer.py [--repeat 5] [--maps 1280]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from convlens.explorer import create_app
from mined_run import make_mined_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--maps", type=int, default=1280)
    args = ap.parse_args()
    big = "features.17"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = make_mined_run(Path(tmp) / "run", {"features.3": 96, "features.10": 320, big: args.maps},
                             distinct=0, classes=[f"class {i}" for i in range(1000)], images=1000, figure=False)
        built = time.perf_counter() - t0
        size_mb = (run / "mine" / "result.json").stat().st_size / 2**20
        client = create_app(run).test_client()
        t0 = time.perf_counter()
        assert client.get("/").status_code == 200
        first = time.perf_counter() - t0
        pages = {
            "index": "/",
            "layer page 1": f"/layer/{big}",
            "layer by value, page 6": f"/layer/{big}?sort=value&page=6",
            "layer by classes": f"/layer/{big}?sort=classes",
            "layer by saturation, all maps": f"/layer/{big}?sort=saturation&per=600&page=2",
            "unit page (map 1000)": f"/layer/{big}/map/{min(1000, args.maps - 1)}?sort=value",
            "class page": "/class/417",
            "class page by selectivity": "/class/417?by=selectivity",
            "classes index": "/classes",
        }
        times = {}
        for name, url in pages.items():
            runs = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                r = client.get(url)
                runs.append(time.perf_counter() - t0)
                assert r.status_code == 200, (url, r.status_code)
            times[name] = round(1000 * statistics.median(runs), 1)
            print(f"{name:32s} {times[name]:8.1f} ms  ({len(r.data) // 1024} KB)")
    print(f"first request (indexes the run: {size_mb:.1f} MB result.json): {1000 * first:.0f} ms; "
          f"fixture {built:.1f} s")
    print(json.dumps({"benchmark": "explorer_pages", "maps": args.maps, "median_ms": times,
                      "max_page_ms": max(times.values()), "first_request_ms": round(1000 * first),
                      "result_json_mb": round(size_mb, 1), "goal_ms": 300}))


if __name__ == "__main__":
    main()
