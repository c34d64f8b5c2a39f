"""Opens and funds SALDO_BENCH_ACCOUNTS BRL accounts (acc-0 …) on a running saldo server."""
import http.client
import json
import os
import sys
from urllib.parse import urlparse

url = urlparse(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080")
n = int(os.environ.get("SALDO_BENCH_ACCOUNTS", "1000"))
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)


def post(path, body):
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status not in (200, 201):
        sys.exit(f"{path}: {r.status} {data[:200]!r}")


for i in range(n):
    post("/v1/accounts", {"id": f"acc-{i}", "currency": "BRL"})
    post(f"/v1/accounts/acc-{i}/entries",
         {"id": f"fund-acc-{i}", "type": "credit", "amount": "100000000.00"})
print(f"{n} accounts opened and funded")
