"""One saga instance per order, and its step log (what happened, when, and why)."""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from a4co import clock
from saga.definition import SagaStatus, Trigger
from saga.engine import SagaState


class SagaInstance(models.Model):
    Status = models.TextChoices("Status", [(s.value, s.value) for s in SagaStatus])

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    order = models.OneToOneField("orders.Order", related_name="saga", on_delete=models.CASCADE)
    status = models.CharField(max_length=24, choices=Status.choices, default=SagaStatus.STARTED)
    current_step = models.CharField(max_length=60, default="reserve_inventory")
    compensation_reason = models.CharField(max_length=500, blank=True, default="")
    compensation_attempts = models.PositiveIntegerField(default=0)
    compensations_pending = models.JSONField(default=list, blank=True,
                                             help_text="Steps still to undo, in order (head first).")
    saga_deadline_at = models.DateTimeField()
    step_deadline_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True,
                                       help_text="Next moment the timeout sweep looks at it; empty once ended.")
    events_ignored = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["deadline_at"], condition=Q(deadline_at__isnull=False),
                         name="saga_pending_deadline"),
            models.Index(fields=["status"], name="saga_status"),
        ]

    def __str__(self) -> str:
        return f"Saga {self.id} ({self.status})"

    def to_state(self) -> SagaState:
        return SagaState(
            status=SagaStatus(self.status),
            saga_deadline_at=self.saga_deadline_at,
            step_deadline_at=self.step_deadline_at,
            compensation_reason=self.compensation_reason,
            compensation_attempts=self.compensation_attempts,
            compensations_pending=tuple(self.compensations_pending),
        )

    # What apply_state writes, plus the bookkeeping saga_apply adds (save(update_fields=...)).
    STATE_FIELDS = ("status", "current_step", "saga_deadline_at", "step_deadline_at", "deadline_at",
                    "compensation_reason", "compensation_attempts", "compensations_pending",
                    "updated_at", "finished_at")

    def apply_state(self, state: SagaState) -> None:
        self.status = state.status.value
        self.current_step = state.current_step
        self.saga_deadline_at = state.saga_deadline_at
        self.step_deadline_at = state.step_deadline_at
        self.deadline_at = state.next_deadline_at
        self.compensation_reason = state.compensation_reason
        self.compensation_attempts = state.compensation_attempts
        self.compensations_pending = list(state.compensations_pending)


class SagaStep(models.Model):
    Trigger = models.TextChoices("Trigger", [(t.value, t.value) for t in Trigger] + [("start", "start")])

    saga = models.ForeignKey(SagaInstance, related_name="steps", on_delete=models.CASCADE)
    step = models.CharField(max_length=40)
    trigger = models.CharField(max_length=40)
    outcome = models.CharField(max_length=80)
    status_from = models.CharField(max_length=24, blank=True, default="")
    status_to = models.CharField(max_length=24, blank=True, default="")
    applied = models.BooleanField(default=True)
    detail = models.JSONField(default=dict, blank=True)
    event_id = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.step}: {self.outcome}"


class AuditEntry(models.Model):
    """One ops action from the admin console: who, when, what, on which order, why, and how it went.

    Lives in the Order Service's database (with the sagas it is mostly about) and is written by
    the service that carries the action out, in the same transaction as the action when the
    action changes this database. `user` is a username, not a foreign key: auth lives in
    `default`. Never edited or deleted through the admin.
    """

    class Action(models.TextChoices):
        RETRY_STEP = "retry_step", "retry the current step"
        FORCE_COMPENSATION = "force_compensation", "force compensation"
        MARK_RESOLVED = "mark_resolved", "mark resolved"
        REFUND = "refund", "refund the payment"

    class Outcome(models.TextChoices):
        APPLIED = "applied", "applied"
        REFUSED = "refused", "refused (nothing changed)"
        FAILED = "failed", "failed (error)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    at = models.DateTimeField(default=clock.now, db_index=True)
    user = models.CharField(max_length=150, help_text="Username of the staff member (auth lives in 'default').")
    action = models.CharField(max_length=32, choices=Action.choices)
    target = models.CharField(max_length=64, db_index=True, help_text="The order id the action was about.")
    reason = models.CharField(max_length=300)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    details = models.JSONField(default=dict, blank=True,
                               help_text="What happened: status before and after, messages sent, or the error.")

    class Meta:
        ordering = ["-at"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.user} {self.action} {self.target} ({self.outcome})"
