"""The package list (everything else is in pyproject.toml): cdb's folders as found, plus the DeepSpeed
configs, which the repository keeps at its top (ds_configs/) and the wheel carries as cdb/ds_configs/.
cdb.strategy looks in both places, so editable installs and PYTHONPATH read the same one copy."""

from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["cdb*"]) + ["cdb.ds_configs"],
      package_dir={"cdb.ds_configs": "ds_configs"})
