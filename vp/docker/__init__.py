"""Docker support (ARCHITECTURE.md §6): build the project's image tagged by a hash of its build
context, push it only when the registry lacks that tag, and wrap the user's command in `docker run`.

    ref = ensure_image(root, dockerfile="Dockerfile", image="ghcr.io/me/mnist", push=True,
                       auth=registry_auth("ghcr.io/me/mnist", user_settings["docker"]))
    text = wrap_command("python train.py", image=ref, workdir="/workspace/mnist", env=["HF_TOKEN"])

Nothing here imports the Docker SDK at import time.
"""

from vp.docker.build import ensure_image, image_tag, registry_auth
from vp.docker.engine import FREE_BYTES_SHELL, check_disk, connect, image_size, parse_free_bytes
from vp.docker.run import wrap_command

__all__ = [
    "FREE_BYTES_SHELL",
    "check_disk",
    "connect",
    "ensure_image",
    "image_size",
    "image_tag",
    "parse_free_bytes",
    "registry_auth",
    "wrap_command",
]
