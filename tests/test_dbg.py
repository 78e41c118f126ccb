import httpx
from .conftest import FULL_KEY, wait_for_model
from .factories import make_provider, make_route
def test_dbg(live, mock_upstream, db_access):
    p = make_provider(mock_upstream.base_url, type="anthropic")
    r = make_route((p, "mock-model"), max_attempts=1)
    wait_for_model(live, r.name)
    resp = httpx.post(live.url + "/v1/chat/completions", json={"model": r.name, "messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {FULL_KEY}"}, timeout=20)
    print(resp.status_code, resp.text[:300])
    print(live.stop()[-3000:])
