"""GET /v1/models and /v1/models/{id}: the models the healthy engines serve."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from gateway.engines.pool import EnginePool
from gateway.errors import model_not_found

CREATED = 1_700_000_000  # fixed: the engines do not report when a model was made


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = CREATED
    owned_by: str = "tessera"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


def list_models(pool: EnginePool) -> ModelList:
    return ModelList(data=[Model(id=m, max_model_len=n) for m, n in sorted(pool.models().items())])


def get_model(pool: EnginePool, model: str) -> Model:
    served = pool.models()
    if model not in served:
        raise model_not_found(model)
    return Model(id=model, max_model_len=served[model])
