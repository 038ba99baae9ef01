"""Approval policies: which policy a gate falls under, who may decide it, and saving a new
version of a policy (docs/approvals.md).

A gate is matched once, when it opens: it records the policy and the version it opened under,
and its reminder, escalation and expiry times. A decision applies the policy's *current*
version (an admin who removes a group from a policy takes the decision from that group at once)
and the gate then records the version it was decided under.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.db import IntegrityError, transaction

from tidebase_core.auth import Principal
from tidebase_core.exceptions import (
    CommentRequired,
    Conflict,
    DomainError,
    InvalidRequest,
    NotAnApprover,
    NotFound,
    SelfApproval,
    TokenNotAllowed,
)
from tidebase_core.models import ApprovalPolicy, ApprovalPolicyVersion, ExpiryAction, GateStatus, RejectMode, Run
from tidebase_core.services import audit

BUDGET_GATE_PREFIX = "budget:"
"""Budget gates (``services.budgets.GATE_PREFIX``) fall only under policies whose gate pattern
starts with it: a catch-all ``*`` policy whose expiry approves must not grant money unattended."""

UNKNOWN_STARTERS = frozenset({"", "anonymous"})
"""``Run.started_by`` values that name nobody (an open API): no self-approval check applies."""

BODY_FIELDS = (
    "name",
    "enabled",
    "position",
    "workflow_pattern",
    "gate_pattern",
    "approver_groups",
    "approver_keys",
    "quorum",
    "reject_mode",
    "allow_self_approval",
    "require_comment",
    "allow_token",
    "email",
    "email_links",
    "slack",
    "remind_after_s",
    "escalate_after_s",
    "escalate_groups",
    "escalate_slack",
    "expire_after_s",
    "expiry_action",
)
"""What a policy version records (``ApprovalPolicyVersion.body``) and what an admin edits."""


@dataclass(frozen=True)
class Voter:
    """Who is deciding, as a policy sees them. ``identity`` is what a vote and ``decided_by``
    record (``user:alice``, ``key:ops``, ``api-key:env``, ``token:resolve-token``); ``channel`` is how the
    decision arrived (``services.audit`` channels)."""

    identity: str
    channel: str
    actor: str
    groups: frozenset[str] = field(default_factory=frozenset)
    via_token: bool = False
    user_id: int | None = None
    may_resolve: bool = True
    """Whether the voter holds the approver role (``dashboard.resolve_gate``) at all: a policy's
    groups narrow who decides among those who may, on every channel; they never widen it."""

    @property
    def who(self) -> str:
        """The voter in a refusal's message: a user by name, a key by label (not the ``actor``
        it claims, which is anyone's to choose), a token as such."""
        if self.via_token:
            return "this gate's resolve token"
        return self.identity.removeprefix("user:")


def voter_for_user(user: Any, *, channel: str) -> Voter:
    """A signed-in Django user (dashboard, email link, Slack), with their groups."""
    name = user.get_username()
    return Voter(
        identity=f"user:{name}",
        channel=channel,
        actor=name,
        groups=frozenset(user.groups.values_list("name", flat=True)),
        user_id=user.pk,
        may_resolve=user.is_active and user.has_perm("dashboard.resolve_gate"),
    )


def voter_for_principal(who: Principal, *, actor: str | None) -> Voter:
    """An API caller: a key (its name is what a policy's ``approver_keys`` lists), the env key,
    a dashboard session on the API, or the holder of a gate's resolve token."""
    if who.kind == "token":
        return Voter(identity=who.label, channel=audit.TOKEN, actor=actor or who.label, via_token=True)
    channel = audit.DASHBOARD if who.kind == "user" else audit.API_KEY
    return Voter(
        identity=who.label,
        channel=channel,
        actor=actor or who.label,
    )


def policy_for(*, run_id: str, gate_name: str) -> ApprovalPolicy | None:
    """The first enabled policy (by position, then id) matching the run's workflow and the gate's
    name, or None: one query for the policies (a handful of rows), one for the workflow when
    there is any."""
    candidates = list(ApprovalPolicy.objects.filter(enabled=True).order_by("position", "id"))
    if not candidates:
        return None
    workflow = Run.objects.filter(id=run_id).values_list("workflow_name", flat=True).first() or ""
    for policy in candidates:
        if gate_name.startswith(BUDGET_GATE_PREFIX) and not policy.gate_pattern.startswith(BUDGET_GATE_PREFIX):
            continue  # approving a budget gate grants money: only a policy that names budget gates governs them
        if fnmatch.fnmatchcase(workflow, policy.workflow_pattern) and fnmatch.fnmatchcase(
            gate_name, policy.gate_pattern
        ):
            return policy
    return None


def policy_fields(policy: ApprovalPolicy | None, now: dt.datetime) -> dict[str, Any]:
    """The policy columns of a gate opening now under ``policy``."""
    if policy is None:
        return {}

    def after(seconds: int | None) -> dt.datetime | None:
        return None if seconds is None else now + dt.timedelta(seconds=seconds)

    return {
        "policy": policy,
        "policy_version": policy.version,
        "remind_at": after(policy.remind_after_s),
        "escalate_at": after(policy.escalate_after_s),
        "expire_at": after(policy.expire_after_s),
    }


def key_identities(names: list[str]) -> set[str]:
    """The ``decided_by`` identities of the keys a policy lists by name: ``env`` is the env key
    (``TIDEBASE_API_KEY``), any other name the app key of that name (so an app key named ``env``
    is not the env key, and the two can never fill a quorum as one)."""
    return {"api-key:env" if n == "env" else f"key:{n}" for n in names}


def refusal(
    *,
    voter: Voter,
    policy: ApprovalPolicy,
    started_by: str | None,
    decision: str,
    comment: str,
) -> DomainError | None:
    """Why ``policy`` does not let ``voter`` record ``decision``, or None. The inbox asks this
    (without a decision or comment) to show and filter the gates a user may decide."""
    if not voter.may_resolve:
        return NotAnApprover(f"{voter.who} may not approve or reject gates (the approver role)")
    if voter.via_token:
        if not policy.allow_token:
            return TokenNotAllowed(f"policy {policy.name!r} does not let a resolve token decide this gate")
    elif policy.approver_groups or policy.approver_keys:
        in_group = bool(voter.groups.intersection(policy.approver_groups))
        listed_key = voter.identity in key_identities(policy.approver_keys)  # users are user:<name>
        if not (in_group or listed_key):
            whom = ", ".join([*policy.approver_groups, *(f"key {k}" for k in policy.approver_keys)])
            return NotAnApprover(f"policy {policy.name!r} lets only {whom} decide this gate")
    if (
        not policy.allow_self_approval
        and decision == GateStatus.APPROVED
        and started_by not in UNKNOWN_STARTERS
        and started_by == voter.identity
    ):
        return SelfApproval(f"{voter.who} started this run and may not approve its gates (policy {policy.name!r})")
    if policy.require_comment and decision and not comment.strip():
        return CommentRequired(f"policy {policy.name!r} requires a comment with every decision", field="comment")
    return None


def policy_body(policy: ApprovalPolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in BODY_FIELDS}


SLACK_FIELDS = ("slack", "escalate_slack")


def slack_label(target: str) -> str:
    """A Slack target as pages and the audit trail show it: a channel id as is, a webhook URL by
    its host and its last four characters (the URL is the credential)."""
    if not target:
        return ""
    if "://" not in target:
        return target
    host = urlsplit(target).hostname or "webhook"
    return f"{host} webhook …{target[-4:]}"


def audit_body(body: dict[str, Any]) -> dict[str, Any]:
    """A policy version as the audit trail keeps it: Slack webhook URLs masked (an append-only,
    exported log must not hold a credential)."""
    return {k: slack_label(v) if k in SLACK_FIELDS else v for k, v in body.items()}


def _validate(body: dict[str, Any]) -> None:
    if not str(body.get("name") or "").strip():
        raise InvalidRequest("a policy needs a name", field="name")
    if int(body.get("quorum") or 0) < 1:
        raise InvalidRequest("quorum must be at least 1", field="quorum")
    for name in ("workflow_pattern", "gate_pattern"):
        if not str(body.get(name) or "").strip():
            raise InvalidRequest(f"{name} may not be empty (use * to match everything)", field=name)
    if body.get("reject_mode") not in RejectMode.values:
        raise InvalidRequest(f"reject_mode must be one of {', '.join(RejectMode.values)}", field="reject_mode")
    if body.get("expiry_action") not in ExpiryAction.values:
        raise InvalidRequest(f"expiry_action must be one of {', '.join(ExpiryAction.values)}", field="expiry_action")
    times = [(n, body.get(n)) for n in ("remind_after_s", "escalate_after_s", "expire_after_s")]
    for name, value in times:
        if value is not None and int(value) <= 0:
            raise InvalidRequest(f"{name} must be a positive number of seconds", field=name)
    if body.get("expiry_action") != ExpiryAction.NONE and body.get("expire_after_s") is None:
        raise InvalidRequest("an expiry action needs expire_after_s", field="expire_after_s")
    for name in ("approver_groups", "approver_keys", "escalate_groups"):
        value = body.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InvalidRequest(f"{name} must be a list of names", field=name)


@transaction.atomic(durable=True)
def policy_save(
    *, policy_id: int | None, body: dict[str, Any], actor: str, channel: str = audit.DASHBOARD
) -> ApprovalPolicy:
    """Create a policy (``policy_id`` None) or save a new version of one: the policy row is
    updated, the whole new version is kept in ``tb_approval_policy_version`` and the change is
    appended to the audit trail. ``body`` holds ``BODY_FIELDS`` (missing ones keep their value).
    Raises InvalidRequest for a bad body and Conflict for a taken name."""
    if policy_id is None:
        policy = ApprovalPolicy(version=0)
    else:
        found = ApprovalPolicy.objects.select_for_update().filter(id=policy_id).first()
        if found is None:
            raise NotFound("approval policy not found")
        policy = found
    merged = {**policy_body(policy), **{k: v for k, v in body.items() if k in BODY_FIELDS}}
    _validate(merged)
    before = None if policy_id is None else policy_body(policy)
    if before is not None and before == {**merged, "name": str(merged["name"]).strip()}:
        return policy  # nothing changed: no new version, nothing to audit
    for name, value in merged.items():
        setattr(policy, name, value)
    policy.name = policy.name.strip()
    policy.version += 1
    policy.updated_by = actor
    try:
        with transaction.atomic():
            policy.save()
    except IntegrityError as exc:
        raise Conflict(f"a policy named {policy.name!r} already exists", field="name") from exc
    after = policy_body(policy)
    ApprovalPolicyVersion.objects.create(policy=policy, version=policy.version, body=after, created_by=actor)
    changed = sorted(k for k in after if before is None or before[k] != after[k])
    audit.audit_append(
        kind=audit.POLICY_CHANGE,
        actor=actor,
        channel=channel,
        policy_version=policy.version,
        data={"policyId": policy.id, "policy": policy.name, "changed": changed, "body": audit_body(after)},
    )
    return policy
