"""Images the XComposer preprocessing must convert or refuse clearly, each made here with PIL."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internlm_demo.xcomposer import ImageRejectedError, load_image, load_xcomposer, preprocess
from internlm_demo.xcomposer.preprocess import image_to_pixels
from tests.conftest import REPO


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode, 1)
    values = np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(values.squeeze(-1) if channels == 1 else values, mode=mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bilevel_png(path: Path, width: int, height: int) -> None:
    """A valid, all-black 1-bit PNG of any size, streamed so that it never exists in memory (a decompression bomb)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    )


def test_text_file_named_png_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not a picture")
    with pytest.raises(ImageRejectedError, match="notes.png is not an image"):
        load_image(path)


def test_empty_and_missing_files_are_refused(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageRejectedError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageRejectedError, match="no such file"):
        load_image(tmp_path / "gone.png")


def test_truncated_png_is_refused(tmp_path):
    whole = tmp_path / "whole.png"
    noise(64, 64).save(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageRejectedError, match="damaged or truncated"):
        load_image(cut)


def test_png_with_damaged_pixel_data_is_refused(tmp_path):
    whole = tmp_path / "whole.png"
    noise(64, 64).save(whole)
    data = bytearray(whole.read_bytes())
    start = data.index(b"IDAT") + 20
    data[start : start + 64] = bytes(64)  # zeroes inside the compressed stream
    broken = tmp_path / "broken.png"
    broken.write_bytes(bytes(data))
    with pytest.raises(ImageRejectedError, match="damaged"):
        load_image(broken)


def test_rgba_drops_alpha_like_the_original(tmp_path):
    path = tmp_path / "transparent.png"
    Image.new("RGBA", (40, 30), (10, 200, 30, 0)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.getpixel((5, 5)) == (10, 200, 30)
    assert image_to_pixels(path).shape == (1, 3, 224, 224)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (50, 20), 77).save(path)
    assert load_image(path).getpixel((3, 3)) == (77, 77, 77)
    pixels = image_to_pixels(path)[0]
    # the same grey, normalised with each channel's CLIP mean/std
    expected = [(77 / 255 - mean) / std for mean, std in zip(preprocess.CLIP_MEAN, preprocess.CLIP_STD)]
    assert pixels[:, 100, 100].tolist() == pytest.approx(expected, abs=1e-5)


def test_cmyk_jpeg_is_converted(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(path, quality=95)  # red ink setting
    with Image.open(path) as original:
        assert original.mode == "CMYK"
        expected = original.convert("RGB").getpixel((30, 20))
    red, green, blue = load_image(path).getpixel((30, 20))
    assert (red, green, blue) == expected and red > 200 > 60 > max(green, blue)


def test_16_bit_png_keeps_its_range(tmp_path):
    path = tmp_path / "depth.png"
    values = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(path)
    with Image.open(path) as original:
        assert original.mode in ("I;16", "I")
    image = load_image(path)
    assert [image.getpixel((x, 1)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_animated_gif_uses_its_first_frame(tmp_path):
    path = tmp_path / "blink.gif"
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as original:
        assert original.n_frames == 3
    assert load_image(path).getpixel((16, 16)) == (255, 0, 0)


def test_palette_png_with_transparency_converts_quietly(tmp_path, recwarn):
    path = tmp_path / "icon.png"
    icon = Image.new("P", (16, 16), 1)
    icon.putpalette([0, 0, 0, 250, 128, 0] + [0] * 762)
    icon.save(path, transparency=0)
    assert load_image(path).getpixel((4, 4)) == (250, 128, 0)
    assert not [w for w in recwarn if "Palette" in str(w.message)]


def test_20000_by_20000_png_is_refused_without_decoding(tmp_path):
    """The check runs in a fresh process so that its peak memory is measurable."""
    path = tmp_path / "bomb.png"
    write_bilevel_png(path, 20000, 20000)
    assert path.stat().st_size < 1_000_000  # 400 megapixels in well under a megabyte
    probe = (
        "import json, resource, sys, time\n"
        "from internlm_demo.xcomposer.preprocess import ImageRejectedError, load_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    load_image(sys.argv[1]); message = None\n"
        "except ImageRejectedError as exc:\n"
        "    message = str(exc)\n"
        "print(json.dumps({'message': message, 'seconds': time.perf_counter() - start,\n"
        "                  'extra_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["message"] and "megapixels" in outcome["message"]
    assert outcome["seconds"] < 2
    assert outcome["extra_kib"] < 50 * 1024, "decoding would need ~400 MB"


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 1_000_000)
    path = tmp_path / "photo.jpg"
    noise(3000, 2000).save(path, quality=80)
    image = load_image(path)
    assert image.width * image.height <= 1_000_000 and image.width / image.height == pytest.approx(1.5, rel=0.01)
    png = tmp_path / "scan.png"
    noise(1500, 1000).save(png)
    with pytest.raises(ImageRejectedError, match=r"1500×1000 .*up to 1 megapixels"):
        load_image(png)


def test_oversized_file_is_refused_before_opening(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_FILE_BYTES", 10_000)
    path = tmp_path / "big.png"
    noise(100, 100).save(path)
    with pytest.raises(ImageRejectedError, match="MB"):
        load_image(path)


def test_model_encode_image_refuses_and_accepts(tmp_path):
    model = load_xcomposer(None, device="cpu", progress=False)
    assert model.info.is_demo
    bad = tmp_path / "fake.jpg"
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(ImageRejectedError):
        model.encode_image(bad)
    gif = tmp_path / "one.gif"
    Image.new("L", (30, 30), 200).save(gif)
    embeds = model.encode_image(gif)
    assert embeds.shape == (1, model.image_positions, model.llm.config.hidden_size) and torch.isfinite(embeds).all()
