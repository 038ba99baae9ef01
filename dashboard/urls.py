from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from dashboard import views
from dashboard.views import audit as audit_views
from dashboard.views import budgets as budget_views
from dashboard.views import links as link_views
from dashboard.views import policies as policy_views
from retention import views as retention_views

app_name = "dashboard"
urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("gates/<str:gate_id>/decide", views.gate_decide, name="gate-decide"),
    path("decide/<str:token>/", link_views.gate_link, name="gate-link"),  # one-click email links
    path("runs/", views.run_list, name="runs"),
    path("runs/<str:run_id>/", views.run_detail, name="run"),
    path("runs/<str:run_id>/cancel", views.run_cancel_view, name="run-cancel"),
    path("runs/<str:run_id>/recover", views.run_recover_view, name="run-recover"),
    path("usage/", views.usage, name="usage"),
    path("budgets/", budget_views.budget_list, name="budgets"),
    path("budgets/set", budget_views.budget_set, name="budget-set"),
    path("runs/<str:run_id>/budget", budget_views.run_budget_set, name="run-budget"),
    path("queues/", views.queue_list, name="queues"),
    path("processes/", views.process_list, name="processes"),
    path("storage/", retention_views.storage, name="storage"),
    path("storage/policies", retention_views.policy_save, name="storage-policy-save"),
    path("storage/policies/<int:policy_id>/delete", retention_views.policy_delete, name="storage-policy-delete"),
    path("webhooks/", views.webhook_list, name="webhooks"),
    path("webhooks/<str:kind>/<str:delivery_id>/redeliver", views.webhook_redeliver, name="webhook-redeliver"),
    path("policies/", policy_views.policy_list, name="policies"),
    path("policies/new", policy_views.policy_create, name="policy-create"),
    path("policies/<int:policy_id>/", policy_views.policy_detail, name="policy"),
    path("policies/<int:policy_id>/edit", policy_views.policy_update, name="policy-edit"),
    path("policies/<int:policy_id>/enabled", policy_views.policy_enable, name="policy-enable"),
    path("audit/", audit_views.audit_list, name="audit"),
    path("audit/verify", audit_views.audit_verify_view, name="audit-verify"),
    path("audit/export.<str:fmt>", audit_views.audit_export, name="audit-export"),
    path("keys/", views.key_list, name="keys"),
    path("keys/create", views.key_create, name="key-create"),
    path("keys/<str:key_id>/revoke", views.key_revoke, name="key-revoke"),
    # Accounts: Django's views with our templates.
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="registration/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(
            template_name="registration/password_change.html", success_url=reverse_lazy("dashboard:password-done")
        ),
        name="password",
    ),
    path(
        "password/done/",
        auth_views.PasswordChangeDoneView.as_view(template_name="registration/password_change_done.html"),
        name="password-done",
    ),
]
