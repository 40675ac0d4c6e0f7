"""Saga HTTP API (staff only)."""
from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from a4co.api import IsStaff
from saga.models import SagaInstance
from saga.selectors import saga_get_for_order


def _iso(value) -> str | None:
    return serializers.DateTimeField().to_representation(value) if value else None


class SagaStepOutputSerializer(serializers.Serializer):
    step = serializers.CharField()
    trigger = serializers.CharField()
    outcome = serializers.CharField()
    applied = serializers.BooleanField()
    statusFrom = serializers.CharField(source="status_from")
    statusTo = serializers.CharField(source="status_to")
    eventId = serializers.CharField(source="event_id")
    detail = serializers.JSONField()
    at = serializers.DateTimeField(source="created_at")


class SagaOutputSerializer(serializers.Serializer):
    sagaId = serializers.UUIDField(source="id")
    orderId = serializers.UUIDField(source="order_id")
    status = serializers.CharField()
    currentStep = serializers.CharField(source="current_step")
    compensationReason = serializers.CharField(source="compensation_reason")
    compensationAttempts = serializers.IntegerField(source="compensation_attempts")
    eventsIgnored = serializers.IntegerField(source="events_ignored")
    steps = SagaStepOutputSerializer(many=True)
    deadlines = serializers.SerializerMethodField()
    timestamps = serializers.SerializerMethodField()

    def get_deadlines(self, saga: SagaInstance) -> dict:
        return {"saga": _iso(saga.saga_deadline_at), "step": _iso(saga.step_deadline_at),
                "next": _iso(saga.deadline_at)}

    def get_timestamps(self, saga: SagaInstance) -> dict:
        return {"startedAt": _iso(saga.started_at), "updatedAt": _iso(saga.updated_at),
                "finishedAt": _iso(saga.finished_at)}


class SagaDetailApi(APIView):
    permission_classes = [IsStaff]

    def get(self, request, order_id: str):
        saga = saga_get_for_order(order_id=order_id)
        if saga is None:
            raise NotFound("No saga for this order.")
        return Response(SagaOutputSerializer(saga).data)
