"""``convlens serve`` under hostile requests, as a real process behind waitress.

Traversal, bad multipart bodies, image bombs (413 before decoding), a body shorter than its
Content-Length (dropped after ``--timeout``), a foreign ``Host`` header (DNS rebinding: 400), and 50
parallel uploads (every answer 200 after the redirect, or a clear 4xx/503), with the server's
resident memory sampled from /proc: peak and after the burst against idle. The figures go to
``test-artifacts/server_hostile.json``.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_image_folder

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT = 2.0  # the server's --timeout: short, so that the slow-body test is fast

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS")]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for pid {pid}")


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size, 1 if mode == "1" else (120, 60, 200))
    if mode == "RGB":
        img.paste((10, 220, 40), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    img.save(buf, format="PNG")
    return buf.getvalue()


def multipart(data: bytes, name: str = "x.png", rule: str = "auto") -> tuple[bytes, str]:
    b = "convlens-test-boundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"rule\"\r\n\r\n{rule}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


class Server:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body, headers or {})  # sent verbatim: no client-side normalization
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def upload(self, data: bytes) -> tuple[int, bytes]:
        """POST an image; follow the redirect to the result, waiting for it. Returns the final status."""
        body, ctype = multipart(data)
        status, headers, text = self.request("POST", "/analyze", body, {"Content-Type": ctype})
        if status != 303:
            return status, text
        where = headers["Location"]
        for _ in range(600):
            _, _, raw = self.request("GET", where + "/status")
            if json.loads(raw)["state"] in ("done", "failed"):
                break
            time.sleep(0.2)
        status, _, text = self.request("GET", where)
        return status, text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from convlens.images.data import dataset_preprocessing
    from convlens.nets.checkpoint import save_checkpoint
    from convlens.nets.convnet import build_model

    base = tmp_path_factory.mktemp("hostile")
    run = base / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    images = make_image_folder(base / "images")
    ckpt = save_checkpoint(base / "tiny.pt", build_model("zfnet-tiny", num_classes=2, init="kaiming", seed=0),
                           preprocessing=dataset_preprocessing(str(images), crop=32), class_names=["a", "b"], epoch=1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "convlens", "serve", str(run), "--port", "0", "--checkpoint", str(ckpt),
         "--timeout", str(TIMEOUT), "--queue", "3", "--threads", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    port = None
    t0 = time.time()
    while port is None and time.time() - t0 < 120:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line)
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        port = int(found.group(1)) if found else None
    if port is None:
        proc.kill()
        raise AssertionError("the server did not start: " + "".join(lines))
    threading.Thread(target=lambda: [lines.append(s) for s in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    yield Server(proc, port)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.parametrize("path", ["/file/../../etc/passwd", "/file/%2e%2e/%2e%2e/etc/passwd",
                                  "/file/..%2f..%2fetc%2fpasswd", "/file/config.json/../../../etc/passwd",
                                  "/figure/../../etc/passwd", "/result/../../etc"])
def test_traversal(server: Server, path: str) -> None:
    status, _, body = server.request("GET", path)
    assert status in (400, 404) and b"root:" not in body


@pytest.mark.parametrize("body,ctype", [
    (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nGIF89a??\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),  # not an image
    (b"garbage without any boundary", "multipart/form-data; boundary=b"),
    (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n\x89PNG\r\n",
     "multipart/form-data; boundary=b"),  # never closed
    (b"--b\r\n\r\n\r\n--b--\r\n", "multipart/form-data"),  # no boundary parameter
    (b"image=abc", "application/x-www-form-urlencoded"),
])
def test_bad_multipart_gets_clean_400(server: Server, body: bytes, ctype: str) -> None:
    status, _, text = server.request("POST", "/analyze", body, {"Content-Type": ctype})
    assert status == 400, (status, text[-300:])
    assert b"_io." not in text and b" at 0x" not in text and b"Traceback" not in text
    assert server.request("GET", "/")[0] == 200


def test_image_bomb_is_refused_before_decoding(server: Server) -> None:
    bomb = png((6300, 6300), "1")
    assert len(bomb) < 100_000
    before = rss_mb(server.proc.pid)
    status, text = server.upload(bomb)
    assert status == 413 and b"6300x6300" in text and b"_io." not in text
    assert rss_mb(server.proc.pid) < before + 100  # never decoded (40 MP would be 119 MB as RGB)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:  # a 10 MB body announced
        s.sendall(b"POST /analyze HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 10485760\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 413")  # refused from the headers, before any byte is read


def test_foreign_host_is_refused(server: Server) -> None:
    status, _, text = server.request("GET", "/", headers={"Host": "rebind.attacker.example"})
    assert status == 400 and b"--allow-host" in text
    assert server.request("GET", "/", headers={"Host": f"localhost:{server.port}"})[0] == 200
    assert server.request("GET", "/", headers={"Host": f"127.0.0.1:{server.port}"})[0] == 200


def test_slow_bodies_are_dropped_and_hold_no_worker(server: Server) -> None:
    socks = []
    for _ in range(30):  # more stalled requests than worker threads
        s = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT * 10)
        s.sendall(b"POST /analyze HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 100000\r\n\r\n--b\r\n")
        socks.append(s)
    t0 = time.time()
    assert server.request("GET", "/", timeout=TIMEOUT * 3)[0] == 200  # the workers are free meanwhile
    answered = time.time() - t0
    closed = []
    for s in socks:
        try:
            data = s.recv(1024)
            while data:
                data = s.recv(1024)
        except OSError:
            pass
        closed.append(time.time() - t0)
        s.close()
    assert max(closed) < TIMEOUT * 4 + 5, closed  # dropped after the idle timeout, not held forever
    record({"slow_body_dropped_after_s": round(max(closed), 2), "page_while_30_stalled_s": round(answered, 3)})


def test_parallel_uploads_bounded_memory(server: Server) -> None:
    pid = server.proc.pid
    status, _ = server.upload(png((64, 48)))  # warm up: the model is loaded on the first upload
    assert status == 200
    time.sleep(0.5)
    idle = rss_mb(pid)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    bomb, fine = png((6300, 6300), "1"), png((1600, 1200))
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(server.upload, [bomb if i % 2 else fine for i in range(50)]))
    stop.set()
    sampler.join()
    time.sleep(1.0)
    after = rss_mb(pid)
    peak = max(max(samples), rss_mb(pid, "VmHWM"))
    codes = sorted(s for s, _ in answers)
    texts = {s: t for s, t in answers}
    assert set(codes) <= {200, 413, 503}, codes
    assert codes.count(413) == 25 and codes.count(200) >= 3
    if 503 in texts:
        assert b"busy" in texts[503]
    record({"uploads": 50, "answers": {str(c): codes.count(c) for c in sorted(set(codes))},
            "idle_rss_mb": round(idle, 1), "peak_rss_mb": round(peak, 1), "after_rss_mb": round(after, 1),
            "after_over_idle": round(after / idle, 3)})
    assert peak <= 2048, peak
    assert after <= 1.2 * idle, (idle, after)


def record(values: dict) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "server_hostile.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **values}, indent=1))
    print(json.dumps(values))
