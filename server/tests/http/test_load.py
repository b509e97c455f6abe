"""Metrics under load, clients that go away, and many concurrent streams."""

import asyncio
import threading

import httpx
import openai

from conftest import gauge, scrape, wait_until

LONG = {"prompt": "Count: 1, 2, 3,", "max_tokens": 400, "stream": True, "ignore_eos": True}


def test_metrics_parse_and_gauges_move(server):
    before = scrape(server.url)
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:num_preemptions_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:cache_config_info"]:
        assert name in before, name
        assert all(s.labels["model_name"] == "smol" for s in before[name])
    assert before["vllm:cache_config_info"][0].labels["block_size"] == "16"
    kv_before = before["vllm:kv_cache_usage_perc"][0].value
    gen_before = before["vllm:generation_tokens_total"][0].value

    done = threading.Event()

    def run():
        body = dict(LONG, max_tokens=120)
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as r:
            for _ in r.iter_lines():
                pass
        done.set()

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: gauge(server.url, "vllm:num_requests_running") > 0, what="running > 0")
    assert gauge(server.url, "vllm:kv_cache_usage_perc") > kv_before
    t.join(120)
    assert done.is_set()
    wait_until(lambda: gauge(server.url, "vllm:num_requests_running") == 0, what="running back to 0")
    after = scrape(server.url)
    assert after["vllm:kv_cache_usage_perc"][0].value == kv_before
    assert after["vllm:generation_tokens_total"][0].value >= gen_before + 120
    for hist in ["time_to_first_token", "inter_token_latency", "e2e_request_latency", "request_queue_time"]:
        assert after[f"vllm:{hist}_seconds_count"][0].value > before[f"vllm:{hist}_seconds_count"][0].value, hist
    success = after["vllm:request_success_total"]
    assert any(s.labels["finished_reason"] == "length" and s.value >= 1 for s in success)


def test_client_disconnect_frees_the_sequence(server):
    kv_before = gauge(server.url, "vllm:kv_cache_usage_perc")
    with httpx.stream("POST", f"{server.url}/v1/completions", json=LONG, timeout=120) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        assert gauge(server.url, "vllm:num_requests_running") == 1
    # The connection is closed: the engine aborts the sequence and frees its blocks.
    wait_until(lambda: gauge(server.url, "vllm:num_requests_running") == 0, what="running back to 0")
    wait_until(lambda: gauge(server.url, "vllm:kv_cache_usage_perc") == kv_before, what="kv usage back")


def test_32_concurrent_streams(server):
    prompts = ["Tell me about the sea.", "What is 2+2?", "Name three fruits.", "Write a haiku about rain."]

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        refs = [(await client.chat.completions.create(model="smol", messages=[{"role": "user", "content": p}],
                                                      max_tokens=24, temperature=0)).choices[0].message.content
                for p in prompts]

        async def one(i):
            stream = await client.chat.completions.create(model="smol", max_tokens=24, temperature=0, stream=True,
                                                          messages=[{"role": "user", "content": prompts[i % 4]}],
                                                          stream_options={"include_usage": True})
            text, finish, usage = "", None, None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage:
                    usage = chunk.usage
            return i, text, finish, usage

        results = await asyncio.gather(*(one(i) for i in range(32)))
        await client.close()
        return refs, results

    refs, results = asyncio.run(run())
    assert len(results) == 32
    for i, text, finish, usage in results:
        # Batched greedy decoding gives what each prompt gets alone.
        assert text == refs[i % 4], (i, text, refs[i % 4])
        assert finish in ("stop", "length") and usage.completion_tokens > 0
    wait_until(lambda: gauge(server.url, "vllm:num_requests_running") == 0, what="all finished")
