"""The one decoding policy (convlens.images.decode) and the output-folder lock (lock_output)."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convlens.images.decode import ImageTooLarge, UnreadableImage, open_image
from convlens.io.lock import LOCK_NAME, OutputLocked, lock_output, remove_stale_temporaries


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header announcing ``width x height`` 1-bit pixels, with a small (truncated) body."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))


def test_bomb_refused_from_the_header_before_decoding() -> None:
    data = encode(Image.new("1", (12000, 12000)))  # 144 MP in a few KB
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge, match=r"12000x12000 = 144,000,000 pixels, over the limit"):
        open_image(data)
    with pytest.raises(ImageTooLarge, match="too large"):  # over PIL's own hard limit: Image.open refuses
        open_image(bomb_png(20000, 20000))
    with pytest.raises(ValueError, match="limit of 100"):  # ImageTooLarge is a ValueError; the cap is a knob
        open_image(encode(Image.new("RGB", (11, 10))), max_pixels=100)
    assert open_image(encode(Image.new("RGB", (10, 10))), max_pixels=100).size == (10, 10)


def test_cap_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVLENS_MAX_PIXELS", "50")
    with pytest.raises(ImageTooLarge, match="CONVLENS_MAX_PIXELS"):
        open_image(encode(Image.new("RGB", (10, 10))))
    monkeypatch.setenv("CONVLENS_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="CONVLENS_MAX_PIXELS must be a number"):
        open_image(encode(Image.new("RGB", (10, 10))))


def test_large_jpeg_decoded_reduced_and_over_the_cap_only_with_a_small_target() -> None:
    rng = np.random.default_rng(0)
    arr = np.repeat(np.repeat(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), 100, 0), 100, 1)  # 4000x3000 blocks
    data = encode(Image.fromarray(arr), "JPEG")
    full = open_image(data)
    assert full.size == (4000, 3000)
    small = open_image(data, target_size=64)  # decoded at 1/8 (500x375), then reduced to short side >= 2 * 64
    assert small.size == (250, 188)
    # same content: the reduced decode matches the full decode averaged down (blocks are flat)
    ref = np.asarray(full.resize((250, 188), Image.BOX), dtype=np.float64)
    diff = np.abs(np.asarray(small, dtype=np.float64) - ref)
    assert np.median(diff) <= 2 and diff.mean() < 6  # (block edges differ by the rounding of 187.5 rows)
    assert open_image(data, target_size=64, max_pixels=1_000_000).size == (250, 188)  # reduced size is under the cap
    with pytest.raises(ImageTooLarge):
        open_image(data, max_pixels=1_000_000)  # no target: full size only
    png = encode(Image.fromarray(arr))
    with pytest.raises(ImageTooLarge):  # PNG cannot be decoded reduced: refused over the cap
        open_image(png, target_size=64, max_pixels=1_000_000)
    reduced = open_image(png, target_size=64)  # under the cap: reduced after decoding (short side >= 128)
    assert reduced.size == (174, 131)  # 4000x3000 / 23 (ceil): short side >= 128


def test_modes_become_8bit_rgb() -> None:
    ramp16 = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 0..65535
    out = np.asarray(open_image(encode(ramp16)))
    assert out.shape == (16, 16, 3) and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and out[8, 0, 0] == 128
    cmyk = open_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((4, 4))[0] > 200 and cmyk.getpixel((4, 4))[1] < 50  # red
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 0
    assert open_image(encode(pal)).getpixel((0, 0)) == (10, 20, 30)
    assert open_image(encode(Image.new("LA", (1, 1), (200, 10)))).getpixel((0, 0)) == (200, 200, 200)
    assert open_image(encode(Image.new("1", (1, 1), 1))).getpixel((0, 0)) == (255, 255, 255)
    f32 = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32))
    assert open_image(encode(f32, "TIFF")).getpixel((0, 0)) == (128, 128, 128)


def oriented_jpeg(orientation: int) -> tuple[bytes, np.ndarray]:
    """A 40x20 JPEG (stored sideways) carrying an EXIF orientation tag, and its stored pixels."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (250, 0, 0)  # left half red, right half blue, as stored
    stored[:, 20:] = (0, 0, 250)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue(), stored


def test_exif_orientation_applied_at_decoding(tmp_path: Path) -> None:
    from PIL import ImageOps

    for orientation, size in [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))]:
        data, _ = oriented_jpeg(orientation)
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(data)
        for source in (data, path):  # uploads (bytes) and files (CLI, datasets) alike
            img = open_image(source)
            assert img.size == size
            ref = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")  # PIL's own reading
            assert np.abs(np.asarray(img, dtype=int) - np.asarray(ref, dtype=int)).max() <= 2
    # rotated 90 degrees clockwise on screen (tag 6): the stored left (red) half becomes the top
    top = np.asarray(open_image(oriented_jpeg(6)[0]), dtype=int)[:5].mean((0, 1))
    assert top[0] > 200 and top[2] < 50


def test_dataset_item_of_a_turned_photo_is_upright(tmp_path: Path) -> None:
    from convlens.images.sources import ImageFolderSafe

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.jpg").write_bytes(oriented_jpeg(6)[0])
    x, _ = ImageFolderSafe(tmp_path, 16)[0]
    assert x is not None and x.shape == (3, 16, 16)
    assert x[0, :4].mean() > 0.8 and x[2, :4].mean() < 0.2  # red on top, as shown upright
    assert x[2, -4:].mean() > 0.8 and x[0, -4:].mean() < 0.2  # blue at the bottom


def test_a_long_thin_image_costs_what_its_output_does(tmp_path: Path) -> None:
    """A 200000x1 PNG (a few hundred bytes) once asked for 157 GB: the resize ran before the crop."""
    from convlens.images.sources import resize_center_crop

    strip = np.zeros((1, 200_000, 3), dtype=np.uint8)
    strip[0, :100_000, 0] = 255  # red left half, blue right half
    strip[0, 100_000:, 2] = 255
    path = tmp_path / "strip.png"
    Image.fromarray(strip).save(path)
    assert path.stat().st_size < 2000
    code = (
        "import resource, sys\n"
        "from convlens.images.decode import open_image\n"
        "from convlens.images.sources import resize_center_crop\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"x = resize_center_crop(open_image({str(path)!r}, target_size=256), 256)\n"
        "print(tuple(x.shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"})
    shape, grown_kb = out.stdout.split(")")
    assert shape == "(3, 256, 256"
    assert int(grown_kb) < 100_000, f"decoding and resizing a 200000x1 image grew RSS by {grown_kb} kB"
    # the result is the center of the strip (one source pixel wide: the red-blue boundary, upscaled)
    x = resize_center_crop(open_image(path), 256)
    assert x[0, :, :8].min() > 0.9 and x[2, :, :8].max() < 0.1
    assert x[2, :, -8:].min() > 0.9 and x[0, :, -8:].max() < 0.1
    # images up to 4:1 are resized whole, bit-identical to resizing and then cropping
    wide = torch.rand(3, 30, 110)
    ref = F.interpolate(wide[None], size=(256, 939), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(resize_center_crop(wide, 256), ref[:, :, 341:597].clamp(0, 1), rtol=0, atol=0)


def test_unreadable_sources_named_without_object_reprs(tmp_path: Path) -> None:
    good = encode(Image.new("RGB", (64, 64), (1, 2, 3)))
    cases = {"empty": b"", "text": b"not an image at all", "truncated": good[: len(good) // 2]}
    for name, data in cases.items():
        with pytest.raises(UnreadableImage) as exc:
            open_image(data)
        assert "object at 0x" not in str(exc.value) and "cannot read the image data" in str(exc.value), name
        (tmp_path / f"{name}.png").write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}.png"):
            open_image(tmp_path / f"{name}.png")
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "missing.png")
    (tmp_path / "jpeg.png").write_bytes(encode(Image.new("RGB", (5, 5)), "JPEG"))  # wrong extension: content decides
    assert open_image(tmp_path / "jpeg.png").size == (5, 5)


def test_lock_second_process_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = f"from convlens.io.lock import lock_output\nwith lock_output({str(out)!r}): pass\n"
    with lock_output(out, "convlens mine --out X"):
        assert (out / LOCK_NAME).read_text().startswith("pid ")
        with lock_output(out):  # re-entrant in one process
            pass
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "OutputLocked" in r.stderr and "convlens mine --out X" in r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr  # released


def test_lock_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = f"import time\nfrom convlens.io.lock import lock_output\nwith lock_output({str(out)!r}):\n" \
           "    print('held', flush=True); time.sleep(60)\n"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked, match=f"pid {p.pid}"), lock_output(out):
            pass
    finally:
        p.kill()
        p.wait()
    with lock_output(out):
        pass


def test_stale_temporaries_removed_on_the_next_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "units" / "conv1").mkdir(parents=True)
    stale = [out / ".result.json.abc123.tmp", out / ".metrics.csv.tmp4242", out / "mean.pt.tmp",
             out / "checkpoints" / ".last.pt.x1y2.tmp", out / "feats.tmp.npz",
             out / "units" / "conv1" / ".3_1.png.ab.tmp"]
    keep = [out / "result.json", out / "checkpoints" / "last.pt", out / "tmp.png"]
    for p in stale + keep:
        p.write_bytes(b"x")
    with lock_output(out):
        pass
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert remove_stale_temporaries(tmp_path / "nothing-here") == []
