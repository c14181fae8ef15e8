"""gRPC servicer of clearhouse.settlement.v1: proto in, use case, proto out."""

from __future__ import annotations

from clearhouse.settlement.v1 import settlement_pb2_grpc

from services.settlement.service_layer.unit_of_work import Database


class SettlementServicer(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
