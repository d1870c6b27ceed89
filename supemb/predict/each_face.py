"""One prediction per face: `Bundle.predict(photos, faces="all")` for a bundle whose preprocessing has a face step.

Each photo is decoded and searched for faces with the bundle's own face-step
settings; every face's crop is then predicted as an input of its own (its
detection already done), and its prediction carries the face's box and score
and names the photo and the face ("group.jpg (face 2 of 3)").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from supemb.errors import UserError

if TYPE_CHECKING:
    from supemb.predict.bundle import Bundle, Prediction


def predict_each_face(bundle: Bundle, items: Sequence[Any], on_error: str, **predict_kwargs: Any) -> list[Prediction]:
    """Predictions for every face of every photo, photo by photo, largest face first; a photo
    without a face gives an error (on_error="raise") or a Prediction with `error` set ("skip")."""
    from supemb.embed.batches import describe
    from supemb.predict.bundle import Prediction
    from supemb.preprocess.faces import crop, faces_in, no_face

    params = bundle.pipeline.params("face")
    decode, _ = bundle.pipeline.split_at("face")
    crops: list[Any] = []
    owners: list[tuple[int, int, int, dict]] = []  # (photo position, face number, faces in photo, face)
    out: list[Prediction | None] = []
    for pos, item in enumerate(items):
        name = describe(item, pos)
        try:
            image = decode.run(item)
            faces = faces_in(image, params)
            if not faces:
                raise no_face(name, params)
        except UserError as err:
            if on_error == "raise":
                raise
            out.append(Prediction(source=name, error=str(err)))
            continue
        for i, face in enumerate(faces):
            crops.append(crop(image, face, params["margin"]))
            owners.append((pos, i + 1, len(faces), face.to_dict()))
            out.append(None)
    preds = iter(bundle.predict(crops, detect=False, on_error=on_error, **predict_kwargs) if crops else [])
    for slot, (pos, number, count, face) in zip([i for i, p in enumerate(out) if p is None], owners):
        p = next(preds)
        p.source, p.face = f"{describe(items[pos], pos)} (face {number} of {count})", face
        out[slot] = p
    return [p for p in out if p is not None]
