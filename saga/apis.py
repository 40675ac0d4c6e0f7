"""Saga HTTP API (staff only)."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from a4co.api import IsStaff
from a4co.openapi import STAFF_ONLY, UNAUTHENTICATED, not_found
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

    @extend_schema_field(inline_serializer(name="SagaDeadlines", fields={
        "saga": serializers.DateTimeField(allow_null=True, help_text="The whole saga's deadline."),
        "step": serializers.DateTimeField(allow_null=True, help_text="The current step's (payment, compensation)."),
        "next": serializers.DateTimeField(allow_null=True, help_text="When the timeout sweep looks next; null once "
                                                                     "ended or waiting for ops.")}))
    def get_deadlines(self, saga: SagaInstance) -> dict:
        return {"saga": _iso(saga.saga_deadline_at), "step": _iso(saga.step_deadline_at),
                "next": _iso(saga.deadline_at)}

    @extend_schema_field(inline_serializer(name="SagaTimestamps", fields={
        "startedAt": serializers.DateTimeField(), "updatedAt": serializers.DateTimeField(),
        "finishedAt": serializers.DateTimeField(allow_null=True)}))
    def get_timestamps(self, saga: SagaInstance) -> dict:
        return {"startedAt": _iso(saga.started_at), "updatedAt": _iso(saga.updated_at),
                "finishedAt": _iso(saga.finished_at)}


class SagaDetailApi(APIView):
    permission_classes = [IsStaff]

    @extend_schema(
        operation_id="sagas_retrieve", summary="Get an order's saga and its step log (staff)", tags=["sagas"],
        parameters=[OpenApiParameter("order_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="Order id.")],
        responses={200: SagaOutputSerializer, 401: UNAUTHENTICATED, 403: STAFF_ONLY,
                   404: not_found("No saga for this order (unknown or malformed id)")})
    def get(self, request, order_id: str):
        saga = saga_get_for_order(order_id=order_id)
        if saga is None:
            raise NotFound("No saga for this order.")
        return Response(SagaOutputSerializer(saga).data)
