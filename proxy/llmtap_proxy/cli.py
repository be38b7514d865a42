"""The `llmtap` command: serve, sim, demo, bench, report."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from llmtap_proxy.config import ConfigError, load_settings


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmtap", description="OpenTelemetry proxy for LLM traffic.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the streaming proxy")
    serve.add_argument("--upstream", help="default upstream URL (env LLMTAP_UPSTREAM)")
    serve.add_argument("--host", help="bind address, default 127.0.0.1 (env LLMTAP_HOST)")
    serve.add_argument("--port", type=int, help="port, default 8787 (env LLMTAP_PORT)")
    serve.add_argument("--config", help="YAML routes file (env LLMTAP_CONFIG)")
    serve.add_argument(
        "--metrics-port", type=int, nargs="?", const=9464,
        help="serve Prometheus metrics on this port (9464 if given without a value; env LLMTAP_METRICS_PORT)",
    )
    serve.add_argument(
        "--cold-start-idle", type=float, metavar="SECONDS",
        help="a call after this much idle time per (upstream, model) is a cold start; default 300 "
        "(env LLMTAP_COLD_START_IDLE)",
    )
    serve.add_argument(
        "--inject-stream-usage", action="store_true", default=None,
        help="ask OpenAI-style streams for usage and hide the usage event from clients that did not ask "
        "(env LLMTAP_INJECT_STREAM_USAGE)",
    )
    serve.add_argument(
        "--telemetry-file", metavar="PATH",
        help="also append spans and metrics to PATH as OTLP JSON lines, for `llmtap report` "
        "(env LLMTAP_TELEMETRY_FILE)",
    )
    serve.add_argument(
        "--workers", type=int, metavar="N",
        help="worker processes sharing the port, each with its own event loop and telemetry; default 1 "
        "(env LLMTAP_WORKERS). In Kubernetes prefer one worker per pod and more replicas",
    )
    serve.add_argument("--log-level", default=os.environ.get("LLMTAP_LOG_LEVEL", "info"))

    sim = commands.add_parser("sim", help="run the simulated LLM backend (OpenAI + Anthropic APIs)")
    sim.add_argument("--host", default=os.environ.get("LLMTAP_SIM_HOST", "127.0.0.1"))
    sim.add_argument("--port", type=int, default=int(os.environ.get("LLMTAP_SIM_PORT", "8000")))
    sim.add_argument("--ttft-ms", type=float, default=_env_float("LLMTAP_SIM_TTFT_MS", 50.0))
    sim.add_argument("--itl-ms", type=float, default=_env_float("LLMTAP_SIM_ITL_MS", 20.0))
    sim.add_argument("--tokens", type=int, default=int(_env_float("LLMTAP_SIM_TOKENS", 64)))
    sim.add_argument("--tokens-per-chunk", type=int, default=int(_env_float("LLMTAP_SIM_TOKENS_PER_CHUNK", 1)))
    sim.add_argument("--jitter-ms", type=float, default=_env_float("LLMTAP_SIM_JITTER_MS", 0.0))
    sim.add_argument("--seed", type=int, default=int(_env_float("LLMTAP_SIM_SEED", 0)))
    sim.add_argument("--model", default=os.environ.get("LLMTAP_SIM_MODEL", "sim-small"))

    demo = commands.add_parser("demo", help="simulated backend + proxy + a burst of streams, then a table")
    demo.add_argument("--requests", type=int, default=16, help="concurrent streams per model")

    from llmtap_proxy import bench, report

    bench.add_arguments(commands.add_parser("bench", help="load-test an OpenAI or Anthropic endpoint; raw JSONL out"))
    report.add_arguments(commands.add_parser("report", help="tables and plots from bench JSONL or OTLP JSON files"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            settings = load_settings(
                upstream=args.upstream, host=args.host, port=args.port, config_file=args.config,
                metrics_port=args.metrics_port, cold_start_idle=args.cold_start_idle,
                inject_stream_usage=args.inject_stream_usage, telemetry_file=args.telemetry_file,
                workers=args.workers,
            )
        except ConfigError as exc:
            print(f"llmtap: configuration error: {exc}", file=sys.stderr)
            return 2
        from llmtap_proxy.server import serve

        return serve(settings)
    if args.command == "sim":
        from llmtap_proxy.sim import SimProfile, run_sim

        profile = SimProfile(
            ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, output_tokens=args.tokens,
            tokens_per_chunk=args.tokens_per_chunk, jitter_ms=args.jitter_ms, seed=args.seed, model=args.model,
        )
        run_sim(args.host, args.port, profile)
        return 0
    if args.command == "demo":
        from llmtap_proxy.demo import main as demo_main

        return demo_main(args.requests)
    if args.command == "bench":
        from llmtap_proxy.bench import main as bench_main

        return bench_main(args)
    if args.command == "report":
        from llmtap_proxy.report import main as report_main

        return report_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
