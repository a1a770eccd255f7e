"""Pin every image k8s/ runs by tag and digest: run it where the registries are reachable.

    python k8s/images/refresh.py                          # re-resolve the third-party images' tags
    python k8s/images/refresh.py --build REGISTRY         # also build, push and pin cdb and cdb-mlflow

Where the pins live (and nowhere else):
  - the `images:` entries of the kustomizations under k8s/ (k8s/base, k8s/sweep, k8s/sweep/raycronjob):
    `newTag` is the tag, `digest` the pin; kustomize renders `NAME:TAG@DIGEST` into every pod;
  - the `ARG <NAME>_IMAGE=REF:TAG@sha256:...` base-image lines of k8s/images/*.Dockerfile.
A third-party image keeps its tag and gets the digest the registry gives for it now (`crane digest`, or
`docker buildx imagetools inspect` without crane). With --build, the project's images are built from
k8s/images/ (train.Dockerfile from the repository root, mlflow.Dockerfile from k8s/images), tagged
<version>-<commit> (pyproject.toml's version, `git rev-parse --short HEAD`; --tag overrides), pushed to
REGISTRY, and pinned by the digest the push gave, in every kustomization that names them. Until then the
project's images carry the project's version as their tag and no registry: nothing pulls them
(tests/test_k8s.py allows exactly that, and rejects floating tags and placeholder digests everywhere).

Needs: crane or docker (buildx); docker for --build. Edits keep the files' comments.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT_IMAGES = {"cdb": ("k8s/images/train.Dockerfile", "."), "cdb-mlflow": ("k8s/images/mlflow.Dockerfile", "k8s/images")}
"""The images this repository builds: name -> (Dockerfile, build context), both relative to the repository."""
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
BASE_IMAGE_ARG = re.compile(r"^(ARG \w+_IMAGE=)(\S+?):([\w.-]+)@(sha256:[0-9a-f]{64})$", re.M)


def kustomizations(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "k8s").rglob("kustomization.yaml") if "schemas" not in p.parts)


def image_entries(text: str) -> list[dict]:
    """The `images:` entries of a kustomization: name, newName, newTag, digest, and the (start, end)
    character span of the entry's lines."""
    block = re.search(r"^images:\n((?:[ \t]+.*\n|[ \t]*#.*\n|\n)*)", text, re.M)
    if not block:
        return []
    entries = []
    for match in re.finditer(r"^  - name: (\S+)\n((?:    \w+: .*\n)*)", block.group(1), re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(2), re.M))
        entries.append({"name": match.group(1), **{k: v.strip().strip('"') for k, v in fields.items()},
                        "span": (block.start(1) + match.start(), block.start(1) + match.end())})
    return entries


def render_entry(name: str, new_name: str | None, tag: str, digest: str | None) -> str:
    lines = [f"  - name: {name}\n"]
    if new_name:
        lines.append(f"    newName: {new_name}\n")
    lines.append(f'    newTag: "{tag}"\n')
    if digest:
        lines.append(f"    digest: {digest}\n")
    return "".join(lines)


def resolve(ref: str) -> str:
    """The digest a registry gives for `ref` (REPOSITORY:TAG) now."""
    if shutil.which("crane"):
        out = subprocess.run(["crane", "digest", ref], capture_output=True, text=True)
    else:
        out = subprocess.run(["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Manifest.Digest}}"],
                             capture_output=True, text=True)
    digest = out.stdout.strip().strip('"')
    if out.returncode != 0 or not DIGEST.fullmatch(digest):
        sys.exit(f"refresh: no digest for {ref}: {out.stderr.strip() or out.stdout.strip()}")
    return digest


def refresh_kustomization(path: Path, pins: dict[str, tuple[str, str, str]]) -> list[str]:
    """Rewrite the entries of `path`: third-party ones with their tag's digest now, and the project's ones
    that `pins` holds (name -> (newName, tag, digest)). Returns what changed, as `file: old -> new`."""
    text = path.read_text()
    changes = []
    for entry in reversed(image_entries(text)):
        name = entry["name"]
        if name in PROJECT_IMAGES:
            if name not in pins:
                continue
            new_name, tag, digest = pins[name]
        else:
            new_name, tag = entry.get("newName"), entry["newTag"]
            digest = resolve(f"{new_name or name}:{tag}")
        start, end = entry["span"]
        new = render_entry(name, new_name, tag, digest)
        if text[start:end] != new:
            old_ref = f"{entry.get('newName') or name}:{entry.get('newTag')}" + (f"@{entry['digest']}" if entry.get("digest") else "")
            changes.append(f"{path}: {old_ref} -> {new_name or name}:{tag}@{digest}")
            text = text[:start] + new + text[end:]
    path.write_text(text)
    return changes


def refresh_dockerfile(path: Path) -> list[str]:
    text = path.read_text()
    changes = []

    def repin(match: re.Match) -> str:
        prefix, repository, tag, old = match.groups()
        digest = resolve(f"{repository}:{tag}")
        if digest != old:
            changes.append(f"{path}: {repository}:{tag}@{old} -> @{digest}")
        return f"{prefix}{repository}:{tag}@{digest}"

    path.write_text(BASE_IMAGE_ARG.sub(repin, text))
    return changes


def build_and_push(repo: Path, registry: str, tag: str) -> dict[str, tuple[str, str, str]]:
    pins = {}
    for name, (dockerfile, context) in PROJECT_IMAGES.items():
        ref = f"{registry}/{name}:{tag}"
        for cmd in (["docker", "build", "-f", str(repo / dockerfile), "-t", ref, str(repo / context)],
                    ["docker", "push", ref]):
            if subprocess.run(cmd).returncode != 0:
                sys.exit(f"refresh: {' '.join(cmd)} failed")
        pins[name] = (f"{registry}/{name}", tag, resolve(ref))
    return pins


def default_tag(repo: Path) -> str:
    version = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if commit.returncode != 0:
        sys.exit(f"refresh: no git commit to tag the images with ({commit.stderr.strip()}); pass --tag")
    return f"{version}-{commit.stdout.strip()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python k8s/images/refresh.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--build", metavar="REGISTRY", help="build, push and pin cdb and cdb-mlflow under REGISTRY "
                   "(e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/team)")
    p.add_argument("--tag", help="the project images' tag (default: <version>-<git short commit>)")
    p.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tag and not args.build:
        p.error("--tag names the images --build makes")
    repo = args.repo.resolve()
    changes = []
    for dockerfile in sorted((repo / "k8s" / "images").glob("*.Dockerfile")):
        changes += refresh_dockerfile(dockerfile)
    pins = build_and_push(repo, args.build.rstrip("/"), args.tag or default_tag(repo)) if args.build else {}
    for path in kustomizations(repo):
        changes += refresh_kustomization(path, pins)
    print("\n".join(changes) if changes else "refresh: every pin is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
