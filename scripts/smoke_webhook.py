"""Fresh-machine smoke: a run with a webhook channel completes, and the worker started by
`make run` delivers the channel event to a local receiver through the embedded broker."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
import urllib.request

received: list[dict[str, object]] = []


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        received.append({"body": json.loads(body), "webhook_id": self.headers.get("webhook-id")})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def call(base: str, method: str, path: str, body: object = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def main(base: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    run = call(
        base, "POST", "/runs/smoke", {"channels": [{"type": "webhook", "url": url, "events": ["run.completed"]}]}
    )
    run_id = run["run"]["id"]  # type: ignore[index]
    call(base, "POST", f"/runs/{run_id}/begin")
    call(base, "POST", f"/runs/{run_id}/complete", {"result": {"ok": True}})
    deadline = time.monotonic() + 90
    while not received:
        if time.monotonic() > deadline:
            raise SystemExit("no webhook delivered within 90 s: is the worker running?")
        time.sleep(0.2)
    got = received[0]["body"]
    assert isinstance(got, dict), got
    assert (got["type"], got["runId"]) == ("run.completed", run_id), got
    print(json.dumps({"delivered": got["type"], "webhook_id": received[0]["webhook_id"]}))
    server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
