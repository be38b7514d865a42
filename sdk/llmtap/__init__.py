"""llmtap: OpenTelemetry measurement of LLM calls (TTFT, ITL, TPOT, tokens, cold starts)."""

__version__ = "0.1.0"
