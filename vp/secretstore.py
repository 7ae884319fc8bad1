"""`vp secret`: the tokens a project's runs need (HF_TOKEN, WANDB_API_KEY), kept on this machine.

A project file names what it needs (`[secrets] required`/`optional`), never the values: those
come from an environment variable of the same name (it wins) or from the user's store, a 0600
TOML file in the user config dir, or the OS keyring when the `keyring` package is importable and
has a real backend (VP_SECRET_STORE=file forces the file). Only the names a project lists are
ever sent to its host, through `vp.remote.ship_env` (never argv, never a file kept on the host).

A project file is someone else's text: it may not list vp's own credentials (cloud keys, VP_*)
or variables that steer the shell, or a cloned repo could ship your AWS keys to a rented host.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vp import paths
from vp.errors import ConfigError, UsageError, VpError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Credentials vp itself uses, and variables that steer the host's shell or loader: a project
# may not have vp read them from your environment and send them to a host.
_REFUSED_PREFIXES = (
    "VP_",
    "_VP",
    "AWS_",
    "GOOGLE_",
    "CLOUDSDK_",
    "VAST_",
    "RUNPOD_",
    "TNR_",
    "SSH_",
    "GPG_",
    "LD_",
    "DOCKER_",
    "KRB5",
)
_REFUSED = {"PATH", "HOME", "SHELL", "USER", "LOGNAME", "PWD", "IFS", "ENV", "BASH_ENV", "CDPATH"}
_REFUSED |= {"PS4", "SHELLOPTS", "BASHOPTS", "TERM", "DISPLAY", "XAUTHORITY", "R"}
# Shorter values are not masked in output: "1" or "ab" would turn every such byte into ***.
MIN_MASK_LENGTH = 4


def check_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{where}: {name!r} is not a valid environment variable name",
            hint="letters, digits and '_', not starting with a digit (e.g. HF_TOKEN)",
        )
    if name in _REFUSED or name.upper().startswith(_REFUSED_PREFIXES):
        raise ConfigError(
            f"{where}: {name} is one of vp's own credentials or steers the host's shell; "
            "vp will not send it to a host as a project secret",
            hint="choose another name for the variable your command reads",
        )


def check_names(names: Any, where: str) -> None:
    for name in names or []:
        check_name(name, where)


def store_file() -> Path:
    return paths.config_dir() / "secrets.toml"


def _keyring():
    """The `keyring` module when it is importable and has a backend that really stores."""
    if os.environ.get("VP_SECRET_STORE", "").lower() == "file":
        return None
    try:
        import keyring  # type: ignore[import-not-found]

        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - missing, or a broken backend configuration
        return None
    module = type(backend).__module__
    if module.startswith(("keyring.backends.fail", "keyring.backends.null")):
        return None
    try:
        if float(getattr(backend, "priority", 0)) <= 0:
            return None
    except Exception:  # noqa: BLE001 - priority is a classproperty some backends raise from
        return None
    return keyring


_KEYRING_SERVICE = "vp"


def _read() -> dict[str, Any]:
    path = store_file()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the secret store ({exc})") from None
    return data


def _write(data: dict[str, Any]) -> None:
    """Atomically, and private from the first byte: mkstemp creates the file 0600."""
    import tomli_w

    path = store_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".secrets.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            tomli_w.dump(data, fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _values(data: dict[str, Any]) -> dict[str, str]:
    table = data.get("secrets", {})
    return {k: v for k, v in table.items() if isinstance(v, str)} if isinstance(table, dict) else {}


def _keyring_names(data: dict[str, Any]) -> list[str]:
    table = data.get("keyring")
    names = table.get("names", []) if isinstance(table, dict) else []
    return [n for n in names if isinstance(n, str)]


def stored() -> dict[str, str]:
    """Name -> where its stored value lives ("user store" or "keyring"); never the values."""
    data = _read()
    out = {name: f"user store ({store_file()})" for name in _values(data)}
    for name in _keyring_names(data):
        out[name] = "OS keyring"
    return out


def get_stored(name: str) -> str | None:
    data = _read()
    values = _values(data)
    if name in values:
        return values[name]
    if name in _keyring_names(data):
        kr = _keyring()
        if kr is not None:
            try:
                return kr.get_password(_KEYRING_SERVICE, name)
            except Exception:  # noqa: BLE001 - a locked or unavailable keyring
                return None
    return None


def set_secret(name: str, value: str) -> str:
    """Store `value` under `name`; return where it went."""
    if not _NAME.match(name):
        raise UsageError(
            f"{name!r} is not a valid environment variable name",
            hint="letters, digits and '_', not starting with a digit (e.g. HF_TOKEN)",
        )
    data = _read()
    kr = _keyring()
    values = _values(data)
    names = _keyring_names(data)
    if kr is not None:
        try:
            kr.set_password(_KEYRING_SERVICE, name, value)
        except Exception:  # noqa: BLE001 - fall back to the file
            kr = None
    if kr is not None:
        values.pop(name, None)
        if name not in names:
            names.append(name)
        where = "OS keyring"
    else:
        values[name] = value
        names = [n for n in names if n != name]
        where = str(store_file())
    out: dict[str, Any] = {"secrets": values}
    if names:
        out["keyring"] = {"names": names}
    _write(out)
    return where


def remove(name: str) -> bool:
    data = _read()
    values = _values(data)
    names = _keyring_names(data)
    found = values.pop(name, None) is not None
    if name in names:
        names.remove(name)
        found = True
        kr = _keyring()
        if kr is not None:
            try:
                kr.delete_password(_KEYRING_SERVICE, name)
            except Exception:  # noqa: BLE001 - already gone
                pass
    if found:
        out: dict[str, Any] = {"secrets": values}
        if names:
            out["keyring"] = {"names": names}
        _write(out)
    return found


def project_names(cfg) -> tuple[list[str], list[str]]:
    """(required, optional) secret names of the project, validated."""
    required = list(dict.fromkeys(cfg.secrets.required))
    optional = [n for n in dict.fromkeys(cfg.secrets.optional) if n not in required]
    check_names(required, "[secrets] required")
    check_names(optional, "[secrets] optional")
    return required, optional


def resolve(
    required: Iterable[str], optional: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The values of the named secrets: the environment wins, then the store. A missing
    required one is an error that says how to set it; a missing optional one is left out."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    missing = []
    for name, needed in [*((n, True) for n in required), *((n, False) for n in optional)]:
        value = environ.get(name)
        if value is None:
            value = get_stored(name)
        if value is None:
            if needed:
                missing.append(name)
            continue
        out[name] = value
    if missing:
        first = missing[0]
        raise VpError(
            f"the project needs the secret{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} ([secrets] required), and "
            f"{'they are' if len(missing) > 1 else 'it is'} not set",
            hint=f"vp secret set {first}   (reads the value from stdin), "
            f"or export {first} in your environment",
            exit_code=2,
        )
    return out


def for_project(cfg, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The project's secrets, resolved: call before any host is created, started or asked."""
    required, optional = project_names(cfg)
    return resolve(required, optional, environ)


def mask_values(values: Iterable[str]) -> list[str]:
    """The values worth masking in output, longest first."""
    return sorted({v for v in values if len(v) >= MIN_MASK_LENGTH}, key=len, reverse=True)


def known_values(cfg) -> list[str]:
    """The values of the project's secrets that are set, to mask in what vp shows (`vp logs`);
    a missing one is no error here."""
    try:
        required, optional = project_names(cfg)
        return list(resolve([], [*required, *optional]).values())
    except VpError:
        return []
