"""gRPC servicer of clearhouse.billing.v1: proto in, use case, proto out."""

from __future__ import annotations

from clearhouse.billing.v1 import billing_pb2_grpc

from services.billing.service_layer.unit_of_work import Database


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db
