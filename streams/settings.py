"""One settings object for every process: env vars with the ``MMSR_`` prefix, overridable by CLI flags."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMSR_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    data_dir: Path = Field(Path(".mmsr"), description="RocksDB state, broker data and model caches")
    app_id: str = Field("mmsr", description="Faust app id: consumer group and changelog prefix")
    web_host: str = Field("127.0.0.1", description="interface the worker's web server binds")
    web_port: int = Field(6066, description="port of the worker's web server")

    topic_items: str = Field("items", description="catalog events, keyed by item_id")
    topic_interactions: str = Field("interactions", description="interaction events, keyed by user_id")
    topic_user_summaries: str = Field("user-summaries", description="summary events, keyed by user_id")
    topic_recommendations: str = Field("recommendations", description="top-k lists, keyed by user_id")
    topic_dead_letters: str = Field("dead-letters", description="rejected events with the reason")
    user_partitions: int = Field(4, description="partitions of the user-keyed topics (co-partitioned)")
    item_partitions: int = Field(2, description="partitions of the items topic")
    session_timeout: float = Field(
        45.0, description="consumer group session timeout, seconds: how soon a crashed worker's partitions move"
    )
    replication_factor: int = Field(1, description="replication factor for created topics")

    top_k: int = Field(10, description="items per recommendation list")
    history_tail: int = Field(50, description="recent interactions kept per user")
    seen_cap: int = Field(5000, description="most item ids remembered per user for history exclusion")
    recency_half_life: float = Field(10.0, description="half-life, in interactions, of the user vector's recency weights")
    recent_for_vector: int = Field(20, description="recent items averaged into the user vector")
    debounce_seconds: float = Field(0.5, description="quiet time per user before a list is emitted")
    freshness_seconds: float = Field(
        3600.0, description="events older than this (by event_time) emit no list: backfill"
    )
    summary_block: int = Field(3, description="interactions per recurrent summary block (B)")
    index_resync_seconds: float = Field(
        30.0, description="rebuild the retrieval index from the item table this often (0: never)"
    )
    interaction_batch: int = Field(500, description="interactions applied per micro-batch (one state write per user)")
    interaction_within: float = Field(0.02, description="seconds to wait while filling an interaction batch")
    embed_model: str = Field("minilm", description="text embedding model: 'minilm', a hub id or a path")
    embed_batch: int = Field(64, description="items embedded per model call")
    embed_within: float = Field(0.5, description="seconds to wait while filling an embedding batch")
    device: str = Field("auto", description="torch device: auto, cpu, cuda")
    model_dtype: str = Field("auto", description="torch dtype of the LLMs: auto (bf16 on CUDA, else fp32), float32, bfloat16")

    summary_model: str = Field(
        "smollm2-135m-instruct", description="user summarizer LLM: registry name, hub id or path; 'none' turns summaries off"
    )
    summary_batch: int = Field(16, description="users per summarizer call")
    summary_max_new_tokens: int = Field(256, description="generated tokens per summary")
    summary_max_chars: int = Field(1200, description="summary length cap")
    caption_model: str = Field(
        "smollm2-135m-instruct",
        description="item summarizer: a vision-language model (captions images) or a text LLM (title, categories, "
        "description); registry name, hub id or path; 'none' turns captions off",
    )
    caption_batch: int = Field(16, description="items per captioner call")
    caption_max_new_tokens: int = Field(200, description="generated tokens per caption")
    image_timeout: float = Field(10.0, description="seconds to fetch an item image over http(s)")
    image_max_bytes: int = Field(20_000_000, description="largest encoded image accepted")
    image_max_pixels: int = Field(40_000_000, description="largest decoded image (width x height) accepted")

    recommender_model: str = Field(
        "none", description="re-ranker (MLLM-MSR stage 3): registry name, hub id or path; 'none' emits the retrieval "
        "stage's lists"
    )
    recommender_adapter: str = Field(
        "", description="LoRA adapter directory (from `mmsr train`); watched, and a new version is swapped in live"
    )
    rerank_candidates: int = Field(50, description="retrieval candidates (N) re-ranked per list")
    rerank_users: int = Field(8, description="users whose candidates are scored in one batched call")
    adapter_poll_seconds: float = Field(2.0, description="how often the adapter directory is checked for a new version")

    kafka_version: str = Field("4.1.1", description="Apache Kafka version of the local broker")
    kafka_home: Path = Field(
        Path("~/.cache/mmsr/kafka").expanduser(), description="cache of resolved Kafka jars (outside the repo)"
    )

    def to_env(self) -> dict[str, str]:
        """These settings as MMSR_ variables, so a child process (a worker) gets exactly them."""
        return {f"MMSR_{name.upper()}": str(getattr(self, name)) for name in type(self).model_fields}

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"


def load(**overrides) -> Settings:
    """Settings from the environment, with explicitly given (non-None) CLI values on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
