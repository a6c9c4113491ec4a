"""scripts/comfy_client.py against fake servers (no ComfyUI needed, a few seconds): a server at the URL that is
not ComfyUI is refused with one exception, NotComfyUI, whose message names the URL and what came back; nothing
hangs, nothing is followed elsewhere; a real-looking ComfyUI is talked to normally."""
import time

import pytest

from fake_comfyui import (EndlessFast, EndlessSlow, HtmlPage, JsonList, JsonOfAnotherApi, ServerError, Truncated,
                          fake_comfyui, redirecting_to, serving)
from scripts.comfy_client import ComfyClient, NotComfyUI, ServerLost
from scripts.comfy_server import free_port


def finished_entry():
    return {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": {}}


def refusal_of(handler, timeout=5.0, ask=ComfyClient.system_stats) -> str:
    """The NotComfyUI message the client gives for a server running `handler`, and its URL."""
    with serving(handler) as url:
        with pytest.raises(NotComfyUI) as refused:
            ask(ComfyClient(url, timeout=timeout))
        message = str(refused.value)
        assert message.startswith(url), message
        assert "\n" not in message, "one line, for a log or a terminal"
        return message


@pytest.mark.parametrize("handler,phrases", [
    (HtmlPage, ["answered /system_stats with an HTML page (title 'Welcome to nginx!'), not ComfyUI's JSON",
                "is this URL a ComfyUI server?"]),
    (JsonList, ["answered /system_stats with JSON that is not ComfyUI's (a list of 3 item(s) where ComfyUI answers "
                "an object)"]),
    (JsonOfAnotherApi, ["JSON that is not ComfyUI's (an object without 'system' and 'devices'; its keys: 'status', "
                        "'version')"]),
    (ServerError, ["answered /system_stats with HTTP 500 Internal Server Error ('500 Internal Server Error Server got "
                   "itself in trouble')"]),
    (Truncated, ["answered /system_stats with a truncated body (10 bytes of the 1,000 it announced, then the "
                 "connection closed)"]),
], ids=["html", "json-list", "json-of-another-api", "http-500", "truncated"])
def test_an_answer_that_is_not_comfyuis_is_refused_naming_the_url_and_what_came(handler, phrases):
    message = refusal_of(handler)
    for phrase in phrases:
        assert phrase in message, message


def test_a_redirect_is_reported_not_followed():
    comfyui = fake_comfyui(finished_entry)
    with serving(comfyui) as elsewhere:
        message = refusal_of(redirecting_to(elsewhere))
    assert f"answered /system_stats with a redirect (HTTP 302) to {elsewhere}/system_stats, not followed" in message
    assert comfyui.paths == [], "the client went where the redirect pointed"


def test_a_body_that_never_ends_slowly_stops_at_the_timeout():
    started = time.monotonic()
    message = refusal_of(EndlessSlow, timeout=1.0)
    assert time.monotonic() - started < 5, "the client waited past its timeout"
    assert "did not finish its answer to /system_stats within 1 s (" in message, message


def test_a_body_that_never_ends_quickly_stops_at_the_size_cap():
    started = time.monotonic()
    message = refusal_of(EndlessFast, timeout=30.0)
    assert time.monotonic() - started < 10
    assert "sent more than 16 MiB for /system_stats without ending its answer" in message, message


def test_json_answers_of_every_route_are_checked():
    """Not only /system_stats: a server that answers one route like ComfyUI and another not is refused there too."""
    message = refusal_of(JsonList, ask=lambda client: client.queued_ids())
    assert "answered /queue with JSON that is not ComfyUI's (a list" in message
    message = refusal_of(JsonOfAnotherApi, ask=lambda client: client.object_info("CADAttribute"))
    assert "answered /object_info/CADAttribute with JSON that is not ComfyUI's ('status' is not a node" in message
    message = refusal_of(HtmlPage, ask=lambda client: client.submit({}))
    assert "answered /prompt with an HTML page" in message


def test_a_prompt_that_comfyui_answers_with_an_error_status_is_refused_not_the_server():
    """Once a server passed as ComfyUI, a 500 (or 413) on /prompt is about that prompt: it fails, the server stays."""
    with serving(ServerError) as url:
        state, why = ComfyClient(url, timeout=5).submit({})
    assert (state, why) == ("refused", "/prompt answered HTTP 500 Internal Server Error ('500 Internal Server Error "
                                       "Server got itself in trouble')")


def test_nobody_at_the_url_is_a_lost_server():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerLost, match=rf"^{url} does not answer \(\[Errno 111\] Connection refused\)$"):
        ComfyClient(url, timeout=5).system_stats()


def test_a_comfyui_answers_through_the_client():
    handler = fake_comfyui(finished_entry)
    with serving(handler) as url:
        client = ComfyClient(url, timeout=5)
        assert client.system_stats()["system"]["comfyui_version"] == "fake"
        assert "objective" in client.object_info("CADAttribute")["CADAttribute"]["input"]["required"]
        state, prompt_id = client.submit({"1": {"class_type": "CADDemoModel", "inputs": {}}})
        assert (state, prompt_id) == ("queued", "p1")
        assert client.wait(prompt_id, timeout=5)["status"]["completed"] is True
        assert client.queued_ids() == set()
        assert client.listed_files("cad") == set()
        assert client.listed_files("no_such_folder") == set()  # ComfyUI answers 404 for a folder it does not have
    assert handler.prompts == [{"1": {"class_type": "CADDemoModel", "inputs": {}}}]


def test_a_url_that_is_not_http_is_refused_up_front():
    with pytest.raises(ValueError, match="is not an http:// or https:// URL"):
        ComfyClient("127.0.0.1:8188")
