"""A damaged run, a model that exits, and hostile forms: the explorer answers with what is wrong, never dies.

Each case was a failure before (issue 23, cases 6 and 9): a truncated ``class_means.npz`` or an
odd ``box`` made ``create_app`` raise or every page answer 500; a run folder deleted while served
gave 500 everywhere; a model calling ``sys.exit`` or raising ``KeyboardInterrupt`` left its upload
"running" forever; 5000 form fields were called "larger than 8 MB".
"""
from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from convlens.cli import main
from convlens.explorer import create_app
from convlens.explorer.failsafe import survive
from convlens.explorer.jobs import JobQueue
from demo_run import png_bytes
from mined_run import make_mined_run

PAGES = ["/", "/layer/features.3", "/layer/features.3/map/2", "/classes", "/class/1", "/result/mine"]


def statuses(client, pages=PAGES) -> dict[str, int]:
    return {p: client.get(p).status_code for p in pages}


def small_run(root: Path) -> Path:
    return make_mined_run(root, {"features.3": 8}, distinct=2, k=4)


def wait_for(client, location: str, timeout: float = 60.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        status = client.get(location + "/status").get_json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"{location} still {status} after {timeout} s")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_class_means_named_on_the_pages(tmp_path: Path, damage: str) -> None:
    run = small_run(tmp_path)
    npz = run / "mine" / "class_means.npz"
    data = bytearray(npz.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[200:400] = bytes(200)  # a bad CRC inside the zip
    npz.write_bytes(bytes(data))
    c = create_app(run).test_client()  # raised BadZipFile before
    got = statuses(c)
    assert got["/"] == 200 and got["/layer/features.3"] == 200 and got["/layer/features.3/map/2"] == 200, got
    assert got["/classes"] == 404 and got["/class/1"] == 404, got
    start = c.get("/").get_data(as_text=True)
    assert "mine/class_means.npz is damaged (BadZipFile" in start and "the layer and unit pages still work" in start
    assert "class_means.npz is damaged" in c.get("/classes").get_data(as_text=True)  # the 404 says why


def test_malformed_result_and_unit_files(tmp_path: Path) -> None:
    run = small_run(tmp_path / "a")
    path = run / "mine" / "result.json"
    doc = json.loads(path.read_text())
    doc["data"]["layers"]["features.3"]["maps"]["2"] = [{"box": ["a", 1, 2, 3], "rank": "x", "value": "y"}]
    doc["data"]["layers"]["bogus"] = [1, 2]
    doc["data"]["class_names"] = {"not": "a list"}
    path.write_text(json.dumps(doc))
    c = create_app(run).test_client()  # raised ValueError (int('a')) before
    assert set(statuses(c).values()) == {200}, statuses(c)
    assert "layer &#39;bogus&#39; is not an object" in c.get("/").get_data(as_text=True)

    path.write_text('{"kind": "mine", "data": ')  # truncated: the run's other results still show
    c = create_app(run).test_client()
    start = c.get("/")
    assert start.status_code == 200 and b"mine/result.json" in start.data and b"/result/occlusion" in start.data
    assert c.get("/layer/features.3").status_code == 404

    run = small_run(tmp_path / "b")  # a unit file with a malformed box (projections written on demand)
    doc = json.loads((run / "mine" / "result.json").read_text())
    entries = doc["data"]["layers"]["features.3"]["maps"]["5"]
    for e in entries:
        e.pop("projection"), e.pop("patch")
    (run / "mine" / "result.json").write_text(json.dumps(doc))
    unit = run / "mine" / "units" / "features.3" / "5.json"
    unit.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"image": e["image"], "projection": "units/shared/0_proj.png", "patch": "units/shared/0_patch.png",
             "box": ["a", 1, 2, 3]} for e in entries]
    for text in ('{"entries": [1, 2', json.dumps({"entries": rows})):
        unit.write_text(text)
        c = create_app(run).test_client()
        got = statuses(c, [*PAGES, "/layer/features.3/map/5"])
        assert set(got.values()) == {200}, got  # the layer and class pages answered 500 before


def test_run_folder_deleted_or_renamed_while_served(tmp_path: Path) -> None:
    run = small_run(tmp_path / "run")
    c = create_app(run).test_client()
    assert c.get("/").status_code == 200
    shutil.move(str(run), str(tmp_path / "renamed"))
    got = statuses(c)
    assert set(got.values()) == {410}, got  # 500 on every page before
    body = c.get("/layer/features.3").get_data(as_text=True)
    assert "is gone: it was deleted or renamed after the server started" in body and "convlens serve" in body
    shutil.move(str(tmp_path / "renamed"), str(run))
    assert c.get("/").status_code == 200  # back in place: served again


def test_page_errors_name_the_exception_not_a_bare_500(tmp_path: Path) -> None:
    run = small_run(tmp_path)
    app = create_app(run)

    @app.route("/boom")
    def boom() -> str:
        raise FileNotFoundError(2, "No such file or directory", str(run / "mine" / "units" / "x.json"))

    r = app.test_client().get("/boom")
    text = r.get_data(as_text=True)
    assert r.status_code == 500 and "FileNotFoundError: No such file or directory: mine/units/x.json" in text
    assert str(tmp_path) not in text and "X-Frame-Options" in r.headers


@pytest.mark.parametrize("exc,reason", [
    (SystemExit(3), "called sys.exit(3)"),
    (KeyboardInterrupt(), "KeyboardInterrupt was raised inside it"),
    (GeneratorExit(), "stopped by GeneratorExit"),
    (RuntimeError("boom"), "RuntimeError: boom"),
])
def test_a_job_that_dies_any_way_ends_failed(exc: BaseException, reason: str) -> None:
    q = JobQueue(workers=1, capacity=2, keep=4)

    def die(job):
        raise exc

    job = q.submit("x", {}, die)
    assert job is not None
    t0 = time.time()
    while not job.done and time.time() - t0 < 10:
        time.sleep(0.01)
    assert job.state == "failed" and reason in job.error, (job.state, job.error)  # "running" forever before
    again = q.submit("y", {}, lambda job: 42)  # the worker thread and its slot survived
    while again is not None and not again.done:
        time.sleep(0.01)
    assert again is not None and again.result == 42
    q.shutdown()


def test_model_exiting_at_import_fails_the_upload_not_the_server(tmp_path: Path) -> None:
    exiter = tmp_path / "exiter.py"
    exiter.write_text("import sys\nsys.exit(3)\n")

    def loader():
        from convlens.nets.loading import load_model

        return load_model(f"{exiter}:build")

    def interrupter():
        raise KeyboardInterrupt

    for model, text in ((loader, "importing it called sys.exit(3)"), (interrupter, "KeyboardInterrupt")):
        c = create_app(tmp_path, model=model).test_client()
        r = c.post("/analyze", data={"image": (io.BytesIO(png_bytes()), "a.png")}, content_type="multipart/form-data")
        assert r.status_code == 303
        status = wait_for(c, r.headers["Location"])
        assert status["state"] == "failed" and text in status["error"], status
        assert c.get("/").status_code == 200


def test_systemexit_inside_a_request_answers_500_and_the_thread_lives() -> None:
    def app(environ, start_response):
        raise SystemExit(4)

    answers: list[str] = []

    def call() -> None:
        def start(status, headers, exc_info=None):
            answers.append(status)
        answers.append(b"".join(survive(app)({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, start)).decode())

    t = threading.Thread(target=call)
    t.start()
    t.join(5)
    assert answers[0].startswith("500") and "sys.exit(4)" in answers[1]
    with pytest.raises(SystemExit):  # in the main thread (a real exit) it goes through
        survive(app)({}, lambda *a: None)


def test_recorded_model_that_cannot_open_is_on_the_start_page(tmp_path: Path) -> None:
    run = small_run(tmp_path / "run")
    exiter = tmp_path / "exiter.py"
    exiter.write_text("import sys\nsys.exit(3)\n")
    path = run / "mine" / "result.json"
    doc = json.loads(path.read_text())
    doc["params"]["source"] = {"arch": f"{exiter}:build", "dataset": str(tmp_path)}
    path.write_text(json.dumps(doc))
    app = create_app(run, preload=True)
    state = app.extensions["convlens"]
    t0 = time.time()
    while state.model_error is None and time.time() - t0 < 30:
        time.sleep(0.05)
    c = app.test_client()
    start = c.get("/").get_data(as_text=True)
    assert "the model this run was mined with cannot be opened" in start and "sys.exit(3)" in start
    assert 'action="/analyze"' not in start  # no upload form for a model that does not open
    r = c.post("/analyze", data={"image": (io.BytesIO(png_bytes()), "a.png")}, content_type="multipart/form-data")
    assert r.status_code == 409 and b"cannot be opened" in r.data


@pytest.mark.parametrize("flags,text", [
    (["--arch", "torchvision:nosuch"], "unknown torchvision architecture"),
    (["--arch", "{exiter}:build"], "importing it called sys.exit(3)"),
    (["--arch", "{ok}:build", "--weights", "{bad}"], "--weights"),
    (["--checkpoint", "{bad}"], "cannot read checkpoint"),
])
def test_serve_reports_a_bad_model_before_serving(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  flags: list[str], text: str) -> None:
    (tmp_path / "exiter.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "ok.py").write_text("import torch.nn as nn\ndef build():\n    return nn.Conv2d(3, 4, 3)\n")
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02not a checkpoint" * 4)
    paths = {"exiter": tmp_path / "exiter.py", "ok": tmp_path / "ok.py", "bad": tmp_path / "bad.pt"}
    assert main(["serve", str(tmp_path), "--port", "0", *(f.format(**paths) for f in flags)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], err


def test_too_many_form_fields_say_so(tmp_path: Path) -> None:
    c = create_app(tmp_path, model=lambda: None).test_client()  # the form is read after the model check
    fields = {f"f{i}": "x" for i in range(5000)}
    r = c.post("/analyze", data=fields, content_type="multipart/form-data")
    body = r.get_data(as_text=True)
    assert r.status_code == 413 and "too many form fields" in body and "larger than" not in body, body[-300:]
    big = {"image": (io.BytesIO(b"\x89PNG" + b"0" * (9 * 2**20)), "x.png")}
    r = c.post("/analyze", data=big, content_type="multipart/form-data")
    assert r.status_code == 413 and b"larger than 8 MB" in r.data
