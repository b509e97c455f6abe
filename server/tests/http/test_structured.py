"""Structured outputs and tool calling against the real server and model: every output is
checked with a real JSON-schema validator (jsonschema), regexes with Python's `re`."""

import json
import re

import httpx
import jsonschema
import openai
import pytest

from conftest import Server

# Every schema bounds its output (closed objects, as OpenAI's strict mode requires; string
# lengths; integer ranges; number ranges and precision). An unbounded one lets a 135M model at
# temperature 0.8 add keys or digits until max_tokens, which no constraint can call invalid.
NAME = {"type": "string", "maxLength": 40}
INT = {"type": "integer", "minimum": 0, "maximum": 150}

SCHEMAS = {
    "flat": {"type": "object", "properties": {"name": NAME, "age": INT}, "required": ["name", "age"],
        "additionalProperties": False},
    "booleans_and_numbers": {"type": "object", "properties": {
        "alive": {"type": "boolean"}, "height_m": {"type": "number", "minimum": 0, "maximum": 3, "multipleOf": 0.25},
        "score": {"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5},
    }, "required": ["alive", "height_m", "score"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "string", "enum": ["S", "M", "L"]}}, "required": ["color", "size"],
        "additionalProperties": False},
    "array_of_strings": {"type": "object", "properties": {"children": {"type": "array", "items": NAME, "maxItems": 4}},
        "required": ["children"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "person": {"type": "object", "properties": {"first": NAME, "last": NAME}, "required": ["first", "last"],
            "additionalProperties": False},
        "address": {"type": "object", "properties": {"city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"], "additionalProperties": False},
    }, "required": ["person", "address"], "additionalProperties": False},
    "array_of_objects": {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3,
        "items": {"type": "object", "properties": {"sku": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["sku", "qty"], "additionalProperties": False}}}, "required": ["items"],
        "additionalProperties": False},
    "top_level_array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000},
        "minItems": 2, "maxItems": 5},
    "optional_fields": {"type": "object", "properties": {"title": NAME, "subtitle": NAME, "pages": INT},
        "required": ["title"], "additionalProperties": False},
    "any_of": {"type": "object", "properties": {"value": {"anyOf": [INT, NAME, {"type": "null"}]}},
        "required": ["value"], "additionalProperties": False},
    "refs": {"$defs": {"point": {"type": "object", "properties": {"x": INT, "y": INT},
        "required": ["x", "y"], "additionalProperties": False}},
        "type": "object", "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"], "additionalProperties": False},
    "const_and_bounds": {"type": "object", "properties": {"kind": {"const": "invoice"},
        "total": {"type": "number", "exclusiveMinimum": 0, "maximum": 100000, "multipleOf": 0.25}, "paid": {"type": "boolean"}},
        "required": ["kind", "total", "paid"], "additionalProperties": False},
}

MESSAGES = [{"role": "user", "content": "Describe Ada Lovelace as a JSON document."}]


def check_json(text, schema):
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def chat_stream(client, n, **kw):
    texts, finishes = [""] * n, [None] * n
    for chunk in client.chat.completions.create(model="smol", messages=MESSAGES, stream=True, n=n, **kw):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes[c.index]
    return texts, finishes


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_outputs_validate(client, name):
    schema = SCHEMAS[name]
    rf = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    r = client.chat.completions.create(model="smol", messages=MESSAGES, n=3, temperature=0.8, seed=7,
                                       max_tokens=300, response_format=rf)
    assert len(r.choices) == 3
    for c in r.choices:
        assert c.finish_reason == "stop", c.message.content
        check_json(c.message.content, schema)
    texts, finishes = chat_stream(client, 3, temperature=0.8, seed=11, max_tokens=300, response_format=rf)
    for text, finish in zip(texts, finishes):
        assert finish == "stop", text
        check_json(text, schema)


def test_json_object_and_vllm_surfaces(client, server):
    # json_object cannot bound its output: the prompt asks for something short (sampled
    # with fixed seeds, so the run is reproducible).
    ask = [{"role": "user", "content": "Give a short JSON object with the name and birth year of Ada Lovelace."}]
    r = client.chat.completions.create(model="smol", messages=ask, n=3, temperature=0.7, seed=2, max_tokens=300,
                                       response_format={"type": "json_object"})
    for c in r.choices:
        assert isinstance(json.loads(c.message.content), dict)
    texts = [""] * 3
    for chunk in client.chat.completions.create(model="smol", messages=ask, stream=True, n=3, temperature=0.7, seed=4,
                                                max_tokens=300, response_format={"type": "json_object"}):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    for t in texts:
        assert isinstance(json.loads(t), dict)
    schema = SCHEMAS["flat"]
    # vLLM's newer structured_outputs and older guided_json, on both routes.
    for extra in ({"structured_outputs": {"json": schema}}, {"guided_json": schema}, {"guided_json": json.dumps(schema)}):
        r = client.completions.create(model="smol", prompt="Ada Lovelace as JSON:", max_tokens=200, extra_body=extra)
        check_json(r.choices[0].text, schema)
        r = client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=200, extra_body=extra)
        check_json(r.choices[0].message.content, schema)


def test_choice_regex_and_grammar(client):
    options = ["mathematician", "astronaut", "show writer"]
    for extra in ({"guided_choice": options}, {"structured_outputs": {"choice": options}}):
        r = client.completions.create(model="smol", prompt="Ada Lovelace was a", max_tokens=10, n=3, temperature=1.0,
                                      seed=1, extra_body=extra)
        assert all(c.text in options for c in r.choices), [c.text for c in r.choices]
    phone = r"\(\d{3}\) \d{3}-\d{4}"
    for extra in ({"guided_regex": phone}, {"structured_outputs": {"regex": phone}}):
        r = client.completions.create(model="smol", prompt="Call me at", max_tokens=20, n=3, temperature=1.0, seed=2,
                                      extra_body=extra)
        assert all(re.fullmatch(phone, c.text) for c in r.choices), [c.text for c in r.choices]
    grammar = 'start: sum\nsum: NUMBER (" + " NUMBER)+ " = " NUMBER\nNUMBER: /[0-9]{1,3}/\n'
    r = client.completions.create(model="smol", prompt="Write an addition:", max_tokens=30, n=3, temperature=1.0, seed=4,
                                  extra_body={"guided_grammar": grammar})
    for c in r.choices:
        assert re.fullmatch(r"[0-9]{1,3}( \+ [0-9]{1,3})+ = [0-9]{1,3}", c.text), c.text
    # Streaming a constrained completion yields the same text as the whole response.
    body = {"model": "smol", "prompt": "Call me at", "max_tokens": 20, "temperature": 0, "guided_regex": phone}
    whole = client.completions.create(**{k: v for k, v in body.items() if k != "guided_regex"},
                                      extra_body={"guided_regex": phone}).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="smol", prompt="Call me at", max_tokens=20, temperature=0, stream=True, extra_body={"guided_regex": phone}))
    assert streamed == whole and re.fullmatch(phone, streamed)


def post(server, route, body):
    return httpx.post(f"{server.url}{route}", json=body, timeout=120)


def test_happy_vllm_ada_lovelace_examples(server):
    """The three examples of happy_vllm's generate-endpoints document (shape, not words)."""
    base = {"temperature": 0, "repetition_penalty": 1, "top_p": 0.8}
    nominal = post(server, "/v1/generate", dict(base, prompt="Please describe Ada Lovelace to me.", max_tokens=50)).json()
    assert len(nominal["responses"]) == 1 and nominal["finish_reasons"][0] in ("length", "stop")
    pool = ["mathematician", "astronaut", "show writer"]
    prompt = "Was was the occupation of Ada Lovelace ? Answer one of the following : 'mathematician', 'astronaut', 'show writer'."
    r = post(server, "/v1/generate", dict(base, prompt=prompt, response_pool=pool)).json()
    assert r["responses"][0] in pool and r["finish_reasons"] == ["stop"]
    simple = {"name": "string", "surname": "string", "age": "integer", "occupation": "string"}
    prompt = "Describe Ada Lovelace. Your answer should be in form of a json with the keywords name, surname, age, occupation."
    r = post(server, "/v1/generate", dict(base, prompt=prompt, max_tokens=100, json_format=simple)).json()
    value = json.loads(r["responses"][0])
    assert set(value) == set(simple) and isinstance(value["age"], int) and isinstance(value["name"], str)
    # The document's full type list, as simple json and as the equivalent JSON schema.
    full = {"name": "string", "age": "integer", "is_alive": "boolean", "height_in_meters": "number",
            "names_of_children": ["string"]}
    schema = {"type": "object", "required": list(full), "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "is_alive": {"type": "boolean"},
        "height_in_meters": {"type": "number"}, "names_of_children": {"type": "array", "items": {"type": "string"}}}}
    prompt = "Give a short JSON object describing Ada Lovelace with keys name, age, is_alive, height_in_meters, " \
             "names_of_children."
    for body in ({"json_format": full}, {"json_format": schema, "json_format_is_json_schema": True}):
        # Greedy decoding of this 135M model repeats list items forever without a penalty.
        r = post(server, "/v1/generate", dict(base, prompt=prompt, max_tokens=200, repetition_penalty=1.2, **body)).json()
        assert r["finish_reasons"] == ["stop"], r
        jsonschema.validate(json.loads(r["responses"][0]), schema)
    # The stream route ends with the same constrained answer.
    with httpx.stream("POST", f"{server.url}/v1/generate_stream", json=dict(base, prompt=prompt, response_pool=pool),
                      timeout=60) as resp:
        objs = [json.loads(line) for line in resp.iter_lines() if line]
    assert objs[-1]["responses"][0] in pool and objs[-1]["finish_reasons"] == ["stop"]


@pytest.mark.parametrize("route,body,param,contains", [
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema":
        {"type": "object", "properties": {"a": {"type": "wat"}}}}}}, "response_format", "Invalid structured output"),
    ("/v1/completions", {"guided_regex": "(unclosed"}, "guided_regex", "Invalid structured output"),
    ("/v1/completions", {"guided_grammar": "start: undefined_rule"}, "guided_grammar", "Invalid structured output"),
    ("/v1/completions", {"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "Only one kind"),
    ("/v1/completions", {"guided_choice": []}, "guided_choice", "empty"),
    ("/v1/completions", {"guided_choice": ["a"], "use_beam_search": True, "n": 2}, "guided_choice", "beam search"),
    ("/v1/chat/completions", {"response_format": {"type": "yaml"}}, "response_format", "json_schema"),
    ("/v1/chat/completions", {"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag", None),
])
def test_bad_constraints_are_400(server, route, body, param, contains):
    base = {"prompt": "x"} if route == "/v1/completions" else {"messages": MESSAGES}
    r = post(server, route, dict(base, max_tokens=5, **body))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    if contains:
        assert contains in err["message"], err


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": NAME, "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": NAME}, "required": ["timezone"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_calls(calls):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def stream_calls(client, **kw):
    """Tool calls rebuilt from stream deltas, as OpenAI's documentation does it."""
    calls, finish = {}, None
    for chunk in client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, stream=True, **kw):
        for d in chunk.choices[0].delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = d.id or c["id"]
            c["name"] += (d.function.name or "") if d.function else ""
            c["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = chunk.choices[0].finish_reason or finish
    return list(calls.values()), finish


def test_tool_choice_required_and_named(client):
    for seed in range(3):
        r = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, tool_choice="required",
                                           temperature=0.8, seed=seed, max_tokens=200)
        assert r.choices[0].finish_reason == "tool_calls"
        check_calls(r.choices[0].message.tool_calls)
    named = {"type": "function", "function": {"name": "get_time"}}
    r = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=200)
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"] and r.choices[0].finish_reason == "tool_calls"
    check_calls(calls)
    for choice in ("required", named):
        calls, finish = stream_calls(client, tool_choice=choice, max_tokens=200)
        assert finish == "tool_calls" and calls
        for c in calls:
            assert c["id"]
            jsonschema.validate(json.loads(c["arguments"]), PARAMS[c["name"]])
    # The result goes back through the template as a tool message.
    call = r.choices[0].message.tool_calls[0]
    history = ASK + [{"role": "assistant", "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": "14:00"}]
    r = client.chat.completions.create(model="smol", messages=history, tools=TOOLS, tool_choice="none", max_tokens=10)
    assert r.choices[0].message.tool_calls in (None, []) and r.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_auto_needs_the_server_flags(client):
    with pytest.raises(openai.BadRequestError, match="enable-auto-tool-choice"):
        client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=5)
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=5,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


def test_tool_choice_auto_parses_hermes_calls():
    """SmolLM2 does not call tools on its own; a regex makes it write a hermes-style call
    so the auto parser's whole path (non-streaming and streaming) runs on real output."""
    s = Server("--served-model-name", "smol", "--enable-auto-tool-choice", "--tool-call-parser", "hermes").wait_ready()
    try:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        forced = {"guided_regex": r'Checking\.<tool_call>\{"name": "get_weather", "arguments": \{"city": "Paris", '
                                  r'"unit": "(celsius|fahrenheit)"\}\}</tool_call>'}
        r = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=60, extra_body=forced)
        msg = r.choices[0].message
        assert msg.content == "Checking." and r.choices[0].finish_reason == "tool_calls"
        check_calls(msg.tool_calls)
        content, calls, finish = "", [], None
        for chunk in client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=60,
                                                     stream=True, extra_body=forced):
            content += chunk.choices[0].delta.content or ""
            calls += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
        assert content == "Checking." and finish == "tool_calls"
        assert [c.function.name for c in calls] == ["get_weather"]
        # Plain text stays content.
        r = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS, max_tokens=8)
        assert r.choices[0].message.tool_calls in (None, []) and r.choices[0].message.content
    finally:
        s.stop()
