"""The webhook rules (domain/webhooks.py), the secret box and the settings, without servers.

Signatures are checked against the `standardwebhooks` reference library.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from db.webhooks import SecretBox
from domain.events import EVENT_TYPES, WEBHOOK_TEST
from domain.webhooks import (
    SlackContext,
    WebhookEvent,
    WebhookRuleError,
    address_refusal,
    check_event_types,
    check_url,
    disable_reason,
    generate_secret,
    health,
    message_id,
    next_step,
    parse_retry_after,
    request_body,
    retry_delay,
    retry_refusal,
    signature_header,
    signing_secrets,
    slack_text,
    subscribed,
    summary,
)
from settings import Settings
from workflows import starters
from workflows.webhooks import WebhookEndpointWorkflow

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_event_types_are_the_catalogue_or_star() -> None:
    assert check_event_types(["deal.stalled", "deal.created", "deal.created"]) == [
        "deal.created",
        "deal.stalled",
    ]
    assert check_event_types(["*"]) == ["*"]
    with pytest.raises(WebhookRuleError) as err:
        check_event_types(["deal.moved"])
    assert err.value.field == "event_types"
    for known in EVENT_TYPES - {WEBHOOK_TEST}:
        assert known in err.value.message
    for bad in ([], ["*", "deal.created"], [WEBHOOK_TEST]):
        with pytest.raises(WebhookRuleError):
            check_event_types(bad)


@pytest.mark.parametrize(
    ("url", "allow_http", "words"),
    [
        ("http://hooks.example.com/x", False, "scheme must be https"),
        ("ftp://hooks.example.com/x", True, "scheme"),
        ("https://user:secret@hooks.example.com/", False, "credentials"),
        ("https://:secret@hooks.example.com/", False, "credentials"),
        ("https:///path", False, "no host"),
        ("https://hooks.example.com:99999/", False, "not a URL"),
        ("https://hooks.example.com/#frag", False, "fragment"),
    ],
)
def test_a_url_of_the_wrong_form_is_refused(url: str, allow_http: bool, words: str) -> None:
    with pytest.raises(WebhookRuleError) as err:
        check_url(url, allow_http=allow_http)
    assert err.value.field == "url" and words in err.value.message


def test_a_url_of_the_right_form_gives_its_host() -> None:
    assert check_url("https://Hooks.Example.com:8443/a?b=1", allow_http=False) == "hooks.example.com"
    assert check_url("http://127.0.0.1:9000/hook", allow_http=True) == "127.0.0.1"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.5",
        "192.168.1.1",
        "169.254.1.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "0.0.0.0",
    ],
)
def test_private_addresses_are_refused_unless_allowed(address: str) -> None:
    assert address_refusal([address], allow_private=False) is not None
    assert address_refusal([address], allow_private=True) is None
    # One bad address among good ones is enough: the client may connect to any of them.
    assert address_refusal(["93.184.216.34", address], allow_private=False) is not None


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"])
def test_the_metadata_address_is_refused_always(address: str) -> None:
    refusal = address_refusal([address], allow_private=True)
    assert refusal is not None and "metadata" in refusal


def test_a_public_address_passes_and_no_address_does_not() -> None:
    assert address_refusal(["93.184.216.34", "2606:2800:220:1::1"], allow_private=False) is None
    assert address_refusal([], allow_private=True) == "the host does not resolve"


def test_a_test_event_goes_only_to_its_endpoint() -> None:
    assert subscribed(["*"], WEBHOOK_TEST, entity_id="e1", endpoint_id="e1")
    assert not subscribed(["*"], WEBHOOK_TEST, entity_id="e2", endpoint_id="e1")
    assert subscribed(["*"], "io.completed", entity_id="x", endpoint_id="e1")
    assert not subscribed(["deal.created"], "io.completed", entity_id="x", endpoint_id="e1")


def test_the_signature_verifies_with_the_reference_library() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    body = '{"id": "1", "type": "deal.created"}'
    ts = int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts)}
    headers["webhook-signature"] = signature_header([secret], "msg_1", ts, body)
    assert Webhook(secret).verify(body, headers) == {"id": "1", "type": "deal.created"}
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)
    tampered = headers | {"webhook-id": "msg_2"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, tampered)


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    signing = signing_secrets(new, old, NOW + timedelta(hours=24), NOW)
    assert signing == [new, old]
    assert signing_secrets(new, old, NOW - timedelta(seconds=1), NOW) == [new]
    body, ts = "{}", int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": "msg_9", "webhook-timestamp": str(ts)}
    headers["webhook-signature"] = signature_header(signing, "msg_9", ts, body)
    for secret in (old, new):
        Webhook(secret).verify(body, headers)


def test_the_body_is_the_event_as_the_events_api_shows_it() -> None:
    event = WebhookEvent(
        id="7",
        type="deal.stage_changed",
        entity_type="deal",
        entity_id="d",
        payload={"from": "lead"},
        occurred_at=NOW,
    )
    assert request_body(event, "standard") == (
        '{"id":"7","type":"deal.stage_changed","entity_type":"deal","entity_id":"d",'
        '"payload":{"from":"lead"},"occurred_at":"2026-12-01T12:00:00Z"}'
    )
    assert json.loads(request_body(event, "slack")) == {"text": "deal d moved to None"}
    assert message_id("0b9c-11") == "msg_0b9c11"


def test_backoff_grows_with_jitter_up_to_its_cap() -> None:
    low = [retry_delay(n, initial_seconds=5, max_seconds=3600, rand=0.0) for n in range(1, 14)]
    high = [retry_delay(n, initial_seconds=5, max_seconds=3600, rand=0.999) for n in range(1, 14)]
    assert low[:4] == [2.5, 5.0, 10.0, 20.0]
    assert all(a < b for a, b in zip(low, high, strict=True))
    assert max(high) < 3600 and low[-1] == 1800
    # About three days of attempts at the defaults: some 80, not thousands.
    total, n = 0.0, 0
    while total < 72 * 3600:
        n += 1
        total += retry_delay(n, initial_seconds=5, max_seconds=3600, rand=0.5)
    assert 80 < n < 120


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after("Tue, 01 Dec 2026 12:00:30 GMT", NOW) == 30
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_a_failure_past_the_window_gives_up() -> None:
    assert next_step(now=NOW, give_up_at=NOW + timedelta(hours=1), delay_seconds=60) == (
        "retry",
        NOW + timedelta(seconds=60),
    )
    assert next_step(now=NOW, give_up_at=NOW + timedelta(seconds=30), delay_seconds=60) == ("give_up", None)


def test_health_and_retry_rules() -> None:
    assert (
        health(paused=True, oldest_in_flight_seconds=100, failing_after_seconds=30, last_failed=True)
        == "paused"
    )
    assert (
        health(paused=False, oldest_in_flight_seconds=31, failing_after_seconds=30, last_failed=False)
        == "failing"
    )
    assert (
        health(paused=False, oldest_in_flight_seconds=1, failing_after_seconds=30, last_failed=False)
        == "healthy"
    )
    assert (
        health(paused=False, oldest_in_flight_seconds=None, failing_after_seconds=30, last_failed=True)
        == "failing"
    )
    assert retry_refusal("pending") is not None
    assert retry_refusal("failed") is None and retry_refusal("delivered") is None


def test_the_summary_names_the_host_not_the_path() -> None:
    assert summary("hooks.slack.com", "ad-ops channel") == "Webhook: hooks.slack.com (ad-ops channel)"
    assert "T0000" not in summary("hooks.slack.com", None)


def test_secrets_are_sealed_and_only_the_same_key_opens_them() -> None:
    box = SecretBox("key one")
    sealed = box.seal("whsec_abc")
    assert "whsec_abc" not in sealed and box.open(sealed) == "whsec_abc"
    with pytest.raises(ValueError, match="SPONSORFLOW_WEBHOOK_SECRET_KEY"):
        SecretBox("key two").open(sealed)


def test_the_development_key_and_private_addresses_only_in_development() -> None:
    dev = Settings()
    assert dev.webhook_secret_key_value and dev.webhook_private_allowed
    prod = Settings(environment="production", admin_token="a-real-secret")
    with pytest.raises(ValueError, match="SPONSORFLOW_WEBHOOK_SECRET_KEY"):
        _ = prod.webhook_secret_key_value
    assert not prod.webhook_private_allowed
    real = Settings(
        environment="production", admin_token="a", webhook_secret_key="k", webhook_allow_private=True
    )
    assert real.webhook_secret_key_value == "k" and real.webhook_private_allowed


def test_the_starters_name_what_the_workflow_defines() -> None:
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(WebhookEndpointWorkflow))).body
    assert isinstance(node, ast.ClassDef) and node.name == starters.WEBHOOK_WORKFLOW
    for name in (
        starters.WEBHOOK_WAKE_SIGNAL,
        starters.WEBHOOK_RETRY_UPDATE,
        starters.WEBHOOK_REPLAY_UPDATE,
        starters.WEBHOOK_TEST_UPDATE,
        starters.WEBHOOK_STATE_QUERY,
    ):
        assert callable(getattr(WebhookEndpointWorkflow, name, None)), name
    assert starters.webhook_workflow_id("t", "e") == "webhook/t/e"


def test_an_endpoint_is_disabled_after_failing_continuously_for_its_limit() -> None:
    since = NOW - timedelta(days=5)
    assert disable_reason(failing_since=None, now=NOW, after_hours=120) is None
    assert disable_reason(failing_since=since + timedelta(seconds=1), now=NOW, after_hours=120) is None
    reason = disable_reason(failing_since=since, now=NOW, after_hours=120)
    assert reason is not None and "5 days" in reason


def _event(type: str, **payload: object) -> WebhookEvent:
    return WebhookEvent(
        id="1", type=type, entity_type="deal", entity_id="d", payload=payload, occurred_at=NOW
    )


def test_slack_texts_are_sentences_a_person_reads() -> None:
    deal = SlackContext(title="Acme x The Daily Grind", value_usd=24000)
    assert slack_text(_event("deal.stage_changed", **{"from": "proposal", "to": "negotiation"}), deal) == (
        "Acme x The Daily Grind moved to negotiation ($24,000)"
    )
    assert slack_text(_event("deal.stalled", stage="proposal", limit_days=21), deal) == (
        "Acme x The Daily Grind stalled in proposal for 21 days"
    )
    assert slack_text(_event("deal.stage_changed", to="lost", reason="budget cut"), deal) == (
        "Acme x The Daily Grind was lost ($24,000): budget cut"
    )
    report = _event("io.delivery_reported", impressions=45000, impressions_goal=50000, delivered_share=0.9)
    assert slack_text(report, deal) == "Acme x The Daily Grind: 45,000 of 50,000 impressions delivered (90%)"
    assert slack_text(_event("deal.created", stage="lead")) == "New deal: deal d in lead"
    assert slack_text(_event("some.future_type")) == "some.future_type on deal d"
