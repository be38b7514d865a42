"""Every metric, attribute and event name llmtap emits, in one place.

GenAI names come from the official semantic-conventions package (v1.41 names) where the installed
version has them; the fallbacks below only cover older installs. Our own names live under `llmtap.*`.
"""

from __future__ import annotations

from llmtap.tokens import SOURCE_ESTIMATE, SOURCE_PROVIDER, SOURCE_TOKENIZER

try:  # official constants (opentelemetry-semantic-conventions >= 0.48b0)
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _attrs
    from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as _metrics
except ImportError:  # pragma: no cover - very old semconv package
    _attrs = None
    _metrics = None


def _official(module: object, constant: str, fallback: str) -> str:
    return str(getattr(module, constant, fallback)) if module is not None else fallback


def _attr(constant: str, fallback: str) -> str:
    return _official(_attrs, constant, fallback)


def _metric(constant: str, fallback: str) -> str:
    return _official(_metrics, constant, fallback)


# --- GenAI span attributes (semconv v1.41) ---
OPERATION_NAME = _attr("GEN_AI_OPERATION_NAME", "gen_ai.operation.name")
PROVIDER_NAME = _attr("GEN_AI_PROVIDER_NAME", "gen_ai.provider.name")
REQUEST_MODEL = _attr("GEN_AI_REQUEST_MODEL", "gen_ai.request.model")
REQUEST_MAX_TOKENS = _attr("GEN_AI_REQUEST_MAX_TOKENS", "gen_ai.request.max_tokens")
REQUEST_TEMPERATURE = _attr("GEN_AI_REQUEST_TEMPERATURE", "gen_ai.request.temperature")
REQUEST_TOP_P = _attr("GEN_AI_REQUEST_TOP_P", "gen_ai.request.top_p")
REQUEST_TOP_K = _attr("GEN_AI_REQUEST_TOP_K", "gen_ai.request.top_k")
REQUEST_STOP_SEQUENCES = _attr("GEN_AI_REQUEST_STOP_SEQUENCES", "gen_ai.request.stop_sequences")
REQUEST_SEED = _attr("GEN_AI_REQUEST_SEED", "gen_ai.request.seed")
REQUEST_CHOICE_COUNT = _attr("GEN_AI_REQUEST_CHOICE_COUNT", "gen_ai.request.choice.count")
REQUEST_FREQUENCY_PENALTY = _attr("GEN_AI_REQUEST_FREQUENCY_PENALTY", "gen_ai.request.frequency_penalty")
REQUEST_PRESENCE_PENALTY = _attr("GEN_AI_REQUEST_PRESENCE_PENALTY", "gen_ai.request.presence_penalty")
REQUEST_STREAM = _attr("GEN_AI_REQUEST_STREAM", "gen_ai.request.stream")
RESPONSE_MODEL = _attr("GEN_AI_RESPONSE_MODEL", "gen_ai.response.model")
RESPONSE_ID = _attr("GEN_AI_RESPONSE_ID", "gen_ai.response.id")
RESPONSE_FINISH_REASONS = _attr("GEN_AI_RESPONSE_FINISH_REASONS", "gen_ai.response.finish_reasons")
RESPONSE_TIME_TO_FIRST_CHUNK = _attr(
    "GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK", "gen_ai.response.time_to_first_chunk"
)
USAGE_INPUT_TOKENS = _attr("GEN_AI_USAGE_INPUT_TOKENS", "gen_ai.usage.input_tokens")
USAGE_OUTPUT_TOKENS = _attr("GEN_AI_USAGE_OUTPUT_TOKENS", "gen_ai.usage.output_tokens")
USAGE_CACHE_READ_INPUT_TOKENS = _attr(
    "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS", "gen_ai.usage.cache_read.input_tokens"
)
USAGE_CACHE_CREATION_INPUT_TOKENS = _attr(
    "GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS", "gen_ai.usage.cache_creation.input_tokens"
)
USAGE_REASONING_OUTPUT_TOKENS = _attr(
    "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS", "gen_ai.usage.reasoning.output_tokens"
)
TOKEN_TYPE = _attr("GEN_AI_TOKEN_TYPE", "gen_ai.token.type")
INPUT_MESSAGES = _attr("GEN_AI_INPUT_MESSAGES", "gen_ai.input.messages")
OUTPUT_MESSAGES = _attr("GEN_AI_OUTPUT_MESSAGES", "gen_ai.output.messages")

TOKEN_TYPE_INPUT = "input"
TOKEN_TYPE_OUTPUT = "output"

# --- general semantic conventions ---
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_REQUEST_RESEND_COUNT = "http.request.resend_count"  # the SDK's retries: attempt number - 1
URL_PATH = "url.path"

# --- llmtap's own span attributes ---
TTFT = "llmtap.ttft"
TPOT = "llmtap.tpot"
COLD_START = "llmtap.cold_start"
OBSERVER = "llmtap.observer"
NORMALIZED_INPUT_TOKENS = "llmtap.usage.normalized_input_tokens"
NORMALIZED_OUTPUT_TOKENS = "llmtap.usage.normalized_output_tokens"
NORMALIZED_TOKENIZER = "llmtap.usage.normalized_tokenizer"
USAGE_SOURCE = "llmtap.usage.source"
PROXY_OVERHEAD = "llmtap.proxy.overhead"
UPSTREAM_TIME_TO_HEADERS = "llmtap.upstream.time_to_headers"
CONTENT_CHUNKS = "llmtap.content_chunks"
OUTPUT_THROUGHPUT = "llmtap.output_throughput"
NORMALIZED_OUTPUT_THROUGHPUT = "llmtap.normalized_output_throughput"
PREFILL_RATE = "llmtap.prefill_rate"
DECODE_RATE = "llmtap.decode_rate"
NORMALIZED_REASONING_TOKENS = "llmtap.usage.normalized_reasoning_tokens"
NORMALIZED_TOOL_CALL_TOKENS = "llmtap.usage.normalized_tool_call_tokens"

OBSERVER_PROXY = "proxy"
OBSERVER_SDK = "sdk"
USAGE_SOURCE_PROVIDER = SOURCE_PROVIDER
USAGE_SOURCE_TOKENIZER = SOURCE_TOKENIZER
USAGE_SOURCE_ESTIMATE = SOURCE_ESTIMATE

# --- span events ---
EVENT_FIRST_TOKEN = "llmtap.first_token"

# --- durations the model server reports (Ollama), in seconds ---
SERVER_LOAD_DURATION = "llmtap.server.load_duration"
SERVER_PROMPT_EVAL_DURATION = "llmtap.server.prompt_eval_duration"
SERVER_EVAL_DURATION = "llmtap.server.eval_duration"

# --- error.type values of our own (others are HTTP status codes or exception class names) ---
ERROR_CANCELLED = "cancelled"
ERROR_TIMEOUT = "timeout"
ERROR_UPSTREAM_UNREACHABLE = "upstream_unreachable"
ERROR_UPSTREAM_CLOSED = "upstream_closed"
ERROR_STREAM = "stream_error"
ERROR_REQUEST_TOO_LARGE = "request_too_large"

# --- metrics (semconv v1.41 names) ---
METRIC_OPERATION_DURATION = _metric("GEN_AI_CLIENT_OPERATION_DURATION", "gen_ai.client.operation.duration")
METRIC_TOKEN_USAGE = _metric("GEN_AI_CLIENT_TOKEN_USAGE", "gen_ai.client.token.usage")
METRIC_TIME_TO_FIRST_CHUNK = _metric(
    "GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK", "gen_ai.client.operation.time_to_first_chunk"
)
METRIC_TIME_PER_OUTPUT_CHUNK = _metric(
    "GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK", "gen_ai.client.operation.time_per_output_chunk"
)
METRIC_SERVER_TIME_TO_FIRST_TOKEN = _metric(
    "GEN_AI_SERVER_TIME_TO_FIRST_TOKEN", "gen_ai.server.time_to_first_token"
)
METRIC_SERVER_TIME_PER_OUTPUT_TOKEN = _metric(
    "GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN", "gen_ai.server.time_per_output_token"
)
METRIC_OUTPUT_THROUGHPUT = "llmtap.output_throughput"
NORMALIZED_OUTPUT_THROUGHPUT = "llmtap.normalized_output_throughput"
PREFILL_RATE = "llmtap.prefill_rate"
DECODE_RATE = "llmtap.decode_rate"
NORMALIZED_REASONING_TOKENS = "llmtap.usage.normalized_reasoning_tokens"
NORMALIZED_TOOL_CALL_TOKENS = "llmtap.usage.normalized_tool_call_tokens"
METRIC_NORMALIZED_TOKENS = "llmtap.usage.normalized_tokens"
METRIC_NORMALIZED_OUTPUT_THROUGHPUT = "llmtap.normalized_output_throughput"
METRIC_PREFILL_RATE = "llmtap.prefill_rate"
METRIC_DECODE_RATE = "llmtap.decode_rate"
METRIC_PROXY_OVERHEAD = "llmtap.proxy.overhead"
METRIC_REQUESTS_ACTIVE = "llmtap.requests.active"
METRIC_COLD_STARTS = "llmtap.cold_starts"
METRIC_INTERNAL_ERRORS = "llmtap.internal.errors"
METRIC_EXPORT_FAILURES = "llmtap.telemetry.export_failures"

# --- bucket boundaries recommended by the GenAI conventions ---
BUCKETS_DURATION = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
BUCKETS_TOKENS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)
BUCKETS_TIME_TO_FIRST_TOKEN = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
BUCKETS_TIME_PER_OUTPUT_TOKEN = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# Our own: tokens/s per call, and the proxy's added time (sub-millisecond resolution).
BUCKETS_THROUGHPUT = (1, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)
BUCKETS_PREFILL_RATE = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000)
BUCKETS_PROXY_OVERHEAD = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)

# Low-cardinality attributes allowed on metrics. Never ids, prompts or users.
METRIC_ATTRIBUTES = (
    OPERATION_NAME,
    PROVIDER_NAME,
    REQUEST_MODEL,
    RESPONSE_MODEL,
    SERVER_ADDRESS,
    SERVER_PORT,
    ERROR_TYPE,
    COLD_START,
)

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
