"""The committed gRPC modules are what the pinned grpcio-tools generates from sbatch.proto."""

from __future__ import annotations

from pathlib import Path

from sbatch_service.proto import generate


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    relative = generate.PROTO_DIR.relative_to(generate.REPO_ROOT)
    for name in generate.GENERATED:
        fresh = (tmp_path / relative / name).read_text()
        committed = (generate.PROTO_DIR / name).read_text()
        assert committed == fresh, f"{name} is stale: run .venv/bin/python -m sbatch_service.proto.generate"


def test_services_have_the_protocol_names() -> None:
    from sbatch_service.proto import sbatch_pb2

    services = sbatch_pb2.DESCRIPTOR.services_by_name
    assert sbatch_pb2.DESCRIPTOR.package == "sbatchapi.v1alpha1"
    assert (
        services["AuthAPI"].methods_by_name["Challenge"].full_name == "sbatchapi.v1alpha1.AuthAPI.Challenge"
    )
    assert (
        services["SBatchAPI"].methods_by_name["GetSBatch"].full_name
        == "sbatchapi.v1alpha1.SBatchAPI.GetSBatch"
    )
    fields = [f.name for f in sbatch_pb2.GetSBatchRequest.DESCRIPTOR.fields]
    assert fields == [
        "batch_location_hash",
        "signed_challenge",
        "challenge",
        "provider_address",
        "customer_address",
        "job_id",
    ]
