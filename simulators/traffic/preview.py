r"""Contact sheet of the traffic simulator: rendered scenes with their label maps.

One row per weather (clear, overcast, rain, fog), one column per intersection type
(L, T, X); each cell is the rendered image with its colour-coded label map beside
it (Cityscapes colours) and the visible-car counts per type underneath. The other
parameters come from the given psi; weather and intersection are forced by one-hot
logits. The command line is ``python -m experiments.preview --psi=val --out=sheet.png``.

Host-side tool (NumPy, PIL), not jittable; the sampling inside is jitted.
"""

from __future__ import annotations

import numpy as np

FORCE = 30.0  # |logit| that forces a categorical value


def forced_psi(spec, psi, **values) -> np.ndarray:
    """psi with categorical blocks forced to one value each, e.g. ``weather=2, intersection=0``."""
    out = np.array(spec.validate(psi), np.float32)
    for name, index in values.items():
        sl = spec.slices[name]
        logits = np.full(sl.stop - sl.start, -FORCE, np.float32)
        logits[index] = 0.0
        out[sl] = logits
    return out


def contact_sheet(sim, psi, seed: int = 0, road_length: int | None = None, sample_fn=None) -> np.ndarray:
    """uint8 [rows, cols, 3]: the sheet for a TrafficSimulator and a concrete psi [dim].

    ``sample_fn(key, psi)`` returns outputs with a leading axis (the first image is shown);
    default: ``jax.jit`` of ``sim.sample(key, psi, 1)``.
    """
    import jax
    import jax.numpy as jnp
    from PIL import Image, ImageDraw

    from simulators.traffic import labels as LB
    from simulators.traffic import layout as L

    spec = sim.spec
    psi = sim.check_psi(psi)
    if psi.ndim != 1:
        raise ValueError(f"psi has shape {list(psi.shape)}; expected [{spec.dim}]: {spec.layout()}")
    sample = sample_fn or jax.jit(lambda k, p: sim.sample(k, p, 1))
    h, w = sim.height, sim.width
    gap, text_h = 4, 12
    cell_w, cell_h = 2 * w + gap, h + text_h
    head = 14
    sheet = Image.new("RGB", (len(L.INTERSECTIONS) * (cell_w + gap) + 60, head + len(L.WEATHERS) * (cell_h + gap)),
                      (255, 255, 255))  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    key = jax.random.key(seed)
    for j, inter in enumerate(L.INTERSECTIONS):
        draw.text((60 + j * (cell_w + gap) + 4, 1), f"intersection {inter}", fill=(0, 0, 0))
    for i, weather in enumerate(L.WEATHERS):
        draw.text((2, head + i * (cell_h + gap) + h // 2 - 5), weather, fill=(0, 0, 0))
        for j in range(len(L.INTERSECTIONS)):
            forced = {"weather": i, "intersection": j}
            if road_length is not None:
                forced["road_length"] = road_length - L.MIN_BLOCKS
            p = forced_psi(spec, psi, **forced)
            out = jax.tree_util.tree_map(np.asarray, sample(jax.random.fold_in(key, 3 * i + j), jnp.asarray(p)))
            img = out["image"][0]
            lab = LB.colorize(out["label"][0])
            x0, y0 = 60 + j * (cell_w + gap), head + i * (cell_h + gap)
            sheet.paste(Image.fromarray(img), (x0, y0))
            sheet.paste(Image.fromarray(lab), (x0 + w + gap, y0))
            counts = " ".join(f"{t[:3]}:{c}" for t, c in zip(L.CAR_TYPES, out["counts"][0]))
            draw.text((x0 + 2, y0 + h), counts, fill=(0, 0, 0))
    return np.asarray(sheet)
