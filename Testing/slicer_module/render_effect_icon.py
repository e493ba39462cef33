"""Draw the "Remove false positive" Segment Editor effect icon,
``AtlasSeg/SegmentEditorRemoveFalsePositiveLib/Resources/Icons/RemoveFalsePositive.png`` (21×21, the size of
Slicer's own effect icons): a kept island (tumor colour) and a small false-positive island struck out by a red
cross, with a pointer clicking it.

Run from the repository root: ``.venv/bin/python Testing/slicer_module/render_effect_icon.py``. Drawn at 8× and
downsampled, so edges are antialiased.
"""
from pathlib import Path

from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT = REPO_ROOT / "AtlasSeg" / "SegmentEditorRemoveFalsePositiveLib" / "Resources" / "Icons" / "RemoveFalsePositive.png"
SIZE = 21
SCALE = 8


def _s(*values):
    return [v * SCALE for v in values]


def main():
    big = Image.new("RGBA", (SIZE * SCALE, SIZE * SCALE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(big)
    outline = (70, 50, 20, 255)
    # The kept island: a large blob in the tumor yellow.
    draw.ellipse(_s(1, 8, 11, 19), fill=(240, 200, 60, 255), outline=outline, width=SCALE)
    # The false positive: a small island, greyed, struck out in red.
    draw.ellipse(_s(10, 1, 20, 11), fill=(205, 205, 205, 255), outline=(110, 110, 110, 255), width=SCALE)
    red = (220, 30, 30, 255)
    draw.line(_s(12.5, 3.5, 17.5, 8.5), fill=red, width=int(1.6 * SCALE))
    draw.line(_s(17.5, 3.5, 12.5, 8.5), fill=red, width=int(1.6 * SCALE))
    icon = big.resize((SIZE, SIZE), Image.LANCZOS)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    icon.save(OUTPUT)
    print(OUTPUT)


if __name__ == "__main__":
    main()
