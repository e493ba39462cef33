"""Draw the module icon, ``AtlasSeg/Resources/Icons/AtlasSeg.png`` (128×128): an axial abdominal CT slice
with coloured organs (structure-table colours) and a liver tumor, in radiological view (patient's right on the
image's left).

Run from the repository root: ``.venv/bin/python Testing/slicer_module/render_icon.py``. Drawn at 4× and downsampled,
so edges are antialiased.
"""
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT = REPO_ROOT / "AtlasSeg" / "Resources" / "Icons" / "AtlasSeg.png"
SCALE = 4
SIZE = 128 * SCALE


def _colour(name):
    table = json.loads((REPO_ROOT / "AtlasSegLib" / "data" / "structures.json").read_text())["structures"]
    return tuple(table[name]["color"])


def _box(cx, cy, rx, ry):
    return [SCALE * (cx - rx), SCALE * (cy - ry), SCALE * (cx + rx), SCALE * (cy + ry)]


def main():
    image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([0, 0, SIZE - 1, SIZE - 1], radius=22 * SCALE, fill=(24, 36, 52, 255))
    # Body outline: fat rim, then soft tissue.
    draw.ellipse(_box(64, 66, 56, 44), fill=(92, 92, 96, 255))
    draw.ellipse(_box(64, 66, 51, 39), fill=(128, 128, 132, 255))
    rim = {"outline": (60, 40, 40, 255), "width": 2 * SCALE}
    # Spine and aorta at the back (image bottom), kidneys either side.
    draw.ellipse(_box(64, 90, 11, 10), fill=(236, 236, 230, 255))
    draw.ellipse(_box(64, 90, 5, 5), fill=(150, 150, 150, 255))
    draw.ellipse(_box(60, 75, 5, 5), fill=_colour("aorta") + (255,))
    draw.ellipse(_box(40, 84, 9, 12), fill=_colour("kidney_right") + (255,), **rim)
    draw.ellipse(_box(88, 84, 9, 12), fill=_colour("kidney_left") + (255,), **rim)
    # Liver on the image's left (patient's right), spleen on the right, stomach in front; a dark rim keeps
    # neighbouring organs of similar colour apart at 16 px.
    liver = [(16, 58), (20, 40), (34, 28), (54, 26), (70, 32), (72, 44), (60, 54), (50, 70), (36, 80), (22, 74)]
    draw.polygon([(SCALE * x, SCALE * y) for x, y in liver], fill=_colour("liver") + (255,), **rim)
    draw.ellipse(_box(96, 64, 11, 15), fill=_colour("spleen") + (255,), **rim)
    draw.ellipse(_box(84, 40, 12, 8), fill=(200, 160, 120, 255), **rim)
    # A hypodense liver tumor with a bright contour, as AtlasSeg outlines it.
    draw.ellipse(_box(40, 48, 9, 8), fill=(120, 70, 60, 255), outline=(255, 214, 64, 255), width=3 * SCALE)
    image = image.filter(ImageFilter.GaussianBlur(radius=0.6 * SCALE))
    # Re-apply the background's rounded corners the blur softened, then downsample.
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, SIZE - 1, SIZE - 1], radius=22 * SCALE, fill=255)
    image.putalpha(mask)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    image.resize((128, 128), Image.LANCZOS).save(OUTPUT)
    print(OUTPUT)


if __name__ == "__main__":
    main()
