"""Where a run's checkpoints, exported model and evaluation outputs live, and the check that every
Ray node sees it.

The storage is the run folder (train.output_dir), which every node must see as the same folder (a
shared mount), or an object store (train.storage_path: s3://, gs://), reached through a pyarrow
filesystem from every node. `Storage` is picklable: Ray Train, the workers and the probe tasks get it
as it is.
"""

from __future__ import annotations

import uuid
from pathlib import Path

PROBE_PREFIX = ".cdb-probe-"
"""Name prefix of the token file the driver writes and every node reads (removed after the probe)."""


class Storage:
    """A run's storage root: `location` as configured, `fs`/`root` as pyarrow reaches it."""

    def __init__(self, location: str):
        import pyarrow.fs

        self.location = location
        self.remote = "://" in location
        if self.remote:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(location)
        else:
            self.fs, self.root = pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())

    @classmethod
    def of(cls, config) -> Storage:
        return cls(config.train.storage_path or config.train.output_dir)

    def path(self, *parts: str) -> str:
        """A path under the root, as `fs` takes it."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri(self, *parts: str) -> str:
        """A path under the root as the user names it (for messages and MLflow): the URI's scheme and
        bucket, without its query options."""
        if not self.remote:
            return self.path(*parts)
        return f"{self.location.split('://', 1)[0]}://{self.path(*parts)}"

    def exists(self, *parts: str) -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self.path(*parts)).type != pyarrow.fs.FileType.NotFound

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as handle:
            return handle.read().decode()

    def write_text(self, text: str, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts[:-1]), recursive=True)
        with self.fs.open_output_stream(self.path(*parts)) as handle:
            handle.write(text.encode())

    def upload(self, local: str | Path, *parts: str) -> None:
        """A local file or folder to `parts` (a folder's files replace those of the same name)."""
        import pyarrow.fs

        local = Path(local)
        if local.is_dir():
            self.fs.create_dir(self.path(*parts), recursive=True)
        pyarrow.fs.copy_files(str(local.resolve()), self.path(*parts), source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=self.fs)

    def download(self, local: str | Path, *parts: str) -> None:
        """`parts` (a file or a folder) to the local path `local`."""
        import pyarrow.fs

        local = Path(local)
        is_folder = self.fs.get_file_info(self.path(*parts)).type == pyarrow.fs.FileType.Directory
        (local if is_folder else local.parent).mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(self.path(*parts), str(local.resolve()), source_filesystem=self.fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())


def _read_token(storage: Storage, name: str) -> str:
    """What this node reads of the probe token (a Ray task, one per node): the token, or the error."""
    try:
        return storage.read_text(name)
    except Exception as exc:  # not found, no access, no credentials: each is the answer
        return f"{type(exc).__name__}: {exc}"


def nodes_not_seeing(storage: Storage, timeout: float = 300) -> list[str]:
    """The alive nodes of the connected Ray cluster that do not see the token the driver writes
    into `storage`, each as 'ADDRESS (node ID): what it read'; [] when all do. Each node reads in a
    task pinned to it that takes no CPU, so a busy or CPU-less node (the head) is probed too."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    name = f"{PROBE_PREFIX}{token}"
    storage.write_text(token, name)
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        read = ray.remote(num_cpus=0, max_retries=0)(_read_token)
        seen = ray.get([read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                        .remote(storage, name) for node in nodes], timeout=timeout)
    finally:
        storage.fs.delete_file(storage.path(name))
    return [f"{node['NodeManagerAddress']} (node {node['NodeID'][:12]}): {answer or 'an empty file'}"
            for node, answer in zip(nodes, seen) if answer != token]
