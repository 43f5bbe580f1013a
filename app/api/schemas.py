"""Request and response bodies, field for field as Roboflow Inference's perception_encoder routes."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.media.image_ref import ImageRef

_B64_EXAMPLE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


class ImageObject(BaseModel):
    """One image: `{"type": "base64" | "url", "value": ...}` (type matched case-insensitively)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": {"type": "base64", "value": _B64_EXAMPLE}})

    type: str = Field(description="base64 or url (numpy is refused: unpickling is code execution)")
    # Required: per the spec a dict is one image only when it has both `type` and `value`.
    value: Any = Field(description="base64 text (a data: prefix is allowed) or an http(s) URL")

    def to_ref(self) -> ImageRef:
        return ImageRef(self.type, self.value)


ImageOrText = ImageObject | str


class BaseRequest(BaseModel):
    """Fields every Roboflow request may carry; all optional, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    api_key: str | None = None
    usage_billable: bool = True
    start: float | None = None
    source: str | None = None
    source_info: str | None = None
    disable_model_monitoring: bool = False
    perception_encoder_version_id: str | None = Field(
        default=None, description="PE-Core variant, e.g. PE-Core-L14-336; the server default when absent"
    )
    model_id: str | None = Field(
        default=None, description="Derived as perception_encoder/<version id>; not used for routing"
    )

    @model_validator(mode="after")
    def _derive_model_id(self) -> BaseRequest:
        if self.model_id is None and self.perception_encoder_version_id:
            self.model_id = f"perception_encoder/{self.perception_encoder_version_id}"
        return self


class EmbedImageRequest(BaseRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"image": {"type": "base64", "value": _B64_EXAMPLE}}]})

    image: ImageObject | list[ImageObject]


class EmbedTextRequest(BaseRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": ["a photo of a cat", "a dog on a beach"]}]})

    text: str | list[str]


PromptValue = ImageObject | str | list[ImageOrText] | dict[str, ImageOrText]


class CompareRequest(BaseRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject": {"type": "base64", "value": _B64_EXAMPLE},
                    "subject_type": "image",
                    "prompt": ["a cat", "a dog"],
                    "prompt_type": "text",
                }
            ]
        }
    )

    subject: ImageOrText = Field(union_mode="left_to_right")
    subject_type: Literal["image", "text"] = "image"
    # left_to_right: a dict with both `type` and `value` is one image, any other dict maps names to prompts.
    prompt: PromptValue = Field(union_mode="left_to_right")
    prompt_type: Literal["image", "text"] = "text"


class ClassifyRequest(BaseRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject": {"type": "base64", "value": _B64_EXAMPLE},
                    "prompt": {"cat": "a photo of a cat", "dog": "a photo of a dog"},
                }
            ]
        }
    )

    subject: ImageOrText = Field(union_mode="left_to_right")
    subject_type: Literal["image", "text"] = "image"
    prompt: list[str] | dict[str, str] = Field(
        description="Class prompts: a list (each prompt is its own class name) or a dict class name -> prompt"
    )


class InferenceResponse(BaseModel):
    inference_id: str | None = None
    frame_id: int | None = None
    time: float = Field(description="Seconds the server spent on the request")


class EmbeddingResponse(InferenceResponse):
    embeddings: list[list[float]]


class CompareResponse(InferenceResponse):
    similarity: list[float] | dict[str, float] = Field(description="Plain cosine similarities in [-1, 1]")
    parent_id: str | None = None


class ClassPrediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class")
    class_id: int
    confidence: float
    similarity: float


class ClassifyResponse(InferenceResponse):
    predictions: list[ClassPrediction] = Field(description="Classes by descending confidence")
    top: str
    confidence: float
    logit_scale: float = Field(description="The model's learned temperature applied before the softmax")
    parent_id: str | None = None


class ErrorResponse(BaseModel):
    message: str


class UnprocessableResponse(BaseModel):
    """A 422: a body that fails validation (`detail`, FastAPI's list) or a query that cannot be searched (`message`)."""

    message: str | None = None
    detail: list[dict[str, Any]] | None = None


def to_refs(value: Any) -> Any:
    """A prompt or subject of any accepted shape, with each ImageObject as the services' ImageRef."""
    if isinstance(value, ImageObject):
        return value.to_ref()
    if isinstance(value, list):
        return [to_refs(item) for item in value]
    if isinstance(value, dict):
        return {key: to_refs(item) for key, item in value.items()}
    return value
