"""scripts/compose-smoke's parts that need no Docker engine: the lab it starts without the
images a room may lack, the stand-ins it builds, and how it reads `docker stats`.

The smoke itself runs in CI (.ci/run) against a real engine.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from drill import compose_smoke, preflight
from drill.lab.model import LabConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_lab_without_grafana_and_jaeger_is_every_other_service(tmp_path: Path) -> None:
    """The override the smoke writes when their images are absent leaves exactly those two out,
    as the real Compose v2 binary resolves compose.yaml with it."""
    config = LabConfig(ROOT, tmp_path / "state")
    every = compose_smoke.services(config, [])
    assert set(compose_smoke.OPTIONAL) < set(every)
    override = tmp_path / "without.yaml"
    override.write_text(yaml.safe_dump(compose_smoke.without(compose_smoke.OPTIONAL)))
    left = compose_smoke.services(config, [override])
    assert sorted(left) == sorted(set(every) - set(compose_smoke.OPTIONAL))


def test_leaving_out_a_service_others_need_is_refused(tmp_path: Path) -> None:
    """Postgres is required by the ledger: compose refuses a lab without it, and the smoke says
    so rather than starting half a lab."""
    config = LabConfig(ROOT, tmp_path / "state")
    override = tmp_path / "without.yaml"
    override.write_text(yaml.safe_dump(compose_smoke.without(["postgres"])))
    with pytest.raises(compose_smoke.SmokeError, match="postgres"):
        compose_smoke.services(config, [override])


def test_every_standin_has_its_dockerfile_and_replaces_an_image_compose_names() -> None:
    standins = ROOT / "scripts" / "standins"
    named = {service: image for image, service in preflight.compose_images(ROOT).items()}
    for service, name in compose_smoke.STANDINS.items():
        dockerfile = standins / f"{name}.Dockerfile"
        assert dockerfile.is_file(), dockerfile
        assert service in named, f"compose.yaml has no image for {service}"
        text = dockerfile.read_text()
        # Built FROM the local Debian base the smoke makes, from Debian's packages.
        assert "ARG BASE_IMAGE=" + compose_smoke.BASE_IMAGE in text
        assert "apt-get install" in text
    # Every image compose names is either built by the lab, stood in for, or optional.
    covered = {"drill-lab:latest"} | {
        named[s] for s in (*compose_smoke.STANDINS, *compose_smoke.OPTIONAL)
    }
    assert set(preflight.compose_images(ROOT)) <= covered


@pytest.mark.parametrize(
    ("text", "mib"),
    [("254.3MiB", 254.3), ("1.5GiB", 1536.0), ("512KiB", 0.5), ("320MiB ", 320.0), ("?", math.nan)],
)
def test_docker_stats_memory_reads_as_mib(text: str, mib: float) -> None:
    value = compose_smoke._to_mib(text)
    assert (math.isnan(value) and math.isnan(mib)) or value == pytest.approx(mib)
