"""The generated demo gallery: a few drawn, captioned pictures per topic, written once under the demo cache."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# (folder, sidecar caption, sky colour, ground colour, motif) for the generated demo gallery.
DEMO_TOPICS = (
    ("敦煌 Dunhuang", "敦煌莫高窟的洞窟与壁画，鸣沙山下的石窟。Mogao caves of Dunhuang with murals.", "#f2c572", "#c8924a", "arch"),
    ("沙漠 desert", "金色沙丘上的骆驼商队，丝绸之路。A camel caravan on golden sand dunes.", "#87ceeb", "#e0b060", "dunes"),
    ("月牙泉 crescent lake", "沙漠中的月牙泉，绿洲与湖水。Crescent Lake, an oasis among the dunes.", "#9fd3ff", "#d9b26f", "lake"),
    ("上海 Shanghai", "上海外滩夜景，黄浦江两岸灯火辉煌，东方明珠。The Bund at night in Shanghai.", "#1b2a4a", "#2c3e66", "city"),
    ("海边 seaside", "海边的日落，夕阳染红了大海和沙滩。Sunset over the sea and the beach.", "#ff8c5a", "#2a6fb0", "sun"),
    ("雪山 snow mountains", "雪山与高原湖泊，蓝天白云。Snowy mountains above a blue lake.", "#a8d8ff", "#3a7bd5", "peak"),
    ("宠物 pets", "一只可爱的小猫和小狗，宠物的日常照顾。A cute kitten and puppy at home.", "#fff1d6", "#b5895a", "pet"),
    ("美食 food", "一碗热腾腾的面条和中国美食。A bowl of hot noodles, Chinese food.", "#fff8e7", "#d04a2f", "bowl"),
    ("太空 space", "火箭发射与星链卫星在星空中运行。A rocket launch and satellites in space.", "#0b0b2b", "#333355", "rocket"),
    ("游戏 game", "奇幻游戏世界的角色与风景海报。A fantasy game world poster with heroes.", "#6a5acd", "#3cb371", "star"),
    ("伦敦 London", "伦敦的大本钟、塔桥和泰晤士河。Big Ben, Tower Bridge and the Thames in London.", "#b0c4de", "#556b2f", "tower"),
    ("森林 forest", "秋天的森林小路，红叶与阳光。An autumn forest path with red leaves.", "#ffd27f", "#8b4513", "tree"),
)
DEMO_GALLERY_VERSION = "1"
DEMO_IMAGES_PER_TOPIC = 3


def draw_demo_image(label: str, sky: str, ground: str, motif: str, variant: int, size=(320, 240)) -> Image.Image:
    """A simple labelled picture: sky, ground, one motif and the English label."""
    width, height = size
    image = Image.new("RGB", size, sky)
    draw = ImageDraw.Draw(image)
    horizon = int(height * (0.55 + 0.08 * variant))
    draw.rectangle([0, horizon, width, height], fill=ground)
    x = width * (0.25 + 0.25 * variant)
    if motif in ("sun", "arch", "lake"):
        draw.ellipse([x - 40, horizon - 60, x + 40, horizon + 20], fill="#ffdd55" if motif == "sun" else "#5a3a1a" if motif == "arch" else "#4fc3f7")
    elif motif in ("peak", "dunes"):
        draw.polygon([(x - 90, horizon), (x, horizon - 110), (x + 90, horizon)], fill="#ffffff" if motif == "peak" else "#f0c070")
    elif motif in ("city", "tower"):
        for i in range(5):
            left = 20 + i * 60
            draw.rectangle([left, horizon - 40 - 25 * ((i + variant) % 3), left + 35, horizon], fill="#ffd700" if motif == "city" else "#8b7d6b")
    elif motif == "rocket":
        draw.polygon([(x, 30), (x - 18, 150), (x + 18, 150)], fill="#eeeeee")
        for i in range(30):
            draw.point(((i * 53) % width, (i * 97) % horizon), fill="#ffffff")
    elif motif == "tree":
        for i in range(4):
            left = 30 + i * 75
            draw.rectangle([left + 12, horizon - 40, left + 22, horizon], fill="#5b3a1a")
            draw.ellipse([left - 10, horizon - 100, left + 45, horizon - 30], fill=("#d2691e", "#b22222", "#daa520")[(i + variant) % 3])
    elif motif == "bowl":
        draw.pieslice([x - 70, horizon - 60, x + 70, horizon + 60], 0, 180, fill="#ffffff")
        draw.line([(x - 40, horizon - 30), (x + 50, horizon - 70)], fill="#8b4513", width=4)
    elif motif == "pet":
        draw.ellipse([x - 45, horizon - 70, x + 45, horizon + 10], fill="#ffa500")
        draw.polygon([(x - 40, horizon - 55), (x - 30, horizon - 90), (x - 15, horizon - 62)], fill="#ffa500")
        draw.polygon([(x + 40, horizon - 55), (x + 30, horizon - 90), (x + 15, horizon - 62)], fill="#ffa500")
    else:
        draw.regular_polygon((x, horizon - 50, 45), 5, fill="#ffd700")
    font = ImageFont.load_default(size=18)
    draw.rectangle([0, 0, width, 28], fill="#00000080")
    draw.text((8, 4), f"{label} #{variant + 1}", fill="#ffffff", font=font)
    return image


def write_demo_gallery(folder: Path) -> None:
    """Write the demo gallery: a few drawn images per topic, in topic folders, each with a caption sidecar."""
    for label, caption, sky, ground, motif in DEMO_TOPICS:
        topic_folder = folder / label
        topic_folder.mkdir(parents=True, exist_ok=True)
        english = label.split(" ", 1)[1]
        for variant in range(DEMO_IMAGES_PER_TOPIC):
            stem = f"{english.replace(' ', '-')}-{variant + 1}"
            draw_demo_image(english, sky, ground, motif, variant).save(topic_folder / f"{stem}.png")
            (topic_folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    # ensure_generated takes a folder with a config.json as complete.
    (folder / "config.json").write_text(json.dumps({"internlm_demo_gallery": DEMO_GALLERY_VERSION}))


def ensure_demo_gallery() -> Path:
    """The generated demo gallery folder (under the demo cache), written on first use."""
    from ...models.demo import ensure_generated

    return ensure_generated(f"demo-gallery{DEMO_GALLERY_VERSION}", write_demo_gallery)
