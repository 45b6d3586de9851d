"""What writing a result costs: PNG encoding time and size by zlib level, for a 1344x768 photographic image.

The worker encodes every result (and each request's depth/canny maps and previews) on the CPU while the GPU waits,
so the level is a trade between a job's time and the file's size. Prints a table; the image is synthetic (a smooth
gradient with grain, blurred like a photograph), built offline.

    .venv/bin/python bench/png.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image, ImageFilter

from reimagine.images import PNG_COMPRESS_LEVEL


def photo_like(width: int = 1344, height: int = 768) -> Image.Image:
    rng = np.random.default_rng(0)
    base = np.asarray(Image.radial_gradient("L").resize((width, height)).convert("RGB")).astype(np.int16)
    grain = rng.normal(0, 12, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    image = photo_like()
    print("| zlib level | encode (ms) | size (MB) |\n|---|---:|---:|")
    for level in (9, 6, 3, 1):
        started = time.perf_counter()
        for _ in range(args.repeat):
            out = io.BytesIO()
            image.save(out, format="PNG", compress_level=level)
        elapsed = (time.perf_counter() - started) / args.repeat
        mark = " (ours)" if level == PNG_COMPRESS_LEVEL else " (Pillow's default)" if level == 6 else ""
        print(f"| {level}{mark} | {elapsed * 1e3:.0f} | {len(out.getvalue()) / 1e6:.2f} |")


if __name__ == "__main__":
    main()
