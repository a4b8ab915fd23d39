"""The `tessera` command: generate for real, and one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessera.cli import main

TINY = ["--model", "dummy:tiny", "--kv-cache-memory", "64MiB", "--max-model-len", "256"]


def test_generate_prints_one_json_result_per_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\n\nsecond prompt\n", encoding="utf-8")
    code = main(
        ["generate", "first", "--file", str(prompts), "--raw", "--json", "--max-tokens", "5",
         "--ignore-eos", *TINY]
    )  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["first", "hello there", "second prompt"]
    assert all(line["completion_tokens"] == 5 for line in lines)
    assert all(line["finish_reason"] == "length" for line in lines)


def test_settings_flags_reach_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "x", "--raw", "--max-tokens", "1", "--block-size", "8", *TINY])
    assert code == 0
    assert "x 8 = " in capsys.readouterr().err  # capacity line: blocks x block size


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "/nonexistent/model.gguf"], "does not exist"),
        (["--model", "dummy:no-such-preset"], "no-such-preset"),
        (["--temperature", "-1"], "temperature"),
        (["--kv-cache-memory", "lots"], "not a size"),
        (["--max-model-len", "3"], "--max-model-len"),
    ],
)
def test_bad_input_gives_one_clear_error_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["generate", "hi", "--raw", "--kv-cache-memory", "64MiB", "--model", "dummy:tiny"]
    code = main(base + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("tessera generate: error:")
    assert needle in err[0]


@pytest.mark.parametrize(
    "command", ["serve", "prepare", "engine", "gateway", "rag", "generate", "keys"]
)
def test_every_command_builds_its_flags(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tessera.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as done:
        parser.parse_args([command, "--help"])
    assert done.value.code == 0
    assert "--" in capsys.readouterr().out


def test_serve_passes_every_engine_group_to_its_engine() -> None:
    from engine.config import EngineConfig
    from tessera.commands.serve import ServeConfig

    config = ServeConfig(speculative={"method": "ngram"}, scheduler={"max_num_seqs": 3})
    engine = config.engine_config()
    assert type(engine) is EngineConfig
    assert engine.speculative.method == "ngram" and engine.scheduler.max_num_seqs == 3


def test_a_kv_budget_too_small_for_the_context_is_one_line_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["engine", "--model", "dummy:tiny", "--kv-cache-memory", "64KiB", "--host", "127.0.0.1",
         "--port", "0", "--metrics-port", "0"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("tessera engine: error: KV cache budget")
    assert "--kv-cache-memory" in err[-1] and not any("Traceback" in line for line in err)


MOE_TINY = 'dummy:{"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}'


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backend", "onnx", "--block-size", "4"], "16-token KV blocks"),
        (["--model", MOE_TINY, "--backend", "onnx"], "mixture-of-experts"),
    ],
)
def test_a_setting_the_backend_refuses_is_one_line_at_start(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["engine", "--model", "dummy:tiny", "--kv-cache-memory", "64MiB", "--host", "127.0.0.1",
         "--port", "0", "--metrics-port", "0", *args]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("tessera engine: error: ") and needle in err[-1]
    assert not any("Traceback" in line for line in err)
