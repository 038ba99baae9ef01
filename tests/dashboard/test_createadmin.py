from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command


def test_createadmin__creates_a_superuser_in_the_admin_group(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEBASE_ADMIN_PASSWORD", "a-long-enough-pass-77")
    call_command("tidebase_createadmin", "first", "--email", "first@example.com")
    user = User.objects.get(username="first")
    assert user.is_superuser
    assert user.is_staff
    assert user.check_password("a-long-enough-pass-77")
    assert list(user.groups.values_list("name", flat=True)) == ["admin"]
    assert user.has_perm("dashboard.manage_api_keys")


def test_createadmin__refuses_a_weak_password(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEBASE_ADMIN_PASSWORD", "123")
    with pytest.raises(CommandError):
        call_command("tidebase_createadmin", "weak")
    assert not User.objects.filter(username="weak").exists()
