"""ossai: run OpenAI's open-weight gpt-oss models locally.

Examples:

\b
    ossai pull gpt-oss:20b                       # the original layout from the Hugging Face Hub
    ossai generate gpt-oss:20b --prompt "Why is the sky blue?" --effort low
    ossai import ./my-checkpoint --name mine && ossai list
    ossai generate ./gpt-oss-20b --raw --tokens 200006,17360,200008 --max-tokens 16 --json
    ossai chat ./gpt-oss-20b --effort high
    ossai bench ./gpt-oss-20b --prompt-tokens 512 --gen-tokens 128 --concurrency 8 --json
    python -m ossai.testing.checkpoint --preset tiny --seed 0 --out /tmp/tiny  # a random test model
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ossai import settings
from ossai.errors import BadRequest, OssaiError

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ModelArg = Annotated[
    str, typer.Argument(help="checkpoint directory (Hugging Face or original/ layout) or a store name")
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads (default: physical cores)")]
MoeInt8Opt = Annotated[
    bool,
    typer.Option(
        "--moe-int8",
        help="CPU: round the MoE experts' inputs to int8 per 32 values, as llama.cpp does: about 2x faster "
        "experts with AVX-512 VNNI; logits move by ~0.01 on average from the exact default",
    ),
]


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress to stderr")] = False):
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


def _resolve(model: str) -> Path:
    """MODEL arguments: a checkpoint directory, or a store name (see `ossai list`)."""
    from ossai.store import resolve

    return resolve(model)


def _parse_tokens(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise BadRequest(f"--tokens must be comma-separated integers, got {text!r}") from exc
    if not ids:
        raise BadRequest("--tokens is empty")
    return ids


EffortOpt = Annotated[str, typer.Option("--effort", "-e", help="reasoning effort: low, medium or high")]


OptionalModelArg = Annotated[
    str | None,
    typer.Argument(
        help="checkpoint directory or store name; default: the only stored model, or the bundled ossai-demo"
    ),
]


def _model_or_default(model: str | None) -> str:
    if model is not None:
        return model
    from ossai.store import demo

    name = demo.default_model()
    if name == demo.NAME:
        typer.echo(f"ossai: using {demo.NAME}, {demo.DESCRIPTION}", err=True)
    return name


@app.command()
def generate(
    model: OptionalModelArg = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="prompt text")] = None,
    tokens: Annotated[str | None, typer.Option(help="prompt as comma-separated token ids")] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="plain token completion, no harmony chat format")
    ] = False,
    effort: EffortOpt = "medium",
    system: Annotated[str | None, typer.Option(help="instructions (chat mode)")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="tokens to generate at most")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="random seed for reproducible sampling")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    moe_int8: MoeInt8Opt = False,
) -> None:
    """Generate a completion for one prompt and print it.

    By default the prompt is a user message in the harmony chat format and the final answer is printed
    (the reasoning is in --json's `reasoning`). --raw completes the text or token ids as given.
    """
    from ossai import harmony
    from ossai.engine import Engine, EngineConfig, SamplingParams

    if (prompt is None) == (tokens is None):
        raise BadRequest("give exactly one of --prompt or --tokens")
    if tokens is not None:
        prompt_ids = _parse_tokens(tokens)
    elif raw:
        prompt_ids = harmony.encode(prompt or "")
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        prompt_ids = harmony.render_chat(messages, effort=effort)
    stops = frozenset() if raw else frozenset(harmony.STOP_TOKENS)
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop_token_ids=stops
    )
    config = EngineConfig(device=device, threads=threads, moe_int8=moe_int8)
    engine = Engine.load(_resolve(_model_or_default(model)), config=config)
    try:
        _generate(engine, prompt_ids, params, raw, as_json)
    finally:
        engine.close()


def _generate(engine, prompt_ids: list[int], params, raw: bool, as_json: bool) -> None:
    from ossai import harmony

    parser = None if raw else harmony.StreamParser()
    reasoning: list[str] = []
    final: list[str] = []
    out: list[int] = []
    started = time.perf_counter()
    first = started
    for token in engine.generate(prompt_ids, params):
        if not out:
            first = time.perf_counter()
        out.append(token)
        if parser is None:
            continue
        for event in parser.feed(token):
            if isinstance(event, harmony.ReasoningDelta):
                reasoning.append(event.text)
            elif isinstance(event, harmony.ContentDelta):
                final.append(event.text)
                if not as_json:
                    typer.echo(event.text, nl=False)
    finished = time.perf_counter()
    if parser is not None:
        for event in parser.finish():
            if isinstance(event, harmony.ContentDelta):
                final.append(event.text)
                if not as_json:
                    typer.echo(event.text, nl=False)
    elif not as_json:
        typer.echo(harmony.decode(out), nl=False)
    if not as_json:
        typer.echo("")
        return
    result = {
        "tokens": out,
        "text": harmony.decode(out),
        "reasoning": "".join(reasoning),
        "final": "".join(final),
        "prompt_tokens": len(prompt_ids),
        "prefill_tps": len(prompt_ids) / (first - started) if first > started else 0.0,
        "decode_tps": (len(out) - 1) / (finished - first) if len(out) > 1 and finished > first else 0.0,
    }
    if parser is not None and parser.warnings:
        result["warnings"] = parser.warnings
    typer.echo(json.dumps(result))


@app.command()
def chat(
    model: OptionalModelArg = None,
    effort: EffortOpt = "medium",
    system: Annotated[str | None, typer.Option(help="instructions for the assistant")] = None,
    show_reasoning: Annotated[
        bool | None,
        typer.Option(
            "--show-reasoning/--hide-reasoning",
            help="stream the reasoning (default: shown on a terminal; with piped stdin, on stderr if given)",
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="tokens per reply at most")] = 2048,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="random seed for reproducible sampling")] = None,
    tools: Annotated[
        str | None,
        typer.Option(
            help="tools the model may use, run as it calls them: python, browser, mcp (comma-separated)"
        ),
    ] = None,
    python_sandbox: PythonSandboxOpt = "bwrap",
    docs: DocsOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    moe_int8: MoeInt8Opt = False,
) -> None:
    """Chat with a model in the terminal; /help lists the slash commands.

    With stdin not a terminal, each line is a prompt or a slash command: answers go to stdout (one reply
    ends with one newline) and stats, notices and errors go to stderr. The exit status is then 1 if any
    line failed.
    """
    from ossai.chat import ChatOptions, run_chat
    from ossai.engine import Engine, EngineConfig

    options = ChatOptions(
        effort=effort,
        system=system,
        show_reasoning=show_reasoning,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )  # checked before the model loads
    from ossai.tools.agent import ToolSet

    model = _model_or_default(model)
    made = _make_tools(_tool_list(tools), python_sandbox, docs)
    engine = Engine.load(
        _resolve(model), config=EngineConfig(device=device, threads=threads, moe_int8=moe_int8)
    )
    try:
        toolset = ToolSet(list(made.values())) if made else None
        status = run_chat(engine.generate, options, model=model, tools=toolset)
    finally:
        engine.close()  # stop the engine's worker before the interpreter goes
        for tool in made.values():
            tool.close()
    raise typer.Exit(status)


@app.command()
def bench(
    model: ModelArg,
    prompt_tokens: Annotated[int, typer.Option(help="prompt length (random token ids)")] = 512,
    gen_tokens: Annotated[int, typer.Option(help="tokens generated per stream")] = 128,
    concurrency: Annotated[int, typer.Option(help="streams at once for the aggregate figures")] = 8,
    prefix_tokens: Annotated[
        int,
        typer.Option(help="also time a repeated prompt of this length, cold and prefix-cached (0 = skip)"),
    ] = 0,
    kv_cache_mb: Annotated[float | None, typer.Option(help="KV cache size (default: 10% of RAM)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    moe_int8: MoeInt8Opt = False,
) -> None:
    """Measure prefill, single-stream decode, batched decode (aggregate tokens/s, TTFT) and peak memory.

    Figures: prefill_tps and decode_tps for one stream; aggregate_tps, ttft_ms_p50/p99 for --concurrency
    streams submitted together; peak_rss_mb. Sampling is greedy without stop tokens.
    """
    from ossai import bench as benchmark
    from ossai.engine import Engine, EngineConfig

    for name, value in (
        ("prompt-tokens", prompt_tokens),
        ("gen-tokens", gen_tokens),
        ("concurrency", concurrency),
    ):
        if value < 1:
            raise BadRequest(f"--{name} must be at least 1, got {value}")
    config = EngineConfig(
        device=device,
        threads=threads,
        kv_cache_mb=kv_cache_mb,
        max_num_seqs=max(32, concurrency),
        moe_int8=moe_int8,
    )
    engine = Engine.load(_resolve(model), config=config)
    try:
        result = benchmark.run(engine, prompt_tokens, gen_tokens, concurrency, prefix_tokens)
    finally:
        engine.close()
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ossai bench {model}", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Argument(
            help="checkpoint directory or store name to serve alone, loaded now and kept; "
            "omit it to serve every model in the store, each loaded on its first request"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind; loopback by default")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    api_key: Annotated[
        list[str] | None, typer.Option("--api-key", help="require Authorization: Bearer KEY (repeatable)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="the name clients use for MODEL (default: its directory name)")
    ] = None,
    keep_alive: Annotated[
        str | None,
        typer.Option(
            help="without MODEL: how long a model stays loaded after its last request "
            "(30s, 5m, 1h; 0 = unload at once, -1 = forever; default 5m); requests may set their own"
        ),
    ] = None,
    max_loaded_models: Annotated[
        int | None,
        typer.Option(
            help="without MODEL: models loaded at once at most (default 3); the least recently used idle "
            "one makes room"
        ),
    ] = None,
    kv_cache_mb: Annotated[
        float | None, typer.Option(help="KV cache size per model (default: 10% of RAM)")
    ] = None,
    max_concurrency: Annotated[
        int, typer.Option(help="requests generated at once per model; more wait in a queue")
    ] = 32,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="allowed CORS origin (repeatable, or *)")
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="largest request body accepted (413 beyond)")] = 16.0,
    grace_period: Annotated[float, typer.Option(help="seconds to finish requests after SIGTERM")] = 30.0,
    tools: Annotated[
        str | None,
        typer.Option(
            help="built-in tools run for every chat request: python, browser, mcp (comma-separated)"
        ),
    ] = None,
    allow_tools: Annotated[
        str,
        typer.Option(
            help="tools a request may enable (Responses tools, or the `ossai` extension field); add mcp to "
            "let requests use the MCP servers of mcp.json; none for none"
        ),
    ] = "python,browser",
    python_sandbox: PythonSandboxOpt = "bwrap",
    docs: DocsOpt = None,
    searxng: SearxngOpt = None,
    tool_steps: Annotated[int, typer.Option(help="tool calls run for one request at most")] = 8,
    tool_timeout: Annotated[float, typer.Option(help="seconds one tool call may take")] = 180.0,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    moe_int8: MoeInt8Opt = False,
) -> None:
    """Serve models over HTTP: OpenAI API under /v1, Ollama API under /api, /metrics, /health.

    With MODEL, that model alone is served, loaded before the server listens. Without it, the store is
    served (`ossai list`): a request loads the model it names, which is unloaded after --keep-alive idle
    (or the request's keep_alive), and POST /api/pull and DELETE /api/delete manage the store.
    `ossai ps` lists what running servers have loaded.
    """
    import logging as _logging
    import signal
    from pathlib import Path

    import uvicorn

    from ossai import settings
    from ossai.engine import Engine, EngineConfig
    from ossai.engine.device import resolve_device
    from ossai.server import pool as pools
    from ossai.server.app import create_app
    from ossai.server.context import ServerConfig
    from ossai.store import list_models, resources, servers

    keys = tuple(api_key or ()) + settings.api_keys()
    if host not in ("127.0.0.1", "localhost", "::1") and not keys:
        typer.echo(
            f"warning: listening on {host} without an API key: anyone who can reach it can use it", err=True
        )
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def publish(loaded: list[dict]) -> None:
        servers.publish(url, loaded)

    config = EngineConfig(
        device=device,
        threads=threads,
        kv_cache_mb=kv_cache_mb,
        max_num_seqs=max_concurrency,
        moe_int8=moe_int8,
    )
    engine = None
    if model is not None:
        for option, value in (("--keep-alive", keep_alive), ("--max-loaded-models", max_loaded_models)):
            if value is not None:
                raise BadRequest(f"{option} applies without MODEL; a model named on the command line stays")
        checkpoint = _resolve(model)
        plan = resources.plan(checkpoint, device=device, kv_cache_mb=kv_cache_mb)  # refuses what cannot fit
        typer.echo(f"ossai: plan: {plan.summary()}", err=True)
        config.device = plan.device
        engine = Engine.load(checkpoint, config=config)
        served = name or (model if not Path(model).is_dir() else Path(model).resolve().name)
        pool = pools.ModelPool.fixed(served, engine, needed_bytes=plan.needed_bytes, on_change=publish)
        what = served
    else:
        if name is not None:
            raise BadRequest("--name names the MODEL argument; without MODEL, models keep their store names")
        if device != "auto":
            resolve_device(device)  # a bad --device fails now, not at every request
        pool = pools.ModelPool(
            config,
            keep_alive=pools.parse_keep_alive(keep_alive, pools.DEFAULT_KEEP_ALIVE),
            max_loaded=pools.DEFAULT_MAX_LOADED if max_loaded_models is None else max_loaded_models,
            on_change=publish,
        )
        from ossai.store import demo

        if not list_models() and demo.bundled():
            demo.ensure()  # an empty store serves the bundled demo model
        names = [m.name for m in list_models()]
        what = f"the store ({', '.join(names) or 'empty: POST /api/pull or `ossai pull`'})"
    defaults = _tool_list(tools)
    offered = _offered_tools(defaults, _tool_list(allow_tools), python_sandbox, docs, searxng)
    server_config = ServerConfig(
        model_name=pool.default_name,
        home=settings.home(),
        api_keys=keys,
        cors_origins=tuple(cors_origin or ()),
        max_body_bytes=int(max_body_mb * 2**20),
        tools=offered,
        default_tools=tuple(defaults),
        tool_max_steps=tool_steps,
        tool_timeout_s=tool_timeout,
    )
    app_ = create_app(pool, server_config)
    _logging.getLogger("ossai").info("settings: %s", settings.as_dict())
    typer.echo(f"ossai: serving {what} on {url} (OpenAI API at /v1, Ollama API at /api)", err=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # a drained SIGTERM is a clean stop: exit 0, not "killed by signal"
                self._captured_signals.remove(sig)

    config_ = uvicorn.Config(
        app_, host=host, port=port, timeout_graceful_shutdown=grace_period, log_level="warning"
    )
    pool.publish()
    try:
        Server(config_).run()
    finally:
        servers.withdraw()
        for tool in offered.values():
            tool.close()
        if engine is not None:
            engine.close()


# -- tools ------------------------------------------------------------------------------------------------
PythonSandboxOpt = Annotated[
    str,
    typer.Option(
        "--python-sandbox",
        help="how python tool code is isolated: bwrap (bubblewrap: no network, read-only filesystem, limits) "
        "or none (a plain subprocess with the same limits but no isolation: only for code you trust)",
    ),
]
DocsOpt = Annotated[
    list[Path] | None,
    typer.Option("--docs", help="a directory of documents (md, txt, html) for the browser (repeatable)"),
]
SearxngOpt = Annotated[
    str | None,
    typer.Option(
        "--searxng", help="a SearXNG URL: lets the browser search and open the web (off by default)"
    ),
]


def _tool_list(text: str | None) -> list[str]:
    from ossai.server.context import TOOL_NAMES

    names = [n.strip() for n in (text or "").split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in TOOL_NAMES:
            raise BadRequest(f"unknown tool {name!r}; the tools are {', '.join(TOOL_NAMES)}")
    return list(dict.fromkeys(names))


def _make_tools(
    names: list[str],
    python_sandbox: str = "bwrap",
    docs: list[Path] | None = None,
    searxng: str | None = None,
) -> dict:
    """The tools by name, configured from the ossai home (`mcp.json`, the browser's index)."""
    home = settings.home()
    made: dict = {}
    for name in names:
        if name == "python":
            from ossai.tools.python import PythonTool

            if python_sandbox not in ("bwrap", "none"):
                raise BadRequest(f"--python-sandbox must be bwrap or none, got {python_sandbox!r}")
            made[name] = PythonTool(home / "python", sandbox=python_sandbox, hidden=[home])  # type: ignore[arg-type]
        elif name == "browser":
            from ossai.tools.browser import BrowserTool, LocalIndex, SearxngBackend, bundled_docs

            for directory in docs or []:
                if not directory.is_dir():
                    raise BadRequest(f"--docs {directory}: no such directory")
            index = LocalIndex([bundled_docs(), *(docs or [])], home / "browser" / "index.sqlite3")
            made[name] = BrowserTool(index, SearxngBackend(searxng) if searxng else None)
        elif name == "mcp":
            from ossai.tools.mcp import McpTools, load_config

            configs = load_config(home / "mcp.json")
            if configs:
                made[name] = McpTools(configs)
                made[name].start()  # connect now: a server that fails says so at start, not mid-reply
    return made


def _offered_tools(
    defaults: list[str], allowed: list[str], python_sandbox: str, docs: list[Path] | None, searxng: str | None
) -> dict:
    """The tools a server offers: those it runs always must work; an allowed one that cannot (no
    bubblewrap, a broken mcp.json) is left out with a warning."""
    offered = _make_tools(defaults, python_sandbox, docs, searxng)
    for name in allowed:
        if name in offered:
            continue
        try:
            offered |= _make_tools([name], python_sandbox, docs, searxng)
        except OssaiError as exc:
            typer.echo(f"ossai: the {name} tool is not offered: {exc}", err=True)
    return offered


tool_app = typer.Typer(
    help="Run a tool as the model would, and print what the model would see.", no_args_is_help=True
)
app.add_typer(tool_app, name="tool")


@tool_app.command("python")
def tool_python(
    session: Annotated[str, typer.Option(help="the session (its working directory) to run in")] = "cli",
    python_sandbox: PythonSandboxOpt = "bwrap",
) -> None:
    """Run python code from stdin in the model's sandbox and print what the model would see.

    Exit status 1 when the code failed (an exception, a limit). Variables last as long as this command;
    files written to /mnt/data stay in the session's directory while the session lives.
    """
    tool = _make_tools(["python"], python_sandbox)["python"]
    try:
        result = tool.call("python", sys.stdin.read(), session)
    finally:
        tool.close()
    typer.echo(result.text)
    raise typer.Exit(1 if result.error else 0)


@tool_app.command("browser")
def tool_browser(
    actions: Annotated[
        list[str],
        typer.Argument(
            help="one or more actions run in order in one session: search QUERY, open ID_OR_URL, find PATTERN"
        ),
    ],
    docs: DocsOpt = None,
    searxng: SearxngOpt = None,
) -> None:
    """Use the browser as the model would: `ossai tool browser search "kv cache" open 0 find block`.

    Offline by default: it searches and opens the bundled ossai documents and any --docs directories.
    """
    if len(actions) % 2:
        raise BadRequest("actions come in pairs: search QUERY, open ID_OR_URL or find PATTERN")
    tool = _make_tools(["browser"], docs=docs, searxng=searxng)["browser"]
    failed = False
    try:
        for verb, value in zip(actions[::2], actions[1::2], strict=True):
            if verb not in ("search", "open", "find"):
                raise BadRequest(f"unknown browser action {verb!r}: use search, open or find")
            key = {"search": "query", "open": "id", "find": "pattern"}[verb]
            arg: str | int = int(value) if verb == "open" and value.lstrip("-").isdigit() else value
            result = tool.call(f"browser.{verb}", json.dumps({key: arg}), "cli")
            typer.echo(result.text)
            failed = failed or result.error
    finally:
        tool.close()
    raise typer.Exit(1 if failed else 0)


mcp_app = typer.Typer(help="MCP servers (configured in $OSSAI_HOME/mcp.json).", no_args_is_help=True)
app.add_typer(mcp_app, name="mcp")


@mcp_app.command("list")
def mcp_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Connect to each configured MCP server and list its tools (as the model sees them: SERVER__TOOL)."""
    from ossai.tools.mcp import describe, load_config

    path = settings.home() / "mcp.json"
    configs = load_config(path)
    if not configs:
        typer.echo(f"no MCP servers configured; add them to {path} (see README)", err=True)
        if as_json:
            typer.echo("[]")
        return
    servers = describe(configs)
    if as_json:
        typer.echo(json.dumps(servers))
        return
    for server in servers:
        status = server["status"] if server["status"] == "ok" else f"error: {server['error']}"
        typer.echo(f"{server['name']} ({server['transport']}, {server['target']}): {status}")
        for tool in server["tools"]:
            typer.echo(f"  {tool['function']}  {tool['description']}".rstrip())


# -- the model store ----------------------------------------------------------------------------------
LayoutOpt = Annotated[str, typer.Option(help="which layout to download: original (default) or hf")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


class _PullProgress:
    """A rich bar (bytes, speed, ETA) on a terminal; one line per finished file otherwise."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.bar = None
        self.task = None
        self.started = 0.0
        self.fetched = 0
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )

    def __enter__(self) -> _PullProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start(self, path: str, total: int, done: int, sha256: str | None = None) -> None:
        self.started = time.perf_counter()
        self.fetched = 0
        if self.bar is not None:
            self.task = self.bar.add_task(path, total=total, completed=done)

    def advance(self, nbytes: int) -> None:
        self.fetched += nbytes
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=nbytes)

    def finish(self, path: str) -> None:
        if self.bar is None:
            seconds = max(time.perf_counter() - self.started, 1e-6)
            typer.echo(
                f"{path}: {self.fetched / 1e6:,.1f} MB fetched at {self.fetched / 1e6 / seconds:,.1f} MB/s",
                err=True,
            )


def _validator():
    from ossai.model.weights import Checkpoint

    return Checkpoint.open


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="gpt-oss:20b, gpt-oss:120b or owner/repo[@revision]")],
    layout: LayoutOpt = "original",
) -> None:
    """Download a model from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN honoured) into the store.

    Only one layout is fetched; partial files survive errors and Ctrl-C, and the same command resumes.
    """
    from ossai.store import hub

    try:
        with _PullProgress() as progress:
            manifest = hub.pull(name, layout=layout, validate=_validator(), progress=progress)
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"pulled {manifest.name} ({manifest.source}@{(manifest.revision or '')[:12]}, "
               f"{manifest.size / 1e9:.2f} GB, {manifest.layout} layout)")  # fmt: skip


@app.command(name="import")
def import_(
    path: Annotated[str, typer.Argument(help="checkpoint directory (either layout)")],
    name: Annotated[str | None, typer.Option(help="store name (default: the directory name)")] = None,
    link: Annotated[
        bool, typer.Option("--link/--copy", help="register the directory in place (default) or copy it")
    ] = True,
) -> None:
    """Register an existing checkpoint directory in the store, after validating every tensor."""
    from ossai.store import import_model

    manifest = import_model(path, name, "link" if link else "copy", _validator())
    typer.echo(f"imported {manifest.name} ({manifest.layout} layout, {manifest.size / 1e9:.2f} GB)")


@app.command(name="list")
def list_(as_json: JsonOpt = False) -> None:
    """List the models in the store (with an empty store, the bundled ossai-demo is unpacked into it)."""
    from ossai.store import demo, list_models

    if not list_models() and demo.bundled():
        demo.ensure()
    found = list_models()
    if as_json:
        typer.echo(json.dumps([m.to_json() for m in found]))
        return
    if not found:
        typer.echo("no models; add one with `ossai pull gpt-oss:20b` or `ossai import DIR`", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, box=None)
    for column in ("name", "size", "layout", "source", "added"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for m in found:
        source = m.extra.get("description") or m.source
        table.add_row(m.name, f"{m.size / 1e9:.2f} GB", m.layout, source, m.added)
    Console().print(table)


@app.command()
def show(name: Annotated[str, typer.Argument(help="store name")], as_json: JsonOpt = False) -> None:
    """Show a stored model: architecture, parameters, files, size and the memory it needs."""
    from ossai.store import show as describe

    info = describe(name)
    if as_json:
        typer.echo(json.dumps(info))
        return
    memory, params = info["memory_estimate"], info["parameters"]
    lines = [
        ("name", info["name"]),
        ("source", f"{info['source']}" + (f"@{info['revision']}" if info["revision"] else "")),
        ("path", info["path"]),
        ("architecture", info["architecture"]),
        ("parameters", f"{info['parameters'] / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"),
        ("layers", info["layers"]),
        ("experts", f"{info['experts']} ({info['experts_per_token']} per token)"),
        ("quantization", info["quantization"]),
        ("context length", info["context_length"]),
        ("layout", info["layout"]),
        ("size", f"{info['size'] / 1e9:.2f} GB in {len(info['files'])} files"),
        (
            "memory needed",
            f"{memory['total_bytes'] / 1e9:.2f} GB (weights + KV for {memory['context']} tokens)",
        ),
    ]
    for key, value in lines:
        typer.echo(f"{key:>15}  {value}")
    for file in info["files"]:
        typer.echo(f"{'':>15}  {file['size'] / 1e6:>10,.1f} MB  {file['path']}")


@app.command()
def rm(
    name: Annotated[str, typer.Argument(help="store name")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Remove a model from the store (a linked import's own directory is left alone).

    Refused while a running `ossai serve` has the model loaded (see `ossai ps`)."""
    from ossai.errors import ModelLoadError
    from ossai.store import get, remove, servers

    try:
        found = get(name)
        what = f"{found.name} ({found.size / 1e9:.2f} GB)"
    except ModelLoadError:
        what = f"{name} (damaged manifest)"
    else:
        servers.check_unused(found.name, found.directory, ignore_self=False)
    if not yes and not typer.confirm(f"remove {what}?"):
        raise typer.Exit(1)
    manifest = remove(name)
    typer.echo(f"removed {manifest.name}")


@app.command()
def ps(as_json: JsonOpt = False) -> None:
    """List the models that running ossai servers have loaded, with device, memory and expiry."""
    from ossai.store import servers

    records = servers.running()
    rows = [{"server": r.get("url"), "pid": r["pid"], **m} for r in records for m in r.get("models", [])]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not records:
        typer.echo("no ossai server is running (start one with `ossai serve`)", err=True)
        return
    if not rows:
        urls = ", ".join(str(r.get("url")) for r in records)
        typer.echo(f"no models loaded (server(s) running at {urls}); a request loads one", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, box=None)
    for column in ("name", "memory", "device", "context", "until", "server"):
        table.add_column(column, justify="right" if column in ("memory", "context") else "left")
    for row in rows:
        memory = row.get("memory_bytes") or 0
        table.add_row(row["name"], f"{memory / 1e9:.2f} GB", row["device"], str(row["context_length"]),
                      _until(row), str(row["server"]))  # fmt: skip
    Console().print(table)


def _until(row: dict) -> str:
    """When a loaded model will be unloaded, as `ollama ps` says it."""
    if row.get("requests"):
        return f"in use ({row['requests']} request(s))"
    expires = row.get("expires_at")
    if expires is None:
        return "forever"
    left = max(0.0, expires - time.time())
    for unit, seconds in (("hour", 3600), ("minute", 60)):
        if left >= seconds:
            count = round(left / seconds)
            return f"in {count} {unit}{'s' if count != 1 else ''}"
    return f"in {round(left)} seconds"


def main() -> None:
    try:
        app()
    except OssaiError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, traceback on request
        if settings.debug():
            raise
        typer.echo(
            f"error: internal error: {type(exc).__name__}: {exc} (set OSSAI_DEBUG=1 for details)", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
