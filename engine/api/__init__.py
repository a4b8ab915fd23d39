"""The engine's contract, torch-free: what callers (the gateway, tests, clients) import.

Prompts, SamplingParams, outputs and finish reasons, the engine's info, every error, and
the EngineClient protocol. The implementations (LLMEngine, AsyncEngine, the servicer) import
this package; nothing here imports them.
"""

from engine.api.client import (
    REQUEST_ID_METADATA,
    ChatPrompt,
    EngineClient,
    EngineInfo,
    EngineLoad,
    GenerationStream,
    Prompt,
    engine_request_id,
)
from engine.api.errors import (
    EngineCallError,
    EngineDeadError,
    EngineUnavailableError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    SamplingParamsError,
)
from engine.api.outputs import (
    Completion,
    CompletionDelta,
    FinishReason,
    RequestOutput,
    RequestResult,
    RequestTimings,
    TokenLogprob,
)
from engine.api.params import SamplingParams, StructuredOutputs

__all__ = [
    "REQUEST_ID_METADATA",
    "ChatPrompt",
    "Completion",
    "CompletionDelta",
    "EngineCallError",
    "EngineClient",
    "EngineDeadError",
    "EngineInfo",
    "EngineLoad",
    "EngineUnavailableError",
    "FinishReason",
    "GenerationStream",
    "InvalidRequestError",
    "Prompt",
    "PromptTooLongError",
    "QueueFullError",
    "RequestOutput",
    "RequestResult",
    "RequestTimings",
    "SamplingParams",
    "SamplingParamsError",
    "StructuredOutputs",
    "TokenLogprob",
    "engine_request_id",
]
