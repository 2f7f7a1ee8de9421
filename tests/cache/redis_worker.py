"""One process of the Redis cache tests: callers of one cached function, in threads.

``python -m tests.cache.redis_worker URL TENANT QUERY THREADS [START_AT]``: ``THREADS`` threads
call the function at once (at ``START_AT``, a wall-clock time, so several processes start
together); prints one JSON line with what each got. The function counts its computations in
Redis (``test:computations``) and takes half a second.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import redis

import budgetspan


def main(url: str, tenant: str, query: str, threads: int, start_at: float) -> None:
    client = redis.Redis.from_url(url)
    cache = budgetspan.Cache("tenant", ttl_s=60, backend=budgetspan.RedisCache(url), lock_wait_s=10)

    @budgetspan.cached(name="policy_search", cache=cache)
    def search(q: str) -> dict[str, str]:
        client.incr("test:computations")
        time.sleep(0.5)
        return {"answer": f"{q} for {tenant}"}

    got: list[object] = []

    def caller() -> None:
        with budgetspan.run("worker", tenant=tenant):
            got.append(search(query))

    time.sleep(max(0.0, start_at - time.time()))
    pool = [threading.Thread(target=caller) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps(got))


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        sys.argv[3],
        int(sys.argv[4]),
        float(sys.argv[5]) if len(sys.argv) > 5 else 0.0,
    )
