"""Sends through the official Segment Python SDK (segment-analytics-python) to a journeyd.

Driven by crates/journeyd/tests/segment_sdk.rs, which starts journeyd and checks its figures.
Usage: segment_sdk.py HOST WRITE_KEY WRONG_KEY T0_EPOCH_MS (events are dated from T0 on)
Prints one JSON line: what was sent, and every error the SDK reported (status per batch).
"""

import json
import sys
from datetime import datetime, timedelta, timezone

from segment.analytics import Client
from segment.analytics.request import APIError

host, key, wrong_key, t0 = sys.argv[1:5]
T0 = datetime.fromtimestamp(int(t0) / 1000, tz=timezone.utc)
report = {"sent": {}, "errors": [], "wrong_key_errors": []}


def on_error(into):
    def record(error, batch):
        status = error.status if isinstance(error, APIError) else None
        into.append({"status": status, "error": str(error), "calls": len(batch)})

    return record


client = Client(write_key=key, host=host, gzip=True, on_error=on_error(report["errors"]),
                max_retries=2, upload_size=100)
# A journey of one customer: a page view, an identify, a product page, an order.
client.page(user_id="sdk-1", name="Home", properties={"url": "/"}, timestamp=T0)
client.identify(user_id="sdk-1", traits={"plan": "pro"}, timestamp=T0 + timedelta(milliseconds=100))
client.page(user_id="sdk-1", properties={"url": "/products/1"}, timestamp=T0 + timedelta(milliseconds=200))
client.track(user_id="sdk-1", event="order_completed", properties={"revenue": 42},
             timestamp=T0 + timedelta(milliseconds=300))
report["sent"]["journey"] = 4
# 1 000 events of 250 customers, each: product page, product page, cart, order for the first 100.
n = 0
for c in range(250):
    user = f"bulk-{c}"
    at = T0 + timedelta(seconds=1, milliseconds=4 * c)
    client.page(user_id=user, properties={"url": f"/products/{c}"}, timestamp=at)
    client.page(user_id=user, properties={"url": f"/products/{c + 1}"}, timestamp=at + timedelta(milliseconds=1))
    client.track(user_id=user, event="cart_viewed", timestamp=at + timedelta(milliseconds=2))
    if c < 100:
        client.track(user_id=user, event="order_completed", timestamp=at + timedelta(milliseconds=3))
    else:
        client.track(user_id=user, event="wishlist_added", timestamp=at + timedelta(milliseconds=3))
    n += 4
report["sent"]["bulk"] = n
client.flush()
client.join()

wrong = Client(write_key=wrong_key, host=host, gzip=True,
               on_error=on_error(report["wrong_key_errors"]), max_retries=2)
for i in range(3):
    wrong.track(user_id=f"intruder-{i}", event="order_completed", timestamp=T0)
wrong.flush()
wrong.join()
report["sent"]["wrong_key"] = 3
print(json.dumps(report))
