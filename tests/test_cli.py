"""The `ossai` command, driven in-process (typer's runner) and, for error paths, as a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ossai.cli import app
from ossai.engine import Engine, SamplingParams

runner = CliRunner()


def _generate(*args: str) -> dict:
    result = runner.invoke(app, ["generate", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_generate_raw_tokens_json(tiny):
    out = _generate(
        str(tiny), "--raw", "--tokens", "200006,1428,200008", "--max-tokens", "8", "--temperature", "0"
    )
    assert len(out["tokens"]) == 8
    assert out["prefill_tps"] > 0 and out["decode_tps"] > 0
    expected = list(
        Engine.load(tiny).generate([200006, 1428, 200008], SamplingParams(max_tokens=8, temperature=0.0))
    )
    assert out["tokens"] == expected


def test_generate_seed_is_reproducible(tiny):
    args = [str(tiny), "--raw", "--tokens", "1,2,3", "--max-tokens", "12", "--temperature", "1.0"]
    first = _generate(*args, "--seed", "7")["tokens"]
    assert _generate(*args, "--seed", "7")["tokens"] == first
    assert _generate(*args, "--seed", "8")["tokens"] != first


def test_generate_moe_int8_follows_the_int8_engine(tiny):
    """--moe-int8 reaches the engine: the tokens are the int8 engine's, greedy, which on this prompt part
    from the exact engine's after 20 tokens."""
    from ossai.engine import EngineConfig

    prompt = [200006, 1428, 200008, 5000, 6000]
    args = ["--raw", "--tokens", ",".join(map(str, prompt)), "--max-tokens", "24", "--temperature", "0"]
    out = _generate(str(tiny), *args, "--moe-int8")
    engine = Engine.load(tiny, config=EngineConfig(moe_int8=True))
    assert all(m.int8_activations for m in engine.model.mlp)
    params = SamplingParams(max_tokens=24, temperature=0.0)
    assert out["tokens"] == list(engine.generate(prompt, params))
    engine.close()
    assert out["tokens"] != _generate(str(tiny), *args)["tokens"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ossai.cli", *args], capture_output=True, text=True)


def test_usage_errors_are_one_line(tiny, tmp_path):
    for args, message in [
        (["generate", str(tiny), "--raw"], "give exactly one of --prompt or --tokens"),
        (["generate", str(tiny), "--raw", "--tokens", "1,x"], "comma-separated integers"),
        (["generate", str(tiny), "--raw", "--tokens", "999999999"], "token ids must be in"),
        (["generate", str(tiny), "--raw", "--tokens", "1", "--top-p", "0"], "top_p"),
        (["generate", str(tmp_path / "missing"), "--raw", "--tokens", "1"], "no such checkpoint directory"),
    ]:
        proc = _run(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1


def test_help_explains_commands():
    proc = _run("--help")
    assert proc.returncode == 0 and "generate" in proc.stdout
    proc = _run("generate", "--help")
    assert "--max-tokens" in proc.stdout and "--seed" in proc.stdout


def test_generate_chat_mode_renders_harmony_and_parses_output(tiny):
    from ossai import harmony

    out = _generate(
        str(tiny), "--prompt", "What is 2+2?", "--effort", "low", "--max-tokens", "12", "--seed", "3"
    )
    expected_prompt = harmony.render_chat([{"role": "user", "content": "What is 2+2?"}], effort="low")
    assert out["prompt_tokens"] == len(expected_prompt)
    assert out["text"] == harmony.decode(out["tokens"])
    # a random model writes no valid harmony: the parser falls back to final text and says so
    assert out["final"] or out["reasoning"]
    assert set(out) >= {"tokens", "text", "reasoning", "final", "prefill_tps", "decode_tps"}


def test_moe_int8_is_refused_for_a_gpu():
    from ossai.engine import EngineConfig
    from ossai.errors import BadRequest

    with pytest.raises(BadRequest, match="CPU only, not on device 'cuda:1'"):
        EngineConfig(device="cuda:1", moe_int8=True)
