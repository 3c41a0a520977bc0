"""Jars from Maven Central, resolved by the project's small poms into the git-ignored .cache/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
KAFKA_POM = PROJECT_ROOT / "local" / "maven" / "kafka" / "pom.xml"
SPARK_POM = PROJECT_ROOT / "local" / "maven" / "spark" / "pom.xml"


class MavenError(RuntimeError):
    pass


def pom_property(pom: Path, name: str) -> str:
    found = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", pom.read_text())
    if not found:
        raise MavenError(f"no <{name}> in {pom}")
    return found.group(1)


def resolve(pom: Path, folder: Path, marker: str) -> Path:
    """Run `mvn dependency:copy-dependencies` unless `folder/marker` is already there."""
    if not (folder / marker).exists():
        if shutil.which("mvn") is None:
            raise MavenError("Maven (mvn) is needed to fetch jars from Maven Central")
        done = subprocess.run(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"],
                              capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0 or not (folder / marker).exists():
            raise MavenError(f"mvn could not fetch the jars of {pom}:\n{done.stdout[-2000:]}")
    return folder


def kafka_version() -> str:
    return pom_property(KAFKA_POM, "kafka.version")


def kafka_libs() -> Path:
    """The broker's jars (Apache Kafka, KRaft)."""
    v = kafka_version()
    return resolve(KAFKA_POM, PROJECT_ROOT / ".cache" / f"kafka-{v}" / "libs",
                   f"kafka_2.13-{v}.jar")


def spark_connector_jars() -> list[str]:
    """Spark's official Kafka source and what it needs beyond pyspark's jars."""
    v = pom_property(SPARK_POM, "spark.version")
    folder = resolve(SPARK_POM, PROJECT_ROOT / ".cache" / f"spark-kafka-{v}" / "jars",
                     f"spark-sql-kafka-0-10_2.13-{v}.jar")
    return sorted(str(p) for p in folder.glob("*.jar"))
