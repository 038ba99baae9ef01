from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import tidebase
import tidebase.aio
from tidebase import verify_webhook_signature


def test_all__exports_exist_and_include_the_documented_names() -> None:
    for module in (tidebase, tidebase.aio):
        assert sorted(module.__all__) == sorted(set(module.__all__))
        for name in module.__all__:
            assert hasattr(module, name), name
    documented = {
        "Tidebase",
        "RunContext",
        "GateDecision",
        "RunCancelled",
        "TidebaseError",
        "new_run_id",
        "verify_webhook_signature",
    }
    assert documented <= set(tidebase.__all__)
    assert {"AsyncTidebase", "AsyncRunContext"} <= set(tidebase.aio.__all__)


def test_sdk__never_imports_django() -> None:
    code = "import sys, tidebase, tidebase.aio; assert 'django' not in sys.modules, 'django imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_new_run_id__shape() -> None:
    run_id = tidebase.new_run_id()
    assert run_id.startswith("run_")
    assert len(run_id) == 36


def test_verify_webhook_signature__official_compatible() -> None:
    body = b'{"type":"run.resume","runId":"run_1","workflowName":"wf","reason":"run_failed","attempt":1}'
    digest = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert verify_webhook_signature(body, f"sha256={digest}", "s3cret")
    assert verify_webhook_signature(body, digest, "s3cret")
    assert verify_webhook_signature(body.decode(), digest, "s3cret")
    assert not verify_webhook_signature(body, digest, "other")
    assert not verify_webhook_signature(body + b" ", digest, "s3cret")
    assert not verify_webhook_signature(body, None, "s3cret")
    assert not verify_webhook_signature(body, "sha256=zz", "s3cret")
    assert tidebase.sign_webhook(body, "s3cret") == f"sha256={digest}"
