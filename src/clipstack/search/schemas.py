"""Request bodies of the search API, as clip-retrieval's back end and ClipClient define them.

Every field ClipClient sends is declared, so its requests validate as they are. Fields clipstack does
not implement (mclip, safety and violence models, aesthetic re-ranking) and unknown extra fields are
accepted, and the server names the ones that asked for something in an `X-Clipstack-Ignored` header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT_CHARS = 2000
MAX_RESULTS = 1000
MAX_RESULT_IDS = 10000
MAX_DIM = 8192
MAX_METADATA_IDS = 10000
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class KnnRequest(BaseModel):
    """POST /knn-service. Exactly one of text, image, image_url, embedding_input."""

    model_config = ConfigDict(extra="allow")

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="Query text.")
    image: str | None = Field(None, description="Query image, base64-encoded (size-limited).")
    image_url: str | None = Field(None, max_length=2048,
                                  description="Query image URL; refused unless the server allows fetching.")
    embedding_input: list[FiniteFloat] | None = Field(None, max_length=MAX_DIM,
                                                      description="Query embedding (normalized here).")
    modality: Literal["image", "text"] = Field("image", description="Which index to search.")
    indice_name: str | None = Field(None, max_length=256, description="Index name; default: the first.")
    num_images: int = Field(40, ge=1, le=MAX_RESULTS, description="Results to return.")
    num_result_ids: int | None = Field(None, ge=1, le=MAX_RESULT_IDS,
                                       description="Neighbours to fetch before filtering.")
    deduplicate: bool | None = Field(True, description="Drop results whose embeddings have IP >= 0.94.")
    use_mclip: bool | None = None
    use_safety_model: bool | None = None
    use_violence_detector: bool | None = None
    aesthetic_score: float | None = None
    aesthetic_weight: float | None = None


class MetadataRequest(BaseModel):
    """POST /metadata."""

    model_config = ConfigDict(extra="allow")

    indice_name: str | None = Field(None, max_length=256)
    ids: list[int] = Field(..., max_length=MAX_METADATA_IDS)


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


def ignored_fields(req: KnnRequest) -> list[str]:
    """Unsupported fields that asked for something (true flags, set scores, unknown extras)."""
    names = [name for name in ("use_mclip", "use_safety_model", "use_violence_detector")
             if getattr(req, name)]
    if req.aesthetic_score is not None or req.aesthetic_weight is not None:
        names += [n for n in ("aesthetic_score", "aesthetic_weight") if getattr(req, n) is not None]
    return names + sorted(req.model_extra or {})


def validation_error_body(errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The 422 body for FastAPI's validation errors: the first error names its field, `errors` lists all.

    A body that is not JSON at all comes as loc ("body", <character offset>); that offset is a position
    in the body, not a field, so the field is "body" and the message says where parsing stopped."""
    details = []
    for err in errors[:20]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = str(err.get("msg", "invalid request"))
        if err.get("type") == "json_invalid":
            where = f" at character {loc[0]}" if loc else ""
            loc, msg = [], f"not valid JSON ({msg}{where})"
        details.append({"field": ".".join(loc) or "body", "message": msg})
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    return {"error": f"{first['field']}: {first['message']}", "field": first["field"].split(".")[0],
            "errors": details}
