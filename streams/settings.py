"""One settings object for every process: env vars with the ``MMSR_`` prefix, overridable by CLI flags."""
from __future__ import annotations

from pathlib import Path

from typing import Iterable, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.llm.pipeline import TEXT

WILDCARD_HOSTS = {"0.0.0.0", "::", ""}  # binds every interface: no address another worker can reach


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMSR_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    data_dir: Path = Field(Path(".mmsr"), description="RocksDB state, broker data and model caches")
    app_id: str = Field("mmsr", description="Faust app id: consumer group and changelog prefix")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every client connects to Kafka (the worker, producers, replay, admin, recs tail)"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism, with a SASL_ security protocol"
    )
    sasl_username: str = Field("", description="SASL user (from the environment: MMSR_SASL_USERNAME)")
    sasl_password: SecretStr = Field(
        SecretStr(""), description="SASL password: set MMSR_SASL_PASSWORD in the environment; never logged or shown"
    )
    ssl_cafile: Path | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates (default: the system's store)"
    )
    web_host: str = Field("127.0.0.1", description="interface the worker's web server binds")
    web_port: int = Field(6066, description="port of the worker's web server")
    web_advertised_host: str = Field(
        "", description="host other workers reach this one's web server by (GET /users/{id} is forwarded to the "
                        "partition's owner); empty: MMSR_WEB_HOST, or this machine's address where that binds every "
                        "interface")

    web_forward_timeout: float = Field(5.0, gt=0, description="longest wait for another worker's answer to a "
                                                              "forwarded GET /users/{id} (then 503, retry)")

    topic_items: str = Field("items", description="catalog events, keyed by item_id")
    topic_interactions: str = Field("interactions", description="interaction events, keyed by user_id")
    topic_user_summaries: str = Field("user-summaries", description="summary events, keyed by user_id")
    topic_recommendations: str = Field("recommendations", description="top-k lists, keyed by user_id")
    topic_dead_letters: str = Field("dead-letters", description="rejected events with the reason")
    topic_caption_requests: str = Field(
        "caption-requests", description="items waiting for a caption, keyed by item_id (partitioned like items)"
    )
    topic_item_pairs: str = Field(
        "item-pairs", description="co-occurrence and count increments, re-keyed by item_id (partitioned like items)"
    )
    topic_summary_requests: str = Field(
        "summary-requests", description="state role -> llm role: a user's previous summary and full blocks, keyed by user_id"
    )
    topic_rerank_requests: str = Field(
        "rerank-requests", description="state role -> llm role: a user's summary and candidates to re-rank, keyed by user_id"
    )
    topic_captions: str = Field(
        "captions", description="llm role -> state role: captions written for caption requests, keyed by item_id"
    )
    role: Literal["all", "state", "llm"] = Field(
        "all", description="all: one process does everything; state: events, state, candidate lists, and requests "
        "for the llm role; llm: captions, summaries and re-ranking from the request topics (no user state; its "
        "own consumer group, <app_id>-llm)"
    )
    summary_request_timeout: float = Field(
        900.0, gt=0, description="state role: seconds before an unanswered summary request is sent again"
    )
    user_partitions: int = Field(4, description="partitions of the user-keyed topics (co-partitioned)")
    item_partitions: int = Field(2, description="partitions of the items topic")
    session_timeout: float = Field(
        45.0, description="consumer group session timeout, seconds: how soon a crashed worker's partitions move"
    )
    replication_factor: int = Field(1, description="replication factor for created topics")
    producer_linger: float = Field(
        0.005, ge=0, description="seconds the worker's producer waits to batch messages (changelogs, increments, "
        "lists): one socket write per batch instead of per message"
    )
    producer_batch_bytes: int = Field(1_048_576, gt=0, description="largest batch per partition the worker's producer sends")
    fetch_wait_ms: int = Field(
        50, gt=0, description="longest the broker holds the worker's fetch for partitions with no new records (Faust "
        "fixes 1,500 ms): a held fetch keeps the consumer from fetching any other partition, so a stage whose input is "
        "another stage's output (item-pairs) stalled the worker for up to that long"
    )
    poll_records: int = Field(
        1000, gt=0, description="most records the consumer hands the streams per poll: without a limit one poll of a "
        "backlog returned all of it (8 MB per partition), and no other topic's records came until it was delivered"
    )
    loop_turn_every: int = Field(
        8, gt=0, description="messages Faust's streams and consumer deliver between turns of the event loop (Faust: "
        "1, a pass of the loop per message for each; measured in bench/ingest.py)"
    )
    malloc_keep_mb: int = Field(
        256, ge=0, le=1024, description="freed heap the worker's C allocator keeps for reuse instead of returning it to the "
        "system (glibc; 0: glibc's defaults), so the fold's buffers are not written into freshly zeroed pages"
    )
    standby_replicas: int = Field(
        0, ge=0, description="standby copies of each user-state partition kept warm on other workers, so a takeover "
        "need not replay the whole changelog"
    )

    top_k: int = Field(10, gt=0, description="items per recommendation list")
    history_tail: int = Field(50, gt=0, description="recent interactions kept per user")
    seen_cap: int = Field(5000, gt=0, description="most item ids remembered per user for history exclusion")
    recency_half_life: float = Field(10.0, description="half-life, in interactions, of the user vector's recency weights")
    recent_for_vector: int = Field(20, gt=0, description="recent items averaged into the user vector")
    debounce_seconds: float = Field(0.5, ge=0, description="quiet time per user before a list is emitted")
    debounce_max_seconds: float = Field(5.0, ge=0, description="longest a list waits for a user's events to "
                                                                "pause: a user active more often than the debounce "
                                                                "still gets one this long after the first event")
    emit_max_lists: int = Field(2000, ge=1, description="most lists built in one emit turn (the rest wait for the next)")
    last_lists_kept: int = Field(100_000, ge=0, description="newest lists kept in memory for GET /users/{id} (the "
                                                         "least recently emitted go first)")
    emit_interval: float = Field(0.05, gt=0, description="seconds between checks for lists that are due")

    # -- the candidate stage -------------------------------------------------------------------
    cooccurrence: bool = Field(True, description="pair each interaction with the user's previous items (off: counts only)")
    cooc_window: int = Field(20, gt=0, le=1000, description="previous items of the user paired with each interaction (W)")
    cooc_neighbours: int = Field(200, gt=0, description="neighbours kept per item (M)")
    cooc_decay: float = Field(0.8, gt=0, le=1, description="pair weight factor per step of distance (1: none)")
    cooc_query_half_life: float = Field(
        3.0, ge=0, description="half-life, in items, of a recent item's weight in the co-occurrence query (0: equal)"
    )
    trending_half_life_days: float = Field(14.0, gt=0, description="half-life of trending counts, days of event time")
    retrieval_model: str = Field(
        "none", description="sequential model directory from `mmsr train-retrieval`: SASRec and EASE (watched for new "
        "versions); 'none': off"
    )
    retrieval_poll_seconds: float = Field(5.0, gt=0, description="how often the sequential model directory is checked")
    source_candidates: int = Field(100, gt=0, description="candidates each source proposes before blending")
    # fitted on ML-100K's validation window (the last 10% of the pre-split events, offline replay of the
    # same sources: bench/blend_grid.py, with the full-softmax SASRec of models.config.SequentialSourceConfig
    # and EASE at models.config.EaseConfig); content kept at 0.02, so items too new for the other sources
    # can still be proposed
    weight_cooccurrence: float = Field(1.0, ge=0, description="blend weight of item co-occurrence")
    weight_sequential: float = Field(1.0, ge=0, description="blend weight of the sequential model")
    weight_ease: float = Field(0.6, ge=0, description="blend weight of EASE, trained beside the sequential model "
                               "(its directory, MMSR_RETRIEVAL_MODEL)")
    weight_content: float = Field(0.02, ge=0, description="blend weight of content similarity (item-text embeddings)")
    weight_trending: float = Field(0.05, ge=0, description="blend weight of trending items")
    rrf_k: float = Field(60.0, gt=0, description="reciprocal-rank fusion constant k0 in w / (k0 + rank)")
    freshness_seconds: float = Field(
        3600.0, description="events older than this (by event_time) emit no list: backfill"
    )
    summary_block: int = Field(TEXT.block_size, gt=0, description="interactions per recurrent summary block (B)")
    index_resync_seconds: float = Field(
        300.0, ge=0, description="also rebuild the retrieval index from the item table this often, off the event "
        "loop (0: never; the index follows the table's changelog between rebuilds)"
    )
    popularity_refresh_seconds: float = Field(
        2.0, gt=0, description="how often the popularity ranking is re-sorted, off the event loop"
    )
    interaction_batch: int = Field(500, gt=0, description="interactions applied per micro-batch (one state write per user)")
    interaction_within: float = Field(0.02, description="seconds to wait while filling an interaction batch")
    increments_batch: int = Field(
        128, gt=0, description="item-pairs messages folded per batch (each carries up to a batch of interactions)")
    increments_within: float = Field(
        1.0, ge=0, description="seconds to wait while filling a batch of item increments: each batch rewrites every "
        "item record it touches (up to MMSR_COOC_NEIGHBOURS neighbours), so fuller batches write far fewer bytes "
        "(the trade-off against lag is measured in bench/ingest.py)"
    )
    pairs_format: Literal["binary", "json"] = Field(
        "binary", description="how the interactions stage writes item-pairs messages: binary (each id once per "
        "message, cheaper to parse) or json (what workers before it read: for a rolling upgrade, "
        "until every worker runs this version). Both are always read"
    )
    increments_quiet: float = Field(
        0.1, ge=0, description="seconds without a new item-pairs message after which a batch is folded without waiting "
        "out MMSR_INCREMENTS_WITHIN: the end of a burst reaches the records at once (0: always wait it out)"
    )
    embed_model: str = Field("minilm", description="text embedding model: 'minilm', a hub id or a path")
    embed_batch: int = Field(64, gt=0, description="items embedded per model call")
    embed_within: float = Field(0.5, description="seconds to wait while filling an embedding batch")
    device: str = Field("auto", description="torch device: auto, cpu, cuda")
    model_threads: int = Field(2, ge=1, description="threads that run model calls at once (embedding, captions, "
                                                     "summaries, scoring); lists, scans and broker reads have their own")
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads in the worker (0: torch's default); 1 suits a retrieval-only "
        "worker, whose small model calls (SASRec) are slowed by thread hand-offs"
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="the worker's event loop: uvloop (libuv; Faust's per-message overhead is mostly loop "
        "scheduling, which it does faster: bench/faust_floor.py) or asyncio's own")
    model_dtype: str = Field("auto", description="torch dtype of the re-ranker: auto (bf16 on CUDA, else fp32), float32, bfloat16")
    generation_dtype: str = Field(
        "auto", description="torch dtype of the captioner and summarizer: auto (bf16 on CUDA and on CPUs that multiply "
        "bf16 natively, AMX or AVX512-BF16: bench/cpu_precision.py; else fp32), float32, bfloat16")

    summary_model: str = Field(
        "qwen2.5-coder-0.5b-instruct", description="user summarizer LLM: registry name, hub id or path; 'none' turns summaries "
        "off (the default was chosen by bench/summary_quality.py within the demo's time budget)"
    )
    summary_batch: int = Field(16, gt=0, description="users per summarizer call")
    summary_max_new_tokens: int = Field(TEXT.summary_tokens, gt=0, description="generated tokens per summary")
    summary_max_chars: int = Field(TEXT.summary_chars, gt=0, description="summary length cap")
    caption_model: str = Field(
        "smollm2-135m-instruct",
        description="captioner (the paper's item summarizer): a vision-language model (captions images) or a text LLM (title, categories, "
        "description); registry name, hub id or path; 'none' turns captions off",
    )
    caption_batch: int = Field(16, gt=0, description="items per captioner call")
    caption_max_new_tokens: int = Field(TEXT.caption_tokens, gt=0, description="generated tokens per caption")
    generation_kv_cache: Literal["dynamic", "static"] = Field(
        "dynamic", description="KV cache of captions and summaries: 'static' preallocates it and pads prompts to "
        "a bucket, so on a GPU the decoding step is compiled (torch.compile) once per shape; 'dynamic' decodes eagerly")
    generation_compile: Literal["auto", "always", "never"] = Field(
        "auto", description="with the static cache: 'auto' compiles the decoding step where transformers does (CUDA, "
        "XPU), 'always' on the CPU too (faster after a compile of about a minute; bench/results/cpu_generation.json), "
        "'never' decodes eagerly")
    generation_cache_len: int = Field(
        0, ge=0, description="static cache length in tokens (prompt plus generated); 0: the longest call so far "
        "(a longer call grows it and recompiles); a fixed length keeps one compiled shape but attends over all of it")
    generation_warm_up: bool = Field(
        True, description="where decoding compiles (see generation_compile), compile it at start, one call per batch "
        "size, before the worker joins its group: the first requests do not wait for the compile")
    image_timeout: float = Field(10.0, description="seconds to fetch an item image over http(s)")
    image_max_bytes: int = Field(20_000_000, description="largest encoded image accepted")
    image_max_pixels: int = Field(40_000_000, description="largest decoded image (width x height) accepted")
    image_sources: str = Field("https,data", description="kinds of item image reference a producer may name "
                                                         "(comma-separated, of https, http, data, file): a path or URL "
                                                         "in an event reaches nothing else")
    image_root: str = Field("", description="with 'file' in MMSR_IMAGE_SOURCES: the one folder item images are read "
                                            "from (paths resolved, symlinks out of it refused)")
    image_private_networks: bool = Field(False, description="let image URLs reach loopback, private and link-local "
                                                            "addresses (an intranet image server)")

    recommender_model: str = Field(
        "none", description="re-ranker (MLLM-MSR stage 3): registry name, hub id or path; 'none' emits the retrieval "
        "stage's lists"
    )
    recommender_adapter: str = Field(
        "", description="LoRA adapter directory (from `mmsr train`); watched, and a new version is swapped in live"
    )
    rerank_candidates: int = Field(50, gt=0, description="retrieval candidates (N) re-ranked per list")
    rerank_users: int = Field(8, gt=0, description="users whose candidates are scored in one batched call")
    rerank_rows: int = Field(64, gt=0, description="candidate rows run in one forward against copied prefix caches")
    rerank_caption_chars: int = Field(TEXT.caption_chars, ge=0, description="longest caption in a candidate's part")
    adapter_poll_seconds: float = Field(2.0, description="how often the adapter directory is checked for a new version")

    allow_untested_faust: bool = Field(False, description="start even where faust-streaming, mode-streaming or "
                                                          "aiokafka differ from the versions the worker's patches were "
                                                          "written for (streams/kafka/compat.py), with a warning each")

    kafka_version: str = Field("4.1.1", description="Apache Kafka version of the local broker")
    kafka_home: Path = Field(
        Path("~/.cache/mmsr/kafka").expanduser(), description="cache of resolved Kafka jars (outside the repo)"
    )

    @field_validator("ssl_cafile", mode="before")
    @classmethod
    def _no_cafile_when_empty(cls, value):
        """MMSR_SSL_CAFILE set but empty (as a compose file's ``${MMSR_SSL_CAFILE:-}`` writes it)
        means the system's store, not Path("."), which librdkafka would fail to read as a CA file."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _credentials_with_sasl(self):
        if self.security_protocol.startswith("SASL_") and not (self.sasl_username and self.sasl_password.get_secret_value()):
            raise ValueError(f"security_protocol {self.security_protocol} needs MMSR_SASL_USERNAME and MMSR_SASL_PASSWORD")
        return self

    @model_validator(mode="after")
    def _image_sources_known(self):
        self.image_limits()  # an unknown source, or files without a root, fails at start rather than per item
        return self

    # -- the model configs, built here so every option of theirs is a setting ---------------------
    def decoding(self):
        from models.llm.generation import Decoding

        return Decoding(kv_cache=self.generation_kv_cache, compile=self.generation_compile,
                        cache_len=self.generation_cache_len)

    def summarizer_config(self):
        from models.llm.user_summarizer import SummarizerConfig

        return SummarizerConfig(block_size=self.summary_block, max_new_tokens=self.summary_max_new_tokens,
                                batch_size=self.summary_batch, max_chars=self.summary_max_chars,
                                decoding=self.decoding())

    def caption_config(self):
        from models.llm.captioner import CaptionConfig

        return CaptionConfig(max_new_tokens=self.caption_max_new_tokens, batch_size=self.caption_batch,
                             decoding=self.decoding(),
                             limits=self.image_limits())

    def image_limits(self):
        from models.images import ImageLimits

        return ImageLimits(timeout_seconds=self.image_timeout, max_bytes=self.image_max_bytes,
                           max_pixels=self.image_max_pixels, root=self.image_root,
                           sources=frozenset(s.strip() for s in self.image_sources.split(",") if s.strip()),
                           private_networks=self.image_private_networks)

    def scorer_config(self):
        from models.llm.recommender import ScorerConfig

        return ScorerConfig(users_per_batch=self.rerank_users, rows_per_batch=self.rerank_rows,
                            caption_chars=self.rerank_caption_chars)

    def cooccurrence_config(self):
        from models.candidates.cooccurrence import CooccurrenceConfig

        return CooccurrenceConfig(window=self.cooc_window if self.cooccurrence else 0, neighbours=self.cooc_neighbours,
                                  decay=self.cooc_decay, trending_half_life=self.trending_half_life_days * 86400,
                                  query_half_life=self.cooc_query_half_life)

    def blend_weights(self) -> dict[str, float]:
        return {"cooccurrence": self.weight_cooccurrence, "sequential": self.weight_sequential,
                "ease": self.weight_ease, "content": self.weight_content, "trending": self.weight_trending}

    def to_env(self, only: Iterable[str] | None = None) -> dict[str, str]:
        """These settings as MMSR_ variables, so a child process (a worker) gets exactly them;
        ``only``: just the named ones, the child's own defaults for the rest."""
        env = {}
        for name in type(self).model_fields if only is None else only:
            value = getattr(self, name)
            if value is None:
                continue
            env[f"MMSR_{name.upper()}"] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return env

    @property
    def advertised_web_host(self) -> str:
        """The web address the group learns for this worker. A wildcard bind (0.0.0.0, as in a
        container) advertised as is made every worker take every user's request as its own: the
        owner's address in the group equalled each worker's own, so none forwarded."""
        if self.web_advertised_host:
            return self.web_advertised_host
        if self.web_host in WILDCARD_HOSTS:
            import ipaddress
            import socket

            name = socket.gethostname()
            try:
                address = socket.gethostbyname(name)  # a container's address on its network
            except OSError:
                return name
            return name if ipaddress.ip_address(address).is_loopback else address  # 127.0.1.1: a host's own alias
        return self.web_host

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def group_id(self) -> str:
        """Each role is its own consumer group: the llm role's workers scale apart from the state role's."""
        return f"{self.app_id}-llm" if self.role == "llm" else self.app_id

    @property
    def generates_here(self) -> bool:
        """Whether this process runs the generating models (captions, summaries, re-ranking)."""
        return self.role != "state"

    @property
    def captions_on(self) -> bool:
        return self.caption_model != "none"

    @property
    def summaries_on(self) -> bool:
        return self.summary_model != "none"

    @property
    def reranking_on(self) -> bool:
        return self.recommender_model != "none"


TOPICS = tuple(name.removeprefix("topic_") for name in Settings.model_fields if name.startswith("topic_"))


def prefixed_topics(prefix: str) -> dict[str, str]:
    """``topic_*`` settings naming every topic under ``prefix`` (tests, benchmarks, eval-stream)."""
    return {f"topic_{t}": f"{prefix}-{t.replace('_', '-')}" for t in TOPICS}


def load(**overrides) -> Settings:
    """Settings from the environment, with explicitly given (non-None) CLI values on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


CONFIGURATION_DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def configuration_markdown() -> str:
    """The settings reference (docs/configuration.md), made from the fields' descriptions:
    ``python -m streams.settings`` writes it, and a test fails when it is stale."""
    lines = ["# Configuration", "",
             "Every setting is an environment variable with the `MMSR_` prefix, and most are also flags of the",
             "commands that use them (`mmsr worker --help`). Generated from `streams/settings.py` by",
             "`python -m streams.settings`; do not edit by hand.", "",
             "| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = "(secret)" if default.get_secret_value() else ""
        if isinstance(default, Path):  # the same text on every machine: ~ for the home folder
            default = str(default).replace(str(Path.home()), "~", 1)
        shown = "" if default in (None, "") else f"`{default}`"
        text = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| `MMSR_{name.upper()}` | {shown} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    CONFIGURATION_DOC.write_text(configuration_markdown())
    print(f"wrote {CONFIGURATION_DOC}")
