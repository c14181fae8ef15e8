"""gRPC servicer of clearhouse.clearing.v1: proto in, use case, proto out."""

from __future__ import annotations

from clearhouse.clearing.v1 import clearing_pb2_grpc

from services.clearing.service_layer.unit_of_work import Database


class ClearingServicer(clearing_pb2_grpc.ClearingServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
