"""The log service's API is DeepSquare's `logger.v1alpha1` field for field (read from the reference's
log.pb.go descriptor: names, numbers, types, labels, streaming). That the committed modules are
up to date is tests/grid_protocol/test_proto.py's."""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from grid_protocol.proto import log_pb2

STRING, BYTES, INT64, UINT64 = 9, 12, 3, 4
OPTIONAL, REPEATED = 1, 3
REFERENCE_MESSAGES = {
    "WriteRequest": [
        ("log_name", 1, STRING),
        ("user", 2, STRING),
        ("data", 3, BYTES),
        ("timestamp", 4, INT64),
    ],
    "WriteResponse": [],
    "ReadRequest": [
        ("address", 1, STRING),
        ("log_name", 2, STRING),
        ("timestamp", 3, UINT64),
        ("signed_hash", 4, BYTES),
    ],
    "ReadResponse": [("data", 1, BYTES), ("timestamp", 2, INT64)],
    "WatchListRequest": [("address", 1, STRING), ("timestamp", 2, UINT64), ("signed_hash", 3, BYTES)],
    "WatchListResponse": [("log_names", 1, STRING)],
}
REFERENCE_METHODS = [
    ("Write", ".logger.v1alpha1.WriteRequest", ".logger.v1alpha1.WriteResponse", True, False),
    ("Read", ".logger.v1alpha1.ReadRequest", ".logger.v1alpha1.ReadResponse", False, True),
    ("WatchList", ".logger.v1alpha1.WatchListRequest", ".logger.v1alpha1.WatchListResponse", False, True),
]


def test_the_api_is_the_references_on_the_wire() -> None:
    file = descriptor_pb2.FileDescriptorProto()
    log_pb2.DESCRIPTOR.CopyToProto(file)
    assert (file.package, file.syntax) == ("logger.v1alpha1", "proto3")
    messages = {
        message.name: [(f.name, f.number, f.type) for f in message.field] for message in file.message_type
    }
    assert messages == REFERENCE_MESSAGES
    labels = {(m.name, f.name): f.label for m in file.message_type for f in m.field}
    assert all(
        label == OPTIONAL for key, label in labels.items() if key != ("WatchListResponse", "log_names")
    )
    assert labels[("WatchListResponse", "log_names")] == REPEATED
    (service,) = file.service
    assert service.name == "LoggerAPI"
    methods = [
        (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in service.method
    ]
    assert methods == REFERENCE_METHODS
    assert log_pb2.DESCRIPTOR.services_by_name["LoggerAPI"].methods_by_name["Read"].full_name == (
        "logger.v1alpha1.LoggerAPI.Read"
    )
