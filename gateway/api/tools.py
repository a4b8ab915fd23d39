"""Tool calling for chat: the schemas OpenAI clients send, the tools rendered into the prompt
(Hermes-style, for templates without a tools section, as SmolLM2's), the constraint that
makes a call always parse, and the model's text parsed back into ``tool_calls``.

The call format is Hermes': ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
``tool_choice: required`` and a named function constrain the whole answer to a JSON array of
calls (one object for a named function); ``auto`` lets the model write text, and once it
opens ``<tool_call>`` the call is constrained (an xgrammar structural tag with a trigger).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from engine.api import StructuredOutputs
from gateway.api.common import StrictModel
from gateway.errors import bad_request

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALLS = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.S)
TOOLS_PROMPT = (
    "You may call one or more functions to answer the user. The functions, as JSON "
    "schemas, are inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    'To call a function, write <tool_call>{{"name": <function-name>, "arguments": '
    "<arguments-json-object>}}</tool_call>, one per call."
)


class FunctionDefinition(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="a JSON schema of the arguments",
    )
    strict: bool | None = Field(None, description="always enforced: calls are constrained")


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(..., description="the arguments, as a JSON object in a string")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


@dataclass
class ToolPlan:
    """How one request uses its tools: the prompt section and the constraint."""

    tools: list[Tool]
    mode: Literal["auto", "required", "named"]
    named: str | None = None
    parallel: bool = True

    @classmethod
    def of(
        cls, tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool | None
    ) -> ToolPlan | None:
        """The plan of a request (None: no tools in play); a 400 for a bad choice."""
        if not tools:
            if choice is not None and choice != "none":
                raise bad_request("tool_choice needs tools", "tool_choice")
            return None
        names = {t.function.name for t in tools}
        if len(names) != len(tools):
            raise bad_request("tool function names must be unique", "tools")
        if choice == "none":
            return None
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise bad_request(
                    f"tool_choice names the function {choice.function.name!r}, which is not "
                    "among the tools",
                    "tool_choice",
                )
            return cls(tools, "named", choice.function.name, parallel=False)
        return cls(tools, choice or "auto", parallel=parallel is not False)

    def system_text(self) -> str:
        listed = "\n".join(t.model_dump_json(exclude_none=True) for t in self.tools)
        return TOOLS_PROMPT.format(tools=listed)

    def constraint(self) -> StructuredOutputs:
        """What the engine enforces: the calls always parse and their arguments validate."""
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.function.name},
                    "arguments": t.function.parameters,
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.tools
            if self.named is None or t.function.name == self.named
        ]
        if self.mode == "named":
            return StructuredOutputs.json_schema(calls[0])
        if self.mode == "required":
            array: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
            if not self.parallel:
                array["maxItems"] = 1
            return StructuredOutputs.json_schema(array)
        tags = [
            {
                "type": "tag",
                "begin": f'{CALL_OPEN}{{"name": {json.dumps(t.function.name)}, "arguments": ',
                "content": {"type": "json_schema", "json_schema": t.function.parameters},
                "end": "}" + CALL_CLOSE,
            }
            for t in self.tools
        ]
        tag = {
            "type": "structural_tag",
            "format": {
                "type": "triggered_tags",
                "triggers": [CALL_OPEN],
                "tags": tags,
                "at_least_one": False,
                "stop_after_first": not self.parallel,
            },
        }
        return StructuredOutputs(structural_tag=json.dumps(tag))

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of the model's text; text that does not parse stays content."""
        try:
            if self.mode == "named":
                return None, [_call(json.loads(text))]
            if self.mode == "required":
                return None, [_call(c) for c in json.loads(text)]
            calls = [_call(json.loads(m)) for m in _CALLS.findall(text)]
        except (ValueError, TypeError, KeyError):
            return text, []
        if not calls:
            return text, []
        content = text[: text.index(CALL_OPEN)].strip()
        return content or None, calls

    def holds_back(self, text: str) -> int:
        """How many trailing characters of streamed text to hold back, for they may begin
        a call (auto mode); -1 once a call began (the rest comes as tool calls)."""
        if self.mode != "auto":
            return -1
        if CALL_OPEN in text:
            return -1
        for n in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
            if CALL_OPEN.startswith(text[-n:]):
                return n
        return 0


def _call(data: Any) -> ToolCall:
    name, arguments = data["name"], data["arguments"]
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise TypeError("a tool call is {name: string, arguments: object}")
    return ToolCall(
        id=f"call_{secrets.token_hex(12)}",
        function=FunctionCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False)),
    )


def render_call(call: ToolCall) -> str:
    """An earlier assistant call, as the model writes one."""
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError as e:
        raise bad_request("a tool call's arguments are not JSON", "messages") from e
    body = json.dumps({"name": call.function.name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}{body}{CALL_CLOSE}"
