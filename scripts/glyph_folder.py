"""Write an image folder of letters rendered from the machine's own typefaces: a dataset no config was tuned on.

`python scripts/glyph_folder.py --out GLYPHS` writes `GLYPHS/{train,test}/<letter>/<n>.png` (the `image_folder`
source's layout): 10 classes (the letters of `--letters`), 28x28 RGB, `--train` and `--test` images per class. The
typefaces are split between the splits (every `--test-every`-th font file is a test font), so the test set asks for
letters drawn in typefaces the network never saw; each image also draws its own size, offset, rotation, ink and
paper colours and pixel noise. It is the "own image folder" of issue 14: a shipped config copied with only the data
keys changed (BENCHMARKS.md, "new data, shipped settings"). Needs TrueType fonts (Debian: fonts-dejavu-core,
fonts-liberation); they are found with `fc-list`, or under /usr/share/fonts.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def font_files() -> list[Path]:
    """The TrueType/OpenType files installed, sorted (the same list on every run on one machine)."""
    try:
        listed = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, check=True).stdout
        files = {Path(line.split(":")[0].strip()) for line in listed.splitlines() if line.strip()}
    except (OSError, subprocess.CalledProcessError):
        files = set(Path("/usr/share/fonts").rglob("*.[ot]tf"))
    return sorted(f for f in files if f.suffix.lower() in (".ttf", ".otf") and f.is_file())


def render(letter: str, font: Path, rng: np.random.Generator, size: int) -> Image.Image:
    """One glyph: drawn large on its paper colour, rotated, shifted and scaled, then reduced to size x size."""
    big = 4 * size
    paper = rng.integers(0, 256, 3)
    ink = (paper + rng.integers(96, 160, 3) * rng.choice([-1, 1], 3)) % 256  # a colour far enough from the paper
    image = Image.new("RGB", (big, big), tuple(int(v) for v in paper))
    draw = ImageDraw.Draw(image)
    face = ImageFont.truetype(str(font), int(big * rng.uniform(0.55, 0.85)))
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=face)
    x = (big - (right - left)) / 2 - left + rng.uniform(-0.12, 0.12) * big
    y = (big - (bottom - top)) / 2 - top + rng.uniform(-0.12, 0.12) * big
    draw.text((x, y), letter, font=face, fill=tuple(int(v) for v in ink))
    image = image.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BILINEAR,
                         fillcolor=tuple(int(v) for v in paper))
    pixels = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    pixels += rng.normal(0, 8, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write(out: Path, letters: str, train: int, test: int, size: int, test_every: int, seed: int) -> dict:
    fonts = font_files()
    test_fonts = fonts[::test_every]
    train_fonts = [f for f in fonts if f not in test_fonts]
    if not train_fonts or not test_fonts:
        raise SystemExit(f"error: found {len(fonts)} font file(s); need at least 2 (install fonts-dejavu-core)")
    rng = np.random.default_rng(seed)
    for split, count, faces in (("train", train, train_fonts), ("test", test, test_fonts)):
        for letter in letters:
            folder = out / split / letter
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                render(letter, faces[i % len(faces)], rng, size).save(folder / f"{i:04d}.png")
    return {"fonts": {"train": len(train_fonts), "test": len(test_fonts)}, "classes": len(letters)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the image folder to write (train/ and test/)")
    p.add_argument("--letters", default="ABCDEFGHKR", help="one class per character (default: 10 letters)")
    p.add_argument("--train", type=int, default=140, help="training images per class")
    p.add_argument("--test", type=int, default=46, help="test images per class")
    p.add_argument("--size", type=int, default=28, help="image side in pixels")
    p.add_argument("--test-every", type=int, default=5, help="every N-th font file is kept for the test split")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    info = write(a.out, a.letters, a.train, a.test, a.size, a.test_every, a.seed)
    print(f"{a.out}: {info['classes']} classes, {a.train}+{a.test} images each, fonts {info['fonts']['train']} "
          f"train / {info['fonts']['test']} test")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
