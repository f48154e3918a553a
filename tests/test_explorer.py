"""The local web explorer (convlens.explorer): browsing, uploads, and what a request may reach.

The run directory is a real one, built once per session and shared with test_browser/test_demo:
``convlens demo --quick`` on Fashion-MNIST where Debian's copy is installed, else the demo's tiny
plan (zfnet-tiny on a synthetic ImageFolder). Every page reads what the real commands wrote.
"""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from convlens.cli import main
from convlens.data import FASHION_MNIST_DIR
from convlens.demo import PLANS, make_synthetic_dataset, run_demo
from convlens.explorer import MAX_UPLOAD_BYTES, create_app, decode_upload

# The shared demo run takes ~1 min of CPU; on a heavily shared machine its wall time can pass the
# suite's 300 s per-test default, which the first test using it pays for.
pytestmark = pytest.mark.timeout(900)


def shared_run_dir(factory: pytest.TempPathFactory) -> Path:
    """Build the session's demo run once (the test files share it); ``steps.json`` records how it went."""
    base = factory.getbasetemp() / "convlens-demo-run"
    run = base / "run"
    if not (base / "steps.json").exists():
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = io.StringIO()
        if FASHION_MNIST_DIR.exists():
            with contextlib.redirect_stdout(out):
                code = main(["demo", "--quick", "--out", str(run)])
            how = "demo --quick"
        else:
            data = make_synthetic_dataset(base / "data", classes=3, per_class=12, size=36)
            code = 0 if run_demo(run, plan=PLANS["tiny"], dataset=str(data), echo=print).report else 1
            how = "tiny plan"
        info = {"how": how, "code": code, "seconds": round(time.perf_counter() - t0, 1),
                "cpu_seconds": round(time.process_time() - cpu0, 1), "stdout": out.getvalue()}
        (base / "steps.json").write_text(json.dumps(info, indent=1))
    return run


def run_info(run: Path) -> dict:
    return json.loads((run.parent / "steps.json").read_text())


def png_bytes(size: tuple[int, int] = (40, 48), color: tuple[int, int, int] = (180, 40, 90)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    img.paste((20, 200, 60), (8, 8, 24, 30))
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def client(tiny_run: Path):
    return create_app(tiny_run).test_client()


def test_demo_run_every_step_ok(tiny_run: Path) -> None:
    info = run_info(tiny_run)
    steps = json.loads((tiny_run / "demo" / "result.json").read_text())["tables"][0]["rows"]
    assert info["code"] == 0 and not [s for s in steps if s[1] == "failed"], steps
    assert (tiny_run / "report" / "index.html").is_file()


def test_browse_layer_map_topk(client, tiny_run: Path) -> None:
    home = client.get("/")
    assert home.status_code == 200 and b'href="/layer/conv1"' in home.data
    page = client.get("/layer/conv5")
    assert page.status_code == 200
    maps = re.findall(r'href="(/layer/conv5/map/[^"]+)"', page.get_data(as_text=True))
    mined = json.loads((tiny_run / "mine" / "result.json").read_text())["data"]["layers"]["conv5"]["maps"]
    assert len(maps) == len(mined) >= 1
    detail = client.get(maps[0]).get_data(as_text=True)
    projections = re.findall(r'<img class="proj" src="([^"]+)"', detail)
    patches = re.findall(r'<img class="patch" src="([^"]+)"', detail)
    assert len(projections) == len(patches) == 9
    for src in projections[:2] + patches[:2]:
        r = client.get(src)
        assert r.status_code == 200 and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/layer/conv9").status_code == 404
    assert client.get("/layer/conv5/map/99999").status_code == 404


def test_evolution_of_a_map(client) -> None:
    first = re.findall(r'href="(/layer/conv1/map/[^"]+)"', client.get("/layer/conv1").get_data(as_text=True))[0]
    detail = client.get(first).get_data(as_text=True)
    assert "Evolution during training" in detail
    for src in re.findall(r'<img class="evo" src="([^"]+)"', detail):
        assert client.get(src).status_code == 200


@pytest.mark.parametrize("path", [
    "/file/../config.json", "/file/%2e%2e/%2e%2e/etc/passwd", "/file/..%2f..%2fetc%2fpasswd",
    "/file//etc/passwd", "/file/mine/../../../etc/passwd", "/file/checkpoints/last.pt", "/file/nope.png",
])
def test_no_path_leaves_the_run(client, path: str) -> None:
    r = client.get(path, follow_redirects=True)  # '//' redirects to the merged path first
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert b"root:" not in r.data
    assert client.get("/").status_code == 200


def test_upload_analysis(client) -> None:
    r = client.post("/analyze", data={"image": (io.BytesIO(png_bytes()), "shoe.txt")},
                    content_type="multipart/form-data")  # the name says .txt: the content decides
    assert r.status_code == 200, r.data[-500:]
    page = r.get_data(as_text=True)
    section = page.split('id="occlusion"')[1].split("</div>")[0]
    assert section.count("data:image/png;base64,") == 4
    assert all(f"<span class=\"lbl\">conv{i}</span>" in page for i in range(1, 6))


@pytest.mark.parametrize("payload,code,text", [
    (b"not an image at all", 400, "not an image that can be decoded"),
    (png_bytes()[:60], 400, "not an image that can be decoded"),  # truncated PNG
    (b"", 400, "empty"),
    (b"\x89PNG" + b"0" * (MAX_UPLOAD_BYTES + 10), 413, "Too Large"),
])
def test_bad_uploads_get_clear_4xx(client, payload: bytes, code: int, text: str) -> None:
    r = client.post("/analyze", data={"image": (io.BytesIO(payload), "x.png")}, content_type="multipart/form-data")
    assert r.status_code == code and text in r.get_data(as_text=True)
    assert client.post("/analyze", data={}, content_type="multipart/form-data").status_code == 400
    assert client.get("/").status_code == 200


def test_decode_upload_rejects_bombs() -> None:
    buf = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buf, format="PNG")  # 48 MP, a few KB
    with pytest.raises(ValueError, match="megapixels"):
        decode_upload(buf.getvalue())
    assert decode_upload(png_bytes()).size == (40, 48)


def test_real_server_survives_traversal_and_bad_upload(tiny_run: Path) -> None:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_app(tiny_run), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        def get(path: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
            conn.request("GET", path)  # sent verbatim: no client-side normalization of ../
            status = conn.getresponse().status
            conn.close()
            return status

        assert get("/file/../../etc/passwd") in (400, 404)
        assert get("/file/%2e%2e/%2e%2e/etc/passwd") in (400, 404)
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nGIF89a??\r\n--b--\r\n"
        conn.request("POST", "/analyze", body, {"Content-Type": "multipart/form-data; boundary=b"})
        assert conn.getresponse().status == 400
        conn.close()
        assert get("/") == 200
    finally:
        server.shutdown()


def test_serve_and_create_app_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NotADirectoryError):
        create_app(tmp_path / "missing")
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
