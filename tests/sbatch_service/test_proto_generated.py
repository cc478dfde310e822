"""The sbatch service's API keeps the protocol's names. That the committed modules are up to date is
tests/grid_protocol/test_proto.py's."""

from __future__ import annotations


def test_services_have_the_protocol_names() -> None:
    from grid_protocol.proto import sbatch_pb2

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
