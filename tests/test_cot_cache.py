"""ResponseCache: persistence across instances, torn lines, threads."""

from __future__ import annotations

import json
import threading

from univg.cot.cache import LOG_NAME, ResponseCache, cache_key


def test_key_depends_on_every_part():
    base = cache_key("s1", "m", "h", "chain", 0)
    others = [
        cache_key("s2", "m", "h", "chain", 0),
        cache_key("s1", "m2", "h", "chain", 0),
        cache_key("s1", "m", "h2", "chain", 0),
        cache_key("s1", "m", "h", "judge", 0),
        cache_key("s1", "m", "h", "chain", 1),
    ]
    assert len({base, *others}) == 6
    assert base == cache_key("s1", "m", "h", "chain", 0)


def test_persists_across_instances(tmp_path):
    with ResponseCache(tmp_path) as cache:
        cache.put("k1", {"text": "a"})
        cache.put("k2", {"text": "b"})
    reopened = ResponseCache(tmp_path)
    assert len(reopened) == 2 and reopened.get("k2") == {"text": "b"} and "k1" in reopened
    assert reopened.get("k3") is None
    reopened.close()


def test_torn_last_line_is_skipped_and_next_append_starts_a_new_line(tmp_path):
    with ResponseCache(tmp_path) as cache:
        cache.put("k1", {"text": "a"})
    log = tmp_path / LOG_NAME
    with open(log, "ab") as f:  # a crash in the middle of writing the second record
        f.write(b'{"key": "k2", "value": {"te')
    cache = ResponseCache(tmp_path)
    assert cache.skipped_lines == 1 and len(cache) == 1 and cache.get("k2") is None
    cache.put("k3", {"text": "c"})
    cache.close()
    lines = log.read_bytes().split(b"\n")
    assert json.loads(lines[-2]) == {"key": "k3", "value": {"text": "c"}}
    again = ResponseCache(tmp_path)
    assert again.skipped_lines == 1 and again.get("k3") == {"text": "c"} and again.get("k1") == {"text": "a"}
    again.close()


def test_concurrent_puts_all_survive(tmp_path):
    cache = ResponseCache(tmp_path)

    def worker(t: int) -> None:
        for i in range(50):
            cache.put(f"{t}-{i}", {"text": "x" * (i * 37 % 500)})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    reopened = ResponseCache(tmp_path)
    assert len(reopened) == 200 and reopened.skipped_lines == 0
    assert reopened.get("3-49") == {"text": "x" * (49 * 37 % 500)}
    reopened.close()
