"""One typed settings object: the only place that reads the environment.

Every variable is prefixed ``EMBEDSVC_`` except the two Milvus ones, which keep the names the Milvus
ecosystem uses (``MILVUS_URI``, ``MILVUS_TOKEN``). A ``.env`` file in the working directory is read too.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SERVER_SCHEMES = ("http", "https", "tcp", "grpc", "unix")


#: where indexing decodes images (``Settings.decode``): the DataLoader workers, or the models' device
Decoder = Literal["worker", "device"]
#: when models' forwards go through ``torch.compile`` (``Settings.compile``): see ``embedsvc.embedder.compile_later``
CompileMode = Literal["auto", "on", "off"]
_BOOL_WORDS = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}

class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EMBEDSVC_", env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    # --- storage -------------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("data"), description="Milvus Lite file, thumbnails, reports.")
    milvus_uri: str = Field(
        default="",
        validation_alias=AliasChoices("MILVUS_URI", "EMBEDSVC_MILVUS_URI"),
        description="Empty: a Milvus Lite file under data_dir. Or http://host:19530 for a server.",
    )
    milvus_token: str = Field(default="", validation_alias=AliasChoices("MILVUS_TOKEN", "EMBEDSVC_MILVUS_TOKEN"))
    milvus_timeout_s: float = Field(
        default=30,
        gt=0,
        description="Seconds any one Milvus call may take (rounded up to whole seconds); without a bound, "
        "pymilvus retries an unreachable server for minutes.",
    )
    milvus_connect_timeout_s: float = Field(
        default=5, gt=0, description="Seconds to wait for the connection to Milvus when a store is opened."
    )

    # --- bulk import (large ingests into a Milvus server) ------------------------------------------
    bulk_threshold: int | None = Field(
        default=None,
        ge=0,
        description="Rows per model in one indexing run from which a Milvus server gets them by bulk import "
        "(parquet files and import jobs) instead of upserts. Unset: 1,000,000 on a server, never on Milvus Lite "
        "(which cannot bulk import: set, it is an error there once a run reaches it).",
    )
    bulk_dir: Path | None = Field(
        default=None, description="Where bulk-import parquet files are staged; default data_dir/bulk."
    )
    bulk_server_dir: Path | None = Field(
        default=None,
        description="bulk_dir as the Milvus server sees it (its local storage, or a volume both mount, perhaps "
        "elsewhere); default: the same path.",
    )
    bulk_timeout_s: float = Field(default=1800, gt=0, description="Seconds one bulk import job may take.")
    bulk_s3_bucket: str = Field(
        default="",
        description="Set: bulk-import files are staged in this MinIO/S3 bucket instead of a shared directory. It must "
        "be the Milvus server's own object storage (minio.bucketName of its config): the server reads import files "
        "from there (Helm/Operator deployments). bulk_dir then only buffers each file until it is uploaded.",
    )
    bulk_s3_endpoint: str = Field(
        default="", description="host:port of that object store (e.g. minio:9000); required with bulk_s3_bucket."
    )
    bulk_s3_access_key: str = Field(default="", description="Access key for bulk_s3_bucket (minio.accessKeyID).")
    bulk_s3_secret_key: SecretStr = Field(
        default=SecretStr(""), description="Secret key for bulk_s3_bucket (minio.secretAccessKey)."
    )
    bulk_s3_secure: bool = Field(default=False, description="HTTPS to the object store (minio.useSSL).")
    bulk_s3_prefix: str = Field(
        default="embedsvc-bulk",
        description="Object-key prefix of staged files in bulk_s3_bucket; they are removed after each import.",
    )

    # --- models --------------------------------------------------------------------------------
    models: list[str] = Field(
        default_factory=list, description="Embedder keys to load; empty: the registry's default models (model_keys())."
    )
    device: str = Field(default="auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")
    normalize: bool = Field(
        default=True,
        description="L2-normalise embeddings: L2 on unit vectors ranks like cosine. Recorded per index.",
    )
    allow_random_weights: bool = Field(
        default=False, description="Fall back to seeded random weights (marked 'untrained') when none resolve."
    )
    weights: dict[str, str] = Field(
        default_factory=dict,
        description='Explicit weights per model key, path or URL: EMBEDSVC_WEIGHTS=\'{"gresnet50": "/w.pth"}\'.',
    )
    cache_dir: Path | None = Field(default=None, description="Weights cache; default data_dir/models.")
    offline: bool = Field(default=False, description="Never contact a model hub (air-gapped machines, tests).")
    gdrive_url: str = Field(
        default="https://drive.google.com/uc?id={id}",
        description="Where Google Drive weights (GResNet-50) are downloaded from, {id} the file id: a mirror, or a "
        "test's local server. Hugging Face downloads follow huggingface_hub's own HF_ENDPOINT.",
    )
    input_size: int | None = Field(
        default=None, description="Override every model's input size (e.g. 64 for fast CPU plumbing tests)."
    )
    batch_size: int = 64
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="Forward precision: auto (bf16 autocast on CUDA and on CPUs with AMX/AVX512-BF16, else fp32), "
        "fp32, bf16, fp16 (CUDA only). Vectors are float32 either way; recorded per index.",
    )
    compile: CompileMode = Field(
        default="auto",
        description="torch.compile each model's forward: on (at load, before anything runs; a failure stops the "
        "command), off, or auto (the service compiles its CPU models in the background after start-up and swaps "
        "each in when ready, staying eager if compiling fails; batch commands do not compile). true/false mean "
        "on/off.",
    )
    preprocess: Literal["fast", "exact"] = Field(
        default="fast",
        description="Preprocessing path of new indexes: fast (reduced-size JPEG decode, each model's resize/crop/"
        "normalise as tensor ops on its device) or exact (timm's PIL transform). Recorded per index; queries "
        "always use the path their index recorded.",
    )
    decode: Decoder = Field(
        default="worker",
        description="Where indexing decodes images (fast path): worker (DataLoader workers, reduced-size JPEG "
        "decode) or device (plain JPEGs decoded in full where the models run: nvJPEG on CUDA; other files in the "
        "workers). Pays where CPU decode is the bottleneck on a GPU machine; on a CPU model it only moves decode "
        "into the model's thread. Recorded per index; queries decode as their index did.",
    )

    # --- diagnostics ---------------------------------------------------------------------------
    debug: bool = Field(
        default=False,
        description="Show tracebacks with CLI errors and keep third-party tracebacks in logs (also --debug).",
    )

    # --- service -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    api_url: str = Field(default="http://127.0.0.1:8000", description="Where the web UI finds the API.")
    cors_origins: list[str] = Field(default_factory=lambda: ["http://localhost:8501", "http://127.0.0.1:8501"])
    allowed_roots: list[Path] = Field(default_factory=list, description="Folders the API may bulk-index.")
    api_token: SecretStr = Field(
        default=SecretStr(""),
        description="When set, routes that change state (bulk-index jobs) need 'Authorization: Bearer <token>'; "
        "the web UI and the HTTP client send it.",
    )
    api_token_for_search: bool = Field(
        default=False, description="Also require the token to read: search, indexes, images, evaluation, models."
    )
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    max_k: int = 100
    thumbnail_sizes: list[int] = Field(default_factory=lambda: [128, 256])

    @field_validator("milvus_uri")
    @classmethod
    def _check_milvus_uri(cls, value: str) -> str:
        """A file path (``x.db``, relative to the working directory) selects Milvus Lite; ``http(s)://``,
        ``tcp://``, ``grpc://`` or ``unix:`` a server; anything else is refused here, before any store opens."""
        value = value.strip()
        scheme, sep, rest = value.partition(":")
        if not value or (sep and scheme.lower() in _SERVER_SCHEMES and rest.strip("/")):
            return value
        if "://" in value:
            raise ValueError(f"MILVUS_URI scheme {scheme!r} is not supported (use http(s)://, tcp:// or a .db file)")
        if not value.endswith(".db"):
            raise ValueError(
                f"MILVUS_URI must be a Milvus Lite file ending in .db (e.g. ./milvus.db) or a server URL "
                f"(http://host:19530), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _check_bulk_s3(self) -> Settings:
        """Object-store staging (a bucket) needs the store's address; an endpoint alone selects nothing."""
        if self.bulk_s3_bucket and not self.bulk_s3_endpoint:
            raise ValueError(
                f"EMBEDSVC_BULK_S3_BUCKET={self.bulk_s3_bucket!r} needs EMBEDSVC_BULK_S3_ENDPOINT (host:port of the "
                "MinIO/S3 server the Milvus server stores its data in)"
            )
        endpoint = self.bulk_s3_endpoint
        if endpoint and ("://" in endpoint or "/" in endpoint):
            raise ValueError(
                f"EMBEDSVC_BULK_S3_ENDPOINT must be host:port without a scheme or path (e.g. minio:9000), got "
                f"{endpoint!r}; use EMBEDSVC_BULK_S3_SECURE=true for HTTPS"
            )
        return self

    @model_validator(mode="after")
    def _check_decode(self) -> Settings:
        """Decoding on the models' device hands them uint8 images: only the fast path preprocesses those."""
        if self.decode == "device" and self.preprocess != "fast":
            raise ValueError(
                f"decode on the device needs the fast preprocessing path, not {self.preprocess!r} "
                "(use --preprocess fast, or --decode worker)"
            )
        return self

    @field_validator("preprocess", "decode", mode="before")
    @classmethod
    def _lower_preprocess(cls, value: object) -> object:
        """``FAST`` and `` fast `` mean fast (the allowed values are checked by the type)."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_words(cls, value: object) -> object:
        """``true``/``false`` (and booleans: the ``--compile/--no-compile`` flags) mean on/off."""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            text = value.strip().lower()
            return _BOOL_WORDS.get(text, text)
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _lower_precision(cls, value: object) -> object:
        """``BF16`` and `` bf16 `` mean bf16 (the allowed values are checked by the type)."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value != "auto" and not (value == "cpu" or value.startswith("cuda") or value == "mps"):
            raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, not {value!r}")
        return value

    def model_keys(self) -> list[str]:
        """The models to load: ``models``, else the registry's defaults (the registry owns them; imported
        only here, so that settings stay importable without torch, as the web UI needs)."""
        if self.models:
            return list(self.models)
        from embedsvc.models.registry import list_specs

        return [spec.key for spec in list_specs(default_only=True)]

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    @property
    def resolved_bulk_dir(self) -> Path:
        return self.bulk_dir or self.data_dir / "bulk"

    @property
    def uses_milvus_server(self) -> bool:
        """A server URI (``http(s)://``, ``tcp://``, ...), not a Milvus Lite file."""
        return self.resolved_milvus_uri.partition(":")[0].lower() in _SERVER_SCHEMES

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "models"

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"



@lru_cache
def get_settings() -> Settings:
    """Settings read once per process; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
