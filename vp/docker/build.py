"""Build the project's image, tagged by what goes into it, and push it only when the registry lacks
that tag.

The tag is a hash of the Dockerfile and of the build context as the engine would see it: the
files `.dockerignore` leaves in, with their paths, permission bits, contents and symlink targets
(not their times). So an unchanged project costs one engine lookup (and one registry lookup when
pushing): no build, no push. The build context sent to the engine is packed by the same walk that
computes the hash, reading every file once, so the tag always names what was actually built.

The Docker SDK is imported inside functions: `vp --help` must not pay for it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from vp.docker.buildkit import PROGRESS_INTERVAL, TAIL_LINES, Trace
from vp.docker.engine import (
    DOCKER_HUB,
    DOCKER_HUB_AUTH_KEY,
    connect,
    engine_address,
    human_size,
    registry_host,
    repository,
)
from vp.errors import UsageError, VpError

if TYPE_CHECKING:
    import docker

Progress = Callable[[str], None]

TAG_LENGTH = 12
# Bump when the hashed record format changes, so old tags are never reused for new meanings.
_HASH_SALT = b"vp-docker-context-v1\n"
# What registries (and the engine relaying them) say when credentials are missing or wrong.
_AUTH_WORDS = (
    "unauthorized",
    "authentication required",
    "incorrect username or password",
    "requested access to the resource is denied",
    "insufficient_scope",
)
_STEP_RE = re.compile(r"^Step \d+/\d+ : ")
_BUILD_NOISE = re.compile(r"^\s*(---> |Removing intermediate container )")
_REPO_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)


# --- the content tag ------------------------------------------------------------------------


def image_tag(context_dir: Path, dockerfile: str = "Dockerfile") -> str:
    """Content hash of the Dockerfile + build context honouring .dockerignore (short hex)."""
    context = _Context(Path(context_dir), dockerfile)
    return context.pack(None)


class _Context:
    """The build context: the files `.dockerignore` leaves in, plus the Dockerfile (always sent,
    like the docker CLI does, even when `.dockerignore` lists it)."""

    def __init__(self, root: Path, dockerfile: str):
        self.root = root.resolve()
        if not self.root.is_dir():
            raise VpError(
                f"Docker build context {root} is not a directory",
                hint="run vp from the project folder, or fix [docker] dockerfile",
            )
        path = Path(dockerfile)
        if not path.is_absolute():
            path = self.root / path
        self.dockerfile = path
        if not path.is_file():
            raise VpError(
                f"Dockerfile not found: {path}",
                hint="create it (`vp init --docker` writes one) or set [docker] dockerfile",
            )
        try:
            self.dockerfile_arcname = path.resolve().relative_to(self.root).as_posix()
            self.dockerfile_inside = True
        except ValueError:
            self.dockerfile_arcname = ".vp.Dockerfile"
            self.dockerfile_inside = False

    def entries(self) -> list[str]:
        """Relative posix paths (files, dirs, symlinks) the engine gets, sorted."""
        from docker.utils.build import PatternMatcher

        patterns = _read_dockerignore(self.root / ".dockerignore")
        if self.dockerfile_inside:
            patterns.append("!" + self.dockerfile_arcname)
        matcher = PatternMatcher(patterns)
        return sorted(p.replace(os.sep, "/") for p in matcher.walk(str(self.root)))

    def pack(self, tar: tarfile.TarFile | None) -> str:
        """Hash the context (and add it to `tar` when given); return the short hex tag.

        Without `tar`, file contents whose size, mtime, ctime and inode match the last walk of
        this context come from a small cache, so the warm path does not reread large files."""
        digest = hashlib.sha256(_HASH_SALT)
        cache = _DigestCache(self.root)
        for rel in self.entries():
            full = self.root / rel
            try:
                st = full.lstat()
            except FileNotFoundError:
                continue  # vanished while we walked
            mode = stat.S_IMODE(st.st_mode)
            try:
                if stat.S_ISREG(st.st_mode):
                    content = cache.get(rel, st) if tar is None else None
                    if content is None:
                        content = self._file_digest(full, rel, st, tar)
                    cache.put(rel, st, content)
                    record = f"f\0{rel}\0{mode:o}\0{content}"
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(full)
                    if tar is not None:
                        info = _tarinfo(rel, st, tarfile.SYMTYPE)
                        info.linkname = target
                        tar.addfile(info)
                    record = f"l\0{rel}\0{target}"
                elif stat.S_ISDIR(st.st_mode):
                    if tar is not None:
                        tar.addfile(_tarinfo(rel, st, tarfile.DIRTYPE))
                    record = f"d\0{rel}\0{mode:o}"
                else:
                    continue  # sockets, fifos, devices: the docker CLI skips them too
            except OSError as exc:
                raise VpError(
                    f"cannot read {full} for the Docker build context: {exc.strerror or exc}",
                    hint="fix its permissions, or list it in .dockerignore",
                ) from None
            digest.update(record.encode("utf-8", "surrogateescape") + b"\n")
        cache.save()
        content = self.dockerfile.read_bytes()
        if tar is not None and not self.dockerfile_inside:
            info = tarfile.TarInfo(self.dockerfile_arcname)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        record = f"D\0{self.dockerfile_arcname}\0{hashlib.sha256(content).hexdigest()}"
        digest.update(record.encode("utf-8", "surrogateescape") + b"\n")
        return digest.hexdigest()[:TAG_LENGTH]

    @staticmethod
    def _file_digest(full: Path, rel: str, st: os.stat_result, tar: tarfile.TarFile | None) -> str:
        file_digest = hashlib.sha256()
        with open(full, "rb") as f:
            if tar is not None:
                tar.addfile(_tarinfo(rel, st, tarfile.REGTYPE), _HashingReader(f, file_digest))
            else:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    file_digest.update(chunk)
        return file_digest.hexdigest()


class _DigestCache:
    """Content digests of the context's files from the last walk, keyed by path and checked
    against size, mtime, ctime and inode. Files modified within the last seconds are not
    cached (a write in the same timestamp tick would go unnoticed). Best effort: a cache that
    cannot be read or written is simply not used."""

    RACY_SECONDS = 2.0

    def __init__(self, root: Path):
        base = os.environ.get("XDG_CACHE_HOME")
        cache_dir = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
        key = hashlib.sha256(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.path = cache_dir / "vp" / "docker-context" / f"{key}.json"
        self.old: dict[str, list] = {}
        self.new: dict[str, list] = {}
        self.now = time.time()
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self.old = data
        except (OSError, ValueError):
            pass

    @staticmethod
    def _signature(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def get(self, rel: str, st: os.stat_result) -> str | None:
        entry = self.old.get(rel)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == self._signature(st):
            return entry[1]
        return None

    def put(self, rel: str, st: os.stat_result, content: str) -> None:
        if self.now - max(st.st_mtime, st.st_ctime) > self.RACY_SECONDS:
            self.new[rel] = [self._signature(st), content]

    def save(self) -> None:
        if self.new == self.old:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.new, separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError:
            pass


def _read_dockerignore(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return []
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _tarinfo(rel: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime) if 0 <= st.st_mtime < 8**11 else 0
    info.size = st.st_size if kind == tarfile.REGTYPE else 0
    info.uid = info.gid = 0
    return info


class _HashingReader:
    """A file wrapper that hashes what tarfile reads from it."""

    def __init__(self, f: IO[bytes], digest: Any):
        self._f = f
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._digest.update(data)
        return data


# --- build and push -------------------------------------------------------------------------


def ensure_image(
    context_dir: Path,
    *,
    dockerfile: str,
    image: str,
    push: bool,
    auth: dict | None,
    progress: Progress | None = None,
    docker_host: str | None = None,
) -> str:
    """Build `image:<hash>` unless that tag already exists (locally and, when push, in the
    registry), push if needed; return the full ref. Unchanged project → no build and no push at
    all.

    `docker_host` selects the engine ("unix:///path/forwarded.sock", "ssh://user@host",
    "tcp://…"; default: DOCKER_HOST or the local socket). With `push`, a tag the registry already
    has is neither built nor pushed, even if this engine lacks it: the run host pulls it.
    """
    say = progress or (lambda line: None)
    repo = _repository(image)
    context = _Context(Path(context_dir), dockerfile)
    ref = f"{repo}:{context.pack(None)}"
    client = connect(docker_host)
    try:
        if push and _in_registry(client, ref, auth):
            say(f"image {ref} is up to date in {registry_host(ref)}")
            return ref
        if _in_engine(client, ref):
            say(f"image {ref} is up to date on {engine_address(docker_host)}")
        else:
            if push and auth:
                _check_login(client, ref, auth)
            ref = _build(client, context, repo, say)
        if push:
            _push(client, ref, auth, say)
        return ref
    finally:
        client.close()


def _repository(image: str) -> str:
    if not image:
        raise UsageError(
            "no image name for the Docker build",
            hint='set [docker] image, e.g. image = "ghcr.io/me/project"',
        )
    repo = repository(image.strip())
    if not _REPO_RE.match(repo):
        raise UsageError(
            f"invalid image name '{image}'",
            hint="use lowercase letters, digits, '.', '_', '-' and '/', e.g. ghcr.io/me/project",
        )
    return repo


def _in_engine(client: docker.DockerClient, ref: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.api.inspect_image(ref)
    except ImageNotFound:
        return False
    return True


def _in_registry(client: docker.DockerClient, ref: str, auth: dict | None) -> bool:
    """Whether the registry has `ref`. Auth errors count as "not known to be there": some
    registries answer 401/denied for repositories that do not exist yet, and the credentials are
    checked before building anyway."""
    from docker.errors import APIError, NotFound

    try:
        client.api.inspect_distribution(ref, auth_config=auth)
    except NotFound:
        return False
    except APIError as exc:
        if exc.status_code in (401, 403) or _is_auth_error(_api_message(exc)):
            return False
        raise _registry_failure(ref, f"lookup of {ref} in {registry_host(ref)}", exc) from None
    return True


def _check_login(client: docker.DockerClient, ref: str, auth: dict) -> None:
    """Have the engine try the credentials before we spend minutes building."""
    from docker.errors import APIError

    if "identitytoken" in auth and "password" not in auth:
        return  # the engine's /auth does not take identity tokens
    try:
        client.login(
            username=auth.get("username", ""),
            password=auth.get("password", ""),
            registry=auth.get("serveraddress") or registry_host(ref),
            reauth=True,
        )
    except APIError as exc:
        raise _registry_failure(ref, f"login to {registry_host(ref)}", exc) from None


def _build(client: docker.DockerClient, context: _Context, repo: str, say: Progress) -> str:
    """Pack the context, build it as `repo:<hash of what was packed>`, return that ref.

    BuildKit (the engine's `version=2` builder, which Dockerfiles with `RUN --mount=type=cache`,
    heredocs or `COPY --chmod` need) unless DOCKER_BUILDKIT=0 or the engine refuses it; then the
    classic builder.
    """
    with tempfile.TemporaryFile() as fileobj:
        with tarfile.open(fileobj=fileobj, mode="w") as tar:
            tag = context.pack(tar)
        ref = f"{repo}:{tag}"
        say(f"building {ref}")
        if os.environ.get("DOCKER_BUILDKIT", "1") != "0":
            fileobj.seek(0)
            if _build_buildkit(client, fileobj, context, ref, say):
                return ref
            say("the engine has no BuildKit; using the classic builder")
        fileobj.seek(0)
        _build_classic(client, fileobj, context, ref, say)
    return ref


def _build_buildkit(
    client: docker.DockerClient, fileobj: IO[bytes], context: _Context, ref: str, say: Progress
) -> bool:
    """Build with the engine's BuildKit, the context sent as the request body (no session,
    so no `--mount=type=secret|ssh`). False if the engine will not do BuildKit builds."""
    from docker.errors import APIError

    api = client.api
    params = {
        "t": ref,
        "dockerfile": context.dockerfile_arcname,
        "version": "2",
        "rm": "1",
        "forcerm": "1",
    }
    headers = {"Content-Type": "application/x-tar"}
    api._set_auth_headers(headers)  # base images from private registries
    response = api._post(
        api._url("/build"), data=fileobj, params=params, headers=headers, stream=True
    )
    try:
        api._raise_for_status(response)
    except APIError:
        response.close()
        return False
    trace = Trace(say)
    pulls = _LayerProgress(say)
    try:
        for chunk in api._stream_helper(response, decode=True):
            if chunk.get("id") == "moby.buildkit.trace":
                trace.feed(chunk.get("aux") or "")
            elif "error" in chunk or "errorDetail" in chunk:
                raise _build_failed(
                    context, trace.failed_step or "", _chunk_error(chunk), trace.failed_output()
                )
            elif "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if line.strip():
                        say(line)
            elif "status" in chunk:
                pulls.update(chunk)
    except APIError as exc:
        raise _build_failed(
            context, trace.failed_step or "", _api_message(exc), trace.failed_output()
        ) from None
    return True


def _build_classic(
    client: docker.DockerClient, fileobj: IO[bytes], context: _Context, ref: str, say: Progress
) -> None:
    from docker.errors import APIError

    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    step = ""
    pulls = _LayerProgress(say)
    partial = ""
    try:
        for chunk in client.api.build(
            fileobj=fileobj,
            custom_context=True,
            dockerfile=context.dockerfile_arcname,
            tag=ref,
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if "stream" in chunk:
                lines = (partial + chunk["stream"]).split("\n")
                partial = lines.pop()
                for line in lines:
                    line = line.rstrip("\r")
                    if not line.strip():
                        continue
                    if _STEP_RE.match(line.strip()):
                        step = line.strip()
                        tail.clear()
                    if not _BUILD_NOISE.match(line):
                        tail.append(line)
                    say(line)
            elif "error" in chunk or "errorDetail" in chunk:
                if partial.strip():
                    tail.append(partial)
                raise _build_failed(context, step, _chunk_error(chunk), list(tail))
            elif "status" in chunk:
                pulls.update(chunk)
    except APIError as exc:
        raise _build_failed(context, step, _api_message(exc), list(tail)) from None


def _chunk_error(chunk: dict) -> str:
    detail = chunk.get("errorDetail") or {}
    return detail.get("message") or chunk.get("error") or "unknown error"


def _build_failed(context: _Context, step: str, message: str, tail: list[str]) -> VpError:
    reason = " ".join(message.split())
    code = re.search(r"(?:returned a non-zero code|exit code): (\d+)", reason)
    reason = f" (exit {code.group(1)})" if code and step else f": {reason}"
    where = f" at {step}" if step else ""
    lines = "\n".join(f"  {line}" for line in tail)
    hint = f"fix {context.dockerfile} and run again"
    if lines:
        hint = f"last output of the step:\n{lines}\n{hint}"
    return VpError(f"docker build failed{where}{reason}", hint=hint)


def _push(client: docker.DockerClient, ref: str, auth: dict | None, say: Progress) -> None:
    from docker.errors import APIError

    repo, _, tag = ref.rpartition(":")
    say(f"pushing {ref}")
    what = f"push of {ref} to {registry_host(ref)}"
    layers = _LayerProgress(say)
    try:
        for chunk in client.api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in chunk or "errorDetail" in chunk:
                raise _registry_failure(ref, what, _chunk_error(chunk))
            if "aux" in chunk and chunk["aux"].get("Digest"):
                say(f"pushed {ref} ({chunk['aux']['Digest']})")
            elif "status" in chunk:
                layers.update(chunk)
    except APIError as exc:
        raise _registry_failure(ref, what, exc) from None


class _LayerProgress:
    """Turns the engine's per-layer JSON status into plain lines, at most one per layer per
    second while bytes move, every other status change as it comes."""

    def __init__(self, say: Progress):
        self.say = say
        self.last: dict[str, float] = {}

    def update(self, chunk: dict) -> None:
        status = chunk.get("status", "")
        layer = chunk.get("id")
        if not layer:
            if status:
                self.say(status)
            return
        if status in ("Pushing", "Downloading", "Extracting"):
            now = time.monotonic()
            if now - self.last.get(layer, 0.0) < PROGRESS_INTERVAL:
                return
            self.last[layer] = now
            detail = chunk.get("progressDetail") or {}
            done, total = detail.get("current"), detail.get("total")
            amount = (
                f"{human_size(done)}/{human_size(total)}"
                if done and total
                else human_size(done or 0)
            )
            self.say(f"{layer}: {status} {amount}")
        else:
            self.say(f"{layer}: {status}")


def _api_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    text = explanation if isinstance(explanation, str) and explanation else str(exc)
    return " ".join(text.split())


def _is_auth_error(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _AUTH_WORDS)


def _registry_failure(ref: str, what: str, error: str | Exception) -> VpError:
    """A registry operation (`what`) failed: unauthorized, naming the registry, when the
    credentials were refused; otherwise the registry's own words."""
    status = getattr(error, "status_code", None)
    message = _api_message(error) if isinstance(error, Exception) else " ".join(error.split())
    if status in (401, 403) or _is_auth_error(message):
        return _unauthorized(ref, message)
    return VpError(
        f"{what} failed: {message}",
        hint="check the registry address in [docker] image, that the engine can reach it, "
        "and that the registry has room",
    )


def _unauthorized(ref: str, message: str) -> VpError:
    registry = registry_host(ref)
    return VpError(
        f"registry {registry} refused vp's credentials: unauthorized",
        hint=(
            f"check [docker] registry/username/password in the user config or VP_REGISTRY/"
            f"VP_REGISTRY_USER/VP_REGISTRY_PASSWORD (or `docker login {registry}`), and that the "
            f"account may push "
            f"to {repository(ref)} ({' '.join(message.split())})"
        ),
    )


# --- credentials ----------------------------------------------------------------------------


def registry_auth(image: str, settings: dict) -> dict | None:
    """Credentials: settings (user config [docker] username/password), env VP_REGISTRY_USER /
    VP_REGISTRY_PASSWORD, or the user's ~/.docker/config.json (auths, base64).

    The environment wins over the config file, field by field. vp's own credentials are tied to
    one registry (`[docker] registry` / VP_REGISTRY), because `docker.image` may come from a
    project file: an image on any other registry gets only what ~/.docker/config.json holds for
    that registry. Returns an auth config for the Docker SDK (`username`, `password`,
    `serveraddress`, or `identitytoken`), or None when nothing applies: the SDK then uses what it
    finds itself, and public images need nothing.
    """
    registry = registry_host(image)
    table = settings.get("docker") if isinstance(settings.get("docker"), dict) else settings
    user = os.environ.get("VP_REGISTRY_USER") or table.get("username")
    password = os.environ.get("VP_REGISTRY_PASSWORD") or table.get("password")
    bound = (
        os.environ.get("VP_REGISTRY")
        or os.environ.get("VP_DOCKER_REGISTRY")
        or table.get("registry")
    )
    if user or password:
        if not bound:
            raise UsageError(
                "registry credentials ([docker] username/password or VP_REGISTRY_USER/"
                f"VP_REGISTRY_PASSWORD) name no registry, so vp will not send them to {registry}",
                hint="say which registry they are for: vp config set --user docker.registry HOST "
                "(or VP_REGISTRY=HOST)",
            )
        if _normalise_key(bound) != registry:
            return _docker_config_auth(registry)
        if not (user and password):
            missing = "password" if user else "username"
            raise UsageError(
                f"registry {missing} missing for {registry}",
                hint="set both [docker] username and password in the user config, or both "
                "VP_REGISTRY_USER and VP_REGISTRY_PASSWORD",
            )
        return {"username": user, "password": password, "serveraddress": _server(registry)}
    return _docker_config_auth(registry)


def _server(registry: str) -> str:
    return DOCKER_HUB_AUTH_KEY if registry == DOCKER_HUB else registry


def _normalise_key(key: str) -> str:
    from docker.auth import resolve_index_name

    return resolve_index_name(key)


def _docker_config_auth(registry: str) -> dict | None:
    """What the user's Docker config (auths, credsStore, credHelpers) holds for `registry`,
    resolved by docker-py exactly as the docker CLI would."""
    import warnings

    from docker import auth, errors

    try:
        with warnings.catch_warnings():  # "docker-credential-X not installed": None below
            warnings.simplefilter("ignore")
            found = auth.load_config().resolve_authconfig(registry)
    except (errors.InvalidConfigFile, ValueError, UnicodeDecodeError) as exc:
        raise VpError(
            f"cannot read the credentials for {registry} in your Docker config ({exc})",
            hint=f"run `docker login {registry}` again",
        ) from None
    except errors.DockerException:  # a credential helper that is missing or fails
        return None
    found = {k.lower(): v for k, v in (found or {}).items()}
    if found.get("identitytoken"):
        return {"identitytoken": found["identitytoken"], "serveraddress": _server(registry)}
    user, password = found.get("username"), found.get("password")
    if user and password:
        return {"username": user, "password": password, "serveraddress": _server(registry)}
    return None
