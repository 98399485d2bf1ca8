"""Write the example files the documentation uses (toy scenes the shipped toy model understands).

    python examples/make_examples.py   # rewrites examples/scene.png, examples/images/*.png, examples/cal_data.jsonl,
                                       # examples/pt_captions.jsonl

Deterministic: the same files every time (they are committed; the docs test runs every documented command on them).
"""

import json
from pathlib import Path

from vcontrast.toy.grammar import caption
from vcontrast.toy.scenes import make_scene

HERE = Path(__file__).parent


def main() -> None:
    image, scene = make_scene(12, n_objects=2, size=128)
    image.save(HERE / "scene.png")
    (HERE / "images").mkdir(exist_ok=True)
    records = []
    for i, seed in enumerate((10, 11, 12, 13)):
        image, scene = make_scene(seed, n_objects=2)
        image.save(HERE / "images" / f"{i}.png")
        # The last record's caption belongs to another scene: what `vcontrast cal audit` should flag.
        text = caption(scene if i < 3 else make_scene(99, n_objects=2)[1])
        first = scene.objects[0]
        records.append(
            {
                "id": f"example-{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\ndescribe the image ."},
                    {"from": "gpt", "value": text},
                    {"from": "human", "value": f"what color is the {first.shape} ?"},
                    {"from": "gpt", "value": first.color},
                ],
            }
        )
    (HERE / "cal_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # The same images with their caption alone: LLaVA's pre-training (plain) format for `vcontrast train --stage pt`.
    captions = [{**r, "conversations": r["conversations"][:2]} for r in records]
    (HERE / "pt_captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in captions))


if __name__ == "__main__":
    main()
